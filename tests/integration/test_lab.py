"""The lab, for real: namespaces, a bridge, an iptables rule and three dockerds on this machine.

Needs root. Uses the lab name `t1-RUN` (tests/helpers.RUN) on a free subnet, so that a user's own
`lab` and another run's are left alone; the lab is brought up once for the module and removed at
its end (and before, should an interrupted run have left one).
"""
from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import docker
import pytest
import requests

from hubops.lab import cluster as lab_mod
from hubops.core.errors import HubopsError, PreflightError
from hubops.lab.cluster import (
    RUN_ROOT,
    STATE_ROOT,
    lab_down,
    lab_status,
    lab_up,
    overlaps,
    params_text,
)
from hubops.core.params import load_params
from tests.helpers import LAB_SUBNETS, free_subnet, run_name

pytestmark = pytest.mark.engine

NAME = run_name("t1")
SUBNET = free_subnet(LAB_SUBNETS)
BASE = ipaddress.ip_network(SUBNET).network_address  # the nodes are .11, .12, .13


def _tls_client(node, info, timeout: int = 10) -> docker.DockerClient:
    tls = docker.tls.TLSConfig(client_cert=(info.certs["cert"], info.certs["key"]), ca_cert=info.certs["ca"],
                               verify=True)
    c = docker.DockerClient(base_url=node.url, tls=tls, timeout=timeout, version="1.41")
    c.api.trust_env = False  # REQUESTS_CA_BUNDLE would otherwise replace the lab CA
    return c


def _netns() -> list[str]:
    d = Path("/var/run/netns")
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


def _links() -> list[str]:
    return [link["ifname"] for link in json.loads(subprocess.check_output(["ip", "-j", "link", "show"]))]


def _forward_rules() -> str:
    return subprocess.check_output(["iptables", "-w", "-S", "FORWARD"], text=True)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.fail("the lab tests need root (namespaces, links, iptables, dockerd)", pytrace=False)
    lab_down(name=NAME)  # what an interrupted run may have left
    params = tmp_path_factory.mktemp("lab") / "lab.yaml"
    try:
        info = lab_up(name=NAME, subnet=SUBNET, params_out=params)
        print(f"\nlab up (cold): {info.duration_s} s, {len(info.changes)} changes")
        yield info
    finally:
        lab_down(name=NAME)


# -- pure parts -------------------------------------------------------------------------------
def test_overlaps_names_routes_addresses_and_resolvers():
    import ipaddress

    net = ipaddress.ip_network("10.77.0.0/24")
    routes = [{"dst": "default", "dev": "eth0"}, {"dst": "10.0.0.0/8", "dev": "eth0"},
              {"dst": "10.77.0.0/24", "dev": "hl-lab"}, {"dst": "10.77.0.5", "dev": "tun0"}]
    addrs = [{"ifname": "eth1", "addr_info": [{"family": "inet", "local": "10.77.0.9", "prefixlen": 32}]}]
    found = overlaps(net, routes, addrs, ["10.77.0.53", "192.0.2.1"], "hl-lab")
    assert found == ["route 10.0.0.0/8 dev eth0", "route 10.77.0.5 dev tun0", "address 10.77.0.9 on eth1",
                     "DNS resolver 10.77.0.53 (/etc/resolv.conf)"]
    assert overlaps(ipaddress.ip_network("10.78.0.0/24"), routes[:1] + routes[2:], addrs, [], "hl-lab") == []


def test_other_subnet_overlapping_an_existing_route_is_refused_before_anything_is_created(tmp_path):
    import ipaddress

    routes = json.loads(subprocess.check_output(["ip", "-j", "route"]))
    taken = next(r for r in routes if r.get("dst", "default") != "default" and not r.get("dev", "").startswith("hl-"))
    subnet = str(next(ipaddress.ip_network(taken["dst"], strict=False).subnets(new_prefix=28)))
    t2 = run_name("t2")
    params = tmp_path / "t2.yaml"
    with pytest.raises(PreflightError, match="overlaps route"):
        lab_up(name=t2, subnet=subnet, params_out=params)
    assert f"hl-{t2}" not in _links()
    assert not [ns for ns in _netns() if ns.startswith(f"hl-{t2}-")]
    assert not (STATE_ROOT / t2).exists() and not (RUN_ROOT / t2).exists()
    assert not params.exists()
    assert f"hubops-lab-{t2}" not in _forward_rules()  # (other runs' labs may add and remove theirs meanwhile)


