"""No offline oracle (issue 13, item 6), without an engine: version names keyed with the deployment's
random key; hubops's API token scoped to what hubops calls, with an expiry, rotated near it.
(On the real swarm: tests/integration/test_secret_versions.py; on a real hub:
tests/e2e/test_local_chain.py::test_hubops_token_is_scoped_and_a_rotated_one_is_revoked.)"""
from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone

from hubops.core import api_token, secrets
from hubops.hub import config as hubconfig
from hubops.core.params import load_params
from tests.helpers import make_params


def params(tmp_path, name="hdkey"):
    return load_params(make_params(tmp_path, name, port=18420, subnet="10.164.20.0/24"))


def test_version_names_need_the_deployments_key(tmp_path):
    p = params(tmp_path)
    value = b"operator-chosen-password"
    name = secrets.versioned_name(p, "user-password", value)
    bare = hashlib.sha256(b"user-password\0" + value).hexdigest()[:12]
    assert not name.endswith(bare), "a guess of the value must not be checkable from the name alone"
    key = p.operator_path / secrets.VERSION_KEY
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    assert secrets.versioned_name(p, "user-password", value) == name  # stable: the key is kept
    other = params(tmp_path / "o", "hdkey2") if (tmp_path / "o").mkdir() is None else None
    assert secrets.versioned_name(other, "user-password", value).rsplit("-", 1)[1] != name.rsplit("-", 1)[1]


def test_a_plan_makes_no_key(tmp_path):
    p = params(tmp_path)
    secrets.versioned_name(p, "user-password", b"x" * 16, create_key=False)
    assert not (p.operator_path / secrets.VERSION_KEY).exists()


def test_api_token_scopes_are_what_hubops_calls(tmp_path):
    p = params(tmp_path)
    scopes = api_token.scopes(p)
    assert "admin:users" not in scopes and "admin:servers" not in scopes and "read:hub" not in scopes
    assert f"admin:users!user={p.verify.user}" in scopes and f"admin:server_state!user={p.verify.user}" in scopes
    assert "admin:server_state" not in scopes
    assert {"list:users", "read:users", "servers", "access:servers"} <= set(scopes)


def test_api_token_expires_and_is_rotated_near_expiry(tmp_path):
    p = params(tmp_path)
    now = datetime(2026, 12, 1, tzinfo=timezone.utc)
    value, why = api_token.ensure(p, now=now)
    assert why == "generated" and api_token.read_expiry(p) == now + timedelta(days=api_token.LIFETIME_DAYS)
    for f in ("api-token", "api-token-expires"):
        assert oct((p.operator_path / f).stat().st_mode & 0o777) == "0o600"
    assert api_token.ensure(p, now=now + timedelta(days=30)) == (value, None)  # far from expiry: kept
    rotated, why = api_token.ensure(p, now=now + timedelta(days=80))  # 10 days left
    assert rotated != value and why.startswith("rotated: the kept token expires on")
    (p.operator_path / "api-token-expires").unlink()  # a token made by an older hubops: no expiry
    again, why = api_token.ensure(p, now=now)
    assert again != rotated and "had no expiry" in why


def test_an_expired_token_is_refused_with_what_to_do(tmp_path):
    p = params(tmp_path)
    now = datetime(2026, 12, 1, tzinfo=timezone.utc)
    api_token.ensure(p, now=now)
    assert api_token.check_usable(p, now=now) is None
    msg = api_token.check_usable(p, now=now + timedelta(days=91))
    assert "expired on" in msg and "run `hubops deploy`" in msg


def test_the_hub_config_sets_the_expiry_and_revokes_rotated_tokens(tmp_path):
    p = params(tmp_path)
    assert api_token.hub_lines(p, "hubops", "hubops-api-token") == []  # no token yet: nothing to expire
    api_token.ensure(p, now=datetime(2026, 12, 1, tzinfo=timezone.utc))
    config = hubconfig.render(p, singleuser_image="hubops-singleuser:test")
    assert "_HUBOPS_TOKEN_EXPIRES = _dt.datetime.fromisoformat('2027-03-01T00:00:00')" in config
    assert "token.expires_at = _HUBOPS_TOKEN_EXPIRES" in config and "self.db.delete(token)" in config
    compile(config, "jupyterhub_config.py", "exec")
