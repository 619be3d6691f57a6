"""ops/remove-node: the original guide's FAQ "How do I remove a node?" ("Heh. Good one."): warn the
users whose servers run there (a notice on their hub pages), drain the node so Swarm moves its
tasks elsewhere, wait until it runs none, make it leave, remove it from the swarm, and record
what moved where. Undo: ops/add-node.
"""
from __future__ import annotations

import logging
import time

import docker
import docker.errors

from hubops.hub import running
from hubops.core import progress
from hubops.core.engine import Clients, docker_op
from hubops.core.facts import node_name, server_label
from hubops.core.nodes import update_node
from hubops.core.errors import ConflictError, DockerOpError, HubopsError
from hubops.core.params import Loaded
from hubops.core.result import Result

log = logging.getLogger("hubops")



from hubops.ops.status import placements


def _find_node(p: Loaded, c: docker.DockerClient, name: str):
    for n in c.nodes.list():
        if name in (node_name(p, n), n.attrs["Description"]["Hostname"], n.id):
            return n
    raise HubopsError(f"no node {name!r} in the swarm; `status` lists the nodes")


def remove_node(p: Loaded, clients: Clients, name: str, *, notice_seconds: float = 0,
                timeout: float = 300, dry_run: bool = False) -> Result:
    """Warn, drain, wait until empty, leave, remove; record which users' servers moved where."""
    r = Result("remove node", dry_run=dry_run)
    c = clients.manager
    node = _find_node(p, c, name)
    labels = node.attrs["Spec"].get("Labels") or {}
    if labels.get(p.hub_node_label) == "true":
        raise ConflictError(
            f"node {name} runs the hub (label {p.hub_node_label}); move the hub first "
            "(set swarm.hub_node to another manager, restore its database there, deploy)"
        )
    is_manager = node.attrs["Spec"].get("Role") == "manager"
    if is_manager and sum(n.attrs["Spec"].get("Role") == "manager" for n in c.nodes.list()) <= 1:
        raise ConflictError(f"node {name} is the swarm's only manager; it cannot be removed")
    before = [row for row in placements(p, c) if row["node"] == name]
    users = sorted({row["user"] for row in before if row["kind"] == "user server"})
    r.facts["users on the node"] = users
    r.facts["servers on the node"] = sorted(server_label(row["user"], row.get("server", ""))
                                            for row in before if row["kind"] == "user server")
    if users:
        r.change("update", "hub notice", f"warn {', '.join(users)}: their server moves off {name}")
    r.change("update", f"node {name}", "drain: Swarm moves its tasks to other nodes")
    r.change("remove", f"node {name}", "leave the swarm, then removed from the node list")
    if dry_run:
        return r
    if users:
        when = time.strftime("%H:%M UTC", time.gmtime(time.time() + notice_seconds))
        # beside the notices already shown (an operator's announcement stays)
        kept = running.announcements(p, clients)
        running.announce(p, clients, {**kept, **{u: f"Maintenance: your server moves to another machine at {when}. "
                                                  "Save your work; running kernels will restart." for u in users}})
        if notice_seconds:
            log.info("notice shown to %s; draining %s in %s s", ", ".join(users), name, notice_seconds)
            time.sleep(notice_seconds)
    with docker_op(f"drain node {name}"):
        # on the spec as it is now (another deploy may be labelling this node at the same moment)
        update_node(node, lambda spec: spec.__setitem__("Availability", "drain"))
    with progress.step(f"drain {name}: Swarm moves its tasks", total=timeout, unit="s"):
        _wait_empty(c, node.id, name, timeout)
    after = {row["service"]: row for row in placements(p, c)}
    moved = [{"user": b["user"] or b["service"], "server": b.get("server", ""), "from": name, "to": after.get(b["service"], {}).get("node", "-"),
              "state": after.get(b["service"], {}).get("state", "gone")} for b in before]
    r.facts["moved"] = moved
    host = next((h for h in p.hosts.all if h.name == name), None)
    if is_manager:
        with docker_op(f"demote node {name}"):
            update_node(node, lambda spec: spec.__setitem__("Role", "worker"))
    left = False
    if host is not None:
        try:
            with docker_op("swarm leave", name):
                clients[name].swarm.leave(force=False)
            left = True
        except DockerOpError as e:
            log.warning("node %s did not leave cleanly (%s); removing it from the swarm by force", name, e)
    _remove_from_swarm(c, node.id, name, force=not left)
    if users:  # take down only this runbook's notices
        running.announce(p, clients, {k: v for k, v in running.announcements(p, clients).items() if k not in users})
    r.facts["left cleanly"] = left
    return r


def _wait_empty(c: docker.DockerClient, node_id: str, name: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tasks = c.api.tasks(filters={"node": node_id})
        busy = [t for t in tasks if t["Status"]["State"] in ("running", "starting", "preparing", "assigned", "accepted")]
        if not busy:
            return
        time.sleep(0.5)
    raise DockerOpError(f"node {name} still runs tasks after {timeout:.0f} s of draining; see `docker node ps {name}`")


def _remove_from_swarm(c: docker.DockerClient, node_id: str, name: str, *, force: bool, timeout: float = 60) -> None:
    """Wait until the manager sees the node down (after it left), then remove it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            n = c.nodes.get(node_id)
        except docker.errors.NotFound:
            return
        if force or n.attrs["Status"]["State"] == "down" or time.monotonic() > deadline:
            with docker_op(f"remove node {name}"):
                c.api.remove_node(node_id, force=True if force or time.monotonic() > deadline else False)
            return
        time.sleep(0.5)
