"""Teardown: remove what hubops made for a deployment, by label, and nothing else.

Removes the hub service and users' server services (orphans of a crashed hub included), then the
deployment's secrets, configs and network, its node labels, and, only if asked, its volumes
(the hub database) and images, and leaves the swarm if hubops created it. Objects without the
deployment's labels are never touched.
"""
from __future__ import annotations

import logging
import time

import docker.errors

from . import labels as L, progress
from .engine import Clients, docker_op
from .params import Loaded
from .result import Result

log = logging.getLogger("hubops")


def _in_swarm(c) -> bool:
    return c.info()["Swarm"]["LocalNodeState"] == "active" and c.info()["Swarm"].get("ControlAvailable", False)


def teardown(p: Loaded, clients: Clients, *, remove_volumes: bool = False, remove_images: bool = False,
             leave_swarm: bool = False, dry_run: bool = False, timeout: float = 120) -> Result:
    """Remove the deployment's objects from the cluster."""
    r = Result("teardown", dry_run=dry_run)
    c = clients.manager
    sel = {"label": L.selector(p.deployment)}
    _stop_servers_through_hub(p, r, dry_run, timeout)
    if _in_swarm(c):
        with docker_op("list services"):
            services = c.services.list(filters=sel)
        # Users' servers first, the hub last: the hub may still be stopping servers.
        services.sort(key=lambda s: (s.attrs["Spec"].get("Labels") or {}).get(L.ROLE) == "hub")
        for s in services:
            r.change("remove", f"service {s.name}", (s.attrs["Spec"].get("Labels") or {}).get(L.ROLE, ""))
            if not dry_run:
                with docker_op(f"remove service {s.name}"):
                    try:
                        s.remove()
                    except docker.errors.NotFound:
                        pass
        if services and not dry_run:
            with progress.step("wait for the deployment's containers to stop", total=timeout, unit="s"):
                _wait_containers_gone(clients, p, timeout)
        for kind, coll in (("secret", c.secrets), ("config", c.configs), ("network", c.networks)):
            with docker_op(f"list {kind}s"):
                objs = coll.list(filters=sel)
            for o in objs:
                if kind == "network" and not L.owned_by(o.attrs.get("Labels"), p.deployment):
                    continue
                r.change("remove", f"{kind} {o.name}")
                if not dry_run:
                    with docker_op(f"remove {kind} {o.name}"):
                        _remove_retrying(o)
        _remove_node_labels(p, c, r, dry_run)
    for host in p.hosts.all:
        hc = clients[host.name]
        if remove_volumes:
            with docker_op("list volumes", host.name):
                vols = hc.volumes.list(filters=sel)
            for v in vols:
                r.change("remove", f"volume {v.name} on {host.name}")
                if not dry_run:
                    with docker_op(f"remove volume {v.name}", host.name):
                        v.remove()
        if remove_images:
            with docker_op("list images", host.name):
                imgs = hc.images.list(filters={"label": [f"{L.MANAGED}=true"]})
            for img in imgs:
                for tag in img.tags:
                    r.change("remove", f"image {tag} on {host.name}")
                    if not dry_run:
                        with docker_op(f"remove image {tag}", host.name):
                            hc.images.remove(tag, noprune=False)
    if leave_swarm and _in_swarm(c):
        c.swarm.reload()
        if (c.swarm.attrs.get("Spec", {}).get("Labels") or {}).get(L.DEPLOYMENT) == p.deployment:
            for host in reversed(p.hosts.all):
                r.change("remove", f"node {host.name} from the swarm", "swarm leave")
                if not dry_run:
                    with docker_op("swarm leave", host.name):
                        clients[host.name].swarm.leave(force=host.name == p.hosts.managers[0].name)
        else:
            r.keep("swarm", "not created by hubops for this deployment: left in place")
    return r


def _stop_servers_through_hub(p: Loaded, r: Result, dry_run: bool, timeout: float) -> None:
    """Ask the hub to stop every user's server first: Jupyter gets SIGTERM and time to save,
    and the hub's database records the servers as stopped. Skipped when the hub does not answer."""
    from .verify import HubAPI  # the hub API client lives with the verification that needs it most

    try:
        api = HubAPI(p, timeout=5)
        users = api.request("GET", "/hub/api/users").json()
    except Exception as e:  # no hub, no token, hub down: services are removed below anyway
        r.keep("users' servers through the hub", f"hub not reachable ({e.__class__.__name__}); services removed directly")
        return
    running = [u["name"] for u in users if u.get("servers")]
    for name in running:
        r.change("remove", f"server of {name}", "stopped through the hub (the server can save)")
    if dry_run:
        return
    for name in running:
        api.request("DELETE", f"/hub/api/users/{name}/server", ok=(202, 204))
    for name in running:
        api.wait_server(name, ready=False, timeout=timeout)


def _remove_retrying(obj, attempts: int = 20) -> None:
    """Networks stay busy for a moment after their last container goes."""
    for i in range(attempts):
        try:
            obj.remove()
            return
        except docker.errors.NotFound:
            return
        except docker.errors.APIError:
            if i == attempts - 1:
                raise
            time.sleep(0.5)


def _wait_containers_gone(clients: Clients, p: Loaded, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # The low-level list: the high-level one inspects each container, which may vanish meanwhile.
        left = sum(len(clients[h.name].api.containers(all=True, filters={"label": L.selector(p.deployment)}))
                   for h in p.hosts.all)
        if not left:
            return
        time.sleep(0.5)
    log.warning("containers of deployment %s still present after %s s", p.deployment, timeout)


def _remove_node_labels(p: Loaded, c, r: Result, dry_run: bool) -> None:
    prefix = f"hubops.{p.deployment}."
    for node in c.nodes.list():
        spec = dict(node.attrs["Spec"])
        labels = spec.get("Labels") or {}
        ours = [k for k in labels if k.startswith(prefix)]
        if not ours:
            continue
        r.change("update", f"node {node.attrs['Description']['Hostname']}", "remove labels " + ", ".join(ours))
        if not dry_run:
            spec["Labels"] = {k: v for k, v in labels.items() if k not in ours}
            node.reload()
            node.update(spec)
