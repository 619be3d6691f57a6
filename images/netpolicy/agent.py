"""hubops network-policy agent: keeps one deployment's iptables rules on one node.

Runs in the node's own network namespace (a global Swarm service with the host network, or a
short-lived container for `show` and `remove`), with NET_ADMIN and NET_RAW, the node's engine
socket (to see which containers are users' servers) and the node's /run (for iptables' lock,
shared with dockerd). Only the Python standard library and the iptables binaries are used.

What it keeps in place, for every running container labelled as one of the deployment's users'
servers, keyed by that container's address on docker_gwbridge (the address its traffic to
anything outside the overlay carries when it reaches the node):
  INPUT       -> HUBOPS-I-<tag>: everything to the node's own addresses (Docker API, Swarm
                 2377/7946, SSH, every port on docker0, docker_gwbridge and the node's other
                 addresses) is rejected;
  DOCKER-USER -> HUBOPS-F-<tag>: the blocked addresses (link-local metadata by default) and
                 every node's address (but the hub's public port) are rejected; with egress
                 denied, everything but the allowed networks is rejected.
And inside each of those servers' own network namespace (OUTPUT -> HUBOPS-O-<tag>, entered with
nsenter through the node's /proc): new connections to the overlay only to the hub's API and the proxy (HUBOPS_OVERLAY_PORTS),
so that a user's server cannot open a connection to another's, on this node or any other (VXLAN
wraps the packet only after it left the server's namespace). Every rule carries the comment `hubops:<deployment>`; the two chains are rebuilt atomically
(iptables-restore --noflush) whenever the set of users' servers changes, and the jumps checked
every few seconds, so a node or engine restart (the service's task starts again) puts them back.
On SIGTERM (the service removed by teardown) it removes its rules and chains.

Usage: agent.py run | show | remove      (configuration in HUBOPS_* environment variables)
"""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse

DEPLOYMENT = os.environ.get("HUBOPS_DEPLOYMENT", "")
SOCK = os.environ.get("HUBOPS_ENGINE_SOCKET", "/run/hubops-engine.sock")
BLOCKED = [a for a in os.environ.get("HUBOPS_BLOCKED", "").split(",") if a]
NODES = [a for a in os.environ.get("HUBOPS_NODES", "").split(",") if a]
# The hub's public port on the nodes (the proxy, published in host mode): users' servers may use the
# hub's public URL, which leads to a node's address.
HUB_PORTS = [int(x) for x in os.environ.get("HUBOPS_HUB_PORTS", "").split(",") if x]
EGRESS = os.environ.get("HUBOPS_EGRESS", "allow")
EGRESS_ALLOW = [a for a in os.environ.get("HUBOPS_EGRESS_ALLOW", "").split(",") if a]
# The overlay (30-network) and the only ports users' servers may open connections to on it: the
# hub's API and the proxy. Empty: the overlay is left alone.
OVERLAY = os.environ.get("HUBOPS_OVERLAY", "")
OVERLAY_PORTS = [p for p in os.environ.get("HUBOPS_OVERLAY_PORTS", "").split(",") if p]
INTERVAL = float(os.environ.get("HUBOPS_INTERVAL", "1"))
RECHECK = float(os.environ.get("HUBOPS_RECHECK", "5"))
ROLE = os.environ.get("HUBOPS_USER_ROLE", "user-server")
REJECT = ["-j", "REJECT", "--reject-with", "icmp-admin-prohibited"]


def tag(deployment: str) -> str:
    """A chain-name part for the deployment (iptables chain names have at most 28 characters)."""
    if len(deployment) <= 19:
        return deployment
    return deployment[:12] + hashlib.sha256(deployment.encode()).hexdigest()[:7]


def comment(extra: str = "") -> list[str]:
    return ["-m", "comment", "--comment", f"hubops:{DEPLOYMENT}" + (f" {extra}" if extra else "")]


IN_CHAIN = f"HUBOPS-I-{tag(DEPLOYMENT)}"
OUT_CHAIN = f"HUBOPS-O-{tag(DEPLOYMENT)}"  # inside each user's server's own network namespace
FWD_CHAIN = f"HUBOPS-F-{tag(DEPLOYMENT)}"
JUMPS = [("INPUT", IN_CHAIN), ("DOCKER-USER", FWD_CHAIN)]


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


# -- the engine, over its unix socket -------------------------------------------------------------
class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 10):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.path)
        self.sock = s


