"""90-verify: prove the hub works, over HTTPS verified against the deployment's CA.

The hub API answers; a test user is created, its server spawned by SwarmSpawner as a Swarm
service, reached through the proxy (``/user/NAME/api/status`` answers 200), then stopped and
the user removed, with the home volume storage.users may have made for it. Leaves nothing behind;
a leftover from an interrupted earlier check is removed first.
"""
from __future__ import annotations

import logging
import time


from hubops.core import labels as L, progress
from hubops.hub.running import SPAWN_REQUEST_TIMEOUT, HubAPI
from hubops.core.engine import Clients, docker_op
from hubops.core.errors import VerifyError
from hubops.core.params import Loaded
from hubops.core.result import Result

log = logging.getLogger("hubops")


def verify_spawn(p: Loaded, clients: Clients, *, dry_run: bool = False) -> Result:
    """Spawn, reach, stop and remove a test user's server through the deployed hub."""
    r = Result("verify", dry_run=dry_run)
    if dry_run:
        return r.check(f"{p.hub_url}", f"plan only: would spawn a server for {p.verify.user} and reach it")
    api = HubAPI(p)
    user = p.verify.user
    stop_timeout = p.spawner.start_timeout

    info = api.request("GET", "/hub/api/").json()
    r.check(f"GET {api.base}/hub/api/", f"JupyterHub {info.get('version')}, certificate verified")
    hub_users = {u["name"] for u in api.users()}  # page by page: one answer holds at most 200 users
    r.facts["hub_version"] = info.get("version")

    if api.user(user) is not None:
        log.info("removing user %s left over from an earlier check", user)
        api.remove_user(user, timeout=stop_timeout)
        r.check(f"user {user}", "left over from an interrupted earlier check; removed first")

    api.request("POST", f"/hub/api/users/{user}", ok=(201,))
    t0 = time.monotonic()
    try:
        with progress.step(f"spawn a server for {user}", total=p.spawner.start_timeout + 30, unit="s"):
            # The hub holds this request while the spawn runs, up to its slow_spawn_timeout (10 s), and
            # answers 202 after that: a client timeout of 10 s loses that race on a busy cluster.
            api.request("POST", f"/hub/api/users/{user}/server", ok=(201, 202), timeout=SPAWN_REQUEST_TIMEOUT)
            api.wait_server(user, ready=True, timeout=p.spawner.start_timeout + 30)
        spawn_s = time.monotonic() - t0
        # The spawner escapes user names in service names: ask the hub which service it made.
        state = ((api.user(user) or {}).get("servers") or {}).get("", {}).get("state") or {}
        svc_name = state.get("object_name") or ""
        if not svc_name:
            raise VerifyError(f"the hub does not say which service runs {user}'s server (server state: {sorted(state)})")
        node, svc_labels = _where(clients, svc_name)
        if not L.owned_by(svc_labels, p.deployment):
            raise VerifyError(f"service {svc_name} lacks hubops's labels: the spawner is not configured by hubops")
        r.check(f"service {svc_name}", f"spawned by SwarmSpawner in {spawn_s:.1f} s, running on node {node}")
        t1 = time.monotonic()
        status = api.request("GET", f"/user/{user}/api/status").json()
        r.check(f"GET {api.base}/user/{user}/api/status", f"200 through the proxy in {time.monotonic() - t1:.2f} s")
        r.facts.update({"spawn_seconds": round(spawn_s, 2), "server_node": node,
                        "server_started": status.get("started"), "kernels": status.get("kernels")})
    finally:
        # Stop and remove whatever was made, also when a check above failed.
        api.remove_user(user, timeout=stop_timeout)
    with docker_op("list services"):
        left = [s.name for s in clients.manager.services.list(filters={"name": svc_name}) if s.name == svc_name]
    if left:
        raise VerifyError(f"service {svc_name} is still there after the server was stopped: the spawner did not clean up")
    homes = _remove_home(p, clients, user)
    r.check(f"user {user}", "server stopped, service removed, user deleted"
            + (f", home volume removed ({', '.join(homes)})" if homes else ""))
    r.facts["users_in_hub"] = sorted(hub_users - {user})
    return r


def _remove_home(p: Loaded, clients: Clients, user: str, timeout: float = 60) -> list[str]:
    """Remove the test user's home volume (storage.users node-local or volume-driver make one on the
    node the server ran on). Its container may still be going away: retry while it is in use."""
    import docker.errors

    removed = []
    sel = [*L.selector(p.deployment), f"{L.ROLE}=user-home", f"hubops.user={user}"]
    for host in p.hosts.all:
        hc = clients[host.name]
        with docker_op("list volumes", host.name):
            vols = hc.volumes.list(filters={"label": sel})
        for v in vols:
            deadline = time.monotonic() + timeout
            with docker_op(f"remove volume {v.name}", host.name):
                while True:
                    try:
                        v.remove()
                        break
                    except docker.errors.NotFound:
                        break
                    except docker.errors.APIError as e:
                        if e.status_code != 409 or time.monotonic() > deadline:
                            raise
                        time.sleep(0.5)
            removed.append(f"{v.name} on {host.name}")
    return removed


def _where(clients: Clients, svc_name: str) -> tuple[str, dict]:
    """The node name a service's running task is on, and the service's labels."""
    c = clients.manager
    with docker_op(f"inspect service {svc_name}"):
        svc = next((s for s in c.services.list(filters={"name": svc_name}) if s.name == svc_name), None)
        if svc is None:
            raise VerifyError(f"the hub says the server is ready but there is no service {svc_name}")
        tasks = [t for t in svc.tasks() if t["Status"]["State"] == "running"]
        node = "?"
        if tasks:
            n = c.nodes.get(tasks[0]["NodeID"])
            node = n.attrs["Description"]["Hostname"]
            node = (n.attrs["Spec"].get("Labels") or {}).get(f"hubops.{svc.attrs['Spec']['Labels'].get(L.DEPLOYMENT, '')}.host", node)
    return node, svc.attrs["Spec"].get("Labels") or {}
