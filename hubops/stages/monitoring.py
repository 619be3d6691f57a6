"""Optional monitoring, deployed by 80-deploy (`monitoring.enabled`; off by default).

Creates, on the cluster, for deployment NAME:
- the images `hubops-prometheus` and `hubops-node-exporter`, built from images/prometheus and
  images/node-exporter (Debian's `prometheus` and `prometheus-node-exporter` on hubops's Debian
  base, offline like the other images) on the building engine and streamed to the nodes that run
  them (Prometheus: the hub's manager; the exporter: every node);
- the Swarm secret `hubops-NAME-metrics-token-…`: Prometheus's hub token (JupyterHub service
  `prometheus`, scope `read:metrics` only; hubops.core.monitoring), mounted in the hub and in
  Prometheus (readable by Prometheus's user alone);
- the Swarm config `hubops-NAME-prometheus-config-…`: what Prometheus scrapes (the hub's
  /hub/metrics over the overlay network, each node's exporter, itself);
- the volume `hubops-NAME-prometheus-data` on the hub's manager (Prometheus's data);
- the service `hubops-NAME-prometheus` (one task, pinned to that manager, on the overlay network,
  no port published unless monitoring.publish_port) and the global service
  `hubops-NAME-node-exporter` (one task per node, the node's /proc, /sys and / read-only).
Everything carries hubops's labels. With monitoring turned off again the services go (the next
80-deploy prunes the token and the configuration); the volume stays until teardown with
remove_volumes. Undo: `runbooks/ops/teardown`.
"""
from __future__ import annotations

import logging
from typing import Any, Optional

import docker
import docker.types

from hubops.core import labels as L
from hubops.core import monitoring as M
from hubops.core import secrets
from hubops.core.engine import Clients, docker_op
from hubops.core.errors import HubopsError
from hubops.core.facts import node_name
from hubops.core.params import Loaded
from hubops.core.result import Result
from hubops.hub import config as hubconfig
from hubops.stages import images
from hubops.stages import owned_service
from hubops.stages.owned_service import find_service

log = logging.getLogger("hubops")
STAGE = M.STAGE
KINDS = ("prometheus", "node-exporter")
NS = 1_000_000_000
CONFIG_ROLE = "prometheus-config"


def ensure_token(client: docker.DockerClient, p: Loaded, r: Result) -> Optional[str]:
    """Prometheus's hub token as a Swarm secret (made or rotated; see hubops.core.monitoring); the
    secret's name, or None when monitoring is off. Runs before the hub's secrets are gathered, so
    that the hub mounts the current version."""
    if not M.enabled(p):
        return None
    value, why = M.ensure_token(p, dry_run=r.dry_run)
    return secrets.ensure_versioned(client, p, r, role=M.TOKEN_ROLE, value=value.encode(), stage=STAGE,
                                    what="Prometheus's hub token (read:metrics)" + (f", {why}" if why else ""))


def image_refs(p: Loaded, client: docker.DockerClient) -> dict[str, str]:
    """The tags the monitoring images' build contexts give ({"prometheus": "hubops-prometheus:…", ...})."""
    base = images.image_or_none(client, p.images.base)
    if base is None:
        raise HubopsError(f"base image {p.images.base} is missing on the building engine: run 60-images first")
    return {k: images.image_ref(k, images_dir=images.PROJECT_IMAGES, base_id=base.id, extra_ca_digest=None)
            for k in KINDS}


def _merge(r: Result, sub: Result) -> None:
    r.items.extend(sub.items)


