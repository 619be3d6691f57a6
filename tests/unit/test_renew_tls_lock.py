"""Two renew-tls runs of one deployment never overlap: the second stops at once, before any
Docker or ACME call, and the lock is released when a run ends (also when it fails)."""
from __future__ import annotations

import fcntl
import textwrap

import pytest

from hubops.ops import renew_tls as renew
from hubops.core.errors import HubopsError, TLSError
from hubops.core.params import load_params


@pytest.fixture
def p(tmp_path):
    (tmp_path / "users").write_text("ann admin\n")
    f = tmp_path / "p.yaml"
    f.write_text(textwrap.dedent(f"""
        deployment: lock1
        operator_dir: {tmp_path / 'op'}
        hosts:
          managers:
            - {{name: m1, url: "unix:///nonexistent/docker.sock", advertise_addr: 192.0.2.1}}
        auth: {{userlist: users}}
    """))
    return load_params(f)


def test_a_second_renewal_stops_while_one_holds_the_lock(p):
    with renew.exclusive(p) as path:
        assert path == p.operator_path / "renew-tls.lock" and path.stat().st_mode & 0o777 == 0o600
        with pytest.raises(HubopsError, match=r"another renew-tls of deployment lock1 is running .*renew-tls\.lock.*nothing was done"):
            renew.renew_tls(p, clients=None)  # type: ignore[arg-type]  # stops before using the engine
        # A plan changes nothing and takes no lock: it gets as far as the missing certificate.
        with pytest.raises(TLSError, match="no certificate"):
            renew.renew_tls(p, clients=None, dry_run=True)  # type: ignore[arg-type]


def test_the_lock_is_released_when_a_run_ends_or_fails(p):
    with pytest.raises(TLSError, match="no certificate"):  # got past the lock, then failed
        renew.renew_tls(p, clients=None)  # type: ignore[arg-type]
    with open(p.operator_path / "renew-tls.lock") as f:  # free again
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_the_servers_checked_around_a_renewal_include_named_ones():
    """renew-tls checks that every server that answered before answers after: named servers too
    (their path is USER/NAME), stopped or pending ones not."""
    users = [
        {"name": "alice", "servers": {"": {"ready": True}, "gpu": {"ready": True}, "old": {"ready": False}}},
        {"name": "bob", "servers": {"": {"ready": False, "pending": "spawn"}}},
        {"name": "carol", "servers": {"big": {"ready": True}}},
        {"name": "dan"},  # no servers key: a token without read:servers, or none at all
    ]
    assert renew.ready_servers(users) == ["alice", "alice/gpu", "carol/big"]
