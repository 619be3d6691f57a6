"""sshd on lab nodes of every engine, and cached root file systems built before they had one
(pure logic; the real thing is tests/e2e/test_lab_ssh.py)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hubops.core.errors import HubopsError
from hubops.lab import cluster as lab
from hubops.lab import engines as lab_engines
from hubops.lab import ssh as lab_ssh

FIRST = {"engine": "28", "suite": "sid", "docker": "28.5.2",  # as the first trees' manifests were
         "packages": {"docker.io": "28.5.2+dfsg4-5", "containerd": "2.1.9+ds1-5", "runc": "1.3.6+ds1-1"}}


def test_every_tree_gets_openssh_server():
    assert "openssh-server" in lab_engines._PKGS


def test_what_a_tree_lacks_comes_from_its_manifest_and_the_tree_itself(tmp_path):
    assert lab_engines.missing_packages(None) == list(lab_engines._PKGS)
    assert lab_engines.missing_packages(FIRST) == ["openssh-server"]
    now = {**FIRST, "installed": list(lab_engines._PKGS)}
    assert lab_engines.missing_packages(now) == []
    # The manifest says so, the tree does not (someone removed it): the tree wins.
    assert lab_engines.missing_packages(now, tmp_path) == ["openssh-server"]
    (tmp_path / "usr" / "sbin").mkdir(parents=True)
    (tmp_path / "usr" / "sbin" / "sshd").write_text("")
    assert lab_engines.missing_packages(now, tmp_path) == []
    assert lab_engines.has_sshd(tmp_path) and not lab_engines.has_sshd(tmp_path / "nothing")


def _cached(cache: Path, m: dict) -> Path:
    t = lab_engines.tree(cache, "28")
    t.mkdir(parents=True)
    (t / "hubops-rootfs.json").write_text(json.dumps(m))
    return t


def test_an_older_tree_is_completed_only_when_no_running_node_uses_it(tmp_path, monkeypatch):
    """The decision only: the apt step itself is what `lab up` runs (tests/e2e)."""
    completed = []

    def complete(s, root, m, missing, mirror, changes):
        completed.append((root, missing))
        changes.append("completed")
        return {**m, "installed": list(lab_engines._PKGS)}

    def no_build(*a, **k):
        raise AssertionError("a built tree is completed, not built again")

    monkeypatch.setattr(lab_engines, "_complete", complete)
    monkeypatch.setattr(lab_engines, "_build", no_build)
    t = _cached(tmp_path, FIRST)
    changes: list[str] = []
    m = lab_engines.ensure_rootfs("28", cache=tmp_path, changes=changes, in_use=lambda: ["x-node0 (lab x)"])
    assert m == FIRST and completed == [] and changes == []  # in use: left as it is
    m = lab_engines.ensure_rootfs("28", cache=tmp_path, changes=changes, in_use=lambda: [])
    assert completed == [(t, ["openssh-server"])] and changes == ["completed"]
    assert m["installed"] == list(lab_engines._PKGS)


def test_nodes_on_a_tree_are_those_running_from_that_cache(tmp_path):
    state, run, cache = tmp_path / "state", tmp_path / "run", tmp_path / "cache"
    for name, their_cache in (("la", cache), ("lb", tmp_path / "other-cache")):
        (state / name).mkdir(parents=True)
        (state / name / "lab.json").write_text(json.dumps({
            "name": name, "rootfs": {"cache": str(their_cache)},
            "nodes": [{"name": f"{name}-manager", "engine": "28"}, {"name": f"{name}-node0", "engine": "20.10"}]}))
    assert lab.nodes_on_tree("28", cache, state, run) == []  # no engine runs
    procs = []
    try:
        for name in ("la", "lb"):
            for node in (f"{name}-manager", f"{name}-node0"):
                pidfile = run / name / node / "docker.pid"
                pidfile.parent.mkdir(parents=True)
                # A process that looks like that node's dockerd (its name, its pid file): what
                # `lab status` takes for a running engine.
                p = subprocess.Popen(["bash", "-c", f'exec -a dockerd {sys.executable} -c "import time; '
                                      f'time.sleep(60)" --pidfile {pidfile}'])
                procs.append(p)
                pidfile.write_text(str(p.pid))
        import time

        deadline = time.monotonic() + 10
        while lab._engine_pid(run / "lb", "lb-node0") is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lab.nodes_on_tree("28", cache, state, run) == ["la-manager (lab la)"]
        assert lab.nodes_on_tree("20.10", cache, state, run) == []
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_ssh_on_a_node_without_sshd_is_refused_naming_it_and_saying_what_to_do(tmp_path):
    lab_ssh.refuse_without_sshd("lx", [("lx-manager", "20.10", True), ("lx-node0", "28", True)], tmp_path)
    with pytest.raises(HubopsError) as e:
        lab_ssh.refuse_without_sshd("lx", [("lx-manager", "28", True), ("lx-node0", "28", False)], tmp_path)
    msg = str(e.value)
    assert "lx-node0 (Docker 28)" in msg and "lx-manager" not in msg
    assert str(lab_engines.tree(tmp_path, "28")) in msg
    assert "hubops lab down --name lx" in msg and "--rebuild" in msg
    with pytest.raises(HubopsError, match=r"because the running node\(s\) ly-manager \(lab ly\) used it"):
        lab_ssh.refuse_without_sshd("lx", [("lx-node0", "28", False)], tmp_path, ["ly-manager (lab ly)"])


def test_sshd_runs_in_the_nodes_namespaces_from_its_own_root():
    assert lab_ssh.sshd_argv(4242, "-t", "-f", "/x") == [
        "nsenter", "--target", "4242", "--net", "--mount", "--uts", "/usr/sbin/sshd", "-t", "-f", "/x"]


@pytest.mark.parametrize("text,version", [
    ("OpenSSH_9.2, OpenSSL 3.0.19 27 Jan 2026", (9, 2)),
    ("OpenSSH_10.6p1 Debian-1, OpenSSL 3.6.5 29 Sep 2026", (10, 6)),
    ("OpenSSH_10.0p2 Debian-7+deb13u4, OpenSSL 3.5.4", (10, 0)),
    ("sshd: illegal option -- V", None),
])
def test_the_openssh_release_is_read_from_sshd_V(text, version):
    assert lab_ssh.openssh_version(text) == version


@pytest.mark.parametrize("version,penalties_off", [((9, 2), False), ((9, 8), True), ((10, 6), True), (None, False)])
def test_source_penalties_are_off_where_sshd_has_them(version, penalties_off):
    cfg = lab_ssh.sshd_config(address="10.1.2.3", host_key=Path("/k"), authorized_keys=Path("/a"),
                              pidfile=Path("/p"), version=version)
    assert ("PerSourcePenalties no" in cfg.splitlines()) is penalties_off
    lines = cfg.splitlines()
    for must in ("ListenAddress 10.1.2.3", "PasswordAuthentication no", "AllowStreamLocalForwarding local",
                 "AuthorizedKeysFile /a", "PermitTTY no"):
        assert must in lines
