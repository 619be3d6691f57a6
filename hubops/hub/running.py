"""The running hub: the one place that knows how to find the deployed hub and talk to it.

Its Swarm service and the image it runs, the node and container it runs on, waiting until it
serves over verified HTTPS, its REST API client (with hubops's service token), and what clients
verify it against. Every stage and day-2 module goes through here instead of finding the hub its
own way.
"""
from __future__ import annotations

import io
import json
import logging
import tarfile
import time
from typing import Any

import docker
import docker.errors
import requests

from hubops.core import api_token, labels as L, operator, progress
from hubops.hub import config as hubconfig
from hubops.core.engine import Clients, docker_op
from hubops.core.errors import DockerOpError, HubNotRunning, HubopsError, NotDeployed, VerifyError
from hubops.core.facts import node_name
from hubops.core.params import Loaded

log = logging.getLogger("hubops")


# -- the service and its image -------------------------------------------------------------------
def find_service(c: docker.DockerClient, p: Loaded):
    """The hub's Swarm service, or None when it does not exist (not deployed, or torn down)."""
    with docker_op(f"look up service {p.hub_service}"):
        return next((s for s in c.services.list(filters={"name": p.hub_service}) if s.name == p.hub_service), None)


def hub_service(p: Loaded, clients: Clients):
    """The hub's Swarm service; NotDeployed when there is none."""
    svc = find_service(clients.manager, p)
    if svc is None:
        raise NotDeployed(f"no hub service {p.hub_service}: deploy first (hubops deploy -p {p.source})")
    return svc


def service_image(svc) -> str:
    """The image reference a hub service runs (without the digest Swarm may pin)."""
    return svc.attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"].split("@")[0]


def running_image(p: Loaded, clients: Clients) -> str | None:
    """The image the deployed hub runs, or None when it is not deployed."""
    svc = find_service(clients.manager, p)
    return service_image(svc) if svc is not None else None


# -- where it runs ---------------------------------------------------------------------------
def hub_node(p: Loaded, clients: Clients) -> str:
    """The host the hub's task runs on: the hub's manager, unless the hub moved (storage.hub shared-path)."""
    if not p.hub_can_move:
        return p.hub_host.name
    c = clients.manager
    with docker_op("find the hub's task"):
        tasks = c.api.tasks(filters={"service": p.hub_service, "desired-state": "running"})
        for t in tasks:
            if t["Status"]["State"] == "running" and t.get("NodeID"):
                return node_name(p, c.nodes.get(t["NodeID"]))
    return p.hub_host.name


def hub_container(p: Loaded, clients: Clients):
    """The hub's running container (on the node hub_node names); HubNotRunning when there is none."""
    node = hub_node(p, clients)
    hc = clients[node]
    with docker_op("find the hub container", node):
        found = hc.containers.list(filters={"label": [*L.selector(p.deployment), f"{L.ROLE}=hub"], "status": "running"})
    if not found:
        raise HubNotRunning(f"no running hub container of deployment {p.deployment} on {node}")
    return found[0]


# -- notices on the hub's pages (ops/remove-node, announcements) ------------------------------
def announcements(p: Loaded, clients: Clients) -> dict[str, Any]:
    """The notices the hub shows now: user name (or "*" for everyone) -> text, or
    {"text": ..., "until": EPOCH} for one that expires. {} when there are none.
    Kept where they follow the hub (see `notices`): its PostgreSQL database, else its data folder."""
    from hubops.hub import notices

    if notices.in_database(p):
        kept = notices.read(p, clients)
        if kept is not None:
            return kept
        try:  # none in the database yet: those an older hubops wrote into the data folder
            return _announcements_file(p, clients)
        except HubNotRunning:
            return {}
    return _announcements_file(p, clients)


def _announcements_file(p: Loaded, clients: Clients) -> dict[str, Any]:
    ctr = hub_container(p, clients)
    try:
        stream, _ = ctr.get_archive(hubconfig.ANNOUNCEMENTS)
        raw = b"".join(stream)
    except docker.errors.NotFound:  # none written yet
        return {}
    except docker.errors.APIError as e:
        raise DockerOpError(f"read the hub's announcements from {ctr.name}: {e.explanation or e}") from e
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        member = next((m for m in tar.getmembers() if m.isfile()), None)
        data = tar.extractfile(member).read() if member else b"{}"  # type: ignore[union-attr]
    try:
        notes = json.loads(data or b"{}")
    except ValueError:
        log.warning("the hub's announcements file is not JSON; treating it as empty")
        return {}
    return notes if isinstance(notes, dict) else {}


