"""The embedded default on Docker 28: `parameters/local.yaml` as shipped, pointed at a Docker 28
engine on its unix socket instead of this machine's 20.10 one (the engine of a one-node lab on
Debian sid's docker.io). Slow (`make test-all`):

- the whole chain deploys a single-node swarm through the unix socket (advertise address
  127.0.0.1, as local.yaml has it), the hub reached at the node's address;
- a second deploy changes nothing;
- a user's server answers through the hub;
- teardown leaves nothing labelled.
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from hubops.lab import cluster as lab
from hubops.core.engine import Clients
from hubops.core.params import load_params
from hubops.hub.running import HubAPI
from tests import engine_labs as el
from tests.helpers import hubops_cli as cli
from tests.helpers import LAB_SUBNETS, free_subnet, run_name

pytestmark = [pytest.mark.engine, pytest.mark.e2e, pytest.mark.slow]
NAME = run_name("en28l")  # lab and deployment, per run (tests/helpers)
PROJECT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def local28(tmp_path_factory):
    tmp = tmp_path_factory.mktemp(NAME)
    lab.lab_down(name=NAME)
    try:
        info = lab.lab_up(name=NAME, workers=0, subnet=free_subnet(LAB_SUBNETS), overlay_subnet=free_subnet(),
                          params_out=tmp / "lab.yaml", engines="28")
        node = info.managers[0]
        data = yaml.safe_load((PROJECT / "parameters" / "local.yaml").read_text())
        data["deployment"] = NAME
        data["operator_dir"] = str(tmp / "operator")
        host = data["hosts"]["managers"][0]
        host["url"] = f"unix://{lab.node_socket(lab.RUN_ROOT / NAME, node.name)}"
        # The socket's path in the engine's own view, which the hub's container mounts.
        host["engine_socket"] = str(lab.engine_socket(lab.RUN_ROOT / NAME))
        data["hub"]["public_name"] = node.address  # the hub's port is on the node's own address
        data["network"]["subnet"] = free_subnet()
        data["auth"]["userlist"] = str(PROJECT / "parameters" / data["auth"]["userlist"])
        data["images"] = {"build_engine": "unix:///var/run/docker.sock"}  # the node has no internet
        params = tmp / "local28.yaml"
        params.write_text(yaml.safe_dump(data, sort_keys=False))
        outputs = tmp / "outputs"
        t0 = time.monotonic()
        deploy = cli("deploy", "-p", str(params), outputs=outputs)
        print(f"\ndeploy of the embedded default on Docker 28 (cold): {time.monotonic() - t0:.1f} s")
        yield {"params": params, "outputs": outputs, "deploy": deploy, "p": load_params(params)}
    finally:
        lab.lab_down(name=NAME)


def test_the_chain_deploys_over_the_unix_socket(local28):
    assert local28["deploy"].returncode == 0, local28["deploy"].stderr[-4000:]
    run = el.runs(local28["outputs"])[-1]
    assert run["status"] == "ok"
    [(host, eng)] = run["engines"].items()
    assert host == "local" and eng["engine"].startswith("28.5.") and eng["api"] == "1.51"


def test_second_deploy_changes_nothing(local28):
    r = cli("deploy", "-p", str(local28["params"]), outputs=local28["outputs"])
    assert r.returncode == 0, r.stderr[-4000:]
    assert el.runs(local28["outputs"])[-1]["changed"] == 0


def test_a_users_server_answers(local28):
    api = HubAPI(local28["p"])
    took = el.spawn(api, "alice")
    print(f"\nalice's server ready after {took:.1f} s")
    assert el.answers(api, "alice")


def test_teardown_leaves_nothing(local28):
    p = local28["p"]
    r = cli("ops", "teardown", "-p", str(local28["params"]), "--set", "confirm=true", "--set", "remove_volumes=true",
            "--set", "remove_user_data=true", outputs=local28["outputs"])
    assert r.returncode == 0, r.stderr[-4000:]
    assert not any(el.labelled(p, Clients(p), with_images=False).values())
