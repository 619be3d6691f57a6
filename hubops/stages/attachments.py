"""Keeps the deployment's overlay network attached on every node while a profile asks for GPUs
(or any Swarm generic resource), and on every deployment of more than one host; part of 80-deploy.

Why. Swarm gives a node its attachment to an overlay network (the node's own address on it) when
the first task on that network lands there, and takes it back when the last one leaves; each is an
update of the node. On every node update, swarmkit's constraint enforcer checks the node's tasks
again, and its check of generic resources is inverted: a task is rejected when the node *still
has* the resource it was given (`constraint_enforcer.go`, `genericresource.HasResource`; unchanged in
the swarmkit of Docker 28). Measured on the lab (Docker 20.10, one fake GPU): the first GPU server on
a node never started. Its task was assigned, the node got its attachment (an update), the
enforcer rejected the task ("assigned node no longer meets constraints"), the attachment went
away with it (another update, "node is missing network attachments" for the next task), and
so on until the spawn timed out.

What. A global service, `hubops-DEPLOYMENT-attach`, runs on every node as a small
member of the network: the single-user image (already on every node, 60-images) running `sleep`,
as its user, with no capability, a read-only root and 16 MiB. The attachment then stays for the
life of the deployment, so a spawn no longer updates the node.

The same service saves every deployment of more than one host 0.6 s of a spawn on a node where no
other server runs (see `wanted`): without it, such a spawn first waits for the node's attachment.
With one host and no GPU profile the service is not there (a later deploy removes it): the hub
keeps that node attached.

What it cannot fix: any other update of a GPU node (a label changed by hand, `docker node update
--availability`, the node's engine reporting new resources) still makes Swarm reject and restart
the GPU servers running there (their files stay; their kernels restart). README, GPUs.
"""
from __future__ import annotations

import time
from typing import Any

import docker
import docker.types

from hubops.core import labels as L
from hubops.core.engine import Clients, docker_op
from hubops.core.errors import DockerOpError
from hubops.core.params import Loaded
from hubops.core.result import Result
from hubops.stages import owned_service

STAGE = "80-deploy"
ROLE = "network-attachment"


def service_name(p: Loaded) -> str:
    return f"{p.prefix}-attach"


def gpus(p: Loaded) -> bool:
    """Whether some profile asks for generic resources (GPUs): the Swarm bug above."""
    return any(prof.generic_resources for prof in p.profiles)


def wanted(p: Loaded) -> bool:
    """Whether the deployment needs the service: GPU profiles, or more than one host. Users' servers then
    start on nodes the hub is not on, and the first server on such a node waits for Swarm to attach the node
    to the overlay (the node's address on it, its VXLAN device; measured on the lab: the task ran 1.25 s
    after the service's creation against 0.68 s with the network kept attached, 2.57 against 1.90 s a spawn).
    The same holds after the last server on a node stopped, which takes the attachment away again."""
    return gpus(p) or len(p.hosts.all) > 1


def service_spec(p: Loaded, *, image: str) -> dict[str, Any]:
    """Keyword arguments for `create_service` / `update_service` (pure)."""
    lbl = L.labels(p.deployment, STAGE, role=ROLE)
    container = docker.types.ContainerSpec(
        image=image, command=["sleep", "infinity"], user="1000:100", read_only=True,
        cap_drop=["ALL"], labels=lbl,
        # `sleep` ignores SIGTERM as PID 1; nothing is lost by not waiting for it.
        stop_signal="SIGKILL",
    )
    task = docker.types.TaskTemplate(
        container_spec=container,
        restart_policy=docker.types.RestartPolicy(condition="any", delay=5 * 10**9, max_attempts=0),
        networks=[docker.types.NetworkAttachmentConfig(p.network_name)],
        resources=docker.types.Resources(mem_limit=16 * 1024 * 1024),
    )
    return {"name": service_name(p), "task_template": task,
            "endpoint_spec": docker.types.EndpointSpec(mode="dnsrr"),
            "mode": docker.types.ServiceMode("global"),
            # start-first: a new image's task joins the network before the old one leaves, so the
            # node keeps its attachment through the update too.
            "update_config": docker.types.UpdateConfig(parallelism=0, order="start-first"),
            "labels": lbl}


def ensure(p: Loaded, clients: Clients, r: Result, *, image: str, wait: bool = True, timeout: float = 120) -> None:
    """Create, update or remove the service as the profiles require; with `wait`, after a create or
    an update, until a task of it runs on every node that is ready and active."""
    c = clients.manager
    name = service_name(p)
    host = p.hub_host.name
    if not wanted(p):
        svc = owned_service.find_owned_service(p, c, name, host)
        if svc is not None:
            r.change("remove", f"service {name}", "one host, and no profile asks for generic resources")
            if not r.dry_run:
                with docker_op(f"remove service {name}", host):
                    svc.remove()
        return
    owned_service.ensure_service(
        p, c, r, service_spec(p, image=image), host=host,
        created=("keeps the overlay attached on every node: a spawn must not update a GPU node, and does not wait "
                 "for the node's attachment (stages/attachments.py)" if gpus(p) else
                 "keeps the overlay attached on every node: a spawn does not wait for the node's attachment "
                 "(0.6 s of a spawn; stages/attachments.py)"),
        updated="its image changed", kept="spec unchanged")
    if wait and not r.dry_run and r.items[-1].changed:
        r.facts["network attachment on nodes"] = wait_running(p, clients, timeout=timeout)


def wait_running(p: Loaded, clients: Clients, *, timeout: float = 120) -> int:
    """Until a task of the service runs on every ready, active node; returns how many nodes."""
    c = clients.manager
    name = service_name(p)
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        with docker_op(f"read the nodes and the tasks of {name}", p.hub_host.name):
            nodes = {n["ID"] for n in c.api.nodes()
                     if n["Status"]["State"] == "ready" and n["Spec"].get("Availability") == "active"}
            tasks = c.api.tasks(filters={"service": name, "desired-state": "running"})
        on = {t["NodeID"] for t in tasks if t["Status"]["State"] == "running"}
        if nodes and nodes <= on:
            return len(nodes)
        last = "; ".join(sorted({f"{t['Status']['State']} {t['Status'].get('Err', '')}".strip() for t in tasks})) \
            or "no task yet"
        if time.monotonic() > deadline:
            raise DockerOpError(f"service {name} does not run on every node after {timeout:.0f} s ({last}); "
                                f"see `docker service ps {name}`")
        time.sleep(0.5)
