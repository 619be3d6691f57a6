"""The lab: several Docker engines on this machine, for multi-host rehearsal and tests.

What Docker Machine used to do, without virtual machines: every lab node is a Linux network
namespace with its own Docker engine, reached like a real host over tcp+TLS on port 2376
with a client certificate. The stages never know they run on a lab; they see the parameter
file `lab_up` writes.

What `lab_up` changes on this machine (all of it removed by `lab_down`, and nothing else):

- a bridge ``hl-<name>`` with the subnet's first address (``10.77.0.1/24``);
- one iptables rule ``FORWARD -i hl-<name> -o hl-<name> -j ACCEPT`` tagged with the comment
  ``hubops-lab-<name>`` (the root engine sets the FORWARD policy to DROP, and bridged
  traffic between the nodes passes through FORWARD);
- per node a network namespace ``hl-<node>`` and a veth pair (``hv-<name>-<i>`` on the
  bridge, ``eth0`` inside with ``.11``, ``.12``, ... managers first), no default route: lab
  nodes reach each other and this machine, nothing else;
- per node a ``dockerd`` in that namespace, with its own hostname (a UTS namespace), data
  under ``STATE/<node>/docker`` and pid file and exec-root under ``RUN/<node>``;
- per node a mount namespace for its engine, in which ``RUN/<node>/engine`` is bind-mounted at
  ``RUN/engine``: every engine has its unix socket at the same path, ``RUN/engine/docker.sock``,
  in its own view (as every real host has /var/run/docker.sock), so a container that mounts
  the engine socket (the hub) gets the socket of whichever node Swarm runs it on. From this
  machine, a node's socket is ``RUN/<node>/engine/docker.sock``; ``RUN/engine`` itself is empty;
- a lab CA, server certificates per node and one client certificate (``STATE/certs``);
- the parameter file and, beside it, a userlist (``<stem>.userlist``).

STATE is ``/var/lib/hubops-lab/<name>``, RUN ``/run/hubops-lab/<name>``. Needs root.
"""
from __future__ import annotations

import html
import ipaddress
import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hubops.core.errors import ConflictError, HubopsError, PreflightError
from hubops.lab import engines as lab_engines

log = logging.getLogger("hubops")

STATE_ROOT = Path("/var/lib/hubops-lab")
RUN_ROOT = Path("/run/hubops-lab")
ENGINE_PORT = 2376
NETNS_DIR = Path("/var/run/netns")
# Inside each namespace the engine keeps its own default bridge (docker0 there is the
# namespace's, not this machine's); its subnet comes from this range, one /24 per node, away
# from the lab subnets (10.77.x) and hubops' overlay subnets (10.231-10.240.x).
BIP_RANGE = ipaddress.ip_network("172.30.0.0/16")
FIRST_HOST = 11  # nodes get .11, .12, ...; .1 is the bridge
TOOLS = ("ip", "nsenter", "unshare", "dockerd", "iptables", "mount", "umount")
PARAMS_MARK = "# Written by `hubops lab up`"
USERLIST = "operator admin\nalice\nbob\n"
_SBIN = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_NAME_RE = re.compile(r"^[a-z]([a-z0-9-]*[a-z0-9])?$")
_IFNAMSIZ = 15  # longest Linux interface name

# Engines this process started: kept so that they can be reaped (no zombies in a long-lived
# Jupyter kernel) and so that an engine that dies while starting is noticed at once.
_STARTED: dict[int, subprocess.Popen] = {}


# -- what a lab is ---------------------------------------------------------------------------
@dataclass
class LabNode:
    """One lab node: its plan (name, role, address, ...) and, from `lab_status`, its state."""

    name: str
    role: str  # "manager" or "worker"
    index: int  # position in the lab, managers first
    address: str
    netns: str
    veth: str
    bip: str
    engine: str = lab_engines.HOST  # the engine it runs: "20.10" (this machine's), "26", "28"
    # fake generic resources its engine advertises (dockerd --node-generic-resource KIND=ID), e.g. a GPU
    generic_resources: tuple[str, ...] = ()
    # the engine's image store: "classic" (graph drivers) or "containerd" (containerd's snapshotters, the
    # default of new Docker 29 installs, an option of 24 to 28: daemon.json features.containerd-snapshotter)
    image_store: str = "classic"
    # observed
    netns_present: bool = False
    pid: int | None = None
    engine_version: str | None = None  # set when the engine answered over TLS
    engine_api: str | None = None
    engine_name: str | None = None  # the engine's idea of its host name (docker info Name)
    swarm_state: str | None = None  # inactive, pending, active, error, locked
    error: str | None = None

    @property
    def url(self) -> str:
        return f"tcp://{self.address}:{ENGINE_PORT}"

    @property
    def alive(self) -> bool:
        return self.pid is not None

    def plan(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in ("name", "role", "index", "address", "netns", "veth", "bip", "engine")}
        if self.generic_resources:  # only when given: labs made before keep their plan
            out["generic_resources"] = list(self.generic_resources)
        if self.image_store != "classic":
            out["image_store"] = self.image_store
        return out


