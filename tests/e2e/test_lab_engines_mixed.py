"""A cluster in the middle of an upgrade: a lab whose manager runs Docker 28 (Debian sid), one worker
Docker 26 (Debian trixie) and one worker this machine's Docker 20.10. Slow (`make test-all`):

- `lab up --engine manager=28,node0=26` (node1 keeps 20.10): `lab status` and the parameter file
  name each node's engine;
- the deploy chain runs; preflight records each engine and warns (does not refuse), naming the
  nodes of each version;
- a user's server on each worker (26 and 20.10), both answering through the hub;
- `hubops ops status` shows each node's engine and the mixed-version warning.
"""
from __future__ import annotations

import time

import pytest

from hubops.lab import cluster as lab
from hubops.core.engine import Clients
from hubops.core.params import load_params
from hubops.hub.running import HubAPI
from tests import engine_labs as el
from tests.helpers import hubops_cli as cli
from tests.helpers import LAB_SUBNETS, free_subnet, run_name

pytestmark = [pytest.mark.engine, pytest.mark.e2e, pytest.mark.slow]
NAME = run_name("enmx")  # lab and deployment, per run (tests/helpers)
ENGINES = {f"{NAME}-manager": "28.5.", f"{NAME}-node0": "26.1.", f"{NAME}-node1": "20.10."}


@pytest.fixture(scope="module")
def cl(tmp_path_factory):
    tmp = tmp_path_factory.mktemp(NAME)
    lab.lab_down(name=NAME)
    t_suite = time.monotonic()
    try:
        params, info, took = el.up(tmp, NAME, subnet=free_subnet(LAB_SUBNETS), overlay=free_subnet(),
                                   engines="manager=28,node0=26")
        print(f"\nlab up: {took:.1f} s\n{info!r}")
        outputs = tmp / "outputs"
        t0 = time.monotonic()
        deploy = cli("deploy", "-p", str(params), outputs=outputs)
        print(f"deploy on the mixed lab (cold): {time.monotonic() - t0:.1f} s")
        yield {"params": params, "outputs": outputs, "deploy": deploy, "p": load_params(params)}
    finally:
        t0 = time.monotonic()
        lab.lab_down(name=NAME)
        print(f"\nlab down: {time.monotonic() - t0:.1f} s; suite {time.monotonic() - t_suite:.0f} s")


def test_lab_status_and_the_parameter_file_name_each_engine(cl):
    st = lab.lab_status(name=NAME)
    assert {n.name: n.engine for n in st.nodes} == {f"{NAME}-manager": "28", f"{NAME}-node0": "26",
                                                    f"{NAME}-node1": "20.10"}
    assert {n.name: n.engine_version[:len(ENGINES[n.name])] for n in st.nodes} == ENGINES
    text = cl["params"].read_text()
    assert f"# engine of {NAME}-manager: Docker 28.5." in text
    assert f"# engine of {NAME}-node0: Docker 26.1." in text
    assert f"# engine of {NAME}-node1: Docker 20.10 (this machine's dockerd)" in text


def test_deploy_runs_and_preflight_warns_naming_the_nodes(cl):
    assert cl["deploy"].returncode == 0, cl["deploy"].stderr[-4000:]
    run = el.runs(cl["outputs"])[-1]
    assert run["status"] == "ok" and len(run["stages"]) == 10
    pre = el.stage_record(cl["outputs"], run, "00-preflight")["results"][0]
    assert {r["host"]: r["engine"][:len(ENGINES[r["host"]])] for r in pre["facts"]["engines"]} == ENGINES
    w = pre["facts"]["warning"]
    print(f"\npreflight: {w}")
    assert f"Docker 20.10 on {NAME}-node1" in w and f"Docker 26.1 on {NAME}-node0" in w
    assert f"Docker 28.5 on {NAME}-manager" in w
    assert any(i["target"] == "engine versions" and i["detail"].startswith("WARNING: mixed engine versions")
               for i in pre["items"])


def test_a_server_on_each_worker(cl):
    p = cl["p"]
    clients, api = Clients(p), HubAPI(p)
    took = {u: el.spawn(api, u) for u in ("alice", "bob")}
    where = {u: el.server_node(p, clients, api, u) for u in ("alice", "bob")}
    print(f"\nservers: {where}, ready after {took}")
    assert sorted(where.values()) == [f"{NAME}-node0", f"{NAME}-node1"], where
    assert all(el.answers(api, u) for u in where)


def test_ops_status_shows_each_nodes_engine(cl):
    r = cli("ops", "status", "-p", str(cl["params"]), outputs=cl["outputs"])
    assert r.returncode == 0, r.stderr[-3000:]
    run = el.runs(cl["outputs"])[-1]
    facts = el.stage_record(cl["outputs"], run, "status")["results"][0]["facts"]
    assert {row["node"]: row["engine"][:len(ENGINES[row["node"]])] for row in facts["nodes"]} == ENGINES
    assert facts["engine versions"].startswith("WARNING: mixed engine versions")
