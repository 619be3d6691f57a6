"""80-deploy: the hub as a Swarm service.

Creates or updates the service ``hubops-DEPLOYMENT-hub``: the hub image, SwarmSpawner, the
generated cookie secret, proxy token and crypt key (Swarm secrets, never on disk here),
hubops's API token, TLS terminated at the proxy with the certificate from 40-tls, the
userlist from 50-auth, a healthcheck, and an update config that rolls back by itself when the
new hub fails its healthcheck. Waits until the hub answers over HTTPS, verified against the
deployment's CA. Then removes secret and config versions that no service uses any more.
Undo: `runbooks/ops/teardown`.
"""
from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import docker
import docker.errors
import docker.types

from hubops.hub import config as hubconfig, running, spawn_limits
from hubops.stages import apiproxy, attachments, auth, auth_oidc, front, images, monitoring, removal
from hubops.core import api_token, labels as L, secrets
from hubops.core.engine import Clients, docker_op
from hubops.core.errors import HubopsError, ImageNotBuilt
from hubops.core.params import Loaded
from hubops.core.result import Result

log = logging.getLogger("hubops")
STAGE = "80-deploy"
SPEC_DIGEST = "hubops.spec-digest"
NS = 1_000_000_000

# Tells a busy hub from a dead one (hubops/inhub/health.py: the ports, the event loop's heartbeat,
# /hub/health on the hub's own port). A hub image from before that module gets the old check: through
# the proxy, 4 s. Under a burst of spawns the old check timed out three times in a row and Swarm
# killed a hub that was only busy.
HEALTHCHECK = (
    "import sys\n"
    "try:\n"
    "    from hubops.inhub.health import main\n"
    "except ImportError:\n"
    "    import ssl, urllib.request\n"
    f"    urllib.request.urlopen('https://127.0.0.1:{hubconfig.PROXY_PORT}/hub/health', "
    "context=ssl._create_unverified_context(), timeout=4)\n"
    "else:\n"
    "    sys.exit(main())\n"
)


def _secret_refs(c: docker.DockerClient, p: Loaded, r: Result) -> tuple[list, list[str]]:
    """References to the newest version of every secret the hub needs (generating the generated ones)."""
    refs, names = [], []
    for role in hubconfig.secret_roles(p):
        if role in ("cookie-secret", "crypt-key"):
            secrets.ensure_generated(c, p, r, role=role, stage=STAGE, hex_value=True)
        elif role == "proxy-token":
            secrets.ensure_generated(c, p, r, role=role, stage=STAGE)
        elif role == "api-token":
            # Scoped to what hubops calls, with an expiry; a new one when none is kept, the kept one
            # has no expiry, or it is near it (hubops.api_token).
            value, why = api_token.ensure(p, dry_run=r.dry_run)
            secrets.ensure_versioned(c, p, r, role=role, value=value.encode(), stage=STAGE,
                                     what="hubops's hub API token" + (f" ({why})" if why else ""))
        obj = secrets.current(c, p, role)
        if obj is None:
            if r.dry_run:
                continue
            raise HubopsError(
                f"Swarm secret of role {role} for deployment {p.deployment} is missing: "
                f"run the stage that makes it first ({'40-tls' if role.startswith('tls') else '50-auth'})"
            )
        names.append(obj.name)
        # The hub's user (not root) reads them.
        refs.append(docker.types.SecretReference(obj.id, obj.name, filename=hubconfig.SECRET_FILES[role],
                                                 uid=str(hubconfig.HUB_UID), gid=str(hubconfig.HUB_GID), mode=0o400))
    return refs, names


def _profile_images(c: docker.DockerClient, p: Loaded, singleuser_image: str) -> dict[str, str]:
    """Spawn profiles' images (60-images built them FROM the single-user image, which every node holds)."""
    try:
        return images.profile_refs(p, c, singleuser_image)
    except ImageNotBuilt:
        return {pr.name: f"hubops-{pr.image_folder}:<built by 60-images>" for pr in p.profiles if pr.image_folder}


