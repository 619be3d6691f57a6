"""Day-2 node operations: list what runs where, add a node, remove a node.

The original guide's FAQ: "How do I list nodes?" (`status`) and "How do I remove a node?"
("Heh. Good one."): warn the users whose servers run there (a notice on their hub pages), drain
the node so Swarm moves its tasks elsewhere, wait until it runs none, make it leave, remove it
from the swarm, and record what moved where.
"""
from __future__ import annotations

import io
import json
import logging
import tarfile
import time
from typing import Any, Optional

import docker
import docker.errors

from . import hubconfig, images, labels as L, preflight, progress, swarm
from .engine import Clients, docker_op, mixed_versions
from .errors import ConflictError, DockerOpError, HubopsError
from .params import Loaded
from .result import Result

log = logging.getLogger("hubops")


# -- reading the cluster ------------------------------------------------------------------
def _node_name(p: Loaded, node) -> str:
    labels = node.attrs["Spec"].get("Labels") or {}
    return labels.get(f"hubops.{p.deployment}.host") or node.attrs["Description"]["Hostname"]


def _user_of(service) -> str:
    env = service.attrs["Spec"]["TaskTemplate"]["ContainerSpec"].get("Env") or []
    for e in env:
        if e.startswith("JUPYTERHUB_USER="):
            return e.split("=", 1)[1]
    return service.name


def placements(p: Loaded, c: docker.DockerClient) -> list[dict[str, Any]]:
    """The deployment's services and where their running tasks are."""
    nodes = {n.id: _node_name(p, n) for n in c.nodes.list()}
    out = []
    with docker_op("list services"):
        services = c.services.list(filters={"label": L.selector(p.deployment)})
    for s in services:
        role = (s.attrs["Spec"].get("Labels") or {}).get(L.ROLE, "")
        tasks = [t for t in s.tasks(filters={"desired-state": "running"})]
        for t in tasks or [None]:
            out.append({
                "service": s.name,
                "kind": "hub" if role == "hub" else "user server",
                "user": "" if role == "hub" else _user_of(s),
                "node": nodes.get(t["NodeID"], t["NodeID"][:12]) if t and t.get("NodeID") else "-",
                "state": t["Status"]["State"] if t else "no task",
            })
    return sorted(out, key=lambda r: (r["kind"] != "hub", r["user"]))


def swarm_health(p: Loaded, clients: Clients) -> dict[str, Any]:
    """Each manager's engine asked directly (that needs no quorum): does it answer, in which Swarm
    state, and can the swarm still be read through it. Keys: rows (one per manager in the
    parameters), reachable, total, quorum (bool), via (a manager to use, or None), error."""
    rows, via, error = [], None, ""
    swarm_managers = 0
    for h in p.hosts.managers:
        row = {"manager": h.name, "address": h.advertise_addr or h.url, "engine": "", "swarm": "", "control": ""}
        if not clients.answers(h.name):
            row["engine"] = "NO ANSWER (down or unreachable)"
            rows.append(row)
            continue
        try:
            info = clients[h.name].info()
        except Exception as e:  # noqa: BLE001 - reported in the row
            row["engine"] = f"error: {e}"
            rows.append(row)
            continue
        sw = info.get("Swarm") or {}
        row.update(engine=f"answers (Docker {info.get('ServerVersion')})", swarm=sw.get("LocalNodeState", ""),
                   control="yes" if sw.get("ControlAvailable") else "no")
        swarm_managers = max(swarm_managers, sw.get("Managers") or 0)
        rows.append(row)
        if via is None and sw.get("ControlAvailable"):
            try:
                clients[h.name].api.nodes()
                via = h.name
            except docker.errors.APIError as e:
                error = str(e.explanation or e)
                row["control"] = "no leader: " + error[:120]
    total = max(swarm_managers, len(p.hosts.managers))
    reachable = sum(r["engine"].startswith("answers") and r["control"] != "no" for r in rows)
    if via is not None:
        with docker_op("list nodes", via):
            ms = [n.get("ManagerStatus") or {} for n in clients[via].api.nodes()]
        total = sum(1 for m in ms if m) or total
        reachable = sum(m.get("Reachability") == "reachable" for m in ms)
    quorum = via is not None and reachable > total // 2
    return {"rows": rows, "reachable": reachable, "total": total, "quorum": quorum, "via": via, "error": error}