def ensure(p: Loaded, clients: Clients, r: Result) -> None:
    """Monitoring as the parameters say (see the module's docstring); what it did goes into `r`."""
    c = clients.manager
    if not M.enabled(p):
        _remove_services(p, c, r)
        return
    builder = images.builder(p, clients)
    if images.image_or_none(builder, p.images.base) is None:
        if r.dry_run:
            r.change("create", "monitoring", "Prometheus and node exporters, once 60-images made the base image")
            return
    refs = image_refs(p, builder)
    for kind in KINDS:
        # The project's images/ folder: images.dir (the hub's and single-user image's folder) need not hold these.
        _merge(r, images.ensure_image_built(builder, kind, images_dir=images.PROJECT_IMAGES, base=p.images.base,
                                            deployment=p.deployment, dry_run=r.dry_run))
    prom_node = p.hub_host.name
    if r.dry_run and any(images.image_or_none(builder, ref) is None for ref in refs.values()):
        r.change("create", "monitoring images on the nodes", f"{', '.join(refs.values())} once built")
    else:
        per_node = {h.name: [refs["node-exporter"]] + ([refs["prometheus"]] if h.name == prom_node else [])
                    for h in p.hosts.all}
        _merge(r, images.ensure_images_on_nodes(clients.all(), list(refs.values()), source=builder,
                                                dry_run=r.dry_run, per_node=per_node))
    owned_service.ensure_volume(p, clients[prom_node], prom_node, M.data_volume(p), r, stage=STAGE, role="prometheus-data",
                                what="Prometheus's data", then=", then run 80-deploy again")
    token = secrets.current(c, p, M.TOKEN_ROLE)
    secrets.ensure_versioned(c, p, r, role=CONFIG_ROLE, kind="config", stage=STAGE,
                             value=M.prometheus_config(p, hub_port=hubconfig.HUB_PORT).encode(),
                             what="Prometheus's scrape configuration")
    cfg = secrets.current(c, p, CONFIG_ROLE, kind="config")
    if token is None or cfg is None:
        if r.dry_run:
            r.change("create", f"service {M.prometheus_service(p)}", "Prometheus, once its token and configuration exist")
            r.change("create", f"service {M.node_exporter_service(p)}", "a node exporter on every node")
            return
        raise HubopsError(f"Prometheus's token or configuration for deployment {p.deployment} is missing after "
                          "80-deploy made them; run 80-deploy again")
    for spec in (prometheus_spec(p, image=refs["prometheus"], token=token, config=cfg),
                 node_exporter_spec(p, image=refs["node-exporter"])):
        owned_service.ensure_service(p, c, r, spec, created=_what(spec["name"], p), host=p.hub_host.name,
                                     updated="its image, configuration or token changed", kept="spec unchanged")
    r.facts["monitoring"] = (f"Prometheus {M.prometheus_service(p)} on {prom_node} (data: volume {M.data_volume(p)}), "
                             f"node exporter on {len(p.hosts.all)} node(s); "
                             + (f"published on port {p.monitoring.publish_port}" if p.monitoring.publish_port
                                else "not published outside the overlay network"))


def _network(p: Loaded) -> list:
    return [docker.types.NetworkAttachmentConfig(p.network_name)]


def prometheus_spec(p: Loaded, *, image: str, token, config) -> dict[str, Any]:
    """Keyword arguments for `create_service` / `update_service` of Prometheus (pure but for the
    secret and config objects it references)."""
    name = M.prometheus_service(p)
    lbl = L.labels(p.deployment, STAGE, role="prometheus")
    container = docker.types.ContainerSpec(
        image=image,
        args=[f"--config.file={M.CONFIG_PATH}", f"--storage.tsdb.path={M.DATA_DIR}",
              f"--storage.tsdb.retention.time={p.monitoring.retention_days}d",
              f"--web.listen-address=:{M.PROMETHEUS_PORT}"],
        mounts=[docker.types.Mount(M.DATA_DIR, M.data_volume(p), type="volume", labels=L.labels(
            p.deployment, STAGE, role="prometheus-data"))],
        secrets=[docker.types.SecretReference(token.id, token.name, filename=M.SECRET_FILE,
                                              uid=str(M.PROMETHEUS_UID), gid=str(M.PROMETHEUS_UID), mode=0o400)],
        configs=[docker.types.ConfigReference(config.id, config.name, filename=M.CONFIG_PATH,
                                              uid="0", gid="0", mode=0o444)],
        healthcheck=docker.types.Healthcheck(
            test=["CMD", "curl", "-sf", "-o", "/dev/null", f"http://127.0.0.1:{M.PROMETHEUS_PORT}/-/ready"],
            interval=10 * NS, timeout=5 * NS, retries=3, start_period=60 * NS),
        labels=lbl,
        stop_grace_period=20 * NS,
    )
    ports = ({p.monitoring.publish_port: (M.PROMETHEUS_PORT, "tcp", "host")} if p.monitoring.publish_port else None)
    # Its data volume is on the hub's manager; one Prometheus at a time owns its data directory (it locks it).
    return owned_service.service_spec(name, container, constraints=[f"node.labels.{p.hub_node_label}==true"],
                                      network=p.network_name, endpoint_mode=p.network.endpoint_mode,
                                      restart_delay_s=5, ports=ports, labels=lbl)


