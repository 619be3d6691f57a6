"""renew-tls: a new certificate for the hub when the current one nears expiry, served without
losing users' servers.

Renews when fewer than `renew_days` days are left (`tls.acme.renew_days` or
`tls.self_signed.renew_days`), or always with `force`; otherwise changes nothing. A renewal gets
a new certificate and key (ACME, or the local CA in self-signed mode), stores them as new
versions of the Swarm secrets `tls-cert` and `tls-key`, updates the hub service to them
(80-deploy's `ensure_hub`, which then removes the old versions), checks that the hub serves the
new certificate (SHA-256 fingerprints compared), and that every user's server that answered
before still answers. Two renewals of one deployment never overlap: a run holds
``renew-tls.lock`` in the operator folder (flock), and one that finds it held stops at once,
changing nothing. The hub restarts once: how long it stopped answering is measured by
polling /hub/health every 0.2 s during the update and recorded as `downtime_s`.
"""
from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import socket
import ssl
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from hubops.hub import running
from hubops.core import certs
from hubops.stages import deploy, front
from hubops.core import operator, secrets
from hubops.core.engine import Clients
from hubops.core.errors import HubopsError, TLSError, VerifyError
from hubops.core.params import Loaded
from hubops.core.result import Result

log = logging.getLogger("hubops")
STAGE = "renew-tls"
POLL_INTERVAL = 0.2
LOCK = "renew-tls.lock"  # in the operator folder: held while a renewal runs


def served_certificate(p: Loaded, *, timeout: float = 10) -> tuple[str, bytes]:
    """(SHA-256 fingerprint, DER) of the certificate the hub serves, verified like clients do."""
    verify = running.trust_path(p)
    ctx = ssl.create_default_context(cafile=verify if isinstance(verify, str) else None)
    host, port = p.hub.public_name, p.hub.https_port
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            with ctx.wrap_socket(sock, server_hostname=host) as s:
                der = s.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError) as e:
        raise VerifyError(f"{p.hub_url}: cannot read the served certificate ({e.__class__.__name__}: {e})") from e
    return hashlib.sha256(der).hexdigest(), der


def _kept(p: Loaded) -> tuple[bytes | None, bytes | None]:
    return operator.read(p, "tls-cert.pem"), operator.read(p, "tls-key.pem")


def _renew_days(p: Loaded) -> int:
    return p.tls.acme.renew_days if p.tls.mode == "acme" else p.tls.self_signed.renew_days


class HealthPoller:
    """GET /hub/health every `interval` s in a thread; the longest time without an answer."""

    def __init__(self, p: Loaded, interval: float = POLL_INTERVAL):
        self.p, self.interval = p, interval
        self.ok_times: list[float] = []
        self.failures = 0
        self.probes = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, name="hubops-health-poller", daemon=True)

    def _run(self) -> None:
        s = running.hub_session(self.p)
        url = f"{self.p.hub_url}/hub/health"
        while not self._stop.is_set():
            t = time.monotonic()
            try:
                ok = s.get(url, timeout=2).status_code == 200
            except Exception:  # noqa: BLE001 - any failure is "not answering"
                ok = False
            self.probes += 1
            if ok:
                self.ok_times.append(time.monotonic())
            else:
                self.failures += 1
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - t)))

    def __enter__(self) -> "HealthPoller":
        self.t0 = time.monotonic()
        self._t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._t.join(timeout=10)
        self.t1 = time.monotonic()

    @property
    def longest_gap(self) -> float:
        """Seconds between two consecutive answers, at most (from the start or to the end if the
        hub did not answer then)."""
        points = [self.t0, *self.ok_times, self.t1] if self.ok_times else [self.t0, self.t1]
        gaps = [b - a for a, b in zip(points, points[1:])]
        return round(max(gaps), 2) if gaps else 0.0


def ready_servers(users: list[dict]) -> list[str]:
    """Every ready server in the hub's user models (GET /hub/api/users), default and named, as its
    path under /user/: `alice`, `alice/gpu` (pure)."""
    return sorted(f"{u['name']}/{name}" if name else u["name"]
                  for u in users for name, s in (u.get("servers") or {}).items() if (s or {}).get("ready"))


def _running_servers(api) -> list[str]:
    return ready_servers(api.users())  # page by page: one answer holds at most 200 users


def _answers(api, server: str) -> bool:
    """`server`: a path of _running_servers (a user's name, or USER/SERVER-NAME for a named server)."""
    try:
        api.request("GET", f"/user/{server}/api/status")
        return True
    except VerifyError:
        return False


@contextmanager
def exclusive(p: Loaded) -> Iterator[Path]:
    """Hold the deployment's renewal lock (LOCK in the operator folder) for the block; a
    HubopsError at once when another renew-tls of the deployment holds it (on this machine)."""
    operator.folder(p)
    path = p.operator_path / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise HubopsError(
                f"another renew-tls of deployment {p.deployment} is running (it holds {path}); nothing was done. "
                "Let it finish (a scheduled run does too), then look at its record (`hubops record list`)"
            ) from None
        yield path
    finally:
        os.close(fd)  # releases the lock


def renew_tls(p: Loaded, clients: Clients, *, force: bool = False, dry_run: bool = False) -> Result:
    """Renew the hub's certificate when due (or `force`), rotate its Swarm secrets, update the hub.
    Two renewals of one deployment never overlap (`exclusive`); a plan takes no lock."""
    if dry_run:
        return _renew_tls(p, clients, force=force, dry_run=True)
    with exclusive(p):
        return _renew_tls(p, clients, force=force, dry_run=False)


