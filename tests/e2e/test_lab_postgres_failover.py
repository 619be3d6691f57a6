"""Failover with the hub's database in PostgreSQL, on a real lab: 3 managers and 1 worker, every engine
reached over mutual TLS, no shared file system for the hub. hubops's own PostgreSQL runs on the third
manager (storage.hub.postgres.node), the hub on the first; alice's server runs on the worker.

The hub's manager loses power (every process of the node killed at once): Swarm starts the hub on
another manager, it answers there, with alice and her running server, reached through the moved hub,
and with the announcement made before the kill (kept in the hub's database, so it follows the hub),
which `ops announce clear=true` then takes down with the first manager still dead.
The time from the kill until the hub answers is printed beside the target (60 s; the shared-path
figure is test_lab_faults.py's), never asserted.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import requests
import yaml

from hubops.core.engine import Clients
from hubops.core.params import load_params
from hubops.hub.running import HubAPI
from hubops.lab import cluster as lab
from tests.helpers import LAB_SUBNETS, admin_session, create_user, free_subnet, run_name
from tests.helpers import hubops_cli as cli

pytestmark = [pytest.mark.engine, pytest.mark.e2e, pytest.mark.slow]
NAME = run_name("pglab")
OVERLAY = "10.247.0.0/24"
TIMINGS: dict[str, float] = {}


def timing(what: str, seconds: float) -> None:
    TIMINGS[what] = round(seconds, 1)
    print(f"\n[timing] {what}: {seconds:.1f} s", flush=True)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pgfail")
    t0 = time.monotonic()
    subnet = free_subnet(LAB_SUBNETS)
    try:
        info = lab.lab_up(name=NAME, managers=3, workers=1, subnet=subnet, overlay_subnet=OVERLAY,
                          params_out=tmp / "lab.yaml")
    except BaseException:
        lab.lab_down(name=NAME)
        raise
    timing("lab up (3 managers, 1 worker)", time.monotonic() - t0)
    try:
        data = yaml.safe_load((tmp / "lab.yaml").read_text())
        data["auth"]["userlist"] = str(tmp / "lab.userlist")
        data["hub"]["extra_names"] = [m.address for m in info.managers[1:]]
        data["storage"] = {"users": {"mode": "none"},
                           "hub": {"mode": "postgres", "postgres": {"node": info.managers[2].name}}}
        params = tmp / "pglab.yaml"
        params.write_text(yaml.safe_dump(data, sort_keys=False))
        yield {"params": params, "outputs": tmp / "outputs", "p": load_params(params), "tmp": tmp, "lab": info}
    finally:
        t0 = time.monotonic()
        for n in info.nodes:
            lab.kill_node(name=NAME, node=n.name)
        lab.lab_down(name=NAME)
        timing("lab down", time.monotonic() - t0)
        print("\n[timings] " + json.dumps(TIMINGS, indent=2), flush=True)


def api_at(p, address: str) -> HubAPI:
    api = HubAPI(p)
    port = "" if p.hub.https_port == 443 else f":{p.hub.https_port}"
    api.base = f"https://{address}{port}"
    return api


def status_code(api: HubAPI, path: str, timeout: float = 5) -> int | str:
    try:
        return api.s.get(api.base + path, timeout=timeout).status_code
    except requests.RequestException as e:
        return e.__class__.__name__


NOTICE = f"Maintenance notice {NAME}, the hub may move"


def home_page(p, address: str) -> str:
    """The text of /hub/home for the admin, from the hub at `address`."""
    port = "" if p.hub.https_port == 443 else f":{p.hub.https_port}"
    base = f"https://{address}{port}"
    return admin_session(p, base=base).get(f"{base}/hub/home", timeout=10).text


def running_node(p, c, service: str) -> str:
    nodes = {n.id: (n.attrs["Spec"].get("Labels") or {}).get(f"hubops.{p.deployment}.host",
                                                            n.attrs["Description"]["Hostname"])
             for n in c.nodes.list()}
    for _ in range(240):
        tasks = c.api.tasks(filters={"service": service, "desired-state": "running"})
        where = [nodes.get(t.get("NodeID"), "?") for t in tasks if t["Status"]["State"] == "running"]
        if where:
            return where[0]
        time.sleep(0.5)
    raise AssertionError(f"service {service} has no running task")


def test_the_hubs_manager_dies_and_the_hub_answers_on_another_manager_with_postgres(cluster):
    p = cluster["p"]
    t0 = time.monotonic()
    res = cli("deploy", "-p", str(cluster["params"]), outputs=cluster["outputs"])
    timing("deploy on the lab (PostgreSQL on the third manager)", time.monotonic() - t0)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-4000:]
    clients = Clients(p)
    c = clients.manager
    first = running_node(p, c, p.hub_service)
    db_node = running_node(p, c, p.db_service)
    print(f"\nhub on {first}, PostgreSQL on {db_node}")
    assert db_node == cluster["lab"].managers[2].name != first
    api = api_at(p, cluster["lab"].node(first).address)
    create_user(p, "alice") if api.user("alice") is None else None
    api.request("POST", "/hub/api/users/alice/server", ok=(201, 202))
    api.wait_server("alice", ready=True, timeout=240)
    assert status_code(api, "/user/alice/api/status") == 200
    others = [m for m in cluster["lab"].managers if m.name != first]

    # An announcement made while the hub runs on its first manager (kept in the hub's database, not in
    # the data folder: that is a local volume of this manager, which is about to die).
    shown = cli("ops", "announce", "-p", str(cluster["params"]), "--set", f"message={NOTICE}", "--set", "hours=2",
                outputs=cluster["outputs"])
    assert shown.returncode == 0, shown.stdout[-2000:] + shown.stderr[-3000:]
    assert NOTICE in home_page(p, cluster["lab"].node(first).address), "the notice is not on the hub's page"

    t0 = time.monotonic()
    lab.kill_node(name=NAME, node=first)
    answered = None
    while time.monotonic() - t0 < 300:
        for m in others:
            if status_code(api_at(p, m.address), "/hub/health", timeout=3) == 200:
                answered = m
                break
        if answered:
            break
        time.sleep(0.5)
    assert answered is not None, f"the hub did not answer on {[m.name for m in others]} within 300 s"
    timing(f"hub's manager {first} killed -> hub answers on {answered.name} with PostgreSQL (target 60 s)",
           time.monotonic() - t0)
    api = api_at(p, answered.address)
    users = {u["name"]: u for u in api.request("GET", "/hub/api/users").json()}
    assert "alice" in users and (users["alice"].get("servers") or {}).get("", {}).get("ready") is True, users
    t1 = time.monotonic()
    last: int | str = ""
    while time.monotonic() - t1 < 90:
        last = status_code(api, "/user/alice/api/status")
        if last == 200:
            break
        time.sleep(0.5)
    assert last == 200, f"alice's server not reachable through the moved hub (last: {last})"
    timing("alice's server reachable through the moved hub after", time.monotonic() - t1)
    timing("kill -> alice's server reachable through the moved hub", time.monotonic() - t0)

    # The announcement followed the hub: shown by the moved hub with no `ops announce` since the kill.
    assert NOTICE in home_page(p, answered.address), "the moved hub does not show the announcement"
    # Taken down through the moved hub, with the first manager still dead.
    t2 = time.monotonic()
    cleared = cli("ops", "announce", "-p", str(cluster["params"]), "--set", "clear=true", outputs=cluster["outputs"])
    assert cleared.returncode == 0, cleared.stdout[-2000:] + cleared.stderr[-3000:]
    timing("ops announce clear=true with the first manager dead", time.monotonic() - t2)
    assert NOTICE not in home_page(p, answered.address), "the cleared notice is still shown"
    Path(cluster["tmp"] / "timings.json").write_text(json.dumps(TIMINGS))
