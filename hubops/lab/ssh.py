"""Lab nodes reached over ssh, as most operators reach their hosts (`hubops lab up --ssh`).

Each chosen node runs this machine's OpenSSH server (Debian's `openssh-server`) inside the node's
own network, mount and UTS namespaces (those of its dockerd), so that it sees the node's engine
socket where the node's containers see it. It listens on the node's address, port 22, takes only
the lab's key (ed25519, made here; no password, no keyboard-interactive), allows unix-socket
forwarding and nothing else. The lab's parameter file then names those nodes
`ssh://root@ADDRESS` with `ssh.known_hosts` (the nodes' host keys, pinned) and
`ssh.identity_file` (the lab's key). `lab down` kills what runs in the nodes' namespaces, sshd too,
and removes the keys with the lab's state.

Nodes on a newer engine (their own Debian root, entered with pivot_root) have no sshd inside:
refused, with what to do.
"""
from __future__ import annotations

import logging
import os
import socket
import subprocess
import time
from pathlib import Path

import yaml

from hubops.core.errors import HubopsError
from hubops.lab import cluster, engines as lab_engines

log = logging.getLogger("hubops")

SSHD = Path("/usr/sbin/sshd")
PORT = 22


def _keygen(path: Path, comment: str) -> None:
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                   check=True, capture_output=True)
    path.chmod(0o600)


def sshd_config(*, address: str, host_key: Path, authorized_keys: Path, pidfile: Path) -> str:
    """The sshd configuration of one lab node (pure)."""
    return "\n".join([
        f"Port {PORT}", f"ListenAddress {address}", f"HostKey {host_key}", f"PidFile {pidfile}",
        f"AuthorizedKeysFile {authorized_keys}",
        "PermitRootLogin prohibit-password", "PubkeyAuthentication yes",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no",
        # OpenSSH grants socket forwarding only with TCP forwarding allowed in the same direction.
        "AllowStreamLocalForwarding local", "AllowTcpForwarding local", "AllowAgentForwarding no",
        "X11Forwarding no", "PermitTTY no", "PermitTunnel no", "StrictModes no",
        "LogLevel VERBOSE", "",
    ])


def _answers(address: str, port: int = PORT) -> bool:
    try:
        with socket.create_connection((address, port), timeout=1) as s:
            return s.recv(4).startswith(b"SSH-")
    except OSError:
        return False


def _sshd_pid(pidfile: Path) -> int | None:
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None
    return pid if os.path.basename(exe).startswith("sshd") else None


def enable_ssh(name: str, params_file: Path, *, nodes: list[str] | None = None,
               state_root: Path = cluster.STATE_ROOT, run_root: Path = cluster.RUN_ROOT) -> list[str]:
    """Start sshd on the lab's `nodes` (default: all) and point the parameter file at them over
    ssh://. Idempotent; returns what it changed."""
    if not SSHD.exists():
        raise HubopsError(f"{SSHD} is missing: apt-get install openssh-server (this machine's sshd runs inside the "
                          "lab's namespaces)")
    st = cluster.lab_status(name=name, state_root=state_root, run_root=run_root)
    by_name = {n.name: n for n in st.nodes}
    chosen = nodes or list(by_name)
    unknown = [n for n in chosen if n not in by_name]
    if unknown:
        raise HubopsError(f"lab {name} has no node {', '.join(unknown)}; its nodes: {', '.join(by_name)}")
    newer = [n for n in chosen if by_name[n].engine != lab_engines.HOST]
    if newer:
        raise HubopsError(f"lab {name}: node(s) {', '.join(newer)} run a newer engine in their own Debian root, "
                          "which has no sshd; reach them over tcp+TLS (the default), or make the ssh nodes "
                          "20.10 ones (--engine manager=28,node0=20.10)")
    state, run = Path(state_root) / name, Path(run_root) / name
    keydir = state / "ssh"
    changes: list[str] = []
    client_key = keydir / "id_ed25519"
    if not client_key.exists():
        _keygen(client_key, f"hubops-lab-{name}")
        changes.append(f"made the lab's ssh key {client_key}")
    authorized = keydir / "authorized_keys"
    authorized.write_text(client_key.with_suffix(".pub").read_text())
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation folder
    known: list[str] = []
    for node in chosen:
        n = by_name[node]
        if n.pid is None:
            raise HubopsError(f"lab {name}: the engine of {node} does not run; `hubops lab up --name {name}` first")
        ndir = state / node / "ssh"
        host_key = ndir / "ssh_host_ed25519_key"
        if not host_key.exists():
            _keygen(host_key, node)
            changes.append(f"made the ssh host key of {node}")
        known.append(f"{n.address} {' '.join(host_key.with_suffix('.pub').read_text().split()[:2])}")
        pidfile = run / node / "sshd.pid"
        if _sshd_pid(pidfile) is not None and _answers(n.address):
            continue
        cfg = ndir / "sshd_config"
        cfg.write_text(sshd_config(address=n.address, host_key=host_key, authorized_keys=authorized, pidfile=pidfile))
        check = subprocess.run([str(SSHD), "-t", "-f", str(cfg)], capture_output=True, text=True)
        if check.returncode != 0:
            raise HubopsError(f"lab {name}: sshd refuses the configuration {cfg}: {check.stderr.strip()[:400]}")
        logf = open(ndir / "sshd.log", "ab")
        # In the node's namespaces (those of its dockerd): its address, its mounts (the engine socket).
        subprocess.Popen(["nsenter", "--target", str(n.pid), "--net", "--mount", "--uts",
                          str(SSHD), "-D", "-e", "-f", str(cfg)],
                         stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        logf.close()
        deadline = time.monotonic() + 15
        while not _answers(n.address):
            if time.monotonic() > deadline:
                raise HubopsError(f"lab {name}: sshd on {node} did not answer at {n.address}:{PORT}; see "
                                  f"{ndir / 'sshd.log'}")
            time.sleep(0.1)
        changes.append(f"started sshd on {node} ({n.address}:{PORT})")
    known_hosts = keydir / "known_hosts"
    known_hosts.write_text("\n".join(known) + "\n")
    changes += _point_params(params_file, {node: by_name[node].address for node in chosen},
                             known_hosts=known_hosts, identity=client_key)
    return changes


def _point_params(params_file: Path, addresses: dict[str, str], *, known_hosts: Path, identity: Path) -> list[str]:
    """Rewrite the lab's parameter file: the nodes in `addresses` reached over ssh://root@ADDRESS."""
    text = params_file.read_text()
    header = "".join(line + "\n" for line in text.splitlines() if line.startswith("#"))
    data = yaml.safe_load(text)
    changes = []
    for group in ("managers", "workers"):
        for h in data["hosts"].get(group) or []:
            if h["name"] in addresses:
                url = f"ssh://root@{addresses[h['name']]}"
                if h.get("url") != url:
                    changes.append(f"{params_file}: {h['name']} reached over {url}")
                h["url"] = url
                h.pop("tls", None)
                h["ssh"] = {"known_hosts": str(known_hosts), "identity_file": str(identity)}
    params_file.write_text(header + yaml.safe_dump(data, sort_keys=False))
    return changes
