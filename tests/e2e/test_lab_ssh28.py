"""An all-Docker-28 lab reached only over ssh (slow, `make test-all`; about 5 min alone, 8 at load 14).

`hubops lab up --engine 28 --ssh all`: the manager and the worker run Debian sid's docker.io 28.5
from the lab's cached root file system, and each runs the sshd of that root (OpenSSH 10) in its
own namespaces. The hub's manager is reached over ssh, as most operators reach theirs:

- each node's sshd is its root's, not this machine's;
- the whole chain runs over ssh; preflight records both nodes as reached over ssh with pinned host
  keys and as Docker 28.5; a user's server lands on the Docker 28 worker and answers;
- a second deploy over ssh changes nothing; no ssh tunnel outlives the commands; `lab down`.

The mixed lab over ssh (a 20.10 manager, a Docker 28 worker, a cut connection and --resume) is
tests/e2e/test_lab_ssh.py, in `make test`.
"""
from __future__ import annotations

import os
import time

import pytest

from hubops.core.engine import Clients
from hubops.core.params import load_params
from hubops.hub.running import HubAPI
from hubops.lab import cluster as lab
from hubops.lab.ssh import enable_ssh
from tests import engine_labs as el
from tests.e2e.test_lab_ssh import hubops_ssh_procs, sshd_pids
from tests.helpers import LAB_SUBNETS, free_subnet, run_name
from tests.helpers import hubops_cli as cli

pytestmark = [pytest.mark.engine, pytest.mark.e2e, pytest.mark.slow]
NAME = run_name("ssh28")
MANAGER, WORKER = f"{NAME}-manager", f"{NAME}-node0"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ssh28")
    lab.lab_down(name=NAME)  # what an interrupted run left
    try:
        params, info, took = el.up(tmp, NAME, subnet=free_subnet(LAB_SUBNETS), overlay=free_subnet(), engines="28",
                                   workers=1)
        changes = enable_ssh(NAME, params)
        print(f"\nlab up (Docker 28): {took:.1f} s; ssh: {changes}")
        outputs = tmp / "outputs"
        t0 = time.monotonic()
        deploy = cli("deploy", "-p", str(params), outputs=outputs)
        print(f"deploy on Docker 28 over ssh (cold): {time.monotonic() - t0:.1f} s")
        yield {"params": params, "outputs": outputs, "deploy": deploy}
    finally:
        lab.lab_down(name=NAME)


def test_both_nodes_are_docker_28_reached_through_their_own_roots_sshd(cluster):
    p = load_params(cluster["params"])
    assert [h.url.split("@")[0] for h in p.hosts.all] == ["ssh://root", "ssh://root"]
    assert all(h.ssh and h.ssh.known_hosts and h.tls is None for h in p.hosts.all)
    assert {n.name: n.engine for n in lab.lab_status(name=NAME).nodes} == {MANAGER: "28", WORKER: "28"}
    host = os.stat("/usr/sbin/sshd")
    for node in (MANAGER, WORKER):
        pids = sshd_pids(node)
        assert pids, f"no sshd runs in {node}'s namespace"
        st = os.stat(f"/proc/{pids[0]}/root/usr/sbin/sshd")
        assert (st.st_dev, st.st_ino) != (host.st_dev, host.st_ino), f"{node} runs this machine's sshd"


def test_the_chain_runs_over_ssh_on_docker_28(cluster):
    d = cluster["deploy"]
    assert d.returncode == 0, d.stderr[-4000:]
    run = el.runs(cluster["outputs"])[-1]
    assert run["status"] == "ok" and len(run["stages"]) == 11
    assert {h: e["engine"].split(".")[:2] for h, e in run["engines"].items()} == {
        MANAGER: ["28", "5"], WORKER: ["28", "5"]}
    facts = el.stage_record(cluster["outputs"], run, "00-preflight")["results"][0]["facts"]
    assert facts[MANAGER]["reached"] == facts[WORKER]["reached"] == "ssh, host key pinned"


def test_a_users_server_runs_on_the_docker_28_worker(cluster):
    p = load_params(cluster["params"])
    clients, api = Clients(p), HubAPI(p)
    try:
        took = el.spawn(api, "alice")
        where = el.server_node(p, clients, api, "alice")
        print(f"\nalice's server on {where}: ready {took:.1f} s after the request")
        assert where == WORKER
        assert el.swarm_engines(p, clients)[where].startswith("28.5.")
        assert el.answers(api, "alice")
        el.stop(api, "alice")
    finally:
        clients.close()


def test_a_second_deploy_over_ssh_changes_nothing(cluster):
    t0 = time.monotonic()
    again = cli("deploy", "-p", str(cluster["params"]), outputs=cluster["outputs"])
    print(f"\nsecond deploy over ssh: {time.monotonic() - t0:.1f} s")
    assert again.returncode == 0, again.stderr[-3000:]
    run = el.runs(cluster["outputs"])[-1]
    assert run["status"] == "ok" and run["changed"] == 0, [s.get("changes") for s in run["stages"]]


def test_no_ssh_tunnel_outlives_the_commands(cluster):
    from hubops.core import ssh

    ssh.stop_all()  # this test process's own tunnels (its Clients)
    time.sleep(1)
    assert hubops_ssh_procs(NAME) == []
