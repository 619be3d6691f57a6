"""The TLS front's two processes (one image, two Swarm services; hubops/stages/front.py makes both).

`front.py serve` (the front): waits until the agent has put a certificate in the shared run folder,
then runs HAProxy in the foreground with the configuration hubops rendered (a Swarm config).

`front.py agent` (the certificate agent, on every manager): reads the certificate and key from its
Swarm secrets, refuses them when the key does not match, the certificate has expired or does not
cover the hub's names (HUBOPS_FRONT_NAMES), writes them into the shared run folder (a tmpfs
volume: never on disk) for a front that starts later, and, whenever the front beside it serves
another certificate, sets and commits the new one through HAProxy's runtime API (admin socket in
the same folder). A renewal updates only the agent's service (new secret versions); the front's
task keeps running and keeps its connections.

Standard library only; no secret is ever printed.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import tempfile
import time

RUN = os.environ.get("HUBOPS_FRONT_RUN", "/run/hubops-front")
PEM = os.path.join(RUN, "hub.pem")  # the name HAProxy knows the certificate by (bind ... crt PEM)
SOCKET = os.path.join(RUN, "admin.sock")
STATUS = os.path.join(RUN, "agent-status.json")
CONFIG = os.environ.get("HUBOPS_FRONT_CONFIG", "/etc/hubops-front/haproxy.cfg")
SECRETS = os.environ.get("HUBOPS_SECRETS_DIR", "/run/secrets")
CERT_FILE = os.path.join(SECRETS, "hubops-tls-cert")
KEY_FILE = os.path.join(SECRETS, "hubops-tls-key")
INTERVAL = float(os.environ.get("HUBOPS_FRONT_INTERVAL", "1"))
CERT_RE = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


def log(msg: str) -> None:
    print(f"hubops-front: {msg}", flush=True)


def check_haproxy_version() -> None:
    out = subprocess.run(["haproxy", "-v"], capture_output=True, text=True).stdout
    m = re.search(r"version (\d+)\.(\d+)", out)
    if not m or (int(m.group(1)), int(m.group(2))) < (2, 2):
        raise SystemExit(f"HAProxy 2.2 or newer is needed for `set ssl cert` / `commit ssl cert`; found: {out.strip()}")


# -- the certificate ------------------------------------------------------------------------------
def _dns_matches(pattern: str, name: str) -> bool:
    pattern, name = pattern.lower().rstrip("."), name.lower().rstrip(".")
    if pattern.startswith("*."):
        return "." in name and name.split(".", 1)[1] == pattern[2:]
    return pattern == name


def check(cert: bytes, key: bytes, names: list[str], now: float | None = None) -> tuple[str, str]:
    """(sha1 hex, sha256 hex) of the leaf when the pair may be served; ValueError saying why not."""
    leaves = CERT_RE.findall(cert)
    if not leaves:
        raise ValueError("the certificate secret holds no PEM certificate")
    with tempfile.TemporaryDirectory(dir=RUN if os.path.isdir(RUN) else None) as tmp:
        cpath, kpath = os.path.join(tmp, "c.pem"), os.path.join(tmp, "k.pem")
        for path, data in ((cpath, cert), (kpath, key)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            ctx.load_cert_chain(cpath, kpath)
        except ssl.SSLError as e:
            raise ValueError(f"the private key does not match the certificate ({e.reason or e})") from None
        with open(cpath, "wb") as f:
            f.write(leaves[0])
        decoded = ssl._ssl._test_decode_cert(cpath)  # noqa: SLF001 - the standard library's own parser
    t = time.time() if now is None else now
    not_after = ssl.cert_time_to_seconds(decoded["notAfter"])
    not_before = ssl.cert_time_to_seconds(decoded["notBefore"])
    if not_after <= t:
        raise ValueError(f"the certificate expired on {decoded['notAfter']}")
    if not_before > t:
        raise ValueError(f"the certificate is not valid before {decoded['notBefore']}")
    sans = [v for k, v in decoded.get("subjectAltName", ()) if k in ("DNS", "IP Address")]
    for n in names:
        if not any(_dns_matches(s, n) for s in sans):
            raise ValueError(f"the certificate does not cover {n} (it names {', '.join(sans) or 'nothing'})")
    der = ssl.PEM_cert_to_DER_cert(leaves[0].decode())
    return hashlib.sha1(der).hexdigest().upper(), hashlib.sha256(der).hexdigest()


def _write_private(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


# -- HAProxy's runtime API ------------------------------------------------------------------------
def runtime(command: bytes, timeout: float = 5) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(SOCKET)
        s.sendall(command)
        s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out.decode(errors="replace")


def served_sha1() -> str | None:
    """The SHA-1 fingerprint of the certificate HAProxy serves under PEM's name (None: no front here)."""
    out = runtime(f"show ssl cert {PEM}\n".encode())
    m = re.search(r"SHA1 FingerPrint:\s*([0-9A-Fa-f]+)", out)
    return m.group(1).upper() if m else None


