"""Lab nodes on a chosen Docker engine: Debian root file systems with a newer `dockerd`.

A lab node runs either this machine's own engine binaries (``20.10``, Debian 12's docker.io, as
every lab did before) or a newer Docker from a Debian root file system built once with
debootstrap and cached:

=========  ==========  ================================================
engine     suite       what it is
=========  ==========  ================================================
``20.10``  (host)      this machine's /usr/sbin/dockerd
``26``     trixie      docker.io 26.1.x, containerd 1.7, runc 1.1
``28``     sid         docker.io 28.5.x, containerd 2.1, runc 1.3
=========  ==========  ================================================

The tree of a version is built into ``CACHE/rootfs/.build-VERSION-PID`` and renamed to
``CACHE/rootfs/docker-VERSION`` only when it is complete, so a failed build leaves nothing
half-made (what a killed build left is removed by the next one). ``lab up --rebuild`` builds
it again. CACHE is ``/var/cache/hubops-lab`` (or the folder the environment variable
``HUBOPS_LAB_CACHE`` names, read when hubops is imported); labs share it, ``lab down`` keeps it.

Every tree holds Debian's ``openssh-server`` (``lab up --ssh`` runs the tree's own sshd in the
node), with no host key of its own (each node gets one from the lab). A tree built before that
(its manifest lists the packages it holds, or none for those first trees) is completed in place
(``apt-get install`` of what it lacks, about 20 s) by the next ``lab up`` that needs its engine,
when no running node uses it; when one does, it is left as it is (a node on it works, only
without sshd) and ``--ssh`` on a node running from it is refused with what to do.

A node on a built engine runs its dockerd with that tree as its root (`pivot_root`, not
`chroot`: under a chroot, runc's `docker exec` lands in the host's root and exec healthchecks
fail), in its own network, UTS and mount namespaces: an overlay of the cached tree (the
node's changes go to ``STATE/NODE/rootfs``, the cache stays as built), /proc, /sys, /dev, a
tmpfs on /run, and, at the same paths as on this machine, the node's data, exec and socket
folders, the lab's certificates and the folders the lab shares with its nodes (storage every
node sees, as NFS-mounted hosts share /mnt/nfs).
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from hubops.core.errors import HubopsError, PreflightError

log = logging.getLogger("hubops")

# HUBOPS_LAB_CACHE: another cache folder (a private one, to build and try trees without touching
# the machine's shared one).
CACHE_ROOT = Path(os.environ.get("HUBOPS_LAB_CACHE") or "/var/cache/hubops-lab")
MIRROR = "http://deb.debian.org/debian"
HOST = "20.10"
# Host folders every node sees at the same path by default (storage shared by the lab's nodes).
DEFAULT_SHARED = ("/tmp", "/srv", "/mnt", "/home")
_PKGS = ("docker.io", "iptables", "ca-certificates", "openssh-server")
# What trees held before their manifest listed it (built before openssh-server was added).
_PKGS_FIRST = ("docker.io", "iptables", "ca-certificates")
# Files that say a package is in the tree (checked on the tree itself, whatever its manifest says).
_MARKS = {"openssh-server": "usr/sbin/sshd"}
_SBIN = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class EngineSpec:
    """One engine a lab node can run."""

    key: str  # "20.10", "26", "28"
    suite: str | None  # Debian suite whose docker.io it is; None: this machine's engine
    expect: str  # the docker.io version the suite carries (its major.minor is checked)

    @property
    def host(self) -> bool:
        return self.suite is None

    @property
    def dirname(self) -> str:
        return f"docker-{self.key}"


ENGINES: dict[str, EngineSpec] = {
    "20.10": EngineSpec("20.10", None, "20.10"),
    "26": EngineSpec("26", "trixie", "26.1"),
    "28": EngineSpec("28", "sid", "28.5"),
}


def buildable() -> str:
    return ", ".join(f"{k} ({'this machine' if s.host else 'Debian ' + s.suite}'s docker.io {s.expect})"
                     for k, s in ENGINES.items())


def spec(version: str) -> EngineSpec:
    """The engine for a version as a user writes it: 28, 28.5, 28.5.2, 26.1.5, 20.10, 20.10.24."""
    v = str(version).strip()
    for key, s in ENGINES.items():
        if v == key or v == s.expect or v.startswith(s.expect + "."):
            return s
    raise HubopsError(f"lab engine {version!r} cannot be built; the versions a lab node can run are: "
                      f"{buildable()}; e.g. --engine 28 or --engine manager=28,node0=26,node1=20.10")


def parse_engines(text: str | None, nodes: list[tuple[str, str]], lab: str) -> dict[str, str]:
    """Node name -> engine key from `--engine`: one version for every node (``28``) or
    ``NODE=VERSION`` pairs (``manager=28,node0=26``; NODE with or without the lab's prefix, the
    other nodes keep 20.10). Every error is raised before anything is made."""
    names = [n for n, _ in nodes]
    out = {n: HOST for n in names}
    if text is None or not str(text).strip():
        return out
    items = [i.strip() for i in str(text).split(",") if i.strip()]
    if len(items) == 1 and "=" not in items[0]:
        key = spec(items[0]).key
        return {n: key for n in names}
    for item in items:
        if "=" not in item:
            raise HubopsError(f"--engine {text!r}: {item!r} is not NODE=VERSION; give one version for all "
                              f"nodes (--engine 28) or NODE=VERSION pairs (--engine manager=28,node0=26)")
        node, version = (x.strip() for x in item.split("=", 1))
        full = node if node in names else f"{lab}-{node}"
        if full not in names:
            raise HubopsError(f"--engine {text!r}: the lab has no node {node!r}; its nodes are "
                              f"{', '.join(n.removeprefix(lab + '-') for n in names)}")
        out[full] = spec(version).key
    return out


# -- the cached root file systems ------------------------------------------------------------
def tree(cache: Path, key: str) -> Path:
    return Path(cache) / "rootfs" / ENGINES[key].dirname


def manifest(cache: Path, key: str) -> dict | None:
    """What a cached tree holds (versions, suite, when built), or None when it is not built."""
    try:
        return json.loads((tree(cache, key) / "hubops-rootfs.json").read_text())
    except (OSError, ValueError):
        return None


def missing_packages(m: dict | None, root: Path | None = None) -> list[str]:
    """The packages of `_PKGS` a built tree lacks (pure when `root` is None): those its manifest
    does not list as installed (a manifest without that list is a first tree: docker.io, iptables
    and ca-certificates), and those whose mark file is missing from `root`."""
    if m is None:
        return list(_PKGS)
    have = set(m.get("installed") or _PKGS_FIRST)
    out = [p for p in _PKGS if p not in have]
    if root is not None:
        out += [p for p, mark in _MARKS.items() if p not in out and not (Path(root) / mark).exists()]
    return out


def has_sshd(root: Path) -> bool:
    """Whether a node's root (a cached tree, or /proc/PID/root of its engine) has Debian's sshd."""
    return (Path(root) / _MARKS["openssh-server"]).exists()


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in ("LANG", "LC_ALL", "TZ", "http_proxy", "https_proxy")}
    env.update(PATH=_SBIN, DEBIAN_FRONTEND="noninteractive", HOME="/root")
    return env


def _run(argv: list[str], what: str, timeout: float) -> str:
    log.debug("lab: %s", " ".join(argv))
    try:
        cp = subprocess.run(argv, capture_output=True, text=True, env=_env(), timeout=timeout)
    except FileNotFoundError:
        raise PreflightError(f"{what}: `{argv[0]}` is not installed (apt-get install -y {argv[0]})") from None
    except subprocess.TimeoutExpired:
        raise HubopsError(f"{what}: `{' '.join(argv[:4])} ...` did not finish within {timeout:.0f} s") from None
    if cp.returncode != 0:
        tail = "\n".join((cp.stdout + cp.stderr).strip().splitlines()[-12:])
        raise HubopsError(f"{what} failed (exit {cp.returncode}):\n{tail}")
    return cp.stdout


def _unmount_all_under(root: Path) -> None:
    prefix = str(root).rstrip("/") + "/"
    for _ in range(3):
        mps = [ln.split()[4] for ln in Path("/proc/self/mountinfo").read_text().splitlines()]
        mine = sorted({m for m in mps if m.startswith(prefix) or m == prefix[:-1]}, key=len, reverse=True)
        if not mine:
            return
        for m in mine:
            subprocess.run(["umount", "-l", m], capture_output=True, env=_env())


def _remove_tree(path: Path) -> None:
    _unmount_all_under(path)
    shutil.rmtree(path, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def ensure_rootfs(key: str, *, cache: Path = CACHE_ROOT, mirror: str = MIRROR, rebuild: bool = False,
                  changes: list[str] | None = None, in_use: Callable[[], list[str]] | None = None) -> dict | None:
    """The cached root file system of engine `key`, built when missing (or `rebuild`), completed
    when it lacks packages hubops now puts in every tree (openssh-server) and `in_use()` (the
    running nodes on it) is empty.

    Returns its manifest (None for this machine's own engine). Builds under a lock, into a
    temporary folder renamed into place only when complete; whatever fails removes that folder."""
    s = ENGINES[key]
    if s.host:
        return None
    changes = changes if changes is not None else []
    base = Path(cache) / "rootfs"
    base.mkdir(parents=True, exist_ok=True)
    os.chmod(base.parent, 0o755)
    with open(base / f".lock-{s.dirname}", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another `lab up` building the same tree: wait for it
        for stale in base.glob(f".build-{s.dirname}-*"):
            pid = stale.name.rsplit("-", 1)[-1]
            if not (pid.isdigit() and _pid_alive(int(pid)) and int(pid) != os.getpid()):
                _remove_tree(stale)
                changes.append(f"removed an unfinished build {stale}")
        final = tree(cache, key)
        m = manifest(cache, key)
        if m is not None and not rebuild:
            missing = missing_packages(m, final)
            if missing:
                users = in_use() if in_use is not None else []
                if users:
                    # Its files are the lower layer of running nodes: not changed under them.
                    log.warning("lab: the Docker %s root file system %s lacks %s, but the running node(s) %s "
                                "use it: left as it is (their nodes cannot have sshd)", key, final,
                                ", ".join(missing), ", ".join(users))
                else:
                    m = _complete(s, final, m, missing, mirror, changes)
            return m
        t0 = time.monotonic()
        tmp = base / f".build-{s.dirname}-{os.getpid()}"
        _remove_tree(tmp)
        try:
            m = _build(s, tmp, mirror)
            m["build_seconds"] = round(time.monotonic() - t0, 1)
            (tmp / "hubops-rootfs.json").write_text(json.dumps(m, indent=2) + "\n")
            if final.exists():
                old = base / f".old-{s.dirname}-{os.getpid()}"
                final.rename(old)
                _remove_tree(old)
            tmp.rename(final)
        except BaseException:
            _remove_tree(tmp)
            raise
        changes.append(f"built the root file system of Docker {m['docker']} (Debian {s.suite}) in "
                       f"{m['build_seconds']} s: {final}")
        log.info("lab: %s", changes[-1])
        return m


def _apt_install(root: Path, pkgs: list[str] | tuple[str, ...], what: str) -> None:
    """`apt-get install` of `pkgs` inside the tree `root` (chroot, /proc mounted in a mount
    namespace of its own), with no service started and no host key left behind."""
    shutil.copyfile("/etc/resolv.conf", root / "etc" / "resolv.conf")
    # Packages' scripts must not start services in the tree.
    rc = root / "usr" / "sbin" / "policy-rc.d"
    rc.write_text("#!/bin/sh\nexit 101\n")
    rc.chmod(0o755)
    # The mirror's sid Release file can be weeks old: apt would call it expired.
    apt = "apt-get -q -o Acquire::Check-Valid-Until=false"
    script = (f"mount -t proc proc {root}/proc && "
              f"chroot {root} sh -c '{apt} update && {apt} install -y --no-install-recommends {' '.join(pkgs)} "
              f"&& apt-get clean && rm -rf /var/lib/apt/lists/*'")
    try:
        # A mount namespace of its own: /proc is gone with it, whatever happens.
        _run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
             f"{what}: apt-get install {' '.join(pkgs)}", 900)
    finally:
        rc.unlink(missing_ok=True)
    # openssh-server's postinst makes host keys: a tree every node shares must hold none (each
    # node gets its own from the lab, STATE/NODE/ssh).
    for key in (root / "etc" / "ssh").glob("ssh_host_*"):
        key.unlink()


def _versions(root: Path, what: str) -> dict[str, str]:
    out = {}
    for pkg in ("docker.io", "containerd", "runc", "openssh-server"):
        cp = subprocess.run(["chroot", str(root), "dpkg-query", "-W", "-f", "${Version}", pkg],
                            capture_output=True, text=True, env=_env(), timeout=60)
        if cp.returncode == 0 and cp.stdout.strip():
            out[pkg] = cp.stdout.strip()
        elif pkg != "openssh-server":
            raise HubopsError(f"{what}: {pkg} is not installed in {root}: {cp.stderr.strip()[:300]}")
    return out


def _complete(s: EngineSpec, root: Path, m: dict, missing: list[str], mirror: str, changes: list[str]) -> dict:
    """Install what a tree built by an older hubops lacks, in place (no node runs on it)."""
    what = f"completing the Docker {s.key} root file system {root} (Debian {s.suite}, built {m.get('built', '?')})"
    log.info("lab: %s with %s", what, ", ".join(missing))
    t0 = time.monotonic()
    try:
        _apt_install(root, missing, what)
    except HubopsError as e:
        raise HubopsError(f"{e}\nthe tree may be half-completed: build it anew with `hubops lab up --rebuild` "
                          f"(and the same --engine) once no lab runs on it") from None
    m = {**m, "packages": {**m.get("packages", {}), **_versions(root, what)}, "installed": list(_PKGS),
         "completed": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
         "complete_seconds": round(time.monotonic() - t0, 1)}
    tmp = root / ".hubops-rootfs.json.tmp"
    tmp.write_text(json.dumps(m, indent=2) + "\n")
    os.replace(tmp, root / "hubops-rootfs.json")
    changes.append(f"completed the root file system of Docker {m.get('docker', s.key)} {root} with "
                   f"{', '.join(missing)} in {m['complete_seconds']} s")
    log.info("lab: %s", changes[-1])
    return m


def _build(s: EngineSpec, root: Path, mirror: str) -> dict:
    what = f"building the Docker {s.key} root file system (Debian {s.suite})"
    exe = shutil.which("debootstrap", path=_SBIN)
    if exe is None:
        raise PreflightError(f"{what}: debootstrap is missing; apt-get install -y debootstrap")
    log.info("lab: %s from %s (about a minute)", what, mirror)
    _run([exe, "--variant=minbase", s.suite, str(root), mirror], f"{what}: debootstrap {s.suite} from {mirror}", 900)
    _apt_install(root, _PKGS, what)
    versions = _versions(root, what)
    docker = re.sub(r"\+.*|-.*", "", versions["docker.io"])
    if not docker.startswith(s.expect + ".") and docker != s.expect:
        raise HubopsError(f"{what}: Debian {s.suite} now carries docker.io {versions['docker.io']}, not "
                          f"{s.expect}.x; hubops's lab knows {buildable()}: update ENGINES in hubops/lab_engines.py")
    for d in ("proc", "sys", "dev", "run", ".oldroot"):
        (root / d).mkdir(exist_ok=True)
    return {"engine": s.key, "suite": s.suite, "mirror": mirror, "docker": docker,
            "packages": versions, "installed": list(_PKGS),
            "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


# -- running a node's engine inside its tree -------------------------------------------------
def node_rootfs(state: Path, node: str) -> Path:
    """The node's own changes to its tree (an overlay's upper and work folders) and its root."""
    return Path(state) / node / "rootfs"


def pivot_argv(*, node: str, key: str, cache: Path, state: Path, run: Path, binds: list[tuple[str, str]],
               shared: list[str], dockerd: list[str]) -> list[str]:
    """The command that, run inside the node's new UTS and mount namespaces (`unshare` before
    it), names the node, makes its root (an overlay of the cached tree, with /proc, /sys, /dev,
    a tmpfs on /run, then `binds` (host path, path inside) and the `shared` folders at their own
    paths), enters it with pivot_root and execs `dockerd`."""
    from shlex import quote as q

    lower = tree(cache, key)
    own = node_rootfs(state, node)
    root = own / "root"
    lines = [
        "set -e",
        f"hostname {q(node)}",
        f"mkdir -p {q(str(own / 'upper'))} {q(str(own / 'work'))} {q(str(root))}",
        # An overlay: the node writes into its own upper folder, the cached tree stays as built;
        # and its root is a mount point (dockerd 28 remounts / when loading images).
        f"mount -t overlay overlay -o lowerdir={q(str(lower))},upperdir={q(str(own / 'upper'))},"
        f"workdir={q(str(own / 'work'))} {q(str(root))}",
        f"mount -t proc proc {q(str(root / 'proc'))}",
        f"mount --rbind /sys {q(str(root / 'sys'))}",
        f"mount --rbind /dev {q(str(root / 'dev'))}",
        f"mount -t tmpfs -o mode=0755 tmpfs {q(str(root / 'run'))}",
    ]
    for src, dst in binds:
        inside = q(str(root) + dst)
        lines.append(f"mkdir -p {inside} && mount --bind {q(src)} {inside}")
    for d in shared:
        inside = q(str(root) + d)
        lines.append(f"if [ -d {q(d)} ]; then mkdir -p {inside} && mount --rbind {q(d)} {inside}; fi")
    lines += [
        f"cd {q(str(root))}",
        "pivot_root . .oldroot",
        "cd /",
        "umount -l /.oldroot",
        'exec "$@"',
    ]
    return ["sh", "-c", "\n".join(lines), "sh", *dockerd]


def daemon_config(key: str, state: Path, node: str) -> dict:
    """The node's daemon.json: its own engine ID, not this machine's (20.10 keeps it in key.json;
    newer engines keep it in their data root and no longer know the key-path option)."""
    if ENGINES[key].host:
        return {"deprecated-key-path": str(Path(state) / node / "key.json")}
    return {}


def remove_trees(dirs: list[Path]) -> None:
    """Delete the folders (the nodes' data roots, each with its images) side by side: on a file
    system mounted with `discard` every unlink of a large file waits for the disk, and one
    folder after the other took 30 s per node."""
    from concurrent.futures import ThreadPoolExecutor

    def rm(d: Path) -> None:
        # Deepest first, in threads of their own: the big layer files of each image.
        subs = [s for s in (d / "docker" / "overlay2").iterdir()] if (d / "docker" / "overlay2").is_dir() else []
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(lambda s: shutil.rmtree(s, ignore_errors=True), subs))
        shutil.rmtree(d, ignore_errors=True)

    if dirs:
        with ThreadPoolExecutor(max_workers=min(8, len(dirs))) as pool:
            list(pool.map(rm, dirs))
