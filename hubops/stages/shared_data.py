"""Shared data (parameter shared_data): read-only data sets and read-write group folders.

At preflight (`check_sources`, called by 00-preflight): every data set's path exists on every node
that may run users' servers, every group folder's parent directory too, and each volume driver is
installed there. At 70-storage (`ensure_group_folders`): each group folder exists, owned by root and
the group's gid, mode 2770 (setgid and group-writable: members write, files made there belong to
the group, others cannot even list it). The hub's spawner mounts data sets read-only, group folders
read-write with the gid as a supplementary group of the member's server.

Undo: nothing hubops makes here holds data of its own except the group folders' contents: a shared
path is never removed (it is the operator's storage); a driver volume goes with teardown's
remove_user_data.
"""
from __future__ import annotations

import logging
from pathlib import PurePosixPath

import docker.errors
import docker.types

from hubops.core import labels as L
from hubops.core.engine import Clients, docker_op
from hubops.core.errors import PreflightError
from hubops.core.params import Loaded
from hubops.core.result import Result
from hubops.hub import config as hubconfig
from hubops.hub.config_servers import group_volume

log = logging.getLogger("hubops")

MODE = "2770"  # setgid, owner and group rwx, others nothing
# An image name no engine has: creating a container of it fails with "No such image" only after the
# engine has checked the bind mount's source, so the check needs no image and creates nothing.
ABSENT_IMAGE = "hubops-path-probe:absent"


def server_nodes(p: Loaded) -> list[str]:
    """The hosts users' servers may run on (spawner.placement)."""
    if "node.role==worker" in hubconfig.placement_constraints(p):
        return [h.name for h in p.hosts.workers]
    return [h.name for h in p.hosts.all]


def path_exists(client, path: str) -> bool:
    """Whether `path` exists on the engine's host, asked through the engine's own bind-mount check."""
    try:
        client.api.create_container(ABSENT_IMAGE, ["true"], host_config=client.api.create_host_config(
            mounts=[docker.types.Mount("/probe", path, type="bind", read_only=True)]))
    except docker.errors.ImageNotFound:
        return True
    except docker.errors.APIError as e:
        if "bind source path does not exist" in f"{e} {e.explanation}":
            return False
        if e.status_code == 404:
            return True
        raise
    raise PreflightError(f"a container of {ABSENT_IMAGE} was created: remove the image of that name")


def check_sources(p: Loaded, clients: Clients) -> Result:
    """Every data set's and group folder's source is there on every node that may run servers."""
    r = Result("shared data")
    sd = p.shared_data
    if not (sd.datasets or sd.group_folders):
        return r
    nodes = server_nodes(p)
    items = [(f"shared_data.datasets[{i}]", d, False) for i, d in enumerate(sd.datasets)]
    items += [(f"shared_data.group_folders[{i}]", g, True) for i, g in enumerate(sd.group_folders)]
    for key, item, folder in items:
        for node in nodes:
            c = clients[node]
            if item.path is not None:
                # a group folder is made at 70-storage: its parent must be there
                where = str(PurePosixPath(item.path).parent) if folder else str(item.path)
                with docker_op(f"check {where}", node):
                    found = path_exists(c, where)
                if not found:
                    raise PreflightError(
                        f"{p.source}: {key}.path: {where} does not exist on host {node}"
                        + (" (the group folder is made inside it)" if folder else "")
                        + "; mount the shared storage there on every node that runs users' servers, or fix the path")
                r.check(f"{where} on {node}", "exists")
            else:
                with docker_op("read engine info", node):
                    drivers = (c.info().get("Plugins") or {}).get("Volume") or []
                if item.driver not in drivers:
                    raise PreflightError(
                        f"{p.source}: {key}.driver: volume driver {item.driver!r} is not installed on host {node} "
                        f"(it has {', '.join(drivers) or 'none'}); install it on every node that runs users' servers")
                r.check(f"volume driver {item.driver} on {node}", "installed")
    return r