@dataclass
class LabInfo:
    """A lab as `lab_up`, `lab_down` or `lab_status` found or left it."""

    name: str
    exists: bool
    subnet: str | None = None
    bridge: str | None = None
    state_dir: Path | None = None
    run_dir: Path | None = None
    nodes: list[LabNode] = field(default_factory=list)
    params_file: Path | None = None
    certs: dict[str, str] = field(default_factory=dict)  # ca, cert, key: the client's files
    changes: list[str] = field(default_factory=list)  # what this call changed on the machine
    duration_s: float | None = None

    @property
    def managers(self) -> list[LabNode]:
        return [n for n in self.nodes if n.role == "manager"]

    @property
    def workers(self) -> list[LabNode]:
        return [n for n in self.nodes if n.role == "worker"]

    def node(self, name: str) -> LabNode:
        return next(n for n in self.nodes if n.name == name)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe fields."""
        d = asdict(self)
        for k in ("state_dir", "run_dir", "params_file"):
            d[k] = None if d[k] is None else str(d[k])
        for n, node in zip(d["nodes"], self.nodes):
            n["url"], n["alive"] = node.url, node.alive
        return d

    # -- rendering ---------------------------------------------------------------------------
    _COLS = ("node", "role", "address", "netns", "pid", "runs", "engine", "api", "name", "swarm")

    def _rows(self) -> list[tuple[str, ...]]:
        return [
            (n.name, n.role, n.address, "yes" if n.netns_present else "no", str(n.pid or "-"),
             "this machine's dockerd" if n.engine == lab_engines.HOST else f"Docker {n.engine} rootfs",
             n.engine_version or (n.error or "-"), n.engine_api or "-", n.engine_name or "-", n.swarm_state or "-")
            for n in self.nodes
        ]

    def _title(self) -> str:
        if not self.exists and not self.nodes:
            return f"lab {self.name}: not running" + (f" ({len(self.changes)} removals)" if self.changes else "")
        t = (f"lab {self.name}: {len(self.managers)} manager(s), {len(self.workers)} worker(s) "
             f"on {self.subnet} (bridge {self.bridge})")
        if self.params_file:
            t += f", parameters {self.params_file}"
        return t

    def __repr__(self) -> str:
        lines = [self._title()]
        rows = self._rows()
        if rows:
            widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(self._COLS)]
            fmt = "  " + "  ".join(f"{{:<{w}}}" for w in widths)
            lines.append(fmt.format(*self._COLS).rstrip())
            lines += [fmt.format(*r).rstrip() for r in rows]
        if self.changes:
            lines.append(f"  changed ({len(self.changes)}):")
            lines += [f"    · {c}" for c in self.changes]
        elif self.exists:
            lines.append("  no change")
        if self.duration_s is not None:
            lines.append(f"  took {self.duration_s} s")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        e = html.escape
        head = "".join(f"<th>{e(c)}</th>" for c in self._COLS)
        body = "".join("<tr>" + "".join(f"<td>{e(v)}</td>" for v in r) + "</tr>" for r in self._rows())
        out = f"<p><b>{e(self._title())}</b></p>"
        if body:
            out += f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        if self.changes:
            out += "<ul>" + "".join(f"<li>{e(c)}</li>" for c in self.changes) + "</ul>"
        if self.duration_s is not None:
            out += f"<p>took {self.duration_s} s</p>"
        return out


# -- names and the plan (pure) ---------------------------------------------------------------
def _bridge(name: str) -> str:
    return f"hl-{name}"


def _comment(name: str) -> str:
    return f"hubops-lab-{name}"


def _netns_re(name: str) -> re.Pattern:
    return re.compile(rf"^hl-{re.escape(name)}-(manager\d*|node\d+)$")


def _veth_re(name: str) -> re.Pattern:
    return re.compile(rf"^hv-{re.escape(name)}-\d+$")


def node_names(name: str, managers: int, workers: int) -> list[tuple[str, str]]:
    """(node name, role) as the 2016 guide named its machines: NAME-manager, NAME-manager1, ...,
    then NAME-node0, NAME-node1, ..."""
    out = [(f"{name}-manager" + (str(i) if i else ""), "manager") for i in range(managers)]
    return out + [(f"{name}-node{i}", "worker") for i in range(workers)]


def _check_name(name: str, count: int = 1) -> None:
    if not _NAME_RE.match(name) or len(f"hv-{name}-{max(count - 1, 0)}") > _IFNAMSIZ:
        longest = _IFNAMSIZ - len(f"hv--{max(count - 1, 0)}")
        raise HubopsError(
            f"lab name {name!r}: use lower-case letters, digits and '-', starting with a letter, at most "
            f"{longest} characters for {count} node(s) (interface names hv-NAME-N are limited to "
            f"{_IFNAMSIZ} characters); e.g. --name lab"
        )


def parse_generic_resources(spec: str | dict[str, list[str]] | None, names: list[str],
                            lab: str) -> dict[str, tuple[str, ...]]:
    """`--generic-resource` as given (NODE:KIND=ID,... with NODE a node's name or its short name such as
    node0) or a dict node -> ["KIND=ID", ...]: full node name -> its resources. Refuses unknown nodes
    and malformed entries, before anything is made."""
    if not spec:
        return {}
    pairs: list[tuple[str, str]] = []
    if isinstance(spec, dict):
        pairs = [(node, r) for node, rs in spec.items() for r in rs]
    else:
        for item in filter(None, (x.strip() for x in spec.split(","))):
            node, sep, r = item.partition(":")
            if not sep:
                raise HubopsError(f"--generic-resource {item!r}: give NODE:KIND=ID, e.g. node0:NVIDIA-GPU=gpu0")
            pairs.append((node.strip(), r.strip()))
    out: dict[str, list[str]] = {}
    for node, r in pairs:
        full = node if node in names else f"{lab}-{node}"
        if full not in names:
            raise HubopsError(f"--generic-resource: lab {lab} has no node {node!r} (its nodes: {', '.join(names)})")
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*=[A-Za-z0-9][A-Za-z0-9_.:-]*$", r):
            raise HubopsError(f"--generic-resource {node}:{r}: give KIND=ID (a named resource, e.g. NVIDIA-GPU=gpu0) "
                              "or KIND=COUNT (e.g. SSD=2)")
        out.setdefault(full, []).append(r)
    return {k: tuple(v) for k, v in out.items()}


def _plan(name: str, managers: int, workers: int, net: ipaddress.IPv4Network,
          engines: str | dict[str, str] | None = None,
          generic: str | dict[str, list[str]] | None = None, image_store: str = "classic") -> list[LabNode]:
    """The lab's nodes. `engines`: `--engine` as given (one version for every node, or
    NODE=VERSION pairs) or a dict node -> version; unknown versions are refused here, before
    anything is made."""
    if image_store not in ("classic", "containerd"):
        raise HubopsError(f"lab {name}: image store {image_store!r}: give classic or containerd")
    if managers < 1 or workers < 0:
        raise HubopsError(f"lab {name}: give at least 1 manager and 0 or more workers "
                          f"(got {managers} managers, {workers} workers)")
    names = node_names(name, managers, workers)
    _check_name(name, len(names))
    if len(names) > 200:
        raise HubopsError(f"lab {name}: {len(names)} nodes is more than this machine should carry; use at most 200")
    hosts = net.num_addresses - 2
    if FIRST_HOST + len(names) - 1 > hosts:
        raise HubopsError(f"lab subnet {net} is too small for {len(names)} nodes (they use .{FIRST_HOST} "
                          f"onwards); give a /24, e.g. --subnet 10.77.0.0/24")
    if isinstance(engines, dict):
        engines = ",".join(f"{k}={v}" for k, v in engines.items())
    which = lab_engines.parse_engines(engines, names, name)
    resources = parse_generic_resources(generic, [n for n, _ in names], name)
    if image_store == "containerd":
        old = sorted(n for n, _ in names if lab_engines.ENGINES[which[n]].host)
        if old:
            raise HubopsError(f"lab {name}: the containerd image store needs Docker 24 or newer; node(s) "
                              f"{', '.join(old)} would run this machine's 20.10: give --engine 26 or 28 for them")
    return [
        LabNode(name=n, role=role, index=i, address=str(net.network_address + FIRST_HOST + i),
                netns=f"hl-{n}", veth=f"hv-{name}-{i}",
                bip=f"{BIP_RANGE.network_address + (i + 1) * 256 + 1}/24", engine=which[n],
                generic_resources=resources.get(n, ()), image_store=image_store)
        for i, (n, role) in enumerate(names)
    ]


def _subnet(subnet: str, what: str = "lab subnet") -> ipaddress.IPv4Network:
    try:
        net = ipaddress.ip_network(subnet, strict=True)
    except ValueError as e:
        raise HubopsError(f"{what} {subnet!r} is not a subnet in CIDR form such as 10.77.0.0/24 ({e})") from None
    if net.version != 4 or net.prefixlen > 28:
        raise HubopsError(f"{what} {subnet!r}: give an IPv4 subnet of /28 or larger, such as 10.77.0.0/24")
    return net  # type: ignore[return-value]


def overlaps(net: ipaddress.IPv4Network, routes: list[dict], addrs: list[dict], nameservers: list[str],
             bridge: str) -> list[str]:
    """What on this machine `net` would collide with: routes (`ip -j route`), interface
    addresses (`ip -j addr`) and DNS resolvers, except those of the lab's own bridge."""
    found = []
    for r in routes:
        dst = r.get("dst")
        if not dst or dst == "default" or r.get("dev") == bridge:
            continue
        try:
            other = ipaddress.ip_network(dst, strict=False)
        except ValueError:
            continue
        if other.version == 4 and other.overlaps(net):
            found.append(f"route {dst} dev {r.get('dev', '?')}")
    for link in addrs:
        if link.get("ifname") == bridge:
            continue
        for a in link.get("addr_info", []):
            if a.get("family") == "inet" and ipaddress.ip_address(a["local"]) in net:
                found.append(f"address {a['local']} on {link.get('ifname')}")
    for ns in nameservers:
        try:
            if ipaddress.ip_address(ns) in net:
                found.append(f"DNS resolver {ns} (/etc/resolv.conf)")
        except ValueError:
            pass
    return list(dict.fromkeys(found))


