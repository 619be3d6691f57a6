"""Typed deployment parameters, loaded from one YAML file and checked once, before any API call.

Every error names the file and the key path (``parameters/lab.yaml: tls.files.cert: ...``) and
says what to do. Defaults live here, not in the YAML. Secrets are referenced
(``{env: NAME}`` or ``{file: PATH}``), never written in the YAML.
"""
from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hubops.core.errors import ParameterError
from hubops.core.paths import PROJECT
from hubops.core.params_data import SharedData
from hubops.core.profiles import Profile

NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")
# JupyterHub user names that are also valid in Docker service names (the spawner's name template).
USER_RE = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,62}[a-z0-9])?$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SecretRef(_Model):
    """Where a secret comes from: an environment variable or a file. Never the value itself."""

    env: Optional[str] = None
    file: Optional[Path] = None

    @model_validator(mode="before")
    @classmethod
    def _not_inline(cls, v: Any) -> Any:
        # A value written in the YAML would end up in the record (the parameter file's digest is
        # kept, the file itself is read by every notebook): refuse it, whatever it looks like.
        if isinstance(v, (str, int, float, bytes)):
            raise ValueError("a secret written inline is refused (it would be kept with the parameter file); "
                             "reference it instead: {env: NAME} (an environment variable) or {file: PATH} "
                             "(a file readable only by you)")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> "SecretRef":
        if (self.env is None) == (self.file is None):
            raise ValueError("give exactly one of {env: NAME} or {file: PATH}")
        return self

    def describe(self) -> str:
        return f"env:{self.env}" if self.env else f"file:{self.file}"


class HostTLS(_Model):
    """Client certificates for an engine's tcp+TLS API (what `docker --tlsverify` uses)."""

    ca: Path
    cert: Path
    key: Path


class HostSSH(_Model):
    """How hubops logs in to an ssh:// engine's host (see hubops/core/ssh.py)."""

    known_hosts: Optional[Path] = Field(
        None, description="a known_hosts file that pins the host's ssh key (default: ~/.ssh/known_hosts); "
                          "an unknown or changed key is always refused")
    identity_file: Optional[Path] = Field(
        None, description="the private key to log in with (default: the ssh agent's and ~/.ssh's keys)")
    connect_timeout: int = Field(10, ge=1, le=120, description="seconds to wait for the ssh connection")


