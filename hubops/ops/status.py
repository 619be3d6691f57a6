"""ops/status: the swarm's nodes, roles and availability; what runs where; which users' servers
are on which node; whether the managers keep quorum; whether the hub can move. The original
guide's FAQ "How do I list nodes in my Swarm cluster?". Changes nothing on the cluster.
"""
from __future__ import annotations

import logging
from typing import Any

import docker
import docker.errors

from hubops.core import labels as L
from hubops.core import monitoring
from hubops.core.engine import Clients, docker_op, mixed_versions
from hubops.core.facts import node_name, server_label, server_of, tasks_by_service, user_of
from hubops.core.profiles import PROFILE_LABEL
from hubops.core.params import Loaded
from hubops.core.result import Result
from hubops.stages import attachments, netpolicy

log = logging.getLogger("hubops")




def service_kind(role: str) -> str:
    """What a service (or container) of the deployment is, by its hubops.role label: users' servers
    are labelled user-server (those of an older hubops: no role); every other kind says what it is."""
    if role in ("", "user-server"):
        return "user server"
    if role in monitoring.ROLES:
        return "monitoring"
    return {"hub": "hub", netpolicy.ROLE: "network policy", "apiproxy": "Docker API door",
            attachments.ROLE: "network attachment (every node)"}.get(role, role)


def placements(p: Loaded, c: docker.DockerClient) -> list[dict[str, Any]]:
    """The deployment's services and where their running tasks are."""
    nodes = {n.id: node_name(p, n) for n in c.nodes.list()}
    out = []
    with docker_op("list services"):
        services = c.services.list(filters={"label": L.selector(p.deployment)})
    with docker_op("list the services' tasks"):
        running_tasks = tasks_by_service(c, services, **{"desired-state": "running"})
    for s in services:
        role = (s.attrs["Spec"].get("Labels") or {}).get(L.ROLE, "")
        tasks = running_tasks[s.id]
        for t in tasks or [None]:
            out.append({
                "service": s.name,
                "kind": service_kind(role),
                "user": user_of(s) if service_kind(role) == "user server" else "",
                # "": the default server
                "server": server_of(s) if service_kind(role) == "user server" else "",
                "node": nodes.get(t["NodeID"], t["NodeID"][:12]) if t and t.get("NodeID") else "-",
                "state": t["Status"]["State"] if t else "no task",
                "profile": (s.attrs["Spec"].get("Labels") or {}).get(PROFILE_LABEL, ""),  # spawn profile, if any
            })
    return sorted(out, key=lambda r: (r["kind"] != "hub", r["kind"] == "monitoring", r["user"], r["server"]))


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
    from hubops.stages.storage import describe_hub, describe_users

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
    for n in sorted(nodes, key=lambda n: (n.attrs["Spec"].get("Role") != "manager", node_name(p, n))):
        spec, desc, st = n.attrs["Spec"], n.attrs["Description"], n.attrs["Status"]
        ms = n.attrs.get("ManagerStatus") or {}
        if spec.get("Role") == "manager":
            managers_total += 1
            managers_reachable += ms.get("Reachability") == "reachable"
        rows.append({
            "node": node_name(p, n),
            "hostname": desc.get("Hostname"),
            "role": spec.get("Role") + (" (leader)" if ms.get("Leader") else ""),
            "availability": spec.get("Availability"),
            "state": st.get("State"),
            "address": st.get("Addr"),
            "engine": desc.get("Engine", {}).get("EngineVersion"),
            "runs hub": "yes" if (spec.get("Labels") or {}).get(p.hub_node_label) == "true" else "",
        })
        r.check(f"node {node_name(p, n)}", f"{spec.get('Role')}, {spec.get('Availability')}, {st.get('State')}")
    where = placements(p, c)
    r.facts["nodes"] = rows
    mixed = mixed_versions({row["node"]: {"engine": row["engine"] or "?"} for row in rows})
    r.facts["engine versions"] = (f"WARNING: {mixed}" if mixed else
                                  f"every node runs Docker {rows[0]['engine']}" if rows else "no node")
    r.facts["services"] = where
    users = {}
    for row in where:
        if row["kind"] == "user server":
            users.setdefault(row["node"], []).append(server_label(row["user"], row["server"])
                                                     + (f" ({row['profile']})" if row.get("profile") else ""))
    r.facts["users by node"] = [{"node": k, "users": ", ".join(sorted(v))} for k, v in sorted(users.items())]
    quorum = managers_reachable > managers_total // 2
    r.facts["managers"] = f"{managers_reachable} of {managers_total} reachable: quorum {'kept' if quorum else 'LOST'}"
    r.facts["users' storage"] = describe_users(p)
    r.facts["hub can move"] = describe_hub(p)
    # What each node's iptables hold for the deployment (a short-lived container per node reads them).
    r.facts["network policy"] = (netpolicy.describe(p, clients) if p.network.policy.enabled
                                 else "off (network.policy.enabled: false)")
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
            rows.append({"node": h.name, "container": ct.name[:60], "kind": service_kind(role),
                         "user": env.get("JUPYTERHUB_USER", ""), "state": ct.status})
    return rows
