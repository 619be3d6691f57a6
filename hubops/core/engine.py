"""Docker engine clients: one factory per host, explicit timeouts, errors that name the host."""
from __future__ import annotations

import logging
import re
from contextlib import contextmanager
from typing import Iterator

import docker
import docker.errors
import requests.exceptions

from hubops.core import ssh
from hubops.core.errors import DockerOpError, PreflightError
from hubops.core.params import Host, Loaded

log = logging.getLogger("hubops")

API_VERSION = "1.41"  # Docker 20.10, the oldest engine hubops supports
DEFAULT_TIMEOUT = 60


def client_for(p: Loaded, host: Host, *, timeout: int = DEFAULT_TIMEOUT) -> docker.DockerClient:
    """A client for one host's engine (unix socket, tcp+TLS with client certificates, or ssh)."""
    kwargs: dict = {"base_url": host.url, "timeout": timeout, "version": API_VERSION}
    if host.tls is not None:
        kwargs["tls"] = docker.tls.TLSConfig(
            client_cert=(str(p.path(host.tls.cert)), str(p.path(host.tls.key))),
            ca_cert=str(p.path(host.tls.ca)),
            verify=True,
        )
    if host.url.startswith("ssh://"):
        # OpenSSH's forwarding of the engine's socket, reached here as a local socket (core/ssh.py).
        s = host.ssh
        kwargs["base_url"] = ssh.engine_url(
            host.name, host.url, engine_socket=host.engine_socket,
            known_hosts=str(p.path(s.known_hosts)) if s and s.known_hosts else None,
            identity=str(p.path(s.identity_file)) if s and s.identity_file else None,
            connect_timeout=s.connect_timeout if s else 10)
    try:
        client = docker.DockerClient(**kwargs)
    except docker.errors.DockerException as e:
        raise PreflightError(f"host {host.name} ({host.url}): cannot connect to the Docker engine: {e}") from e
    # The engine's own CA decides, not REQUESTS_CA_BUNDLE; and no HTTPS_PROXY may catch engine traffic.
    client.api.trust_env = False
    return client


class Clients:
    """Clients for every host of a deployment, made on first use and kept."""

    def __init__(self, p: Loaded, timeout: int = DEFAULT_TIMEOUT):
        self.p = p
        self.timeout = timeout
        self._clients: dict[str, docker.DockerClient] = {}
        self._manager: str | None = None

    def __getitem__(self, name: str) -> docker.DockerClient:
        if name not in self._clients:
            host = next((h for h in self.p.hosts.all if h.name == name), None)
            if host is None:
                raise KeyError(name)
            self._clients[name] = client_for(self.p, host, timeout=self.timeout)
        return self._clients[name]

    @property
    def manager(self) -> docker.DockerClient:
        """The client of the hub's manager, where Swarm objects are read and written; when its engine
        does not answer (the node is down), the first other manager whose engine does."""
        return self[self.manager_name]

    @property
    def manager_name(self) -> str:
        if self._manager is None:
            hub = self.p.hub_host.name
            self._manager = hub
            if not self.answers(hub):
                other = next((m.name for m in self.p.hosts.managers if m.name != hub and self.answers(m.name)), None)
                if other is not None:
                    log.warning("the engine of the hub's manager %s does not answer; using manager %s", hub, other)
                    self._manager = other
        return self._manager

    def answers(self, name: str, timeout: int = 3) -> bool:
        """Whether the host's engine answers a ping within `timeout` s."""
        host = next(h for h in self.p.hosts.all if h.name == name)
        try:
            c = client_for(self.p, host, timeout=timeout)
        except PreflightError:
            return False
        try:
            return bool(c.ping())
        except Exception:  # noqa: BLE001 - refused, timed out, TLS: it does not answer
            return False
        finally:
            c.close()

    def all(self) -> dict[str, docker.DockerClient]:
        return {h.name: self[h.name] for h in self.p.hosts.all}

    def close(self) -> None:
        for c in self._clients.values():
            c.close()
        self._clients.clear()


@contextmanager
def docker_op(what: str, host: str = "") -> Iterator[None]:
    """Turn Docker SDK and connection errors into DockerOpError naming the operation and the host."""
    where = f" on {host}" if host else ""
    try:
        yield
    except docker.errors.APIError as e:
        raise DockerOpError(f"{what}{where} failed: {e.explanation or e}") from e
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as e:
        raise DockerOpError(f"{what}{where} failed: the engine did not answer ({e.__class__.__name__})") from e


# -- engine versions (read by preflight and status) ----------------------------------------
# The oldest engine release hubops is tested on (Debian 12's docker.io); the newest tested are
# 26.1 (Debian trixie) and 28.5 (Debian sid), on lab nodes (`hubops lab up --engine`).
MIN_ENGINE = (20, 10)
TESTED = ("20.10", "26.1", "28.5")


def engine_release(version: str) -> tuple[int, int] | None:
    """(major, minor) of an engine version string: '28.5.2' -> (28, 5), '20.10.24+dfsg1' -> (20, 10);
    None when it is not of that form (a development build)."""
    m = re.match(r"^v?(\d+)\.(\d+)", version or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def mixed_versions(facts: dict[str, dict]) -> str | None:
    """A warning naming the nodes when the engines are of more than one release, else None."""
    by_release: dict[str, list[str]] = {}
    for host, f in facts.items():
        rel = engine_release(f["engine"])
        by_release.setdefault(".".join(map(str, rel)) if rel else f["engine"], []).append(f"{host} ({f['engine']})")
    if len(by_release) < 2:
        return None
    parts = "; ".join(f"Docker {rel} on {', '.join(hosts)}" for rel, hosts in sorted(by_release.items()))
    return (f"mixed engine versions: {parts}. hubops works on such a cluster (it speaks API "
            f"{API_VERSION} to every engine), but upgrade the older nodes when you can: "
            "Swarm features follow the oldest engine")
