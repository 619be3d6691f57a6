"""GPUs as Swarm generic resources, on a real multi-host lab without a GPU: one manager and two workers,
the engine of node0 advertising one fake GPU (dockerd --node-generic-resource NVIDIA-GPU=gpu0, as a
GPU host's daemon.json node-generic-resources does). The deployment has three profiles: `cpu`,
`gpu` (one NVIDIA-GPU, when_full: refuse) and `gpu-queue` (one NVIDIA-GPU, when_full: wait); the GPU
profiles use the single-user image, so nothing more is built.

In order:
- the deploy chain runs; 00-preflight reports which node advertises which generic resources;
- alice starts `gpu`: her server lands on node0, and Swarm gives the container the GPU's ID
  (DOCKER_RESOURCE_NVIDIA-GPU=gpu0); `ops status` shows her profile and node;
- bob starts `gpu` while alice holds the one GPU: refused at once with a message that says why;
- carol starts `gpu-queue`: her server waits (task pending: insufficient resources), and starts on
  node0 once alice's server stops;
- preflight refuses a profile that asks for two GPUs (no node advertises two).

Lab and deployment `gpu-RUN` (tests/helpers: run_name, free_subnet); `lab down` at the end. About
8-10 minutes (lab up, cold deploy with image delivery to three nodes); marked slow.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from hubops.core.engine import Clients
from hubops.core.errors import PreflightError
from hubops.core.params import load_params
from hubops.hub.running import HubAPI
from hubops.lab import cluster as lab
from hubops.ops import status as ops_status
from hubops.stages import preflight
from tests.helpers import LAB_SUBNETS, create_user, free_subnet, hubops_cli, run_name, runs, stage_record

pytestmark = [pytest.mark.engine, pytest.mark.e2e, pytest.mark.slow]
NAME = run_name("gpu")
PROFILES = """
spawner: {start_timeout: 300}
profiles:
  - {name: cpu, description: "CPU only"}
  - {name: gpu, description: "One GPU, refused when none is free", generic_resources: {NVIDIA-GPU: 1}, when_full: refuse}
  - {name: gpu-queue, description: "One GPU, waits for one", generic_resources: {NVIDIA-GPU: 1}, when_full: wait}
