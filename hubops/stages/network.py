"""30-network: the attachable overlay network the hub and the users' servers share.

Undo: teardown removes it (by label). A network of that name that hubops did not make is a
conflict; hubops never changes or removes it.
"""
from __future__ import annotations

import ipaddress

import docker
import docker.types

from hubops.core import labels as L
from hubops.core.engine import Clients, docker_op
from hubops.core.errors import ConflictError, ParameterError
from hubops.core.params import Loaded
from hubops.core.result import Result


def _subnets(net) -> list[str]:
    return [c.get("Subnet") for c in (net.attrs.get("IPAM") or {}).get("Config") or [] if c.get("Subnet")]


def ensure_network(p: Loaded, clients: Clients, *, dry_run: bool = False) -> Result:
    """Create the overlay network with the parameters' subnet, or confirm it is there and right."""
    r = Result("network", dry_run=dry_run)
    c: docker.DockerClient = clients.manager
    name = p.network_name
    with docker_op("list networks", p.hub_host.name):
        nets = c.networks.list()
    mine = next((n for n in nets if n.name == name), None)
    want = ipaddress.ip_network(p.network.subnet)
    if mine is not None:
        if not L.owned_by(mine.attrs.get("Labels"), p.deployment):
            raise ConflictError(
                f"network {name} exists but was not created by hubops for deployment {p.deployment}; "
                "set network.name to another name, or remove that network yourself"
            )
        have = _subnets(mine)
        if mine.attrs.get("Driver") != "overlay" or [str(want)] != have:
            raise ConflictError(
                f"network {name} has subnet {have} (driver {mine.attrs.get('Driver')}), the parameters ask for "
                f"{want}: a network's subnet cannot change in place; run teardown first or set network.subnet back"
            )
        r.keep(f"network {name}", f"overlay {want}, attachable, endpoint mode {p.network.endpoint_mode} for services")
        r.facts.update({"network": name, "subnet": str(want), "id": mine.id[:12]})
        return r
    for n in nets:
        for s in _subnets(n):
            try:
                other = ipaddress.ip_network(s)
            except ValueError:
                continue
            if other.version == want.version and other.overlaps(want):
                raise ParameterError(
                    f"{p.source}: network.subnet: {want} overlaps network {n.name} ({other}) on {p.hub_host.name}; "
                    "choose a subnet that overlaps no network and no route of the hosts"
                )
    r.change("create", f"network {name}", f"overlay {want}, attachable" + (", encrypted" if p.network.encrypted else ""))
    r.facts.update({"network": name, "subnet": str(want)})
    if dry_run:
        return r
    with docker_op(f"create network {name}", p.hub_host.name):
        net = c.networks.create(
            name,
            driver="overlay",
            attachable=True,
            scope="swarm",
            ipam=docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=str(want))]),
            options={"encrypted": "true"} if p.network.encrypted else None,
            labels=L.labels(p.deployment, "30-network"),
        )
    r.facts["id"] = net.id[:12]
    return r
