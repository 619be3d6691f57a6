"""50-auth: who may log in. The userlist becomes a Swarm config; the authenticator's secrets
become Swarm secrets.

shared-password (the local default): a user password and an admin password are generated,
stored as Swarm secrets, and handed to the operator in the operator folder (mode 0600),
never under outputs/. github and oidc: the OAuth client secret, read from its {env:}/{file:}
reference; oidc first reads the provider's discovery document and refuses an issuer that does not
answer as OpenID Connect, before anything changes, and keeps a private CA as a Swarm config.
Undo: teardown removes the secrets and configs (by label).
"""
from __future__ import annotations

from hubops.core import operator, secrets
from hubops.core.engine import Clients
from hubops.core.params import Loaded
from hubops.core.result import Result
from hubops.stages import auth_ldap, auth_oidc

STAGE = "50-auth"

# The secret whose presence in the hub service says which login mode the hub runs with.
_MODE_OF_ROLE = {"user-password": "shared-password", "oidc-client-secret": "oidc",
                 "ldap-bind-password": "ldap", "github-client-secret": "github"}
# Operator-folder files that only these modes use; another mode retires them once its hub serves.
_MODE_FILES = {"user-password": {"shared-password"}, "admin-password": {"shared-password", "native"}}


def running_mode(c, p: Loaded) -> str | None:
    """The login mode the running hub was started with, read from the secrets its service mounts
    (their hubops.role labels); None without a hub or when it cannot be told."""
    import docker

    from hubops.core import labels as L
    from hubops.hub import running

    svc = running.find_service(c, p)
    if svc is None:
        return None
    roles = set()
    for ref in svc.attrs["Spec"]["TaskTemplate"]["ContainerSpec"].get("Secrets") or []:
        try:
            roles.add((c.secrets.get(ref["SecretID"]).attrs["Spec"].get("Labels") or {}).get(L.ROLE))
        except docker.errors.NotFound:
            continue
    modes = {_MODE_OF_ROLE[r] for r in roles if r in _MODE_OF_ROLE}
    if len(modes) == 1:
        return modes.pop()
    if not modes and "admin-password" in roles:
        return "native"
    return None


def retire_unused_passwords(p: Loaded, r: Result) -> None:
    """After a switch of login mode, once the new hub serves: the operator-folder passwords only the
    old mode used move to `retired/` in the operator folder (still 0600, still known to the
    redactor, no longer looking current). Their Swarm secrets go with the unused versions."""
    folder = operator.folder(p)
    for name, modes in _MODE_FILES.items():
        f = folder / name
        if p.auth.mode in modes or not f.is_file():
            continue
        r.change("retire", f"operator file {name}", f"not used by auth.mode {p.auth.mode}: moved to {folder / 'retired' / name}")
        if not r.dry_run:
            (folder / "retired").mkdir(mode=0o700, exist_ok=True)
            f.replace(folder / "retired" / name)


