"""The ssh tunnel's pure parts: URL parsing, the ssh command line, and what each failure says."""
from __future__ import annotations

import pytest

from hubops.core import ssh


def test_url_forms():
    assert ssh.Target.parse("ssh://deploy@10.0.0.5") == ssh.Target("deploy", "10.0.0.5", None)
    assert ssh.Target.parse("ssh://deploy@node1.example.org:2222") == ssh.Target("deploy", "node1.example.org", 2222)
    assert ssh.Target.parse("ssh://node1") == ssh.Target(None, "node1", None)


@pytest.mark.parametrize("url", ["ssh://host/var/run/docker.sock", "ssh://", "tcp://host:2376", "ssh://h?x=1"])
def test_bad_urls_are_refused(url):
    with pytest.raises(ValueError, match="ssh://USER@HOST"):
        ssh.Target.parse(url)


def test_a_password_in_the_url_is_refused_and_never_echoed():
    with pytest.raises(ValueError) as e:
        ssh.Target.parse("ssh://root:hunter2secret@10.0.0.5")
    assert "hunter2secret" not in str(e.value) and "key only" in str(e.value)


def test_the_command_line_never_prompts_and_never_accepts_an_unknown_key():
    argv = ssh.argv(ssh.Target("deploy", "10.0.0.5", 2222), local="/tmp/x/n.sock", remote="/var/run/docker.sock",
                    known_hosts="/etc/hubops/known_hosts", identity="/home/op/.ssh/id_ed25519", connect_timeout=7)
    opts = {argv[i + 1] for i, a in enumerate(argv) if a == "-o"}
    assert {"BatchMode=yes", "StrictHostKeyChecking=yes", "ConnectTimeout=7", "ExitOnForwardFailure=yes",
            "UserKnownHostsFile=/etc/hubops/known_hosts", "GlobalKnownHostsFile=/dev/null", "IdentitiesOnly=yes"} <= opts
    assert not any("accept-new" in o or o == "StrictHostKeyChecking=no" for o in opts)
    assert argv[argv.index("-L") + 1] == "/tmp/x/n.sock:/var/run/docker.sock"
    assert argv[-2:] == ["--", "10.0.0.5"] and ["-p", "2222"] == argv[argv.index("-p"):argv.index("-p") + 2]
    assert argv[argv.index("-l") + 1] == "deploy" and argv[argv.index("-i") + 1] == "/home/op/.ssh/id_ed25519"
    # without a pinned file: OpenSSH's own known_hosts, still strict
    plain = ssh.argv(ssh.Target(None, "h", None), local="/l", remote="/r", known_hosts=None, identity=None,
                     connect_timeout=10)
    assert "StrictHostKeyChecking=yes" in plain and not any(a.startswith("UserKnownHostsFile") for a in plain)


@pytest.mark.parametrize("stderr, says", [
    ("Host key verification failed.\r\n", "not known; hubops never accepts an unknown or changed host key"),
    ("@@@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @@@\nHost key verification failed.", "not the one pinned"),
    ("root@10.0.0.5: Permission denied (publickey).", "authorized_keys"),
    ("channel 2: open failed: connect failed: open failed\n", "engine's socket could not be reached"),
    ("ssh: connect to host 10.0.0.5 port 22: Connection refused", "ssh did not connect"),
])
def test_each_failure_says_what_to_do(stderr, says):
    msg = ssh.explain("node1", "ssh://root@10.0.0.5", stderr, known_hosts="/k")
    assert msg.startswith("host node1 (ssh://root@10.0.0.5)") and says in msg, msg


def test_a_missing_ssh_client_is_named(monkeypatch):
    from hubops.core.errors import PreflightError

    monkeypatch.setattr(ssh.shutil, "which", lambda name: None)
    with pytest.raises(PreflightError, match="openssh-client"):
        ssh.engine_url("n1", "ssh://root@10.0.0.5", engine_socket="/var/run/docker.sock")
