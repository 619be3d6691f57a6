"""OpenID Connect: the provider's discovery document, read and checked before anything changes.

`discover` fetches ISSUER/.well-known/openid-configuration (verified against auth.oidc.ca_bundle,
or the system CAs), and refuses an issuer that does not answer, answers with something other than
a JSON document, whose certificate does not verify, or whose document lacks what a login needs.
The endpoints it returns are what jupyterhub_config.py is rendered with (hubconfig.render), so the
hub's configuration names them explicitly and the record shows where logins go.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from urllib.parse import urlsplit

import requests

from hubops.core.errors import IdentityProviderError
from hubops.core.params import Loaded

WELL_KNOWN = "/.well-known/openid-configuration"
# The hub's container reads the provider's CA from this Swarm config (auth.oidc.ca_bundle).
CA_PATH = "/srv/jupyterhub/oidc-ca.pem"


@dataclass(frozen=True)
class Discovery:
    """What the hub needs from the provider's discovery document."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    userinfo_endpoint: str
    scopes_supported: tuple[str, ...] = ()
    claims_supported: tuple[str, ...] = ()

    def facts(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


def _verify(p: Loaded) -> str | bool:
    ca = p.auth.oidc.ca_bundle
    return str(p.path(ca)) if ca is not None else True


def discover(p: Loaded, *, timeout: float = 10) -> Discovery:
    """Read and check the issuer's discovery document. Raises IdentityProviderError naming the key."""
    oidc = p.auth.oidc
    url = oidc.issuer + WELL_KNOWN
    where = f"{p.source}: auth.oidc.issuer"
    verify = _verify(p)
    trust = f"the CA in auth.oidc.ca_bundle ({verify})" if verify is not True else "the system CAs"
    s = requests.Session()
    # Only the parameter decides which CA is trusted: REQUESTS_CA_BUNDLE from the environment
    # would silently replace the system CAs (the hub does not see this machine's environment).
    s.trust_env = False
    try:
        resp = s.get(url, verify=verify, timeout=timeout, headers={"Accept": "application/json"})
    except requests.exceptions.SSLError as e:
        raise IdentityProviderError(
            f"{where}: the certificate of {urlsplit(url).netloc} does not verify against {trust} ({_short(e)}); "
            "if the provider uses a private CA, give its certificate in auth.oidc.ca_bundle, "
            "else check the provider's certificate and its name") from None
    except requests.exceptions.RequestException as e:
        raise IdentityProviderError(
            f"{where}: {url} does not answer ({_short(e)}); check the issuer URL and that this machine "
            "and the hub's node reach the provider") from None
    if resp.status_code != 200:
        raise IdentityProviderError(
            f"{where}: {url} answered HTTP {resp.status_code}, not the discovery document; "
            "check the issuer URL (it is the URL before /.well-known/openid-configuration)")
    try:
        doc = json.loads(resp.text)
    except ValueError as e:
        raise IdentityProviderError(
            f"{where}: {url} did not send valid JSON ({e}; it begins {resp.text[:60]!r}); "
            "check the issuer URL: it must be an OpenID Connect provider's") from None
    if not isinstance(doc, dict):
        raise IdentityProviderError(f"{where}: {url} sent JSON that is not an object; "
                                    "check the issuer URL: it must be an OpenID Connect provider's")
    missing = [k for k in ("issuer", "authorization_endpoint", "token_endpoint", "userinfo_endpoint") if not doc.get(k)]
    if missing:
        raise IdentityProviderError(f"{where}: the discovery document at {url} lacks {', '.join(missing)}; "
                                    "hubops needs them for the login (is this an OpenID Connect provider?)")
    if str(doc["issuer"]).rstrip("/") != oidc.issuer:
        raise IdentityProviderError(
            f"{where}: the provider says its issuer is {doc['issuer']!r}, not {oidc.issuer!r}; "
            "write the provider's own issuer URL in auth.oidc.issuer")
    for k in ("authorization_endpoint", "token_endpoint", "userinfo_endpoint"):
        if not str(doc[k]).startswith("https://"):
            raise IdentityProviderError(f"{where}: the provider's {k} {doc[k]!r} is not https://; "
                                        "the client secret and users' tokens would cross the network in clear")
    d = Discovery(
        issuer=doc["issuer"], authorization_endpoint=doc["authorization_endpoint"],
        token_endpoint=doc["token_endpoint"], userinfo_endpoint=doc["userinfo_endpoint"],
        scopes_supported=tuple(doc.get("scopes_supported") or ()),
        claims_supported=tuple(doc.get("claims_supported") or ()),
    )
    unknown = [sc for sc in oidc.scopes if d.scopes_supported and sc not in d.scopes_supported]
    if unknown:
        raise IdentityProviderError(
            f"{p.source}: auth.oidc.scopes: the provider does not offer {unknown} "
            f"(it offers {list(d.scopes_supported)}); remove them or enable them at the provider")
    return d


def _short(e: Exception) -> str:
    text = str(e)
    return text if len(text) < 300 else text[:300] + "..."
