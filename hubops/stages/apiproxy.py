"""80-deploy: the hub's narrow door to the Docker API (issue 13.3), and the hub as a non-root user.

The hub no longer mounts the engine's socket. A Swarm service `hubops-DEPLOYMENT-apiproxy` runs
hubops's filtering proxy (hubops/inhub/apiproxy.py, in the hub's image) as root with the node's
engine socket, in global mode on every node the hub may run on (the hub's node, or every manager when
the hub can move): wherever Swarm starts the hub, a door is already there. Door and hub share a local
volume (`hubops-DEPLOYMENT-door`) that holds the door's unix socket, owned by the hub's user, mode 0600.
Nothing on any network reaches it.

The hub's container runs as HUB_UID:HUB_GID (hub/config.py); its Swarm secrets are given to that user.
Its data (the database's volume or shared path) is handed to that user by a short-lived root
container each time the hub's spec changes: the upgrade path of a deployment whose hub.sqlite root
wrote, and of files an upgrade or restore wrote as root.
Undo: `runbooks/ops/teardown` (the service and the volume carry the deployment's labels).
"""
from __future__ import annotations

import json
import time
from typing import Any

import docker
import docker.errors
import docker.types

from hubops.core import labels as L
from hubops.core.engine import Clients, docker_op
from hubops.core.errors import DockerOpError
from hubops.core.params import Loaded
from hubops.core.result import Result
from hubops.hub import config as hubconfig

STAGE = "80-deploy"
NS = 1_000_000_000
SPEC_DIGEST = "hubops.spec-digest"
# Where the door's socket is, in the door's and the hub's containers (not below /var/run: Docker 28
# refuses archive calls on containers with a mount below a symlink).
DOOR_DIR = "/run/hubops-door"
DOOR_SOCKET = f"{DOOR_DIR}/docker.sock"
# Where the door finds the node's engine.
ENGINE_SOCKET = "/run/docker.sock"


# The door's healthcheck: /_ping through the door answers 200.
PING = ("import socket, sys; s = socket.socket(socket.AF_UNIX); s.settimeout(10); s.connect(sys.argv[1]); "
        "s.sendall(b'GET /_ping HTTP/1.1\\r\\nHost: docker\\r\\nConnection: close\\r\\n\\r\\n'); "
        "sys.exit(0 if s.recv(64).startswith(b'HTTP/1.1 200') else 1)")


def service_name(p: Loaded) -> str:
    return f"{p.prefix}-apiproxy"


def volume_name(p: Loaded) -> str:
    return f"{p.prefix}-door"


def hub_user() -> str:
    return f"{hubconfig.HUB_UID}:{hubconfig.HUB_GID}"


def policy(p: Loaded) -> dict[str, Any]:
    """What the hub may ask of Docker, from the parameters (hubops.inhub.apiproxy.Policy)."""
    us = p.storage.users
    shared = us.mode == "shared-path"
    return {
        "deployment": p.deployment,
        "service_prefix": p.prefix + "-user",
        "networks": [p.network_name],
        "bind_paths": [str(us.shared_path)] if shared else [],
        "volume_prefixes": [p.prefix + "-home-"] if us.mode in ("node-local", "volume-driver") else [],
        "volume_driver": (us.driver or "") if us.mode == "volume-driver" else "",
        "volume_driver_opts": dict(sorted(us.driver_opts.items())) if us.mode == "volume-driver" else {},
        "cap_add": sorted(set(p.spawner.cap_add)),
        "cap_drop_all": True,  # hub/config.py: c.HubopsSpawner.cap_drop = ['ALL']
        "roles": ["user-server"],
        "home_root": str(us.shared_path) if shared else "",
        "home_uid": us.uid,
        "home_gid": us.gid,
        **_shared_data(p),
    }


def _shared_data(p: Loaded) -> dict[str, Any]:
    """The data sets (read-only) and group folders of shared_data, as the spawner mounts them."""
    from hubops.hub import config_servers

    settings = config_servers.spawner_settings(p)
    binds: dict[str, bool] = {}
    volumes: dict[str, dict] = {}
    for items, read_only in ((settings["datasets"], True), (settings["group_folders"], False)):
        for d in items:
            if d["type"] == "bind":
                binds[d["source"]] = binds.get(d["source"], True) and read_only  # read-only unless a folder
            else:
                volumes[d["source"]] = {"driver": d["driver"], "opts": dict(d.get("driver_opts") or {}),
                                        "read_only": read_only}
    return {"data_binds": binds, "data_volumes": volumes}


