"""Engines reached over ssh: one OpenSSH tunnel per host, to the engine's unix socket.

An `ssh://USER@HOST[:PORT]` engine URL is reached the way operators reach their hosts: this
machine's `ssh` client, key-based login only (BatchMode: never a password prompt), and a host key
that must already be known (StrictHostKeyChecking=yes: an unknown or changed key is refused, never
accepted on first use). `hosts[].ssh.known_hosts` pins the keys in a file of its own;
`hosts[].ssh.identity_file` names the private key (otherwise the ssh agent's and ~/.ssh's keys).

The tunnel is OpenSSH's own unix-socket forwarding (`ssh -N -L LOCAL.sock:ENGINE_SOCKET`), so the
host needs nothing but sshd and its engine (not even the docker command line, which docker-py's
ssh support runs on the host), and the engine's API is spoken over the tunnel exactly as over a
local socket. The local socket lives in a private folder (0700) of this process; the ssh process
dies with it (PR_SET_PDEATHSIG) or at exit. A connection lost during a stage makes the next engine
call fail with the host named; the stage fails, its record says so, and `--resume` starts a new
tunnel.
"""
from __future__ import annotations

import atexit
import itertools
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from hubops.core.errors import PreflightError

log = logging.getLogger("hubops")

_lock = threading.Lock()
_tunnels: dict[tuple, "_Tunnel"] = {}
_dir: Path | None = None
_count = itertools.count()


@dataclass
class _Tunnel:
    proc: subprocess.Popen
    socket: Path
    stderr: Path


@dataclass(frozen=True)
class Target:
    user: str | None
    host: str
    port: int | None

    @classmethod
    def parse(cls, url: str) -> "Target":
        parts = urlsplit(url)
        if parts.password:  # never echo it
            raise ValueError("an ssh engine URL holds no password (hubops logs in with a key only): "
                             "give ssh://USER@HOST[:PORT] and hosts[].ssh.identity_file")
        if parts.scheme != "ssh" or not parts.hostname or parts.path not in ("", "/") or parts.query or parts.password:
            raise ValueError(f"{url!r}: an ssh engine URL is ssh://USER@HOST or ssh://USER@HOST:PORT "
                             "(no password, no path: the engine socket is hosts[].engine_socket)")
        return cls(parts.username, parts.hostname, parts.port)


def argv(target: Target, *, local: str, remote: str, known_hosts: str | None, identity: str | None,
         connect_timeout: int) -> list[str]:
    """The ssh command line of a tunnel (pure)."""
    out = ["ssh", "-N", "-T",
           "-o", "BatchMode=yes",                 # a key or nothing: never a prompt
           "-o", "StrictHostKeyChecking=yes",     # an unknown or changed host key is refused
           "-o", f"ConnectTimeout={connect_timeout}",
           "-o", "ExitOnForwardFailure=yes",
           "-o", "ServerAliveInterval=10", "-o", "ServerAliveCountMax=3",
           "-o", "StreamLocalBindUnlink=yes",
           "-o", "ControlMaster=no", "-o", "ControlPath=none",
           "-L", f"{local}:{remote}"]
    if known_hosts:
        out += ["-o", f"UserKnownHostsFile={known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null"]
    if identity:
        out += ["-i", identity, "-o", "IdentitiesOnly=yes"]
    if target.port:
        out += ["-p", str(target.port)]
    if target.user:
        out += ["-l", target.user]
    return out + ["--", target.host]


