"""Parameter files: valid ones load; every kind of bad input is refused before any Docker call,
with the file, the key path and what to do."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from hubops.core.errors import ParameterError
from hubops.core.params import load_params, parse_userlist

PROJECT = Path(__file__).resolve().parents[2]

BASE = """
deployment: t1
hosts:
  managers:
    - {name: m1, url: "unix:///var/run/docker.sock", advertise_addr: 127.0.0.1}
auth:
  userlist: users
"""


def write(tmp_path: Path, body: str, users: str = "ann admin\nbob\n") -> Path:
    (tmp_path / "users").write_text(users)
    f = tmp_path / "p.yaml"
    f.write_text(textwrap.dedent(body))
    return f


def test_shipped_local_parameters_load():
    p = load_params(PROJECT / "parameters/local.yaml")
    assert p.deployment == "local"
    assert p.hub_url == "https://localhost:8443"
    assert p.admins == ["operator"] and "alice" in p.allowed
    assert p.network.endpoint_mode == "dnsrr"
    assert p.hub_host.name == "local"


def test_production_example_is_valid_when_its_secret_is_set(monkeypatch, tmp_path):
    monkeypatch.setenv("GITHUB_CLIENT_SECRET", "s3cr3t-value")
    example = PROJECT / "parameters/production.example.yaml"
    # The example names client certificates under /etc/hubops/certs: point them at stand-ins.
    text = example.read_text()
    for path in ("/etc/hubops/certs",):
        text = text.replace(path, str(tmp_path))
    # Certificates must match their keys (checked at load): real pairs, made here.
    for cert, key in (("cert.pem", "key.pem"), ("fullchain.pem", "privkey.pem")):
        c, k = _cert_and_key()
        (tmp_path / cert).write_bytes(c)
        (tmp_path / key).write_bytes(k)
    (tmp_path / "ca.pem").write_bytes(_cert_and_key()[0])
    (tmp_path / "userlist").write_text((PROJECT / "parameters/production.userlist").read_text())
    copy = tmp_path / "production.yaml"
    copy.write_text(text.replace("production.userlist", "userlist"))
    p = load_params(copy)
    assert p.auth.mode == "github" and len(p.hosts.workers) == 2
    assert p.hub_url.startswith("https://") and p.tls.mode == "files"


def _cert_and_key() -> tuple[bytes, bytes]:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "stand-in")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=30)).sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def test_minimal_file_gets_defaults(tmp_path):
    p = load_params(write(tmp_path, BASE))
    assert p.prefix == "hubops-t1"
    assert p.network_name == "hubops-t1" and p.hub_service == "hubops-t1-hub"
    assert p.tls.mode == "self-signed" and p.auth.mode == "shared-password"


@pytest.mark.parametrize(
    "patch, key, hint",
    [
        ("deployment: T1!", "deployment", "lower-case"),
        ("surprise: 1", "surprise", "unknown key"),
        ("hub: {https_port: seventy}", "hub.https_port", "integer"),
        ("hub: {https_port: 70000}", "hub.https_port", "65535"),
        ("network: {subnet: 10.1.2.3/33}", "network.subnet", "CIDR"),
        ("network: {subnet: 10.1.2.3/24}", "network.subnet", "host bits"),
        ("network: {endpoint_mode: ipvs}", "network.endpoint_mode", "dnsrr"),
        ("tls: {mode: files}", "tls", "files: {cert"),
        ("tls: {mode: acme-magic}", "tls.mode", "self-signed"),
        ("auth: {mode: github, userlist: users}", "auth", "client_secret"),
        ("swarm: {hub_node: nobody}", "(top level)", "not a manager"),
        ("hub: {public_name: 'bad name'}", "hub.public_name", "DNS name"),
    ],
)
def test_bad_values_name_file_and_key(tmp_path, patch, key, hint):
    body = BASE + patch + "\n"
    # A later top-level key replaces the earlier one (auth), so the file stays one YAML mapping.
    if patch.startswith("auth:"):
        body = body.replace("auth:\n  userlist: users\n", "")
    if patch.startswith("deployment:"):  # a key given twice is refused on its own
        body = body.replace("deployment: t1\n", "")
    f = write(tmp_path, body)
    with pytest.raises(ParameterError) as e:
        load_params(f)
    msg = str(e.value)
    assert str(f) in msg and f"{key}:" in msg and hint in msg, msg


def test_no_manager(tmp_path):
    f = write(tmp_path, BASE.replace(
        '  managers:\n    - {name: m1, url: "unix:///var/run/docker.sock", advertise_addr: 127.0.0.1}\n',
        "  managers: []\n"))
    with pytest.raises(ParameterError, match=r"hosts\.managers: at least one manager"):
        load_params(f)


def test_tcp_engine_without_tls_refused(tmp_path):
    f = write(tmp_path, BASE.replace('"unix:///var/run/docker.sock"', '"tcp://10.0.0.5:2376"'))
    with pytest.raises(ParameterError, match=r"hosts\.managers\[0\]: .*tls"):
        load_params(f)


def test_duplicate_hosts_and_missing_advertise_addr(tmp_path):
    dup = BASE + "  workers:\n    - {name: m1, url: 'ssh://a@b', advertise_addr: 10.0.0.2}\n"
    dup = dup.replace("auth:\n  userlist: users\n", "") + "auth:\n  userlist: users\n"
    with pytest.raises(ParameterError, match="appears twice"):
        load_params(write(tmp_path, dup.replace("hosts:\n  managers", "hosts:\n  managers", 1)))
    no_addr = BASE.replace(", advertise_addr: 127.0.0.1", "") .replace(
        "auth:", "") .replace("  userlist: users\n", "")
    no_addr = no_addr.replace("hosts:\n", "hosts:\n  workers:\n    - {name: w1, url: 'ssh://a@b'}\n") + "auth:\n  userlist: users\n"
    with pytest.raises(ParameterError, match="advertise_addr"):
        load_params(write(tmp_path, no_addr))


def test_secret_reference_must_be_a_reference(tmp_path, monkeypatch):
    body = BASE.replace("auth:\n  userlist: users\n", "") + textwrap.dedent("""
    auth:
      mode: github
      userlist: users
      github: {client_id: abc, client_secret: plain-text-secret}
    """)
    with pytest.raises(ParameterError, match=r"auth\.github\.client_secret"):
        load_params(write(tmp_path, body))
    body2 = body.replace("plain-text-secret", "{env: HUBOPS_TEST_UNSET_SECRET}")
    monkeypatch.delenv("HUBOPS_TEST_UNSET_SECRET", raising=False)
    with pytest.raises(ParameterError, match="HUBOPS_TEST_UNSET_SECRET is not set"):
        load_params(write(tmp_path, body2))
    monkeypatch.setenv("HUBOPS_TEST_UNSET_SECRET", "value")
    assert load_params(write(tmp_path, body2)).auth.mode == "github"


def test_missing_file_named(tmp_path):
    body = BASE + "tls: {mode: files, files: {cert: nope.pem, key: nope.key}}\n"
    with pytest.raises(ParameterError, match=r"tls\.files\.cert: file .*nope\.pem does not exist"):
        load_params(write(tmp_path, body))


def test_yaml_errors_and_non_mapping(tmp_path):
    with pytest.raises(ParameterError, match="not valid YAML"):
        load_params(write(tmp_path, "deployment: [unclosed\n"))
    with pytest.raises(ParameterError, match="mapping"):
        load_params(write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ParameterError, match="cannot read"):
        load_params(tmp_path / "absent.yaml")


@pytest.mark.parametrize(
    "text, match",
    [
        ("", "lists no users"),
        ("# only a comment\n", "lists no users"),
        ("ann\nbob\n", "no admin"),
        ("ann admin\nann\n", "listed twice"),
        ("ann superuser\n", "'name' or 'name admin'"),
        ("ann admin extra\n", "'name' or 'name admin'"),
        ("Bad/Name admin\n", "not a valid user name"),
    ],
)
def test_bad_userlists(tmp_path, text, match):
    f = tmp_path / "users"
    f.write_text(text)
    with pytest.raises(ParameterError, match=match) as e:
        parse_userlist(f, tmp_path / "p.yaml")
    assert "auth.userlist" in str(e.value)


def test_userlist_parsed_like_the_original_guide(tmp_path):
    f = tmp_path / "users"
    f.write_text("jtyberg admin\n# comment\n  alice  \nbob # trailing comment\n")
    assert parse_userlist(f, tmp_path / "p.yaml") == {"jtyberg": True, "alice": False, "bob": False}


def test_all_problems_reported_at_once(tmp_path):
    f = write(tmp_path, BASE + "hub: {https_port: x, colour: red}\n")
    with pytest.raises(ParameterError) as e:
        load_params(f)
    assert "hub.https_port" in str(e.value) and "hub.colour" in str(e.value)
