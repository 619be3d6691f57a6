"""Taking someone out: users who were on the userlist the hub ran with and are not on the new one.

80-deploy reads the userlist the running hub was started with (its Swarm config) before it
updates the service; once the new hub serves, each user who left the userlist and is still known
to the hub is removed from it: their server is stopped and their hub record (and with it their
login cookie and tokens) is deleted, so they can neither use a running server nor start one. Their
home (volume or directory) stays: put them back on the userlist and they find it again.

With LDAP, hubops asks the directory itself (auth_ldap.group_members, with the hub's service
account): everyone the hub knows who is neither on the userlist nor, now, in an allowed or admin
group is taken out the same way, so a user removed from a group in the directory loses their running
server at the next deploy of 80-deploy too. When the directory cannot be read, nobody is taken out
for their groups (the record says why) and only the userlist decides.

With OpenID Connect, a user who is also let in by a group at the provider (auth.oidc.allowed_groups or
admin_groups, as the hub saw them at their last login) is kept: the provider decides at their next
login. Someone removed from a group at the provider only is refused at their next login; hubops
cannot see that change (an OpenID provider has no standard API to ask), see README.
"""
from __future__ import annotations

import base64

import docker

from hubops.core.params import Loaded
from hubops.core.result import Result


def running_userlist(c: docker.DockerClient, svc, userlist_path: str) -> dict[str, list[str]] | None:
    """The userlist the hub service currently mounts: user -> their '@group' words; None without a hub."""
    if svc is None:
        return None
    for ref in svc.attrs["Spec"]["TaskTemplate"]["ContainerSpec"].get("Configs") or []:
        if (ref.get("File") or {}).get("Name") == userlist_path:
            try:
                data = c.configs.get(ref["ConfigID"]).attrs["Spec"]["Data"]
            except docker.errors.NotFound:
                return None
            users = {}
            for line in base64.b64decode(data).decode().splitlines():
                parts = line.split("#", 1)[0].split()
                if parts:
                    users[parts[0]] = [w[1:] for w in parts[1:] if w.startswith("@")]
            return users
    return None


def remove_departed(p: Loaded, r: Result, before: dict[str, list[str]] | None, *, timeout: float = 90) -> None:
    """Remove from the hub each user who left the userlist, and with LDAP each one the directory's
    groups no longer let in (see the module's docstring)."""
    from hubops.hub.running import HubAPI

    api = HubAPI(p)
    members = _directory_members(p, r)
    gone = set(before or {}) - set(p.users)
    if members is not None:
        known = {u["name"] for u in api.users()}
        gone |= {u for u in known if u not in p.users and u not in members and u != p.verify.user}
    removed = []
    provider_groups: set[str] = set()
    if p.auth.mode == "oidc":
        provider_groups = set(p.auth.oidc.allowed_groups) | set(p.auth.oidc.admin_groups)
    for name in sorted(gone):
        if members is not None and name in members:
            r.keep(f"user {name}", "off the userlist, but the directory lists them in an allowed group")
            continue
        u = api.user(name)
        if u is None:
            r.keep(f"user {name}", "off the userlist; not known to the hub (never logged in)")
            continue
        # OIDC: groups the provider gave them at their last login (not those the old userlist gave them).
        by_provider = (set(u.get("groups") or []) - set((before or {}).get(name, []))) & provider_groups
        if by_provider:
            r.keep(f"user {name}", f"off the userlist, but in provider group(s) {sorted(by_provider)} at their "
                                   "last login; the provider decides at their next login")
            continue
        why = "off the userlist" if name in (before or {}) and name not in p.users else \
            "in no allowed group of the directory and not on the userlist"
        server = u.get("servers") or {}  # the default server ("") and named ones: remove_user stops each
        api.remove_user(name, timeout=timeout)
        r.change("remove", f"user {name}", f"{why}: " + (
            f"their running server{'s were' if len(server) > 1 else ' was'} stopped, " if server
            else "no server was running, ")
            + "their hub record, login and tokens deleted (their home stays)")
        removed.append({"user": name, "server_stopped": bool(server)})
    r.facts["users_removed"] = removed


def _directory_members(p: Loaded, r: Result) -> set[str] | None:
    """LDAP with groups: who the directory lists in them now; None otherwise, or when it cannot be read."""
    if p.auth.mode != "ldap" or not (p.auth.ldap.allowed_groups or p.auth.ldap.admin_groups):
        return None
    from hubops.core.errors import IdentityProviderError
    from hubops.stages import auth_ldap

    try:
        members = auth_ldap.group_members(p)
    except IdentityProviderError as e:
        r.keep("directory groups", f"not read, so nobody is taken out for their groups this time: {e}")
        return None
    r.facts["directory_group_members"] = len(members)
    return members