def door_mount(p: Loaded) -> docker.types.Mount:
    """The volume holding the door's socket (the same local volume for the door and the hub on a node)."""
    return docker.types.Mount(DOOR_DIR, volume_name(p), type="volume",
                              labels=L.labels(p.deployment, STAGE, role="apiproxy-door"))


def hub_env(p: Loaded) -> list[str]:
    """The hub's environment for the door: docker-py (the spawner) finds the engine through DOCKER_HOST."""
    return [f"DOCKER_HOST=unix://{DOOR_SOCKET}", "HOME=/srv/jupyterhub"]


def service_spec(p: Loaded, *, image: str, constraints: list[str]) -> dict[str, Any]:
    """Keyword arguments for `create_service` / `update_service` of the door (pure)."""
    mounts = [docker.types.Mount(ENGINE_SOCKET, p.hub_host.engine_socket, type="bind"), door_mount(p)]
    if p.storage.users.mode == "shared-path":
        # The door makes users' homes there with their owner (the hub is not root).
        mounts.append(docker.types.Mount(str(p.storage.users.shared_path), str(p.storage.users.shared_path),
                                         type="bind"))
    container = docker.types.ContainerSpec(
        image=image,
        command=["python3", "-m", "hubops.inhub.apiproxy"],
        user="0:0",
        env=[f"HUBOPS_APIPROXY_POLICY={json.dumps(policy(p), sort_keys=True)}",
             f"HUBOPS_APIPROXY_OWNER={hub_user()}",
             f"HUBOPS_APIPROXY_LISTEN={DOOR_SOCKET}",
             f"HUBOPS_APIPROXY_UPSTREAM={ENGINE_SOCKET}"],
        mounts=mounts,
        # Lenient: on a loaded node a strict check kills a door that works (and the hub's spawns with it);
        # a door that stops answering for a minute is restarted. Lean: no site, no hubops import.
        healthcheck=docker.types.Healthcheck(
            test=["CMD", "python3", "-I", "-S", "-c", PING, DOOR_SOCKET],
            interval=15 * NS, timeout=15 * NS, retries=4, start_period=30 * NS,
        ),
        labels=L.labels(p.deployment, STAGE, role="apiproxy"),
        stop_grace_period=5 * NS,
    )
    task = docker.types.TaskTemplate(
        container_spec=container,
        restart_policy=docker.types.RestartPolicy(condition="any", delay=2 * NS, max_attempts=0),
        placement=docker.types.Placement(constraints=constraints),
    )
    return {
        "name": service_name(p),
        "task_template": task,
        # One door on every node the hub may run on.
        "mode": docker.types.ServiceMode("global"),
        "update_config": docker.types.UpdateConfig(parallelism=1, delay=0, order="stop-first"),
    }


def _digest(spec: dict[str, Any]) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=lambda o: dict(o)).encode()).hexdigest()[:16]


def ensure_door(p: Loaded, clients: Clients, r: Result, *, image: str, constraints: list[str],
                wait: bool = True) -> bool:
    """Create or update the door's service (before the hub, which needs it to spawn); wait until it
    answers on every node it should. Returns whether it changed."""
    c = clients.manager
    name = service_name(p)
    spec = service_spec(p, image=image, constraints=constraints)
    digest = _digest(spec)
    spec["labels"] = {**L.labels(p.deployment, STAGE, role="apiproxy"), SPEC_DIGEST: digest}
    with docker_op(f"inspect service {name}"):
        found = c.services.list(filters={"name": name})
    svc = next((s for s in found if s.name == name), None)
    if svc is not None and not L.owned_by(svc.attrs["Spec"].get("Labels"), p.deployment):
        raise DockerOpError(f"service {name} exists but was not created by hubops for deployment {p.deployment}; "
                            "remove it or choose another deployment name")
    if svc is None:
        r.change("create", f"service {name}", "the hub's Docker API door (filtering proxy; the hub gets no engine socket)")
    elif svc.attrs["Spec"].get("Labels", {}).get(SPEC_DIGEST) != digest:
        r.change("update", f"service {name}", "the door's image or policy changed")
    else:
        r.keep(f"service {name}", "spec unchanged")
        return False
    if r.dry_run:
        return True
    if svc is None:
        with docker_op(f"create service {name}"):
            c.api.create_service(**spec)
    else:
        with docker_op(f"update service {name}"):
            svc.reload()
            c.api.update_service(svc.id, svc.version, **spec)
    if wait:
        wait_door(p, clients, image=image)
    return True


