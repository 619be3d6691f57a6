"""Every generated secret (cookie secret, proxy token, crypt key) is known to the redactor (issue 13,
item 5): on the real engine's swarm, with a deployment of its own (hdgen)."""
from __future__ import annotations

from pathlib import Path

import pytest

from hubops.params import load_params
from tests.helpers import make_params


@pytest.mark.parametrize("role", ["cookie-secret", "proxy-token", "crypt-key"])
def test_every_generated_secret_is_known_to_the_redactor(role, tmp_path, docker_client):
    """ensure_generated on the real engine's swarm: the value it puts into Swarm is in the operator
    folder (0600) and in the deployment's redactor; a version whose value was never kept (made by an
    older hubops) is replaced once by one the redactor knows."""
    from hubops import secrets
    from hubops.redact import known_secrets
    from hubops.result import Result

    p = load_params(make_params(tmp_path, "hdgen", port=18404, subnet="10.164.4.0/24"))
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
            for o in kind.list(filters={"label": "hubops.deployment=hdgen"}):
                o.remove()
