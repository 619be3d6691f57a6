"""70-storage: the hub's data volume (its SQLite database) on the hub's node.

A volume on one manager pins the hub to that node; `status` says so. Undo: teardown with
remove_volumes (the hub database is kept unless asked).
"""
from __future__ import annotations

import docker.errors

from . import labels as L
from .engine import Clients, docker_op
from .errors import ConflictError
from .params import Loaded
from .result import Result


def ensure_hub_volume(p: Loaded, clients: Clients, *, dry_run: bool = False) -> Result:
    """Create the hub's data volume on the hub node, or confirm it is there and ours."""
    r = Result("storage", dry_run=dry_run)
    node = p.hub_host.name
    c = clients[node]
    name = p.hub_volume
    r.facts.update({"volume": name, "node": node, "hub_can_move": False,
                    "why": "the hub database is on a local volume of this node; the hub is pinned to it"})
    with docker_op(f"inspect volume {name}", node):
        try:
            vol = c.volumes.get(name)
        except docker.errors.NotFound:
            vol = None
    if vol is not None:
        if not L.owned_by(vol.attrs.get("Labels"), p.deployment):
            raise ConflictError(
                f"volume {name} on {node} exists but was not created by hubops for deployment {p.deployment}; "
                "set hub.data_volume to another name, or, to adopt an existing hub database, label it "
                f"(recreate it with --label hubops.managed=true --label hubops.deployment={p.deployment})"
            )
        r.keep(f"volume {name}", f"on {node}, driver {vol.attrs.get('Driver')}")
        return r
    r.change("create", f"volume {name}", f"local volume on {node} for the hub database")
    if not dry_run:
        with docker_op(f"create volume {name}", node):
            c.volumes.create(name=name, driver="local", labels=L.labels(p.deployment, "70-storage", role="hub-data"))
    return r
