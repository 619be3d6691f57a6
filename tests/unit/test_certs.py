"""hubops.stages.tls: CA, issuance, checks, and a real TLS handshake with what it issues."""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import socket
import ssl
import threading
from collections.abc import Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hubops.core import certs as tls
from hubops.core.errors import HubopsError, TLSError

UTC = dt.timezone.utc


# -- fixtures -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ca() -> tuple[bytes, bytes]:
    return tls.make_ca("hubops test CA")


@pytest.fixture(scope="module")
def other_ca() -> tuple[bytes, bytes]:
    return tls.make_ca("some other CA")


@pytest.fixture(scope="module")
def server(ca: tuple[bytes, bytes]) -> tuple[bytes, bytes]:
    return tls.issue_server_cert(*ca, ["localhost", "hub.example.org", "127.0.0.1", "::1"])


def _cert(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificates(pem)[0]


def _ext(cert: x509.Certificate, cls: type) -> x509.Extension:
    return cert.extensions.get_extension_for_class(cls)


def _self_signed(key, *, cn: str = "bare", san: list[x509.GeneralName] | None = None) -> bytes:
    """A minimal self-signed certificate, optionally without any SAN."""
    now = dt.datetime.now(UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    b = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
    )
    if san is not None:
        b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def _key_pem(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _rsa_ca() -> tuple[bytes, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = dt.datetime.now(UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rsa CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


# -- make_ca ------------------------------------------------------------------------------
def test_make_ca_is_a_ca(ca: tuple[bytes, bytes]) -> None:
    cert_pem, key_pem = ca
    cert = _cert(cert_pem)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "hubops test CA"
    bc = _ext(cert, x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    ku = _ext(cert, x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
    ski = _ext(cert, x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(cert.public_key())
    assert key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS8, unencrypted
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    days = (cert.not_valid_after_utc - dt.datetime.now(UTC)).days
    assert 3648 <= days <= 3650
    assert tls.cert_info(cert_pem).self_signed


def test_make_ca_days_and_bad_input() -> None:
    cert_pem, _ = tls.make_ca("short", days=2)
    assert 1.9 < tls.cert_info(cert_pem).days_left() <= 2.01
    with pytest.raises(TLSError, match="days must be positive"):
        tls.make_ca("x", days=0)
    with pytest.raises(TLSError, match="common name"):
        tls.make_ca("")
    with pytest.raises(TLSError, match="common name"):
        tls.make_ca("c" * 65)


# -- issue_server_cert --------------------------------------------------------------------
def test_issue_server_cert(ca: tuple[bytes, bytes], server: tuple[bytes, bytes]) -> None:
    fullchain, key_pem = server
    certs = x509.load_pem_x509_certificates(fullchain)
    assert len(certs) == 2
    leaf, ca_cert = certs
    assert ca_cert == _cert(ca[0])
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "localhost"
    san = _ext(leaf, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "hub.example.org"]
    assert [str(i) for i in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    assert list(_ext(leaf, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not _ext(leaf, x509.BasicConstraints).value.ca
    aki = _ext(leaf, x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == _ext(ca_cert, x509.SubjectKeyIdentifier).value.digest
    leaf.verify_directly_issued_by(ca_cert)
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert key.public_key() == leaf.public_key()
    assert 396 <= (leaf.not_valid_after_utc - dt.datetime.now(UTC)).days <= 397


def test_issue_dedupes_and_normalises(ca: tuple[bytes, bytes]) -> None:
    fullchain, _ = tls.issue_server_cert(*ca, ["Hub.Example.org.", "hub.example.org", "10.0.0.1"], days=5)
    info = tls.cert_info(fullchain)
    assert info.names == ["hub.example.org", "10.0.0.1"]
    assert info.subject_cn == "hub.example.org"
    assert 4.9 < info.days_left() <= 5.01


def test_issue_long_name_goes_only_into_critical_san(ca: tuple[bytes, bytes]) -> None:
    long = ".".join(["a" * 30] * 3) + ".example.org"
    fullchain, _ = tls.issue_server_cert(*ca, [long])
    leaf = _cert(fullchain)
    assert len(leaf.subject) == 0
    assert _ext(leaf, x509.SubjectAlternativeName).critical
    assert tls.cert_info(fullchain).names == [long]


def test_issue_never_outlives_the_ca() -> None:
    short_ca = tls.make_ca("short-lived", days=3)
    fullchain, _ = tls.issue_server_cert(*short_ca, ["localhost"], days=397)
    assert tls.cert_info(fullchain).not_after == tls.cert_info(short_ca[0]).not_after


def test_issue_with_rsa_ca_verifies() -> None:
    rsa_ca = _rsa_ca()
    fullchain, key_pem = tls.issue_server_cert(*rsa_ca, ["localhost"])
    tls.chain_verifies(fullchain, rsa_ca[0], "localhost")
    assert tls.check_pair(fullchain, key_pem, name="localhost", source="t").issuer_cn == "rsa CA"


@pytest.mark.parametrize(
    ("names", "match"),
    [
        ([], "no names given"),
        ([""], "invalid name"),
        (["  "], "invalid name"),
        (["hüb.example.org"], "A-label"),
    ],
)
def test_issue_bad_names(ca: tuple[bytes, bytes], names: list[str], match: str) -> None:
    with pytest.raises(TLSError, match=match):
        tls.issue_server_cert(*ca, names)


def test_issue_bad_inputs(ca: tuple[bytes, bytes], other_ca: tuple[bytes, bytes]) -> None:
    with pytest.raises(TLSError, match="days must be positive"):
        tls.issue_server_cert(*ca, ["localhost"], days=0)
    with pytest.raises(TLSError, match="CA key does not belong to the CA certificate"):
        tls.issue_server_cert(ca[0], other_ca[1], ["localhost"])
    with pytest.raises(TLSError, match="CA certificate: not a PEM certificate"):
        tls.issue_server_cert(b"junk", ca[1], ["localhost"])
    with pytest.raises(TLSError, match="CA key: not a PEM private key"):
        tls.issue_server_cert(ca[0], ca[0], ["localhost"])


# -- CertInfo / cert_info -----------------------------------------------------------------
def test_cert_info_and_to_dict(ca: tuple[bytes, bytes], server: tuple[bytes, bytes]) -> None:
    info = tls.cert_info(server[0])
    leaf = _cert(server[0])
    assert info.subject_cn == "localhost"
    assert info.issuer_cn == "hubops test CA"
    assert info.names == ["localhost", "hub.example.org", "127.0.0.1", "::1"]
    assert info.fingerprint_sha256 == leaf.fingerprint(hashes.SHA256()).hex()
    assert len(info.fingerprint_sha256) == 64
    assert not info.self_signed
    assert info.not_before.tzinfo is not None and info.not_before.utcoffset() == dt.timedelta(0)
    assert info.not_after == leaf.not_valid_after_utc
    later = info.not_after - dt.timedelta(days=3, hours=12)
    assert info.days_left(later) == pytest.approx(3.5)
    assert info.days_left(later.replace(tzinfo=None)) == pytest.approx(3.5)  # naive = UTC
    assert info.days_left(info.not_after + dt.timedelta(days=1)) == pytest.approx(-1)
    d = info.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["not_after"] == info.not_after.isoformat()
    assert set(d) == {
        "subject_cn", "names", "not_before", "not_after", "issuer_cn", "fingerprint_sha256", "self_signed",
    }
    assert "PRIVATE" not in json.dumps(d)


def test_cert_info_accepts_str_and_names_source() -> None:
    pem = _self_signed(ec.generate_private_key(ec.SECP256R1()), cn="me")
    info = tls.cert_info(pem.decode())
    assert info.self_signed and info.subject_cn == info.issuer_cn == "me" and info.names == []
    with pytest.raises(TLSError, match=r"^tls\.files\.cert: not a PEM certificate"):
        tls.cert_info(b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n", source="tls.files.cert")
    with pytest.raises(TLSError, match=r"^certificate: not a PEM"):
        tls.cert_info(b"")


# -- check_pair ---------------------------------------------------------------------------
def test_check_pair_ok(server: tuple[bytes, bytes]) -> None:
    info = tls.check_pair(*server, name="hub.example.org", source="files", min_days=30)
    assert isinstance(info, tls.CertInfo) and info.subject_cn == "localhost"
    for name in ("localhost", "LOCALHOST.", "127.0.0.1", "::1", "[::1]"):
        assert tls.check_pair(*server, name=name, source="files").subject_cn == "localhost"


def test_check_pair_unparseable(server: tuple[bytes, bytes]) -> None:
    with pytest.raises(TLSError, match=r"^/etc/hub/cert\.pem: not a PEM certificate.*BEGIN CERTIFICATE"):
        tls.check_pair(b"hello", server[1], name="localhost", source="/etc/hub/cert.pem")
    with pytest.raises(TLSError, match=r"^tls\.files\.key: not a PEM private key.*provide the key"):
        tls.check_pair(server[0], b"hello", name="localhost", source="tls.files.key")


def test_check_pair_encrypted_key(server: tuple[bytes, bytes]) -> None:
    key = serialization.load_pem_private_key(server[1], password=None)
    enc = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"),
    )
    with pytest.raises(TLSError, match=r"key\.pem: the private key is encrypted; provide it unencrypted"):
        tls.check_pair(server[0], enc, name="localhost", source="key.pem")


def test_check_pair_key_mismatch(server: tuple[bytes, bytes]) -> None:
    other_key = _key_pem(ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(TLSError, match=r"^tls\.files: the private key does not match .*provide the key") as e:
        tls.check_pair(server[0], other_key, name="localhost", source="tls.files")
    assert isinstance(e.value, HubopsError)
    rsa_key = _key_pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    with pytest.raises(TLSError, match="does not match"):
        tls.check_pair(server[0], rsa_key, name="localhost", source="tls.files")


@pytest.mark.parametrize("name", ["other.example.org", "example.org", "127.0.0.2", "hub.example.org.evil"])
def test_check_pair_wrong_name(server: tuple[bytes, bytes], name: str) -> None:
    with pytest.raises(TLSError, match=rf"^src: the certificate does not cover '{name}'.*issue one") as e:
        tls.check_pair(*server, name=name, source="src")
    assert "hub.example.org" in str(e.value)  # lists what it does name


def test_check_pair_without_san_ignores_cn() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = _self_signed(key, cn="hub.example.org")
    with pytest.raises(TLSError, match="no subjectAltName"):
        tls.check_pair(pem, _key_pem(key), name="hub.example.org", source="s")


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("hub.example.org", True),
        ("HUB.example.org", True),
        ("x-1.example.org", True),
        ("*.example.org", True),  # the wildcard itself, literally
        ("example.org", False),  # a wildcard does not cover the bare domain
        ("a.hub.example.org", False),  # ...nor more than one label
        ("hub.example.com", False),
        ("hubexample.org", False),
    ],
)
def test_check_pair_wildcard(ca: tuple[bytes, bytes], name: str, ok: bool) -> None:
    fullchain, key = tls.issue_server_cert(*ca, ["*.example.org"])
    if ok:
        assert tls.check_pair(fullchain, key, name=name, source="w").subject_cn == "*.example.org"
    else:
        with pytest.raises(TLSError, match="does not cover"):
            tls.check_pair(fullchain, key, name=name, source="w")


def test_check_pair_times(server: tuple[bytes, bytes]) -> None:
    info = tls.cert_info(server[0])
    with pytest.raises(TLSError, match=r"^t: the certificate is not valid before .*check this machine's clock"):
        tls.check_pair(*server, name="localhost", source="t", now=info.not_before - dt.timedelta(hours=1))
    with pytest.raises(TLSError, match=r"^t: the certificate for 'localhost' expired on .*renew it"):
        tls.check_pair(*server, name="localhost", source="t", now=info.not_after + dt.timedelta(seconds=1))
    near = info.not_after - dt.timedelta(days=3.2)
    with pytest.raises(TLSError, match=r"expires in 3\.2 days .*within the required 7 days; renew it"):
        tls.check_pair(*server, name="localhost", source="t", now=near, min_days=7)
    assert tls.check_pair(*server, name="localhost", source="t", now=near, min_days=3)


# -- chain_verifies -----------------------------------------------------------------------
def test_chain_verifies(ca: tuple[bytes, bytes], server: tuple[bytes, bytes]) -> None:
    for name in ("localhost", "hub.example.org", "127.0.0.1", "::1"):
        assert tls.chain_verifies(server[0], ca[0], name) is None
    leaf_only = x509.load_pem_x509_certificates(server[0])[0].public_bytes(serialization.Encoding.PEM)
    assert tls.chain_verifies(leaf_only, ca[0], "localhost") is None


def test_chain_verifies_ca_bundle(ca: tuple[bytes, bytes], other_ca: tuple[bytes, bytes],
                                  server: tuple[bytes, bytes]) -> None:
    assert tls.chain_verifies(server[0], other_ca[0] + ca[0], "localhost") is None


def test_chain_verifies_other_ca(other_ca: tuple[bytes, bytes], server: tuple[bytes, bytes]) -> None:
    with pytest.raises(TLSError, match=r"'localhost' does not verify against CA 'some other CA'.*re-issue"):
        tls.chain_verifies(server[0], other_ca[0], "localhost")


def test_chain_verifies_wrong_name(ca: tuple[bytes, bytes], server: tuple[bytes, bytes]) -> None:
    with pytest.raises(TLSError, match=r"for 'nope\.example\.org'"):
        tls.chain_verifies(server[0], ca[0], "nope.example.org")
    with pytest.raises(TLSError, match=r"for '10\.9\.9\.9'"):
        tls.chain_verifies(server[0], ca[0], "10.9.9.9")


def test_chain_verifies_expired(ca: tuple[bytes, bytes], server: tuple[bytes, bytes]) -> None:
    later = tls.cert_info(server[0]).not_after + dt.timedelta(days=1)
    with pytest.raises(TLSError, match="does not verify"):
        tls.chain_verifies(server[0], ca[0], "localhost", now=later)


def test_chain_verifies_self_signed_leaf(ca: tuple[bytes, bytes]) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = _self_signed(key, cn="localhost", san=[x509.DNSName("localhost")])
    with pytest.raises(TLSError, match="does not verify"):
        tls.chain_verifies(pem, ca[0], "localhost")


def test_chain_verifies_unparseable(ca: tuple[bytes, bytes], server: tuple[bytes, bytes]) -> None:
    with pytest.raises(TLSError, match=r"^chain\.pem: not a PEM certificate"):
        tls.chain_verifies(b"x", ca[0], "localhost", source="chain.pem")
    with pytest.raises(TLSError, match=r"^chain\.pem \(CA\): not a PEM certificate"):
        tls.chain_verifies(server[0], b"x", "localhost", source="chain.pem")


# -- needs_reissue ------------------------------------------------------------------------
def test_needs_reissue_good(ca: tuple[bytes, bytes], server: tuple[bytes, bytes]) -> None:
    names = ["localhost", "hub.example.org", "127.0.0.1"]
    assert tls.needs_reissue(server[0], names=names, ca_pem=ca[0], min_days=30) is None
    assert tls.needs_reissue(server[0], names=names, ca_pem=None, min_days=30) is None
    assert tls.needs_reissue(server[0], names=[], ca_pem=None, min_days=0) is None


def test_needs_reissue_reasons(ca: tuple[bytes, bytes], other_ca: tuple[bytes, bytes],
                               server: tuple[bytes, bytes]) -> None:
    info = tls.cert_info(server[0])
    kw = {"names": ["localhost"], "min_days": 30}
    near = info.not_after - dt.timedelta(days=3.2)
    assert tls.needs_reissue(server[0], ca_pem=ca[0], now=near, **kw) == "expires in 3.2 days"
    assert tls.needs_reissue(server[0], ca_pem=ca[0], now=near, names=["localhost"], min_days=3) is None
    after = info.not_after + dt.timedelta(days=2)
    assert tls.needs_reissue(server[0], ca_pem=ca[0], now=after, **kw) == "expired 2.0 days ago"
    before = info.not_before - dt.timedelta(days=1)
    assert tls.needs_reissue(server[0], ca_pem=ca[0], now=before, **kw).startswith("not valid until ")
    assert (
        tls.needs_reissue(server[0], names=["localhost", "jupyter.example.org"], ca_pem=ca[0], min_days=1)
        == "does not cover jupyter.example.org"
    )
    assert tls.needs_reissue(server[0], ca_pem=other_ca[0], **kw) == "issued by another CA"
    assert tls.needs_reissue(b"", ca_pem=ca[0], **kw) == "no certificate"
    assert tls.needs_reissue(None, ca_pem=ca[0], **kw) == "no certificate"
    assert tls.needs_reissue(b"garbage", ca_pem=ca[0], **kw) == "certificate is not readable PEM"
    assert tls.needs_reissue(server[0], ca_pem=b"garbage", **kw) == "CA certificate is not readable PEM"


def test_needs_reissue_drives_idempotent_reissue(ca: tuple[bytes, bytes]) -> None:
    names = ["hub.example.org"]
    stored = None
    issued = 0
    for wanted in (names, names, [*names, "10.1.2.3"], [*names, "10.1.2.3"]):
        if tls.needs_reissue(stored, names=wanted, ca_pem=ca[0], min_days=30):
            stored, _ = tls.issue_server_cert(*ca, wanted)
            issued += 1
    assert issued == 2
    assert tls.cert_info(stored).names == ["hub.example.org", "10.1.2.3"]


# -- a real handshake ---------------------------------------------------------------------
@contextlib.contextmanager
def _tls_server(tmp_path, fullchain: bytes, key: bytes) -> Iterator[tuple[int, list]]:
    """Serve TLS on 127.0.0.1 in a thread; yields (port, server-side errors)."""
    (tmp_path / "fullchain.pem").write_bytes(fullchain)
    (tmp_path / "key.pem").write_bytes(key)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "fullchain.pem", tmp_path / "key.pem")
    sock = socket.create_server(("127.0.0.1", 0))
    sock.settimeout(0.1)  # poll, so that the thread notices `stop` quickly
    errors: list[BaseException] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(10)
            try:
                with ctx.wrap_socket(conn, server_side=True) as s:
                    s.sendall(b"hello from hubops\n")
            except (ssl.SSLError, OSError) as e:
                errors.append(e)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield sock.getsockname()[1], errors
    finally:
        stop.set()
        sock.close()
        t.join(timeout=5)


def _client(ca_pem: bytes) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=ca_pem.decode())
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT  # as Python 3.13+ defaults: our certs must pass it
    return ctx


def _fetch(ctx: ssl.SSLContext, port: int, server_hostname: str) -> tuple[bytes, dict]:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=server_hostname) as s,
    ):
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(100)
            if not chunk:
                break
            data += chunk
        return data, s.getpeercert()


@pytest.mark.parametrize("hostname", ["localhost", "127.0.0.1"])
def test_handshake_trusting_only_our_ca(tmp_path, ca: tuple[bytes, bytes], server: tuple[bytes, bytes],
                                        hostname: str) -> None:
    with _tls_server(tmp_path, *server) as (port, errors):
        data, peer = _fetch(_client(ca[0]), port, hostname)
    assert data == b"hello from hubops\n"
    assert ("DNS", "localhost") in peer["subjectAltName"]
    assert dict(x[0] for x in peer["issuer"])["commonName"] == "hubops test CA"
    assert errors == []


def test_handshake_fails_against_other_ca(tmp_path, other_ca: tuple[bytes, bytes],
                                          server: tuple[bytes, bytes]) -> None:
    with _tls_server(tmp_path, *server) as (port, errors), pytest.raises(ssl.SSLCertVerificationError) as e:
        _fetch(_client(other_ca[0]), port, "localhost")
    assert e.value.verify_code in (19, 20)  # self-signed in chain / unable to get local issuer
    assert "certificate verify failed" in str(e.value)
    assert len(errors) == 1 and isinstance(errors[0], ssl.SSLError)  # the server saw the client's alert


def test_handshake_fails_for_wrong_hostname(tmp_path, ca: tuple[bytes, bytes],
                                            server: tuple[bytes, bytes]) -> None:
    with (
        _tls_server(tmp_path, *server) as (port, _errors),
        pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"),
    ):
        _fetch(_client(ca[0]), port, "other.example.org")
