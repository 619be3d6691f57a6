"""How many users' servers may start at once: JupyterHub's concurrent_spawn_limit, sized to the cluster.

Measured on the embedded default (one node, 2 cores): 100 users started 20 at a time overloaded the
node, the hub's healthcheck timed out and Swarm killed the hub (and the proxy with it); the same 100
started 4 at a time all answered. So the default is twice the CPUs of the nodes that run users'
servers (at least 2), read from the Swarm at deploy time; `spawner.concurrent_spawn_limit` sets it by
hand (0: no limit). Spawns beyond the limit get HTTP 429 with a Retry-After header and JupyterHub's
"Too many users trying to log in right now. Try again in 10 seconds."; the hub's 429 page (template
hubops/inhub/templates/429.html) tells the user their server starts in turn and tries again by itself.
"""
from __future__ import annotations

from typing import Any, Optional

from hubops.core.params import Loaded

PER_CPU = 2
MINIMUM = 2
# Seconds a throttled user is asked to wait (JupyterHub's spawn_throttle_retry_range; its default,
# 30-60 s, is for spawns of minutes). Its lower bound should be about a spawn's median time.
RETRY_RANGE = (5, 15)
# Assumed when the nodes cannot be read (a dry run before the swarm exists, a rendering in a test).
ASSUMED_CPUS = 2.0


def user_nodes_only_workers(p: Loaded) -> bool:
    """Whether users' servers run on workers only (as hub.config.placement_constraints decides)."""
    mode = p.spawner.placement
    return mode == "workers" or (mode == "auto" and bool(p.hosts.workers))


def user_node_cpus(client: Any, p: Loaded) -> list[float]:
    """CPUs of each ready, active Swarm node that may run users' servers (read from the manager)."""
    out = []
    for node in client.nodes.list():
        a = node.attrs
        if (a.get("Status") or {}).get("State") != "ready" or (a.get("Spec") or {}).get("Availability") != "active":
            continue
        if user_nodes_only_workers(p) and (a.get("Spec") or {}).get("Role") != "worker":
            continue
        out.append(((a.get("Description") or {}).get("Resources") or {}).get("NanoCPUs", 0) / 1e9)
    return out


def concurrent_spawn_limit(p: Loaded, cpus: Optional[list[float]] = None) -> int:
    """The limit for these parameters: spawner.concurrent_spawn_limit when set, else PER_CPU times the
    CPUs of the user nodes (`cpus`; when unknown, ASSUMED_CPUS per host that may run servers)."""
    if p.spawner.concurrent_spawn_limit is not None:
        return p.spawner.concurrent_spawn_limit
    if not cpus:
        hosts = p.hosts.workers if user_nodes_only_workers(p) else [*p.hosts.managers, *p.hosts.workers]
        cpus = [ASSUMED_CPUS] * max(1, len(hosts))
    return max(MINIMUM, int(PER_CPU * sum(cpus)))


def hub_lines(p: Loaded, spawn_limit: int) -> list[str]:
    """jupyterhub_config.py lines: the limits, the retry range, the 429 page, the liveness heartbeat."""
    return [
        "",
        f"# --- a burst of users: at most {spawn_limit or 'any number of'} servers start at once; others get HTTP 429 "
        "and try again ---",
        f"c.JupyterHub.concurrent_spawn_limit = {spawn_limit}",
        f"c.JupyterHub.active_server_limit = {p.spawner.active_server_limit}",
        # JupyterHub 5 and 6 do not make spawn_throttle_retry_range configurable (no config tag: set
        # as c.JupyterHub.spawn_throttle_retry_range it is ignored); its tornado setting is what counts.
        f"c.JupyterHub.tornado_settings.update({{'spawn_throttle_retry_range': {RETRY_RANGE!r}}})",
        # hubops's pages: 429.html (wait your turn, retried by itself), from the folder the hub image
        # installs with hubops's spawner; and a heartbeat file the healthcheck reads to tell a busy hub
        # (its event loop slow to answer) from a dead one (its loop stopped).
        "try:",
        "    from hubops.inhub import health as hubops_health",
        "except ImportError:  # a hub image from before the heartbeat: the healthcheck asks /hub/health only",
        "    hubops_health = None",
        "else:",
        "    c.JupyterHub.template_paths = [hubops_health.TEMPLATES]",
        "    hubops_health.start_heartbeat()",
    ]