def _renew_tls(p: Loaded, clients: Clients, *, force: bool, dry_run: bool) -> Result:

    r = Result("renew-tls", dry_run=dry_run)
    if p.tls.mode == "files":
        raise TLSError("tls.mode files: hubops cannot renew a certificate it did not issue; replace the files named "
                       "in tls.files, then run 40-tls and 80-deploy")
    cert, key = _kept(p)
    if cert is None or key is None:
        raise TLSError(f"no certificate in {p.operator_path}: deploy first (40-tls issues it)")
    info = certs.cert_info(cert)
    days = _renew_days(p)
    reason = certs.needs_reissue(cert, names=p.cert_names, ca_pem=None, min_days=days)
    served_fp, _ = served_certificate(p)
    r.facts.update({"mode": p.tls.mode, "renew_days": days, "old_not_after": info.not_after.isoformat(),
                    "old_fingerprint_sha256": info.fingerprint_sha256})
    if reason is None and not force:
        r.keep(f"certificate for {', '.join(p.cert_names)}",
               f"{info.days_left():.0f} days left, renewal due at {days}: nothing to do (force=true renews anyway)")
        if served_fp == info.fingerprint_sha256:
            r.check(f"{p.hub_url}", f"serves it (sha256 {served_fp[:16]}…)")
            r.facts["expires_in_days"] = round(info.days_left(), 1)
            return r
        # Issued but not served yet (80-deploy did not run after 40-tls): update the hub below.
        why = f"the hub serves another certificate (sha256 {served_fp[:16]}…)"
    else:
        why = "forced" if reason is None else reason
        r.change("create", f"certificate for {', '.join(p.cert_names)}", f"renewal: {why}")
    if dry_run:
        if p.front.enabled:
            r.change("update", f"service {front.agent_service(p)}", "to the new certificate's secrets; the TLS front "
                     "swaps it through its runtime API (nothing restarts)")
        else:
            r.change("update", f"service {p.hub_service}", "to the new certificate's secrets (the hub restarts once)")
        return r

    api = running.HubAPI(p)
    before = _running_servers(api)
    answering = [u for u in before if _answers(api, u)]
    if r.changed:
        if p.tls.mode == "acme":
            from hubops.stages import tls_acme as acme_tls

            issued = acme_tls.issue(p, clients, r, stage=STAGE)
            cert, key = issued.fullchain, issued.key
        else:
            cert, key = _reissue_self_signed(p)
        info = certs.cert_info(cert)
    c = clients.manager
    if p.front.enabled:  # the TLS front serves nothing it would refuse: checked before any secret or swap
        front.check_pair(cert, key, p, source="renewed certificate")
    secrets.ensure_versioned(c, p, r, role="tls-cert", value=cert, stage=STAGE,
                             what=f"certificate for {', '.join(info.names)}")
    secrets.ensure_versioned(c, p, r, role="tls-key", value=key, stage=STAGE, what="its private key")
    if p.tls.mode == "acme":
        from hubops.stages import tls_acme as acme_tls

        acme_tls.ensure_account_secret(p, c, r, stage=STAGE)

    # Only the certificate changes: the hub keeps the image it runs (an upgrade is another runbook).
    svc = running.find_service(c, p)
    image = running.service_image(svc) if svc else None
    swapped: dict[str, Any] = {}
    with HealthPoller(p) as poll:
        if p.front.enabled:
            # The front swaps the certificate through HAProxy's runtime API: no restart (stages/front.py).
            hub = Result("front", dry_run=False)
            swapped = front.swap_certificate(p, clients, hub, cert, key, stage=STAGE, served=served_certificate)
            secrets.prune_unused(c, p, hub, keep=set())
        else:
            hub = deploy.ensure_hub(p, clients, hub_image=image)
        time.sleep(1)  # a few answers after the update, so the gap is closed by a real answer
    r.items += hub.items
    new_fp, _ = served_certificate(p)
    if new_fp != info.fingerprint_sha256:
        raise VerifyError(f"{p.hub_url} serves the certificate sha256 {new_fp[:16]}…, not the renewed one "
                          f"{info.fingerprint_sha256[:16]}…; see `docker service ps {p.hub_service}`")
    r.check(f"{p.hub_url}", f"serves the new certificate (sha256 {new_fp[:16]}…, was {served_fp[:16]}…)")
    survived = [u for u in answering if _answers(api, u)]
    lost = sorted(set(answering) - set(survived))
    if lost:
        raise VerifyError(f"users' servers stopped answering after the renewal: {', '.join(lost)}; "
                          "see `docker service ls` and the hub's log")
    r.check("users' servers", f"{len(survived)} answered before and after ({', '.join(survived) or 'none running'})")
    r.facts.update({
        "new_not_after": info.not_after.isoformat(), "new_fingerprint_sha256": info.fingerprint_sha256,
        "expires_in_days": round(info.days_left(), 1),
        "downtime_s": poll.longest_gap, "health_probes": poll.probes, "health_failures": poll.failures,
        "servers_survived": survived, "hub_answered_after_s": hub.facts.get("answered_after_s"),
        **({"front": swapped} if swapped else {}),
    })
    log.info("renewed the hub's certificate; the hub did not answer for %.2f s at most", poll.longest_gap)
    return r


def _reissue_self_signed(p: Loaded) -> tuple[bytes, bytes]:
    ca_pem, ca_key = operator.read(p, "ca.pem"), operator.read(p, "ca-key.pem")
    if ca_pem is None or ca_key is None:
        raise HubopsError(f"the local CA is missing from {p.operator_path}: run 40-tls first")
    cert, key = certs.issue_server_cert(ca_pem, ca_key, p.cert_names, days=p.tls.self_signed.days)
    operator.write_private(p.operator_path / "tls-key.pem", key)
    operator.write_private(p.operator_path / "tls-cert.pem", cert)
    return cert, key
