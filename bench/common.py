"""What the benchmark scripts share: running the CLI, sessions with the hub (the operator's token, the
admin's login), users made through the API, the floor of a spawn on this machine, and the machine's
state (free memory, load). Imported by bench/spawn.py, bench/burst.py and bench/scale.py.
"""
from __future__ import annotations

import os
import platform
import subprocess
import sys
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


def floor_server(p, clients: Clients, image: str, n: int, prefix: str = "hubops-bench-server",
                 port: int = 18888) -> list[float]:
    """The single-user server's own start on a worker: container start until /api/status answers."""
    worker = p.hosts.workers[0]
    c = clients[worker.name]
    out = []
    for i in range(n):
        t0 = time.monotonic()
        ctr = c.containers.run(image, ["jupyter", "server", "--ip=0.0.0.0", "--port=8888", "--ServerApp.token=",
                                       "--ServerApp.password="], detach=True,
                               ports={"8888/tcp": (worker.advertise_addr, port)}, name=f"{prefix}-{i}")
        try:
            s = requests.Session()
            s.trust_env = False
            while True:
                try:
                    if s.get(f"http://{worker.advertise_addr}:{port}/api/status", timeout=1).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                time.sleep(0.02)
            out.append(time.monotonic() - t0)
        finally:
            ctr.remove(force=True)
    return out
