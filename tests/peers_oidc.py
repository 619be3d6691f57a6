"""A real OpenID Connect provider for the tests: npm's oidc-provider (OpenID Certified), run by Node
over HTTPS with a certificate from a test CA made here. Installed from the npm registry into a
cache folder on first use (HUBOPS_TEST_CACHE, default /tmp/hubops-test-cache), not into the project."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import requests

from hubops.core import certs as tls

OIDC_PROVIDER_VERSION = "9.13.3"
SCRIPT = Path(__file__).resolve().parent / "oidc" / "provider.mjs"


def oidc_provider_dir() -> Path:
    """The folder whose node_modules holds oidc-provider (installed with npm on first use)."""
    cache = Path(os.environ.get("HUBOPS_TEST_CACHE", "/tmp/hubops-test-cache")) / f"oidc-provider-{OIDC_PROVIDER_VERSION}"
    if not (cache / "node_modules" / "oidc-provider" / "package.json").is_file():
        for exe in ("node", "npm"):
            if not shutil.which(exe):
                raise RuntimeError(f"{exe} is missing: apt-get install nodejs npm")
        cache.mkdir(parents=True, exist_ok=True)
        (cache / "package.json").write_text('{"name": "hubops-test-oidc", "private": true}\n')
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", f"oidc-provider@{OIDC_PROVIDER_VERSION}"],
                       cwd=cache, check=True, capture_output=True, timeout=600)
    return cache


class OIDCProvider:
    """oidc-provider listening on https://ADDRESS:PORT (the issuer), with `accounts` (name -> groups)
    and one confidential client. `ca` is the test CA that signs its certificate."""

    def __init__(self, workdir: Path, address: str, port: int, *, client_id: str, client_secret: str,
                 redirect_uri: str, accounts: dict[str, list[str]]):
        self.dir = workdir
        self.address, self.port = address, port
        self.issuer = f"https://{address}:{port}"
        self.client_id, self.client_secret, self.redirect_uri = client_id, client_secret, redirect_uri
        self.accounts = dict(accounts)
        self.ca = workdir / "oidc-test-ca.pem"
        self.config = workdir / "oidc-provider.json"
        self.log = workdir / "oidc-provider.log"
        self.token_log = workdir / "issued-tokens"  # codes and tokens it issued (issued_tokens())
        self.proc: subprocess.Popen | None = None

    def _write(self) -> None:
        cfg = {
            "issuer": self.issuer, "host": self.address, "port": self.port,
            "cert": str(self.dir / "cert.pem"), "key": str(self.dir / "key.pem"),
            "cookie_key": os.urandom(16).hex(),
            "clients": [{"client_id": self.client_id, "client_secret": self.client_secret,
                         "redirect_uris": [self.redirect_uri]}],
            "accounts": {name: {"groups": groups} for name, groups in self.accounts.items()},
            "token_log": str(self.token_log),
        }
        tmp = self.config.with_suffix(".tmp")
        tmp.write_text(json.dumps(cfg, indent=2))
        tmp.chmod(0o600)
        tmp.replace(self.config)

    def set_account(self, name: str, groups: list[str] | None) -> None:
        """Change an account's groups, or remove it (None); the provider reads the file at each login."""
        if groups is None:
            self.accounts.pop(name, None)
        else:
            self.accounts[name] = groups
        self._write()

    def start(self) -> "OIDCProvider":
        home = oidc_provider_dir()
        self.dir.mkdir(parents=True, exist_ok=True)
        ca, ca_key = tls.make_ca("hubops oidc test CA")
        cert, key = tls.issue_server_cert(ca, ca_key, [self.address, "localhost"], days=30)
        (self.dir / "cert.pem").write_bytes(cert)
        (self.dir / "key.pem").write_bytes(key)
        (self.dir / "key.pem").chmod(0o600)
        self.ca.write_bytes(ca)
        self._write()
        shutil.copy(SCRIPT, home / "provider.mjs")  # ESM resolves 'oidc-provider' next to the script
        logf = open(self.log, "ab")
        self.proc = subprocess.Popen(["node", str(home / "provider.mjs"), str(self.config)], cwd=home,
                                     stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"oidc-provider exited: {self.log.read_text()[-2000:]}")
            try:
                if requests.get(self.issuer + "/.well-known/openid-configuration", verify=str(self.ca),
                                timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"oidc-provider did not answer at {self.issuer}: {self.log.read_text()[-2000:]}")

    def requests_seen(self, path: str = "") -> int:
        return sum(1 for ln in self.log.read_text().splitlines() if ln.split(" ")[1:2] and path in ln.split(" ")[1])

    def issued_tokens(self) -> list[str]:
        """Every authorization code, access token and ID token the provider issued so far (for a secret scan)."""
        try:
            return [ln for ln in self.token_log.read_text().splitlines() if ln]
        except FileNotFoundError:
            return []

    def browser_login(self, browser, hub_url: str, user: str, *, next_path: str = "/hub/home",
                      timeout_ms: int = 120_000):
        """`user` logs in to the hub at `hub_url` in a fresh context of a Playwright `browser`: the hub's
        login, this provider's login page and consent page, back to the hub. Returns (page, the HTTP
        status of the hub's answer at /hub/oauth_callback, or None). Done again after Chromium's
        ERR_NETWORK_CHANGED (tests/browser.py). The caller closes page.context."""
        from tests import browser as chrome

        return chrome.again(self._browser_login, browser, hub_url, user, next_path=next_path, timeout_ms=timeout_ms)

    def _browser_login(self, browser, hub_url: str, user: str, *, next_path: str, timeout_ms: int):
        from tests import browser as chrome

        # The hub's certificate and the provider's (the test CA) are not in Chromium's store; the hub
        # verifies the provider against its CA, and the tests verify the hub themselves.
        ctx = browser.new_context(ignore_https_errors=True)
        page = ctx.new_page()
        statuses: dict[str, int] = {}
        page.on("response", lambda r: statuses.__setitem__("callback", r.status) if "/hub/oauth_callback" in r.url else None)
        try:
            chrome.goto(page, f"{hub_url}/hub/oauth_login?next={next_path}")
            assert page.url.startswith(self.issuer + "/interaction/"), page.url  # the provider's login page
            page.fill("input[name=login]", user)
            page.fill("input[name=password]", "any")
            page.click("button[type=submit]")
            page.wait_for_url(self.issuer + "/interaction/**")  # the consent page
            assert "Authorize" in page.content() or "consent" in page.content().lower(), page.content()[:500]
            page.click("button[type=submit]")
            page.wait_for_url(lambda url: url.startswith(hub_url) and "oauth_callback" not in url or "callback" in statuses,
                              timeout=timeout_ms)
            page.wait_for_load_state()
        except Exception:
            ctx.close()
            raise
        return page, statuses.get("callback")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@contextmanager
def running_provider(workdir: Path, address: str, port: int, *, client_id: str, hub_url: str,
                     accounts: dict[str, list[str]], secret_prefix: str) -> Iterator[OIDCProvider]:
    """An OIDCProvider on https://ADDRESS:PORT, started, whose one client `client_id` has a new secret
    (`secret_prefix` and 32 random hex digits) and redirects to the hub at `hub_url`
    (HUB_URL/hub/oauth_callback); stopped at the end, also on failure."""
    pr = OIDCProvider(workdir, address, port, client_id=client_id, client_secret=secret_prefix + os.urandom(16).hex(),
                      redirect_uri=f"{hub_url}/hub/oauth_callback", accounts=accounts).start()
    try:
        yield pr
    finally:
        pr.stop()
