"""65-netpolicy on the local engine (a single-node swarm): what a user's server can reach before and
after the policy, with real containers on a real overlay, the real agent and the node's real iptables.

Stand-ins, all on this machine: "users' servers" are Swarm services labelled as the deployment's
users' servers (the agent keys on those labels, as on the spawner's); a "hub" is an unlabelled
service on the same overlay; a listener on this machine (all addresses) stands for the node's own
ports; a network namespace made here stands for the outside world (one address) and, through
`network.policy.metadata_addresses`, for a metadata service (another address). Probes go only there.
"""
from __future__ import annotations

import ipaddress
from pathlib import Path
import socket
import subprocess
import threading
import time

import docker
import pytest

from hubops.core.engine import Clients
from hubops.core.params import load_params
from hubops.ops import teardown
from hubops.stages import images, netpolicy, network, swarm
from tests.helpers import LAB_SUBNETS, ensure_swarm, free_port, free_subnet, run_name
from tests.netprobe import probe, table

pytestmark = pytest.mark.engine
NS = run_name("np")  # the network namespace standing for the outside world


def _sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=check)


@pytest.fixture(scope="module")
def outside():
    """A namespace on a veth from this machine: .2 is 'the outside world', .3 'the metadata service'
    (both answer HTTP on port 80); nothing outside this machine is involved."""
    net = ipaddress.ip_network(free_subnet(LAB_SUBNETS, prefix=29))
    host_ip, out_ip, meta_ip = (str(net.network_address + i) for i in (1, 2, 3))
    veth = f"npv{NS[-6:]}".replace("-", "")
    _sh("ip", "netns", "add", NS)
    server = None
    try:
        _sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", NS)
        _sh("ip", "addr", "add", f"{host_ip}/{net.prefixlen}", "dev", veth)
        _sh("ip", "link", "set", veth, "up")
        for a in (out_ip, meta_ip):
            _sh("ip", "-n", NS, "addr", "add", f"{a}/{net.prefixlen}", "dev", "eth0")
        _sh("ip", "-n", NS, "link", "set", "eth0", "up")
        _sh("ip", "-n", NS, "link", "set", "lo", "up")
        server = subprocess.Popen(["nsenter", f"--net=/var/run/netns/{NS}", "python3", "-m", "http.server",
                                   "--bind", "0.0.0.0", "80"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1)
        yield {"outside": out_ip, "metadata": meta_ip}
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)
        _sh("ip", "link", "del", veth, check=False)
        _sh("ip", "netns", "del", NS, check=False)


@pytest.fixture(scope="module")
def listener():
    """TCP listeners on every address of this machine: the first stands for the node's own ports (an
    engine's API, SSH) wherever a container might reach the node: docker0, docker_gwbridge, its own
    address; the second for the hub's public port (the deployment's hub.https_port)."""
    ports = [free_port(), free_port()]
    socks = []
    for port in ports:
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("0.0.0.0", port))
        srv.listen(64)
        srv.settimeout(0.5)
        socks.append(srv)
    stop = []

    def serve(srv):
        while not stop:
            try:
                c, _ = srv.accept()
                c.close()
            except OSError:
                pass
    threads = [threading.Thread(target=serve, args=(s,), daemon=True) for s in socks]
    for t in threads:
        t.start()
    yield ports
    stop.append(1)
    for t in threads:
        t.join(5)
    for s in socks:
        s.close()


