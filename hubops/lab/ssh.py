"""Lab nodes reached over ssh, as most operators reach their hosts (`hubops lab up --ssh`).

Each chosen node runs an OpenSSH server (Debian's `openssh-server`) inside the node's own network,
mount and UTS namespaces (those of its dockerd), so that it sees the node's engine socket where
the node's containers see it: on a 20.10 node this machine's /usr/sbin/sshd (the node's mounts
are this machine's); on a Docker 26 or 28 node the sshd of the node's own Debian root (the cached
tree, entered with pivot_root; see hubops/lab/engines.py), as a host of that release has. It
listens on the node's address, port 22, takes only the lab's key (ed25519, made here; no
password, no keyboard-interactive), allows unix-socket forwarding and nothing else; its
configuration, host key and authorized key are under STATE/NODE/ssh, a folder every node sees at
the same path. The lab's parameter file then names those nodes `ssh://root@ADDRESS` with
`ssh.known_hosts` (the nodes' host keys, pinned) and `ssh.identity_file` (the lab's key).
`lab down` kills what runs in the nodes' namespaces, sshd too, and removes the keys with the
lab's state.

A node whose Debian root was built by an older hubops, without sshd, and could not be completed
(a running node used it when the lab came up) is refused, naming it, with what to do.
"""
from __future__ import annotations

import logging
import os
import re
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


def openssh_version(text: str) -> tuple[int, int] | None:
    """(major, minor) from `sshd -V`'s answer, e.g. 'OpenSSH_10.6p1 Debian-1, OpenSSL 3.6.5' (pure)."""
    m = re.search(r"OpenSSH_(\d+)\.(\d+)", text)
    return (int(m.group(1)), int(m.group(2))) if m else None