def announce(p: Loaded, clients: Clients, notes: dict[str, Any]) -> None:
    """Show `notes` on the users' hub pages (user name or "*" for everyone -> text, or
    {"text": ..., "until": EPOCH}); the whole set is replaced, {} clears them all."""
    from hubops.hub import notices

    if notices.in_database(p):  # read by the hub on each page wherever it runs: no file to write
        notices.write(p, clients, notes)
        return
    data = json.dumps(notes, sort_keys=True).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(name=hubconfig.ANNOUNCEMENTS.rsplit("/", 1)[1])
        info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
        tar.addfile(info, io.BytesIO(data))
    with docker_op("write the hub's announcements"):
        hub_container(p, clients).put_archive(hubconfig.DATA_DIR, buf.getvalue())


# -- waiting until it serves --------------------------------------------------------------
def certificate_rejected(e: requests.exceptions.SSLError) -> bool:
    """Whether a TLS failure is the hub's certificate being refused (not trusted, wrong name, expired),
    as opposed to the connection being closed mid-handshake, which is what a hub that is restarting
    does (the engine accepts its published port while nothing listens behind it)."""
    text = str(e)
    return any(s in text for s in ("CERTIFICATE_VERIFY_FAILED", "certificate verify failed", "doesn't match",
                                   "hostname mismatch", "certificate has expired"))


def same_spec(task: dict, svc) -> bool:
    """Whether a task runs the service's current image, secrets and configs."""
    def key(cs: dict) -> tuple:
        return (cs.get("Image", "").split("@")[0],
                sorted(x["SecretName"] for x in cs.get("Secrets") or []),
                sorted(x["ConfigName"] for x in cs.get("Configs") or []))

    return key(task["Spec"]["ContainerSpec"]) == key(svc.attrs["Spec"]["TaskTemplate"]["ContainerSpec"])


def wait_until_serving(p: Loaded, clients: Clients, *, changed: bool) -> float:
    """Block until the service has converged and /hub/health answers over verified HTTPS.

    Raises DockerOpError when Swarm rolled the update back or the task keeps failing.
    """
    with progress.step(f"wait for {p.hub_service} to serve", total=p.hub.start_timeout, unit="s"):
        return _wait_until_serving(p, clients, changed=changed)


def _wait_until_serving(p: Loaded, clients: Clients, *, changed: bool) -> float:
    c = clients.manager
    t0 = time.monotonic()
    deadline = t0 + p.hub.start_timeout
    session = hub_session(p)
    last = ""
    while time.monotonic() < deadline:
        svc = find_service(c, p)
        status = (svc.attrs.get("UpdateStatus") or {}) if svc else {}
        state = status.get("State") or ""
        if changed and state in ("rollback_completed", "rollback_paused", "paused"):
            raise DockerOpError(
                f"service {p.hub_service}: the update failed and Swarm {state.replace('_', ' ')} it "
                f"({status.get('Message', '')}); the previous hub is serving. "
                f"See `docker service ps {p.hub_service} --no-trunc`"
            )
        # After an update, wait for Swarm's verdict (the monitor period) before trusting the answer.
        converged = not changed or state in ("", "completed")
        tasks = svc.tasks(filters={"desired-state": "running"}) if svc else []
        # Only a task made from the service's current spec counts: right after an update the old
        # task still runs, and the previous update's "completed" may still be the status shown.
        running = [t for t in tasks if t["Status"]["State"] == "running" and same_spec(t, svc)]
        if tasks and not running:
            last = tasks[0]["Status"].get("Err") or tasks[0]["Status"]["State"]
        if running and converged:
            # The hub answers on the node it runs on; with storage.hub shared-path that may be any manager.
            for url in p.hub_urls:
                try:
                    resp = session.get(f"{url}/hub/health", timeout=5)
                    if resp.status_code == 200:
                        return round(time.monotonic() - t0, 1)
                    last = f"HTTP {resp.status_code}"
                except requests.exceptions.SSLError as e:
                    if certificate_rejected(e):
                        raise HubopsError(f"{url}: the hub's certificate does not verify against {session.verify}: {e}") from e
                    last = f"TLS connection closed during the handshake ({e.__class__.__name__}): the hub is (re)starting"
                except requests.RequestException as e:
                    last = e.__class__.__name__
        time.sleep(0.5)
    raise DockerOpError(
        f"service {p.hub_service} did not answer at {p.hub_url}/hub/health within {p.hub.start_timeout} s "
        f"(last: {last or 'no running task'}); see `docker service ps {p.hub_service} --no-trunc` and "
        f"`docker service logs {p.hub_service}`"
    )