def swap(bundle: bytes) -> str:
    """Set and commit the new certificate in the running HAProxy: no reload, connections kept."""
    out = runtime(f"set ssl cert {PEM} <<\n".encode() + bundle.rstrip(b"\n") + b"\n\n")
    if "Transaction created" not in out and "Transaction updated" not in out:
        raise RuntimeError(f"set ssl cert refused: {out.strip()[:300]}")
    out = runtime(f"commit ssl cert {PEM}\n".encode(), timeout=30)
    if "Success" not in out:
        runtime(f"abort ssl cert {PEM}\n".encode())
        raise RuntimeError(f"commit ssl cert failed: {out.strip()[:300]}")
    return out.strip().splitlines()[-1]


# -- the processes --------------------------------------------------------------------------------
def agent() -> None:
    names = [n for n in os.environ.get("HUBOPS_FRONT_NAMES", "").split(",") if n]
    last_refusal = None
    while True:
        status: dict = {"time": time.time()}
        try:
            cert, key = open(CERT_FILE, "rb").read(), open(KEY_FILE, "rb").read()
            sha1, sha256 = check(cert, key, names)
        except (OSError, ValueError) as e:
            if str(e) != last_refusal:
                log(f"certificate refused, nothing served from it: {e}")
                last_refusal = str(e)
            status.update(state="refused", error=str(e))
        else:
            last_refusal = None
            status.update(state="ok", sha256=sha256)
            bundle = cert.rstrip(b"\n") + b"\n" + key.rstrip(b"\n") + b"\n"
            try:
                with open(PEM, "rb") as f:
                    same = f.read() == bundle
            except OSError:
                same = False
            if not same:
                _write_private(PEM, bundle)
                log(f"certificate sha256 {sha256[:16]} written for the front")
            if os.path.exists(SOCKET):
                try:
                    served = served_sha1()
                    status["served_sha1"] = served
                    if served is not None and served != sha1:
                        log(f"front serves sha1 {served[:16]}; swapping to sha256 {sha256[:16]}: {swap(bundle)}")
                        status["served_sha1"] = served_sha1()
                        status["swapped"] = time.time()
                except (OSError, RuntimeError) as e:
                    log(f"runtime API: {e}")
                    status.update(state="error", error=str(e))
        try:
            _write_private(STATUS, json.dumps(status).encode())
        except OSError:
            pass
        time.sleep(INTERVAL)


def serve() -> None:
    deadline = time.monotonic() + float(os.environ.get("HUBOPS_FRONT_WAIT", "300"))
    while not os.path.exists(PEM):
        if time.monotonic() > deadline:
            raise SystemExit(f"hubops-front: no certificate at {PEM}: is the agent service running on this node?")
        time.sleep(0.5)
    check_haproxy_version()
    log(f"starting HAProxy with {CONFIG}")
    os.execvp("haproxy", ["haproxy", "-W", "-db", "-f", CONFIG])


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else "serve"
    if cmd == "agent":
        agent()
    elif cmd == "serve":
        serve()
    elif cmd == "check":  # front.py check CERT KEY NAME...: 0 when the pair may be served
        try:
            print(check(open(sys.argv[2], "rb").read(), open(sys.argv[3], "rb").read(), sys.argv[4:])[1])
        except ValueError as e:
            raise SystemExit(f"refused: {e}")
    else:
        raise SystemExit(f"usage: front.py serve|agent|check (not {cmd!r})")
