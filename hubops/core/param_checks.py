"""Mistakes that pass the parameter types but would break a deployment later, caught at check time,
without contacting any host: each is reported with its key path and what to do.

Called by `params.load_params` after the types are checked; returns every problem found.
"""
from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Optional
from urllib.parse import urlsplit

from .paramfile import MAX_PEM_BYTES, read_small, shown

if TYPE_CHECKING:
    from .params import Loaded

# Addresses an overlay subnet must not overlap, and why.
RESERVED_NETS = [
    (ipaddress.ip_network("127.0.0.0/8"), "the loopback range"),
    (ipaddress.ip_network("169.254.0.0/16"), "the link-local range (cloud metadata services live there)"),
    (ipaddress.ip_network("172.17.0.0/16"), "Docker's default bridge (docker0)"),
    (ipaddress.ip_network("172.18.0.0/16"), "Docker's docker_gwbridge, which Swarm creates on every node"),
    (ipaddress.ip_network("10.0.0.0/24"), "Swarm's ingress network"),
    (ipaddress.ip_network("224.0.0.0/4"), "the multicast range"),
    (ipaddress.ip_network("0.0.0.0/8"), "the 'this network' range"),
]
# Ports the hub's published port must not take, and who uses them.
SWARM_PORTS = {2377: "Swarm's cluster management", 7946: "Swarm's node discovery (gossip)",
               4789: "Swarm's overlay traffic (VXLAN)"}
ACME_PORT = 80
# Names Docker keeps for itself.
RESERVED_NETWORK_NAMES = {"ingress", "bridge", "host", "none", "docker_gwbridge", "default"}
RESERVED_LABEL_PREFIXES = ("com.docker.", "io.docker.", "org.dockerproject.")
DOCKER_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
MEM_RE = re.compile(r"^(\d+(?:\.\d+)?)([KMGT])$")
MEM_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
MIN_MEM = 128 << 20  # Jupyter Server with a kernel does not start in less
EXPORT_OPTS = {"device", "share", "export", "path", "source", "src", "mountpoint", "subpath", "volume", "name"}


def check(p: "Loaded") -> list[str]:
    """Every problem found, as 'key.path: what is wrong; what to do'."""
    problems: list[str] = []
    for fn in (_subnet, _ports, _hosts, _labels, _names, _memory, _folders, _volume_driver, _certificates):
        problems += fn(p)
    return problems


def _host_addr(url: str) -> Optional[str]:
    """The host part of a tcp:// or ssh:// engine URL (None for unix://)."""
    if url.startswith("unix://"):
        return None
    try:
        return (urlsplit(url).hostname or "").lower() or None
    except ValueError:
        return None


def _host_key(p: "Loaded", i: int) -> str:
    n = len(p.hosts.managers)
    return f"hosts.managers[{i}]" if i < n else f"hosts.workers[{i - n}]"


def _subnet(p: "Loaded") -> list[str]:
    net = ipaddress.ip_network(p.network.subnet)
    out = []
    for reserved, why in RESERVED_NETS:
        if net.overlaps(reserved):
            out.append(f"network.subnet: {net} overlaps {reserved}, {why}; choose a private range that no host "
                       "routes, e.g. 10.231.0.0/24")
    for i, h in enumerate(p.hosts.all):
        addrs = [("advertise_addr", h.advertise_addr), ("url", _host_addr(h.url))]
        for key, a in addrs:
            try:
                ip = ipaddress.ip_address(a) if a else None
            except ValueError:
                continue
            if ip is not None and ip.version == 4 and ip in net:
                out.append(f"network.subnet: {net} holds {_host_key(p, i)}.{key} {ip}, the host's own address: "
                           "the overlay would hide the host; choose a range no host uses")
                break
    if p.tls.acme and p.tls.acme.public_addr and ipaddress.ip_address(p.tls.acme.public_addr) in net:
        out.append(f"network.subnet: {net} holds tls.acme.public_addr {p.tls.acme.public_addr}; choose another range")
    return out