def engine_label(key: str, manifest: dict | None = None) -> str:
    """What a node's engine is, for people: 'Docker 28.5.2 (Debian sid root file system)'."""
    if key == lab_engines.HOST:
        return "Docker 20.10 (this machine's dockerd)"
    spec = lab_engines.ENGINES[key]
    version = (manifest or {}).get("docker") or f"{spec.expect}.x"
    return f"Docker {version} (Debian {spec.suite} root file system)"


def engine_socket(run: Path) -> Path:
    """Where every lab engine has its unix socket, each in its own mount namespace."""
    return run / "engine" / "docker.sock"


def node_socket(run: Path, node: str) -> Path:
    """Where one node's engine socket is seen from this machine."""
    return run / node / "engine" / "docker.sock"


def params_text(name: str, nodes: list[LabNode], *, state: Path, run: Path, overlay_subnet: str,
                userlist: str, engines: dict[str, str] | None = None) -> str:
    """The parameter file for a lab (YAML with a header that marks it as written by `lab up`).
    `engines`: node name -> what engine it runs, written into the header."""
    certs = state / "certs"
    tls = {"ca": str(certs / "ca.pem"), "cert": str(certs / "cert.pem"), "key": str(certs / "key.pem")}

    def host(n: LabNode) -> dict:
        return {"name": n.name, "url": n.url, "advertise_addr": n.address, "tls": dict(tls),
                "engine_socket": str(engine_socket(run))}

    data = {
        "deployment": name,
        "operator_dir": str(state / "operator"),
        "hosts": {"managers": [host(n) for n in nodes if n.role == "manager"],
                  "workers": [host(n) for n in nodes if n.role == "worker"]},
        "hub": {"public_name": nodes[0].address, "https_port": 443},
        "tls": {"mode": "self-signed"},
        "auth": {"mode": "shared-password", "userlist": userlist},
        "network": {"subnet": overlay_subnet},
        # The lab's nodes have no internet: images are built by this machine's engine and
        # streamed to them.
        "images": {"build_engine": "unix:///var/run/docker.sock"},
    }
    header = (
        f"{PARAMS_MARK} for the lab {name!r}: {sum(n.role == 'manager' for n in nodes)} manager(s), "
        f"{sum(n.role == 'worker' for n in nodes)} worker(s) on {nodes[0].address.rsplit('.', 1)[0]}.x.\n"
        f"# Each `hubops lab up --name {name}` rewrites it: edit a copy, not this file.\n"
        f"# Deploy on the lab: hubops deploy -p THIS_FILE. Remove the lab: hubops lab down --name {name}\n"
        f"# (that also removes the operator folder and the certificates named below, under {state}).\n"
    )
    header += "".join(f"# engine of {n.name}: {(engines or {}).get(n.name) or engine_label(n.engine)}\n" for n in nodes)
    return header + yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


# -- running commands ------------------------------------------------------------------------
def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{env['PATH']}:{_SBIN}" if env.get("PATH") else _SBIN
    return env


def _run(argv: list[str], *, check: bool = True) -> subprocess.CompletedProcess:
    log.debug("lab: %s", shlex.join(argv))
    try:
        cp = subprocess.run(argv, check=False, capture_output=True, text=True, env=_env(), timeout=120)
    except FileNotFoundError:
        raise PreflightError(f"`{argv[0]}` is not installed; install iproute2, util-linux, iptables "
                             "and docker.io (apt-get install -y iproute2 util-linux iptables docker.io)") from None
    if check and cp.returncode != 0:
        raise HubopsError(f"`{shlex.join(argv)}` failed (exit {cp.returncode}): {cp.stderr.strip() or cp.stdout.strip()}")
    return cp


def _ipj(*args: str) -> list[dict]:
    out = _run(["ip", "-j", *args]).stdout.strip()
    return json.loads(out) if out else []


def _links() -> dict[str, dict]:
    return {link["ifname"]: link for link in _ipj("-d", "link", "show")}


def _ns_links(ns: str) -> dict[str, dict]:
    return {link["ifname"]: link for link in _ipj("-n", ns, "-d", "link", "show")}


def _ns_present(ns: str) -> bool:
    return (NETNS_DIR / ns).exists()


def _nameservers() -> list[str]:
    try:
        text = Path("/etc/resolv.conf").read_text()
    except OSError:
        return []
    return [ln.split()[1] for ln in text.splitlines() if ln.startswith("nameserver") and len(ln.split()) > 1]


def _preflight(action: str) -> None:
    if os.geteuid() != 0:
        raise PreflightError(f"`hubops lab {action}` changes this machine's network namespaces, links and "
                             "iptables rules, and starts Docker engines: run it as root (sudo hubops lab ...)")
    missing = [t for t in TOOLS if shutil.which(t, path=_env()["PATH"]) is None]
    if missing:
        raise PreflightError(f"missing command(s) {', '.join(missing)}: install them "
                             "(apt-get install -y iproute2 util-linux iptables docker.io) and run again")


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write a file atomically with `mode` (the temporary file has it from the start)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


# -- processes -------------------------------------------------------------------------------
def _reap(pid: int) -> bool:
    """Collect our child `pid` if it has exited. False while it runs (or is not our child)."""
    p = _STARTED.get(pid)
    if p is not None and p.poll() is not None:
        _STARTED.pop(pid, None)
        return True
    return False


def _reap_all() -> None:
    for pid in list(_STARTED):
        _reap(pid)


def _proc_state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def _engine_pid(run: Path, node: str) -> int | None:
    """The pid of the node's dockerd if it runs (pid file, and a live dockerd that names it)."""
    pidfile = run / node / "docker.pid"
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _is_engine(pid, pidfile) else None


def _is_engine(pid: int, pidfile: Path) -> bool:
    if _proc_state(pid) in (None, "Z", "X"):
        _reap(pid)
        return False
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    # The pid file can outlive its engine and the pid be reused: only a dockerd started with
    # this very pid file counts.
    return bool(argv) and os.path.basename(argv[0]) == b"dockerd" and str(pidfile).encode() in argv