def ensure_auth(p: Loaded, clients: Clients, *, dry_run: bool = False) -> Result:
    """Userlist config and authenticator secrets, one versioned Swarm object each."""
    r = Result("auth", dry_run=dry_run)
    c = clients.manager
    discovery = None
    if p.auth.mode == "oidc":
        # Before anything changes: an issuer that does not answer, or not as OpenID Connect, stops here.
        discovery = auth_oidc.discover(p)
        r.check(f"OpenID provider {p.auth.oidc.issuer}", "answers with a valid discovery document"
                + (" (verified with auth.oidc.ca_bundle)" if p.auth.oidc.ca_bundle else ""))
    before = running_mode(c, p)
    if before is not None and before != p.auth.mode:
        # One deploy switches: users keep their names, so their servers and homes are theirs again at
        # their first login through the new mode; the old mode's secrets go once the new hub serves.
        r.change("switch", "login mode", f"{before} -> {p.auth.mode}: users keep their hub records, servers and "
                 "homes under the same user names; the old mode's secrets are removed once the new hub serves")
        r.facts["mode_before"] = before
    directory = None
    if p.auth.mode == "ldap":
        # Before anything changes: TLS verified, the service account's bind, the base and groups found.
        directory = auth_ldap.check_directory(p)
        r.check(f"LDAP server {p.auth.ldap.url}", "TLS verified" + (" (StartTLS)" if p.auth.ldap.starttls else "")
                + f", bind as {p.auth.ldap.bind_dn} accepted, search base and groups found")
    secrets.ensure_versioned(c, p, r, role="userlist", value=p.userlist_text().encode(), stage=STAGE,
                             kind="config", what=f"userlist ({len(p.allowed)} users, {len(p.admins)} admins)")
    r.facts.update({"mode": p.auth.mode, "allowed_users": p.allowed, "admins": p.admins})
    if p.groups:
        r.facts["groups"] = p.groups
    if p.auth.roles:
        r.facts["roles"] = {role.name: {"groups": role.groups, "scopes": role.scopes} for role in p.auth.roles}
    if p.auth.mode == "native":
        # Each user's own password; the userlist's admins are created with this one when the hub starts.
        value, created = operator.kept_secret(p, "admin-password", nbytes=32, dry_run=dry_run)
        secrets.ensure_versioned(c, p, r, role="admin-password", value=value.encode(), stage=STAGE,
                                 what="password of the userlist's admins" + (" (generated)" if created else ""))
        n = p.auth.native
        r.facts["passwords"] = (
            f"admins ({', '.join(p.admins)}): {p.operator_path}/admin-password, readable only by its owner; "
            + (f"other users sign up at {p.hub_url}/hub/signup and an admin approves them at {p.hub_url}/hub/authorize"
               if n.signup else "sign-up is off: admins add users")
            + f"; passwords of {n.minimum_password_length} characters at least")
    elif p.auth.mode == "shared-password":
        for role, nbytes, who in (("user-password", 12, "users"), ("admin-password", 32, "admins")):
            value, created = operator.kept_secret(p, role, nbytes=nbytes, dry_run=dry_run)
            secrets.ensure_versioned(c, p, r, role=role, value=value.encode(), stage=STAGE,
                                     what=f"password for {who}" + (" (generated)" if created else ""))
        r.facts["passwords"] = (
            f"{p.operator_path}/user-password (users), {p.operator_path}/admin-password "
            f"(admins: {', '.join(p.admins)}); readable only by their owner"
        )
    elif p.auth.mode == "oidc":
        o = p.auth.oidc
        value = p.resolve_secret(o.client_secret, "auth.oidc.client_secret")
        secrets.ensure_versioned(c, p, r, role="oidc-client-secret", value=value.encode(), stage=STAGE,
                                 what=f"OpenID Connect client secret (from {o.client_secret.describe()})")
        if o.ca_bundle is not None:
            secrets.ensure_versioned(c, p, r, role="oidc-ca", kind="config", stage=STAGE,
                                     value=p.path(o.ca_bundle).read_bytes(),
                                     what=f"CA of the OpenID provider (auth.oidc.ca_bundle {p.path(o.ca_bundle)})")
        r.facts.update({
            "oauth_callback_url": f"{p.hub_url}/hub/oauth_callback", "client_id": o.client_id,
            "username_claim": o.username_claim, "groups_claim": o.groups_claim,
            "allowed_groups": o.allowed_groups, "admin_groups": o.admin_groups, "scopes": o.scopes,
            "discovery": discovery.facts() if discovery else None,
        })
    elif p.auth.mode == "ldap":
        lp = p.auth.ldap
        value = p.resolve_secret(lp.bind_password, "auth.ldap.bind_password")
        secrets.ensure_versioned(c, p, r, role="ldap-bind-password", value=value.encode(), stage=STAGE,
                                 what=f"LDAP bind password of {lp.bind_dn} (from {lp.bind_password.describe()})")
        if lp.ca_bundle is not None:
            secrets.ensure_versioned(c, p, r, role="ldap-ca", kind="config", stage=STAGE,
                                     value=p.path(lp.ca_bundle).read_bytes(),
                                     what=f"CA of the LDAP server (auth.ldap.ca_bundle {p.path(lp.ca_bundle)})")
        r.facts.update({"ldap": directory, "allowed_groups": lp.allowed_groups, "admin_groups": lp.admin_groups,
                        "user_search_base": lp.user_search_base, "user_attribute": lp.user_attribute})
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
