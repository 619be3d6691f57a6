"""Network policy for users' servers (65-netpolicy) on a real lab: one manager running the hub, two
workers running alice's and bob's servers, every engine over mutual TLS. Probes are made from inside
alice's real single-user server (the spawner's container), first with `network.policy.enabled: false`
and then with the policy on, and printed as a table.

Every probe goes to this machine or a lab namespace: the nodes' lab addresses and bridges, a listener
on this machine's lab-bridge address, and one more namespace on the lab's bridge (`npm-RUN`) that
answers HTTP on port 80 at a lab address (the outside world) and at 169.254.169.254 (the metadata
address: each lab node routes it to that namespace).

Also: with the policy off, another user's server refuses alice's requests (no credentials, alice's own
token) and takes bob's own token (so a 403 is the server's answer, not the network's); with it on,
alice's server cannot open a connection to bob's at all (rules in her server's own namespace, which
hold across nodes: alice and bob run on different workers); teardown leaves no rule on any node.
"""
from __future__ import annotations

import ipaddress
import json
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml

from hubops.core.engine import Clients
from hubops.core.params import load_params
from hubops.hub.running import HubAPI
from hubops.lab import cluster as lab
from hubops.stages import netpolicy
from tests.helpers import LAB_SUBNETS, create_user, free_port, free_subnet, run_name
from tests.helpers import hubops_cli as cli
from tests.netprobe import probe, table

pytestmark = [pytest.mark.engine, pytest.mark.e2e, pytest.mark.slow]
NAME = run_name("e2np")  # the lab and the deployment
META_NS = run_name("npm")
METADATA = "169.254.169.254"


def _sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=check)


def _set_policy(params: Path, policy: dict) -> None:
    """Set network.policy in the lab's parameter file (its header comments kept)."""
    text = params.read_text()
    header = "".join(ln + "\n" for ln in text.splitlines() if ln.startswith("#"))
    data = yaml.safe_load(text)
    data["network"]["policy"] = policy
    params.write_text(header + yaml.safe_dump(data, sort_keys=False, default_flow_style=False))


