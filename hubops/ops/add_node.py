"""ops/add-node: a host added to the parameter file is checked, joined to the swarm, labelled and
given the images (and the network-policy agent, 65-netpolicy). Undo: ops/remove-node.
"""
from __future__ import annotations

import logging


from hubops.stages import images, netpolicy, preflight, swarm
from hubops.core.engine import Clients
from hubops.core.errors import HubopsError
from hubops.core.params import Loaded
from hubops.core.result import Result

log = logging.getLogger("hubops")




def add_node(p: Loaded, clients: Clients, name: str, *, dry_run: bool = False) -> list[Result]:
    """Bring a host listed in the parameters into the swarm: engine checked, joined, labelled,
    images delivered. Add the host to the parameter file first."""
    host = next((h for h in p.hosts.all if h.name == name), None)
    if host is None:
        raise HubopsError(
            f"{p.source}: host {name!r} is not in hosts.managers or hosts.workers; add it there "
            "(url, advertise_addr, tls) and run add-node again"
        )
    checked = Result("engine", dry_run=dry_run)
    facts = preflight.probe(clients, host)
    checked.check(f"host {name}", f"Docker {facts['engine']}, {facts['cpus']} CPUs, {facts['memory_gib']} GiB")
    joined = swarm.ensure_swarm(p, clients, dry_run=dry_run)
    delivered = images.ensure_delivered(p, clients, dry_run=dry_run)
    # The network-policy agent's image on the new node, and the new node's address among those
    # users' servers may not reach (the agents restart with it).
    policy = netpolicy.ensure_netpolicy(p, clients, dry_run=dry_run)
    return [checked, joined, delivered, policy]