def _host_rules(deployment: str) -> list[str]:
    """The deployment's rules as this machine's iptables (both back ends) list them."""
    out = []
    for b in ("iptables-nft", "iptables-legacy"):
        cp = _sh(b, "-w", "-S", check=False)
        out += [f"{b}: {ln}" for ln in cp.stdout.splitlines() if f"hubops:{deployment}" in ln]
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory, outside, listener):
    ensure_swarm()
    tmp = tmp_path_factory.mktemp("np")
    from tests.helpers import make_params

    dep = run_name("np")
    subnet = free_subnet()
    f = make_params(tmp, dep, port=listener[1], subnet=subnet)
    f.write_text(f.read_text().replace(
        f"network: {{subnet: {subnet}}}",
        f"network:\n  subnet: {subnet}\n  policy: {{metadata_addresses: [\"{outside['metadata']}\"]}}"))
    p = load_params(f)
    clients = Clients(p)
    swarm.ensure_swarm(p, clients)
    network.ensure_network(p, clients)
    images.ensure_base(p, clients)
    c: docker.DockerClient = clients.manager
    built = images.ensure_image_built(c, netpolicy.KIND, images_dir=images.PROJECT_IMAGES, base=p.images.base,
                                      deployment=p.deployment)
    ref = built.facts["ref"]
    user_labels = {"hubops.managed": "true", "hubops.deployment": dep, "hubops.role": "user-server"}
    made = []

    def service(name: str, labels: dict, cmd: str):
        s = c.services.create(ref, ["sh", "-c", cmd], name=f"{p.prefix}-{name}", networks=[p.network_name],
                              container_labels=labels, labels={"hubops.managed": "true", "hubops.deployment": dep},
                              endpoint_spec=docker.types.EndpointSpec(mode="dnsrr"), cap_drop=["ALL"])
        made.append(s)
        return s
    # The python3 of the agent's image serves HTTP and runs the probes (no iptables rights in these).
    service("user-alice", user_labels, "exec python3 -m http.server 8888")
    service("user-bob", user_labels, "exec python3 -m http.server 8888")
    service("hub", {}, "exec python3 -m http.server 8081")
    box = {}
    for _ in range(120):
        cs = {ct.labels.get("com.docker.swarm.service.name"): ct
              for ct in c.containers.list(filters={"label": f"com.docker.swarm.service.name"})
              if ct.labels.get("com.docker.swarm.service.name", "").startswith(p.prefix)}
        if len(cs) == 3:
            box = {k.rsplit("-", 1)[1]: v for k, v in cs.items()}
            break
        time.sleep(0.5)
    assert set(box) == {"alice", "bob", "hub"}, box
    for _ in range(60):  # until their servers listen
        if probe(box["alice"], [("tcp", f"{p.prefix}-hub", 8081), ("tcp", f"{p.prefix}-user-bob", 8888)]) == ["open"] * 2:
            break
        time.sleep(0.5)
    try:
        yield {"p": p, "clients": clients, "box": box, "c": c}
    finally:
        teardown.teardown(p, clients, remove_volumes=True)
        clients.close()


def _ip_on(ct, net: str) -> str:
    ct.reload()
    return ct.attrs["NetworkSettings"]["Networks"][net]["IPAddress"]


def _targets(setup, outside, ports):
    port, hub_port = ports
    p, c, box = setup["p"], setup["c"], setup["box"]
    gw = c.networks.get("docker_gwbridge").attrs["IPAM"]["Config"][0]["Gateway"]
    docker0 = c.networks.get("bridge").attrs["IPAM"]["Config"][0]["Gateway"]
    dev = _sh("ip", "-4", "route", "show", "default").stdout.split()[4]
    own = _sh("ip", "-4", "-o", "addr", "show", "dev", dev).stdout.split()[3].split("/")[0]
    overlay_gw = str(ipaddress.ip_network(p.network.subnet).network_address + 1)
    return [
        ("the hub (overlay)", ("tcp", _ip_on(box["hub"], p.network_name), 8081)),
        ("bob's server (overlay)", ("tcp", _ip_on(box["bob"], p.network_name), 8888)),
        ("node: docker_gwbridge gateway", ("tcp", gw, port)),
        ("node: docker0 gateway", ("tcp", docker0, port)),
        (f"node: its own address {own}", ("tcp", own, port)),
        ("node: the hub's public port", ("tcp", own, hub_port)),
        ("node: Swarm 2377 (gwbridge gw)", ("tcp", gw, 2377)),
        ("overlay gateway", ("tcp", overlay_gw, port)),
        ("outside world", ("tcp", outside["outside"], 80)),
        ("metadata (configured)", ("tcp", outside["metadata"], 80)),
    ]


def _wait_rules(p, clients, users: int, timeout: float = 60) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        rows = netpolicy.describe(p, clients)
        if all(r["users' servers covered"] == str(users) for r in rows) or time.monotonic() > deadline:
            return rows
        time.sleep(1)


def test_users_servers_before_and_after_the_policy(setup, outside, listener):
    p, clients, box = setup["p"], setup["clients"], setup["box"]
    targets = _targets(setup, outside, listener)
    before = probe(box["alice"], [t for _, t in targets])
    hub_before = probe(box["hub"], [t for _, t in targets])

    r = netpolicy.ensure_netpolicy(p, clients)
    assert r.changed, r
    rows = _wait_rules(p, clients, users=2)
    print("\n" + table("ops status: network policy", rows))
    after = probe(box["alice"], [t for _, t in targets])
    hub_after = probe(box["hub"], [t for _, t in targets])
    print(table(f"what alice's server reaches (node: local engine; {p.deployment})",
                [{"target": name, "address": f"{t[1]}:{t[2]}", "before": b, "after": a,
                  "hub (not a user) after": h}
                 for (name, t), b, a, h in zip(targets, before, after, hub_after)]))
    print("\n".join(_host_rules(p.deployment)))
    agent = next(ct for ct in setup["c"].containers.list(filters={"label": "hubops.role=netpolicy"})
                 if ct.labels.get("hubops.deployment") == p.deployment)
    print("agent's log:\n" + agent.logs().decode(errors="replace"))
    want = {
        "the hub (overlay)": "open",
        "bob's server (overlay)": "blocked",  # rules in alice's own namespace (isolate_servers)
        "node: docker_gwbridge gateway": "blocked",
        "node: docker0 gateway": "blocked",
        "node: Swarm 2377 (gwbridge gw)": "blocked",
        "node: the hub's public port": "open",
        "outside world": "open",
        "metadata (configured)": "blocked",
    }
    got = {name: a for (name, _), a in zip(targets, after)}
    for name, outcome in want.items():
        assert got[name] == outcome, (name, got)
    assert next(v for k, v in got.items() if k.startswith("node: its own address")) == "blocked", got
    # Before: the node's ports and the metadata address answered; the hub is never restricted.
    was = {name: b for (name, _), b in zip(targets, before)}
    assert was["node: docker_gwbridge gateway"] == "open" and was["metadata (configured)"] == "open", was
    assert hub_after == hub_before, (hub_before, hub_after)
    assert len(_host_rules(p.deployment)) == 2 + 2 * 2 + 2 * 1  # jumps; per server: INPUT 2, DOCKER-USER 1