def _config_refs(c: docker.DockerClient, p: Loaded, r: Result, singleuser_image: str) -> tuple[list, list[str]]:
    # OpenID Connect: the provider's endpoints, from its discovery document (refused if it does not answer).
    discovery = auth_oidc.discover(p) if p.auth.mode == "oidc" else None
    # The spawn limit follows the CPUs of the nodes that run users' servers (hub/spawn_limits.py).
    cpus = spawn_limits.user_node_cpus(c, p)
    if not r.dry_run:  # (a plan's record stays free of this machine's CPU count)
        r.facts["concurrent_spawn_limit"] = spawn_limits.concurrent_spawn_limit(p, cpus)
    profile_images = _profile_images(c, p, singleuser_image)
    secrets.ensure_versioned(c, p, r, role="hub-config", kind="config", stage=STAGE,
                             value=hubconfig.render(p, singleuser_image=singleuser_image, discovery=discovery,
                                                    node_cpus=cpus, profile_images=profile_images).encode(),
                             what="jupyterhub_config.py")
    refs, names = [], []
    for role in hubconfig.config_roles(p):
        target = hubconfig.CONFIG_FILES[role]
        obj = secrets.current(c, p, role, kind="config")
        if obj is None:
            if r.dry_run:
                continue
            raise HubopsError(f"Swarm config of role {role} is missing: run 50-auth first")
        names.append(obj.name)
        refs.append(docker.types.ConfigReference(obj.id, obj.name, filename=target, uid="0", gid="0", mode=0o444))
    return refs, names


def hub_data_mount(p: Loaded) -> docker.types.Mount:
    """The hub's data directory: a local volume of its manager, or a path on storage every manager mounts."""
    if p.storage.hub.mode == "shared-path":
        return docker.types.Mount(hubconfig.DATA_DIR, str(p.storage.hub.path), type="bind")
    if p.hub_db_postgres:
        # The database is in PostgreSQL; the data directory keeps only the hub's notices. Swarm makes the
        # volume on whichever manager the hub lands on, labelled so that teardown finds it.
        return docker.types.Mount(hubconfig.DATA_DIR, p.hub_volume, type="volume",
                                  labels=L.labels(p.deployment, "70-storage", role="hub-data"))
    return docker.types.Mount(hubconfig.DATA_DIR, p.hub_volume, type="volume")


def hub_constraints(p: Loaded) -> list[str]:
    """Where Swarm may run the hub. With its database on a local volume, only on the node that holds
    the volume; with it on shared storage, on any manager (the hub drives the swarm through the
    engine socket of the manager it runs on, which every manager has at the same path)."""
    if p.hub_can_move:
        return ["node.role==manager"]
    return [f"node.labels.{p.hub_node_label}==true"]


# Where the hub's container has its engine's socket. Not /var/run/docker.sock: /var/run is a
# symlink to /run in Debian images, and Docker 28 refuses every archive call (`docker cp`, backup,
# the users' notices) on a container with a mount below a symlink ("mkdirat var/run: path escapes
# from parent"); /var/run/docker.sock still reaches it through the symlink.
HUB_ENGINE_SOCKET = "/run/docker.sock"