def engine_get(path: str):
    conn = _UnixConnection(SOCK)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        if resp.status == 404:
            return None
        if resp.status != 200:
            raise RuntimeError(f"GET {path}: {resp.status} {body[:200]!r}")
        return json.loads(body)
    finally:
        conn.close()


def users_server_ids() -> dict[str, str]:
    """{container ID: name} of the deployment's running users' servers on this node."""
    filters = json.dumps({"label": ["hubops.managed=true", f"hubops.deployment={DEPLOYMENT}", f"hubops.role={ROLE}"],
                          "status": ["running"]})
    found = engine_get("/containers/json?filters=" + urllib.parse.quote(filters)) or []
    return {c["Id"]: (c.get("Names") or ["/?"])[0].lstrip("/") for c in found}


def users_servers() -> dict[str, str]:
    """{docker_gwbridge address: container name} of the deployment's running users' servers."""
    filters = json.dumps({"label": ["hubops.managed=true", f"hubops.deployment={DEPLOYMENT}", f"hubops.role={ROLE}"],
                          "status": ["running"]})
    found = engine_get("/containers/json?filters=" + urllib.parse.quote(filters)) or []
    names = {c["Id"]: (c.get("Names") or ["/?"])[0].lstrip("/") for c in found}
    if not names:
        return {}
    gw = engine_get("/networks/docker_gwbridge") or {}
    out = {}
    for cid, ep in (gw.get("Containers") or {}).items():
        if cid in names and ep.get("IPv4Address"):
            out[ep["IPv4Address"].split("/")[0]] = names[cid]
    return out


