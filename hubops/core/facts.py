"""Reading the cluster's state the same way everywhere: what hubops calls a node, whose server a
service is, which tasks a set of services has. Pure functions of objects the Docker SDK returned, except
tasks_by_service, which asks the manager once for many services."""
from __future__ import annotations

from hubops.core.params import Loaded


def node_name(p: Loaded, node) -> str:
    """A node's name as the parameters call it (the hubops.DEPLOYMENT.host label), else its hostname."""
    labels = node.attrs["Spec"].get("Labels") or {}
    return labels.get(f"hubops.{p.deployment}.host") or node.attrs["Description"]["Hostname"]


def user_of(service) -> str:
    """The JupyterHub user a user-server service belongs to (its JUPYTERHUB_USER), else its name."""
    env = service.attrs["Spec"]["TaskTemplate"]["ContainerSpec"].get("Env") or []
    for e in env:
        if e.startswith("JUPYTERHUB_USER="):
            return e.split("=", 1)[1]
    return service.name


def server_of(service) -> str:
    """Which of its user's servers a user-server service runs: "" for the default one, else the named
    server's name (the hubops.server label; before it, the JUPYTERHUB_SERVER_NAME in its environment)."""
    labels = service.attrs["Spec"].get("Labels") or {}
    if "hubops.server" in labels:
        return labels["hubops.server"]
    env = service.attrs["Spec"]["TaskTemplate"]["ContainerSpec"].get("Env") or []
    for e in env:
        if e.startswith("JUPYTERHUB_SERVER_NAME="):
            return e.split("=", 1)[1]
    return ""


def server_label(user: str, server: str) -> str:
    """How a server is named to people: "alice" for the default one, "alice/busy" for a named one."""
    return f"{user}/{server}" if server else user


# Service IDs per tasks request: 50 IDs make a query string of about 2 KB.
TASKS_CHUNK = 50


def tasks_by_service(c, services, **filters) -> dict[str, list[dict]]:
    """The tasks of `services` (docker-py Service objects), by service ID, in one tasks request per
    TASKS_CHUNK services instead of one per service: `ops status` and `ops diagnose` read every user's
    server, and with a hundred of them a request each was a hundred round trips to the manager.
    `filters`: further task filters (``**{"desired-state": "running"}``)."""
    ids = [s.id for s in services]
    out: dict[str, list[dict]] = {i: [] for i in ids}
    for i in range(0, len(ids), TASKS_CHUNK):
        for t in c.api.tasks(filters={**filters, "service": ids[i:i + TASKS_CHUNK]}):
            if t.get("ServiceID") in out:
                out[t["ServiceID"]].append(t)
    return out