def _ports(p: "Loaded") -> list[str]:
    port, out = p.hub.https_port, []
    swarm_ports = dict(SWARM_PORTS)
    swarm_ports.setdefault(p.swarm.listen_port, "Swarm's cluster management (swarm.listen_port)")
    if port in swarm_ports:
        out.append(f"hub.https_port: {port} is {swarm_ports[port]} port on every node; use 443 or 8443")
    if port == ACME_PORT and p.tls.mode == "acme":
        out.append("hub.https_port: 80 is where the ACME server checks the HTTP-01 challenge on the hub's node; "
                   "use 443")
    for i, h in enumerate(p.hosts.all):
        if h.name == p.hub_host.name and h.url.startswith("tcp://"):
            try:
                engine_port = urlsplit(h.url).port or 2376
            except ValueError:
                continue
            if engine_port == port:
                out.append(f"hub.https_port: {port} is the Docker API port of {_host_key(p, i)} ({h.name}), "
                           "the hub's node; use 443 or 8443")
    mon = getattr(p, "monitoring", None)
    if mon is not None and mon.enabled and mon.publish_port is not None:
        mport = mon.publish_port
        if mport == port:
            out.append(f"monitoring.publish_port: {mport} is hub.https_port; choose another port (or none: "
                       "Prometheus then stays on the overlay network)")
        elif mport in swarm_ports:
            out.append(f"monitoring.publish_port: {mport} is {swarm_ports[mport]} port on every node; "
                       "choose another port, such as 9090")
        elif mport == ACME_PORT and p.tls.mode == "acme":
            out.append("monitoring.publish_port: 80 is where the ACME server checks the HTTP-01 challenge; "
                       "choose another port, such as 9090")
    if p.swarm.listen_port in (4789, 7946):
        out.append(f"swarm.listen_port: {p.swarm.listen_port} is {SWARM_PORTS[p.swarm.listen_port]} port; "
                   "keep 2377")
    return out


def _hosts(p: "Loaded") -> list[str]:
    out: list[str] = []
    multi = len(p.hosts.all) > 1
    by_endpoint: dict[tuple, int] = {}
    by_addr: dict[str, int] = {}
    n_managers = len(p.hosts.managers)
    for i, h in enumerate(p.hosts.all):
        key = _host_key(p, i)
        if h.advertise_addr is not None:
            ip = ipaddress.ip_address(h.advertise_addr)
            if ip.is_unspecified:
                out.append(f"{key}.advertise_addr: {ip} means 'every address', which other nodes cannot reach; "
                           "give the address of this host that the others reach it at")
            elif ip.is_multicast:
                out.append(f"{key}.advertise_addr: {ip} is a multicast address; give this host's own address")
            elif multi and ip.is_loopback:
                out.append(f"{key}.advertise_addr: {ip} is loopback, which the other hosts cannot reach; give "
                           "this host's address on the network the hosts share")
            elif str(ip) in by_addr:
                j = by_addr[str(ip)]
                out.append(f"{key}.advertise_addr: {ip} is also the advertise_addr of {_host_key(p, j)} "
                           f"({p.hosts.all[j].name}); every host has its own address (the same host listed twice?)")
            else:
                by_addr[str(ip)] = i
        addr = _host_addr(h.url)
        if addr:
            try:
                scheme = h.url.split("://", 1)[0]
                port = urlsplit(h.url).port or (2376 if scheme == "tcp" else 22)
            except ValueError:
                continue
            endpoint = (addr, port)
            if endpoint in by_endpoint:
                j = by_endpoint[endpoint]
                other = p.hosts.all[j]
                if other.url == h.url:
                    continue  # the model already refused the same url twice
                both = (" as both a manager and a worker" if (i < n_managers) != (j < n_managers)
                        else " under two names")
                out.append(f"{key}.url: {h.url} reaches the same engine as {_host_key(p, j)}.url {other.url} "
                           f"({other.name}): one host listed twice{both}; keep one entry")
            else:
                by_endpoint[endpoint] = i
    return out


def _labels(p: "Loaded") -> list[str]:
    out = []
    for i, h in enumerate(p.hosts.all):
        for label in h.labels:
            if label == "hubops" or label.startswith("hubops."):
                out.append(f"{_host_key(p, i)}.labels: {label!r} is one of hubops's own labels (hubops sets and "
                           "removes them itself, and owns objects by them); rename it, e.g. site.{label[7:] or 'x'}")
            elif label.startswith(RESERVED_LABEL_PREFIXES):
                out.append(f"{_host_key(p, i)}.labels: {label!r}: the prefixes {', '.join(RESERVED_LABEL_PREFIXES)} "
                           "are reserved by Docker; use your own prefix, e.g. org.example.")
    return out


def _names(p: "Loaded") -> list[str]:
    out = []
    if p.network.name is not None:
        if p.network.name in RESERVED_NETWORK_NAMES:
            out.append(f"network.name: {p.network.name!r} is a network Docker or Swarm makes itself; "
                       f"remove the key (default {p.prefix}) or choose another name")
        elif not DOCKER_NAME.match(p.network.name) or len(p.network.name) > 64:
            out.append(f"network.name: {shown(p.network.name)} is not a Docker network name (letters, digits, "
                       "'_', '.', '-', starting with a letter or digit)")
    if p.hub.data_volume is not None and (not DOCKER_NAME.match(p.hub.data_volume) or len(p.hub.data_volume) < 2):
        out.append(f"hub.data_volume: {shown(p.hub.data_volume)} is not a Docker volume name (letters, digits, "
                   "'_', '.', '-', starting with a letter or digit)")
    return out