def sshd_config(*, address: str, host_key: Path, authorized_keys: Path, pidfile: Path,
                version: tuple[int, int] | None = None) -> str:
    """The sshd configuration of one lab node (pure). `version`: the node's OpenSSH release."""
    # OpenSSH 9.8 and later shut a source address out for a while once its connections that did
    # not log in add up (PerSourcePenalties: 1 s per connection that did not try, 5 s per failed
    # login, refused from 15 s on; seen on sid's 10.6 for enable_ssh's own "does it answer" probe).
    # Every client of a lab node comes from the lab's bridge address: a few probes, refused host
    # keys and cut connections in tests would lock hubops itself out of the node.
    newer = ["PerSourcePenalties no"] if version and version >= (9, 8) else []
    return "\n".join(newer + [
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


def sshd_argv(pid: int, *args: str) -> list[str]:
    """sshd run inside the namespaces of the engine `pid` (pure): its address, its mounts (the
    engine socket) and, on a newer engine, its own root with its own /usr/sbin/sshd."""
    return ["nsenter", "--target", str(pid), "--net", "--mount", "--uts", str(SSHD), *args]


def refuse_without_sshd(name: str, nodes: list[tuple[str, str, bool]], cache: Path,
                        others: list[str] | None = None) -> None:
    """Refuse `--ssh` on nodes whose root has no sshd (pure): `nodes` are (node, engine, has sshd);
    `others`: the other labs' running nodes on those trees."""
    bad = [(n, e) for n, e, ok in nodes if not ok]
    if not bad:
        return
    engines = sorted({e for _, e in bad})
    trees = ", ".join(str(lab_engines.tree(cache, e)) for e in engines)
    users = f"the running node(s) {', '.join(others)}" if others else "a running node"
    raise HubopsError(
        f"lab {name}: node(s) {', '.join(f'{n} (Docker {e})' for n, e in bad)} run from a root file system built "
        f"before hubops put sshd into it ({trees}), and it could not be completed because {users} used it "
        f"when the lab came up. Stop the labs on it (hubops lab down --name {name}, and the others), then "
        f"`hubops lab up --name {name} --rebuild` with the same --engine (or a plain `lab up`, which completes it "
        "when no node runs on it), and --ssh again")


def enable_ssh(name: str, params_file: Path, *, nodes: list[str] | None = None,
               state_root: Path = cluster.STATE_ROOT, run_root: Path = cluster.RUN_ROOT) -> list[str]:
    """Start sshd on the lab's `nodes` (default: all) and point the parameter file at them over
    ssh://. Idempotent; returns what it changed."""
    st = cluster.lab_status(name=name, state_root=state_root, run_root=run_root)
    by_name = {n.name: n for n in st.nodes}
    chosen = nodes or list(by_name)
    unknown = [n for n in chosen if n not in by_name]
    if unknown:
        raise HubopsError(f"lab {name} has no node {', '.join(unknown)}; its nodes: {', '.join(by_name)}")
    if any(by_name[n].engine == lab_engines.HOST for n in chosen) and not SSHD.exists():
        raise HubopsError(f"{SSHD} is missing: apt-get install openssh-server (this machine's sshd runs inside the "
                          "lab's 20.10 nodes' namespaces)")
    for node in chosen:
        if by_name[node].pid is None:
            raise HubopsError(f"lab {name}: the engine of {node} does not run; `hubops lab up --name {name}` first")
    state, run = Path(state_root) / name, Path(run_root) / name
    cache = cluster.rootfs_cache(name, state_root)
    # Each node's root as its sshd sees it: this machine's for 20.10 nodes, its own Debian tree otherwise.
    roots = [(n, by_name[n].engine, lab_engines.has_sshd(Path(f"/proc/{by_name[n].pid}/root"))) for n in chosen]
    if not all(ok for _, _, ok in roots):
        others = [u for e in sorted({e for _, e, ok in roots if not ok})
                  for u in cluster.nodes_on_tree(e, cache, state_root, run_root) if not u.endswith(f"(lab {name})")]
        refuse_without_sshd(name, roots, cache, others)
    keydir = state / "ssh"
    changes: list[str] = []
    client_key = keydir / "id_ed25519"
    if not client_key.exists():
        _keygen(client_key, f"hubops-lab-{name}")
        changes.append(f"made the lab's ssh key {client_key}")
    known: list[str] = []
    for node in chosen:
        n = by_name[node]
        ndir = state / node / "ssh"
        host_key = ndir / "ssh_host_ed25519_key"
        if not host_key.exists():
            _keygen(host_key, node)
            changes.append(f"made the ssh host key of {node}")
        # In the node's own folder: a newer engine's node sees STATE/NODE, not STATE/ssh.
        authorized = ndir / "authorized_keys"
        authorized.write_text(client_key.with_suffix(".pub").read_text())
        known.append(f"{n.address} {' '.join(host_key.with_suffix('.pub').read_text().split()[:2])}")
        pidfile = run / node / "sshd.pid"
        if _sshd_pid(pidfile) is not None and _answers(n.address):
            continue
        # sshd's privilege separation folder, in the node's /run (a tmpfs of its own on a newer engine).
        Path(f"/proc/{n.pid}/root/run/sshd").mkdir(mode=0o755, exist_ok=True)
        cfg = ndir / "sshd_config"
        version = openssh_version(subprocess.run(sshd_argv(n.pid, "-V"), capture_output=True, text=True).stderr)
        cfg.write_text(sshd_config(address=n.address, host_key=host_key, authorized_keys=authorized, pidfile=pidfile,
                                   version=version))
        check = subprocess.run(sshd_argv(n.pid, "-t", "-f", str(cfg)), capture_output=True, text=True)
        if check.returncode != 0:
            raise HubopsError(f"lab {name}: sshd on {node} refuses the configuration {cfg}: "
                              f"{check.stderr.strip()[:400]}")
        logf = open(ndir / "sshd.log", "ab")
        subprocess.Popen(sshd_argv(n.pid, "-D", "-e", "-f", str(cfg)),
                         stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        logf.close()
        deadline = time.monotonic() + 15
        while not _answers(n.address):
            if time.monotonic() > deadline:
                raise HubopsError(f"lab {name}: sshd on {node} did not answer at {n.address}:{PORT}; see "
                                  f"{ndir / 'sshd.log'}")
            time.sleep(0.1)
        where = "this machine's sshd" if n.engine == lab_engines.HOST else f"the sshd of its Docker {n.engine} root"
        changes.append(f"started {where} on {node} ({n.address}:{PORT})")
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
