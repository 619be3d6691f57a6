"""Parameters of tls.mode acme and auth.mode github: valid ones load; wrong or unsafe ones are
refused when the file is read (fail closed), before any Docker or ACME call, naming the file and
the key path."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from hubops.hub import running
from hubops.core.errors import ParameterError
from hubops.core.params import ACME_DIRECTORIES, load_params

HEAD = """
deployment: t1
hosts:
  managers:
    - {name: m1, url: "unix:///var/run/docker.sock", advertise_addr: 127.0.0.1}
"""
ACME = """
hub: {public_name: hub.example.org}
tls:
  mode: acme
  acme: {directory_url: "https://acme.example.org/dir", email: ops@example.org}
auth:
  userlist: users
"""
GITHUB = """
auth:
  mode: github
  userlist: users
  github:
    client_id: cid
    client_secret: {env: HUBOPS_T_GH_SECRET}
"""


def write(tmp_path: Path, body: str, users: str = "ann admin\nbob\n") -> Path:
    (tmp_path / "users").write_text(users)
    f = tmp_path / "p.yaml"
    f.write_text(textwrap.dedent(HEAD) + textwrap.dedent(body))
    return f


# -- tls.mode acme ------------------------------------------------------------------------
def test_acme_loads_with_defaults(tmp_path):
    p = load_params(write(tmp_path, ACME))
    a = p.tls.acme
    assert p.tls.mode == "acme" and a.renew_days == 30 and a.challenge == "http-01"
    assert a.account_key is None and a.ca_bundle is None and a.public_addr is None
    assert running.trust_path(p) is True  # a public CA: the system roots


def test_acme_ca_bundle_is_what_clients_trust(tmp_path):
    (tmp_path / "pebble.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    p = load_params(write(tmp_path, ACME.replace("email: ops@example.org}", "email: ops@example.org, ca_bundle: pebble.pem}")))
    assert running.trust_path(p) == str(tmp_path / "pebble.pem")


@pytest.mark.parametrize("name,url", sorted(ACME_DIRECTORIES.items()))
def test_acme_directory_by_name(tmp_path, name, url):
    p = load_params(write(tmp_path, ACME.replace('"https://acme.example.org/dir"', name)))
    assert p.tls.acme.directory_url == url


@pytest.mark.parametrize("patch,key,hint", [
    ('directory_url: "http://acme.example.org/dir"', "tls.acme.directory_url", "starts with https://"),
    ('directory_url: "acme.example.org"', "tls.acme.directory_url", "starts with https://"),
    ("email: not-an-address", "tls.acme.email", "is not an e-mail address"),
    ("email: ops@example.org, challenge: dns-01", "tls.acme", "challenge dns-01 needs tls.acme.dns"),
    ("email: ops@example.org, challenge: tls-alpn-01", "tls.acme.challenge", "another DNS provider's API is a ChallengeSolver"),
    ("email: ops@example.org, dns: {server: ns1.example.org, tsig_key_name: k, tsig_secret: {env: X}}", "tls.acme",
     "tls.acme.dns is set but challenge is http-01"),
    ("email: ops@example.org, challenge: dns-01, dns: {server: 'ns1 example', tsig_key_name: k, tsig_secret: {env: X}}",
     "tls.acme.dns.server", "give HOST or HOST:PORT"),
    ("email: ops@example.org, challenge: dns-01, dns: {server: ns1.example.org, tsig_key_name: k, tsig_secret: s3cr3t}",
     "tls.acme.dns.tsig_secret", ""),
    ("email: ops@example.org, challenge: dns-01, dns: {server: ns1.example.org, tsig_key_name: k, tsig_algorithm: md5, "
     "tsig_secret: {env: X}}", "tls.acme.dns.tsig_algorithm", "choose one of hmac-sha256"),
    ("email: ops@example.org, challenge: tls-alpn-01", "tls.acme.challenge", "the challenge is http-01"),
    ("email: ops@example.org, renew_days: 0", "tls.acme.renew_days", "greater than or equal to 1"),
    ("email: ops@example.org, public_addr: hub-node", "tls.acme.public_addr", "is not an IP address"),
    ("email: ops@example.org, ca_bundle: missing.pem", "tls.acme.ca_bundle", "does not exist"),
    ("email: ops@example.org, colour: blue", "tls.acme.colour", "unknown key"),
])
def test_acme_bad_values_refused(tmp_path, patch, key, hint):
    body = ACME.replace('directory_url: "https://acme.example.org/dir"', patch) if patch.startswith("directory_url") \
        else ACME.replace("email: ops@example.org", patch)
    with pytest.raises(ParameterError) as e:
        load_params(write(tmp_path, body))
    msg = str(e.value)
    assert f"p.yaml: {key}" in msg or (key == "tls.acme.ca_bundle" and key in msg), msg
    assert hint in msg, msg


def test_acme_email_is_required(tmp_path):
    with pytest.raises(ParameterError, match=r"p\.yaml: tls\.acme\.email: required key is missing"):
        load_params(write(tmp_path, ACME.replace(", email: ops@example.org", "")))


def test_acme_mode_needs_its_section(tmp_path):
    with pytest.raises(ParameterError, match=r"tls: .*mode 'acme' needs acme: \{directory_url"):
        load_params(write(tmp_path, "tls: {mode: acme}\nauth: {userlist: users}\n"))


@pytest.mark.parametrize("public_name", ["localhost", "hub", "127.0.0.1", "hub.localhost"])
def test_acme_needs_a_dns_name(tmp_path, public_name):
    with pytest.raises(ParameterError, match=rf"'{public_name}' cannot get an ACME certificate"):
        load_params(write(tmp_path, ACME.replace("public_name: hub.example.org", f"public_name: {public_name}")))


def test_acme_extra_names_are_checked_too(tmp_path):
    body = ACME.replace("public_name: hub.example.org", "public_name: hub.example.org, extra_names: [localhost]")
    with pytest.raises(ParameterError, match="'localhost' cannot get an ACME certificate"):
        load_params(write(tmp_path, body))


def test_acme_account_key_reference(tmp_path, monkeypatch):
    body = ACME.replace("email: ops@example.org", "email: ops@example.org, account_key: {env: HUBOPS_T_ACME_KEY}")
    f = write(tmp_path, body)
    monkeypatch.delenv("HUBOPS_T_ACME_KEY", raising=False)
    with pytest.raises(ParameterError, match=r"tls\.acme\.account_key: environment variable HUBOPS_T_ACME_KEY is not set"):
        load_params(f)
    monkeypatch.setenv("HUBOPS_T_ACME_KEY", "not a key")
    with pytest.raises(ParameterError, match=r"tls\.acme\.account_key: not a PEM private key"):
        load_params(f)
    monkeypatch.setenv("HUBOPS_T_ACME_KEY", "-----BEGIN PRIVATE KEY-----\nMIG...\n-----END PRIVATE KEY-----")
    assert load_params(f).tls.acme.account_key.env == "HUBOPS_T_ACME_KEY"


def test_acme_key_written_in_the_yaml_refused(tmp_path):
    body = ACME.replace("email: ops@example.org", 'email: ops@example.org, account_key: "-----BEGIN PRIVATE KEY-----"')
    with pytest.raises(ParameterError, match=r"tls\.acme\.account_key: .*"):
        load_params(write(tmp_path, body))


# -- auth.mode github: fail closed ------------------------------------------------------------
def test_github_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("HUBOPS_T_GH_SECRET", "gh-secret-value")
    body = GITHUB + "    allowed_organizations: [my-org, my-org:staff]\n    enterprise_url: https://github.example.org/\n"
    p = load_params(write(tmp_path, body))
    gh = p.auth.github
    assert gh.enterprise_url == "https://github.example.org"
    assert gh.allowed_organizations == ["my-org", "my-org:staff"]
    assert p.allowed == ["ann", "bob"] and p.admins == ["ann"]


def test_github_without_client_secret_refused(tmp_path):
    body = GITHUB.replace("    client_secret: {env: HUBOPS_T_GH_SECRET}\n", "")
    with pytest.raises(ParameterError, match=r"p\.yaml: auth\.github\.client_secret: required key is missing"):
        load_params(write(tmp_path, body))


def test_github_client_secret_unset_or_empty_refused(tmp_path, monkeypatch):
    f = write(tmp_path, GITHUB)
    monkeypatch.delenv("HUBOPS_T_GH_SECRET", raising=False)
    with pytest.raises(ParameterError, match=r"auth\.github\.client_secret: environment variable HUBOPS_T_GH_SECRET is not set"):
        load_params(f)
    monkeypatch.setenv("HUBOPS_T_GH_SECRET", "   ")
    with pytest.raises(ParameterError, match="is not set or empty"):
        load_params(f)
    (tmp_path / "empty").write_text("\n")
    f2 = write(tmp_path, GITHUB.replace("{env: HUBOPS_T_GH_SECRET}", "{file: empty}"))
    with pytest.raises(ParameterError, match=r"auth\.github\.client_secret: secret file .*empty is empty"):
        load_params(f2)


def test_github_mode_without_github_section_refused(tmp_path):
    with pytest.raises(ParameterError, match=r"mode 'github' needs github: \{client_id, client_secret"):
        load_params(write(tmp_path, "auth: {mode: github, userlist: users}\n"))


@pytest.mark.parametrize("users,match", [
    ("", "lists no users"),
    ("# nobody yet\n\n", "lists no users"),
    ("ann\nbob\n", "has no admin"),
])
def test_empty_allowed_set_refused(tmp_path, monkeypatch, users, match):
    monkeypatch.setenv("HUBOPS_T_GH_SECRET", "gh-secret-value")
    with pytest.raises(ParameterError, match=match):
        load_params(write(tmp_path, GITHUB, users=users))


@pytest.mark.parametrize("patch,key,hint", [
    ("client_id: ' '", "auth.github.client_id", "client ID is empty"),
    ("client_id: cid\n    allowed_organizations: ['my org']", "auth.github.allowed_organizations", "'org:team-slug'"),
    ("client_id: cid\n    enterprise_url: github.example.org", "auth.github.enterprise_url", "GitHub Enterprise base URL"),
])
def test_github_bad_values_refused(tmp_path, monkeypatch, patch, key, hint):
    monkeypatch.setenv("HUBOPS_T_GH_SECRET", "gh-secret-value")
    with pytest.raises(ParameterError) as e:
        load_params(write(tmp_path, GITHUB.replace("client_id: cid", patch)))
    assert f"p.yaml: {key}" in str(e.value) and hint in str(e.value), str(e.value)


def test_dns01_with_rfc2136_is_accepted(tmp_path):
    p = load_params(write(tmp_path, ACME.replace("email: ops@example.org", (
        "email: ops@example.org, challenge: dns-01, dns: {server: '192.0.2.53:5353', tsig_key_name: hub-key, "
        "tsig_secret: {env: HUB_TSIG}}"))))
    assert p.tls.acme.dns.server == "192.0.2.53:5353" and p.tls.acme.dns.tsig_algorithm == "hmac-sha256"
    assert [k for k, _ in p.secret_refs()] == ["tls.acme.dns.tsig_secret"]


def test_accepted_challenges_are_the_solvers(tmp_path):
    """params accepts exactly the challenge types acme_tls can answer."""
    from hubops.stages import tls_acme as acme_tls

    accepted = set()
    dns = ", dns: {server: ns1.example.org, tsig_key_name: k, tsig_secret: {env: X}}"
    for typ in ("http-01", "dns-01", "tls-alpn-01"):
        try:
            load_params(write(tmp_path, ACME.replace("email: ops@example.org",
                                                     f"email: ops@example.org, challenge: {typ}" + (dns if typ == "dns-01" else ""))))
            accepted.add(typ)
        except ParameterError:
            pass
    assert accepted == set(acme_tls.SOLVERS) == {"http-01", "dns-01"}
    assert all(s.typ == k and isinstance(s, acme_tls.ChallengeSolver) for k, s in acme_tls.SOLVERS.items())
