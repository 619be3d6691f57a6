"""What the benchmark scripts share: running the CLI, sessions with the hub (the operator's token, the
admin's login), users made through the API, the floor of a spawn on this machine, and the machine's
state (free memory, load). Imported by bench/spawn.py, bench/burst.py and bench/scale.py.
"""
from __future__ import annotations

import http.server
import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import docker
import docker.types
import requests

PROJECT = Path(__file__).resolve().parent.parent
if str(PROJECT) not in sys.path:
    sys.path.insert(0, str(PROJECT))

from hubops.core import operator  # noqa: E402
from hubops.core.engine import Clients  # noqa: E402
from hubops.hub.running import hub_session  # noqa: E402


def pct(values: list[float], q: float) -> float:
    """The q-quantile of `values` (nearest rank)."""
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def cli(*args: str, project: Path = PROJECT, outputs: Path | None = None, env: dict | None = None,
        timeout: float = 3600) -> subprocess.CompletedProcess:
    """`hubops ARGS` of the checkout `project` (records under `outputs` when given)."""
    extra = {"PYTHONPATH": str(project)}
    if outputs is not None:
        extra["HUBOPS_OUTPUTS"] = str(outputs)
    return subprocess.run([sys.executable, "-m", "hubops.cli.main", *args], cwd=project, capture_output=True,
                          text=True, env={**os.environ, **extra, **(env or {})}, timeout=timeout)


def free_gb() -> float:
    """This machine's available memory (MemAvailable), in GB."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024 / 1024
    return 0.0


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine() -> dict:
    return {"node": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "kernel": platform.release(), "mem_free_gb": round(free_gb(), 1), "load": load()}


def now_stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def git_head(project: Path = PROJECT) -> str:
    return subprocess.run(["git", "-C", str(project), "log", "-1", "--format=%h %s"], capture_output=True,
                          text=True).stdout.strip()


def token_session(p) -> requests.Session:
    """A session with the hub carrying hubops's own API token (the operator folder's)."""
    s = hub_session(p)
    s.headers["Authorization"] = f"token {operator.read(p, 'api-token').decode().strip()}"
    return s


def admin(p) -> requests.Session:
    """A session logged in as the deployment's first admin (hubops's own token may not create users)."""
    s = hub_session(p)
    s.get(f"{p.hub_url}/hub/login", timeout=60)
    pw = (p.operator_path / "admin-password").read_text().strip()
    r = s.post(f"{p.hub_url}/hub/login", data={"username": p.admins[0], "password": pw,
                                               "_xsrf": s.cookies.get("_xsrf")}, allow_redirects=False, timeout=60)
    r.raise_for_status()
    s.headers["X-XSRFToken"] = s.cookies.get("_xsrf")
    return s


def create_users(p, users: list[str]) -> None:
    """Make the hub users (already on the userlist) through the admin's login, in one request."""
    r = admin(p).post(f"{p.hub_url}/hub/api/users", json={"usernames": list(users)}, timeout=120)
    if r.status_code not in (201, 409):  # 409: all of them exist already
        raise SystemExit(f"creating users {users[:3]}...: HTTP {r.status_code} {r.text[:200]}")


def admin_create(p, user: str) -> None:
    """Make one hub user through the admin's login."""
    r = admin(p).post(f"{p.hub_url}/hub/api/users/{user}", timeout=60)
    if r.status_code != 201:
        raise SystemExit(f"creating bench user {user}: HTTP {r.status_code} {r.text[:200]}")


def floor_service(p, clients: Clients, image: str, n: int, prefix: str = "hubops-bench-floor") -> list[float]:
    """A Swarm service of the single-user image created through the API until its task runs on a worker."""
    c = clients.manager
    out = []
    for i in range(n):
        name = f"{prefix}-{i}"
        t0 = time.monotonic()
        svc = c.services.create(image, name=name, command=["sleep", "600"], networks=[p.network_name],
                                endpoint_spec=docker.types.EndpointSpec(mode="dnsrr"),
                                constraints=["node.role==worker"])
        try:
            while not [t for t in svc.tasks() if t["Status"]["State"] == "running"]:
                time.sleep(0.02)
            out.append(time.monotonic() - t0)
        finally:
            svc.remove()
    return out


def time_to_answer(p, clients: Clients, image: str, n: int, *, prefix: str, port: int, path: str,
                   **run: object) -> list[float]:
    """`n` times: a container of `image` started on the first worker with the container's port 8888 on
    `port` there, until `path` answers 200 (looked at every 0.02 s; given up after 120 s); then removed."""
    worker = p.hosts.workers[0]
    c = clients[worker.name]
    url = f"http://{worker.advertise_addr}:{port}{path}"
    out = []
    for i in range(n):
        t0 = time.monotonic()
        ctr = c.containers.run(image, detach=True, name=f"{prefix}-{i}",
                               ports={"8888/tcp": (worker.advertise_addr, port)}, **run)
        try:
            s = requests.Session()
            s.trust_env = False
            while True:
                try:
                    if s.get(url, timeout=1).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                if time.monotonic() - t0 > 120:
                    raise RuntimeError(f"{image} did not answer at {url} in 120 s: "
                                       + ctr.logs(tail=20).decode(errors="replace"))
                time.sleep(0.02)
            out.append(time.monotonic() - t0)
        finally:
            ctr.remove(force=True)
    return out


