"""Certificates: a local CA, server and client certificates, and checks on the ones in use.

Pure functions over PEM bytes; nothing here talks to Docker or reads parameters. The 40-tls
stage and renew-tls store what these return in Swarm secrets; the lab makes its engines' TLS
with them. Stages and call `needs_reissue` to decide whether a stored certificate is
still good (which keeps re-running the TLS stage idempotent).
"""
from __future__ import annotations

import datetime as dt
import ipaddress
import logging
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hubops.core.errors import TLSError

log = logging.getLogger("hubops")

# Leaf certificates start a little in the past so that hosts whose clocks lag behind the
# one that issued them still accept them.
_BACKDATE = dt.timedelta(minutes=5)
_CN_MAX = 64  # X.520 upper bound on commonName; longer names go only into the SAN


# -- helpers ------------------------------------------------------------------------------
def _utcnow(now: dt.datetime | None = None) -> dt.datetime:
    if now is None:
        return dt.datetime.now(dt.timezone.utc)
    if now.tzinfo is None:  # naive datetimes are taken to be UTC
        return now.replace(tzinfo=dt.timezone.utc)
    return now.astimezone(dt.timezone.utc)


def _as_bytes(data: bytes | str) -> bytes:
    return data.encode() if isinstance(data, str) else data


def _load_certs(pem: bytes | str, source: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(_as_bytes(pem))
    except (ValueError, TypeError) as e:
        raise TLSError(
            f"{source}: not a PEM certificate ({e}); provide a file that starts with "
            "'-----BEGIN CERTIFICATE-----'"
        ) from e
    if not certs:  # pragma: no cover - cryptography raises instead of returning []
        raise TLSError(f"{source}: no certificate found; provide a PEM certificate")
    return certs


def _load_key(pem: bytes | str, source: str) -> Any:
    try:
        return serialization.load_pem_private_key(_as_bytes(pem), password=None)
    except TypeError as e:  # raised for encrypted keys when no password is given
        raise TLSError(
            f"{source}: the private key is encrypted; provide it unencrypted "
            "(e.g. `openssl pkey -in key.pem -out plain.pem`) and keep it in a secret"
        ) from e
    except (ValueError, UnsupportedAlgorithm) as e:
        raise TLSError(
            f"{source}: not a PEM private key ({e}); provide the key that belongs to the "
            "certificate, starting with '-----BEGIN PRIVATE KEY-----'"
        ) from e


def _spki(public_key: Any) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _sign_algorithm(key: Any) -> hashes.HashAlgorithm | None:
    # Ed25519/Ed448 sign without a separate digest; RSA and EC use SHA-256.
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):
        return None
    return hashes.SHA256()


def _cn(name: x509.Name) -> str:
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""


def _san_names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(n) for n in san.get_values_for_type(x509.DNSName)] + [
        str(ip) for ip in san.get_values_for_type(x509.IPAddress)
    ]