class _Listener:
    """A TCP listener on one address of this machine (accepts and closes)."""

    def __init__(self, addr: str):
        self.port = free_port()
        self.srv = socket.socket()
        self.srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.srv.bind((addr, self.port))
        self.srv.listen(16)
        self.srv.settimeout(0.5)
        self.stop = False
        self.t = threading.Thread(target=self._serve, daemon=True)
        self.t.start()

    def _serve(self):
        while not self.stop:
            try:
                c, _ = self.srv.accept()
                c.close()
            except OSError:
                pass

    def close(self):
        self.stop = True
        self.t.join(5)
        self.srv.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lab")
    params, outputs = tmp / "lab.yaml", tmp / "outputs"
    net = ipaddress.ip_network(free_subnet(LAB_SUBNETS))
    meta_lab_addr = str(net.network_address + 200)
    veth = ("nm" + NAME.replace("-", ""))[:15]
    http = listener = None
    try:
        t0 = time.monotonic()
        info = lab.lab_up(name=NAME, managers=1, workers=2, subnet=str(net), params_out=params)
        print(f"\nlab up: {time.monotonic() - t0:.1f} s")
        # The namespace that plays the outside world and the metadata service, on the lab's bridge.
        _sh("ip", "netns", "add", META_NS)
        _sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", META_NS)
        _sh("ip", "link", "set", veth, "master", info.bridge, "up")
        _sh("ip", "-n", META_NS, "addr", "add", f"{meta_lab_addr}/{net.prefixlen}", "dev", "eth0")
        _sh("ip", "-n", META_NS, "addr", "add", f"{METADATA}/32", "dev", "eth0")
        _sh("ip", "-n", META_NS, "link", "set", "eth0", "up")
        _sh("ip", "-n", META_NS, "link", "set", "lo", "up")
        for n in info.nodes:  # lab nodes have no default route: send the metadata address to that namespace
            _sh("ip", "-n", n.netns, "route", "add", f"{METADATA}/32", "via", meta_lab_addr)
        http = subprocess.Popen(["nsenter", f"--net=/var/run/netns/{META_NS}", "python3", "-m", "http.server",
                                 "--bind", "0.0.0.0", "80"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        listener = _Listener(str(net.network_address + 1))  # this machine, on the lab's bridge
        _set_policy(params, {"enabled": False})
        t0 = time.monotonic()
        deploy = cli("deploy", "-p", str(params), outputs=outputs)
        print(f"lab deploy (cold, policy off): {time.monotonic() - t0:.1f} s\n{deploy.stderr[-1500:]}")
        yield {"params": params, "outputs": outputs, "deploy": deploy, "p": load_params(params), "info": info,
               "subnet": str(net), "tmp": tmp,
               "meta_lab_addr": meta_lab_addr, "host_addr": str(net.network_address + 1), "listener": listener}
    finally:
        if listener is not None:
            listener.close()
        if http is not None:
            http.terminate()
            http.wait(10)
        lab.lab_down(name=NAME)
        _sh("ip", "link", "del", veth, check=False)
        _sh("ip", "netns", "del", META_NS, check=False)


def _spawn(api: HubAPI, user: str) -> None:
    if api.user(user) is None:
        create_user(api.p, user)
    api.request("POST", f"/hub/api/users/{user}/server", ok=(201, 202))
    api.wait_server(user, ready=True, timeout=180)


def _server_container(p, clients: Clients, user: str):
    """(host name, container) of the user's running server, found on each node's engine."""
    for h in p.hosts.all:
        for ct in clients[h.name].containers.list(filters={"label": [f"hubops.deployment={p.deployment}",
                                                                     "hubops.role=user-server"]}):
            env = dict(e.split("=", 1) for e in ct.attrs["Config"]["Env"] if "=" in e)
            if env.get("JUPYTERHUB_USER") == user:
                return h.name, ct
    raise AssertionError(f"no running container for {user}'s server")


def _env(ct) -> dict[str, str]:
    return dict(e.split("=", 1) for e in ct.attrs["Config"]["Env"] if "=" in e)


def _lab_rules(cluster) -> dict[str, list[str]]:
    """The deployment's iptables rules in each lab node's network namespace (read from this machine)."""
    out = {}
    for n in cluster["info"].nodes:
        lines = []
        for b in ("iptables-nft", "iptables-legacy"):
            cp = _sh("nsenter", f"--net=/var/run/netns/{n.netns}", b, "-w", "-S", check=False)
            lines += [ln for ln in cp.stdout.splitlines() if f"hubops:{cluster['p'].deployment}" in ln]
        out[n.name] = lines
    return out


def test_deploy_and_two_servers_on_the_workers(cluster):
    assert cluster["deploy"].returncode == 0, cluster["deploy"].stderr[-4000:]
    p = cluster["p"]
    api = HubAPI(p)
    for user in ("alice", "bob"):
        _spawn(api, user)
    clients = Clients(p)
    where = {u: _server_container(p, clients, u)[0] for u in ("alice", "bob")}
    print(f"\nservers: {where}")
    assert all(n.startswith(f"{NAME}-node") for n in where.values()), where
    assert not any(_lab_rules(cluster).values()), "policy off: no rule on any node"


def test_another_users_server_refuses_without_that_users_credentials(cluster):
    """JupyterHub's own authentication, with the policy off (the overlay open): what stands behind
    the overlay rules, and all there is when network.policy.isolate_servers is false."""
    p = cluster["p"]
    clients = Clients(p)
    _, alice = _server_container(p, clients, "alice")
    _, bob = _server_container(p, clients, "bob")
    bob_ip = bob.attrs["NetworkSettings"]["Networks"][p.network_name]["IPAddress"]
    alice_token, bob_token = _env(alice)["JUPYTERHUB_API_TOKEN"], _env(bob)["JUPYTERHUB_API_TOKEN"]
    api_path = "/user/bob/api/status"
    checks = [
        ("no credentials, API", ("http", bob_ip, 8888, {"path": api_path})),
        ("no credentials, JupyterLab page", ("http", bob_ip, 8888, {"path": "/user/bob/lab"})),
        ("no credentials, contents", ("http", bob_ip, 8888, {"path": "/user/bob/api/contents"})),
        ("alice's token", ("http", bob_ip, 8888, {"path": api_path, "headers": {"Authorization": f"token {alice_token}"}})),
        ("alice's token, contents", ("http", bob_ip, 8888, {"path": "/user/bob/api/contents",
                                                            "headers": {"Authorization": f"token {alice_token}"}})),
        ("a made-up token", ("http", bob_ip, 8888, {"path": api_path, "headers": {"Authorization": "token 0123abcd"}})),
        ("bob's own token (control)", ("http", bob_ip, 8888, {"path": api_path,
                                                              "headers": {"Authorization": f"token {bob_token}"}})),
    ]
    got = probe(alice, [t for _, t in checks])
    print("\n" + table("requests from alice's server straight to bob's (on the overlay, past the proxy; policy off)",
                       [{"request": n, "answer": a} for (n, _), a in zip(checks, got)]))
    answers = dict(zip([n for n, _ in checks], got))
    assert answers["bob's own token (control)"] == "HTTP 200"
    for name, a in answers.items():
        if name == "bob's own token (control)":
            continue
        # 403 for the API; a redirect to the hub's login (302) for a page: never bob's content.
        assert a in ("HTTP 403", "HTTP 302", "HTTP 401"), (name, a)


def _targets(cluster, clients: Clients, alice_node: str, bob_ct, bob_token: str) -> list[tuple[str, tuple]]:
    p, info = cluster["p"], cluster["info"]
    manager = info.managers[0]
    me = info.node(alice_node)
    other = next(n for n in info.workers if n.name != alice_node)
    gw = clients[alice_node].networks.get("docker_gwbridge").attrs["IPAM"]["Config"][0]["Gateway"]
    docker0 = me.bip.split("/")[0]
    bob_ip = bob_ct.attrs["NetworkSettings"]["Networks"][p.network_name]["IPAddress"]
    overlay_gw = str(ipaddress.ip_network(p.network.subnet).network_address + 1)
    return [
        ("hub API (overlay)", ("tcp", p.hub_service, 8081)),
        ("proxy (overlay)", ("tcp", p.hub_service, 8000)),
        (f"hub's public URL ({manager.name})", ("tcp", manager.address, p.hub.https_port)),
        ("bob's server (overlay)", ("tcp", bob_ip, 8888)),
        ("bob's server, with bob's token", ("http", bob_ip, 8888, {"path": "/user/bob/api/status",
                                                                 "headers": {"Authorization": f"token {bob_token}"}})),
        (f"own node: engine API {me.address}:2376", ("tcp", me.address, 2376)),
        ("own node: Swarm 2377", ("tcp", me.address, 2377)),
        ("own node: Swarm 7946", ("tcp", me.address, 7946)),
        (f"own node: docker_gwbridge gw {gw}", ("tcp", gw, 7946)),
        (f"own node: docker0 gw {docker0}", ("tcp", docker0, 7946)),
        ("manager: engine API 2376", ("tcp", manager.address, 2376)),
        ("manager: Swarm 2377", ("tcp", manager.address, 2377)),
        ("other worker: engine API 2376", ("tcp", other.address, 2376)),
        ("overlay gateway", ("tcp", overlay_gw, 8888)),
        ("this machine (lab bridge)", ("tcp", cluster["host_addr"], cluster["listener"].port)),
        ("outside world (lab netns)", ("tcp", cluster["meta_lab_addr"], 80)),
        (f"metadata {METADATA}", ("tcp", METADATA, 80)),
    ]


def test_what_a_users_server_reaches_before_and_after(cluster):
    p = cluster["p"]
    clients = Clients(p)
    alice_node, alice = _server_container(p, clients, "alice")
    bob_node, bob = _server_container(p, clients, "bob")
    targets = _targets(cluster, clients, alice_node, bob, _env(bob)["JUPYTERHUB_API_TOKEN"])
    before = probe(alice, [t for _, t in targets])

    _set_policy(cluster["params"], {"enabled": True})
    t0 = time.monotonic()
    r = cli("deploy", "-p", str(cluster["params"]), "--only", "65-netpolicy", outputs=cluster["outputs"])
    assert r.returncode == 0, r.stderr[-4000:]
    print(f"\n65-netpolicy (build, deliver to 3 nodes, start the agents): {time.monotonic() - t0:.1f} s")
    p = load_params(cluster["params"])
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        rows = netpolicy.describe(p, clients)
        if sum(int(r["users' servers covered"] or 0) for r in rows) == 2:
            break
        time.sleep(2)
    after = probe(alice, [t for _, t in targets])
    print(table(f"what alice's server (on {alice_node}; bob's on {bob_node}) reaches, lab {NAME}",
                [{"target": name, "address": f"{t[1]}:{t[2]}", "policy off": b, "policy on": a}
                 for (name, t), b, a in zip(targets, before, after)]))
    status = cli("ops", "status", "-p", str(cluster["params"]), outputs=cluster["outputs"])
    assert status.returncode == 0, status.stderr[-3000:]
    print(status.stdout[status.stdout.find("network policy"):])
    assert "network policy" in status.stdout
    rules = _lab_rules(cluster)
    for node, lines in rules.items():
        print(f"{node}: {len(lines)} rules")
    got = {name: a for (name, _), a in zip(targets, after)}
    was = {name: b for (name, _), b in zip(targets, before)}
    # Reachable with the policy on: the hub, the proxy, the hub's public URL, the outside world.
    for name in ("hub API (overlay)", "proxy (overlay)", "this machine (lab bridge)", "outside world (lab netns)"):
        assert got[name] == "open", (name, got)
    assert next(v for k, v in got.items() if k.startswith("hub's public URL")) == "open", got
    # Not reachable: every node port that answered without the policy, and the metadata address.
    assert was[f"metadata {METADATA}"] == "open" and got[f"metadata {METADATA}"] == "blocked", (was, got)
    node_targets = [k for k in got if k.startswith(("own node", "manager:", "other worker"))]
    answered = [k for k in node_targets if was[k] == "open"]
    assert len(answered) >= 4, f"without the policy, the nodes' ports answer: {was}"
    for k in node_targets:
        assert got[k] == "blocked", (k, got)
    # Other users' servers: open without the policy (the node's rules never see the overlay), closed
    # by the rules in alice's own namespace, even to a request with bob's own token.
    assert was["bob's server (overlay)"] == "open" and was["bob's server, with bob's token"] == "HTTP 200", was
    assert got["bob's server (overlay)"] == "blocked", got
    assert not got["bob's server, with bob's token"].startswith("HTTP"), got


def test_rules_come_back_after_a_node_loses_power(cluster):
    """alice's worker powered off (every process killed; a real power-off also loses the kernel's
    rules, so they are cleared here too), then started again: Swarm starts the agent and alice's
    server (pinned to the node: node-local home) again, and the agent puts the rules back."""
    p = load_params(cluster["params"])
    clients = Clients(p)
    node, _ = _server_container(p, clients, "alice")
    netns = cluster["info"].node(node).netns
    lab.kill_node(name=NAME, node=node)
    ch = netpolicy.chains(p)
    for b in ("iptables-nft", "iptables-legacy"):
        for chain, target in ch.items():
            _sh("nsenter", f"--net=/var/run/netns/{netns}", b, "-w", "-D", chain, "-m", "comment", "--comment",
                f"hubops:{p.deployment}", "-j", target, check=False)
            _sh("nsenter", f"--net=/var/run/netns/{netns}", b, "-w", "-F", target, check=False)
            _sh("nsenter", f"--net=/var/run/netns/{netns}", b, "-w", "-X", target, check=False)
    assert not _lab_rules(cluster)[node]
    t0 = time.monotonic()
    lab.lab_up(name=NAME, managers=1, workers=2, subnet=cluster["subnet"], params_out=cluster["tmp"] / "again.yaml")
    print(f"\n{node} powered off and started again: engine back after {time.monotonic() - t0:.1f} s")
    clients = Clients(p)
    manager = cluster["info"].managers[0]
    t = [("tcp", p.hub_service, 8081), ("tcp", METADATA, 80), ("tcp", manager.address, 2376),
         ("tcp", cluster["info"].node(node).address, 2376)]
    got, deadline = None, time.monotonic() + 240
    while time.monotonic() < deadline:
        try:
            where, alice = _server_container(p, clients, "alice")
            if any("user-alice" in ln for ln in _lab_rules(cluster)[where]):
                got = probe(alice, t)
                if got == ["open", "blocked", "blocked", "blocked"]:
                    break
        except (AssertionError, Exception):  # noqa: BLE001 - the node and the server are coming back
            pass
        time.sleep(2)
    print(f"alice's server on {where if got else '?'} with its rules back {time.monotonic() - t0:.1f} s after "
          f"the restart began: {got}")
    assert got == ["open", "blocked", "blocked", "blocked"], got


def test_teardown_leaves_no_rule_on_any_node(cluster):
    assert any(_lab_rules(cluster).values())
    r = cli("ops", "teardown", "-p", str(cluster["params"]), "--set", "confirm=true", outputs=cluster["outputs"])
    assert r.returncode == 0, r.stderr[-4000:]
    left = _lab_rules(cluster)
    assert not any(left.values()), json.dumps(left, indent=1)