# -- iptables ------------------------------------------------------------------------------------------
def _run(argv: list[str], data: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(argv, input=data, capture_output=True, text=True)


def backends() -> list[str]:
    """The iptables variants ("nft", "legacy") whose filter table has Docker's DOCKER-USER chain."""
    return [b for b in ("nft", "legacy") if _run([f"iptables-{b}", "-w", "-S", "DOCKER-USER"]).returncode == 0]


def backend() -> str:
    found = backends()
    if not found:
        raise SystemExit("no DOCKER-USER chain in the filter table (neither iptables-nft nor iptables-legacy): "
                         "does this engine manage iptables (dockerd --iptables=false)?")
    # Where the engine's FORWARD jumps to DOCKER-USER, if both have the chain.
    for b in found:
        if "-j DOCKER-USER" in _run([f"iptables-{b}", "-w", "-S", "FORWARD"]).stdout:
            return b
    return found[0]


def rules_text(ips: dict[str, str]) -> str:
    """The restore file that rebuilds the deployment's two chains for these users' servers."""
    lines = ["*filter", f":{IN_CHAIN} - [0:0]", f":{FWD_CHAIN} - [0:0]"]

    def add(chain: str, *args: str) -> None:
        lines.append(" ".join([f"-A {chain}", *(a if " " not in a and a else json.dumps(a) for a in args)]))

    for ip, name in sorted(ips.items()):
        who = f"user-server {name}"[:200]
        # The hub's public port on this node: from docker_gwbridge, Docker's userland proxy answers it
        # (its DNAT rule skips traffic that comes in on docker_gwbridge), so it arrives here.
        for port in HUB_PORTS:
            add(IN_CHAIN, "-s", f"{ip}/32", "-p", "tcp", "--dport", str(port), *comment(who + " hub-public-port"),
                "-j", "RETURN")
        # Everything else to this node's own addresses: the engine's API, Swarm, SSH, the gateways.
        add(IN_CHAIN, "-s", f"{ip}/32", *comment(who + " node-itself"), *REJECT)
        for net in BLOCKED:
            add(FWD_CHAIN, "-s", f"{ip}/32", "-d", net, *comment(who + " blocked"), *REJECT)
        for node in NODES:
            for port in HUB_PORTS:
                add(FWD_CHAIN, "-s", f"{ip}/32", "-d", node, "-p", "tcp", "--dport", str(port),
                    *comment(who + " hub-public-port"), "-j", "RETURN")
            add(FWD_CHAIN, "-s", f"{ip}/32", "-d", node, *comment(who + " node"), *REJECT)
        if EGRESS != "allow":
            for net in EGRESS_ALLOW:
                add(FWD_CHAIN, "-s", f"{ip}/32", "-d", net, *comment(who + " egress-allowed"), "-j", "RETURN")
            add(FWD_CHAIN, "-s", f"{ip}/32", *comment(who + " egress-denied"), *REJECT)
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def apply(b: str, ips: dict[str, str]) -> None:
    cp = _run([f"iptables-{b}-restore", "-w", "--noflush"], rules_text(ips))
    if cp.returncode != 0:
        raise RuntimeError(f"iptables-{b}-restore failed: {cp.stderr.strip()}")
    ensure_jumps(b)


def ensure_jumps(b: str) -> bool:
    """Each jump first in its chain; True when one had to be put back."""
    changed = False
    for chain, target in JUMPS:
        if _run([f"iptables-{b}", "-w", "-C", chain, *comment(), "-j", target]).returncode != 0:
            if _run([f"iptables-{b}", "-w", "-S", target]).returncode != 0:
                _run([f"iptables-{b}", "-w", "-N", target])
            cp = _run([f"iptables-{b}", "-w", "-I", chain, "1", *comment(), "-j", target])
            if cp.returncode != 0:
                raise RuntimeError(f"iptables-{b} -I {chain}: {cp.stderr.strip()}")
            changed = True
    return changed


def counts(b: str) -> tuple[int, int]:
    """How many rules the deployment's two chains hold now."""
    return tuple(max(0, _run([f"iptables-{b}", "-w", "-S", ch]).stdout.count("\n") - 1) for ch in (IN_CHAIN, FWD_CHAIN))


def expected_counts(ips: dict[str, str]) -> tuple[int, int]:
    per_ip = len(BLOCKED) + len(NODES) * (1 + len(HUB_PORTS)) + (0 if EGRESS == "allow" else len(EGRESS_ALLOW) + 1)
    return len(ips) * (1 + len(HUB_PORTS)), len(ips) * per_ip


def remove_all() -> list[str]:
    """Every rule and chain of the deployment, in every backend: what was removed."""
    removed = []
    for b in ("nft", "legacy"):
        if _run([f"iptables-{b}", "-w", "-S"]).returncode != 0:
            continue
        for chain, target in JUMPS:
            while _run([f"iptables-{b}", "-w", "-D", chain, *comment(), "-j", target]).returncode == 0:
                removed.append(f"{b}: {chain} -j {target}")
        for target in (IN_CHAIN, FWD_CHAIN):
            if _run([f"iptables-{b}", "-w", "-S", target]).returncode == 0:
                _run([f"iptables-{b}", "-w", "-F", target])
                if _run([f"iptables-{b}", "-w", "-X", target]).returncode == 0:
                    removed.append(f"{b}: chain {target}")
        # Any other rule carrying the deployment's comment (an older agent's, a hand-made copy).
        for line in _run([f"iptables-{b}", "-w", "-S"]).stdout.splitlines():
            if f'"hubops:{DEPLOYMENT}' in line or f"hubops:{DEPLOYMENT} " in line or line.endswith(f"hubops:{DEPLOYMENT}"):
                if line.startswith("-A "):
                    import shlex
                    args = shlex.split(line)
                    if _run([f"iptables-{b}", "-w", "-D", *args[1:]]).returncode == 0:
                        removed.append(f"{b}: {line}")
    return removed


def show() -> dict:
    """The deployment's rules on this node, per backend."""
    out: dict = {"deployment": DEPLOYMENT, "backends": {}}
    for b in ("nft", "legacy"):
        cp = _run([f"iptables-{b}", "-w", "-S"])
        if cp.returncode != 0:
            continue
        mine = [ln for ln in cp.stdout.splitlines() if f"hubops:{DEPLOYMENT}" in ln and (
            f"hubops:{DEPLOYMENT}\"" in ln or f"hubops:{DEPLOYMENT} " in ln or ln.endswith(f"hubops:{DEPLOYMENT}"))]
        if mine:
            out["backends"][b] = mine
    out["docker_user"] = backends()
    return out


# -- the overlay: rules inside each user's server's own network namespace -------------------------
def _netns_path(cid: str) -> str | None:
    """The server's network namespace, through the node's /proc (mounted at /host/proc): the
    namespace of the container's first process."""
    info = engine_get(f"/containers/{cid}/json") or {}
    pid = (info.get("State") or {}).get("Pid") or 0
    return f"/host/proc/{pid}/ns/net" if pid else None


def isolate(cid: str, name: str) -> str:
    """In the server's own namespace (traffic leaves it before any VXLAN wrapping, so this holds
    between nodes too): new connections to the overlay only to OVERLAY_PORTS. The server's user has
    no capability (the spawner drops them all) and cannot change these rules."""
    path = _netns_path(cid)
    if path is None or not os.path.exists(path):
        raise RuntimeError(f"network namespace of {name} not found ({path})")
    enter = ["nsenter", f"--net={path}"]
    lines = ["*filter", f":{OUT_CHAIN} - [0:0]",
             f"-A {OUT_CHAIN} -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN"]
    if OVERLAY_PORTS:
        lines.append(f"-A {OUT_CHAIN} -p tcp -m multiport --dports {','.join(OVERLAY_PORTS)} -j RETURN")
    lines += [f"-A {OUT_CHAIN} -j REJECT --reject-with icmp-admin-prohibited", "COMMIT"]
    cp = _run([*enter, "iptables-nft-restore", "--noflush"], "\n".join(lines) + "\n")
    if cp.returncode != 0:
        raise RuntimeError(f"rules in {name}'s namespace: {cp.stderr.strip()}")
    jump = ["OUTPUT", "-d", OVERLAY, *comment("overlay"), "-j", OUT_CHAIN]
    if _run([*enter, "iptables-nft", "-C", *jump]).returncode != 0:
        cp = _run([*enter, "iptables-nft", "-I", *jump[:1], "1", *jump[1:]])
        if cp.returncode != 0:
            raise RuntimeError(f"jump in {name}'s namespace: {cp.stderr.strip()}")
    return path


def unisolate(cid: str) -> None:
    """The overlay rules out of a server's namespace again (the policy turned off or changed)."""
    path = _netns_path(cid)
    if path is None or not os.path.exists(path):
        return  # the server is gone, and its rules with it
    enter = ["nsenter", f"--net={path}"]
    while _run([*enter, "iptables-nft", "-D", "OUTPUT", "-d", OVERLAY, *comment("overlay"), "-j", OUT_CHAIN]).returncode == 0:
        pass
    _run([*enter, "iptables-nft", "-F", OUT_CHAIN])
    _run([*enter, "iptables-nft", "-X", OUT_CHAIN])


def run() -> None:
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    b = backend()
    log(f"deployment {DEPLOYMENT}: iptables-{b}; blocked {BLOCKED}; nodes {NODES}; egress {EGRESS} {EGRESS_ALLOW}")
    last: dict[str, str] | None = None
    isolated: set[str] = set()
    checked = 0.0
    while not stop:
        try:
            if OVERLAY:
                ids = users_server_ids()
                for cid, name in ids.items():
                    if cid not in isolated:
                        try:
                            isolate(cid, name)
                            isolated.add(cid)
                            log(f"overlay: {name} may open connections only to ports {OVERLAY_PORTS} of {OVERLAY}")
                        except Exception as e:  # noqa: BLE001 - tried again next round
                            log(f"overlay: {name}: {e}")
                isolated &= set(ids)
            ips = users_servers()
            if ips != last:
                apply(b, ips)
                log(f"rules for {len(ips)} user server(s): " + ", ".join(f"{n} {ip}" for ip, n in sorted(ips.items())))
                last, checked = ips, time.monotonic()
            elif time.monotonic() - checked > RECHECK:
                # The engine may have restarted and rebuilt its chains, or someone flushed ours.
                if ensure_jumps(b) or counts(b) != expected_counts(ips):
                    apply(b, ips)
                    log("jumps or rules were missing: put back")
                checked = time.monotonic()
        except Exception as e:  # noqa: BLE001 - keep going; the engine may be restarting
            log(f"error: {e}")
            last = None
        for _ in range(int(INTERVAL * 10)):
            if stop:
                break
            time.sleep(0.1)
    for cid in isolated:
        try:
            unisolate(cid)
        except Exception as e:  # noqa: BLE001 - the server may be stopping too
            log(f"overlay: {cid[:12]}: {e}")
    log("stopping: removing the deployment's rules: " + "; ".join(remove_all()) +
        f"; overlay rules taken out of {len(isolated)} server(s)")


def main(argv: list[str]) -> int:
    if not DEPLOYMENT:
        print("HUBOPS_DEPLOYMENT is not set", file=sys.stderr)
        return 2
    cmd = argv[1] if len(argv) > 1 else "run"
    if cmd == "run":
        run()
    elif cmd == "show":
        print(json.dumps(show()))
    elif cmd == "remove":
        print(json.dumps({"removed": remove_all()}))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
