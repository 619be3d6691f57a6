"""The deploy chain on Docker 28 (the short suite, in `make test`): a lab of one manager and one
worker, both running Debian sid's docker.io 28.5 from the lab's cached root file system (built
once by `lab up` when missing: about 75 s; then cached under /var/cache/hubops-lab).

- `lab up --engine 28`: both engines answer as Docker 28 over mutual TLS; `lab status` and the
  parameter file say so;
- the whole deploy chain runs; preflight and the run's manifest record Docker 28.5 and API 1.51
  for both nodes; 90-verify's spawn and a user's server land on the Docker 28 worker and answer
  through the hub;
- `lab down` leaves nothing (the cached root file system stays).

The full matrix (all-28 and all-26 with the day-2 runbooks, a mixed lab) is
tests/e2e/test_lab_engines_all.py and tests/e2e/test_lab_engines_mixed.py (`make test-all`).
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

pytestmark = [pytest.mark.engine, pytest.mark.e2e]
NAME = run_name("en28")  # lab and deployment, per run (tests/helpers)
SUBNET, OVERLAY = free_subnet(LAB_SUBNETS), free_subnet()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("en28")
    lab.lab_down(name=NAME)  # what an interrupted run left
    try:
        params, info, took = el.up(tmp, NAME, subnet=SUBNET, overlay=OVERLAY, engines="28",
                                   workers=1)
        print(f"\nlab up (Docker 28 root file system cached: {lab.lab_engines.manifest(lab.lab_engines.CACHE_ROOT, '28') is not None}): "
              f"{took:.1f} s")
        outputs = tmp / "outputs"
        t0 = time.monotonic()
        deploy = cli("deploy", "-p", str(params), outputs=outputs)
        print(f"deploy on Docker 28 (cold): {time.monotonic() - t0:.1f} s")
        yield {"params": params, "outputs": outputs, "deploy": deploy, "info": info, "tmp": tmp}
    finally:
        t0 = time.monotonic()
        lab.lab_down(name=NAME)
        print(f"\nlab down: {time.monotonic() - t0:.1f} s")


def test_both_nodes_run_docker_28_and_say_so(cluster):
    st = lab.lab_status(name=NAME)
    assert [(n.name, n.engine) for n in st.nodes] == [(f"{NAME}-manager", "28"), (f"{NAME}-node0", "28")]
    assert all(n.engine_version.startswith("28.5.") and n.engine_api == "1.51" for n in st.nodes), repr(st)
    assert "Docker 28 rootfs" in repr(st)
    text = cluster["params"].read_text()
    for n in st.nodes:
        assert f"# engine of {n.name}: Docker 28.5." in text


def test_the_chain_runs_and_records_docker_28(cluster):
    d = cluster["deploy"]
    assert d.returncode == 0, d.stderr[-4000:]
    run = el.runs(cluster["outputs"])[-1]
    assert run["status"] == "ok" and len(run["stages"]) == 10
    assert {h: e["engine"].split(".")[:2] for h, e in run["engines"].items()} == {
        f"{NAME}-manager": ["28", "5"], f"{NAME}-node0": ["28", "5"]}
    pre = el.stage_record(cluster["outputs"], run, "00-preflight")["results"][0]
    rows = {r["host"]: r for r in pre["facts"]["engines"]}
    assert {h: (r["engine"][:5], r["api"]) for h, r in rows.items()} == {
        f"{NAME}-manager": ("28.5.", "1.51"), f"{NAME}-node0": ("28.5.", "1.51")}
    assert "warning" not in pre["facts"]


def test_a_users_server_runs_on_the_docker_28_worker_and_answers(cluster):
    p = load_params(cluster["params"])
    clients, api = Clients(p), HubAPI(p)
    took = el.spawn(api, "alice")
    where = el.server_node(p, clients, api, "alice")
    print(f"\nalice's server on {where}: ready {took:.1f} s after the request")
    assert where == f"{NAME}-node0"
    assert el.swarm_engines(p, clients)[where].startswith("28.5.")
    assert el.answers(api, "alice")
    el.write_file(api, "alice", "on28.txt", "written on Docker 28")
    assert el.read_file(api, "alice", "on28.txt") == "written on Docker 28"


def test_the_users_container_on_docker_28_is_locked_down(cluster):
    """The lockdown the spawner asks Swarm for (no capabilities, no-new-privileges, a process
    limit) is what Docker 28 applies to the container: seen in its inspect and by its PID 1."""
    import docker

    p = load_params(cluster["params"])
    worker = docker.DockerClient(base_url=f"unix://{lab.node_socket(lab.RUN_ROOT / NAME, f'{NAME}-node0')}")
    try:
        ctrs = worker.containers.list(filters={"label": f"com.docker.swarm.service.name={p.prefix}-user-alice"})
        assert len(ctrs) == 1, ctrs
        hc = ctrs[0].attrs["HostConfig"]
        print(f"\nalice's container on Docker 28: CapDrop {hc.get('CapDrop')}, SecurityOpt {hc.get('SecurityOpt')}, "
              f"PidsLimit {hc.get('PidsLimit')}, Memory {hc.get('Memory')}, NanoCpus {hc.get('NanoCpus')}")
        assert [c.upper().removeprefix("CAP_") for c in hc.get("CapDrop") or []] == ["ALL"]
        assert any(o.startswith("no-new-privileges") for o in hc.get("SecurityOpt") or []), hc.get("SecurityOpt")
        assert hc.get("PidsLimit") == 1024 and hc.get("Memory") == 2 * 1024**3
        status = ctrs[0].exec_run(["cat", "/proc/1/status"]).output.decode()
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        assert fields["NoNewPrivs"].strip() == "1" and int(fields["CapEff"], 16) == 0, status
    finally:
        worker.close()


def test_second_lab_up_changes_nothing_and_rebuild_waits_for_lab_down(cluster):
    again = lab.lab_up(name=NAME, workers=1, subnet=SUBNET, overlay_subnet=OVERLAY,
                       params_out=cluster["params"].with_name("again.yaml"), engines="28")
    assert [c for c in again.changes if "parameter file" not in c and "userlist" not in c] == []
    assert [n.pid for n in again.nodes] == [n.pid for n in cluster["info"].nodes]
    with pytest.raises(lab.HubopsError, match=rf"in use by the running node\(s\) {NAME}-manager"):
        lab.lab_up(name=NAME, workers=1, subnet=SUBNET, overlay_subnet=OVERLAY,
                   params_out=cluster["params"].with_name("again.yaml"), engines="28", rebuild=True)