def service_spec(p: Loaded, *, hub_image: str, secret_refs: list, config_refs: list) -> dict[str, Any]:
    """Keyword arguments for `services.create` / `service.update` (pure: parameters in, spec out)."""
    container = docker.types.ContainerSpec(
        image=hub_image,
        command=["jupyterhub", "-f", hubconfig.CONFIG_PATH],
        # The spawner (docker-py) finds the engine through DOCKER_HOST: the door (stages/apiproxy.py),
        # a filtering proxy; the hub has no engine socket and is not root. shared-path homes are made by
        # the door too.
        env=[f"HUBOPS_DEPLOYMENT={p.deployment}", *apiproxy.hub_env(p)],
        user=apiproxy.hub_user(),
        mounts=[apiproxy.door_mount(p), hub_data_mount(p)],
        secrets=secret_refs,
        configs=config_refs,
        healthcheck=docker.types.Healthcheck(
            test=["CMD", "python3", "-c", HEALTHCHECK],
            # Every 5 s (a restarted hub is healthy, and so in Swarm's DNS, soon); 30 s before Docker
            # gives up on one check (a python start on a CPU-starved node); 3 failures in a row.
            interval=5 * NS, timeout=30 * NS, retries=3, start_period=60 * NS,
        ),
        labels=L.labels(p.deployment, STAGE, role="hub"),
        stop_grace_period=20 * NS,
    )
    task = docker.types.TaskTemplate(
        container_spec=container,
        restart_policy=docker.types.RestartPolicy(condition="any", delay=5 * NS, max_attempts=0),
        placement=docker.types.Placement(constraints=hub_constraints(p)),
        networks=[docker.types.NetworkAttachmentConfig(p.network_name)],
    )
    return {
        "name": p.hub_service,
        "task_template": task,
        "endpoint_spec": docker.types.EndpointSpec(
            mode=p.network.endpoint_mode,
            ports={p.hub.https_port: (hubconfig.PROXY_PORT, "tcp", "host")},
        ),
        # stop-first: one hub at a time owns the SQLite database and the host port.
        "update_config": docker.types.UpdateConfig(
            parallelism=1, delay=0, failure_action="rollback", monitor=15 * NS, order="stop-first"
        ),
        "rollback_config": docker.types.RollbackConfig(parallelism=1, order="stop-first", monitor=15 * NS),
        "mode": docker.types.ServiceMode("replicated", replicas=1),
    }