def node_exporter_spec(p: Loaded, *, image: str) -> dict[str, Any]:
    """Keyword arguments for the node exporter's global service (pure)."""
    lbl = L.labels(p.deployment, STAGE, role="node-exporter")
    ro = {"type": "bind", "read_only": True}
    container = docker.types.ContainerSpec(
        image=image,
        args=["--path.procfs=/host/proc", "--path.sysfs=/host/sys", "--path.rootfs=/host/root",
              f"--web.listen-address=:{M.NODE_EXPORTER_PORT}",
              # Containers' own mounts (overlay, tmpfs, secrets) say nothing about the node's disks.
              "--collector.filesystem.mount-points-exclude=^/(dev|proc|run|sys|var/lib/docker/.+)($|/)"],
        mounts=[docker.types.Mount("/host/proc", "/proc", **ro), docker.types.Mount("/host/sys", "/sys", **ro),
                docker.types.Mount("/host/root", "/", **ro)],
        # The exporter reports this as node_uname_info's nodename: the node it runs on.
        hostname="{{.Node.Hostname}}",
        labels=lbl,
    )
    task = docker.types.TaskTemplate(
        container_spec=container,
        restart_policy=docker.types.RestartPolicy(condition="any", delay=5 * NS, max_attempts=0),
        networks=_network(p),
        resources=docker.types.Resources(mem_limit=64 * 1024 * 1024),
    )
    return {"name": M.node_exporter_service(p), "task_template": task,
            "endpoint_spec": docker.types.EndpointSpec(mode=p.network.endpoint_mode),
            "mode": docker.types.ServiceMode("global"), "labels": lbl}


def _what(name: str, p: Loaded) -> str:
    if name == M.prometheus_service(p):
        return (f"Prometheus on {p.hub_host.name}, scraping the hub and every node every "
                f"{p.monitoring.scrape_interval} s, keeping {p.monitoring.retention_days} days")
    return "a node exporter on every node (global service)"


def _remove_services(p: Loaded, c: docker.DockerClient, r: Result) -> None:
    """Monitoring turned off: its services go (secrets and configs are pruned as unused, the volume stays)."""
    for name in (M.prometheus_service(p), M.node_exporter_service(p)):
        try:
            svc = find_service(c, name)
        except HubopsError:
            continue
        if svc is None or not L.owned_by(svc.attrs["Spec"].get("Labels"), p.deployment):
            continue
        r.change("remove", f"service {name}", "monitoring.enabled is false")
        if not r.dry_run:
            with docker_op(f"remove service {name}", p.hub_host.name):
                svc.remove()


def prometheus_container(p: Loaded, clients: Clients):
    """(node, container) of Prometheus's running task, or (None, why) when there is none."""
    c = clients.manager
    name = M.prometheus_service(p)
    with docker_op(f"list tasks of {name}"):
        tasks = c.api.tasks(filters={"service": name, "desired-state": "running"})
    running = [t for t in tasks if t["Status"]["State"] == "running" and t["Status"].get("ContainerStatus")]
    if not running:
        if not tasks:
            return None, f"service {name} has no task: run `hubops deploy` (80-deploy makes it)"
        t = tasks[0]
        return None, f"Prometheus's task is {t['Status']['State']}: {t['Status'].get('Err') or t['Status'].get('Message')}"
    t = running[0]
    node = node_name(p, c.nodes.get(t["NodeID"]))
    cid = t["Status"]["ContainerStatus"]["ContainerID"]
    with docker_op(f"find Prometheus's container {cid[:12]}", node):
        return node, clients[node].containers.get(cid)
