"""Teardown: remove what hubops made for a deployment, by label, and nothing else.

Removes the hub service and users' server services (orphans of a crashed hub included), hubops's
own throwaway containers left on any node, then the deployment's secrets, configs and network, its
node labels, and, only if asked, on every node: its volumes (`remove_volumes`: the hub database),
users' home volumes (`remove_user_data`, a separate flag: users' files are kept unless asked) and
images, and leaves the swarm if hubops created it. Objects without the deployment's labels are
never touched.
"""
from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor

import docker.errors

from hubops.core import labels as L, progress
from hubops.hub import running
from hubops.core.nodes import update_node
from hubops.core.engine import Clients, docker_op
from hubops.core.errors import VerifyError
from hubops.core.facts import server_label
from hubops.core.params import Loaded
from hubops.core.result import Result
from hubops.stages import netpolicy

log = logging.getLogger("hubops")


def _in_swarm(c) -> bool:
    return c.info()["Swarm"]["LocalNodeState"] == "active" and c.info()["Swarm"].get("ControlAvailable", False)


USER_HOME = "user-home"
SHARED_FOLDER = "shared-folder"


def teardown(p: Loaded, clients: Clients, *, remove_volumes: bool = False, remove_user_data: bool = False,
             remove_images: bool = False, leave_swarm: bool = False, dry_run: bool = False,
             timeout: float = 120) -> Result:
    """Remove the deployment's objects from the cluster.

    `remove_volumes` removes the deployment's volumes except users' homes (the hub database);
    `remove_user_data` removes users' home volumes (storage.users node-local or volume-driver),
    on every node. Directories on a shared path (storage.users shared-path) are never removed:
    that storage is not hubops's; the record says where they are."""
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
    _remove_stray_containers(p, clients, r, dry_run)
    # The network-policy agents removed their rules as they stopped; anything a killed agent left:
    r.items += netpolicy.remove_rules(p, clients, dry_run=dry_run).items
    if _in_swarm(c):
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
    # Each node's volumes and images in parallel: removing image layers takes seconds per node.
    with ThreadPoolExecutor(max_workers=max(1, min(4, len(p.hosts.all))), thread_name_prefix="hubops-teardown") as pool:
        per_node = [pool.submit(_clean_node, p, clients[h.name], h.name, sel, remove_volumes=remove_volumes,
                                remove_user_data=remove_user_data, remove_images=remove_images, dry_run=dry_run)
                    for h in p.hosts.all]
        for fut in per_node:  # in host order, so the record reads the same every time
            r.items += fut.result().items
    if p.storage.users.mode == "shared-path":
        r.keep(f"users' homes under {p.storage.users.shared_path}",
               "on shared storage that hubops does not own: never removed by teardown")
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


def _clean_node(p: Loaded, hc, node: str, sel: dict, *, remove_volumes: bool, remove_user_data: bool,
                remove_images: bool, dry_run: bool) -> Result:
    """One node's part of the teardown: the deployment's volumes (users' homes only with
    remove_user_data) and, if asked, hubops's images."""
    r = Result("teardown", dry_run=dry_run)
    with docker_op("list volumes", node):
        vols = hc.volumes.list(filters=sel)
    for v in vols:
        # users' data: their homes, and group folders made by a volume driver
        home = (v.attrs.get("Labels") or {}).get(L.ROLE) in (USER_HOME, SHARED_FOLDER)
        scratch = (v.attrs.get("Labels") or {}).get(L.ROLE) == "front-run"  # the TLS front's tmpfs: no data
        if not (remove_user_data if home else remove_volumes or scratch):
            r.keep(f"volume {v.name} on {node}",
                   "a user's home: kept (remove_user_data=True removes it)" if home
                   else "kept (remove_volumes=True removes it)")
            continue
        r.change("remove", f"volume {v.name} on {node}", "a user's home" if home else "")
        if not dry_run:
            with docker_op(f"remove volume {v.name}", node):
                try:
                    v.remove()
                except docker.errors.NotFound:
                    pass
    if remove_images:
        with docker_op("list images", node):
            imgs = hc.images.list(filters={"label": [f"{L.MANAGED}=true"]})
        for img in imgs:
            for tag in img.tags:
                r.change("remove", f"image {tag} on {node}")
                if not dry_run:
                    with docker_op(f"remove image {tag}", node):
                        try:
                            hc.images.remove(tag, noprune=False)
                        except docker.errors.APIError as e:
                            if e.status_code != 409:
                                raise
                            # Used by a container hubops did not make (it removed its own).
                            r.items.pop()
                            r.keep(f"image {tag} on {node}", "in use by a container that is not "
                                   f"hubops's: kept ({e.explanation or e})")
    return r