def spec_digest(spec: dict[str, Any]) -> str:
    """A digest of what hubops asks of the service; stored as a label to detect drift cheaply."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=lambda o: dict(o)).encode()).hexdigest()[:16]


def ensure_hub(p: Loaded, clients: Clients, *, dry_run: bool = False, wait: bool = True,
               hub_image: str | None = None) -> Result:
    """Create or update the hub service, wait until it serves over HTTPS, prune old secret versions.

    `hub_image` replaces the image built from images/hub (the upgrade runbook). Without `wait`,
    nothing is pruned: a rollback may still need the previous versions."""
    r = Result("hub service", dry_run=dry_run)
    c = clients.manager
    try:
        refs = images.desired_refs(p, images.builder(p, clients))
    except ImageNotBuilt:
        if not dry_run:
            raise
        # A plan before any image exists: 60-images would build them first.
        refs = {k: f"hubops-{k}:<built by 60-images>" for k in images.KINDS}
    # The Docker API door runs the image built from images/hub, not an upgrade's candidate: a broken
    # candidate must not take the door down with it (Swarm rolls the hub back; the door stays).
    door_image = refs["hub"]
    if hub_image:
        refs = {**refs, "hub": hub_image}
    monitoring.ensure_token(c, p, r)  # monitoring.enabled: Prometheus's hub token, which the hub mounts too
    sec_refs, sec_names = _secret_refs(c, p, r)
    cfg_refs, cfg_names = _config_refs(c, p, r, refs["singleuser"])
    spec = front.hub_spec(p, service_spec(p, hub_image=refs["hub"], secret_refs=sec_refs, config_refs=cfg_refs))
    digest = spec_digest(spec)
    spec["labels"] = {**L.labels(p.deployment, STAGE, role="hub"), SPEC_DIGEST: digest}
    r.facts.update({"service": p.hub_service, "hub_image": refs["hub"], "singleuser_image": refs["singleuser"],
                    "url": p.hub_url, "endpoint_mode": p.network.endpoint_mode, "spec_digest": digest})

    svc = running.find_service(c, p)
    if svc is not None and not L.owned_by(svc.attrs["Spec"].get("Labels"), p.deployment):
        raise HubopsError(
            f"service {p.hub_service} exists but was not created by hubops for deployment {p.deployment}; "
            "remove it or choose another deployment name"
        )
    running_image = svc.attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"].split("@")[0] if svc is not None else ""
    if running_image != refs["hub"] and (svc is not None or not dry_run):
        # Before any change: an image that cannot use the database (older JupyterHub than its schema,
        # or one that needs a migration, which `ops upgrade` does with a way back) is refused.
        from hubops.hub import schema

        schema.guard(p, clients, refs["hub"], current_image=running_image)
    # Who the running hub lets in, to take out those who left the userlist once the new hub serves.
    userlist_before = removal.running_userlist(c, svc, hubconfig.USERLIST_PATH)
    # The door to the Docker API first (the hub spawns through it), and the hub's data to its user.
    apiproxy.ensure_door(p, clients, r, image=door_image, constraints=hub_constraints(p))
    if svc is None or svc.attrs["Spec"].get("Labels", {}).get(SPEC_DIGEST) != digest:
        apiproxy.ensure_data_owner(p, clients, r, image=door_image, data_mount=hub_data_mount(p))
    front.ensure(p, clients, r)  # the TLS front (front.enabled), or none; before the hub's port changes hands
    # More than one host, or GPU profiles: the overlay stays attached on every node, so a spawn neither
    # waits for the node's attachment nor updates a GPU node.
    attachments.ensure(p, clients, r, image=refs["singleuser"])
    if svc is None:
        r.change("create", f"service {p.hub_service}", f"hub {refs['hub']} on {p.hub_host.name}, port {p.hub.https_port}")
    elif svc.attrs["Spec"].get("Labels", {}).get(SPEC_DIGEST) != digest:
        r.change("update", f"service {p.hub_service}", _what_changed(svc, refs["hub"], sec_names, cfg_names))
    else:
        r.keep(f"service {p.hub_service}", "spec unchanged")
    if dry_run:
        for name in sorted(set(userlist_before or {}) - set(p.users)):
            r.change("remove", f"user {name}", "off the userlist: would be removed from the hub and their server stopped "
                     "(unless a provider group let them in at their last login)")
        monitoring.ensure(p, clients, r)
        return r

    if svc is None:
        with docker_op(f"create service {p.hub_service}", p.hub_host.name):
            c.api.create_service(**spec)
    elif r.items[-1].changed:
        with docker_op(f"update service {p.hub_service}", p.hub_host.name):
            svc.reload()  # an update must name the current version index
            c.api.update_service(svc.id, svc.version, **spec)
    if wait:
        r.facts["answered_after_s"] = running.wait_until_serving(p, clients, changed=r.items[-1].changed)
        removal.remove_departed(p, r, userlist_before)
        monitoring.ensure(p, clients, r)  # Prometheus and node exporters (monitoring.enabled), or their removal
        secrets.prune_unused(c, p, r, keep=set(sec_names) | set(cfg_names))
        auth.retire_unused_passwords(p, r)
    return r


def _what_changed(svc, hub_image: str, sec_names: list[str], cfg_names: list[str]) -> str:
    cs = svc.attrs["Spec"]["TaskTemplate"]["ContainerSpec"]
    out = []
    if cs.get("Image", "").split("@")[0] != hub_image:
        out.append(f"image {cs.get('Image', '').split('@')[0]} -> {hub_image}")
    have_s = {s["SecretName"] for s in cs.get("Secrets") or []}
    have_c = {s["ConfigName"] for s in cs.get("Configs") or []}
    out += [f"secret -> {n}" for n in sec_names if n not in have_s]
    out += [f"config -> {n}" for n in cfg_names if n not in have_c]
    return "; ".join(out) or "service settings changed"


