"""Malformed parameter files (tests/data/bad-params/*.yaml), each refused by `hubops check`
before any host is contacted: exit 2, the file named, the key path and the fix in the message.
Each file says what it expects on its first line (`# expect: ...`)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hubops.cli import main as cli

PROJECT = Path(__file__).resolve().parents[2]
FILES = sorted((PROJECT / "tests/data/bad-params").glob("*.yaml"))


def test_there_are_at_least_25_distinct_cases():
    expectations = {f.read_text().splitlines()[0] for f in FILES}
    assert len(FILES) >= 25 and len(expectations) == len(FILES)


@pytest.mark.parametrize("path", FILES, ids=lambda f: f.stem)
def test_refused_with_file_key_and_fix(path, monkeypatch, capsys):
    expect = path.read_text().splitlines()[0].removeprefix("# expect: ")
    monkeypatch.delenv("HUBOPS_BAD_PARAMS_UNSET", raising=False)
    # No engine may be asked: any Docker client made during validation would fail loudly.
    monkeypatch.setattr("docker.DockerClient.__init__", _no_engine)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["check", "-p", str(path)], standalone_mode=False)
    out = " ".join(capsys.readouterr().err.split())
    assert exit_.value.code == 2, out
    assert str(path) in out, out
    assert expect in out, out


def _no_engine(*args, **kwargs):
    raise AssertionError("a Docker client was created while checking parameters")


def test_the_command_line_exits_2(tmp_path):
    r = subprocess.run([sys.executable, "-m", "hubops.cli.main", "check", "-p", str(FILES[0])], cwd=PROJECT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and str(FILES[0]) in " ".join(r.stderr.split())
