"""90-verify: prove the hub works, over HTTPS verified against the deployment's CA.

The hub API answers; a test user is created, its server spawned by SwarmSpawner as a Swarm
service, reached through the proxy (``/user/NAME/api/status`` answers 200), then stopped and
the user removed, with the home volume storage.users may have made for it. Leaves nothing behind;
a leftover from an interrupted earlier check is removed first.
"""
from __future__ import annotations

import logging
import time
from typing import Any

import requests

from . import labels as L, operator, progress, tls
from .engine import Clients, docker_op
from .errors import VerifyError
from .params import Loaded
from .result import Result

log = logging.getLogger("hubops")
# Seconds to wait for the hub's answer to "start this server" (JupyterHub's slow_spawn_timeout is
# 10 s; then it answers 202 and the spawn goes on).
SPAWN_REQUEST_TIMEOUT = 40


class HubAPI:
    """A minimal client of the JupyterHub REST API with hubops's service token."""

    # Longer than JupyterHub's slow_spawn_timeout and slow_stop_timeout (10 s), after which its API
    # answers 202 and goes on in the background: a client giving up at 10 s races that answer.
    def __init__(self, p: Loaded, *, timeout: float = 30):
        token = operator.read(p, "api-token")
        if not token:
            raise VerifyError(
                f"no hub API token in {p.operator_path}/api-token: run 80-deploy from this machine first "
                "(the token is generated there and kept in the operator folder)"
            )
        from . import api_token

        expired = api_token.check_usable(p)
        if expired:
            raise VerifyError(expired)
        self.s = tls.hub_session(p)
        self.base = p.hub_url
        if len(p.hub_urls) > 1:  # the hub may run on any manager: the first address where it answers
            self.base = next((u for u in p.hub_urls if self._health(u)), p.hub_url)
        self.s.headers["Authorization"] = f"token {token.decode().strip()}"
        self.timeout = timeout

    def _health(self, url: str) -> bool:
        try:
            return self.s.get(f"{url}/hub/health", timeout=5).status_code == 200
        except requests.RequestException:
            return False

    def request(self, method: str, path: str, *, ok: tuple[int, ...] = (200,), timeout: float | None = None,
                **kw: Any) -> requests.Response:
        url = self.base + path
        try:
            resp = self.s.request(method, url, timeout=timeout or self.timeout, **kw)
        except requests.exceptions.SSLError as e:
            raise VerifyError(f"{url}: the certificate does not verify against {self.s.verify}: {e}") from e
        except requests.RequestException as e:
            raise VerifyError(f"{method} {url}: no answer ({e.__class__.__name__}: {e})") from e
        if resp.status_code not in ok:
            raise VerifyError(f"{method} {url}: HTTP {resp.status_code} (expected {ok}): {resp.text[:300]}")
        return resp

    def user(self, name: str) -> dict | None:
        resp = self.request("GET", f"/hub/api/users/{name}", ok=(200, 404))
        return resp.json() if resp.status_code == 200 else None

    def wait_server(self, name: str, *, ready: bool, timeout: float) -> float:
        """Wait until the user's default server is ready (or gone); seconds waited."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            u = self.user(name) or {}
            server = (u.get("servers") or {}).get("")
            if ready and server and server.get("ready"):
                return time.monotonic() - t0
            if not ready and not server:
                return time.monotonic() - t0
            time.sleep(0.25)
        raise VerifyError(
            f"server of user {name} did not become {'ready' if ready else 'stopped'} within {timeout:.0f} s; "
            "see the hub's log: `docker service logs` of the hub service"
        )

    def remove_user(self, name: str, *, timeout: float) -> None:
        u = self.user(name)
        if u is None:
            return
        if (u.get("servers") or {}).get(""):
            self.request("DELETE", f"/hub/api/users/{name}/server", ok=(202, 204))
            self.wait_server(name, ready=False, timeout=timeout)
        self.request("DELETE", f"/hub/api/users/{name}", ok=(204,))


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
    hub_users = {u["name"] for u in api.request("GET", "/hub/api/users").json()}
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
