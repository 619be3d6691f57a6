"""40-tls: a certificate for the hub's public name, kept as Swarm secrets.

Modes: self-signed (a local CA under the operator folder), files (a certificate you already
have), acme (issued by an ACME server; hubops/stages/tls_acme.py). Certificate and key become
Swarm secrets with versioned names; 80-deploy points the hub at the newest. Undo:
runbooks/ops/teardown. The certificate arithmetic is in hubops/core/certs.py (pure).
"""
from __future__ import annotations

import logging

from hubops.core import operator, secrets
from hubops.core.certs import cert_info, chain_verifies, check_pair, issue_server_cert, make_ca, needs_reissue
from hubops.core.engine import Clients
from hubops.core.params import Loaded
from hubops.core.result import Result
from hubops.hub import running
from hubops.stages import tls_acme as acme_tls  # ACME through certbot's `acme` library

log = logging.getLogger("hubops")


def ensure_tls(p: Loaded, clients: Clients, *, dry_run: bool = False) -> Result:
    """A certificate for the hub's public name, stored as Swarm secrets tls-cert and tls-key."""
    r = Result("tls", dry_run=dry_run)
    c = clients.manager
    if p.tls.mode == "self-signed":
        fullchain, key, ca_pem = _self_signed(p, r, dry_run)
    elif p.tls.mode == "acme":
        fullchain, key = acme_tls.ensure_certificate(p, clients, r, dry_run=dry_run)
    else:
        f = p.tls.files
        cert_path, key_path = p.path(f.cert), p.path(f.key)
        fullchain, key = cert_path.read_bytes(), key_path.read_bytes()
        check_pair(fullchain, key, name=p.hub.public_name, source=str(cert_path))
        ca_pem = p.path(f.ca).read_bytes() if f.ca else None
        if ca_pem is not None:
            chain_verifies(fullchain, ca_pem, p.hub.public_name, source=str(cert_path))
        r.check(f"file {cert_path}", f"matches {key_path}, covers {p.hub.public_name}")
    if fullchain is None:  # dry run with nothing issued yet
        return r
    info = cert_info(fullchain)
    secrets.ensure_versioned(c, p, r, role="tls-cert", value=fullchain, stage="40-tls",
                             what=f"certificate for {', '.join(info.names)}")
    secrets.ensure_versioned(c, p, r, role="tls-key", value=key, stage="40-tls", what="its private key")
    r.facts.update({"mode": p.tls.mode, **info.to_dict(), "expires_in_days": round(info.days_left(), 1),
                    "clients_verify_with": running.trust_path(p)})
    if p.tls.mode == "acme":
        acme_tls.ensure_account_secret(p, c, r, stage="40-tls")
    return r


def _self_signed(p: Loaded, r: Result, dry_run: bool) -> tuple:
    """The local CA (made once) and a server certificate from it (re-issued when due)."""

    d = p.operator_path
    ca_pem, ca_key = operator.read(p, "ca.pem"), operator.read(p, "ca-key.pem")
    if ca_pem is None or ca_key is None:
        r.change("create", f"CA {d}/ca.pem", f"local CA for deployment {p.deployment} (key kept beside it, 0600)")
        if dry_run:
            r.change("create", f"certificate for {', '.join(p.cert_names)}", "issued by the new CA")
            return None, None, None
        ca_pem, ca_key = make_ca(f"hubops {p.deployment} CA")
        operator.folder(p)
        operator.write_private(d / "ca-key.pem", ca_key)
        operator.write_private(d / "ca.pem", ca_pem)
    else:
        r.keep(f"CA {d}/ca.pem", f"expires in {cert_info(ca_pem).days_left():.0f} days")
    cert, key = operator.read(p, "tls-cert.pem"), operator.read(p, "tls-key.pem")
    reason = needs_reissue(cert, names=p.cert_names, ca_pem=ca_pem, min_days=p.tls.self_signed.renew_days)
    if reason is None and key is not None:
        return cert, key, ca_pem
    r.change("create", f"certificate for {', '.join(p.cert_names)}", reason or "its key is missing")
    if dry_run:
        return (cert, key, ca_pem) if cert is not None and key is not None else (None, None, None)
    cert, key = issue_server_cert(ca_pem, ca_key, p.cert_names, days=p.tls.self_signed.days)
    operator.write_private(d / "tls-key.pem", key)
    operator.write_private(d / "tls-cert.pem", cert)
    return cert, key, ca_pem
