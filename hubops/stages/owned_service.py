"""A Swarm service a stage owns for the deployment: created when missing, updated when its spec's
digest changed (the digest is a label on it), else kept; one of the same name that is not the
deployment's is refused. Also the pieces of a service that keeps data on one node: its labelled
local volume there, and a single-replica spec placed by constraint where that data is.

Shared by the stages that run such services: monitoring (Prometheus beside the hub, a node exporter
on every node), postgres (hubops's own PostgreSQL on its manager), attachments (a global service on
every node); what each runs, and why, stays in its own module. Changes on the cluster: the volume
(created, never removed here) and the service (created or updated).
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Optional

import docker
import docker.errors
import docker.types

from hubops.core import labels as L
from hubops.core.engine import docker_op
from hubops.core.errors import ConflictError, HubopsError
from hubops.core.params import Loaded
from hubops.core.result import Result

SPEC_DIGEST = "hubops.spec-digest"
NS = 1_000_000_000


def ensure_volume(p: Loaded, client: docker.DockerClient, node: str, name: str, r: Result, *, stage: str,
                  role: str, what: str, then: str = "") -> None:
    """The local volume `name` on `node` (whose engine is `client`), labelled for the deployment:
    kept when it is ours, created when missing (unless a dry run); one of the same name that is not
    ours is a conflict (ConflictError; `then` is appended to what to do)."""
    with docker_op(f"inspect volume {name}", node):
        try:
            vol = client.volumes.get(name)
        except docker.errors.NotFound:
            vol = None
    if vol is not None:
        if not L.owned_by(vol.attrs.get("Labels"), p.deployment):
            raise ConflictError(f"volume {name} on {node} exists but was not created by hubops for deployment "
                                f"{p.deployment}; remove or rename it{then}")
        r.keep(f"volume {name}", f"on {node}: {what}")
        return
    r.change("create", f"volume {name}", f"local volume on {node} for {what}")
    if not r.dry_run:
        with docker_op(f"create volume {name}", node):
            client.volumes.create(name=name, driver="local", labels=L.labels(p.deployment, stage, role=role))


def service_spec(name: str, container: docker.types.ContainerSpec, *, constraints: list[str], network: str,
                 endpoint_mode: str, restart_delay_s: int, ports: Optional[dict] = None,
                 failure_action: str = "continue", labels: Optional[dict[str, str]] = None) -> dict[str, Any]:
    """Keyword arguments for `create_service` / `update_service` of a one-replica service placed by
    `constraints`, on the deployment's overlay `network`, restarted whatever ends it (pure).
    Updated stop-first: one task at a time owns the data (both servers lock it)."""
    task = docker.types.TaskTemplate(
        container_spec=container,
        restart_policy=docker.types.RestartPolicy(condition="any", delay=restart_delay_s * NS, max_attempts=0),
        placement=docker.types.Placement(constraints=constraints),
        networks=[docker.types.NetworkAttachmentConfig(network)],
    )
    spec: dict[str, Any] = {
        "name": name, "task_template": task,
        "endpoint_spec": docker.types.EndpointSpec(mode=endpoint_mode, ports=ports),
        "mode": docker.types.ServiceMode("replicated", replicas=1),
        "update_config": docker.types.UpdateConfig(parallelism=1, order="stop-first", failure_action=failure_action),
    }
    if labels is not None:
        spec["labels"] = labels
    return spec


def spec_digest(spec: dict[str, Any]) -> str:
    """The digest of a service spec (its labels left out), as the label SPEC_DIGEST keeps it."""
    return hashlib.sha256(json.dumps({k: v for k, v in spec.items() if k != "labels"}, sort_keys=True,
                                     default=lambda o: dict(o)).encode()).hexdigest()[:16]


def find_service(c: docker.DockerClient, name: str, host: str = ""):
    """The service named `name` (exactly), or None. `host` names the engine in errors."""
    with docker_op(f"look up service {name}", host):
        return next((s for s in c.services.list(filters={"name": name}) if s.name == name), None)


def find_owned_service(p: Loaded, c: docker.DockerClient, name: str, host: str = ""):
    """The service named `name` when it is the deployment's, None when there is none; one of that
    name that is not the deployment's is refused (HubopsError)."""
    svc = find_service(c, name, host)
    if svc is not None and not L.owned_by(svc.attrs["Spec"].get("Labels"), p.deployment):
        raise HubopsError(f"service {name} exists but was not created by hubops for deployment {p.deployment}; "
                          "remove it or choose another deployment name")
    return svc


def ensure_service(p: Loaded, c: docker.DockerClient, r: Result, spec: dict[str, Any], *, created: str,
                   updated: str, kept: str, host: str = "") -> None:
    """The service `spec` describes (its `labels`: the deployment's), created when missing, updated
    when its digest changed, else kept; `created`, `updated`, `kept` say why in the result. One of the
    same name that is not the deployment's is refused. `host` names the engine in errors."""
    name = spec["name"]
    digest = spec_digest(spec)
    spec = {**spec, "labels": {**spec["labels"], SPEC_DIGEST: digest}}
    svc = find_owned_service(p, c, name, host)
    if svc is None:
        r.change("create", f"service {name}", created)
        if not r.dry_run:
            with docker_op(f"create service {name}", host):
                c.api.create_service(**spec)
    elif (svc.attrs["Spec"].get("Labels") or {}).get(SPEC_DIGEST) != digest:
        r.change("update", f"service {name}", updated)
        if not r.dry_run:
            with docker_op(f"update service {name}", host):
                svc.reload()
                c.api.update_service(svc.id, svc.version, **spec)
    else:
        r.keep(f"service {name}", kept)
