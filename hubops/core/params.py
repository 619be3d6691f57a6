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

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hubops.core.errors import ParameterError
from hubops.core.paths import PROJECT

NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")
# JupyterHub user names that are also valid in Docker service names (the spawner's name template).
USER_RE = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,62}[a-z0-9])?$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SecretRef(_Model):
    """Where a secret comes from: an environment variable or a file. Never the value itself."""

    env: Optional[str] = None
    file: Optional[Path] = None

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


class Host(_Model):
    """One Docker engine."""

    name: str = Field(description="node name used by hubops (labels, records)")
    url: str = Field(description="unix:///var/run/docker.sock, tcp://HOST:2376 or ssh://USER@HOST")
    advertise_addr: Optional[str] = Field(None, description="address other nodes reach this one at")
    tls: Optional[HostTLS] = None
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


class Network(_Model):
    name: Optional[str] = Field(None, description="overlay network name (default hubops-DEPLOYMENT)")
    subnet: str = "10.231.0.0/24"
    endpoint_mode: Literal["dnsrr", "vip"] = "dnsrr"
    encrypted: bool = False

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


class Auth(_Model):
    mode: Literal["shared-password", "github"] = "shared-password"
    userlist: Path = Field(description="file with one 'name' or 'name admin' per line")
    github: Optional[GitHubAuth] = None

    @model_validator(mode="after")
    def _mode_needs(self) -> "Auth":
        if self.mode == "github" and self.github is None:
            raise ValueError("mode 'github' needs github: {client_id, client_secret: {env: NAME}}")
        return self


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
    placement: Literal["auto", "workers", "any"] = Field(
        "auto", description="auto: on workers when there are any, else anywhere"
    )
    default_url: str = "/lab"


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

    mode: Literal["none", "shared-path", "volume-driver", "node-local"] = Field(
        "none", description="none: nothing kept; shared-path: PATH/USER on storage every node mounts at PATH; "
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


class HubStorage(_Model):
    """Where the hub keeps its database, which decides whether the hub can move to another manager."""

    mode: Literal["volume", "shared-path"] = Field(
        "volume", description="volume: a local volume on the hub's manager, the hub pinned there (it cannot move); "
        "shared-path: PATH on storage every manager mounts at PATH, the hub may run on any manager")
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
        if self.mode == "volume" and self.path is not None:
            raise ValueError("path is for mode 'shared-path'; remove it or set mode: shared-path")
        return self


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

    @model_validator(mode="before")
    @classmethod
    def _empty_sections(cls, data: Any) -> Any:
        # A section whose keys are all commented out (`images:` alone) means "the defaults".
        if isinstance(data, dict):
            return {k: ({} if v is None and k in ("swarm", "network", "hub", "tls", "images", "spawner", "verify",
                                                          "storage", "backup", "culler") else v)
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
    def _hub_can_move_everywhere(self) -> "Params":
        if self.storage.hub.mode != "shared-path":
            return self
        sockets = {m.engine_socket for m in self.hosts.managers}
        if len(sockets) > 1:
            raise ValueError(
                "storage.hub.mode shared-path lets the hub run on any manager, and it mounts the engine socket "
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
        """Whether Swarm may start the hub on another manager (its database is on shared storage)."""
        return self.storage.hub.mode == "shared-path"

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
        return "".join(f"{u} admin\n" if a else f"{u}\n" for u, a in sorted(self.users.items()))

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
        path = _relative(self.source, ref.file)  # type: ignore[arg-type]
        try:
            value = path.read_text().strip()
        except OSError as e:
            raise ParameterError(f"{self.source}: {key}: cannot read secret file {path}: {e.strerror}") from None
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
        return "unknown key; remove it or check its spelling against parameters/production.example.yaml"
    if kind == "missing":
        return "required key is missing; add it"
    if kind == "literal_error":
        return f"{msg} (got {err.get('input')!r})"
    return msg


def parse_userlist(path: Path, source: Path) -> dict[str, bool]:
    """Read a userlist: one ``name`` or ``name admin`` per line, ``#`` comments. name -> is admin."""
    key = f"{source}: auth.userlist"
    try:
        text = path.read_text()
    except OSError as e:
        raise ParameterError(f"{key}: cannot read {path}: {e.strerror}; create it with one 'name' or 'name admin' per line") from None
    users: dict[str, bool] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) > 2 or (len(parts) == 2 and parts[1] != "admin"):
            raise ParameterError(f"{key}: {path}:{n}: {raw.strip()!r}: a line is 'name' or 'name admin'")
        name = parts[0].lower()
        if not USER_RE.match(name):
            raise ParameterError(f"{key}: {path}:{n}: {parts[0]!r} is not a valid user name")
        if name in users:
            raise ParameterError(f"{key}: {path}:{n}: {name!r} is listed twice; keep one line per user")
        users[name] = len(parts) == 2
    if not users:
        raise ParameterError(f"{key}: {path} lists no users; add at least one 'name admin' line")
    if not any(users.values()):
        raise ParameterError(f"{key}: {path} has no admin; mark at least one user, e.g. '{next(iter(users))} admin'")
    return users


def load_params(params_file: str | os.PathLike) -> Loaded:
    """Load and check a parameter file. Raises ParameterError listing every problem found."""
    source = Path(params_file)
    if not source.is_absolute() and not source.exists() and (PROJECT / source).exists():
        # Opened in JupyterLab the notebook runs in runbooks/: the default path is the project's.
        source = PROJECT / source
    try:
        raw_bytes = source.read_bytes()
    except OSError as e:
        raise ParameterError(f"{source}: cannot read the parameter file: {e.strerror}") from None
    try:
        data = yaml.safe_load(raw_bytes)
    except yaml.YAMLError as e:
        raise ParameterError(f"{source}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ParameterError(f"{source}: the file must hold a mapping of keys (deployment, hosts, auth, ...)")
    try:
        params = Params.model_validate(data)
    except ValidationError as e:
        problems = [f"{source}: {_loc(err['loc'])}: {_explain(err)}" for err in e.errors()]
        raise ParameterError("\n".join(problems)) from None
    source = source.resolve()
    loaded = Loaded(params, source, hashlib.sha256(raw_bytes).hexdigest(), {})
    loaded.users = parse_userlist(loaded.path(params.auth.userlist), source)
    _check_files(loaded)
    return loaded


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
    if params.tls.acme:
        files += [("tls.acme.ca_bundle", params.tls.acme.ca_bundle)]
    for key, f in files:
        if f is not None and not p.path(f).is_file():
            raise ParameterError(f"{p.source}: {key}: file {p.path(f)} does not exist; fix the path")
    if params.tls.mode == "acme" and params.tls.acme.account_key is not None:  # type: ignore[union-attr]
        key = p.resolve_secret(params.tls.acme.account_key, "tls.acme.account_key")  # type: ignore[union-attr]
        if "PRIVATE KEY-----" not in key:
            raise ParameterError(f"{p.source}: tls.acme.account_key: not a PEM private key "
                                 "(it starts with '-----BEGIN ... PRIVATE KEY-----')")
    if params.auth.mode == "github":
        p.resolve_secret(params.auth.github.client_secret, "auth.github.client_secret")  # type: ignore[union-attr]


def node_for(p: "Loaded", name: Optional[str]) -> str:
    """The node a runbook acts on; a clear error when the parameter is empty."""
    if not name:
        raise ParameterError("set the runbook parameter `node` to a node name (see runbooks/ops/status.ipynb)")
    return name
