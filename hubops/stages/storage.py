"""70-storage: the hub's data volume (its SQLite database) on the hub's node, and a check that users'
homes can be kept as storage.users says (shared path on every node, volume driver installed).

A volume on one manager pins the hub to that node; `status` says so. With storage.hub.mode
shared-path the database is in a directory every manager mounts at the same path (checked here),
and the hub may run on any manager. Undo: teardown with
remove_volumes (the hub database is kept unless asked).
"""
from __future__ import annotations

import logging

import secrets

import docker.errors
import docker.types

from hubops.core import labels as L
from hubops.core.engine import Clients, docker_op
from hubops.core.errors import ConflictError
from hubops.core.params import Loaded
from hubops.core.result import Result

log = logging.getLogger("hubops")


def ensure_hub_volume(p: Loaded, clients: Clients, *, dry_run: bool = False) -> Result:
    """Create the hub's data volume on the hub node, or confirm it is there and ours; with
    storage.hub.mode shared-path, check instead that every manager sees the same directory."""
    if p.storage.hub.mode == "shared-path":
        return ensure_hub_shared_path(p, clients, dry_run=dry_run)
    if p.storage.hub.mode == "postgres":
        from hubops.stages import postgres

        return postgres.ensure_db(p, clients, dry_run=dry_run)
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


def describe_hub(p: Loaded) -> str:
    """One line saying where the hub's database lives and whether the hub can move."""
    if p.hub_db_postgres:
        from hubops.hub import hubdb

        return (f"yes: the hub database is in {hubdb.describe(p)}; if the hub's manager is lost, Swarm starts the "
                "hub on another manager (reach it there: point the hub's DNS name at that manager)"
                + ("" if p.storage.hub.pg.external or p.storage.hub.pg.path else
                   f"; the database itself stays on {p.db_node}, which must stay up"))
    if p.hub_can_move:
        return (f"yes: the hub database is in {p.storage.hub.path} on storage every manager mounts; if the hub's "
                "manager is lost, Swarm starts the hub on another manager (reach it there: point the hub's DNS "
                "name at that manager)")
    return (f"no: the hub database is on volume {p.hub_volume} on {p.hub_host.name} (storage.hub.mode volume); "
            "if that node is lost, the hub stays down until the database is restored from a backup onto another "
            "manager (runbooks/ops/restore); storage.hub.mode shared-path lets it move")


def ensure_hub_shared_path(p: Loaded, clients: Clients, *, dry_run: bool = False) -> Result:
    """storage.hub.mode shared-path: the hub's manager writes a marker in storage.hub.path and every
    other manager reads it back, so the hub finds its database wherever Swarm starts it. Changes nothing."""
    from hubops.stages import images
    from hubops.core.errors import ImageNotBuilt, PreflightError

    r = Result("storage", dry_run=dry_run)
    path = str(p.storage.hub.path)
    r.facts.update({"hub data": path, "hub_can_move": True, "why": describe_hub(p)})
    try:
        image = images.desired_refs(p, images.builder(p, clients))["singleuser"]
    except ImageNotBuilt:
        if not dry_run:
            raise
        return r.check(f"{path} on every manager", "plan: checked once 60-images has built the images")
    marker = f".hubops-{p.deployment}-hub-probe"
    token = secrets.token_hex(8)
    hub = p.hub_host.name
    order = [hub, *[h.name for h in p.hosts.managers if h.name != hub]]
    for node in order:
        script = (f"echo {token} > /probe/{marker} && cat /probe/{marker}" if node == hub
                  else f"cat /probe/{marker}")
        out = _probe(clients[node], node, image, path, script, p, key="storage.hub.path")
        if out.strip() != token:
            raise PreflightError(
                f"{p.source}: storage.hub.path: {path} on manager {node} is not the storage the hub's node "
                f"({hub}) sees at {path} (the marker written there is {'missing' if not out.strip() else 'different'}); "
                "mount the same shared filesystem at that path on every manager")
        r.check(f"{path} on {node}", "the hub's node writes there, this manager reads it back" if node != hub
                else "exists and is writable by root (the hub keeps its database there)")
    _probe(clients[hub], hub, image, path, f"rm -f /probe/{marker}", p, key="storage.hub.path")
    return r


