"""The original topology on a real lab: one manager running the hub and proxy, two workers
running users' servers, every engine reached over mutual TLS on 2376. One lab and one deployment
are shared by the tests in this file, in order:

- the whole deploy chain runs on the lab's parameter file;
- two users' servers land on the workers, not the manager, and answer through the hub;
- remove-node on a worker that hosts a server: the node is gone from the swarm, the user's server
  moved to the other worker and answers again, the hub served throughout;
- add-node brings the host back as a worker, with the images, and it takes the next spawn;
- a second deploy changes nothing;
- lab down leaves nothing.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from hubops.lab import cluster as lab
from hubops.core.engine import Clients
from hubops.core.params import load_params
from hubops.hub.running import HubAPI
from tests.helpers import LAB_SUBNETS, create_user, free_subnet, run_name
from tests.helpers import hubops_cli as cli

pytestmark = [pytest.mark.engine, pytest.mark.e2e]
PROJECT = Path(__file__).resolve().parents[2]
NAME = run_name("e2el")  # the lab and the deployment: e2el-RUN (tests/helpers)


def last_run(outputs: Path) -> dict:
    return json.loads(sorted(outputs.glob("*/run.json"), key=lambda f: f.stat().st_mtime)[-1].read_text())


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lab")
    params = tmp / "lab.yaml"
    outputs = tmp / "outputs"
    try:
        t0 = time.monotonic()
        lab.lab_up(name=NAME, managers=1, workers=2, subnet=free_subnet(LAB_SUBNETS), params_out=params)
        print(f"\nlab up: {time.monotonic() - t0:.1f} s")
        # Users' homes on storage every node mounts at the same place: on a lab, one host directory
        # all engines share (as NFS-mounted hosts share /mnt/nfs in production).
        homes = tmp / "homes"
        homes.mkdir(mode=0o755)
        params.write_text(params.read_text() + f"\nstorage:\n  users: {{mode: shared-path, path: {homes}}}\n")
        t0 = time.monotonic()
        deploy = cli("deploy", "-p", str(params), outputs=outputs)
        print(f"lab deploy (cold): {time.monotonic() - t0:.1f} s\n{deploy.stderr[-2500:]}")
        p = load_params(params)
        yield {"params": params, "outputs": outputs, "deploy": deploy, "p": p, "tmp": tmp}
    finally:
        lab.lab_down(name=NAME)


def nodes_of(p, clients) -> dict[str, str]:
    """hubops host name -> swarm role, for the nodes in the swarm now."""
    out = {}
    for n in clients.manager.nodes.list():
        name = (n.attrs["Spec"].get("Labels") or {}).get(f"hubops.{p.deployment}.host", n.attrs["Description"]["Hostname"])
        out[name] = n.attrs["Spec"]["Role"]
    return out


def server_node(p, clients, api: HubAPI, user: str) -> str:
    svc = clients.manager.services.get(f"{p.prefix}-user-{user}")  # the spawner's service name
    for _ in range(60):
        tasks = [t for t in svc.tasks(filters={"desired-state": "running"}) if t["Status"]["State"] == "running"]
        if tasks:
            node = clients.manager.nodes.get(tasks[0]["NodeID"])
            return (node.attrs["Spec"].get("Labels") or {}).get(f"hubops.{p.deployment}.host")
        time.sleep(0.5)
    raise AssertionError(f"{user}'s server has no running task")


def spawn(api: HubAPI, user: str) -> None:
    if api.user(user) is None:
        create_user(api.p, user)
    api.request("POST", f"/hub/api/users/{user}/server", ok=(201, 202))
    api.wait_server(user, ready=True, timeout=120)


def answers(api: HubAPI, user: str, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = api.s.get(f"{api.base}/user/{user}/api/status", timeout=10)
        if r.status_code == 200:
            return True
        time.sleep(1)
    return False


def test_deploy_chain_on_the_lab(cluster):
    assert cluster["deploy"].returncode == 0, cluster["deploy"].stderr[-4000:]
    run = last_run(cluster["outputs"])
    assert run["status"] == "ok" and len(run["stages"]) == 11
    assert set(run["engines"]) == {f"{NAME}-manager", f"{NAME}-node0", f"{NAME}-node1"}
    p = cluster["p"]
    assert nodes_of(p, Clients(p)) == {f"{NAME}-manager": "manager", f"{NAME}-node0": "worker", f"{NAME}-node1": "worker"}


def test_users_servers_land_on_workers_and_answer(cluster):
    p = cluster["p"]
    clients, api = Clients(p), HubAPI(p)
    for user in ("alice", "bob"):
        spawn(api, user)
    where = {u: server_node(p, clients, api, u) for u in ("alice", "bob")}
    assert all(n in (f"{NAME}-node0", f"{NAME}-node1") for n in where.values()), where
    assert all(answers(api, u) for u in ("alice", "bob"))
    cluster["where"] = where


def write_file(api: HubAPI, user: str, name: str, text: str) -> None:
    api.request("PUT", f"/user/{user}/api/contents/{name}", ok=(200, 201),
                json={"type": "file", "format": "text", "content": text})


def read_file(api: HubAPI, user: str, name: str) -> str:
    return api.request("GET", f"/user/{user}/api/contents/{name}?content=1").json()["content"]


def test_remove_node_moves_the_server_and_the_hub_keeps_serving(cluster):
    p = cluster["p"]
    clients, api = Clients(p), HubAPI(p)
    victim = cluster["where"]["alice"]
    write_file(api, "alice", "notes.txt", "written on " + victim)
    r = cli("ops", "remove-node", "-p", str(cluster["params"]), "--set", f"node={victim}", outputs=cluster["outputs"])
    assert r.returncode == 0, r.stderr[-4000:]
    assert victim not in nodes_of(p, clients)
    assert api.s.get(f"{p.hub_url}/hub/health", timeout=10).status_code == 200
    moved_to = server_node(p, clients, api, "alice")
    assert moved_to != victim and moved_to.startswith(f"{NAME}-node")
    assert answers(api, "alice", timeout=90), "alice's server answers again after the move"
    # shared-path storage: the file alice wrote on the removed worker is there on the other one.
    assert read_file(api, "alice", "notes.txt") == "written on " + victim
    record = last_run(cluster["outputs"])
    assert record["kind"] == "remove-node" and record["status"] == "ok"
    cluster["removed"] = victim


def test_add_node_joins_with_images_and_takes_a_spawn(cluster):
    p = cluster["p"]
    clients, api = Clients(p), HubAPI(p)
    back = cluster["removed"]
    r = cli("ops", "add-node", "-p", str(cluster["params"]), "--set", f"node={back}", outputs=cluster["outputs"])
    assert r.returncode == 0, r.stderr[-4000:]
    assert nodes_of(p, clients)[back] == "worker"
    # The other worker runs both servers now; Swarm spreads the next one onto the empty node.
    spawn(api, "carol")
    assert server_node(p, clients, api, "carol") == back
    assert answers(api, "carol")


def test_second_deploy_changes_nothing(cluster):
    r = cli("deploy", "-p", str(cluster["params"]), outputs=cluster["outputs"])
    assert r.returncode == 0, r.stderr[-4000:]
    run = last_run(cluster["outputs"])
    assert run["changed"] == 0, [s.get("changes") for s in run["stages"]]