def _netns_id(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _procs_in_netns(ns: str) -> list[int]:
    """Processes whose network namespace is `ns` (containerd, shims, ... left by an engine)."""
    want = _netns_id(NETNS_DIR / ns)
    if want is None:
        return []
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid() and _netns_id(d / "ns" / "net") == want:
            pids.append(int(d.name))
    return pids


def _descendants(roots: list[int]) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], list(roots)
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out and c not in roots:
                out.append(c)
                todo.append(c)
    return out


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        left = []
        for pid in pids:
            if pid in _STARTED:
                # Our own child: gone once collected. (A multi-threaded process whose main
                # thread has ended shows "Z" while its other threads still exit.)
                if not _reap(pid):
                    left.append(pid)
            elif _proc_state(pid) not in (None, "Z", "X"):
                left.append(pid)
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.1)


# -- cgroups ---------------------------------------------------------------------------------
CGROUP_ROOT = Path("/sys/fs/cgroup")


def _cgroup_parent(node: str) -> str:
    return f"/hubops-lab/{node}"


def _remove_cgroups(nodes: list[LabNode], changes: list[str]) -> None:
    """Remove the (empty) cgroups of the nodes' containers, which an engine that was killed
    leaves behind, in every hierarchy (cgroup v1 controllers and v2)."""
    for n in nodes:
        rel = _cgroup_parent(n.name).lstrip("/")
        removed = 0
        for top in [CGROUP_ROOT / rel, *CGROUP_ROOT.glob(f"*/{rel}")]:
            if not top.is_dir():
                continue
            # Deepest first; rmdir fails on a cgroup that still has processes, which is kept.
            for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
                _rmdir(d)
            removed += _rmdir(top)
            _rmdir(top.parent)  # /hubops-lab, when no other lab uses it
        if removed:
            changes.append(f"removed the cgroups /{rel} of {n.name}'s containers ({removed} hierarchies)")


def _rmdir(d: Path) -> bool:
    try:
        d.rmdir()
        return True
    except OSError:
        return False


# -- mounts ----------------------------------------------------------------------------------
def _unescape(path: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), path)


def _mounts_under(roots: list[Path]) -> list[str]:
    prefixes = [str(r).rstrip("/") for r in roots]
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mp = _unescape(line.split()[4])
        if any(mp == p or mp.startswith(p + "/") for p in prefixes):
            out.append(mp)
    return out


def _unmount_under(roots: list[Path], changes: list[str]) -> None:
    """Lazily unmount everything under `roots` (container layers, netns files of overlay
    networks, shm): what an engine that was killed leaves behind."""
    for _ in range(5):
        mounts = _mounts_under(roots)
        if not mounts:
            return
        for mp in sorted(set(mounts), key=lambda m: m.count("/"), reverse=True):
            if _run(["umount", "-l", mp], check=False).returncode == 0:
                changes.append(f"unmounted {mp}")
    left = _mounts_under(roots)
    if left:
        raise HubopsError(f"could not unmount {', '.join(left[:5])}: unmount them by hand "
                          "(umount -l PATH) and run `hubops lab down` again; nothing under them was deleted")


# -- the lab's state file --------------------------------------------------------------------
def _dirs(name: str, state_root: Path, run_root: Path) -> tuple[Path, Path]:
    return Path(state_root) / name, Path(run_root) / name


