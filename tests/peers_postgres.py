"""A real PostgreSQL newer than hubops's pg_dump (hubdb.PG_DUMP_MAJOR), for tests of what hubops
says about it. Debian bookworm (this machine) carries only PostgreSQL 15 and no container registry
is reachable, so the server comes from Debian trixie's own package: `debootstrap --variant=minbase
trixie` plus `apt-get install postgresql-17` into a tree cached beside the lab's engine trees
(CACHE/rootfs/postgresql-17, CACHE = hubops.lab.engines.CACHE_ROOT), built once (about 1.5 min),
then run with `chroot` as that tree's own postgres user, on this machine's network.

`NewerPostgres` starts one server per test run (its data in the tree under srv/, named after the run),
TLS only (`hostssl`, a certificate from a CA of the test's), a password login, and removes it all
at the end.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from hubops.lab import engines

MAJOR = 17
SUITE = "trixie"
PACKAGES = (f"postgresql-{MAJOR}", "ca-certificates")
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _run(argv: list[str], what: str, timeout: float = 900) -> str:
    env = {"PATH": _PATH, "DEBIAN_FRONTEND": "noninteractive", "HOME": "/root", "LC_ALL": "C.UTF-8"}
    cp = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout)
    if cp.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {cp.returncode}):\n" + "\n".join(
            (cp.stdout + cp.stderr).strip().splitlines()[-15:]))
    return cp.stdout


def root(cache: Path = engines.CACHE_ROOT) -> Path:
    return Path(cache) / "rootfs" / f"postgresql-{MAJOR}"


def ensure_root(cache: Path = engines.CACHE_ROOT) -> dict:
    """The cached tree with Debian's postgresql-MAJOR, built when missing (under a lock, into a
    temporary folder renamed into place when complete); its manifest."""
    final = root(cache)
    base = final.parent
    base.mkdir(parents=True, exist_ok=True)
    with open(base / f".lock-{final.name}", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / "hubops-rootfs.json").exists():
            return json.loads((final / "hubops-rootfs.json").read_text())
        t0 = time.monotonic()
        tmp = base / f".build-{final.name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            _run(["debootstrap", "--variant=minbase", SUITE, str(tmp), engines.MIRROR], f"debootstrap {SUITE}")
            shutil.copyfile("/etc/resolv.conf", tmp / "etc" / "resolv.conf")
            rc = tmp / "usr" / "sbin" / "policy-rc.d"  # no service started by a package's script
            rc.write_text("#!/bin/sh\nexit 101\n")
            rc.chmod(0o755)
            apt = "apt-get -q -o Acquire::Check-Valid-Until=false"
            _run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                  f"mount -t proc proc {tmp}/proc && chroot {tmp} sh -c '{apt} update && {apt} install -y "
                  f"--no-install-recommends {' '.join(PACKAGES)} && apt-get clean && rm -rf /var/lib/apt/lists/*'"],
                 f"apt-get install {' '.join(PACKAGES)} in {tmp}")
            rc.unlink()
            version = _run(["chroot", str(tmp), f"/usr/lib/postgresql/{MAJOR}/bin/postgres", "--version"],
                           "postgres --version").strip()
            m = {"suite": SUITE, "packages": list(PACKAGES), "postgres": version,
                 "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                 "build_seconds": round(time.monotonic() - t0, 1)}
            (tmp / "hubops-rootfs.json").write_text(json.dumps(m, indent=2) + "\n")
            tmp.rename(final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return m


class NewerPostgres:
    """PostgreSQL MAJOR from the cached tree, TLS only, on `addr`:`port`, database `jupyterhub`
    owned by `jh` (password in `pw`, a file outside the tree), its CA in `ca`."""

    def __init__(self, name: str, addr: str, port: int):
        from hubops.core import certs

        self.root = root()
        self.bin = f"/usr/lib/postgresql/{MAJOR}/bin"
        self.addr, self.port = addr, port
        passwd = dict(line.split(":")[0:3:2] for line in (self.root / "etc/passwd").read_text().splitlines())
        group = dict(line.split(":")[0:3:2] for line in (self.root / "etc/group").read_text().splitlines())
        self.user = f"{passwd['postgres']}:{group['postgres']}"
        self.inner = f"/srv/{name}"  # the server's folder as the server sees it
        self.dir = self.root / self.inner.lstrip("/")
        self.data = f"{self.inner}/data"
        self.out = Path(tempfile.mkdtemp(prefix=f"hubops-{name}-"))  # password and CA for the deployment
        os.chmod(self.out, 0o755)
        self.pw = self.out / "db-password"
        self.ca = self.out / "ca.pem"
        shutil.rmtree(self.dir, ignore_errors=True)
        (self.dir / "data").mkdir(parents=True, mode=0o700)
        self.pw.write_text("pg17-" + os.urandom(12).hex() + "\n")
        self.pw.chmod(0o600)
        (self.dir / "pwfile").write_text(self.pw.read_text())
        uid, gid = (int(x) for x in self.user.split(":"))
        for f in (self.dir, self.dir / "data", self.dir / "pwfile"):
            os.chown(f, uid, gid)
        self.sql("initdb", "-D", self.data, "-U", "jh", f"--pwfile={self.inner}/pwfile", "--auth-local=trust",
                 "--auth-host=reject", "--encoding=UTF8", "--locale=C.UTF-8")
        (self.dir / "pwfile").unlink()
        ca_pem, ca_key = certs.make_ca("hubops test database CA (newer PostgreSQL)")
        chain, key = certs.issue_server_cert(ca_pem, ca_key, [addr])
        self.ca.write_bytes(ca_pem)
        data = self.dir / "data"
        (data / "server.crt").write_bytes(chain)
        (data / "server.key").write_bytes(key)
        for f in ("server.crt", "server.key"):
            os.chown(data / f, uid, gid)
        os.chmod(data / "server.key", 0o600)
        with open(data / "pg_hba.conf", "a") as f:
            f.write("hostssl all all 0.0.0.0/0 scram-sha-256\n")
        self.log = self.out / "server.log"
        # chroot execs postgres in this process: terminate() reaches the server itself.
        # dynamic_shared_memory_type=mmap: the tree has no /dev/shm.
        self.proc = subprocess.Popen(
            ["chroot", f"--userspec={self.user}", str(self.root), f"{self.bin}/postgres", "-D", self.data,
             "-c", f"listen_addresses={addr}", "-c", f"port={port}", "-c", f"unix_socket_directories={self.data}",
             "-c", "ssl=on", "-c", "dynamic_shared_memory_type=mmap"],
            stdout=open(self.log, "w"), stderr=subprocess.STDOUT, env={"PATH": _PATH, "LC_ALL": "C.UTF-8"})
        try:
            for _ in range(120):
                if self.proc.poll() is not None:
                    raise RuntimeError(f"PostgreSQL {MAJOR} exited ({self.proc.returncode}): {self.log.read_text()[-2000:]}")
                if self.sql("pg_isready", "-q", "-h", self.data, "-p", str(port), check=False).returncode == 0:
                    break
                time.sleep(0.5)
            self.sql("psql", "-h", self.data, "-p", str(port), "-U", "jh", "-d", "postgres", "-c",
                     "CREATE DATABASE jupyterhub OWNER jh")
            self.version_num = int(self.sql("psql", "-h", self.data, "-p", str(port), "-U", "jh", "-d", "postgres",
                                            "-Atc", "show server_version_num").stdout.strip())
        except BaseException:
            self.stop()
            raise

    def sql(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """One of the tree's PostgreSQL programs (initdb, psql, pg_isready...) as its postgres user."""
        cp = subprocess.run(["chroot", f"--userspec={self.user}", str(self.root), f"{self.bin}/{tool}", *args],
                            capture_output=True, text=True, timeout=120, env={"PATH": _PATH, "LC_ALL": "C.UTF-8"})
        if check and cp.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args)}: exit {cp.returncode}: {cp.stderr.strip()[-1500:]}")
        return cp

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # the server this object started, by its own process handle
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        shutil.rmtree(self.dir, ignore_errors=True)
        shutil.rmtree(self.out, ignore_errors=True)