def wait_door(p: Loaded, clients: Clients, *, image: str, timeout: float = 120) -> None:
    """Until every task of the door that should run runs the given image and is healthy."""
    c = clients.manager
    name = service_name(p)
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        with docker_op(f"read the tasks of {name}"):
            tasks = c.api.tasks(filters={"service": name, "desired-state": "running"})
        ok = [t for t in tasks if t["Status"]["State"] == "running"
              and t["Spec"]["ContainerSpec"]["Image"].split("@")[0] == image]
        if tasks and len(ok) == len(tasks) and _healthy(clients, ok):
            return
        last = "; ".join(f"{t['Status']['State']} {t['Status'].get('Err', '')}".strip() for t in tasks) or "no task yet"
        time.sleep(0.5)
    raise DockerOpError(f"the Docker API door {name} did not start within {timeout:.0f} s ({last}); "
                        f"see `docker service ps {name}`")


def _healthy(clients: Clients, tasks: list[dict]) -> bool:
    """The tasks' containers answer their healthcheck (the door's socket is there) where hubops can look."""
    c = clients.manager
    for t in tasks:
        cid = ((t.get("Status") or {}).get("ContainerStatus") or {}).get("ContainerID")
        if not cid:
            return False
        try:
            ctr = c.containers.get(cid)
        except docker.errors.NotFound:
            continue  # on another node: Swarm's task state is what hubops knows there
        except docker.errors.APIError:
            return False
        if (ctr.attrs.get("State", {}).get("Health") or {}).get("Status") not in ("healthy", None):
            return False
    return True


def ensure_data_owner(p: Loaded, clients: Clients, r: Result, *, image: str, data_mount: docker.types.Mount) -> None:
    """The hub's data (the database and what else it writes) belongs to the hub's user: a root
    container on the data's node changes the owner of what is not the hub's (the database of a hub that
    ran as root, files an upgrade or a restore wrote). Run when the hub's spec changes."""
    where = f"the hub's data ({data_mount['Source']})"
    node = p.hub_host.name
    hc = clients[node]
    if data_mount["Type"] == "volume":
        with docker_op(f"inspect volume {data_mount['Source']}", node):
            try:
                hc.volumes.get(data_mount["Source"])
            except docker.errors.NotFound:
                # made by the hub's first start, from the image's folder (owned by the hub's user)
                r.check(where, f"a new volume takes the owner of the image's folder ({hub_user()})")
                return
    if r.dry_run:
        r.change("update", where, f"files not owned by {hub_user()} would be given to it (the hub runs as that user)")
        return
    mount = docker.types.Mount("/data", data_mount["Source"], type=data_mount["Type"])
    script = ("import os, sys\nuid, gid = int(sys.argv[1]), int(sys.argv[2])\nn = 0\n"
              "for d, dirs, files in os.walk('/data'):\n"
              "    for x in [d] + [os.path.join(d, f) for f in files + dirs]:\n"
              "        st = os.lstat(x)\n"
              "        if (st.st_uid, st.st_gid) != (uid, gid):\n"
              "            os.lchown(x, uid, gid); n += 1\n"
              "print(n)\n")
    with docker_op(f"give {where} to the hub's user", node):
        try:
            out = hc.containers.run(image, ["python3", "-c", script, str(hubconfig.HUB_UID), str(hubconfig.HUB_GID)],
                                    user="0:0", network_mode="none", mounts=[mount], remove=True,
                                    labels=L.labels(p.deployment, STAGE, role="hub-data-owner"))
        except docker.errors.ContainerError as e:
            raise DockerOpError(f"could not give {where} on {node} to the hub's user {hub_user()}: "
                                f"{(e.stderr or b'').decode(errors='replace')[-400:]} (on NFS with root_squash: "
                                f"chown -R {hub_user()} the folder on the server)") from e
    n = int((out.decode().strip().splitlines() or ["0"])[-1])
    if n:
        r.change("update", where, f"{n} files and folders given to the hub's user {hub_user()} (the hub no longer runs as root)")
    else:
        r.check(where, f"owned by the hub's user {hub_user()}")
