"""The set-up scripts on a machine that lacks what `make deploy` needs (as a minimal Debian does).

Run for real, as an unprivileged user (setpriv) with a PATH that holds only the shell tools the
scripts use: nothing can be installed, so the script must stop and name what to install.
The whole set-up on a real minimal Debian: scripts/try-minimal-debian.sh (not part of the suite).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[2]
TOOLS = ("bash", "dirname", "id", "grep", "readlink")


@pytest.fixture
def home():
    # Outside pytest's tmp_path, whose parent is root's alone: the unprivileged user must enter it.
    d = Path(tempfile.mkdtemp(prefix="hubops-setup-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d)


def _run_as_nobody(home: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.fail("needs root and setpriv (util-linux) to run the script as an unprivileged user", pytrace=False)
    bin_dir = home / "bin"
    bin_dir.mkdir()
    for t in (*TOOLS, *extra):
        exe = shutil.which(t)
        assert exe, f"{t} is not installed here"
        (bin_dir / Path(t).name).symlink_to(exe)
    # A copy of the scripts: the checkout may sit in a folder the unprivileged user cannot enter.
    scripts = home / "scripts"
    scripts.mkdir()
    for name in ("ensure-system.sh", "apt.sh"):
        shutil.copy(PROJECT / "scripts" / name, scripts / name)
    return subprocess.run(
        [shutil.which("setpriv"), "--reuid=65534", "--regid=65534", "--clear-groups",
         str(bin_dir / "bash"), str(scripts / "ensure-system.sh")],
        cwd=home, capture_output=True, text=True, timeout=60,
        env={"PATH": str(bin_dir), "HOME": str(home), **(env or {})})


def test_ensure_system_names_what_a_minimal_debian_lacks(home):
    r = _run_as_nobody(home)
    print(r.stdout, r.stderr)
    assert r.returncode == 1
    assert ("missing: python3 python3-venv (the interpreter make deploy installs hubops with). "
            "Install them as root: apt-get update && apt-get install -y python3 python3-venv") in r.stderr
    assert "apt-get update && apt-get install -y git iproute2 iptables curl" in r.stderr


def test_ensure_system_only_warns_about_tools_a_local_deploy_can_do_without(home):
    # Debian's own python3 with its venv module (python3-venv), as this machine has it.
    if not Path("/usr/bin/python3").exists():
        pytest.fail("/usr/bin/python3 is missing (apt-get install python3 python3-venv)", pytrace=False)
    r = _run_as_nobody(home, "/usr/bin/python3", "git")
    print(r.stdout, r.stderr)
    assert r.returncode == 0
    assert r.stderr.startswith("warning: iproute2 iptables curl missing")


def test_ensure_system_refuses_an_interpreter_it_cannot_find(home):
    r = _run_as_nobody(home, env={"PYTHON": "python3.99"})
    assert r.returncode == 1
    assert "python3.99 is not on PATH: install it, or run make with PYTHON=python3" in r.stderr


def test_ensure_system_is_silent_when_nothing_is_missing(home):
    # Debian's own python3 with its venv module (python3-venv), as this machine has it.
    if not Path("/usr/bin/python3").exists():
        pytest.fail("/usr/bin/python3 is missing (apt-get install python3 python3-venv)", pytrace=False)
    tools = ["/usr/bin/python3", "git", "ip", "iptables", "curl", "dpkg-query"]
    r = _run_as_nobody(home, *tools)
    print(r.stdout, r.stderr)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