def _stop_servers_through_hub(p: Loaded, r: Result, dry_run: bool, timeout: float) -> None:
    """Ask the hub to stop every user's server first: Jupyter gets SIGTERM and time to save,
    and the hub's database records the servers as stopped. Skipped when the hub does not answer."""

    try:
        api = running.HubAPI(p, timeout=5)
        users = api.users()  # page by page: one answer holds at most 200 users
    except Exception as e:  # no hub, no token, hub down: services are removed below anyway
        r.keep("users' servers through the hub", f"hub not reachable ({e.__class__.__name__}); services removed directly")
        return
    # every server of every user: the default one ("") and named ones
    busy = [(u["name"], s) for u in users for s in sorted(u.get("servers") or {})]
    for name, server in busy:
        r.change("remove", f"server {server_label(name, server)}", "stopped through the hub (the server can save)")
    if dry_run:
        return
    # JupyterHub answers a stop only after its slow_stop_timeout (10 s) on a busy hub: ask with
    # the hub API's spawn timeout, and let a stop that does not finish fall back to removing the
    # service below (the server then gets Swarm's SIGTERM and grace period instead).
    stop_servers(api, busy, timeout)


# Servers stopped through the hub at once. Each stop waits until its old container is gone (3-8 s
# on a lab): one after another, 10 servers took 50 s of a teardown and 100 would take minutes
# (bench/scale.py). The hub runs stops side by side (no limit like its spawn limit).
STOP_CONCURRENCY = 10


def stop_servers(api: "running.HubAPI", servers: list[tuple[str, str]], timeout: float,
                 concurrency: int = STOP_CONCURRENCY) -> None:
    """Ask the hub to stop each (user, server name) and wait until it has, `concurrency` at a time;
    a stop the hub refuses or does not finish within `timeout` is logged (its service is removed after)."""

    def stop_one(item: tuple[str, str]) -> None:
        name, server = item
        try:
            api.request("DELETE", running.server_path(name, server), ok=(202, 204),
                        timeout=running.SPAWN_REQUEST_TIMEOUT)
        except VerifyError as e:
            log.warning("the hub did not stop server %s (%s); its service is removed directly",
                        server_label(name, server), e)
            return
        try:
            api.wait_server(name, ready=False, timeout=timeout, server_name=server)
        except VerifyError as e:
            log.warning("server %s did not stop through the hub (%s); its service is removed directly",
                        server_label(name, server), e)

    if not servers:
        return
    with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(servers))), thread_name_prefix="hubops-stop") as pool:
        list(pool.map(stop_one, servers))


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


def _remove_stray_containers(p: Loaded, clients: Clients, r: Result, dry_run: bool) -> None:
    """hubops's own throwaway containers (storage probes, restore helpers) that a crash left on a
    node: labelled for the deployment, not a Swarm task (tasks go with their services)."""
    for host in p.hosts.all:
        hc = clients[host.name]
        with docker_op("list containers", host.name):
            found = hc.api.containers(all=True, filters={"label": L.selector(p.deployment)})
        for ctr in found:
            if "com.docker.swarm.task.id" in (ctr.get("Labels") or {}):
                continue
            name = (ctr.get("Names") or ["/" + ctr["Id"][:12]])[0].lstrip("/")
            r.change("remove", f"container {name} on {host.name}", (ctr.get("Labels") or {}).get(L.ROLE, ""))
            if not dry_run:
                with docker_op(f"remove container {name}", host.name):
                    try:
                        hc.api.remove_container(ctr["Id"], force=True, v=False)
                    except docker.errors.NotFound:
                        pass


def _wait_containers_gone(clients: Clients, p: Loaded, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # The low-level list: the high-level one inspects each container, which may vanish meanwhile.
        left = sum(len(clients[h.name].api.containers(
            all=True, filters={"label": [*L.selector(p.deployment), "com.docker.swarm.task.id"]})) for h in p.hosts.all)
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
        if not dry_run:  # on the node as it is when written: other deployments label it too
            update_node(node, lambda spec: spec.update(
                Labels={k: v for k, v in spec["Labels"].items() if not k.startswith(prefix)}))
