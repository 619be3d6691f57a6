"""Real protocol peers for the tests, started on this machine and stopped by the tests:

- `Pebble`: Let's Encrypt's ACME test server (Debian package `pebble`), with its own HTTPS
  certificate made here and `pebble-challtestsrv` as its DNS server, resolving every name to one
  address (so its HTTP-01 validation reaches port 80 of this machine, the hub's node);
- `FakeGitHub`: a small GitHub-compatible OAuth endpoint in the GitHub Enterprise layout
  (/login/oauth/authorize, /login/oauth/access_token, /api/v3/user), whose "browser user" the
  test chooses before each login.
"""
from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, urlencode, urlparse

import requests

from hubops.core import certs


def _free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


class Pebble:
    """pebble + pebble-challtestsrv, configured in `workdir`; `start()`, then `stop()`."""

    # Default ports (the local suite's); a suite running beside it passes its own.
    LISTEN = "127.0.0.1:14000"
    MANAGEMENT = "127.0.0.1:15000"
    DNS = "127.0.0.1:8053"
    CHALLTEST_MANAGEMENT = "127.0.0.1:8055"

    def __init__(self, workdir: Path, *, resolve_to: str = "127.0.0.1", http_port: int = 80,
                 acme_port: int | None = None, management_port: int | None = None,
                 dns_port: int | None = None, challtest_management_port: int | None = None,
                 dns_server: str | None = None):
        self.dir = workdir
        self.dns_server = dns_server  # HOST:PORT of a real DNS server Pebble resolves through (DNS-01)
        self.resolve_to = resolve_to
        self.http_port = http_port

        def at(default: str, port: int | None) -> str:
            return default if port is None else f"{default.rsplit(':', 1)[0]}:{port}"

        # Instance attributes shadow the class defaults, so two Pebbles can run side by side.
        self.LISTEN = at(Pebble.LISTEN, acme_port)
        self.MANAGEMENT = at(Pebble.MANAGEMENT, management_port)
        self.DNS = at(Pebble.DNS, dns_port)
        self.CHALLTEST_MANAGEMENT = at(Pebble.CHALLTEST_MANAGEMENT, challtest_management_port)
        self.procs: list[subprocess.Popen] = []
        self.log = workdir / "pebble.log"
        self.https_ca = workdir / "pebble-https-ca.pem"   # signs Pebble's own HTTPS listener
        self.root = workdir / "pebble-root.pem"           # Pebble's issuing root (fresh per start)
        self.bundle = workdir / "pebble-ca-bundle.pem"    # both: tls.acme.ca_bundle
        self.directory_url = f"https://{self.LISTEN}/dir"

    def start(self) -> "Pebble":
        for exe in ("pebble", "pebble-challtestsrv"):
            if not shutil.which(exe):
                raise RuntimeError(f"{exe} is missing: apt-get install pebble (scripts/ensure-test-tools.sh)")
        for addr in (self.LISTEN, self.MANAGEMENT, self.DNS, self.CHALLTEST_MANAGEMENT):
            host, port = addr.rsplit(":", 1)
            if not _free(int(port), host):
                raise RuntimeError(f"{addr} is taken: is another Pebble running? (ss -ltnp | grep {port})")
        self.dir.mkdir(parents=True, exist_ok=True)
        ca, ca_key = certs.make_ca("pebble https test CA")
        cert, key = certs.issue_server_cert(ca, ca_key, ["127.0.0.1", "localhost"], days=30)
        (self.dir / "https-cert.pem").write_bytes(cert)
        (self.dir / "https-key.pem").write_bytes(key)
        self.https_ca.write_bytes(ca)
        config = {"pebble": {
            "listenAddress": self.LISTEN, "managementListenAddress": self.MANAGEMENT,
            "certificate": str(self.dir / "https-cert.pem"), "privateKey": str(self.dir / "https-key.pem"),
            "httpPort": self.http_port, "tlsPort": 5001, "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }}
        (self.dir / "pebble-config.json").write_text(json.dumps(config, indent=2))
        logf = open(self.log, "ab")
        # DNS only: every A query answers resolve_to; no AAAA answers, no challenge listeners.
        self.procs.append(subprocess.Popen(
            ["pebble-challtestsrv", "-defaultIPv4", self.resolve_to, "-defaultIPv6", "",
             "-dns01", self.DNS, "-http01", "", "-https01", "", "-tlsalpn01", "",
             "-management", self.CHALLTEST_MANAGEMENT],
            stdout=logf, stderr=subprocess.STDOUT, start_new_session=True))
        env = {**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0",
               # every order is validated for real (no reuse of an earlier authorization)
               "PEBBLE_AUTHZREUSE": "0"}
        self.procs.append(subprocess.Popen(
            ["pebble", "-config", str(self.dir / "pebble-config.json"), "-dnsserver", self.dns_server or self.DNS],
            stdout=logf, stderr=subprocess.STDOUT, env=env, start_new_session=True))
        s = requests.Session()
        s.trust_env = False
        deadline = time.monotonic() + 30
        while True:
            try:
                if s.get(self.directory_url, verify=str(self.https_ca), timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                self.stop()
                raise RuntimeError(f"pebble did not start; see {self.log}:\n{self.log.read_text()[-2000:]}")
            time.sleep(0.2)
        root = s.get(f"https://{self.MANAGEMENT}/roots/0", verify=str(self.https_ca), timeout=5)
        root.raise_for_status()
        self.root.write_text(root.text)
        self.bundle.write_text(self.https_ca.read_text() + root.text)
        return self

    def requests_seen(self, path: str = "") -> int:
        """How many ACME requests Pebble logged (for paths starting with `path`, e.g. "/order-plz")."""
        return len(re.findall(rf"(?:GET|HEAD|POST) {re.escape(path)}\S* -> calling handler", self.log.read_text(errors="replace")))

    def dns_queries(self, host: str) -> list[int]:
        """The query types (1: A, 28: AAAA) challtestsrv answered for `host`: whom Pebble asked."""
        s = requests.Session()
        s.trust_env = False
        r = s.post(f"http://{self.CHALLTEST_MANAGEMENT}/dns-request-history", json={"host": host}, timeout=5)
        r.raise_for_status()
        return [q["Question"]["Qtype"] for q in r.json() or []]

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self.procs.clear()


class FakeGitHub:
    """A GitHub-compatible OAuth endpoint (GitHub Enterprise layout) listening on `bind`:`port`
    (default 0.0.0.0 and a free port), reached at http://ADDRESS:PORT, with ADDRESS the host's
    address the hub's container reaches."""

    def __init__(self, address: str, *, client_id: str, client_secret: str, port: int = 0,
                 bind: str = "0.0.0.0"):
        self.address = address
        self.client_id, self.client_secret = client_id, client_secret
        self.login: str | None = None  # who "signs in at GitHub" on the next authorize
        self.codes: dict[str, tuple[str, str]] = {}
        self.tokens: dict[str, str] = {}
        self.log: list[str] = []
        self.token_requests_bad_secret = 0
        # Organisations and teams, answered as GitHub's REST API does for a token with read:org:
        # 204 for a member, 404 for anyone else (OAuthenticator's allowed_organizations asks these).
        self.orgs: dict[str, set[str]] = {}
        self.teams: dict[tuple[str, str], set[str]] = {}
        self.scopes: list[str] = []  # the scope each authorize request asked for
        self.membership_checks: list[str] = []  # "org[:team] user" per membership request
        self.server = ThreadingHTTPServer((bind, port), self._handler())
        self.port = self.server.server_address[1]
        self.url = f"http://{address}:{self.port}"
        self._t = threading.Thread(target=self.server.serve_forever, name="fake-github", daemon=True)

    def log_in(self, hub_url: str, user: str, *, verify: str):
        """A browser going through the hub's OAuth login with `user` signing in at "GitHub":
        returns the browser's session and the hub's answer at /hub/oauth_callback (302: let in)."""
        self.login = user
        s = requests.Session()
        s.trust_env = False
        s.verify = verify
        r = s.get(f"{hub_url}/hub/oauth_login", allow_redirects=False, timeout=10)
        assert r.status_code == 302, r.text[:300]
        assert r.headers["location"].startswith(f"{self.url}/login/oauth/authorize?"), r.headers["location"]
        assert f"redirect_uri={quote(hub_url + '/hub/oauth_callback', safe='')}" in r.headers["location"]
        r = s.get(r.headers["location"], allow_redirects=False, timeout=10)  # "GitHub" sends the code back
        assert r.status_code == 302 and r.headers["location"].startswith(f"{hub_url}/hub/oauth_callback?code=")
        # The hub exchanges the code at this endpoint, from wherever the hub's container runs.
        return s, s.get(r.headers["location"], allow_redirects=False, timeout=30)

    def start(self) -> "FakeGitHub":
        self._t.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self):
        gh = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, fmt, *args):  # keep pytest's output clean; keep a log
                gh.log.append(fmt % args)

            def _send(self, code: int, body: dict | None = None, headers: dict | None = None):
                data = json.dumps(body).encode() if body is not None else b""
                self.send_response(code)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                if body is not None:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                url = urlparse(self.path)
                q = {k: v[0] for k, v in parse_qs(url.query).items()}
                if url.path == "/login/oauth/authorize":
                    if q.get("client_id") != gh.client_id or not gh.login:
                        return self._send(400, {"error": "unknown client_id or no user chosen"})
                    gh.scopes.append(q.get("scope", ""))
                    code = secrets.token_urlsafe(16)
                    gh.codes[code] = (gh.login, q.get("redirect_uri", ""))
                    target = q["redirect_uri"] + "?" + urlencode({"code": code, "state": q.get("state", "")})
                    return self._send(302, None, {"Location": target})
                if url.path == "/api/v3/user":
                    auth = self.headers.get("Authorization", "")
                    token = auth.split(" ", 1)[-1] if " " in auth else ""
                    login = gh.tokens.get(token)
                    if login is None:
                        return self._send(401, {"message": "Bad credentials"})
                    uid = int.from_bytes(login.encode()[:6].ljust(6, b"\0"), "big") % 10**7
                    return self._send(200, {"login": login, "id": uid, "name": login.title(), "email": None})
                # /api/v3/orgs/ORG/members/USER and /api/v3/orgs/ORG/teams/TEAM/members/USER
                m = re.fullmatch(r"/api/v3/orgs/([^/]+)(?:/teams/([^/]+))?/members/([^/]+)", url.path)
                if m:
                    auth = self.headers.get("Authorization", "")
                    if gh.tokens.get(auth.split(" ", 1)[-1] if " " in auth else "") is None:
                        return self._send(401, {"message": "Bad credentials"})
                    org, team, user = m.groups()
                    gh.membership_checks.append(f"{org}{':' + team if team else ''} {user}")
                    members = gh.teams.get((org, team), set()) if team else gh.orgs.get(org, set())
                    if user in members:
                        return self._send(204)
                    return self._send(404, {"message": "Not Found"})
                return self._send(404, {"message": "Not Found"})

            def do_POST(self):
                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                if url.path != "/login/oauth/access_token":
                    return self._send(404, {"message": "Not Found"})
                cid, secret = form.get("client_id"), form.get("client_secret")
                basic = self.headers.get("Authorization", "")
                if basic.startswith("Basic "):
                    cid, _, secret = base64.b64decode(basic[6:]).decode().partition(":")
                if cid != gh.client_id or secret != gh.client_secret:
                    gh.token_requests_bad_secret += 1
                    return self._send(200, {"error": "incorrect_client_credentials",
                                            "error_description": "The client_id and/or client_secret passed are incorrect."})
                entry = gh.codes.pop(form.get("code", ""), None)
                if entry is None:
                    return self._send(200, {"error": "bad_verification_code",
                                            "error_description": "The code passed is incorrect or expired."})
                token = "gho_" + secrets.token_urlsafe(24)
                gh.tokens[token] = entry[0]
                return self._send(200, {"access_token": token, "token_type": "bearer", "scope": ""})

        return Handler


class Bind:
    """Debian's BIND 9 (`named`) as the authoritative server of one test zone that takes RFC 2136
    dynamic updates signed with a TSIG key; `start()`, then `stop()`. Pebble resolves through it
    (Pebble(dns_server=bind.address)) for real DNS-01 validation."""

    def __init__(self, workdir: Path, *, zone: str = "dns01.test", port: int = 8253, host: str = "127.0.0.1",
                 a_records: dict[str, str] | None = None, key_name: str = "hubops-test-key"):
        self.dir, self.zone, self.port, self.host = workdir, zone.rstrip("."), port, host
        self.a_records = a_records or {}
        self.key_name = key_name
        self.secret = base64.b64encode(secrets.token_bytes(32)).decode()
        self.proc: subprocess.Popen | None = None
        self.log = workdir / "named.log"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> "Bind":
        if not shutil.which("named"):
            raise RuntimeError("named is missing: apt-get install bind9 (scripts/ensure-test-tools.sh)")
        if not _free(self.port, self.host):
            raise RuntimeError(f"{self.address} is taken: choose another port")
        self.dir.mkdir(parents=True, exist_ok=True)
        records = "".join(f"{name} 60 IN A {addr}\n" for name, addr in self.a_records.items())
        (self.dir / "zone.db").write_text(
            f"$ORIGIN {self.zone}.\n$TTL 60\n"
            f"@ IN SOA ns1.{self.zone}. hostmaster.{self.zone}. 1 60 60 600 60\n"
            f"@ IN NS ns1.{self.zone}.\nns1 IN A {self.host}\n{records}")
        (self.dir / "named.conf").write_text(f"""
options {{
    directory "{self.dir}";
    pid-file "{self.dir}/named.pid";
    listen-on port {self.port} {{ {self.host}; }};
    listen-on-v6 {{ none; }};
    recursion no;
    dnssec-validation no;
    notify no;
}};
key "{self.key_name}" {{ algorithm hmac-sha256; secret "{self.secret}"; }};
zone "{self.zone}" {{
    type primary;
    file "{self.dir}/zone.db";
    update-policy {{ grant {self.key_name} zonesub TXT; }};
}};
""")
        logf = open(self.log, "ab")
        self.proc = subprocess.Popen(["named", "-g", "-c", str(self.dir / "named.conf"), "-n", "1"],
                                     stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 20
        while "running" not in self.log.read_text(errors="replace"):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"named did not start; see {self.log}:\n{self.log.read_text()[-2000:]}")
            time.sleep(0.2)
        return self

    def txt(self, name: str) -> set[str]:
        """The TXT values the server serves for `name` now (asked with dnspython, as a resolver would)."""
        import dns.message
        import dns.query
        import dns.rdatatype

        resp = dns.query.udp(dns.message.make_query(name, dns.rdatatype.TXT), self.host, port=self.port, timeout=5)
        return {b"".join(rd.strings).decode() for rr in resp.answer for rd in rr}

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