# -- a running lab ----------------------------------------------------------------------------
def test_up_brings_engines_that_answer_over_mutual_tls_only(lab):
    assert [(n.name, n.role, n.address) for n in lab.nodes] == [
        (f"{NAME}-manager", "manager", str(BASE + 11)), (f"{NAME}-node0", "worker", str(BASE + 12)),
        (f"{NAME}-node1", "worker", str(BASE + 13))]
    ids = set()
    for n in lab.nodes:
        c = _tls_client(n, lab)
        try:
            info = c.info()
        finally:
            c.close()
        assert info["Name"] == n.name  # its own UTS namespace
        assert info["Swarm"]["LocalNodeState"] == "inactive"
        ids.add(info["ID"])
        # Without a client certificate the engine refuses the connection.
        s = requests.Session()
        s.trust_env = False
        with pytest.raises((requests.exceptions.SSLError, requests.exceptions.ConnectionError)):
            s.get(f"https://{n.address}:2376/version", verify=lab.certs["ca"], timeout=5)
        # And a client that does not know the lab CA refuses the engine.
        with pytest.raises(requests.exceptions.SSLError):
            s.get(f"https://{n.address}:2376/version", cert=(lab.certs["cert"], lab.certs["key"]), timeout=5)
    assert len(ids) == 3  # each engine has its own key.json, so its own ID
    assert oct(Path(lab.certs["key"]).stat().st_mode & 0o777) == "0o600"


def test_engines_form_a_swarm_over_the_lab_network(lab):
    clients = {n.name: _tls_client(n, lab, timeout=30) for n in lab.nodes}
    mgr = lab.managers[0]
    try:
        clients[mgr.name].swarm.init(advertise_addr=mgr.address, listen_addr=f"{mgr.address}:2377")
        token = clients[mgr.name].swarm.attrs["JoinTokens"]["Worker"]
        for w in lab.workers:
            clients[w.name].swarm.join(remote_addrs=[f"{mgr.address}:2377"], join_token=token,
                                       advertise_addr=w.address, listen_addr=f"{w.address}:2377")
        deadline = time.monotonic() + 30
        while True:
            nodes = clients[mgr.name].nodes.list()
            ready = sorted(n.attrs["Description"]["Hostname"] for n in nodes if n.attrs["Status"]["State"] == "ready")
            if len(ready) == 3 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert ready == [f"{NAME}-manager", f"{NAME}-node0", f"{NAME}-node1"]
        addrs = {n.attrs["Description"]["Hostname"]: n.attrs["Status"]["Addr"] for n in nodes}
        assert addrs == {n.name: n.address for n in lab.nodes}
        assert {n.name: n.swarm_state for n in lab_status(name=NAME).nodes} == dict.fromkeys(addrs, "active")
    finally:
        for w in lab.workers:
            try:
                clients[w.name].swarm.leave(force=True)
            except docker.errors.APIError:
                pass
        clients[mgr.name].swarm.leave(force=True)
        for c in clients.values():
            c.close()


def test_second_up_changes_nothing(lab):
    again = lab_up(name=NAME, subnet=SUBNET, params_out=lab.params_file)
    assert again.changes == []
    assert [n.pid for n in again.nodes] == [n.pid for n in lab.nodes]
    assert all(n.pid for n in again.nodes)