def quorum_lost_text(p: Loaded, health: dict[str, Any]) -> str:
    """What losing quorum means and how to recover, naming a surviving manager."""
    answering = [r for r in health["rows"] if r["engine"].startswith("answers")]
    if answering and all(r["swarm"] == "inactive" for r in answering):
        return ("NO SWARM: the managers' engines answer but none is in a swarm; run `hubops deploy` "
                "(20-swarm makes it)")
    alive = next((r for r in health["rows"] if r["engine"].startswith("answers")), None)
    where = (f"on the surviving manager {alive['manager']} ({alive['address']}): "
             f"`docker swarm init --force-new-cluster --advertise-addr {alive['address']}`"
             if alive else "on a surviving manager: `docker swarm init --force-new-cluster --advertise-addr ADDR`")
    down = ", ".join(r["manager"] for r in health["rows"] if not r["engine"].startswith("answers")) or "?"
    return (f"QUORUM LOST: {health['reachable']} of {health['total']} managers reachable (down: {down}). The swarm "
            "cannot change anything: no new or restarted server, no deploy, no node change; running users' servers "
            "and the hub keep serving. Recovery: start the managers that are down again (quorum returns by itself); "
            f"if they are lost for good, {where}, then add managers again (on each: `docker swarm leave --force`, "
            "then the command `docker swarm join-token manager` prints on the new leader; or list them in the "
            "parameter file and run `hubops deploy`)")


def status(p: Loaded, clients: Clients) -> Result:
    """Nodes, roles, availability; what runs where; which users' servers are on which node."""
    r = Result("status")
    from .storage import describe_hub, describe_users

    health = swarm_health(p, clients)
    if not health["quorum"]:
        r.check("managers' quorum", f"LOST: {health['reachable']} of {health['total']} managers reachable")
        r.facts["managers"] = (f"{health['reachable']} of {health['total']} reachable: quorum LOST")
        r.facts["quorum"] = quorum_lost_text(p, health)
        r.facts["manager engines"] = health["rows"]
        r.facts["running containers (each node's engine asked)"] = running_containers(p, clients)
        r.facts["users' storage"] = describe_users(p)
        r.facts["hub can move"] = describe_hub(p)
        return r
    c = clients[health["via"]]
    with docker_op("list nodes", health["via"]):
        nodes = c.nodes.list()
    rows = []
    managers_total = managers_reachable = 0
    for n in sorted(nodes, key=lambda n: (n.attrs["Spec"].get("Role") != "manager", _node_name(p, n))):
        spec, desc, st = n.attrs["Spec"], n.attrs["Description"], n.attrs["Status"]
        ms = n.attrs.get("ManagerStatus") or {}
        if spec.get("Role") == "manager":
            managers_total += 1
            managers_reachable += ms.get("Reachability") == "reachable"
        rows.append({
            "node": _node_name(p, n),
            "hostname": desc.get("Hostname"),
            "role": spec.get("Role") + (" (leader)" if ms.get("Leader") else ""),
            "availability": spec.get("Availability"),
            "state": st.get("State"),
            "address": st.get("Addr"),
            "engine": desc.get("Engine", {}).get("EngineVersion"),
            "runs hub": "yes" if (spec.get("Labels") or {}).get(p.hub_node_label) == "true" else "",
        })
        r.check(f"node {_node_name(p, n)}", f"{spec.get('Role')}, {spec.get('Availability')}, {st.get('State')}")
    where = placements(p, c)
    r.facts["nodes"] = rows
    mixed = mixed_versions({row["node"]: {"engine": row["engine"] or "?"} for row in rows})
    r.facts["engine versions"] = (f"WARNING: {mixed}" if mixed else
                                  f"every node runs Docker {rows[0]['engine']}" if rows else "no node")
    r.facts["services"] = where
    users = {}
    for row in where:
        if row["kind"] == "user server":
            users.setdefault(row["node"], []).append(row["user"])
    r.facts["users by node"] = [{"node": k, "users": ", ".join(sorted(v))} for k, v in sorted(users.items())]
    quorum = managers_reachable > managers_total // 2
    r.facts["managers"] = f"{managers_reachable} of {managers_total} reachable: quorum {'kept' if quorum else 'LOST'}"
    r.facts["users' storage"] = describe_users(p)
    r.facts["hub can move"] = describe_hub(p)
    return r


def running_containers(p: Loaded, clients: Clients) -> list[dict[str, Any]]:
    """The deployment's containers each answering engine runs (no manager needed)."""
    rows = []
    for h in p.hosts.all:
        if not clients.answers(h.name):
            rows.append({"node": h.name, "container": "-", "kind": "-", "state": "engine does not answer"})
            continue
        with docker_op("list containers", h.name):
            found = clients[h.name].containers.list(filters={"label": L.selector(p.deployment)})
        for ct in found:
            role = (ct.labels or {}).get(L.ROLE, "")
            env = {e.split("=", 1)[0]: e.split("=", 1)[1] for e in ct.attrs["Config"].get("Env") or [] if "=" in e}
            rows.append({"node": h.name, "container": ct.name[:60], "kind": "hub" if role == "hub" else "user server",
                         "user": env.get("JUPYTERHUB_USER", ""), "state": ct.status})
    return rows