def _parse_name(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | str:
    """An IP address object, or the DNS name lowercased without a trailing dot."""
    name = name.strip()
    try:
        return ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return name.rstrip(".").lower()


def _dns_matches(pattern: str, name: str) -> bool:
    """RFC 6125 matching: exact, or a wildcard standing for exactly one leftmost label."""
    pattern = pattern.rstrip(".").lower()
    if pattern == name:
        return True
    if not pattern.startswith("*.") or name.startswith("*."):
        return False
    head, _, rest = name.partition(".")
    # "*.example.org" covers "hub.example.org", not "example.org" nor "a.b.example.org".
    return bool(head) and rest == pattern[2:] and "*" not in pattern[2:]


def _covers(cert: x509.Certificate, name: str) -> bool:
    wanted = _parse_name(name)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False  # browsers and Python's ssl ignore the CN, so we do too
    if isinstance(wanted, str):
        return any(_dns_matches(p, wanted) for p in san.get_values_for_type(x509.DNSName))
    return wanted in san.get_values_for_type(x509.IPAddress)


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _fmt_days(days: float) -> str:
    return f"{days:.1f} days"


# -- public API ---------------------------------------------------------------------------
@dataclass
class CertInfo:
    """What a certificate says about itself; no key material."""

    subject_cn: str
    names: list[str]  # subjectAltName entries, DNS names then IP addresses
    not_before: dt.datetime  # aware, UTC
    not_after: dt.datetime  # aware, UTC
    issuer_cn: str
    fingerprint_sha256: str  # lowercase hex, no colons
    self_signed: bool

    def days_left(self, now: dt.datetime | None = None) -> float:
        """Days until `not_after` (negative once expired)."""
        return (self.not_after - _utcnow(now)).total_seconds() / 86400

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe fields for the deployment record."""
        return {
            "subject_cn": self.subject_cn,
            "names": list(self.names),
            "not_before": self.not_before.isoformat(),
            "not_after": self.not_after.isoformat(),
            "issuer_cn": self.issuer_cn,
            "fingerprint_sha256": self.fingerprint_sha256,
            "self_signed": self.self_signed,
        }


def _info(cert: x509.Certificate) -> CertInfo:
    return CertInfo(
        subject_cn=_cn(cert.subject),
        names=_san_names(cert),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        issuer_cn=_cn(cert.issuer),
        fingerprint_sha256=cert.fingerprint(hashes.SHA256()).hex(),
        self_signed=cert.issuer == cert.subject and _issued_by(cert, cert),
    )


def make_ca(common_name: str, *, days: int = 3650) -> tuple[bytes, bytes]:
    """A new local CA (EC P-256). Returns (ca_cert_pem, ca_key_pem); the key is unencrypted PKCS8."""
    if not common_name or len(common_name) > _CN_MAX:
        raise TLSError(f"CA common name {common_name!r}: give 1 to {_CN_MAX} characters")
    if days <= 0:
        raise TLSError(f"CA {common_name!r}: days must be positive, got {days}")
    key = ec.generate_private_key(ec.SECP256R1())
    now = _utcnow()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    log.info("made local CA %r valid until %s", common_name, cert.not_valid_after_utc.isoformat())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _signing_ca(ca_cert_pem: bytes, ca_key_pem: bytes, what: str) -> tuple[x509.Certificate, Any]:
    """The CA certificate and its key, checked to belong together and to be still valid."""
    ca = _load_certs(ca_cert_pem, "CA certificate")[0]
    ca_key = _load_key(ca_key_pem, "CA key")
    if _spki(ca_key.public_key()) != _spki(ca.public_key()):
        raise TLSError(
            f"CA {_cn(ca.subject)!r}: the CA key does not belong to the CA certificate; "
            "pass the key that was made with it"
        )
    if ca.not_valid_after_utc <= _utcnow():
        raise TLSError(
            f"CA {_cn(ca.subject)!r} expired on {ca.not_valid_after_utc:%Y-%m-%d}; "
            f"make a new CA and re-issue the {what}s"
        )
    return ca, ca_key


def _sign_leaf(ca: x509.Certificate, ca_key: Any, *, subject: x509.Name, usage: x509.ObjectIdentifier,
               not_after: dt.datetime, san: x509.SubjectAlternativeName | None = None) -> tuple[bytes, bytes]:
    """A leaf certificate (EC P-256 key) for one extended key usage, signed by the CA: (cert_pem, key_pem)."""
    try:
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
            ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        )
    except x509.ExtensionNotFound:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.public_key())
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(max(_utcnow() - _BACKDATE, ca.not_valid_before_utc))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if san is not None:
        # With an empty subject the SAN must be critical (RFC 5280 4.2.1.6).
        builder = builder.add_extension(san, critical=not len(subject))
    leaf = (
        builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(aki, critical=False)
        .sign(ca_key, _sign_algorithm(ca_key))
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return leaf.public_bytes(serialization.Encoding.PEM), key_pem


def issue_server_cert(
    ca_cert_pem: bytes, ca_key_pem: bytes, names: list[str], *, days: int = 397
) -> tuple[bytes, bytes]:
    """A server certificate (EC P-256) for DNS names and IPs, signed by the CA.

    Returns (fullchain_pem, key_pem), fullchain = leaf + CA. The leaf never outlives the CA.
    """
    ca, ca_key = _signing_ca(ca_cert_pem, ca_key_pem, "server certificate")
    parsed: list[Any] = []
    for n in names:
        p = _parse_name(n) if isinstance(n, str) and n.strip() else None
        if p is None or p == "":
            raise TLSError(f"server certificate: invalid name {n!r} in {names!r}; give DNS names or IPs")
        if p not in parsed:
            parsed.append(p)
    if not parsed:
        raise TLSError("server certificate: no names given; give at least one DNS name or IP")
    if days <= 0:
        raise TLSError(f"server certificate for {names!r}: days must be positive, got {days}")
    not_after = _utcnow() + dt.timedelta(days=days)
    if not_after > ca.not_valid_after_utc:
        log.warning("server certificate for %s capped at the CA's expiry %s", parsed[0], ca.not_valid_after_utc)
        not_after = ca.not_valid_after_utc
    try:
        san = x509.SubjectAlternativeName(
            [x509.DNSName(p) if isinstance(p, str) else x509.IPAddress(p) for p in parsed]
        )
    except ValueError as e:  # e.g. non-ASCII names, which must be given as A-labels
        raise TLSError(f"server certificate: invalid name in {names!r} ({e}); give ASCII (A-label) DNS names") from e
    cn = str(parsed[0])
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if len(cn) <= _CN_MAX else [])
    leaf_pem, key_pem = _sign_leaf(ca, ca_key, subject=subject, usage=ExtendedKeyUsageOID.SERVER_AUTH,
                                   not_after=not_after, san=san)
    log.info(
        "issued server certificate for %s by CA %r, valid until %s",
        ", ".join(map(str, parsed)), _cn(ca.subject), not_after.isoformat(),
    )
    return leaf_pem + ca.public_bytes(serialization.Encoding.PEM), key_pem


def cert_info(cert_pem: bytes, *, source: str = "certificate") -> CertInfo:
    """What the first certificate in `cert_pem` (a single cert or a chain) says."""
    return _info(_load_certs(cert_pem, source)[0])


def check_pair(
    cert_pem: bytes,
    key_pem: bytes,
    *,
    name: str,
    source: str,
    now: dt.datetime | None = None,
    min_days: float = 0,
) -> CertInfo:
    """Check that a certificate and key belong together, cover `name` and are valid now.

    Raises TLSError naming `source` otherwise; returns the certificate's CertInfo.
    """
    cert = _load_certs(cert_pem, source)[0]
    key = _load_key(key_pem, source)
    info = _info(cert)
    if _spki(key.public_key()) != _spki(cert.public_key()):
        raise TLSError(
            f"{source}: the private key does not match the certificate for {info.subject_cn!r} "
            f"(sha256 {info.fingerprint_sha256[:16]}…); provide the key the certificate was issued for"
        )
    if not _covers(cert, name):
        listed = ", ".join(info.names) or "no subjectAltName at all"
        raise TLSError(
            f"{source}: the certificate does not cover {name!r} (it names {listed}); "
            f"issue one whose subjectAltName includes {name!r}, or change the hub's name"
        )
    t = _utcnow(now)
    if t < info.not_before:
        raise TLSError(
            f"{source}: the certificate is not valid before {info.not_before.isoformat()} "
            f"(now {t.isoformat()}); check this machine's clock or wait until then"
        )
    left = info.days_left(t)
    if left <= 0:
        raise TLSError(
            f"{source}: the certificate for {name!r} expired on {info.not_after.isoformat()}; "
            "renew it (runbooks/ops/renew-tls) or provide a current one"
        )
    if left <= min_days:
        raise TLSError(
            f"{source}: the certificate for {name!r} expires in {_fmt_days(left)} "
            f"({info.not_after.isoformat()}), within the required {min_days:g} days; "
            "renew it (runbooks/ops/renew-tls) or provide a newer one"
        )
    return info


def chain_verifies(
    fullchain_pem: bytes,
    ca_pem: bytes,
    name: str,
    *,
    now: dt.datetime | None = None,
    source: str = "certificate",
) -> None:
    """Verify that the leaf in `fullchain_pem` chains to a CA in `ca_pem` and is valid for `name`.

    Uses cryptography's web-PKI verifier (RFC 5280 + CA/B profile), which is stricter than
    OpenSSL about extensions. Raises TLSError when the chain does not verify.
    """
    from cryptography.x509 import verification as v

    chain = _load_certs(fullchain_pem, source)
    roots = _load_certs(ca_pem, f"{source} (CA)")
    wanted = _parse_name(name)
    try:
        subject = v.DNSName(wanted) if isinstance(wanted, str) else v.IPAddress(wanted)
        verifier = (
            v.PolicyBuilder().store(v.Store(roots)).time(_utcnow(now)).build_server_verifier(subject)
        )
        verifier.verify(chain[0], chain[1:])
    except (v.VerificationError, ValueError) as e:
        raise TLSError(
            f"{source}: the certificate for {_cn(chain[0].subject)!r} does not verify against CA "
            f"{_cn(roots[0].subject)!r} for {name!r}: {e}; re-issue it from this CA, or trust the CA "
            "that issued it"
        ) from e


def needs_reissue(
    cert_pem: bytes | None,
    *,
    names: list[str],
    ca_pem: bytes | None,
    min_days: float,
    now: dt.datetime | None = None,
) -> str | None:
    """None when the certificate is still good for `names`, else a short reason to re-issue.

    Good means: readable, issued by a CA in `ca_pem` (when given), covers every name, valid
    now and more than `min_days` left. An empty or unreadable certificate needs re-issue.
    """
    if not cert_pem:
        return "no certificate"
    try:
        cert = _load_certs(cert_pem, "certificate")[0]
    except TLSError:
        return "certificate is not readable PEM"
    if ca_pem is not None:
        try:
            cas = _load_certs(ca_pem, "CA")
        except TLSError:
            return "CA certificate is not readable PEM"
        if not any(_issued_by(cert, ca) for ca in cas):
            return "issued by another CA"
    for n in names:
        if not _covers(cert, n):
            return f"does not cover {n}"
    t = _utcnow(now)
    if t < cert.not_valid_before_utc:
        return f"not valid until {cert.not_valid_before_utc.isoformat()}"
    left = (cert.not_valid_after_utc - t).total_seconds() / 86400
    if left <= 0:
        return f"expired {_fmt_days(-left)} ago"
    if left <= min_days:
        return f"expires in {_fmt_days(left)}"
    return None


def issue_client_cert(
    ca_cert_pem: bytes, ca_key_pem: bytes, common_name: str, *, days: int = 397
) -> tuple[bytes, bytes]:
    """A client certificate (EC P-256, extendedKeyUsage clientAuth) signed by the CA.

    What a Docker engine started with `--tlsverify` asks its API clients for. Returns
    (cert_pem, key_pem): the leaf alone (the engine already trusts the CA). The leaf never
    outlives the CA.
    """
    ca, ca_key = _signing_ca(ca_cert_pem, ca_key_pem, "client certificate")
    if not common_name or len(common_name) > _CN_MAX:
        raise TLSError(f"client certificate common name {common_name!r}: give 1 to {_CN_MAX} characters")
    if days <= 0:
        raise TLSError(f"client certificate {common_name!r}: days must be positive, got {days}")
    not_after = min(_utcnow() + dt.timedelta(days=days), ca.not_valid_after_utc)
    cert_pem, key_pem = _sign_leaf(ca, ca_key, subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]),
                                   usage=ExtendedKeyUsageOID.CLIENT_AUTH, not_after=not_after)
    log.info("issued client certificate %r by CA %r, valid until %s",
             common_name, _cn(ca.subject), not_after.isoformat())
    return cert_pem, key_pem
