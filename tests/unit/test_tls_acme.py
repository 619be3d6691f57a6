"""tls.mode acme without an engine or an ACME server: when a kept certificate is re-used (no ACME
call), how wrong inputs are reported (names, port 80, the ACME server's own errors), and the
hub configuration's GitHub branch as OAuthenticator 17 reads it."""
from __future__ import annotations

import json
import socket
import textwrap
from pathlib import Path

import pytest

from acme import messages
from traitlets.config import Config

from hubops.stages import tls_acme as acme_tls, tls
from hubops.hub import config as hubconfig
from hubops.core import operator
from hubops.core.errors import TLSError
from hubops.core.params import load_params
from hubops.core.result import Result

DIRECTORY = "https://acme.example.org/dir"


def params(tmp_path: Path, acme_extra: str = "", *, body: str = "", hub_extra: str = "") -> object:
    (tmp_path / "users").write_text("ann admin\nbob\n")
    f = tmp_path / "p.yaml"
    f.write_text(textwrap.dedent(f"""
        deployment: t1
        operator_dir: {tmp_path / 'op'}
        hosts:
          managers:
            - {{name: m1, url: "unix:///var/run/docker.sock", advertise_addr: 198.51.100.7}}
        hub: {{public_name: hub.example.org{hub_extra}}}
        tls:
          mode: acme
          acme: {{directory_url: "{DIRECTORY}", email: ops@example.org{acme_extra}}}
        auth:
          userlist: users
    """) + textwrap.dedent(body))
    return load_params(f)


def keep(p, cert: bytes, key: bytes, directory: str = DIRECTORY) -> None:
    operator.folder(p)
    operator.write_private(p.operator_path / "tls-cert.pem", cert)
    operator.write_private(p.operator_path / "tls-key.pem", key)
    operator.write_private(p.operator_path / "acme.json", json.dumps({"directory_url": directory}).encode())


@pytest.fixture(scope="module")
def ca():
    return tls.make_ca("test ACME CA")


class NoClients:
    """Clients that must not be used: these checks never need an engine."""

    @property
    def manager(self):
        raise AssertionError("no engine call expected")


# -- re-use, no ACME call ---------------------------------------------------------------------
def test_due_reasons(tmp_path, ca):
    p = params(tmp_path)
    assert acme_tls.due(p, None, None) == "no certificate"
    cert, key = tls.issue_server_cert(*ca, ["hub.example.org"], days=90)
    keep(p, cert, key)
    assert acme_tls.due(p, cert, key) is None
    assert acme_tls.due(p, cert, None) == "its key is missing"
    other_key = tls.issue_server_cert(*ca, ["hub.example.org"], days=90)[1]
    assert acme_tls.due(p, cert, other_key) == "the kept key does not match the kept certificate"
    keep(p, cert, key, directory="https://acme-staging-v02.api.letsencrypt.org/directory")
    assert acme_tls.due(p, cert, key).startswith("issued by another ACME directory")
    keep(p, cert, key)
    short, short_key = tls.issue_server_cert(*ca, ["hub.example.org"], days=20)
    assert acme_tls.due(p, short, short_key).startswith("expires in")  # within renew_days (30)
    wrong, wrong_key = tls.issue_server_cert(*ca, ["other.example.org"], days=90)
    assert acme_tls.due(p, wrong, wrong_key) == "does not cover hub.example.org"


def test_due_when_the_chain_is_not_from_the_trusted_ca(tmp_path, ca):
    other = tls.make_ca("another CA")
    (tmp_path / "bundle.pem").write_bytes(other[0])
    p = params(tmp_path, ", ca_bundle: bundle.pem")
    cert, key = tls.issue_server_cert(*ca, ["hub.example.org"], days=90)
    keep(p, cert, key)
    assert acme_tls.due(p, cert, key) == "does not chain to a CA in tls.acme.ca_bundle"
    (tmp_path / "bundle.pem").write_bytes(other[0] + ca[0])
    assert acme_tls.due(p, cert, key) is None


def test_a_fresh_kept_certificate_is_reused_without_any_acme_call(tmp_path, ca, monkeypatch):
    p = params(tmp_path)
    cert, key = tls.issue_server_cert(*ca, ["hub.example.org"], days=90)
    keep(p, cert, key)
    monkeypatch.setattr(acme_tls, "issue", lambda *a, **k: pytest.fail("ACME was asked"))
    monkeypatch.setattr(acme_tls, "_directory", lambda *a, **k: pytest.fail("ACME was asked"))
    r = Result("tls")
    assert acme_tls.ensure_certificate(p, NoClients(), r) == (cert, key)
    assert not r.changed and r.facts["acme_call"] is False
    assert "no ACME call" in r.items[0].detail and "renewal due at 30" in r.items[0].detail


# -- wrong inputs, before any change ----------------------------------------------------------
def fake_dns(monkeypatch, answers: dict[str, str]):
    def getaddrinfo(name, port, *a, **k):
        if name not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (answers[name], port))]
    monkeypatch.setattr(acme_tls.socket, "getaddrinfo", getaddrinfo)


def test_name_must_resolve_to_the_hub_node(tmp_path, monkeypatch):
    p = params(tmp_path)
    fake_dns(monkeypatch, {"hub.example.org": "203.0.113.9"})
    with pytest.raises(TLSError) as e:
        acme_tls.check_names(p, NoClients(), Result("t"))
    msg = str(e.value)
    assert "hub.example.org resolves to 203.0.113.9, not to the hub's node m1 (198.51.100.7)" in msg
    assert "tls.acme.public_addr" in msg  # what to do behind NAT