def floor_server(p, clients: Clients, image: str, n: int, prefix: str = "hubops-bench-server",
                 port: int = 18888) -> list[float]:
    """The single-user server's own start on a worker: container start until /api/status answers."""
    return time_to_answer(p, clients, image, n, prefix=prefix, port=port, path="/api/status",
                          command=["jupyter", "server", "--ip=0.0.0.0", "--port=8888", "--ServerApp.token=",
                                   "--ServerApp.password="])

class _StubHub(http.server.BaseHTTPRequestHandler):
    """What jupyterhub-singleuser asks of its hub while it starts: the API's version (GET /hub/api, which it
    waits for before it listens) and its first activity report (POST .../activity)."""
    version = "6.1.1"

    def _answer(self) -> None:
        body = json.dumps({"version": self.version}).encode()
        self.send_response(200)
        self.send_header("X-JupyterHub-Version", self.version)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = _answer

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._answer()

    def log_message(self, *args) -> None:  # quiet
        pass


def address_towards(addr: str) -> str:
    """This machine's own address on the way to `addr` (a lab node: the lab bridge's address)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((addr, 9))
        return s.getsockname()[0]


def floor_singleuser(p, clients: Clients, image: str, n: int, prefix: str = "hubops-bench-su",
                     port: int = 18889, version: str = "6.1.1") -> list[float]:
    """The image's own single-user server, as a spawn runs it (`jupyterhub-singleuser`, the image's command,
    with JupyterHub's environment), on a worker: container start until it answers. Its hub is a stub on
    this machine answering what the server asks while it starts (the API version, then activity), so the
    figure is the server's own start plus one round trip to a hub that answers at once."""
    worker = p.hosts.workers[0]
    _StubHub.version = version
    stub = http.server.ThreadingHTTPServer(("0.0.0.0", 0), _StubHub)
    threading.Thread(target=stub.serve_forever, daemon=True).start()
    hub = f"http://{address_towards(worker.advertise_addr)}:{stub.server_address[1]}/hub"
    env = {"JUPYTERHUB_API_TOKEN": "bench-floor-not-a-secret-" + "0" * 16, "JUPYTERHUB_API_URL": hub + "/api",
           "JUPYTERHUB_BASE_URL": "/", "JUPYTERHUB_SERVICE_PREFIX": "/user/bench/", "JUPYTERHUB_USER": "bench",
           "JUPYTERHUB_CLIENT_ID": "jupyterhub-user-bench", "JUPYTERHUB_OAUTH_CALLBACK_URL": "/user/bench/oauth_callback",
           "JUPYTERHUB_SERVICE_URL": "http://0.0.0.0:8888/user/bench/", "JUPYTERHUB_HOST": "",
           "JUPYTERHUB_ACTIVITY_URL": hub + "/api/users/bench/activity", "JUPYTERHUB_SERVER_NAME": ""}
    try:
        return time_to_answer(p, clients, image, n, prefix=prefix, port=port, path="/user/bench/api", environment=env)
    finally:
        stub.shutdown()


def hub_log(p, clients: Clients, tail: int = 20000, timestamps: bool = False) -> str:
    """The running hub container's log (the service's log can hang on Docker 20.10: a stream that never ends)."""
    from hubops.hub.running import hub_container

    ctr = hub_container(p, clients)
    return ctr.logs(stdout=True, stderr=True, tail=tail, timestamps=timestamps).decode(errors="replace")


def spawn_phases(p, clients: Clients, users: list[str]) -> dict:
    """Where each of these users' last spawn spent its time, from the hub's log (INFO lines):
    - hubops's own line (hubops/inhub/spawner.py): the service's creation, its task running (Swarm), the
      server answering (the server's own start);
    - then JupyterHub's "took S seconds to start" (its own check of the server), its route in the proxy
      ("Adding user"), and the server's first activity report."""
    import datetime as dt
    import re

    try:
        raw = hub_log(p, clients, timestamps=True)
    except Exception as e:  # noqa: BLE001 - a figure missing, not a failure
        return {"error": str(e)[:200]}

    def when(line: str) -> float:
        return dt.datetime.fromisoformat(line.split(" ", 1)[0][:26]).timestamp()

    out = {}
    for u in users:
        marks: dict[str, float] = {}
        split = None
        for line in raw.splitlines():
            m = re.search(rf"hubops: {re.escape(u)}'s server: service created in ([0-9.]+) s, its task running "
                          r"([0-9.]+) s later, the server answering ([0-9.]+) s after that", line)
            if m:
                marks = {"answering": when(line)}  # a new spawn: what came before was another's
                split = [float(x) for x in m.groups()]
            for key, pat in (("took", rf"User {re.escape(u)} took [0-9.]+ seconds to start"),
                             ("route", rf"Adding user {re.escape(u)} to proxy"),
                             ("activity", rf"POST /hub/api/users/{re.escape(u)}/activity")):
                if re.search(pat, line) and marks and key not in marks:
                    marks[key] = when(line)
        if split:
            one = {"service_created_s": round(split[0], 3), "task_running_s": round(split[1], 3),
                   "server_answering_s": round(split[2], 3)}
            for key, frm in (("took", "answering"), ("route", "took")):
                if key in marks and frm in marks:
                    one[f"{frm}_to_{key}_s"] = round(marks[key] - marks[frm], 3)
            out[u] = one
    return out
