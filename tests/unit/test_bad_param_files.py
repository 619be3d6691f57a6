"""Malformed, hostile and mistaken parameter files (tests/data/bad-params/*.yaml), each refused by
`hubops check` before any host is contacted: exit 2, no traceback, the file named, and every
`# expect:` line of the file in the message (the key path or line, and the fix). A file with a
`# never shown: VALUE` line pastes a secret in the wrong place: VALUE must not appear in the output.

The cases run on a copy of the folder, beside files made here that cannot be committed: a 64 MiB
sparse file, a named pipe, a folder, certificate/key pairs that match and do not, an encrypted
key, a parameter file padded past the size cap; `@OUTPUTS@` and `@PROJECT@` stand for the record
folder and the project."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hubops.cli import main as cli
from hubops.core.paths import OUTPUTS
from tests.helpers import write_cert_pair

PROJECT = Path(__file__).resolve().parents[2]
SOURCE = PROJECT / "tests/data/bad-params"
FILES = sorted(SOURCE.glob("*.yaml"), key=lambda f: int(f.name.split("-", 1)[0]))


def _text(path: Path) -> str:
    raw = path.read_bytes()
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return raw.decode("utf-16")
    return raw.decode("utf-8", errors="replace")


def _header(path: Path, prefix: str) -> list[str]:
    return [line.removeprefix(prefix) for line in _text(path).splitlines() if line.startswith(prefix)]


def test_there_are_at_least_70_distinct_cases():
    expectations = {tuple(_header(f, "# expect: ")) for f in FILES}
    assert all(_header(f, "# expect: ") for f in FILES), [f.name for f in FILES if not _header(f, "# expect: ")]
    assert len(FILES) >= 70 and len(expectations) == len(FILES)


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("bad-params")
    for f in SOURCE.iterdir():
        raw = f.read_bytes()
        if f.suffix == ".yaml":
            raw = raw.replace(b"@OUTPUTS@", str(OUTPUTS).encode()).replace(b"@PROJECT@", str(PROJECT).encode())
        (d / f.name).write_bytes(raw)
    with open(d / "huge.bin", "wb") as f:  # sparse: 64 MiB on paper, nothing on disk
        f.truncate(64 << 20)
    os.chmod(d / "ssh-id-readable", 0o644)  # an ssh private key others can read (whatever the umask)
    os.mkfifo(d / "fifo")  # opening it for reading would wait forever for a writer
    (d / "subdir").mkdir()
    write_cert_pair(d / "match-cert.pem", d / "match-key.pem")
    write_cert_pair(d / "other-cert.pem", d / "other-key.pem")
    _encrypted_key(d / "encrypted-key.pem")
    huge = d / "63-param-file-huge.yaml"
    with open(huge, "a") as f:
        f.write(("# padding: a parameter file of many lines\n" * 8000))
    return d


def _encrypted_key(path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.BestAvailableEncryption(b"passphrase")))


@pytest.mark.parametrize("name", [f.name for f in FILES], ids=lambda n: n.removesuffix(".yaml"))
def test_refused_with_file_key_and_fix(name, cases, monkeypatch, capsys):
    path = cases / name
    expects = _header(SOURCE / name, "# expect: ")
    never = _header(SOURCE / name, "# never shown: ")
    monkeypatch.delenv("HUBOPS_BAD_PARAMS_UNSET", raising=False)
    # No engine may be asked: any Docker client made during validation would fail loudly.
    monkeypatch.setattr("docker.DockerClient.__init__", _no_engine)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["check", "-p", str(path)], standalone_mode=False)
    captured = capsys.readouterr()
    out = " ".join(captured.err.split())
    print(out)
    assert exit_.value.code == 2, out
    assert "Traceback" not in captured.err + captured.out
    assert str(path) in out, out
    for expect in expects:
        assert expect in out, (expect, out)
    for secret in never:
        assert secret not in captured.err + captured.out, out
    assert len(out) < 2000, f"one short message, not one per line: {len(out)} characters"


def _no_engine(*args, **kwargs):
    raise AssertionError("a Docker client was created while checking parameters")


def test_the_command_line_exits_2(tmp_path):
    r = subprocess.run([sys.executable, "-m", "hubops.cli.main", "check", "-p", str(FILES[0])], cwd=PROJECT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and str(FILES[0]) in " ".join(r.stderr.split())


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom", "/dev/null"])
def test_a_device_as_the_parameter_file_is_refused_unread(device, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["check", "-p", device], standalone_mode=False)
    out = " ".join(capsys.readouterr().err.split())
    assert exit_.value.code == 2 and f"{device}: {device} is not a regular file" in out, out


def test_a_pipe_as_the_parameter_file_is_refused_without_waiting(tmp_path, capsys):
    os.mkfifo(tmp_path / "p.yaml")  # nobody writes: reading it would block forever
    with pytest.raises(SystemExit) as exit_:
        cli.main(["check", "-p", str(tmp_path / "p.yaml")], standalone_mode=False)
    assert exit_.value.code == 2 and "is not a regular file" in capsys.readouterr().err


def test_pathological_inputs_are_refused_by_construction(tmp_path):
    """The caps are structural: an alias bomb is refused from its composed graph without being
    expanded, nesting is refused when the composer reaches the cap, and a huge file is refused from
    its size before a byte is parsed. Shown by what the loader touched, not by a clock."""
    from hubops.core import paramfile

    counted = []
    real = paramfile._CappedLoader.compose_node

    def counting(self, parent, index):
        counted.append(1)
        return real(self, parent, index)

    paramfile._CappedLoader.compose_node = counting
    try:
        with pytest.raises(Exception, match="expands to more than"):
            paramfile.load_yaml(SOURCE / "31-alias-bomb.yaml")
        # 10 scalars, 11 levels of 10 aliases, their lists and keys: a few hundred nodes composed,
        # for a document that would expand to 10**12 values.
        assert len(counted) < 1000, len(counted)
        counted.clear()
        with pytest.raises(Exception, match="nested deeper than"):
            paramfile.load_yaml(SOURCE / "32-deep-nesting.yaml")
        assert len(counted) <= paramfile.MAX_DEPTH + 5, len(counted)
    finally:
        paramfile._CappedLoader.compose_node = real
    huge = tmp_path / "huge.yaml"
    with open(huge, "wb") as f:
        f.truncate(8 << 30)  # 8 GiB, sparse: reading it would take minutes and the memory of the machine
    with pytest.raises(Exception, match="more than a parameter file can be"):
        paramfile.load_yaml(huge)
    shutil.rmtree(tmp_path, ignore_errors=True)