def explain(name: str, url: str, stderr: str, *, known_hosts: str | None) -> str:
    """What an ssh failure means and what to do (pure)."""
    where = f"host {name} ({url})"
    pin = (f"hosts[{name}].ssh.known_hosts ({known_hosts})" if known_hosts
           else "~/.ssh/known_hosts (or pin it in hosts[].ssh.known_hosts)")
    s = stderr.strip()
    if "Host key verification failed" in s or "REMOTE HOST IDENTIFICATION HAS CHANGED" in s:
        changed = "REMOTE HOST IDENTIFICATION HAS CHANGED" in s
        return (f"{where}: the host's ssh key is {'not the one pinned' if changed else 'not known'}; hubops never "
                f"accepts an unknown or changed host key. Check the key out of band (on the host: `ssh-keygen -lf "
                f"/etc/ssh/ssh_host_ed25519_key.pub`), then add it to {pin}")
    if "Permission denied" in s:
        return (f"{where}: the ssh login was refused ({s.splitlines()[-1][:200]}); put the public key of "
                "hosts[].ssh.identity_file (or of your ssh agent) in the user's ~/.ssh/authorized_keys on the host")
    if "forwarding" in s.lower() or "open failed" in s.lower() or "No such file" in s:
        return (f"{where}: logged in, but the engine's socket could not be reached through ssh ({s[-300:]}); check "
                "hosts[].engine_socket, that the user may use it (the docker group), and that sshd allows "
                "AllowStreamLocalForwarding")
    return f"{where}: ssh did not connect: {s[-400:] or 'no message'}; check the address, port and that sshd runs"


def _private_dir() -> Path:
    global _dir
    if _dir is None or not _dir.is_dir():
        _dir = Path(tempfile.mkdtemp(prefix="hubops-ssh-"))
        os.chmod(_dir, 0o700)
    return _dir


def _die_with_parent() -> None:  # runs in the child before exec
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - not Linux: atexit still stops it
        pass


def engine_url(name: str, url: str, *, engine_socket: str, known_hosts: str | None = None,
               identity: str | None = None, connect_timeout: int = 10) -> str:
    """A `unix://` URL that reaches host `name`'s engine through an ssh tunnel, started or reused."""
    if shutil.which("ssh") is None:
        raise PreflightError(f"host {name} ({url}): the ssh client is missing on this machine; "
                             "apt-get install openssh-client")
    try:
        target = Target.parse(url)
    except ValueError as e:
        raise PreflightError(f"host {name}: {e}") from None
    key = (url, engine_socket, known_hosts, identity)
    with _lock:
        t = _tunnels.get(key)
        if t is not None and t.proc.poll() is None and t.socket.exists():
            return f"unix://{t.socket}"
        if t is not None:
            _stop(t)
        d = _private_dir()
        index = next(_count)
        sock = d / f"{name[:40]}-{index}.sock"
        err = d / f"{name[:40]}-{index}.stderr"
        cmd = argv(target, local=str(sock), remote=engine_socket, known_hosts=known_hosts, identity=identity,
                   connect_timeout=connect_timeout)
        with open(err, "wb") as ef:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=ef,
                                    preexec_fn=_die_with_parent)
        deadline = time.monotonic() + connect_timeout + 5
        while not sock.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
                text = err.read_text(errors="replace")
                raise PreflightError(explain(name, url, text, known_hosts=known_hosts))
            time.sleep(0.05)
        _tunnels[key] = _Tunnel(proc, sock, err)
        log.info("ssh tunnel to %s (%s) for the engine socket %s", name, url, engine_socket)
        return f"unix://{sock}"


def tunnel_alive(url: str) -> bool:
    """Whether a tunnel for `url` runs (for tests and status)."""
    return any(k[0] == url and t.proc.poll() is None for k, t in _tunnels.items())


def _stop(t: _Tunnel) -> None:
    if t.proc.poll() is None:
        t.proc.terminate()
        try:
            t.proc.wait(5)
        except subprocess.TimeoutExpired:
            t.proc.kill()
    for f in (t.socket, t.stderr):
        try:
            f.unlink()
        except OSError:
            pass


def stop_all() -> None:
    """Stop every tunnel of this process (at exit, or in tests)."""
    with _lock:
        for t in _tunnels.values():
            _stop(t)
        _tunnels.clear()


atexit.register(stop_all)
