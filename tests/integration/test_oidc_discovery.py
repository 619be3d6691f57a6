"""auth.mode oidc: the issuer's discovery document read from a real OpenID provider (npm's
oidc-provider over HTTPS with a test CA), and every bad issuer refused by `hubops check` with the
key and what to do, before any host is contacted."""
from __future__ import annotations

import http.server
import socket
import ssl
import textwrap
import threading
from pathlib import Path

import pytest

from hubops.cli import main as cli
from hubops.core import certs as tls
from hubops.stages import auth_oidc as oidc
from hubops.core.errors import IdentityProviderError
from hubops.core.params import load_params
from tests.peers_oidc import OIDCProvider

PORT = 18610  # this module's provider; 18611: the server that does not speak JSON


@pytest.fixture(scope="module")
def provider(tmp_path_factory):
    pr = OIDCProvider(tmp_path_factory.mktemp("oidc"), "127.0.0.1", PORT, client_id="hub",
                      client_secret="s-" + "x" * 20, redirect_uri="https://localhost/hub/oauth_callback",
                      accounts={"alice": ["students"]}).start()
    yield pr
    pr.stop()


@pytest.fixture(scope="module")
def not_json(provider, tmp_path_factory):
    """An HTTPS server (same test CA) whose well-known path answers an HTML page."""
    d = tmp_path_factory.mktemp("notjson")

    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"<html><body>Welcome to the portal</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    ca2, ca2_key = tls.make_ca("not-json test CA")
    cert, key = tls.issue_server_cert(ca2, ca2_key, ["127.0.0.1"], days=5)
    (d / "cert.pem").write_bytes(cert)
    (d / "key.pem").write_bytes(key)
    (d / "ca.pem").write_bytes(ca2)
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", PORT + 1), H)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(d / "cert.pem", d / "key.pem")
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield d / "ca.pem"
    srv.shutdown()


def params(tmp: Path, issuer: str, *, ca: Path | None, extra: str = "") -> Path:
    (tmp / "users").write_text("ann admin\n")
    (tmp / "secret").write_text("client-secret-value\n")
    f = tmp / "p.yaml"
    f.write_text(textwrap.dedent(f"""
        deployment: lgoidc
        hosts:
          managers: [{{name: m, url: "unix:///var/run/docker.sock", advertise_addr: 127.0.0.1}}]
        auth:
          mode: oidc
          userlist: users
          oidc:
            issuer: {issuer}
            client_id: hub
            client_secret: {{file: secret}}
    """) + (f"    ca_bundle: {ca}\n" if ca else "") + extra)
    return f


def check(f: Path, monkeypatch, capsys) -> tuple[int, str]:
    def no_engine(*a, **k):
        raise AssertionError("a Docker client was created while checking parameters")

    monkeypatch.setattr("docker.DockerClient.__init__", no_engine)
    try:
        cli.main(["check", "-p", str(f)], standalone_mode=False)
        code = 0
    except SystemExit as e:
        code = e.code
    cap = capsys.readouterr()
    return code, " ".join((cap.out + cap.err).split())


def test_discovery_from_the_real_provider(provider, tmp_path, monkeypatch, capsys):
    f = params(tmp_path, provider.issuer, ca=provider.ca, extra="    scopes: [openid, profile, groups]\n")
    d = oidc.discover(load_params(f))
    assert d.issuer == provider.issuer
    assert d.authorization_endpoint == f"{provider.issuer}/auth" and d.token_endpoint == f"{provider.issuer}/token"
    assert d.userinfo_endpoint == f"{provider.issuer}/me" and "groups" in d.claims_supported
    code, out = check(f, monkeypatch, capsys)
    assert code == 0 and "discovery document valid" in out and "valid" in out, out


@pytest.mark.parametrize("case", ["no-answer", "not-json", "untrusted", "wrong-issuer", "unknown-scope", "http-404"])
def test_bad_issuers_are_refused_by_check(case, provider, not_json, tmp_path, monkeypatch, capsys):
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    closed = free.getsockname()[1]
    free.close()  # nothing listens there now
    f, expect = {
        "no-answer": lambda: (params(tmp_path, f"https://127.0.0.1:{closed}", ca=provider.ca),
                              f"auth.oidc.issuer: https://127.0.0.1:{closed}/.well-known/openid-configuration does not answer"),
        "not-json": lambda: (params(tmp_path, f"https://127.0.0.1:{PORT + 1}", ca=not_json),
                             "/.well-known/openid-configuration did not send valid JSON"),
        # The provider's certificate against the system CAs: it does not verify.
        "untrusted": lambda: (params(tmp_path, provider.issuer, ca=None),
                              f"auth.oidc.issuer: the certificate of 127.0.0.1:{PORT} does not verify against the system CAs"),
        # The provider under another of its names: its document names its own issuer.
        "wrong-issuer": lambda: (params(tmp_path, f"https://localhost:{PORT}", ca=provider.ca),
                                 f"the provider says its issuer is 'https://127.0.0.1:{PORT}', not 'https://localhost:{PORT}'"),
        "unknown-scope": lambda: (params(tmp_path, provider.issuer, ca=provider.ca, extra="    scopes: [openid, roles]\n"),
                                  "auth.oidc.scopes: the provider does not offer ['roles']"),
        "http-404": lambda: (params(tmp_path, provider.issuer + "/realms/x", ca=provider.ca),
                             "answered HTTP 404, not the discovery document"),
    }[case]()
    code, out = check(f, monkeypatch, capsys)
    assert code == 2, out
    assert str(f) in out and expect in out, out
    with pytest.raises(IdentityProviderError):
        oidc.discover(load_params(f))