def test_rules_put_back_after_a_flush_and_an_agent_restart(setup, outside, listener):
    p, clients, box, c = setup["p"], setup["clients"], setup["box"], setup["c"]
    netpolicy.ensure_netpolicy(p, clients)
    _wait_rules(p, clients, users=2)
    gw = c.networks.get("docker_gwbridge").attrs["IPAM"]["Config"][0]["Gateway"]
    bob = ("tcp", f"{p.prefix}-user-bob", 8888)
    t = [("tcp", gw, listener[0]), ("tcp", outside["metadata"], 80), bob]
    assert probe(box["alice"], t) == ["blocked"] * 3
    # What an engine restart can do to the host's chains: jumps gone, chains flushed.
    ch = netpolicy.chains(p)
    for b in ("iptables-nft", "iptables-legacy"):
        _sh(b, "-w", "-D", "INPUT", "-m", "comment", "--comment", f"hubops:{p.deployment}", "-j", ch["INPUT"], check=False)
        _sh(b, "-w", "-F", ch["DOCKER-USER"], check=False)
    t0 = time.monotonic()
    for _ in range(60):
        if probe(box["alice"], t) == ["blocked"] * 3:
            break
        time.sleep(0.5)
    print(f"\nrules put back by the agent {time.monotonic() - t0:.1f} s after the flush")
    assert probe(box["alice"], t) == ["blocked"] * 3
    # The agent's container stopped (as on an engine restart): Swarm starts it again, and it puts the rules back.
    agent = next(ct for ct in c.containers.list(filters={"label": "hubops.role=netpolicy"})
                 if ct.labels.get("hubops.deployment") == p.deployment)
    agent.stop(timeout=10)
    t0 = time.monotonic()
    for _ in range(120):
        if probe(box["alice"], t) == ["blocked"] * 3 and agent.id not in [
                ct.id for ct in c.containers.list(filters={"label": "hubops.role=netpolicy"})]:
            break
        time.sleep(0.5)
    print(f"rules back {time.monotonic() - t0:.1f} s after the agent's container was stopped")
    assert probe(box["alice"], t) == ["blocked"] * 3


def test_policy_turned_off_takes_every_rule_out(setup, outside, listener):
    """network.policy.enabled false: the service goes, and with it the rules on the node and inside
    the users' servers' namespaces (the agent takes them out as it stops)."""
    p, clients, box, c = setup["p"], setup["clients"], setup["box"], setup["c"]
    netpolicy.ensure_netpolicy(p, clients)
    _wait_rules(p, clients, users=2)
    f = Path(str(p.source))
    off = f.with_name("off.yaml")
    off.write_text(f.read_text().replace("policy: {", "policy: {enabled: false, "))
    p_off = load_params(off)
    assert not p_off.network.policy.enabled
    r = netpolicy.ensure_netpolicy(p_off, clients)
    assert [i.action for i in r.items] == ["remove"], r
    gw = c.networks.get("docker_gwbridge").attrs["IPAM"]["Config"][0]["Gateway"]
    t = [("tcp", gw, listener[0]), ("tcp", outside["metadata"], 80), ("tcp", f"{p.prefix}-user-bob", 8888)]
    for _ in range(60):
        if not c.containers.list(filters={"label": [f"hubops.deployment={p.deployment}", "hubops.role=netpolicy"]}):
            break
        time.sleep(0.5)
    assert probe(box["alice"], t) == ["open"] * 3
    assert not _host_rules(p.deployment)
    assert not netpolicy.ensure_netpolicy(p_off, clients).changed


def test_teardown_removes_every_rule(setup, outside, listener):
    p, clients = setup["p"], setup["clients"]
    netpolicy.ensure_netpolicy(p, clients)
    _wait_rules(p, clients, users=2)
    assert _host_rules(p.deployment)
    r = teardown.teardown(p, clients)
    print(r)
    assert not _host_rules(p.deployment), _host_rules(p.deployment)
    assert not [s for s in setup["c"].services.list(filters={"label": f"hubops.deployment={p.deployment}"})]