# -- users' homes (storage.users) -----------------------------------------------------------
def describe_users(p: Loaded) -> str:
    """One line saying where users' files live and what that means for moving servers."""
    us = p.storage.users
    if us.mode == "shared-path":
        return (f"shared-path: {us.shared_path}/USER on storage every node mounts there; a user's server "
                "may run on any node and finds the same files")
    if us.mode == "volume-driver":
        return (f"volume-driver: volume {p.prefix}-home-USER through driver {us.driver}; servers may run on "
                "any node that has the driver")
    if us.mode == "node-local":
        return (f"node-local: volume {p.prefix}-home-USER on the node of the user's first server; the user's "
                "later servers are pinned to that node (lost with it)")
    return "none: users' files are lost when their server stops (storage.users.mode: none)"


def ensure_user_storage(p: Loaded, clients: Clients, *, dry_run: bool = False) -> Result:
    """Check that users' homes can be made as storage.users says, on every node. Changes nothing:
    homes are made by the hub when a user's server first starts (the hub's spawner does it)."""
    from hubops.stages import images
    from hubops.core.errors import ImageNotBuilt, PreflightError

    us = p.storage.users
    r = Result("users' storage", dry_run=dry_run)
    r.facts.update({"mode": us.mode, "means": describe_users(p), "mounted at": us.target})
    if us.mode == "none":
        log.warning("storage.users.mode is none: users' files are LOST whenever their server stops "
                    "(the idle culler, an upgrade, a restart); remove the setting to keep them in per-user volumes")
        return r.keep("users' homes", "storage.users.mode none: nothing kept; users' files are LOST when "
                      "their server stops (culled, upgraded, restarted)")
    if us.mode == "volume-driver":
        for host in p.hosts.all:
            with docker_op("read engine info", host.name):
                drivers = (clients[host.name].info().get("Plugins") or {}).get("Volume") or []
            if us.driver not in drivers:
                raise PreflightError(
                    f"{p.source}: storage.users.driver: volume driver {us.driver!r} is not installed on host "
                    f"{host.name} (it has {', '.join(drivers) or 'none'}); install the plugin on every node "
                    "(docker plugin install ...) or choose another storage.users.mode")
            r.check(f"volume driver {us.driver} on {host.name}", "installed")
        return r
    if us.mode == "node-local":
        for host in p.hosts.all:
            with docker_op("list volumes", host.name):
                vols = clients[host.name].volumes.list(filters={"label": [*L.selector(p.deployment), f"{L.ROLE}=user-home"]})
            r.check(f"homes on {host.name}", f"{len(vols)} user home volume(s)")
        return r
    # shared-path: the same directory, on the same storage, on every node. Prove it: the hub's
    # node writes a marker there, every other node must read it back.
    path = us.shared_path
    try:
        image = images.desired_refs(p, images.builder(p, clients))["singleuser"]
    except ImageNotBuilt:
        if not dry_run:
            raise
        return r.check(f"{path} on every node", "plan: checked once 60-images has built the images")
    marker = f".hubops-{p.deployment}-probe"
    token = secrets.token_hex(8)
    hub = p.hub_host.name
    order = [hub, *[h.name for h in p.hosts.all if h.name != hub]]
    for node in order:
        script = (f"echo {token} > /probe/{marker} && cat /probe/{marker}" if node == hub
                  else f"cat /probe/{marker}")
        out = _probe(clients[node], node, image, path, script, p)
        if out.strip() != token:
            raise PreflightError(
                f"{p.source}: storage.users.path: {path} on host {node} is not the storage the hub's node "
                f"({hub}) sees at {path} (the marker written there is {'missing' if not out.strip() else 'different'}); "
                "mount the same shared filesystem at that path on every node")
        r.check(f"{path} on {node}", "the hub's node writes there, this node reads it back" if node != hub
                else "exists and is writable by root (the hub creates homes there)")
    _probe(clients[hub], hub, image, path, f"rm -f /probe/{marker}", p)
    return r


def _probe(client, node: str, image: str, path: str, script: str, p: Loaded, *,
           key: str = "storage.users.path") -> str:
    """Run `script` in a throwaway container on `node` with `path` mounted at /probe."""
    from hubops.core.errors import PreflightError

    try:
        out = client.containers.run(
            image, ["sh", "-c", script], user="0:0", remove=True, network_mode="none",
            mounts=[docker.types.Mount("/probe", path, type="bind")],
            labels=L.labels(p.deployment, "70-storage", role="probe"),
        )
    except docker.errors.ContainerError:
        return ""  # the marker is not there: reported by the caller
    except docker.errors.APIError as e:
        if "bind source path does not exist" in str(e):
            raise PreflightError(
                f"{p.source}: {key}: {path} does not exist on host {node}; mount the shared "
                "filesystem there (the same on every node) before deploying") from e
        raise PreflightError(f"checking {path} on host {node} failed: {e.explanation or e}") from e
    return out.decode(errors="replace")
