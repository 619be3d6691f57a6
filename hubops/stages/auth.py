"""50-auth: who may log in. The userlist becomes a Swarm config; the authenticator's secrets
become Swarm secrets.

shared-password (the local default): a user password and an admin password are generated,
stored as Swarm secrets, and handed to the operator in the operator folder (mode 0600),
never under outputs/. github: the OAuth client secret, read from its {env:}/{file:} reference.
Undo: teardown removes the secrets and configs (by label).
"""
from __future__ import annotations

from hubops.core import operator, secrets
from hubops.core.engine import Clients
from hubops.core.params import Loaded
from hubops.core.result import Result

STAGE = "50-auth"


def ensure_auth(p: Loaded, clients: Clients, *, dry_run: bool = False) -> Result:
    """Userlist config and authenticator secrets, one versioned Swarm object each."""
    r = Result("auth", dry_run=dry_run)
    c = clients.manager
    secrets.ensure_versioned(c, p, r, role="userlist", value=p.userlist_text().encode(), stage=STAGE,
                             kind="config", what=f"userlist ({len(p.allowed)} users, {len(p.admins)} admins)")
    r.facts.update({"mode": p.auth.mode, "allowed_users": p.allowed, "admins": p.admins})
    if p.auth.mode == "shared-password":
        for role, nbytes, who in (("user-password", 12, "users"), ("admin-password", 32, "admins")):
            value, created = operator.kept_secret(p, role, nbytes=nbytes, dry_run=dry_run)
            secrets.ensure_versioned(c, p, r, role=role, value=value.encode(), stage=STAGE,
                                     what=f"password for {who}" + (" (generated)" if created else ""))
        r.facts["passwords"] = (
            f"{p.operator_path}/user-password (users), {p.operator_path}/admin-password "
            f"(admins: {', '.join(p.admins)}); readable only by their owner"
        )
    else:
        gh = p.auth.github
        value = p.resolve_secret(gh.client_secret, "auth.github.client_secret")
        secrets.ensure_versioned(c, p, r, role="github-client-secret", value=value.encode(), stage=STAGE,
                                 what=f"GitHub OAuth client secret (from {gh.client_secret.describe()})")
        r.facts["oauth_callback_url"] = f"{p.hub_url}/hub/oauth_callback"
        r.facts["client_id"] = gh.client_id
        if gh.allowed_organizations:
            r.facts["allowed_organizations"] = gh.allowed_organizations
    return r
