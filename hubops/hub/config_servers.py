"""The parts of jupyterhub_config.py for named servers and shared data (called by config.render).

Named servers (spawner.named_servers: N): JupyterHub's allow_named_servers and
named_server_limit_per_user; hubops's spawner names each server's service and labels it with its
user and server. Shared data (shared_data): what HubopsSpawner mounts into whose server, as data.
"""
from __future__ import annotations

from hubops.core import labels as L
from hubops.core.params import Loaded

SPAWNER = "c.HubopsSpawner"
# JupyterHub learns of activity through its proxy every last_activity_interval (300 s by default): a
# culler with a shorter timeout would stop servers that are in use. Polled more often for short timeouts.
DEFAULT_ACTIVITY_INTERVAL = 300


def dataset_volume(p: Loaded, name: str) -> str:
    return f"{p.prefix}-data-{name}"


def group_volume(p: Loaded, group: str) -> str:
    return f"{p.prefix}-shared-{group}"


def named_server_lines(p: Loaded) -> list[str]:
    n = p.spawner.named_servers
    if not n:
        return []
    return ["", f"# --- named servers: up to {n} per user besides the default one (spawner.named_servers) ---",
            "c.JupyterHub.allow_named_servers = True",
            f"c.JupyterHub.named_server_limit_per_user = {n}"]


def activity_lines(p: Loaded) -> list[str]:
    if not p.culler.enabled:
        return []
    interval = max(5, min(DEFAULT_ACTIVITY_INTERVAL, p.culler.timeout // 4))
    if interval >= DEFAULT_ACTIVITY_INTERVAL:
        return []
    return [f"# the hub reads users' activity from its proxy every {interval} s: the culler's timeout is "
            f"{p.culler.timeout} s",
            f"c.JupyterHub.last_activity_interval = {interval}"]


def _source(p: Loaded, item, volume: str, role: str) -> dict:
    if item.path is not None:
        return {"type": "bind", "source": str(item.path)}
    return {"type": "volume", "source": volume, "driver": item.driver,
            "driver_opts": dict(sorted(item.driver_opts.items())),
            "labels": dict(sorted(L.labels(p.deployment, "user-server", role=role).items()))}


def spawner_settings(p: Loaded) -> dict:
    """HubopsSpawner's datasets and group_folders, as the spawner reads them."""
    sd = p.shared_data
    datasets = [{"name": d.name, "target": d.mount_target, "groups": sorted(d.groups), "on_request": d.on_request,
                 **_source(p, d, dataset_volume(p, d.name), "dataset")} for d in sd.datasets]
    folders = [{"group": g.group, "gid": g.gid, "target": g.mount_target,
                **_source(p, g, group_volume(p, g.group), "shared-folder")} for g in sd.group_folders]
    return {"datasets": datasets, "group_folders": folders}


def shared_data_lines(p: Loaded) -> list[str]:
    sd = p.shared_data
    if not (sd.datasets or sd.group_folders):
        return []
    return ["", f"# --- shared data: {len(sd.datasets)} read-only data set(s), {len(sd.group_folders)} group folder(s) ---",
            *(f"{SPAWNER}.{k} = {v!r}" for k, v in spawner_settings(p).items()),
            # the userlist's groups (read above), so a user's server gets them before any login
            f"{SPAWNER}.userlist_groups = user_groups"]


def lines(p: Loaded) -> list[str]:
    """Everything this module adds to jupyterhub_config.py (after the spawner class is set)."""
    return named_server_lines(p) + activity_lines(p) + shared_data_lines(p)