def test_up_restarts_a_dead_engine_and_keeps_the_others(lab):
    victim = lab.workers[-1]
    os.kill(victim.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while lab_status(name=NAME).node(victim.name).alive and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not lab_status(name=NAME).node(victim.name).alive
    again = lab_up(name=NAME, subnet=SUBNET, params_out=lab.params_file)
    assert again.changes == [f"started engine of {victim.name} ({victim.url})"]
    pids = {n.name: n.pid for n in again.nodes}
    assert pids[victim.name] not in (None, victim.pid)
    assert {k: v for k, v in pids.items() if k != victim.name} == {
        n.name: n.pid for n in lab.nodes if n.name != victim.name}
    assert again.node(victim.name).engine_name == victim.name
    lab.nodes[-1].pid = pids[victim.name]


def test_another_topology_for_the_same_name_is_refused(lab):
    with pytest.raises(HubopsError, match=f"lab down --name {NAME}"):
        lab_up(name=NAME, workers=1, subnet=SUBNET, params_out=lab.params_file)
    assert lab_up(name=NAME, subnet=SUBNET, params_out=lab.params_file).changes == []


def test_params_file_loads_and_names_the_lab(lab):
    p = load_params(lab.params_file)
    assert p.deployment == NAME
    assert [h.name for h in p.hosts.managers] == [f"{NAME}-manager"]
    assert [h.name for h in p.hosts.workers] == [f"{NAME}-node0", f"{NAME}-node1"]
    for h, n in zip(p.hosts.all, lab.nodes):
        assert h.url == f"tcp://{n.address}:2376" and h.advertise_addr == n.address
        # One socket path for every engine, each in its own mount namespace (as on real hosts); from
        # this machine a node's socket is RUN/NODE/engine/docker.sock.
        assert h.engine_socket == str(lab_mod.engine_socket(RUN_ROOT / NAME))
        assert lab_mod.node_socket(RUN_ROOT / NAME, h.name).is_socket()
        assert str(p.path(h.tls.ca)) == lab.certs["ca"]
    assert p.hub.public_name == str(BASE + 11) and p.hub.https_port == 443
    assert p.tls.mode == "self-signed" and p.auth.mode == "shared-password"
    assert p.admins == ["operator"] and p.allowed == ["alice", "bob", "operator"]
    assert p.network.subnet == "10.240.0.0/24"
    assert p.images.build_engine == "unix:///var/run/docker.sock"
    assert p.operator_path == STATE_ROOT / NAME / "operator" / NAME
    assert lab.params_file.read_text().startswith("# Written by `hubops lab up`")
    # The engine socket the hub mounts answers too.
    c = docker.DockerClient(base_url=f"unix://{lab_mod.node_socket(RUN_ROOT / NAME, f'{NAME}-manager')}", timeout=10)
    assert c.info()["Name"] == f"{NAME}-manager"
    c.close()


def test_hubops_engine_clients_reach_the_lab(lab, monkeypatch):
    from hubops.core.engine import client_for

    # A machine-wide CA bundle variable must not replace the lab's CA (it did once).
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    p = load_params(lab.params_file)
    c = client_for(p, p.hosts.managers[0], timeout=10)
    assert c.info()["Name"] == f"{NAME}-manager"


def test_status_renders(lab):
    st = lab_status(name=NAME)
    assert st.exists and [n.alive for n in st.nodes] == [True] * 3
    assert {n.engine_version for n in st.nodes} != {None}
    text = repr(st)
    assert all(n.name in text for n in st.nodes)
    assert "<table>" in st._repr_html_()
    json.dumps(st.to_dict())


def test_params_text_is_stable():
    import ipaddress

    from hubops.lab.cluster import _plan

    nodes = _plan("x", 1, 1, ipaddress.ip_network("10.77.0.0/24"))
    a = params_text("x", nodes, state=Path("/s"), run=Path("/r"), overlay_subnet="10.240.0.0/24", userlist="x.userlist")
    assert a == params_text("x", nodes, state=Path("/s"), run=Path("/r"), overlay_subnet="10.240.0.0/24",
                            userlist="x.userlist")


def test_down_removes_everything_and_twice_is_fine(lab):
    state, run = STATE_ROOT / NAME, RUN_ROOT / NAME
    pids = [n.pid for n in lab_status(name=NAME).nodes]
    down = lab_down(name=NAME)
    print(f"\nlab down: {down.duration_s} s")
    assert not [ns for ns in _netns() if ns.startswith(f"hl-{NAME}-")]
    links = _links()
    assert f"hl-{NAME}" not in links and not [link for link in links if link.startswith(f"hv-{NAME}-")]
    assert f"hubops-lab-{NAME}" not in _forward_rules()
    assert not state.exists() and not run.exists()
    assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()]
    assert str(state) not in Path("/proc/self/mountinfo").read_text()
    assert not list(Path("/sys/fs/cgroup").glob(f"*/hubops-lab/{NAME}-*"))
    assert lab.params_file.exists()  # the parameter file stays
    assert not lab_status(name=NAME).exists
    assert lab_down(name=NAME).changes == []
