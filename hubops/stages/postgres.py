"""70-storage with storage.hub.mode postgres: the hub's database in PostgreSQL.

hubops's own server (no storage.hub.postgres.url): the postgres image (images/postgres, Debian's
postgresql) built offline and delivered to the managers, a generated password (Swarm secret, a copy
in the operator folder), the data on a labelled volume of one manager (storage.hub.postgres.node,
default the hub's) or on a shared path, and the Swarm service ``hubops-DEPLOYMENT-db`` on the overlay
network (dnsrr); then a real login from the overlay network.

An existing server (url): its address answers, TLS verifies against storage.hub.postgres.ca (from
this machine, before anything changes), then a real login from the overlay network; its CA becomes a
Swarm config for the hub. The postgres image is built either way: backups run its pg_dump.

Undo: teardown removes the service (and, with remove_volumes, the data volume); an existing server
is never changed except for the hub's own tables.
"""
from __future__ import annotations

import hashlib
import logging

import docker.types

from hubops.core import labels as L, secrets
from hubops.core.engine import Clients
from hubops.core.errors import ImageNotBuilt
from hubops.core.params import Loaded
from hubops.core.paths import IMAGES
from hubops.core.result import Result
from hubops.hub import hubdb
from hubops.stages import images, owned_service

log = logging.getLogger("hubops")
STAGE = "70-storage"
KIND = "postgres"
DATA_TARGET = "/var/lib/postgresql/hubops"
NS = 1_000_000_000


def image_ref(p: Loaded, clients: Clients) -> str:
    """The postgres image's tag for the current build context (built or not)."""
    src = images.builder(p, clients)
    base = images.image_or_none(src, p.images.base)
    if base is None:
        raise ImageNotBuilt(f"base image {p.images.base} is missing: run 60-images first")
    ca = images.extra_ca(p)
    ca_digest = hashlib.sha256(ca.read_bytes()).hexdigest() if ca and ca.read_bytes() else None
    return images.image_ref(KIND, images_dir=IMAGES, base_id=base.id, extra_ca_digest=ca_digest)


def ensure_image(p: Loaded, clients: Clients, r: Result) -> str:
    """Build the postgres image if its context changed and put it on every manager (its server and
    hubops's pg_dump / pg_restore tasks run there); its reference."""
    built = images.ensure_image_built(images.builder(p, clients), KIND, images_dir=IMAGES, base=p.images.base,
                                      extra_ca_bundle=images.extra_ca(p), deployment=p.deployment,
                                      dry_run=r.dry_run)
    r.items.extend(built.items)
    ref = built.facts["ref"]
    if r.dry_run and built.changed:
        return ref
    managers = [h.name for h in p.hosts.managers]
    delivered = images.ensure_images_on_nodes({n: clients[n] for n in managers}, [ref],
                                              source=images.builder(p, clients), dry_run=r.dry_run)
    r.items.extend(delivered.items)
    return ref


def ensure_db(p: Loaded, clients: Clients, *, dry_run: bool = False) -> Result:
    """The hub's PostgreSQL ready for the hub: hubops's own service, or an existing server checked."""
    r = Result("hub database (PostgreSQL)", dry_run=dry_run)
    r.facts.update({"mode": "postgres", "database": hubdb.describe(p), "url": hubdb.url(p), "hub_can_move": True,
                    "why": "the hub's database is in PostgreSQL, reached over the network: Swarm may start the "
                           "hub on any manager"})
    if p.storage.hub.pg.external:
        r.check("server", hubdb.probe_tls(p))
    ref = ensure_image(p, clients, r)
    r.facts["postgres_image"] = ref
    if p.storage.hub.pg.external:
        secrets.ensure_versioned(clients.manager, p, r, role=hubdb.ROLE, value=hubdb.password(p).encode(), stage=STAGE,
                                 what="the database password (from storage.hub.postgres.password), for the hub")
        secrets.ensure_versioned(clients.manager, p, r, role=hubdb.CA_ROLE, kind="config", stage=STAGE,
                                 value=p.path(p.storage.hub.pg.ca).read_bytes(),  # type: ignore[arg-type]
                                 what="the database server's CA (the hub verifies the server with it)")
    else:
        secrets.ensure_generated(clients.manager, p, r, role=hubdb.ROLE, stage=STAGE)
        if p.storage.hub.pg.path is None:
            owned_service.ensure_volume(p, clients[p.db_node], p.db_node, p.db_volume, r, stage=STAGE, role="db-data",
                                        what="the hub database's PostgreSQL data")
        _ensure_service(p, clients, r, ref)
    if dry_run:
        return r
    r.facts["ready_after_s"], version = hubdb.wait_ready(p, clients, ref)
    r.facts["server_version"] = f"{version // 10000}.{version % 10000}"
    warning = hubdb.backup_warning(p, version)
    if warning:
        log.warning("%s", warning)
        r.facts["warning"] = warning
    r.check("login", f"{hubdb.conn(p)['user']} logs in to {hubdb.conn(p)['db']} from the overlay network "
            f"{p.network_name}")
    return r


def service_spec(p: Loaded, *, image: str, secret_ref) -> dict:
    """Keyword arguments for creating / updating hubops's PostgreSQL service (pure)."""
    path = p.storage.hub.pg.path
    mount = (docker.types.Mount(DATA_TARGET, str(path), type="bind") if path is not None
             else docker.types.Mount(DATA_TARGET, p.db_volume, type="volume"))
    constraints = (["node.role==manager"] if path is not None
                   else [f"node.labels.hubops.{p.deployment}.host=={p.db_node}"])
    container = docker.types.ContainerSpec(
        image=image, command=["hubops-postgres"],
        env=[f"PGDATA={DATA_TARGET}"],
        mounts=[mount],
        secrets=[secret_ref] if secret_ref is not None else [],
        healthcheck=docker.types.Healthcheck(
            test=["CMD", "pg_isready", "-q", "-h", "127.0.0.1", "-U", hubdb.SERVICE_USER, "-d", hubdb.SERVICE_DB],
            interval=2 * NS, timeout=5 * NS, retries=5, start_period=60 * NS),
        labels=L.labels(p.deployment, STAGE, role="db"),
        stop_signal="SIGINT", stop_grace_period=30 * NS,
    )
    # One server on its data at a time; a failed update goes back to the server that worked.
    return owned_service.service_spec(p.db_service, container, constraints=constraints, network=p.network_name,
                                      endpoint_mode=p.network.endpoint_mode, restart_delay_s=2,
                                      failure_action="rollback")


def _ensure_service(p: Loaded, clients: Clients, r: Result, image: str) -> None:
    c = clients.manager
    sec = secrets.current(c, p, hubdb.ROLE)
    ref = (docker.types.SecretReference(sec.id, sec.name, filename="hubops-db-password", uid="0", gid="0", mode=0o400)
           if sec is not None else None)
    spec = service_spec(p, image=image, secret_ref=ref)
    spec["labels"] = L.labels(p.deployment, STAGE, role="db")
    where = str(p.storage.hub.pg.path) if p.storage.hub.pg.path else f"volume {p.db_volume} on {p.db_node}"
    owned_service.ensure_service(p, c, r, spec, created=f"PostgreSQL 15, data in {where}",
                                 updated=f"spec changed (image {image}, data in {where})",
                                 kept=f"PostgreSQL, data in {where}; spec unchanged")