def _read_state(state: Path) -> dict | None:
    try:
        return json.loads((state / "lab.json").read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise HubopsError(f"{state / 'lab.json'} is unreadable ({e}); run `hubops lab down` to remove the lab") from e


def _nodes_from_state(data: dict) -> list[LabNode]:
    return [LabNode(**n) for n in data["nodes"]]


def _describe(data: dict) -> str:
    engines = ", ".join(f"{n['name']} on {n.get('engine', lab_engines.HOST)}" for n in data.get("nodes", []))
    return f"{data['managers']} manager(s), {data['workers']} worker(s) on {data['subnet']} ({engines})"


# -- up --------------------------------------------------------------------------------------
def lab_up(
    *,
    name: str = "lab",
    managers: int = 1,
    workers: int = 2,
    subnet: str = "10.77.0.0/24",
    params_out: Path,
    overlay_subnet: str = "10.240.0.0/24",
    state_root: Path = STATE_ROOT,
    run_root: Path = RUN_ROOT,
    timeout: float = 120,
    engines: str | dict[str, str] | None = None,
    rebuild: bool = False,
    cache_root: Path = lab_engines.CACHE_ROOT,
    mirror: str = lab_engines.MIRROR,
    shared: tuple[str, ...] = lab_engines.DEFAULT_SHARED,
    generic_resources: str | dict[str, list[str]] | None = None,
    image_store: str = "classic",
) -> LabInfo:
    """Bring up (or complete) the lab `name` and write its parameter file `params_out`.

    `engines` chooses each node's Docker engine (see `lab_engines`): ``"28"`` for every node,
    ``"manager=28,node0=26"`` per node (the others: this machine's 20.10), or a dict. The root
    file system of each newer engine is built into `cache_root` when missing (or `rebuild`),
    before the lab is made; nodes on it see this machine's `shared` folders at their own paths.
    `generic_resources`: fake ones the nodes' engines advertise to Swarm, as a GPU host's does
    (``{"node0": ["NVIDIA-GPU=gpu0"]}`` or ``"node0:NVIDIA-GPU=gpu0"``; see parse_generic_resources).
    `image_store`: ``"containerd"`` gives every node's engine the containerd image store (Docker 29's
    default for new installs; 26 and 28 nodes only).

    Creates the bridge, its FORWARD rule, one namespace, veth pair and Docker engine per node,
    the lab's certificates and the parameter file (see the module docstring). Idempotent: on a
    running lab it changes nothing (an engine that died is started again). A lab of the same
    name with another topology is an error: `lab down` it first.
    """
    _reap_all()
    t0 = time.monotonic()
    _check_name(name)
    net = _subnet(subnet)
    overlay = _subnet(overlay_subnet, "overlay subnet")
    nodes = _plan(name, managers, workers, net, engines, generic_resources, image_store)
    bridge = _bridge(name)
    for other, what in ((overlay, "the overlay subnet"), (BIP_RANGE, "the nodes' default bridges (172.30.0.0/16)")):
        if net.overlaps(other):
            raise HubopsError(f"lab subnet {net} overlaps {what} {other}; choose another, e.g. --subnet 10.77.0.0/24")
    if overlay.overlaps(BIP_RANGE):
        raise HubopsError(f"overlay subnet {overlay} overlaps the nodes' default bridges {BIP_RANGE}; "
                          "choose another, e.g. 10.240.0.0/24")
    _preflight("up")
    state, run = _dirs(name, state_root, run_root)
    plan = {"name": name, "managers": managers, "workers": workers, "subnet": str(net),
            "nodes": [n.plan() for n in nodes]}
    current = _read_state(state)
    if current is not None and {k: current.get(k) for k in plan} != plan:
        raise HubopsError(
            f"lab {name} exists with {_describe(current)}, not {_describe(plan)}: remove it first with "
            f"`hubops lab down --name {name}`, or choose another --name")
    clash = overlaps(net, _ipj("route"), _ipj("-4", "addr"), _nameservers(), bridge)
    if clash:
        raise PreflightError(
            f"lab subnet {net} overlaps {'; '.join(clash)} on this machine; choose another with "
            f"--subnet (one that `ip route` does not cover, e.g. 10.77.0.0/24 or 10.78.0.0/24)")

    changes: list[str] = []
    if rebuild:
        _refuse_rebuild_in_use({n.engine for n in nodes}, state_root, run_root)
    # Before the lab is made: a tree that cannot be built leaves no lab behind.
    # A tree an older hubops built (without sshd) is completed when no running node uses it.
    manifests = {key: lab_engines.ensure_rootfs(key, cache=cache_root, mirror=mirror, rebuild=rebuild, changes=changes,
                                                in_use=lambda key=key: nodes_on_tree(key, cache_root, state_root,
                                                                                     run_root))
                 for key in dict.fromkeys(n.engine for n in nodes)}
    rootfs = {"cache": str(cache_root), "shared": list(shared)}
    if current is None:
        state.mkdir(parents=True, exist_ok=True)
        os.chmod(state, 0o711)
        # Written first, so that `lab down` finds everything even after a failed `lab up`.
        _write(state / "lab.json", json.dumps({**plan, "rootfs": rootfs}, indent=2).encode() + b"\n", 0o644)
        changes.append(f"created lab state {state}")
    run.mkdir(parents=True, exist_ok=True)

    _ensure_bridge(bridge, net, changes)
    _ensure_forward_rule(name, bridge, changes)
    for n in nodes:
        _ensure_node_net(n, bridge, net, changes)
    certs, reissued = _ensure_certs(name, nodes, state, changes)

    started: dict[str, subprocess.Popen | None] = {}
    for n in nodes:
        pid = _engine_pid(run, n.name)
        if pid is not None and n.name in reissued:
            log.info("lab %s: restarting the engine of %s for its new certificate", name, n.name)
            _stop_engines(run, [n], changes, timeout=60)
            pid = None
        if pid is None:
            _clear_stale_containerd(n, run, changes)
            started[n.name] = _start_engine(n, state, run, certs, rootfs)
            changes.append(f"started engine of {n.name} ({n.url})")
    deadline = time.monotonic() + timeout
    for n in nodes:
        _wait_engine(n, state, run, certs, started.get(n.name), deadline)

    labels = {n.name: engine_label(n.engine, manifests.get(n.engine)) for n in nodes}
    _ensure_params(name, nodes, Path(params_out), state, run, overlay_subnet, changes, labels)
    info = lab_status(name=name, state_root=state_root, run_root=run_root)
    info.params_file = Path(params_out).resolve()
    info.changes = changes
    info.duration_s = round(time.monotonic() - t0, 2)
    if changes:
        log.info("lab %s up in %.1f s: %d change(s)", name, info.duration_s, len(changes))
    else:
        log.info("lab %s already up: no change", name)
    return info


def rootfs_cache(name: str, state_root: Path = STATE_ROOT) -> Path:
    """The cache whose root file systems the lab `name`'s newer-engine nodes run from."""
    data = _read_state(Path(state_root) / name) or {}
    return Path((data.get("rootfs") or {}).get("cache") or lab_engines.CACHE_ROOT)


def nodes_on_tree(key: str, cache: Path, state_root: Path = STATE_ROOT, run_root: Path = RUN_ROOT) -> list[str]:
    """The running nodes (of every lab under `state_root`) whose engine runs from the cached tree
    of engine `key` in `cache`: 'NODE (lab NAME)'."""
    if lab_engines.ENGINES[key].host:
        return []
    want = os.path.realpath(cache)
    out = []
    for d in sorted(Path(state_root).glob("*/lab.json")):
        try:
            data = _read_state(d.parent) or {}
        except HubopsError:
            continue
        theirs = os.path.realpath((data.get("rootfs") or {}).get("cache") or lab_engines.CACHE_ROOT)
        if theirs != want:
            continue
        for n in data.get("nodes", []):
            if n.get("engine", lab_engines.HOST) == key and _engine_pid(Path(run_root) / d.parent.name,
                                                                         n["name"]) is not None:
                out.append(f"{n['name']} (lab {d.parent.name})")
    return out


def _refuse_rebuild_in_use(keys: set[str], state_root: Path, run_root: Path) -> None:
    """A cached tree is the lower layer of every running node on it: it is not replaced under them."""
    busy = []
    for d in sorted(Path(state_root).glob("*/lab.json")):
        data = _read_state(d.parent) or {}
        for n in data.get("nodes", []):
            if n.get("engine", lab_engines.HOST) in keys - {lab_engines.HOST} and \
                    _engine_pid(Path(run_root) / d.parent.name, n["name"]) is not None:
                busy.append(f"{n['name']} (lab {d.parent.name}, Docker {n['engine']})")
    if busy:
        raise HubopsError(f"--rebuild: the root file system is in use by the running node(s) {', '.join(busy)}; "
                          "stop those labs first (hubops lab down --name NAME), then rebuild")


def _ensure_bridge(bridge: str, net: ipaddress.IPv4Network, changes: list[str]) -> None:
    gw = f"{net.network_address + 1}/{net.prefixlen}"
    link = _links().get(bridge)
    if link is None:
        _run(["ip", "link", "add", bridge, "type", "bridge"])
        changes.append(f"created bridge {bridge}")
    elif link.get("linkinfo", {}).get("info_kind") != "bridge":
        raise ConflictError(f"a link named {bridge} exists and is not a bridge; hubops did not make it. "
                            "Remove it or choose another --name")
    addrs = _ipj("-4", "addr", "show", "dev", bridge)
    have = {f"{a['local']}/{a['prefixlen']}" for link in addrs for a in link.get("addr_info", [])}
    if gw not in have:
        _run(["ip", "addr", "add", gw, "dev", bridge])
        changes.append(f"address {gw} on {bridge}")
    if "UP" not in (_links()[bridge].get("flags") or []):
        _run(["ip", "link", "set", bridge, "up"])
        changes.append(f"set {bridge} up")


def _forward_rule(name: str, bridge: str) -> list[str]:
    return ["FORWARD", "-i", bridge, "-o", bridge, "-m", "comment", "--comment", _comment(name), "-j", "ACCEPT"]


def _ensure_forward_rule(name: str, bridge: str, changes: list[str]) -> None:
    rule = _forward_rule(name, bridge)
    cp = _run(["iptables", "-w", "-C", *rule], check=False)
    if cp.returncode == 0:
        return
    if cp.returncode != 1:
        raise HubopsError(f"`iptables -C {' '.join(rule)}` failed: {cp.stderr.strip()}")
    # First in the chain: the root engine's FORWARD policy is DROP.
    _run(["iptables", "-w", "-I", rule[0], "1", *rule[1:]])
    changes.append(f"iptables rule {' '.join(rule)}")


def _ensure_node_net(n: LabNode, bridge: str, net: ipaddress.IPv4Network, changes: list[str]) -> None:
    if not _ns_present(n.netns):
        _run(["ip", "netns", "add", n.netns])
        changes.append(f"created network namespace {n.netns}")
    inside = _ns_links(n.netns)
    links = _links()
    if "eth0" not in inside:
        if n.veth in links:  # the other half went with a deleted namespace: start again
            _run(["ip", "link", "del", n.veth])
        _run(["ip", "link", "add", n.veth, "type", "veth", "peer", "name", "eth0", "netns", n.netns])
        changes.append(f"created veth {n.veth} <-> {n.netns}:eth0")
        links = _links()
    elif n.veth not in links:
        raise HubopsError(f"namespace {n.netns} has an eth0 that is not the lab's veth {n.veth}; "
                          f"run `hubops lab down` and up again")
    veth = links[n.veth]
    if veth.get("master") != bridge or "UP" not in (veth.get("flags") or []):
        _run(["ip", "link", "set", n.veth, "master", bridge, "up"])
        changes.append(f"attached {n.veth} to {bridge}")
    addr = f"{n.address}/{net.prefixlen}"
    have = {f"{a['local']}/{a['prefixlen']}" for link in _ipj("-n", n.netns, "-4", "addr", "show", "dev", "eth0")
            for a in link.get("addr_info", [])}
    if addr not in have:
        _run(["ip", "-n", n.netns, "addr", "add", addr, "dev", "eth0"])
        changes.append(f"address {addr} on {n.netns}:eth0")
    inside = _ns_links(n.netns)
    for dev in ("lo", "eth0"):
        if "UP" not in (inside[dev].get("flags") or []):
            _run(["ip", "-n", n.netns, "link", "set", dev, "up"])
            if dev == "eth0":
                changes.append(f"set {n.netns}:eth0 up")


def _ensure_certs(name: str, nodes: list[LabNode], state: Path, changes: list[str]) -> tuple[dict[str, Path], set[str]]:
    """The lab CA, the client certificate and each node's server certificate (made once,
    re-issued when missing, from another CA or within 30 days of expiry). Returns the client's
    files and the nodes whose server certificate was (re)issued."""
    from hubops.core.certs import issue_client_cert, issue_server_cert, make_ca, needs_reissue

    d = state / "certs"
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    ca_file, ca_key_file = d / "ca.pem", d / "ca-key.pem"
    if not (ca_file.exists() and ca_key_file.exists()) or needs_reissue(
            ca_file.read_bytes(), names=[], ca_pem=None, min_days=30):
        ca, ca_key = make_ca(f"hubops lab {name} CA", days=3650)
        _write(ca_key_file, ca_key, 0o600)
        _write(ca_file, ca, 0o644)
        changes.append(f"created lab CA {ca_file}")
    ca, ca_key = ca_file.read_bytes(), ca_key_file.read_bytes()
    cert_file, key_file = d / "cert.pem", d / "key.pem"
    current = cert_file.read_bytes() if cert_file.exists() else None
    if not key_file.exists() or needs_reissue(current, names=[], ca_pem=ca, min_days=30):
        cert, key = issue_client_cert(ca, ca_key, f"hubops lab {name} client", days=397)
        _write(key_file, key, 0o600)
        _write(cert_file, cert, 0o644)
        changes.append(f"issued client certificate {cert_file}")
    reissued = set()
    for n in nodes:
        sc, sk = state / n.name / "tls" / "server-cert.pem", state / n.name / "tls" / "server-key.pem"
        current = sc.read_bytes() if sc.exists() else None
        if not sk.exists() or needs_reissue(current, names=[n.address, n.name], ca_pem=ca, min_days=30):
            cert, key = issue_server_cert(ca, ca_key, [n.address, n.name], days=397)
            _write(sk, key, 0o600)
            _write(sc, cert, 0o644)
            changes.append(f"issued server certificate for {n.name} ({n.address})")
            reissued.add(n.name)
    return {"ca": ca_file, "cert": cert_file, "key": key_file}, reissued


def _engine_argv(n: LabNode, state: Path, run: Path, certs: dict[str, Path],
                 rootfs: dict | None = None) -> list[str]:
    tls = state / n.name / "tls"
    dockerd = [
        "dockerd",
        "--config-file", str(state / n.name / "daemon.json"),  # not this machine's /etc/docker/daemon.json
        "--data-root", str(state / n.name / "docker"),
        "--exec-root", str(run / n.name / "exec"),
        "--pidfile", str(run / n.name / "docker.pid"),
        "-H", f"unix://{engine_socket(run)}",
        "-H", f"tcp://{n.address}:{ENGINE_PORT}",
        "--tlsverify", "--tlscacert", str(certs["ca"]),
        "--tlscert", str(tls / "server-cert.pem"), "--tlskey", str(tls / "server-key.pem"),
        "--bip", n.bip,
        # Its containers' cgroups apart from this machine's engine's (/docker), so that `lab
        # down` can remove what a killed engine leaves there.
        "--cgroup-parent", _cgroup_parent(n.name),
        # Fake generic resources (a GPU's ID, as a GPU host's daemon.json node-generic-resources gives).
        *(arg for r in n.generic_resources for arg in ("--node-generic-resource", r)),
    ]
    if n.engine != lab_engines.HOST:
        # A newer engine: its own Debian tree as its root (pivot_root), with the node's folders,
        # the lab's certificates and its socket folder at the same paths as on this machine.
        rootfs = rootfs or {"cache": str(lab_engines.CACHE_ROOT), "shared": list(lab_engines.DEFAULT_SHARED)}
        binds = [(str(state / n.name), str(state / n.name)), (str(certs["ca"].parent), str(certs["ca"].parent)),
                 (str(run / n.name), str(run / n.name)),
                 (str(run / n.name / "engine"), str(engine_socket(run).parent))]
        inner = lab_engines.pivot_argv(node=n.name, key=n.engine, cache=Path(rootfs["cache"]), state=state, run=run,
                                       binds=binds, shared=list(rootfs["shared"]), dockerd=dockerd)
        return ["nsenter", f"--net={NETNS_DIR / n.netns}", "unshare", "--uts", "--mount", "--propagation", "private",
                *inner]
    # nsenter, not `ip netns exec`: the latter remounts /sys and dockerd then finds no devices
    # cgroup. unshare --uts gives the node its own host name (the engine's and Swarm's node name);
    # --mount its own mounts: RUN/NODE/engine at RUN/engine, where its socket is (the same path on
    # every node, as on real hosts), and its containers' mounts stay out of this machine's table.
    return ["nsenter", f"--net={NETNS_DIR / n.netns}", "unshare", "--uts", "--mount", "--propagation", "slave",
            "sh", "-c", 'hostname "$0" && mount --bind "$1" "$2" && shift 2 && exec "$@"',
            n.name, str(run / n.name / "engine"), str(engine_socket(run).parent), *dockerd]


def _clear_stale_containerd(n: LabNode, run: Path, changes: list[str]) -> None:
    """Before an engine is started again: let the containerd of its killed predecessor go.

    dockerd adopts the containerd named by EXEC/containerd/containerd.pid when that pid is
    alive (a zombie or a reused pid counts), then times out waiting for it; and a containerd
    still exiting holds the metadata database lock."""
    conf = str(run / n.name / "exec" / "containerd" / "containerd.toml").encode()
    ours = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                argv = (d / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and os.path.basename(argv[0]) == b"containerd" and conf in argv:
                ours.append(int(d.name))
    left = _wait_gone(ours, 5)
    if left:
        _signal(left, signal.SIGKILL)
        left = _wait_gone(left, 5)
        changes.append(f"killed the containerd left by {n.name}'s previous engine")
    pidfile = run / n.name / "exec" / "containerd" / "containerd.pid"
    try:
        pidfile.unlink()
    except FileNotFoundError:
        pass


def _start_engine(n: LabNode, state: Path, run: Path, certs: dict[str, Path],
                  rootfs: dict | None = None) -> subprocess.Popen:
    """Start the node's dockerd in its namespace, in a session of its own so that it outlives
    the calling process; its log goes to STATE/NODE/dockerd.log."""
    (state / n.name / "docker").mkdir(parents=True, exist_ok=True)
    (run / n.name / "engine").mkdir(parents=True, exist_ok=True)
    engine_socket(run).parent.mkdir(parents=True, exist_ok=True)
    cfg = state / n.name / "daemon.json"
    # Its own engine ID (key.json), not the one of this machine's engine in /etc/docker.
    config = lab_engines.daemon_config(n.engine, state, n.name)
    if n.image_store == "containerd":
        config["features"] = {"containerd-snapshotter": True}
    text = json.dumps(config, indent=2).encode() + b"\n"
    if not cfg.exists() or cfg.read_bytes() != text:
        _write(cfg, text, 0o644)
    env = {k: v for k, v in _env().items() if k in ("PATH", "LANG", "LC_ALL", "HOME", "TZ")}
    # A Swarm node uses its local image instead of asking a registry first: lab nodes have
    # no internet, and every task start would wait for a DNS timeout.
    env["DOCKER_SERVICE_PREFER_OFFLINE_IMAGE"] = "1"
    argv = _engine_argv(n, state, run, certs, rootfs)
    log.info("lab: starting the engine of %s at %s", n.name, n.url)
    log.debug("lab: %s", shlex.join(argv))
    with open(state / n.name / "dockerd.log", "ab") as logf:
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                             env=env, cwd="/", start_new_session=True, close_fds=True)
    _STARTED[p.pid] = p
    return p


def _client(n: LabNode, certs: dict[str, Path], timeout: float):
    import docker

    from hubops.core.engine import API_VERSION

    tls = docker.tls.TLSConfig(client_cert=(str(certs["cert"]), str(certs["key"])),
                               ca_cert=str(certs["ca"]), verify=True)
    c = docker.DockerClient(base_url=n.url, tls=tls, timeout=timeout, version=API_VERSION)
    # requests would otherwise replace the lab CA by REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE from
    # the environment, and send lab traffic to an HTTPS_PROXY.
    c.api.trust_env = False
    return c


def _log_tail(state: Path, node: str, lines: int = 8) -> str:
    try:
        return "\n".join((state / node / "dockerd.log").read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _wait_engine(n: LabNode, state: Path, run: Path, certs: dict[str, Path],
                 proc: subprocess.Popen | None, deadline: float) -> None:
    """Wait until the node's engine answers over TLS with the client certificate, as itself."""
    last: Exception | None = None
    while True:
        if proc is not None and proc.poll() is not None:
            _STARTED.pop(proc.pid, None)
            raise HubopsError(
                f"the engine of lab node {n.name} exited (status {proc.returncode}) while starting; "
                f"its log {state / n.name / 'dockerd.log'} ends with:\n{_log_tail(state, n.name)}\n"
                f"fix the cause, then run `hubops lab up` again (or `hubops lab down`)")
        try:
            c = _client(n, certs, timeout=5)
            try:
                name = c.info()["Name"]
            finally:
                c.close()
            if name != n.name:
                raise HubopsError(f"the engine at {n.url} calls itself {name!r}, not {n.name!r}: it is not the "
                                  f"lab's engine for that node; run `hubops lab down --name {n.name.split('-')[0]}`")
            return
        except HubopsError:
            raise
        except Exception as e:  # noqa: BLE001 - refused, TLS not ready, ...: retried until the deadline
            last = e
        if time.monotonic() >= deadline:
            raise HubopsError(
                f"the engine of lab node {n.name} did not answer at {n.url} over TLS ({last}); its log "
                f"{state / n.name / 'dockerd.log'} ends with:\n{_log_tail(state, n.name)}")
        time.sleep(0.2)


def _ensure_params(name: str, nodes: list[LabNode], params_out: Path, state: Path, run: Path,
                   overlay_subnet: str, changes: list[str], engines: dict[str, str] | None = None) -> None:
    userlist = params_out.with_name(f"{params_out.stem}.userlist")
    text = params_text(name, nodes, state=state, run=run, overlay_subnet=overlay_subnet, userlist=userlist.name,
                       engines=engines)
    if params_out.exists():
        old = params_out.read_text()
        if old != text:
            if not old.startswith(PARAMS_MARK):
                raise ConflictError(f"{params_out} exists and was not written by `hubops lab up`; "
                                    "move it away or give another --params file")
            _write(params_out, text.encode(), 0o644)
            changes.append(f"rewrote parameter file {params_out}")
    else:
        _write(params_out, text.encode(), 0o644)
        changes.append(f"wrote parameter file {params_out}")
    if not userlist.exists():  # kept when present: the operator may have added users
        _write(userlist, USERLIST.encode(), 0o644)
        changes.append(f"wrote userlist {userlist}")


# -- down ------------------------------------------------------------------------------------
def _stop_engines(run: Path, nodes: list[LabNode], changes: list[str], *, timeout: float) -> None:
    """SIGTERM the nodes' engines, SIGKILL what is left after `timeout` s, then whatever still
    runs in the nodes' namespaces (the engine's containerd and shims) and below it."""
    pids = {n.name: _engine_pid(run, n.name) for n in nodes}
    alive = [p for p in pids.values() if p is not None]
    _signal(alive, signal.SIGTERM)
    left = _wait_gone(alive, timeout)
    if left:
        log.warning("lab: engine(s) %s did not stop within %.0f s; killing them", left, timeout)
        _signal(left, signal.SIGKILL)
        _wait_gone(left, 10)
    for name, pid in pids.items():
        if pid is not None:
            changes.append(f"stopped engine of {name} (pid {pid})")
    for n in nodes:
        if not _ns_present(n.netns):
            continue
        stray = _procs_in_netns(n.netns)
        if stray:
            tree = stray + _descendants(stray)
            log.warning("lab: killing processes left in %s: %s", n.netns, tree)
            _signal(tree, signal.SIGTERM)
            rest = _wait_gone(tree, 5)
            _signal(rest, signal.SIGKILL)
            _wait_gone(rest, 5)
            changes.append(f"killed {len(tree)} process(es) left in {n.netns}")


def lab_down(
    *,
    name: str = "lab",
    state_root: Path = STATE_ROOT,
    run_root: Path = RUN_ROOT,
    timeout: float = 60,
) -> LabInfo:
    """Remove the lab `name`: stop its engines (SIGTERM, SIGKILL after `timeout` s), unmount
    what they left under their data and exec roots, delete the namespaces, veths, bridge, the
    FORWARD rule(s) tagged hubops-lab-NAME and the lab's state and run folders. Nothing else;
    the parameter file stays. Idempotent: a lab that is already down is no error."""
    _reap_all()
    t0 = time.monotonic()
    _check_name(name)
    _preflight("down")
    state, run = _dirs(name, state_root, run_root)
    changes: list[str] = []
    data = _read_state(state)
    nodes = _nodes_from_state(data) if data else []
    # Also what a lab of this name left without a state file (names are the lab's own).
    ns_re, veth_re = _netns_re(name), _veth_re(name)
    known = {n.netns for n in nodes}
    if NETNS_DIR.is_dir():
        for ns in sorted(p.name for p in NETNS_DIR.iterdir()):
            if ns_re.match(ns) and ns not in known:
                node = ns[3:]
                nodes.append(LabNode(name=node, role="?", index=-1, address="?", netns=ns, veth="?", bip="?"))
    if run.is_dir():
        for d in sorted(run.iterdir()):
            if d.is_dir() and d.name != engine_socket(run).parent.name and d.name not in {n.name for n in nodes}:
                nodes.append(LabNode(name=d.name, role="?", index=-1, address="?", netns=f"hl-{d.name}",
                                     veth="?", bip="?"))

    _stop_engines(run, nodes, changes, timeout=timeout)
    _unmount_under([state, run], changes)
    _remove_cgroups(nodes, changes)
    for n in nodes:
        if _ns_present(n.netns):
            _run(["ip", "netns", "del", n.netns])
            changes.append(f"deleted network namespace {n.netns}")
    bridge = _bridge(name)
    links = _links()
    for link in sorted(links):
        # Usually gone with its namespace already (the kernel removes it asynchronously).
        if veth_re.match(link) and _run(["ip", "link", "del", link], check=False).returncode == 0:
            changes.append(f"deleted veth {link}")
    if bridge in links:
        _run(["ip", "link", "del", bridge])
        changes.append(f"deleted bridge {bridge}")
    for rule in _tagged_rules(name):
        _run(["iptables", "-w", "-D", *rule[1:]])
        changes.append(f"deleted iptables rule {' '.join(rule[1:])}")
    if state.is_dir():
        lab_engines.remove_trees([d for d in state.iterdir() if d.is_dir()])
    for d in (run, state):
        if d.exists():
            shutil.rmtree(d)
            changes.append(f"deleted {d}")
    info = LabInfo(name=name, exists=False, changes=changes, duration_s=round(time.monotonic() - t0, 2))
    log.info("lab %s: %s", name, f"removed in {info.duration_s} s" if changes else "already down")
    return info


def _tagged_rules(name: str) -> list[list[str]]:
    """`iptables -S` lines (as argv) of the FORWARD rules tagged with the lab's comment, exactly."""
    out = []
    for line in _run(["iptables", "-w", "-S", "FORWARD"]).stdout.splitlines():
        argv = shlex.split(line)
        if argv[:1] == ["-A"] and "--comment" in argv and argv[argv.index("--comment") + 1] == _comment(name):
            out.append(argv)
    return out


# -- status ----------------------------------------------------------------------------------
def lab_status(
    *,
    name: str = "lab",
    state_root: Path = STATE_ROOT,
    run_root: Path = RUN_ROOT,
    timeout: float = 5,
) -> LabInfo:
    """What runs of the lab `name`: per node its namespace, engine pid, whether the engine
    answers over TLS (its version and name) and its Swarm state. Changes nothing."""
    _reap_all()
    _check_name(name)
    state, run = _dirs(name, state_root, run_root)
    data = _read_state(state)
    if data is None:
        return LabInfo(name=name, exists=False)
    certs = {k: state / "certs" / f"{k}.pem" for k in ("ca", "cert", "key")}
    info = LabInfo(name=name, exists=True, subnet=data["subnet"], bridge=_bridge(name), state_dir=state,
                   run_dir=run, nodes=_nodes_from_state(data), certs={k: str(v) for k, v in certs.items()})
    for n in info.nodes:
        n.netns_present = _ns_present(n.netns)
        n.pid = _engine_pid(run, n.name)
        if n.pid is None:
            n.error = "engine not running"
            continue
        try:
            c = _client(n, certs, timeout=timeout)
            try:
                v = c.version()
                n.engine_version, n.engine_api = v["Version"], v.get("ApiVersion")
                i = c.info()
                n.engine_name = i.get("Name")
                n.swarm_state = (i.get("Swarm") or {}).get("LocalNodeState")
            finally:
                c.close()
        except Exception as e:  # noqa: BLE001 - status reports, it does not fail
            n.error = f"no TLS answer: {e.__class__.__name__}"
    return info


# -- faults (for rehearsing failures) -----------------------------------------------------------
def _cgroup_procs(node: str) -> list[int]:
    """Processes in the node's containers' cgroups (every hierarchy, cgroup v1 or v2)."""
    rel = _cgroup_parent(node).lstrip("/")
    pids: set[int] = set()
    for top in [CGROUP_ROOT / rel, *CGROUP_ROOT.glob(f"*/{rel}")]:
        if top.is_dir():
            for procs in top.rglob("cgroup.procs"):
                try:
                    pids.update(int(x) for x in procs.read_text().split())
                except (OSError, ValueError):
                    continue
    return sorted(pids)


def kill_node(*, name: str = "lab", node: str, run_root: Path = RUN_ROOT) -> list[str]:
    """Power a lab node off: SIGKILL its engine, its containerd and shims and every process of its
    containers, at once and without warning (as when a host loses power). Its namespace, address
    and data stay; `lab_up` starts its engine again. Returns what was killed."""
    _reap_all()
    _check_name(name)
    _preflight("fault")
    run = Path(run_root) / name
    data = _read_state(STATE_ROOT / name) if run_root == RUN_ROOT else None
    netns = f"hl-{node}"
    if data is not None and node not in {n["name"] for n in data["nodes"]}:
        raise HubopsError(f"lab {name} has no node {node!r}")
    engine = _engine_pid(run, node)
    victims = [p for p in [engine, *(_procs_in_netns(netns) if _ns_present(netns) else [])] if p]
    victims += _descendants(victims) + _cgroup_procs(node)
    victims = sorted(set(victims) - {os.getpid()})
    _signal(victims, signal.SIGKILL)
    left = _wait_gone(victims, 10)
    if left:
        raise HubopsError(f"lab node {node}: processes {left} outlived SIGKILL")
    what = [f"killed {len(victims)} process(es) of {node} (engine pid {engine or '-'})"]
    log.info("lab %s: %s", name, what[0])
    return what