# -- talking to it ----------------------------------------------------------------------------
def trust_path(p: "Loaded") -> "str | bool":
    """What clients verify the hub against: the deployment's CA file, or the system roots."""
    if p.tls.mode == "self-signed":
        return str(p.operator_path / "ca.pem")
    if p.tls.mode == "acme":
        return str(p.path(p.tls.acme.ca_bundle)) if p.tls.acme.ca_bundle is not None else True
    if p.tls.files is not None and p.tls.files.ca is not None:
        return str(p.path(p.tls.files.ca))
    return True


def hub_session(p: "Loaded"):
    """A requests session for talking to the hub: verified against the deployment's CA, and
    deaf to the environment (REQUESTS_CA_BUNDLE would silently replace that CA, and a proxy
    variable would send hub traffic elsewhere)."""
    import requests

    s = requests.Session()
    s.trust_env = False
    s.verify = trust_path(p)
    return s


# Seconds to wait for the hub's answer to "start this server" (JupyterHub's slow_spawn_timeout is
# 10 s; then it answers 202 and the spawn goes on).
SPAWN_REQUEST_TIMEOUT = 40


def server_path(user: str, server_name: str = "") -> str:
    """The hub API's path of a user's default server, or of one of their named servers."""
    from urllib.parse import quote

    if not server_name:
        return f"/hub/api/users/{quote(user)}/server"
    return f"/hub/api/users/{quote(user)}/servers/{quote(server_name, safe='')}"


class HubAPI:
    """A minimal client of the JupyterHub REST API with hubops's service token."""

    # Longer than JupyterHub's slow_spawn_timeout and slow_stop_timeout (10 s), after which its API
    # answers 202 and goes on in the background: a client giving up at 10 s races that answer.
    def __init__(self, p: Loaded, *, timeout: float = 30):
        self.p = p
        token = operator.read(p, "api-token")
        if not token:
            raise VerifyError(
                f"no hub API token in {p.operator_path}/api-token: run 80-deploy from this machine first "
                "(the token is generated there and kept in the operator folder)"
            )
        expired = api_token.check_usable(p)  # the hub refuses it too: say what to do instead
        if expired:
            raise VerifyError(expired)
        self.s = hub_session(p)
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
            if certificate_rejected(e):
                raise VerifyError(f"{url}: the certificate does not verify against {self.s.verify}: {e}") from e
            raise VerifyError(f"{method} {url}: the hub closed the TLS connection during the handshake (is it "
                              f"restarting? `docker service ps` shows its tasks): {e}") from e
        except requests.RequestException as e:
            raise VerifyError(f"{method} {url}: no answer ({e.__class__.__name__}: {e})") from e
        if resp.status_code not in ok:
            raise VerifyError(f"{method} {url}: HTTP {resp.status_code} (expected {ok}): {resp.text[:300]}")
        return resp

    def user(self, name: str) -> dict | None:
        resp = self.request("GET", f"/hub/api/users/{name}", ok=(200, 404))
        return resp.json() if resp.status_code == 200 else None

    def users(self, *, page: int = 200) -> list[dict]:
        """Every user the hub knows, page by page (the hub answers at most its api_page_max_limit, 200 by
        default, to one GET /hub/api/users)."""
        out: list[dict] = []
        while True:
            batch = self.request("GET", f"/hub/api/users?offset={len(out)}&limit={page}").json()
            out += batch
            if len(batch) < page:
                return out

    def wait_server(self, name: str, *, ready: bool, timeout: float, server_name: str = "") -> float:
        """Wait until the user's default server (or named server `server_name`) is ready (or gone); seconds waited."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            u = self.user(name) or {}
            server = (u.get("servers") or {}).get(server_name)
            if ready and server and server.get("ready"):
                return time.monotonic() - t0
            if not ready and not server:
                return time.monotonic() - t0
            time.sleep(0.25)
        raise VerifyError(
            f"server {server_name + ' ' if server_name else ''}of user {name} did not become {'ready' if ready else 'stopped'} within {timeout:.0f} s; "
            "see the hub's log: `docker service logs` of the hub service"
        )

    def remove_user(self, name: str, *, timeout: float) -> None:
        u = self.user(name)
        if u is None:
            return
        for server_name in sorted(u.get("servers") or {}):  # the default one ("") and named ones
            self.request("DELETE", server_path(name, server_name), ok=(202, 204))
            self.wait_server(name, ready=False, timeout=timeout, server_name=server_name)
        self.request("DELETE", f"/hub/api/users/{name}", ok=(204,))