class Host(_Model):
    """One Docker engine."""

    name: str = Field(description="node name used by hubops (labels, records)")
    url: str = Field(description="unix:///var/run/docker.sock, tcp://HOST:2376 or ssh://USER@HOST")
    advertise_addr: Optional[str] = Field(None, description="address other nodes reach this one at")
    tls: Optional[HostTLS] = None
    ssh: Optional[HostSSH] = None
    labels: dict[str, str] = Field(default_factory=dict)
    engine_socket: str = Field(
        "/var/run/docker.sock",
        description="the engine's unix socket on the host itself; the hub's container mounts it to drive the swarm",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError(f"{v!r} is not a valid host name: use lower-case letters, digits and '-'")
        return v

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^(unix://|tcp://|ssh://)", v):
            raise ValueError(
                f"{v!r}: an engine URL starts with unix://, tcp:// or ssh:// "
                "(for example tcp://10.0.0.5:2376 or unix:///var/run/docker.sock)"
            )
        return v

    @field_validator("advertise_addr")
    @classmethod
    def _addr(cls, v: Optional[str]) -> Optional[str]:
        if v is None:
            return v
        try:
            ipaddress.ip_address(v)
        except ValueError:
            raise ValueError(f"{v!r} is not an IP address: give the address other nodes reach this host at") from None
        return v

    @model_validator(mode="after")
    def _tls_for_tcp(self) -> "Host":
        if self.url.startswith("tcp://") and self.tls is None:
            raise ValueError(
                "a tcp:// engine needs tls: {ca, cert, key} (hubops never talks to an engine API without TLS)"
            )
        if not self.url.startswith("tcp://") and self.tls is not None:
            raise ValueError("tls is only for tcp:// engines; remove it or use a tcp:// url")
        if self.url.startswith("ssh://"):
            from hubops.core.ssh import Target

            Target.parse(self.url)  # ssh://USER@HOST[:PORT], nothing else
        elif self.ssh is not None:
            raise ValueError("ssh is only for ssh:// engines; remove it or use an ssh://USER@HOST url")
        return self


class Hosts(_Model):
    managers: list[Host]
    workers: list[Host] = Field(default_factory=list)

    @field_validator("managers")
    @classmethod
    def _some_manager(cls, v: list[Host]) -> list[Host]:
        if not v:
            raise ValueError("at least one manager is needed: the hub runs on a manager")
        return v

    @model_validator(mode="after")
    def _unique(self) -> "Hosts":
        seen: dict[str, str] = {}
        for h in self.all:
            for key, value in (("name", h.name), ("url", h.url)):
                if (key, value) in seen:
                    raise ValueError(f"host {key} {value!r} appears twice; every host needs its own {key}")
                seen[(key, value)] = h.name  # type: ignore[index]
        return self

    @property
    def all(self) -> list[Host]:
        return [*self.managers, *self.workers]


class Swarm(_Model):
    hub_node: Optional[str] = Field(None, description="the manager that runs the hub (default: the first)")
    listen_port: int = Field(2377, ge=1, le=65535)


def _ipv4_nets(v: list[str], what: str) -> list[str]:
    out = []
    for item in v:
        try:
            net = ipaddress.ip_network(str(item), strict=True)
        except ValueError as e:
            raise ValueError(f"{what}: {item!r} is not an IPv4 address or network in CIDR form such as "
                             f"169.254.169.254 or 10.20.0.0/16 ({e})") from None
        if net.version != 4:
            raise ValueError(f"{what}: {item!r} is IPv6; hubops's rules are IPv4 (users' servers have no IPv6)")
        if net.prefixlen == 0:
            raise ValueError(f"{what}: {item!r} is every address; use network.policy.egress instead")
        out.append(str(net))
    return out


class NetworkPolicy(_Model):
    """What users' servers may reach besides the hub and the proxy (30-network's overlay): the rules
    65-netpolicy keeps on every node (see hubops/stages/netpolicy.py)."""

    enabled: bool = Field(True, description="keep the rules on every node (false: none, and 65-netpolicy removes them)")
    metadata_addresses: list[str] = Field(
        default_factory=lambda: ["169.254.169.254/32"],
        description="addresses users' servers may never reach (cloud metadata services), IPv4 or CIDR")
    egress: Literal["allow", "deny"] = Field(
        "allow", description="allow: users' servers reach the outside world (pip, git); deny: only egress_allow")
    egress_allow: list[str] = Field(default_factory=list,
                                    description="with egress deny: networks users' servers may still reach")
    isolate_servers: bool = Field(
        True, description="users' servers may open connections on the overlay only to the hub and the proxy "
                          "(rules inside each server's own network namespace), not to each other")

    @field_validator("metadata_addresses")
    @classmethod
    def _meta(cls, v: list[str]) -> list[str]:
        return _ipv4_nets(v, "metadata_addresses")

    @field_validator("egress_allow")
    @classmethod
    def _allow(cls, v: list[str]) -> list[str]:
        return _ipv4_nets(v, "egress_allow")

    @model_validator(mode="after")
    def _allow_needs_deny(self) -> "NetworkPolicy":
        if self.egress_allow and self.egress == "allow":
            raise ValueError("egress_allow lists networks for egress: deny, but egress is allow (everything not "
                             "blocked is reachable anyway); set egress: deny, or remove egress_allow")
        return self


class Network(_Model):
    name: Optional[str] = Field(None, description="overlay network name (default hubops-DEPLOYMENT)")
    subnet: str = "10.231.0.0/24"
    endpoint_mode: Literal["dnsrr", "vip"] = "dnsrr"
    encrypted: bool = False
    policy: NetworkPolicy = Field(default_factory=NetworkPolicy)

    @field_validator("policy", mode="before")
    @classmethod
    def _policy_empty(cls, v: Any) -> Any:
        return {} if v is None else v

    @field_validator("subnet")
    @classmethod
    def _subnet(cls, v: str) -> str:
        try:
            net = ipaddress.ip_network(v, strict=True)
        except ValueError as e:
            raise ValueError(f"{v!r} is not a subnet in CIDR form such as 10.231.0.0/24 ({e})") from None
        if net.version != 4 or net.prefixlen > 29:
            raise ValueError(f"{v!r}: give an IPv4 subnet of /29 or larger, such as 10.231.0.0/24")
        return v


class Hub(_Model):
    public_name: str = Field("localhost", description="DNS name users reach the hub at")
    https_port: int = Field(443, ge=1, le=65535)
    extra_names: list[str] = Field(default_factory=list, description="more names on the certificate")
    data_volume: Optional[str] = Field(None, description="hub database volume (default hubops-DEPLOYMENT-hub-data)")
    start_timeout: int = Field(180, ge=10, description="seconds to wait for the hub to answer")
    log_level: Literal["DEBUG", "INFO", "WARNING"] = "INFO"

    @field_validator("public_name")
    @classmethod
    def _public_name(cls, v: str) -> str:
        if not re.match(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$", v):
            raise ValueError(f"{v!r} is not a DNS name, such as hub.example.org")
        return v.lower()


class TLSFiles(_Model):
    cert: Path = Field(description="PEM certificate chain (leaf first)")
    key: Path = Field(description="PEM private key")
    ca: Optional[Path] = Field(None, description="CA to verify the hub against (default: system roots)")


class TLSSelfSigned(_Model):
    days: int = Field(397, ge=1, le=3650)
    renew_days: int = Field(30, ge=0)


# Well-known ACME directories, accepted by name in tls.acme.directory_url.
ACME_DIRECTORIES = {
    "letsencrypt": "https://acme-v02.api.letsencrypt.org/directory",
    "letsencrypt-staging": "https://acme-staging-v02.api.letsencrypt.org/directory",
}
EMAIL_RE = re.compile(r"^[^@\s]+@[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")


class TLSAcmeDNS(_Model):
    """DNS-01 through RFC 2136 dynamic updates signed with a TSIG key (BIND, PowerDNS, Knot, many
    providers)."""

    server: str = Field(description="the DNS server that takes dynamic updates for the hub's zone: HOST or HOST:PORT")
    zone: Optional[str] = Field(None, description="the zone that holds hub.public_name (default: found by SOA lookup)")
    tsig_key_name: str = Field(description="the TSIG key's name, as the server knows it")
    tsig_algorithm: str = Field("hmac-sha256", description="hmac-sha256 (default), hmac-sha384, hmac-sha512, ...")
    tsig_secret: SecretRef = Field(description="the key's base64 secret: {env: NAME} or {file: PATH}, never inline")
    propagation_timeout: int = Field(60, ge=1, le=3600,
                                     description="seconds to wait until the server serves the TXT record")

    @field_validator("tsig_algorithm")
    @classmethod
    def _algorithm(cls, v: str) -> str:
        allowed = ("hmac-sha256", "hmac-sha384", "hmac-sha512", "hmac-sha224", "hmac-sha1")
        if v.lower() not in allowed:
            raise ValueError(f"{v!r}: choose one of {', '.join(allowed)}")
        return v.lower()

    @field_validator("server")
    @classmethod
    def _server(cls, v: str) -> str:
        if not re.match(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?$", v):
            raise ValueError(f"{v!r}: give HOST or HOST:PORT of the DNS server, e.g. ns1.example.org or 192.0.2.53:53")
        return v


class TLSAcme(_Model):
    """A certificate from an ACME server (Let's Encrypt or any RFC 8555 CA)."""

    directory_url: str = Field(description="ACME directory URL (https://...), or letsencrypt / letsencrypt-staging")
    email: str = Field(description="contact address for the ACME account (expiry and policy notices)")
    account_key: Optional[SecretRef] = Field(
        None, description="an existing ACME account key (PEM); default: generated once, kept in the operator folder")
    ca_bundle: Optional[Path] = Field(
        None, description="PEM CAs that sign the ACME server's own HTTPS and the issued chain (test CAs such as Pebble's)")
    renew_days: int = Field(30, ge=1, le=365, description="re-issue when fewer days than this are left")
    challenge: str = Field("http-01", description="http-01: answered on port 80 of the hub's node; dns-01: a TXT "
                           "record published by RFC 2136 dynamic update (tls.acme.dns)")
    dns: Optional[TLSAcmeDNS] = Field(None, description="the DNS server and TSIG key for dns-01")
    public_addr: Optional[str] = Field(
        None, description="the address the public name must resolve to (default: the hub host's advertise_addr), "
        "e.g. a NAT's public address")

    @field_validator("directory_url")
    @classmethod
    def _directory(cls, v: str) -> str:
        v = ACME_DIRECTORIES.get(v, v)
        if not re.match(r"^https://[^/\s]+", v):
            raise ValueError(f"{v!r}: an ACME directory URL starts with https:// (or use "
                             f"{' / '.join(ACME_DIRECTORIES)})")
        return v

    @field_validator("email")
    @classmethod
    def _email(cls, v: str) -> str:
        if not EMAIL_RE.match(v.strip()):
            raise ValueError(f"{v!r} is not an e-mail address; the ACME account needs one, e.g. hub-admin@example.org")
        return v.strip()

    @field_validator("challenge")
    @classmethod
    def _challenge(cls, v: str) -> str:
        # The names hubops.stages.tls_acme.SOLVERS answers (a unit test keeps the two in step).
        if v not in ("http-01", "dns-01"):
            raise ValueError(f"{v!r}: the challenge is http-01 (port 80 of the hub's node) or dns-01 (a TXT record "
                             "through RFC 2136 dynamic updates, with tls.acme.dns); another DNS provider's API is a "
                             "ChallengeSolver in hubops/stages/tls_acme.py")
        return v

    @model_validator(mode="after")
    def _dns_for_dns01(self) -> "TLSAcme":
        if self.challenge == "dns-01" and self.dns is None:
            raise ValueError("challenge dns-01 needs tls.acme.dns: {server: HOST[:PORT], tsig_key_name: NAME, "
                             "tsig_secret: {env: NAME}} (the server that takes dynamic updates for the hub's zone)")
        if self.challenge != "dns-01" and self.dns is not None:
            raise ValueError("tls.acme.dns is set but challenge is http-01: set challenge: dns-01, or remove dns")
        return self

    @field_validator("public_addr")
    @classmethod
    def _public_addr(cls, v: Optional[str]) -> Optional[str]:
        if v is not None:
            try:
                ipaddress.ip_address(v)
            except ValueError:
                raise ValueError(f"{v!r} is not an IP address") from None
        return v


class TLS(_Model):
    mode: Literal["self-signed", "files", "acme"] = "self-signed"
    self_signed: TLSSelfSigned = Field(default_factory=TLSSelfSigned)
    files: Optional[TLSFiles] = None
    acme: Optional[TLSAcme] = None

    @model_validator(mode="after")
    def _mode_needs(self) -> "TLS":
        if self.mode == "files" and self.files is None:
            raise ValueError("mode 'files' needs files: {cert: PATH, key: PATH}")
        if self.mode == "acme" and self.acme is None:
            raise ValueError("mode 'acme' needs acme: {directory_url: URL, email: ADDRESS}")
        return self


class GitHubAuth(_Model):
    client_id: str
    client_secret: SecretRef
    allowed_organizations: list[str] = Field(
        default_factory=list, description="also let in members of these organizations ('org') or teams ('org:team')")
    enterprise_url: Optional[str] = Field(None, description="GitHub Enterprise base URL, e.g. https://github.example.org")

    @field_validator("client_id")
    @classmethod
    def _client_id(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("the OAuth app's client ID is empty; copy it from the app's settings on GitHub")
        return v.strip()

    @field_validator("allowed_organizations")
    @classmethod
    def _orgs(cls, v: list[str]) -> list[str]:
        for o in v:
            if not re.match(r"^[A-Za-z0-9-]+(:[A-Za-z0-9_.-]+)?$", o):
                raise ValueError(f"{o!r}: give an organization as 'org' or a team as 'org:team-slug'")
        return v

    @field_validator("enterprise_url")
    @classmethod
    def _enterprise(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and not re.match(r"^https?://[^/\s]+", v):
            raise ValueError(f"{v!r}: give the GitHub Enterprise base URL, e.g. https://github.example.org")
        return v.rstrip("/") if v else v


GROUP_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# A JupyterHub scope, optionally with one filter: 'access:servers!group=students'.
SCOPE_RE = re.compile(r"^[a-z][a-z:_-]*[a-z](!(user|group|server|service)=[A-Za-z0-9._/-]+)?$")


def _groups(v: list[str]) -> list[str]:
    for g in v:
        if not GROUP_RE.match(g):
            raise ValueError(f"{g!r} is not a valid group name (letters, digits, '.', '_', '-'; 64 at most)")
    return v


class OIDCAuth(_Model):
    """OpenID Connect (oauthenticator's GenericOAuthenticator), endpoints from the issuer's discovery document."""

    issuer: str = Field(description="the provider's issuer URL; ISSUER/.well-known/openid-configuration is read")
    client_id: str
    client_secret: SecretRef
    username_claim: str = Field("preferred_username", description="the claim that names the user in the hub")
    groups_claim: Optional[str] = Field(
        "groups", description="the claim that lists the user's groups (dotted for nested); null: no groups from the provider")
    allowed_groups: list[str] = Field(default_factory=list, description="members of these groups are let in too")
    admin_groups: list[str] = Field(default_factory=list, description="members of these groups are admins (and let in)")
    scopes: list[str] = Field(default_factory=lambda: ["openid", "profile", "email"],
                              description="scopes asked for; add the one your provider needs for the groups claim")
    ca_bundle: Optional[Path] = Field(
        None, description="PEM file with the CA that signs the provider's certificate (private CA); "
        "trusted by hubops and by the hub, instead of the system CAs")

    @field_validator("issuer")
    @classmethod
    def _issuer(cls, v: str) -> str:
        if not re.match(r"^https://[^/\s?#]+(/[^\s?#]*)?$", v):
            raise ValueError(f"{v!r}: give the issuer as an https:// URL without query, "
                             "e.g. https://login.example.org/realms/hub (plain http would send the client secret in clear)")
        return v.rstrip("/")

    @field_validator("client_id", "username_claim")
    @classmethod
    def _nonempty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("empty; copy it from the client's settings at your provider")
        return v.strip()

    @field_validator("allowed_groups", "admin_groups")
    @classmethod
    def _group_names(cls, v: list[str]) -> list[str]:
        return _groups(v)

    @field_validator("scopes")
    @classmethod
    def _scopes(cls, v: list[str]) -> list[str]:
        if "openid" not in v:
            raise ValueError("must include 'openid' (without it the provider does not speak OpenID Connect)")
        return v

    @model_validator(mode="after")
    def _groups_need_claim(self) -> "OIDCAuth":
        if (self.allowed_groups or self.admin_groups) and not self.groups_claim:
            raise ValueError("allowed_groups/admin_groups need groups_claim (the claim that lists a user's groups)")
        return self


DN_RE = re.compile(r"^[A-Za-z][A-Za-z0-9-]*=[^,]+(,[A-Za-z][A-Za-z0-9-]*=[^,]+)*$")


def _dns(v: list[str]) -> list[str]:
    for dn in v:
        if not DN_RE.match(dn.strip()):
            raise ValueError(f"{dn!r} is not an LDAP DN, e.g. cn=students,ou=groups,dc=example,dc=org")
        if "," not in dn:
            # YAML splits an unquoted DN in a [a, b] list at its commas.
            raise ValueError(f"{dn!r} is a single RDN, not a whole DN (e.g. cn=students,ou=groups,dc=example,dc=org); "
                             "in a YAML [...] list, put each DN in quotes")
    return [dn.strip() for dn in v]


class LDAPAuth(_Model):
    """LDAP or Active Directory (jupyterhub-ldapauthenticator): users found under user_search_base by
    user_attribute, with a service account (bind_dn) that searches; TLS always, verified."""

    url: str = Field(description="ldaps://HOST[:PORT] (TLS from the start) or ldap://HOST[:PORT] with starttls: true")
    starttls: bool = Field(False, description="with ldap://: upgrade to TLS (StartTLS) before any password is sent")
    ca_bundle: Optional[Path] = Field(None, description="PEM file with the CA that signs the LDAP server's "
                                      "certificate (a private CA); the system CAs otherwise")
    bind_dn: str = Field(description="the service account that looks users up, e.g. cn=jupyterhub,ou=services,dc=example,dc=org")
    bind_password: SecretRef
    user_search_base: str = Field(description="where users are, e.g. ou=people,dc=example,dc=org")
    user_attribute: str = Field("uid", description="the attribute users log in with (uid; sAMAccountName on AD)")
    allowed_groups: list[str] = Field(default_factory=list, description="group DNs whose members are let in")
    admin_groups: list[str] = Field(default_factory=list, description="group DNs whose members are admins (and let in)")

    @model_validator(mode="after")
    def _tls_always(self) -> "LDAPAuth":
        m = re.match(r"^(ldaps?)://([^/:\s]+)(:(\d{1,5}))?/?$", self.url)
        if not m:
            raise ValueError(f"url {self.url!r}: give ldaps://HOST[:PORT] or ldap://HOST[:PORT]")
        if m.group(1) == "ldap" and not self.starttls:
            raise ValueError(f"url {self.url!r}: ldap:// without StartTLS would send users' passwords and the bind "
                             "password in clear; use ldaps://, or set starttls: true (the server must offer StartTLS)")
        if m.group(1) == "ldaps" and self.starttls:
            raise ValueError("starttls: true goes with ldap:// (ldaps:// is TLS from the start); remove one")
        return self

    @property
    def host(self) -> str:
        return self.url.split("://", 1)[1].rstrip("/").split(":", 1)[0]

    @property
    def port(self) -> int:
        rest = self.url.split("://", 1)[1].rstrip("/")
        return int(rest.split(":", 1)[1]) if ":" in rest else (636 if self.url.startswith("ldaps") else 389)

    @field_validator("bind_dn", "user_search_base")
    @classmethod
    def _dn(cls, v: str) -> str:
        return _dns([v])[0]

    @field_validator("allowed_groups", "admin_groups")
    @classmethod
    def _group_dns(cls, v: list[str]) -> list[str]:
        return _dns(v)


def ldap_group_name(dn: str) -> str:
    """The JupyterHub group an LDAP group becomes: the value of its first RDN (cn=students,... -> students)."""
    return dn.split(",", 1)[0].split("=", 1)[1].strip()


class NativeAuth(_Model):
    """Per-user passwords (jupyterhub-nativeauthenticator): users sign up, an admin approves them."""

    signup: bool = Field(True, description="users may sign up at /hub/signup (then wait for an admin's approval)")
    minimum_password_length: int = Field(10, ge=8, le=128)
    check_common_password: bool = Field(True, description="refuse the most common passwords")
    allowed_failed_logins: int = Field(5, ge=0, description="failed logins before a pause (0: no limit)")
    seconds_before_next_try: int = Field(600, ge=0)


class Role(_Model):
    """A JupyterHub role given to groups: what their members may do (scopes)."""

    name: str
    groups: list[str] = Field(description="the groups that hold the role")
    scopes: list[str] = Field(description="JupyterHub scopes, e.g. 'access:servers!group=students'")
    description: str = ""

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.match(r"^[a-z][a-z0-9_-]{1,62}[a-z0-9]$", v) or v in ("admin", "user", "server", "token"):
            raise ValueError(f"{v!r}: a role name is lower-case letters, digits, '-' or '_' (3 to 64), "
                             "and not one of JupyterHub's own (admin, user, server, token)")
        return v

    @field_validator("groups")
    @classmethod
    def _group_names(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("name at least one group")
        return _groups(v)

    @field_validator("scopes")
    @classmethod
    def _scope_syntax(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("name at least one scope, e.g. 'access:servers!group=students'")
        for sc in v:
            if not SCOPE_RE.match(sc):
                raise ValueError(f"{sc!r} is not a JupyterHub scope ('name' or 'name!group=G', '!user=U', ...)")
        return v


class Auth(_Model):
    mode: Literal["shared-password", "github", "oidc", "ldap", "native"] = "shared-password"
    userlist: Path = Field(description="file with one 'name', 'name admin' or 'name [admin] @group ...' per line")
    github: Optional[GitHubAuth] = None
    oidc: Optional[OIDCAuth] = None
    ldap: Optional[LDAPAuth] = None
    native: NativeAuth = Field(default_factory=NativeAuth)
    roles: list[Role] = Field(default_factory=list, description="JupyterHub roles given to groups")

    @model_validator(mode="after")
    def _mode_needs(self) -> "Auth":
        if self.mode == "github" and self.github is None:
            raise ValueError("mode 'github' needs github: {client_id, client_secret: {env: NAME}}")
        if self.mode == "oidc" and self.oidc is None:
            raise ValueError("mode 'oidc' needs oidc: {issuer: https://..., client_id, client_secret: {env: NAME}}")
        if self.mode == "ldap" and self.ldap is None:
            raise ValueError("mode 'ldap' needs ldap: {url: ldaps://..., bind_dn, bind_password: {env: NAME}, "
                             "user_search_base}")
        names = [r.name for r in self.roles]
        if len(set(names)) != len(names):
            raise ValueError(f"roles: a role name is given twice ({sorted(n for n in names if names.count(n) > 1)})")
        return self

    @property
    def provider_groups(self) -> bool:
        """Whether the identity provider tells each user's groups at login."""
        return (self.mode == "oidc" and bool(self.oidc and self.oidc.groups_claim)) or (
            self.mode == "ldap" and bool(self.ldap and (self.ldap.allowed_groups or self.ldap.admin_groups)))


class Images(_Model):
    base: str = "hubops-base:bookworm"
    build_engine: Optional[str] = Field(
        None, description="engine URL to build images on (default: the hub's manager); e.g. this machine's "
        "unix:///var/run/docker.sock when the cluster's nodes cannot reach PyPI and Debian's mirrors")
    dir: Optional[Path] = Field(None, description="folder with hub/ and singleuser/ (default: the project's images/)")
    extra_ca_bundle: Optional[Path] = Field(None, description="PEM bundle trusted by image builds (TLS-intercepting proxies)")
    trust_host_ca: bool = Field(
        True, description="without extra_ca_bundle, let builds trust the bundle named by PIP_CERT, "
        "REQUESTS_CA_BUNDLE or SSL_CERT_FILE on this machine, as its own pip does")
    jupyterhub_version: Optional[str] = Field(
        None, description="JupyterHub release to build the hub and single-user images with, e.g. 5.5.4 (default: "
        "the pins in images/*/requirements.txt); a newer one than the database's schema is reached with "
        "`hubops ops upgrade`, which migrates the database")

    @field_validator("jupyterhub_version")
    @classmethod
    def _jh_version(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and not re.match(r"^\d+\.\d+\.\d+([a-z]+\d*)?$", str(v)):
            raise ValueError(f"{v!r} is not a JupyterHub release such as 6.1.1")
        return str(v) if v is not None else None


class Spawner(_Model):
    """Each user's server. The defaults fit a small cluster: one user cannot take a node's memory,
    CPUs or process table; reservations are small so that many servers fit."""

    mem_limit: Optional[str] = Field("2G", description="memory limit per user's server, e.g. 2G (null: none)")
    cpu_limit: Optional[float] = Field(2.0, gt=0, description="CPUs per user's server (null: none)")
    mem_guarantee: Optional[str] = Field("128M", description="memory Swarm reserves for each server (null: none)")
    cpu_guarantee: Optional[float] = Field(None, gt=0, description="CPUs Swarm reserves for each server")
    pids_limit: int = Field(1024, ge=0, description="processes and threads per server (0: no limit)")
    cap_add: list[str] = Field(default_factory=list,
                               description="capabilities given back to users' servers (all are dropped)")
    start_timeout: int = Field(120, ge=10)
    http_timeout: int = Field(60, ge=5)
    # A burst of users (a class starting at once) must not take the hub down: servers beyond these
    # wait their turn, told by JupyterHub's HTTP 429 when to try again (hubops/hub/spawn_limits.py).
    concurrent_spawn_limit: Optional[int] = Field(
        None, ge=0, description="servers starting at once; more are asked to try again shortly (HTTP 429). "
        "null: from the cluster, twice the CPUs of the nodes that run users' servers (at least 2); 0: no limit")
    active_server_limit: int = Field(
        0, ge=0, description="servers running at once; more are refused until one stops (0: no limit)")
    placement: Literal["auto", "workers", "any"] = Field(
        "auto", description="auto: on workers when there are any, else anywhere"
    )
    default_url: str = "/lab"
    named_servers: int = Field(
        0, ge=0, le=50, description="named servers a user may run besides the default one, each its own Swarm "
        "service (JupyterHub's allow_named_servers and named_server_limit_per_user); 0: off")


class Verify(_Model):
    # Letters and digits only: DockerSpawner escapes anything else in service names.
    user: str = "hubopsverify"

    @field_validator("user")
    @classmethod
    def _user(cls, v: str) -> str:
        if not USER_RE.match(v):
            raise ValueError(f"{v!r} is not a valid user name (lower-case letters, digits, '.', '_', '-')")
        return v


class UserStorage(_Model):
    """Where users' home directories live, so their files survive a server's stop and start."""

    # The default keeps every user's files across stops, culls, upgrades and restarts (a per-user
    # volume on the node of the user's first server; on one node, simply a volume per user). `none`
    # loses them whenever a server stops: only when asked for, and a deploy then says so.
    mode: Literal["none", "shared-path", "volume-driver", "node-local"] = Field(
        "node-local", description="none: nothing kept (files lost when a server stops); shared-path: PATH/USER on storage every node mounts at PATH; "
        "volume-driver: a named volume per user through `driver`; node-local: a local volume per user, "
        "the user's servers pinned to the node that holds it")
    path: Optional[Path] = Field(
        None, description="shared-path: a directory mounted at the same place on every node (NFS, cluster "
        "filesystem); default /srv/hubops-users")
    driver: Optional[str] = Field(None, description="volume-driver: the volume driver, e.g. local (with NFS options)")
    driver_opts: dict[str, str] = Field(
        default_factory=dict, description="volume-driver: driver options; {username} is replaced by the user's name")
    target: str = Field("/home/jovyan", description="where the home appears in the user's container")
    uid: int = Field(1000, ge=0, description="owner of a new home (the single-user image's user)")
    gid: int = Field(100, ge=0, description="group of a new home")

    @field_validator("path")
    @classmethod
    def _path(cls, v: Optional[Path]) -> Optional[Path]:
        if v is not None and (not v.is_absolute() or v == Path("/") or ".." in v.parts):
            raise ValueError(f"{str(v)!r}: give an absolute directory other than /, e.g. /srv/hubops-users")
        return v

    @field_validator("target")
    @classmethod
    def _target(cls, v: str) -> str:
        if not v.startswith("/") or v == "/":
            raise ValueError(f"{v!r}: give an absolute path in the container, e.g. /home/jovyan")
        return v

    @model_validator(mode="after")
    def _mode_needs(self) -> "UserStorage":
        if self.mode == "volume-driver" and not self.driver:
            raise ValueError("mode 'volume-driver' needs driver: NAME (and driver_opts: {...})")
        if self.mode != "volume-driver" and (self.driver or self.driver_opts):
            raise ValueError("driver and driver_opts are for mode 'volume-driver'; remove them or change the mode")
        if self.mode != "shared-path" and self.path is not None:
            raise ValueError("path is for mode 'shared-path'; remove it or change the mode")
        return self

    @property
    def shared_path(self) -> str:
        return str(self.path or "/srv/hubops-users")


PG_URL_RE = re.compile(r"^postgres(?:ql)?://(?P<user>[A-Za-z0-9_.-]+)(?P<pw>:[^@/]*)?@(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)"
                       r"(?::(?P<port>\d{1,5}))?/(?P<db>[A-Za-z0-9_.-]+)/?$")


class HubPostgres(_Model):
    """storage.hub.mode postgres: the hub's database in PostgreSQL, either an existing server (url,
    password, ca) or one that hubops runs as a Swarm service (no url; node or path say where its data is)."""

    url: Optional[str] = Field(
        None, description="an existing server: postgresql://USER@HOST[:PORT]/DATABASE (no password in it); "
        "omit it and hubops runs PostgreSQL itself as a Swarm service")
    password: Optional[SecretRef] = Field(None, description="existing server: the user's password, {env: NAME} or "
                                          "{file: PATH}, never inline")
    ca: Optional[Path] = Field(None, description="existing server: PEM file with the CA that signs the server's "
                               "certificate; TLS is always on and verified (sslmode verify-full)")
    node: Optional[str] = Field(None, description="hubops's service: the manager whose local volume holds the data "
                                "(default: the hub's manager); put it on another manager than the hub's so the hub "
                                "can move when its manager is lost")
    path: Optional[Path] = Field(None, description="hubops's service: keep the data in PATH on storage every manager "
                                 "mounts (the database then may run on any manager) instead of a local volume")

    @field_validator("path")
    @classmethod
    def _pg_path(cls, v: Optional[Path]) -> Optional[Path]:
        if v is not None and (not v.is_absolute() or v == Path("/") or ".." in v.parts):
            raise ValueError(f"{str(v)!r}: give an absolute directory other than /, e.g. /mnt/nfs/hubops-db")
        return v

    @model_validator(mode="after")
    def _one_kind(self) -> "HubPostgres":
        if self.url is not None:
            m = PG_URL_RE.match(self.url)
            if m is None:
                raise ValueError("url: give postgresql://USER@HOST[:PORT]/DATABASE, e.g. "
                                 "postgresql://jupyterhub@db.example.org:5432/jupyterhub")
            if m.group("pw") is not None:
                raise ValueError("url: a password written inline in the URL is refused (it would be kept with the "
                                 "parameter file); remove it from the URL and give password: {env: NAME} or {file: PATH}")
            if self.password is None:
                raise ValueError("an existing server (url) needs password: {env: NAME} or {file: PATH}")
            if self.ca is None:
                raise ValueError("an existing server (url) needs ca: the PEM file of the CA that signs its "
                                 "certificate (TLS is always verified)")
            if self.node is not None or self.path is not None:
                raise ValueError("node and path are for the PostgreSQL hubops runs (no url); remove them or the url")
        elif self.password is not None or self.ca is not None:
            raise ValueError("password and ca are for an existing server (url); without url hubops runs PostgreSQL "
                             "itself and generates its password")
        elif self.node is not None and self.path is not None:
            raise ValueError("give node (a manager's local volume) or path (shared storage), not both")
        return self

    @property
    def external(self) -> bool:
        return self.url is not None

    def parts(self) -> dict[str, Any]:
        """user, host, port, db of an existing server's url."""
        m = PG_URL_RE.match(self.url or "")
        assert m is not None
        return {"user": m.group("user"), "host": m.group("host").strip("[]"), "port": int(m.group("port") or 5432),
                "db": m.group("db")}


class HubStorage(_Model):
    """Where the hub keeps its database, which decides whether the hub can move to another manager."""

    mode: Literal["volume", "shared-path", "postgres"] = Field(
        "volume", description="volume: a local volume on the hub's manager, the hub pinned there (it cannot move); "
        "shared-path: PATH on storage every manager mounts at PATH, the hub may run on any manager; "
        "postgres: PostgreSQL (postgres: {...}), the hub may run on any manager")
    postgres: Optional[HubPostgres] = Field(None, description="mode postgres: an existing server or hubops's own")
    path: Optional[Path] = Field(
        None, description="shared-path: a directory mounted at the same place on every manager (NFS, cluster "
        "filesystem); SQLite on NFS needs working locks, prefer an external database for busy hubs")

    @field_validator("path")
    @classmethod
    def _path(cls, v: Optional[Path]) -> Optional[Path]:
        if v is not None and (not v.is_absolute() or v == Path("/") or ".." in v.parts):
            raise ValueError(f"{str(v)!r}: give an absolute directory other than /, e.g. /mnt/nfs/hubops-hub")
        return v

    @model_validator(mode="after")
    def _mode_needs(self) -> "HubStorage":
        if self.mode == "shared-path" and self.path is None:
            raise ValueError("mode 'shared-path' needs path: a directory mounted at the same place on every "
                             "manager, e.g. /mnt/nfs/hubops-hub")
        if self.mode != "shared-path" and self.path is not None:
            raise ValueError("path is for mode 'shared-path'; remove it or set mode: shared-path")
        if self.mode != "postgres" and self.postgres is not None:
            raise ValueError("postgres is for mode 'postgres'; remove it or set mode: postgres")
        return self

    @property
    def pg(self) -> HubPostgres:
        """mode postgres's settings ({} means hubops's own PostgreSQL on the hub's manager)."""
        return self.postgres or HubPostgres()


class Storage(_Model):
    users: UserStorage = Field(default_factory=UserStorage)
    hub: HubStorage = Field(default_factory=HubStorage)


class Backup(_Model):
    dir: Optional[Path] = Field(
        None, description="where backups go (default OPERATOR_DIR/DEPLOYMENT/backups); never under outputs/")


class Culler(_Model):
    """jupyterhub-idle-culler as a hub-managed service: stops servers idle longer than `timeout`."""

    enabled: bool = True
    timeout: int = Field(3600, ge=10, description="seconds without activity before a server is stopped")
    every: int = Field(60, ge=5, description="seconds between two checks")


class Front(_Model):
    """A TLS front (HAProxy) before the hub's proxy: it terminates TLS and swaps a renewed
    certificate through its runtime API, so renew-tls fails no request (hubops/stages/front.py)."""

    enabled: bool = Field(False, description="HAProxy terminates TLS on hub.https_port; the proxy serves plain "
                          "HTTP on the overlay network only; renew-tls restarts nothing")


class Monitoring(_Model):
    """Optional Prometheus (on the hub's manager) scraping the hub's /hub/metrics and a node exporter on
    every node; the status and diagnose runbooks plot what it gathered (hubops/stages/monitoring.py)."""

    enabled: bool = False
    scrape_interval: int = Field(15, ge=5, le=600, description="seconds between two scrapes of each target")
    retention_days: int = Field(15, ge=1, le=3650, description="days of data Prometheus keeps in its volume")
    publish_port: Optional[int] = Field(
        None, ge=1, le=65535,
        description="publish Prometheus's port 9090 on this host port of its node (default: reachable on the "
                    "overlay network only; Prometheus has no login, anyone who reaches the port reads the metrics)")


class Params(_Model):
    """The whole parameter file."""

    deployment: str = Field(description="short name; prefixes and labels every object hubops creates")
    operator_dir: Path = Field(
        Path("~/.hubops"),
        description="where operator credentials (passwords, API token, CA key) are kept, mode 0700; never outputs/",
    )
    hosts: Hosts
    swarm: Swarm = Field(default_factory=Swarm)
    network: Network = Field(default_factory=Network)
    hub: Hub = Field(default_factory=Hub)
    tls: TLS = Field(default_factory=TLS)
    auth: Auth
    images: Images = Field(default_factory=Images)
    spawner: Spawner = Field(default_factory=Spawner)
    verify: Verify = Field(default_factory=Verify)
    storage: Storage = Field(default_factory=Storage)
    backup: Backup = Field(default_factory=Backup)
    culler: Culler = Field(default_factory=Culler)
    shared_data: SharedData = Field(default_factory=SharedData)
    monitoring: Monitoring = Field(default_factory=Monitoring)
    profiles: list[Profile] = Field(default_factory=list,
                                    description="spawn profiles users choose from (hubops/core/profiles.py); "
                                    "with one or none, no spawn page")
    front: Front = Field(default_factory=Front)

    @model_validator(mode="before")
    @classmethod
    def _empty_sections(cls, data: Any) -> Any:
        # A section whose keys are all commented out (`images:` alone) means "the defaults".
        if isinstance(data, dict):
            return {k: ({} if v is None and k in ("swarm", "network", "hub", "tls", "images", "spawner", "verify",
                                                          "storage", "backup", "culler", "monitoring", "front",
                                                          "shared_data")
                         else v)
                    for k, v in data.items()}
        return data

    @field_validator("deployment")
    @classmethod
    def _deployment(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError(f"{v!r}: use 1-32 lower-case letters, digits and '-', e.g. 'research-hub'")
        return v

    @model_validator(mode="after")
    def _hub_node_is_manager(self) -> "Params":
        names = [m.name for m in self.hosts.managers]
        if self.swarm.hub_node is not None and self.swarm.hub_node not in names:
            raise ValueError(f"swarm.hub_node {self.swarm.hub_node!r} is not a manager; choose one of {names}")
        multi = len(self.hosts.all) > 1
        for h in self.hosts.all:
            if multi and h.advertise_addr is None:
                raise ValueError(
                    f"host {h.name!r} needs advertise_addr: with several hosts every node must say "
                    "which address the others reach it at"
                )
        return self

    @model_validator(mode="after")
    def _db_node(self) -> "Params":
        pg = self.storage.hub.postgres
        names = [m.name for m in self.hosts.managers]
        if self.storage.hub.mode == "postgres" and pg is not None and pg.node is not None and pg.node not in names:
            raise ValueError(f"storage.hub.postgres.node {pg.node!r} is not a manager; choose one of {names}")
        return self

    @model_validator(mode="after")
    def _hub_can_move_everywhere(self) -> "Params":
        if self.storage.hub.mode not in ("shared-path", "postgres"):
            return self
        sockets = {m.engine_socket for m in self.hosts.managers}
        if len(sockets) > 1:
            raise ValueError(
                f"storage.hub.mode {self.storage.hub.mode} lets the hub run on any manager, and it mounts the engine socket "
                "of the manager it lands on: give every manager the same hosts.managers[].engine_socket "
                f"(they differ: {', '.join(sorted(sockets))}), as real hosts have (/var/run/docker.sock)")
        if self.storage.users.mode == "shared-path" and self.storage.users.path is not None \
                and self.storage.hub.path is not None and (
                    self.storage.hub.path == self.storage.users.path
                    or self.storage.users.path in self.storage.hub.path.parents):
            raise ValueError(
                f"storage.hub.path {self.storage.hub.path} is inside storage.users.path {self.storage.users.path}: "
                "users' servers would see the hub's database; give the hub a directory of its own")
        return self

    @model_validator(mode="after")
    def _acme_names(self) -> "Params":
        if self.tls.mode != "acme":
            return self
        for n in [self.hub.public_name, *self.hub.extra_names]:
            try:
                ipaddress.ip_address(n.strip("[]"))
                is_ip = True
            except ValueError:
                is_ip = False
            if is_ip or "." not in n or n.endswith(".localhost") or n == "localhost":
                raise ValueError(
                    f"tls.mode acme: {n!r} cannot get an ACME certificate; set hub.public_name (and "
                    "hub.extra_names) to DNS names that resolve to the hub's node, such as hub.example.org"
                )
        return self

    # -- derived names (one place, so every stage agrees) ------------------------------------
    @property
    def prefix(self) -> str:
        return f"hubops-{self.deployment}"

    @property
    def network_name(self) -> str:
        return self.network.name or self.prefix

    @property
    def hub_service(self) -> str:
        return f"{self.prefix}-hub"

    @property
    def hub_volume(self) -> str:
        return self.hub.data_volume or f"{self.prefix}-hub-data"

    @property
    def hub_host(self) -> Host:
        name = self.swarm.hub_node or self.hosts.managers[0].name
        return next(h for h in self.hosts.managers if h.name == name)

    @property
    def hub_can_move(self) -> bool:
        """Whether Swarm may start the hub on another manager (its database is on shared storage, or in PostgreSQL)."""
        return self.storage.hub.mode in ("shared-path", "postgres")

    @property
    def hub_db_postgres(self) -> bool:
        """Whether the hub's database is in PostgreSQL (storage.hub.mode postgres)."""
        return self.storage.hub.mode == "postgres"

    @property
    def db_service(self) -> str:
        """The Swarm service of the PostgreSQL hubops runs for the hub (storage.hub.mode postgres, no url)."""
        return f"{self.prefix}-db"

    @property
    def db_volume(self) -> str:
        return f"{self.prefix}-db-data"

    @property
    def db_node(self) -> str:
        """The manager whose volume holds hubops's PostgreSQL data (storage.hub.postgres.node, else the hub's)."""
        return self.storage.hub.pg.node or self.hub_host.name

    @property
    def hub_node_label(self) -> str:
        return f"hubops.{self.deployment}.hub"

    @property
    def hub_url(self) -> str:
        port = "" if self.hub.https_port == 443 else f":{self.hub.https_port}"
        return f"https://{self.hub.public_name}{port}"

    @property
    def hub_urls(self) -> list[str]:
        """Where hubops looks for the hub: hub_url, and, when the hub can move to another manager, each
        manager's advertise address that the certificate names (hub.extra_names), in the managers' order.
        Users reach a moved hub by the DNS name pointed at its new manager (or a floating address)."""
        urls = [self.hub_url]
        if self.hub_can_move:
            port = "" if self.hub.https_port == 443 else f":{self.hub.https_port}"
            names = set(self.cert_names)
            urls += [f"https://{m.advertise_addr}{port}" for m in self.hosts.managers
                     if m.advertise_addr in names and m.advertise_addr != self.hub.public_name]
        return urls

    @property
    def cert_names(self) -> list[str]:
        return list(dict.fromkeys([self.hub.public_name, *self.hub.extra_names]))

    @property
    def operator_path(self) -> Path:
        """The deployment's operator folder (expanded; not created here)."""
        return Path(os.path.expanduser(str(self.operator_dir))) / self.deployment


class Loaded:
    """Parameters plus what was read with them: the source file, its digest and the userlist."""

    def __init__(self, params: Params, source: Path, digest: str, users: dict[str, bool]):
        self.params = params
        self.source = source
        self.digest = digest
        self.users = users  # name -> is admin
        self.groups: dict[str, list[str]] = {}  # group -> its members, from the userlist's '@group' words

    def __getattr__(self, name: str) -> Any:  # p.hub, p.prefix, ... read through to Params
        return getattr(self.params, name)

    @property
    def admins(self) -> list[str]:
        return sorted(u for u, a in self.users.items() if a)

    @property
    def allowed(self) -> list[str]:
        return sorted(self.users)

    def userlist_text(self) -> str:
        """The userlist in canonical form (sorted, one entry per line)."""
        of = self.groups_of
        if not self.users:  # a Swarm config may not be empty
            return "# no users by name: the identity provider's groups decide\n"
        return "".join(" ".join([u, *(["admin"] if a else []), *(f"@{g}" for g in of(u))]) + "\n"
                       for u, a in sorted(self.users.items()))

    def groups_of(self, user: str) -> list[str]:
        """The userlist's groups of `user`, sorted."""
        return sorted(g for g, members in self.groups.items() if user in members)

    def secret_refs(self) -> list[tuple[str, SecretRef]]:
        """Every secret the parameters reference, with its key path (for the redactor: whatever a
        new parameter references is redacted without anyone remembering to add it)."""
        found: list[tuple[str, SecretRef]] = []

        def walk(obj: Any, path: str) -> None:
            if isinstance(obj, SecretRef):
                found.append((path, obj))
            elif isinstance(obj, BaseModel):
                for name in type(obj).model_fields:
                    walk(getattr(obj, name), f"{path}.{name}" if path else name)
            elif isinstance(obj, (list, tuple)):
                for i, item in enumerate(obj):
                    walk(item, f"{path}[{i}]")
            elif isinstance(obj, dict):
                for k, v in obj.items():
                    walk(v, f"{path}.{k}")

        walk(self.params, "")
        return found

    def resolve_secret(self, ref: SecretRef, key: str) -> str:
        """The value of a referenced secret. Raises ParameterError naming the key; never logs the value."""
        if ref.env is not None:
            value = os.environ.get(ref.env)
            if not value or not value.strip():  # blank counts as unset: fail closed
                raise ParameterError(
                    f"{self.source}: {key}: environment variable {ref.env} is not set or empty; "
                    f"export it before running hubops"
                )
            return value.strip()
        from .paramfile import MAX_SECRET_BYTES, read_text

        path = _relative(self.source, ref.file)  # type: ignore[arg-type]
        # A small regular text file: a device (/dev/zero), a pipe or a huge file is refused unread.
        value = read_text(path, MAX_SECRET_BYTES, where=f"{self.source}: {key}", what="a secret file",
                          show_line=False).strip()
        if not value:
            raise ParameterError(f"{self.source}: {key}: secret file {path} is empty")
        return value

    def path(self, p: Path) -> Path:
        """A path from the parameter file, resolved against the file's folder."""
        return _relative(self.source, p)


def _relative(source: Path, p: Path) -> Path:
    p = Path(os.path.expanduser(str(p)))
    return p if p.is_absolute() else (source.parent / p).resolve()


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _explain(err: dict) -> str:
    kind = err["type"]
    msg = err["msg"].removeprefix("Value error, ")
    if kind == "extra_forbidden":
        from .paramfile import known_keys, suggest

        hint = suggest(err["loc"][-1], known_keys(Params, tuple(err["loc"])))
        return (f"unknown key{hint} (remove it or check its spelling against "
                "parameters/production.example.yaml)")
    if kind == "missing":
        return "required key is missing; add it"
    if kind == "literal_error":
        return f"{msg} (got {err.get('input')!r})"
    return msg


def parse_userlist(path: Path, source: Path, *, need_admin: bool = True) -> dict[str, bool]:
    """Read a userlist: one ``name`` or ``name admin`` per line, ``#`` comments, optionally followed
    by the user's groups as ``@group`` words (``alice @students``). name -> is admin."""
    return read_userlist(path, source, need_admin=need_admin)[0]


def read_userlist(path: Path, source: Path, *, need_admin: bool = True) -> tuple[dict[str, bool], dict[str, list[str]]]:
    """The userlist's users (name -> is admin) and groups (group -> its users, sorted)."""
    from .paramfile import MAX_USERLIST_BYTES, read_text, shown

    key = f"{source}: auth.userlist"
    if not path.exists():
        raise ParameterError(f"{key}: cannot read {path}: No such file or directory; create it with one 'name' or "
                             "'name admin' per line")
    # A regular text file of bounded size: never a device, a pipe or a binary (refused, not read).
    text = read_text(path, MAX_USERLIST_BYTES, where=key, what="the userlist ('name' or 'name admin' per line)")
    users: dict[str, bool] = {}
    groups: dict[str, list[str]] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        words = [w for w in parts[1:] if not w.startswith("@")]
        tags = [w[1:] for w in parts[1:] if w.startswith("@")]
        if len(words) > 1 or (words and words[0] != "admin") or (words and parts[1] != "admin"):
            raise ParameterError(f"{key}: {path}:{n}: {shown(raw.strip())}: a line is 'name' or 'name admin', "
                                 "then optionally the user's groups as '@group' words ('alice @students')")
        name = parts[0].lower()
        if not USER_RE.match(name):
            raise ParameterError(f"{key}: {path}:{n}: {shown(parts[0])} is not a valid user name (lower-case "
                                 "letters, digits, '.', '_', '-')")
        if name in users:
            raise ParameterError(f"{key}: {path}:{n}: {name!r} is listed twice; keep one line per user")
        for g in tags:
            if not GROUP_RE.match(g):
                raise ParameterError(f"{key}: {path}:{n}: '@{g}' is not a valid group name "
                                     "(letters, digits, '.', '_', '-' after the '@')")
            groups.setdefault(g, [])
            if name not in groups[g]:
                groups[g].append(name)
        users[name] = bool(words)
    if not users and need_admin:  # with admin groups at a provider, the groups alone may decide
        raise ParameterError(f"{key}: {path} lists no users; add at least one 'name admin' line")
    if need_admin and not any(users.values()):
        raise ParameterError(f"{key}: {path} has no admin; mark at least one user, e.g. '{next(iter(users))} admin'")
    return users, {g: sorted(m) for g, m in sorted(groups.items())}


def load_params(params_file: str | os.PathLike) -> Loaded:
    """Load and check a parameter file. Raises ParameterError listing every problem found."""
    source = Path(params_file)
    if not source.is_absolute() and not source.exists() and (PROJECT / source).exists():
        # Opened in JupyterLab the notebook runs in runbooks/: the default path is the project's.
        source = PROJECT / source
    from . import param_checks
    from .paramfile import load_yaml, scrub

    # Size, type, encoding, depth, alias expansion and duplicate keys are checked before and while
    # parsing (paramfile), so no input can hang, exhaust memory or end in a traceback.
    data, raw_bytes = load_yaml(source)
    try:
        if not isinstance(data, dict):
            raise ParameterError(f"{source}: the file must hold a mapping of keys (deployment, hosts, auth, ...)")
        try:
            params = Params.model_validate(data)
        except ValidationError as e:
            problems = [f"{source}: {_loc(err['loc'])}: {_explain(err)}" for err in e.errors()]
            raise ParameterError("\n".join(problems)) from None
        loaded = Loaded(params, source.resolve(), hashlib.sha256(raw_bytes).hexdigest(), {})
        # With admin groups at the provider, the userlist need not name an admin.
        need_admin = not ((params.auth.mode == "oidc" and params.auth.oidc.admin_groups)  # type: ignore[union-attr]
                          or (params.auth.mode == "ldap" and params.auth.ldap.admin_groups))  # type: ignore[union-attr]
        loaded.users, loaded.groups = read_userlist(loaded.path(params.auth.userlist), loaded.source,
                                                    need_admin=need_admin)
        _check_groups(loaded)
        _check_files(loaded)
        problems = param_checks.check(loaded)
        from . import params_data

        problems += params_data.check(loaded)
        if problems:
            raise ParameterError("\n".join(f"{loaded.source}: {m}" for m in problems))
        return loaded
    except ParameterError as e:
        # A message never shows a value that looks like a secret, nor a known secret (a token
        # pasted under the wrong key is named by its key path only).
        from .paramfile import env_secret_values

        raise ParameterError(scrub(str(e), data, env_secret_values())) from None


def _check_groups(p: Loaded) -> None:
    """Every group a role names has members somewhere: in the userlist, or at the identity provider."""
    if p.auth.provider_groups:
        return
    for i, role in enumerate(p.auth.roles):
        for g in role.groups:
            if g not in p.groups:
                raise ParameterError(
                    f"{p.source}: auth.roles[{i}].groups: group {g!r} has no member in the userlist "
                    f"{p.path(p.auth.userlist)} and auth.mode {p.auth.mode!r} gets no groups from a provider; "
                    f"add '@{g}' to its members' lines, or remove it from the role")


def _check_files(p: Loaded) -> None:
    """Files named in the parameters exist (read later, but refused now, before any change)."""
    params = p.params
    files: list[tuple[str, Optional[Path]]] = [("images.extra_ca_bundle", params.images.extra_ca_bundle)]
    if params.tls.files:
        files += [("tls.files.cert", params.tls.files.cert), ("tls.files.key", params.tls.files.key),
                  ("tls.files.ca", params.tls.files.ca)]
    for i, h in enumerate(params.hosts.all):
        if h.tls:
            group = "managers" if i < len(params.hosts.managers) else "workers"
            idx = i if group == "managers" else i - len(params.hosts.managers)
            files += [(f"hosts.{group}[{idx}].tls.{k}", getattr(h.tls, k)) for k in ("ca", "cert", "key")]
        if h.ssh:
            group = "managers" if i < len(params.hosts.managers) else "workers"
            idx = i if group == "managers" else i - len(params.hosts.managers)
            where = f"hosts.{group}[{idx}].ssh"
            files += [(f"{where}.known_hosts", h.ssh.known_hosts), (f"{where}.identity_file", h.ssh.identity_file)]
            key = h.ssh.identity_file
            if key is not None and p.path(key).is_file() and p.path(key).stat().st_mode & 0o077:
                # ssh itself refuses such a key ("UNPROTECTED PRIVATE KEY FILE"): say it now
                raise ParameterError(f"{p.source}: {where}.identity_file: {p.path(key)} can be read by others "
                                     f"(mode {p.path(key).stat().st_mode & 0o777:o}); chmod 600 it")
    if params.tls.acme:
        files += [("tls.acme.ca_bundle", params.tls.acme.ca_bundle)]
    if params.auth.mode == "oidc":
        files += [("auth.oidc.ca_bundle", params.auth.oidc.ca_bundle)]  # type: ignore[union-attr]
    if params.auth.mode == "ldap":
        files += [("auth.ldap.ca_bundle", params.auth.ldap.ca_bundle)]  # type: ignore[union-attr]
    if params.storage.hub.mode == "postgres" and params.storage.hub.postgres is not None:
        files += [("storage.hub.postgres.ca", params.storage.hub.postgres.ca)]
    from .paramfile import MAX_PEM_BYTES, read_small

    for key, f in files:
        if f is not None and not p.path(f).exists():
            raise ParameterError(f"{p.source}: {key}: file {p.path(f)} does not exist; fix the path")
        if f is not None:  # a regular file of bounded size (not a device, a pipe or a folder)
            read_small(p.path(f), MAX_PEM_BYTES, where=f"{p.source}: {key}", what="a PEM file")
    if params.tls.mode == "acme" and params.tls.acme.account_key is not None:  # type: ignore[union-attr]
        key = p.resolve_secret(params.tls.acme.account_key, "tls.acme.account_key")  # type: ignore[union-attr]
        if "PRIVATE KEY-----" not in key:
            raise ParameterError(f"{p.source}: tls.acme.account_key: not a PEM private key "
                                 "(it starts with '-----BEGIN ... PRIVATE KEY-----')")
    pg = params.storage.hub.postgres
    if params.storage.hub.mode == "postgres" and pg is not None and pg.external:
        if "-----BEGIN CERTIFICATE-----" not in p.path(pg.ca).read_text(errors="replace"):  # type: ignore[arg-type]
            raise ParameterError(f"{p.source}: storage.hub.postgres.ca: {p.path(pg.ca)} holds no PEM certificate "  # type: ignore[arg-type]
                                 "('-----BEGIN CERTIFICATE-----'); give the CA that signs the server's certificate")
        p.resolve_secret(pg.password, "storage.hub.postgres.password")  # type: ignore[arg-type]
    if params.auth.mode == "github":
        p.resolve_secret(params.auth.github.client_secret, "auth.github.client_secret")  # type: ignore[union-attr]
    if params.auth.mode == "ldap":
        p.resolve_secret(params.auth.ldap.bind_password, "auth.ldap.bind_password")  # type: ignore[union-attr]
    if params.auth.mode == "oidc":
        p.resolve_secret(params.auth.oidc.client_secret, "auth.oidc.client_secret")  # type: ignore[union-attr]
        ca = params.auth.oidc.ca_bundle  # type: ignore[union-attr]
        if ca is not None and "-----BEGIN CERTIFICATE-----" not in p.path(ca).read_text(errors="replace"):
            raise ParameterError(f"{p.source}: auth.oidc.ca_bundle: {p.path(ca)} holds no PEM certificate "
                                 "('-----BEGIN CERTIFICATE-----'); give the CA that signs the provider's certificate")


def node_for(p: "Loaded", name: Optional[str]) -> str:
    """The node a runbook acts on; a clear error when the parameter is empty."""
    if not name:
        raise ParameterError("set the runbook parameter `node` to a node name (see runbooks/ops/status.ipynb)")
    return name