"""
FIGURES: dict[str, float] = {}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpulab")
    params = tmp / "lab.yaml"
    outputs = tmp / "outputs"
    try:
        t0 = time.monotonic()
        lab.lab_up(name=NAME, managers=1, workers=2, subnet=free_subnet(LAB_SUBNETS), params_out=params,
                   generic_resources={"node0": ["NVIDIA-GPU=gpu0"]})
        FIGURES["lab_up_s"] = round(time.monotonic() - t0, 1)
        mine = tmp / "gpu.yaml"  # the lab rewrites its own file: the profiles go into a copy beside it
        mine.write_text(params.read_text() + PROFILES)
        userlist = tmp / "lab.userlist"
        userlist.write_text(userlist.read_text() + "carol\n")
        t0 = time.monotonic()
        deploy = hubops_cli("deploy", "-p", str(mine), outputs=outputs)
        FIGURES["deploy_s"] = round(time.monotonic() - t0, 1)
        print(f"\n{deploy.stderr[-2500:]}")
        yield {"params": mine, "outputs": outputs, "deploy": deploy, "p": load_params(mine), "tmp": tmp}
    finally:
        print(f"\nfigures: {json.dumps(FIGURES)}")
        lab.lab_down(name=NAME)


def node_of(p, user: str, *, timeout: float = 60) -> tuple[str, dict]:
    """The hubops host name of the node running `user`'s server, and its task."""
    c = Clients(p).manager
    svc = c.services.get(f"{p.prefix}-user-{user}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tasks = [t for t in svc.tasks(filters={"desired-state": "running"}) if t["Status"]["State"] == "running"]
        if tasks:
            node = c.nodes.get(tasks[0]["NodeID"])
            return (node.attrs["Spec"].get("Labels") or {}).get(f"hubops.{p.deployment}.host"), tasks[0]
        time.sleep(0.5)
    raise AssertionError(f"{user}'s server has no running task")


def start(api: HubAPI, user: str, profile: str):
    if api.user(user) is None:
        create_user(api.p, user)
    return api.request("POST", f"/hub/api/users/{user}/server", ok=(201, 202, 400, 403, 500, 503),
                       json={"profile": profile}, timeout=120)


def spawn_failure(api: HubAPI, user: str, timeout: float = 120) -> str:
    """The hub's "Spawn failed: ..." message for `user`'s last start (its progress stream's last event)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = api.s.get(f"{api.base}/hub/api/users/{user}/server/progress", stream=True, timeout=60)
        events = [json.loads(line[len(b"data:"):]) for line in r.iter_lines() if line.startswith(b"data:")]
        if events and events[-1].get("failed"):
            return events[-1]["message"]
        time.sleep(1)
    raise AssertionError(f"{user}'s start did not fail within {timeout} s")


def hub_log(p, lines: int = 150) -> str:
    """The hub's last log lines, from the lab's manager (for a failed step's message)."""
    svc = Clients(p).manager.services.get(p.hub_service)
    return b"".join(svc.logs(stdout=True, stderr=True, tail=lines)).decode(errors="replace")


def wait_ready(api: HubAPI, user: str, timeout: float) -> None:
    try:
        api.wait_server(user, ready=True, timeout=timeout)
    except Exception:
        print(hub_log(api.p))
        c = Clients(api.p).manager
        for t in c.services.get(f"{api.p.prefix}-user-{user}").tasks():
            print(t["Status"])
        raise


def test_deploy_and_preflight_report_the_fake_gpu(cluster):
    assert cluster["deploy"].returncode == 0, cluster["deploy"].stderr[-4000:]
    run = runs(cluster["outputs"])[0]
    facts = stage_record(cluster["outputs"], run, "00-preflight")["results"][0]["facts"]
    print(facts["generic resources"])
    assert {"host": f"{NAME}-node0", "advertises": "NVIDIA-GPU: gpu0"} in facts["generic resources"]
    assert {"host": f"{NAME}-node1", "advertises": "none"} in facts["generic resources"]


def test_a_gpu_profile_lands_on_the_gpu_node_with_the_gpu_s_id(cluster):
    p = cluster["p"]
    api = HubAPI(p)
    t0 = time.monotonic()
    r = start(api, "alice", "gpu")
    assert r.status_code in (201, 202), r.text[:500]
    wait_ready(api, "alice", 300)
    FIGURES["gpu_spawn_s"] = round(time.monotonic() - t0, 1)
    node, task = node_of(p, "alice")
    assert node == f"{NAME}-node0"
    ct = Clients(p)[node].containers.get(task["Status"]["ContainerStatus"]["ContainerID"])
    env = dict(e.split("=", 1) for e in ct.attrs["Config"]["Env"])
    assert env.get("DOCKER_RESOURCE_NVIDIA-GPU") == "gpu0", {k: v for k, v in env.items() if "RESOURCE" in k}
    rows = ops_status.status(p, Clients(p)).facts["services"]
    row = next(s for s in rows if s["user"] == "alice")
    assert (row["profile"], row["node"]) == ("gpu", f"{NAME}-node0"), row


def test_a_second_gpu_user_is_refused_with_a_clear_message(cluster):
    p = cluster["p"]
    api = HubAPI(p)
    t0 = time.monotonic()
    r = start(api, "bob", "gpu")
    message = r.text if r.status_code not in (201, 202) else spawn_failure(api, "bob")
    FIGURES["refusal_s"] = round(time.monotonic() - t0, 1)
    print(r.status_code, message[:500])
    assert "profile gpu needs 1 NVIDIA-GPU" in message and "no node has one free" in message, message
    api.wait_server("bob", ready=False, timeout=120)
    assert Clients(p).manager.services.list(filters={"name": f"{p.prefix}-user-bob"}) == []


def test_a_waiting_gpu_user_starts_when_the_gpu_frees(cluster):
    p = cluster["p"]
    api = HubAPI(p)
    r = start(api, "carol", "gpu-queue")
    assert r.status_code == 202, (r.status_code, r.text[:300])
    c = Clients(p).manager
    deadline = time.monotonic() + 60
    err = ""
    while time.monotonic() < deadline and "insufficient resources" not in err:
        tasks = c.services.get(f"{p.prefix}-user-carol").tasks()
        err = " ".join(t["Status"].get("Err", "") for t in tasks)
        time.sleep(1)
    assert "insufficient resources" in err, err  # Swarm holds it: no free GPU
    assert not ((api.user("carol") or {}).get("servers", {}).get("") or {}).get("ready")
    t0 = time.monotonic()
    api.request("DELETE", "/hub/api/users/alice/server", ok=(202, 204))
    wait_ready(api, "carol", 280)
    FIGURES["queued_start_after_free_s"] = round(time.monotonic() - t0, 1)
    node, _ = node_of(p, "carol")
    assert node == f"{NAME}-node0"


def test_preflight_refuses_a_profile_no_node_can_satisfy(cluster):
    two = cluster["tmp"] / "two.yaml"  # beside the lab's userlist, which the file names by a relative path
    two.write_text(cluster["params"].read_text().replace("generic_resources: {NVIDIA-GPU: 1}, when_full: refuse",
                                                         "generic_resources: {NVIDIA-GPU: 2}, when_full: refuse"))
    p = load_params(two)
    with pytest.raises(PreflightError) as e:
        preflight.check(p, Clients(p))
    print(e.value)
    assert "profiles[1] (gpu).generic_resources.NVIDIA-GPU: no node it may run on" in str(e.value)
    assert "advertises 2 NVIDIA-GPU" in str(e.value)
