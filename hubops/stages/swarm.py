"""20-swarm: the first manager inits the swarm if needed, every other host joins, nodes get labels.

Undo: `runbooks/ops/teardown` with leave_swarm (a swarm hubops did not create is never left).
Join tokens are read from the manager and passed straight to the joining engine: they never
reach a result, a record or the log.
"""
from __future__ import annotations

import logging

import docker
import docker.errors

from hubops.core.nodes import update_node
from hubops.core.engine import Clients, docker_op
from hubops.core.errors import ConflictError, DockerOpError
from hubops.stages.hosts import node_labels
from hubops.core.params import Host, Loaded
from hubops.core.result import Result

log = logging.getLogger("hubops")


def _state(c: docker.DockerClient, host: Host) -> dict:
    with docker_op("read swarm state", host.name):
        return c.info()["Swarm"]


def _init(p: Loaded, c: docker.DockerClient, host: Host) -> None:
    with docker_op("swarm init", host.name):
        c.swarm.init(
            advertise_addr=host.advertise_addr,
            listen_addr=f"0.0.0.0:{p.swarm.listen_port}",
            labels={"hubops.managed": "true", "hubops.deployment": p.deployment},
        )


def ensure_swarm(p: Loaded, clients: Clients, *, dry_run: bool = False) -> Result:
    """Init on the first manager, join the others with the right role, label every node."""
    r = Result("swarm", dry_run=dry_run)
    first = p.hosts.managers[0]
    mc = clients[first.name]
    st = _state(mc, first)
    if st["LocalNodeState"] == "inactive":
        r.change("create", f"swarm on {first.name}", f"swarm init, advertising {first.advertise_addr or 'the default address'}")
        if dry_run:
            # Nothing more can be planned precisely without a swarm: say what would follow.
            for h in p.hosts.all[1:]:
                r.change("create", f"node {h.name}", "would join")
            return r
        _init(p, mc, first)
        st = _state(mc, first)
    elif st["LocalNodeState"] != "active":
        raise DockerOpError(
            f"host {first.name}: swarm state is {st['LocalNodeState']!r}; "
            "fix the engine's swarm (`docker swarm leave --force` if it is a stale join) and run the stage again"
        )
    elif not st.get("ControlAvailable"):
        raise ConflictError(
            f"host {first.name} is the first manager in the parameters but is a worker of an existing swarm "
            f"(node {st.get('NodeID')}); promote it there or list a manager of that swarm first"
        )
    else:
        with docker_op("inspect swarm", first.name):
            mc.swarm.reload()
        owned = (mc.swarm.attrs.get("Spec", {}).get("Labels") or {}).get("hubops.deployment") == p.deployment
        r.keep(
            f"swarm {mc.swarm.attrs['ID'][:12]}",
            "created by hubops for this deployment" if owned else "existed before hubops; used, never left by teardown",
        )
        r.facts["swarm_created_by_hubops"] = owned
    with docker_op("inspect swarm", first.name):
        mc.swarm.reload()
    swarm_id = mc.swarm.attrs["ID"]
    tokens = mc.swarm.attrs["JoinTokens"]
    manager_addr = f"{st.get('NodeAddr') or first.advertise_addr}:{p.swarm.listen_port}"
    r.facts["swarm_id"] = swarm_id[:12]
    r.facts["manager_address"] = manager_addr

    node_ids: dict[str, str] = {first.name: st["NodeID"]}
    for h in p.hosts.all[1:]:
        c = clients[h.name]
        hs = _state(c, h)
        role = "manager" if h in p.hosts.managers else "worker"
        if hs["LocalNodeState"] == "active":
            try:
                mc.nodes.get(hs["NodeID"])
            except docker.errors.NotFound:
                raise ConflictError(
                    f"host {h.name} is already in another swarm (node {hs['NodeID'][:12]}); hubops does not "
                    f"move nodes between swarms: run `docker swarm leave` on it if it should join this one"
                ) from None
            r.keep(f"node {h.name}", "already in this swarm")
            node_ids[h.name] = hs["NodeID"]
            continue
        r.change("create", f"node {h.name}", f"join as {role}, advertising {h.advertise_addr}")
        if dry_run:
            continue
        with docker_op(f"join the swarm at {manager_addr}", h.name):
            c.swarm.join(
                remote_addrs=[manager_addr],
                join_token=tokens["Manager" if role == "manager" else "Worker"],
                advertise_addr=h.advertise_addr,
                listen_addr=f"0.0.0.0:{p.swarm.listen_port}",
            )
        node_ids[h.name] = _state(c, h)["NodeID"]

    for h in p.hosts.all:
        if h.name not in node_ids:
            continue
        _ensure_node(p, mc, r, h, node_ids[h.name], dry_run)
    return r


def _ensure_node(p: Loaded, mc: docker.DockerClient, r: Result, h: Host, node_id: str, dry_run: bool) -> None:
    """Labels and role of one node, updated only when they differ."""
    with docker_op(f"inspect node {node_id[:12]}", h.name):
        node = mc.nodes.get(node_id)
    spec = dict(node.attrs["Spec"])
    want_labels = node_labels(p, h.name)
    # Labels of this deployment that no longer apply (the hub moved to another manager) go.
    stale = [k for k in (spec.get("Labels") or {}) if k.startswith(f"hubops.{p.deployment}.") and k not in want_labels]
    want_role = "manager" if h in p.hosts.managers else "worker"
    labels = {k: v for k, v in (spec.get("Labels") or {}).items() if k not in stale}
    missing = {k: v for k, v in want_labels.items() if labels.get(k) != v}
    labels.update(want_labels)
    changes = []
    if missing or stale:
        changes.append("labels " + ", ".join([*(f"{k}={v}" for k, v in missing.items()), *(f"-{k}" for k in stale)]))
    if spec.get("Role") != want_role:
        changes.append(f"role {spec.get('Role')} -> {want_role}")
    if not changes:
        r.keep(f"node {h.name} labels", f"{want_role}, {len(want_labels)} hubops labels in place")
        return
    r.change("update", f"node {h.name}", "; ".join(changes))
    if dry_run:
        return
    prefix = f"hubops.{p.deployment}."

    def change(spec: dict) -> None:  # applied to the node as it is when written (other deployments label it too)
        spec["Labels"] = {k: v for k, v in spec["Labels"].items() if not (k.startswith(prefix) and k not in want_labels)}
        spec["Labels"].update(want_labels)
        spec["Role"] = want_role

    with docker_op(f"update node {h.name}", h.name):
        update_node(node, change)
