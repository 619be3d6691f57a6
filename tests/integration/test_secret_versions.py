"""Swarm secret versions on the real engine's swarm, with deployments of their own (hdgen-RUN, hdver-RUN):

- every generated secret (cookie secret, proxy token, crypt key) is known to the redactor (issue 13,
  item 5);
- version names are keyed with the deployment's random key, not a bare hash of the value, and a
  deployment named the old way gets new names once, cleanly (issue 13, item 6)."""
from __future__ import annotations


import pytest

from hubops.core.params import load_params
from tests.helpers import make_params, run_name


@pytest.mark.parametrize("role", ["cookie-secret", "proxy-token", "crypt-key"])
def test_every_generated_secret_is_known_to_the_redactor(role, tmp_path, docker_client):
    """ensure_generated on the real engine's swarm: the value it puts into Swarm is in the operator
    folder (0600) and in the deployment's redactor; a version whose value was never kept (made by an
    older hubops) is replaced once by one the redactor knows."""
    from hubops.core import secrets
    from hubops.audit.redact import known_secrets
    from hubops.core.result import Result

    p = load_params(make_params(tmp_path, run_name("hdgen"), port=18404, subnet="10.164.4.0/24"))
    try:
        r = Result("test")
        name = secrets.ensure_generated(docker_client, p, r, role=role, stage="80-deploy", hex_value=True)
        kept = p.operator_path / secrets.generated_file(role)
        value = kept.read_text().strip()
        assert oct(kept.stat().st_mode & 0o777) == "0o600" and len(value) == 64
        assert value in known_secrets(p)
        assert [o.name for o in secrets.versions(docker_client, p, role)] == [name]
        # run again: kept, not generated anew
        again = Result("test")
        assert secrets.ensure_generated(docker_client, p, again, role=role, stage="80-deploy", hex_value=True) == name
        assert not again.changed
        # a value nobody kept (an older hubops): generated again, once, and now known
        kept.unlink()
        once = Result("test")
        newer = secrets.ensure_generated(docker_client, p, once, role=role, stage="80-deploy", hex_value=True)
        assert newer != name and once.changed and kept.read_text().strip() in known_secrets(p)
    finally:
        for kind in (docker_client.secrets,):
            for o in kind.list(filters={"label": f"hubops.deployment={p.deployment}"}):
                o.remove()


def test_version_names_are_keyed_and_old_names_rotate_once(tmp_path, docker_client):
    import hashlib

    from hubops.core import labels as L
    from hubops.core import secrets
    from hubops.core.result import Result

    p = load_params(make_params(tmp_path, run_name("hdver"), port=18405, subnet="10.164.5.0/24"))
    value = b"operator-chosen-password"
    bare = f"{p.prefix}-user-password-{hashlib.sha256(b'user-password' + bytes([0]) + value).hexdigest()[:12]}"
    try:
        # A version named as hubops named them before: a bare hash of the value (an offline oracle).
        docker_client.secrets.create(name=bare, data=value, labels=L.labels(p.deployment, "50-auth", role="user-password"))
        r = Result("test")
        name = secrets.ensure_versioned(docker_client, p, r, role="user-password", value=value, stage="50-auth")
        assert name != bare and r.changed, "the old name is replaced by a keyed one"
        key = p.operator_path / secrets.VERSION_KEY
        assert oct(key.stat().st_mode & 0o777) == "0o600" and len(key.read_text().strip()) >= 32
        # The name cannot be recomputed from a guess of the value without the key:
        guess = hashlib.sha256(b"user-password" + bytes([0]) + value).hexdigest()[:12]
        assert not name.endswith(guess)
        assert [o.name for o in secrets.versions(docker_client, p, "user-password")] == [name, bare]
        # Once: the next run keeps it; the old version goes with the unused ones.
        again = Result("test")
        assert secrets.ensure_versioned(docker_client, p, again, role="user-password", value=value,
                                        stage="50-auth") == name and not again.changed
        pruned = Result("test")
        secrets.prune_unused(docker_client, p, pruned, keep={name})
        assert [o.name for o in secrets.versions(docker_client, p, "user-password")] == [name]
        # Another deployment with the same value gets an unrelated name (its own key).
        q = load_params(make_params(tmp_path / "other", run_name("hdver2"), port=18406, subnet="10.164.6.0/24")) \
            if (tmp_path / "other").mkdir() is None else None
        assert secrets.versioned_name(q, "user-password", value).split("-")[-1] != name.split("-")[-1]
    finally:
        for o in docker_client.secrets.list(filters={"label": f"hubops.deployment={p.deployment}"}):
            o.remove()
