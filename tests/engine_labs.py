"""Helpers for the suites that run hubops on lab nodes of chosen Docker engines (26, 28, mixed)."""
from __future__ import annotations

import json
import time
from pathlib import Path

from hubops.lab import cluster as lab
from hubops.core.engine import Clients
from hubops.hub.running import HubAPI
from tests.helpers import create_user


def up(tmp: Path, name: str, *, subnet: str, overlay: str, engines: str, workers: int = 2,
       storage: str | None = None) -> tuple[Path, "lab.LabInfo", float]:
    """A lab with its parameter file under `tmp` (users' homes on a folder every node shares,
    unless `storage` is given); returns the file, the lab and how long `lab up` took."""
    params = tmp / "lab.yaml"
    t0 = time.monotonic()
    info = lab.lab_up(name=name, managers=1, workers=workers, subnet=subnet, overlay_subnet=overlay,
                      params_out=params, engines=engines)
    took = time.monotonic() - t0
    if storage is None:
        homes = tmp / "homes"
        homes.mkdir(mode=0o755, exist_ok=True)
        storage = f"storage:\n  users: {{mode: shared-path, path: {homes}}}\n"
    params.write_text(params.read_text() + "\n" + storage)
    return params, info, took


def runs(outputs: Path) -> list[dict]:
    return [json.loads(f.read_text()) for f in sorted(outputs.glob("*/run.json"), key=lambda f: f.stat().st_mtime)]


def stage_record(outputs: Path, run: dict, stage: str) -> dict:
    from hubops.core.record import read_record

    st = next(s for s in run["stages"] if s["name"] == stage)
    folder = next(f.parent for f in outputs.glob("*/run.json") if json.loads(f.read_text())["run_id"] == run["run_id"])
    return read_record(json.loads((folder / st["notebook"]).read_text()))


def swarm_engines(p, clients: Clients) -> dict[str, str]:
    """hubops host name -> the engine version Swarm reports for that node."""
    out = {}
    for n in clients.manager.nodes.list():
        name = (n.attrs["Spec"].get("Labels") or {}).get(f"hubops.{p.deployment}.host", n.attrs["Description"]["Hostname"])
        out[name] = n.attrs["Description"]["Engine"]["EngineVersion"]
    return out


def spawn(api: HubAPI, user: str, timeout: float = 180) -> float:
    t0 = time.monotonic()
    if api.user(user) is None:
        create_user(api.p, user)  # through the admin: hubops's own token may not create users
    api.request("POST", f"/hub/api/users/{user}/server", ok=(201, 202))
    api.wait_server(user, ready=True, timeout=timeout)
    return time.monotonic() - t0


def stop(api: HubAPI, user: str) -> None:
    api.request("DELETE", f"/hub/api/users/{user}/server", ok=(202, 204))
    api.wait_server(user, ready=False, timeout=90)


def server_node(p, clients: Clients, api: HubAPI, user: str) -> str:
    """The hubops host that runs `user`'s server now."""
    # The server's Swarm service is named after the user (the hub's API token no longer reads
    # the spawner's state).
    svc = clients.manager.services.get(f"{p.prefix}-user-{user}")
    for _ in range(120):
        tasks = [t for t in svc.tasks(filters={"desired-state": "running"}) if t["Status"]["State"] == "running"]
        if tasks:
            node = clients.manager.nodes.get(tasks[0]["NodeID"])
            return (node.attrs["Spec"].get("Labels") or {}).get(f"hubops.{p.deployment}.host")
        time.sleep(0.5)
    raise AssertionError(f"{user}'s server has no running task")


def answers(api: HubAPI, user: str, timeout: float = 60) -> bool:
    """Whether `user`'s server answers through the proxy within `timeout`; when it does not, what it
    answered last and the hub's view of the server are printed (for the failing test's report)."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            r = api.s.get(f"{api.base}/user/{user}/api/status", timeout=10)
        except Exception as e:  # noqa: BLE001 - a refused or reset connection is "not yet"
            last = f"{e.__class__.__name__}: {str(e)[:200]}"
        else:
            if r.status_code == 200:
                return True
            last = f"HTTP {r.status_code}: {r.text[:200]}"
        time.sleep(1)
    print(f"{user}'s server did not answer within {timeout:.0f} s; last: {last}; the hub says: "
          f"{json.dumps((api.user(user) or {}).get('servers'))[:600]}")
    return False


def write_file(api: HubAPI, user: str, name: str, text: str) -> None:
    api.request("PUT", f"/user/{user}/api/contents/{name}", ok=(200, 201),
                json={"type": "file", "format": "text", "content": text})


def read_file(api: HubAPI, user: str, name: str) -> str | None:
    r = api.request("GET", f"/user/{user}/api/contents/{name}?content=1", ok=(200, 404))
    return r.json()["content"] if r.status_code == 200 else None


def labelled(p, clients: Clients, *, with_images: bool) -> dict[str, list[str]]:
    """Every object labelled for the deployment, per node (Swarm objects under the first manager)."""
    sel = ["hubops.managed=true", f"hubops.deployment={p.deployment}"]
    out: dict[str, list[str]] = {}
    for h in p.hosts.all:
        c = clients[h.name]
        found = [f"container {x['Names'][0].lstrip('/')}" for x in c.api.containers(all=True, filters={"label": sel})]
        found += [f"volume {v.name}" for v in c.volumes.list(filters={"label": sel})]
        found += [f"network {n['Name']}" for n in c.api.networks(filters={"label": sel})]
        if with_images:
            found += [f"image {t}" for i in c.images.list(filters={"label": "hubops.managed=true"})
                      for t in i.tags or [i.id]]
        out[h.name] = found
    m = clients.manager
    out[p.hosts.managers[0].name] += (
        [f"service {s.name}" for s in m.services.list(filters={"label": sel})]
        + [f"secret {s.name}" for s in m.secrets.list(filters={"label": sel})]
        + [f"config {s.name}" for s in m.configs.list(filters={"label": sel})])
    return out
