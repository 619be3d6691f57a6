"""Reading the cluster's state the same way everywhere: what hubops calls a node, whose server a
service is. Pure functions of objects the Docker SDK returned."""
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