def test_public_addr_overrides_the_expected_address(tmp_path, monkeypatch):
    p = params(tmp_path, ", public_addr: 203.0.113.9")
    fake_dns(monkeypatch, {"hub.example.org": "203.0.113.9"})
    r = Result("t")
    acme_tls.check_names(p, NoClients(), r)
    assert [(i.action, i.target, i.detail) for i in r.items] == [("check", "DNS hub.example.org", "resolves to 203.0.113.9")]


def test_every_certificate_name_is_checked(tmp_path, monkeypatch):
    p = params(tmp_path, hub_extra=", extra_names: [www.example.org]")
    fake_dns(monkeypatch, {"hub.example.org": "198.51.100.7"})
    with pytest.raises(TLSError, match="www.example.org does not resolve .*add an A record pointing at the hub's node"):
        acme_tls.check_names(p, NoClients(), Result("t"))


def test_port_80_not_reachable(tmp_path, monkeypatch):
    p = params(tmp_path)
    monkeypatch.setattr(acme_tls, "PROBE_TIMEOUT", 1)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TLSError) as e:
        acme_tls._probe(p, "127.0.0.1", "tok", "value", port=port)
    msg = str(e.value)
    assert "port 80 of 127.0.0.1 is not reachable" in msg and "ConnectionError" in msg
    assert "Open port 80 of the hub's node" in msg and "nothing was issued" in msg


def test_acme_errors_show_the_servers_message():
    rate = messages.Error(typ="urn:ietf:params:acme:error:rateLimited",
                          detail="too many certificates (5) already issued for this exact set of identifiers "
                                 "in the last 168h0m0s, retry after 2026-12-01 10:00:00 UTC")
    msg = str(acme_tls._acme_error(DIRECTORY, "open an order for hub.example.org", rate))
    assert msg.startswith(f"ACME server {DIRECTORY} refused to open an order for hub.example.org: too many certificates")
    assert "retry after 2026-12-01" in msg and "[rateLimited]" in msg
    assert "rate limit" in msg and "letsencrypt-staging" in msg
    caa = messages.Error(typ="urn:ietf:params:acme:error:caa", detail="CAA record forbids issuance")
    assert "CAA records" in str(acme_tls._acme_error(DIRECTORY, "issue the certificate", caa))
    other = acme_tls._acme_error(DIRECTORY, "register the account", ValueError("boom"))
    assert "ValueError: boom" in str(other)


def test_directory_that_does_not_answer(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = params(tmp_path)
    object.__setattr__(p.params.tls.acme, "directory_url", f"https://127.0.0.1:{port}/dir")
    with pytest.raises(TLSError, match=rf"ACME server https://127.0.0.1:{port}/dir does not answer .*tls.acme.directory_url"):
        acme_tls._directory(p)


# -- the hub's configuration for GitHub, as OAuthenticator 17 reads it ------------------------------
def load(source: str, tmp_path: Path, userlist: str, monkeypatch) -> Config:
    d = tmp_path / "secrets"
    d.mkdir(exist_ok=True)
    for name in hubconfig.SECRET_FILES.values():
        (d / name).write_text("ab" * 32 + "\n")
    (tmp_path / "ul").write_text(userlist)
    monkeypatch.setenv("HUBOPS_SECRETS_DIR", str(d))
    monkeypatch.setenv("HUBOPS_USERLIST", str(tmp_path / "ul"))
    cfg = Config()
    exec(compile(source, "jupyterhub_config.py", "exec"), {"get_config": lambda: cfg})
    return cfg


def test_github_config_for_oauthenticator_17(tmp_path, monkeypatch):
    monkeypatch.setenv("HUBOPS_T_GH", "gh-secret-value")
    p = params(tmp_path)
    f = tmp_path / "gh.yaml"
    f.write_text(p.source.read_text().replace("auth:\n  userlist: users\n", textwrap.dedent("""
        auth:
          mode: github
          userlist: users
          github:
            client_id: cid
            client_secret: {env: HUBOPS_T_GH}
            allowed_organizations: [zeta-org, alpha-org:staff]
            enterprise_url: http://172.18.0.1:8999/
    """)).replace("hub: {public_name: hub.example.org}", "hub: {public_name: hub.example.org, https_port: 8450}"))
    g = load_params(f)
    src = hubconfig.render(g, singleuser_image="su:1")
    c = load(src, tmp_path, g.userlist_text(), monkeypatch)
    gh = c.GitHubOAuthenticator
    assert c.JupyterHub.authenticator_class == "github"
    assert gh.oauth_callback_url == "https://hub.example.org:8450/hub/oauth_callback"
    assert gh.github_url == "http://172.18.0.1:8999"  # OAuthenticator derives /login/oauth/* and /api/v3
    assert gh.allowed_organizations == {"zeta-org", "alpha-org:staff"} and gh.scope == ["read:org"]
    # Fail closed: only the userlist (and the organizations) let anyone in, also after a change.
    assert gh.allow_all is False and gh.allow_existing_users is False and c.Authenticator.allow_existing_users is False
    assert c.Authenticator.allowed_users == {"ann", "bob"} and c.Authenticator.admin_users == {"ann"}
    # Servers hubops's API starts (90-verify) must not need a GitHub token in the auth state.
    assert gh.enable_auth_state is False
    # The same parameters render the same file (the service's config digest stays put).
    assert "set(['alpha-org:staff', 'zeta-org'])" in src and "gh-secret-value" not in src