# -- notices on the hub's pages -----------------------------------------------------------
def hub_node(p: Loaded, clients: Clients) -> str:
    """The host the hub's task runs on: the hub's manager, unless the hub moved (storage.hub shared-path)."""
    if not p.hub_can_move:
        return p.hub_host.name
    c = clients.manager
    with docker_op("find the hub's task"):
        tasks = c.api.tasks(filters={"service": p.hub_service, "desired-state": "running"})
        for t in tasks:
            if t["Status"]["State"] == "running" and t.get("NodeID"):
                return _node_name(p, c.nodes.get(t["NodeID"]))
    return p.hub_host.name


def _hub_container(p: Loaded, clients: Clients):
    node = hub_node(p, clients)
    hc = clients[node]
    with docker_op("find the hub container", node):
        found = hc.containers.list(filters={"label": [*L.selector(p.deployment), f"{L.ROLE}=hub"], "status": "running"})
    if not found:
        raise HubopsError(f"no running hub container of deployment {p.deployment} on {node}")
    return found[0]


def announce(p: Loaded, clients: Clients, notes: dict[str, str]) -> None:
    """Show `notes` (user name -> text, "*" for everyone) on the users' hub pages; {} clears them."""
    data = json.dumps(notes).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(name=hubconfig.ANNOUNCEMENTS.rsplit("/", 1)[1])
        info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
        tar.addfile(info, io.BytesIO(data))
    with docker_op("write the hub's announcements"):
        _hub_container(p, clients).put_archive(hubconfig.DATA_DIR, buf.getvalue())


# -- add ---------------------------------------------------------------------------------------
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
    return [checked, joined, delivered]


# -- remove -----------------------------------------------------------------------------------
def _find_node(p: Loaded, c: docker.DockerClient, name: str):
    for n in c.nodes.list():
        if name in (_node_name(p, n), n.attrs["Description"]["Hostname"], n.id):
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
    if users:
        r.change("update", "hub notice", f"warn {', '.join(users)}: their server moves off {name}")
    r.change("update", f"node {name}", "drain: Swarm moves its tasks to other nodes")
    r.change("remove", f"node {name}", "leave the swarm, then removed from the node list")
    if dry_run:
        return r
    if users:
        when = time.strftime("%H:%M UTC", time.gmtime(time.time() + notice_seconds))
        announce(p, clients, {u: f"Maintenance: your server moves to another machine at {when}. "
                                 "Save your work; running kernels will restart." for u in users})
        if notice_seconds:
            log.info("notice shown to %s; draining %s in %s s", ", ".join(users), name, notice_seconds)
            time.sleep(notice_seconds)
    spec = dict(node.attrs["Spec"])
    spec["Availability"] = "drain"
    with docker_op(f"drain node {name}"):
        node.reload()
        node.update(spec)
    with progress.step(f"drain {name}: Swarm moves its tasks", total=timeout, unit="s"):
        _wait_empty(c, node.id, name, timeout)
    after = {row["service"]: row for row in placements(p, c)}
    moved = [{"user": b["user"] or b["service"], "from": name, "to": after.get(b["service"], {}).get("node", "-"),
              "state": after.get(b["service"], {}).get("state", "gone")} for b in before]
    r.facts["moved"] = moved
    host = next((h for h in p.hosts.all if h.name == name), None)
    if is_manager:
        with docker_op(f"demote node {name}"):
            node.reload()
            spec = dict(node.attrs["Spec"])
            spec["Role"] = "worker"
            node.update(spec)
    left = False
    if host is not None:
        try:
            with docker_op("swarm leave", name):
                clients[name].swarm.leave(force=False)
            left = True
        except DockerOpError as e:
            log.warning("node %s did not leave cleanly (%s); removing it from the swarm by force", name, e)
    _remove_from_swarm(c, node.id, name, force=not left)
    if users:
        announce(p, clients, {})
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


def node_for(p: Loaded, name: Optional[str]) -> str:
    """The node a runbook acts on; a clear error when the parameter is empty."""
    if not name:
        raise HubopsError("set the runbook parameter `node` to a node name (see runbooks/ops/status.ipynb)")
    return name