def _run(client, node: str, image: str, mount: docker.types.Mount, script: str, p: Loaded) -> str:
    try:
        out = client.containers.run(image, ["sh", "-c", script], user="0:0", remove=True, network_mode="none",
                                    mounts=[mount], labels=L.labels(p.deployment, "70-storage", role="probe"))
    except docker.errors.ContainerError as e:
        raise PreflightError(f"preparing a group folder on {node} failed: "
                             f"{(e.stderr or b'').decode(errors='replace')[-300:]}") from e
    except docker.errors.APIError as e:
        raise PreflightError(f"preparing a group folder on {node} failed: {e.explanation or e}") from e
    return out.decode(errors="replace").strip()


def ensure_group_folders(p: Loaded, clients: Clients, *, dry_run: bool = False) -> Result:
    """Each group folder exists with owner root, group its gid, mode 2770; made on the hub's node (on
    storage every node shares), then seen from every node that runs servers."""
    from hubops.core.errors import ImageNotBuilt
    from hubops.stages import images

    r = Result("shared data", dry_run=dry_run)
    sd = p.shared_data
    r.facts["data sets"] = [{"name": d.name, "source": str(d.path or f"volume (driver {d.driver})"),
                             "target": d.mount_target, "read-only": "yes",
                             "for": ("groups " + ", ".join(d.groups)) if d.groups else "everyone",
                             "only when a profile asks": "yes" if d.on_request else ""} for d in sd.datasets]
    if not sd.group_folders:
        return r
    try:
        image = images.desired_refs(p, images.builder(p, clients))["singleuser"]
    except ImageNotBuilt:
        if not dry_run:
            raise
        for g in sd.group_folders:
            r.change("create", f"group folder {g.path or group_volume(p, g.group)}",
                     f"plan: owner 0:{g.gid}, mode {MODE}, once 60-images has built the images")
        return r
    hub = p.hub_host.name
    c = clients[hub]
    rows = []
    for i, g in enumerate(sd.group_folders):
        if g.path is not None:
            where = str(g.path)
            mount = docker.types.Mount("/probe", str(PurePosixPath(g.path).parent), type="bind")
            inside = "/probe/" + PurePosixPath(g.path).name
        else:
            where = f"volume {group_volume(p, g.group)}"
            mount = docker.types.Mount("/probe", group_volume(p, g.group), type="volume",
                                       labels=L.labels(p.deployment, "user-server", role="shared-folder"),
                                       driver_config=docker.types.DriverConfig(g.driver, dict(g.driver_opts) or None))
            inside = "/probe"
        want = f"0:{g.gid} {MODE}"
        read = f"stat -c '%u:%g %a' {inside} 2>/dev/null || echo absent"
        with docker_op(f"read group folder {where}", hub):
            now = _run(c, hub, image, mount, read, p)
        if now == want:
            r.keep(f"group folder {where}", f"owner 0:{g.gid}, mode {MODE}: group {g.group} writes, others cannot")
        else:
            r.change("create" if now == "absent" else "update", f"group folder {where}",
                     f"owner 0:{g.gid}, mode {MODE} (was {now}): group {g.group} writes, others cannot")
            if not dry_run:
                with docker_op(f"prepare group folder {where}", hub):
                    now = _run(c, hub, image, mount, f"mkdir -p {inside} && chown 0:{g.gid} {inside} && "
                                                      f"chmod {MODE} {inside} && {read}", p)
                if now != want:
                    raise PreflightError(f"{p.source}: shared_data.group_folders[{i}]: {where} is {now} after "
                                         f"preparing it, not {want}: does the storage keep owners and modes "
                                         "(NFS: no root_squash for the hub's node)?")
        if g.path is not None and not dry_run:
            for node in server_nodes(p):
                with docker_op(f"check {where}", node):
                    if not path_exists(clients[node], where):
                        raise PreflightError(
                            f"{p.source}: shared_data.group_folders[{i}].path: {where}, made on {hub}, is not "
                            f"there on host {node}: mount the same shared storage at that path on every node")
        rows.append({"group": g.group, "gid": g.gid, "folder": where, "target": g.mount_target, "owner and mode": now})
    r.facts["group folders"] = rows
    return r