def _memory(p: "Loaded") -> list[str]:
    mem = p.spawner.mem_limit
    if mem is None:
        return []
    m = MEM_RE.match(str(mem).strip())
    if not m:
        return [f"spawner.mem_limit: {shown(mem)} is not a size JupyterHub accepts: a number and one of K, M, G, T "
                "(powers of 1024, upper case, no 'B' or 'i'), e.g. 2G or 512M"]
    size = float(m.group(1)) * MEM_UNITS[m.group(2)]
    if size < MIN_MEM:
        return [f"spawner.mem_limit: {mem} is too small for Jupyter Server and a kernel to start; give at least 128M "
                "(1G or more for real work)"]
    return []


def _outputs_roots() -> list[Path]:
    from .paths import OUTPUTS, PROJECT

    return sorted({Path(os.path.abspath(OUTPUTS)).resolve(), (PROJECT / "outputs").resolve()})


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _folders(p: "Loaded") -> list[str]:
    out = []
    op = Path(os.path.abspath(os.path.expanduser(str(p.operator_dir)))).resolve()
    items = [("operator_dir", op, "keep it outside, e.g. ~/.hubops (the default)")]
    if p.backup.dir is not None:
        items.append(("backup.dir", p.path(p.backup.dir).resolve(), "keep it outside, e.g. ~/hubops-backups"))
    for key, path, fix in items:
        for root in _outputs_roots():
            if _inside(path, root):
                out.append(f"{key}: {path} is inside {root}, the record folder that reports are shared from; {fix}")
                break
    return out


def _volume_driver(p: "Loaded") -> list[str]:
    us = p.storage.users
    if us.mode != "volume-driver":
        return []
    out = []
    for k, v in us.driver_opts.items():
        for m in re.finditer(r"\{([^{}]*)\}", v):
            if m.group(1) != "username":
                out.append(f"storage.users.driver_opts.{k}: {{{m.group(1)}}} is not a placeholder hubops fills; "
                           "the one placeholder is {username}")
    if us.driver_opts and not any("{username}" in v for v in us.driver_opts.values()):
        exports = [k for k in us.driver_opts if k.lower() in EXPORT_OPTS]
        if exports:
            k = exports[0]
            out.append(f"storage.users.driver_opts.{k}: no {{username}} in it, so every user's home is the same "
                       f"export and users see each other's files; put {{username}} in it, e.g. "
                       f"':/export/homes/{{username}}'")
    return out


def _certificates(p: "Loaded") -> list[str]:
    out = []
    pairs = []
    if p.tls.mode == "files" and p.tls.files is not None:
        pairs.append(("tls.files", p.tls.files.cert, p.tls.files.key))
    for i, h in enumerate(p.hosts.all):
        if h.tls is not None:
            pairs.append((f"{_host_key(p, i)}.tls", h.tls.cert, h.tls.key))
    for key, cert, pkey in pairs:
        out += _cert_matches_key(p, key, p.path(cert), p.path(pkey))
    return out


def _cert_matches_key(p: "Loaded", key: str, cert_path: Path, key_path: Path) -> list[str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    where = f"{p.source}: {key}"
    if not cert_path.is_file() or not key_path.is_file():
        return []  # reported by the file check
    cert_bytes = read_small(cert_path, MAX_PEM_BYTES, where=f"{where}.cert", what="a PEM certificate")
    key_bytes = read_small(key_path, MAX_PEM_BYTES, where=f"{where}.key", what="a PEM private key")
    try:
        cert = x509.load_pem_x509_certificate(cert_bytes)
    except ValueError:
        return [f"{key}.cert: {cert_path} is not a PEM certificate (it starts with '-----BEGIN CERTIFICATE-----')"]
    try:
        private = serialization.load_pem_private_key(key_bytes, password=None)
    except TypeError:
        return [f"{key}.key: {key_path} is encrypted with a passphrase; give an unencrypted key (mode 0600)"]
    except (ValueError, Exception):  # noqa: BLE001 - never show the content of a key file
        return [f"{key}.key: {key_path} is not a PEM private key (it starts with '-----BEGIN ... PRIVATE KEY-----')"]
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if cert.public_key().public_bytes(*fmt) != private.public_key().public_bytes(*fmt):
        return [f"{key}.key: {key_path} is not the key of {key}.cert {cert_path}; give the key the certificate "
                "was issued for"]
    return []
