"""ops/restore: the hub's database put back from a backup made by ops/backup.

Checks everything before it changes anything (manifest, digests, files present, a JupyterHub
SQLite database whose schema the hub's image expects), takes a safety backup of the current
database, scales the hub service to 0, puts the database into the hub's volume (or
storage.hub.path), scales it back to 1, waits until the hub serves and checks that the backup's
users, admins and server records are back.
"""
from __future__ import annotations

import io
import json
import logging
import tarfile
import time
from pathlib import Path
from typing import Any

import docker.errors
import docker.types

from hubops.hub import config as hubconfig, running
from hubops.core import labels as L
from hubops.core.engine import Clients, docker_op
from hubops.core.errors import BackupError, DockerOpError, HubNotRunning, NotDeployed
from hubops.core.params import Loaded
from hubops.core.result import Result

log = logging.getLogger("hubops")


from hubops.ops.backup import DB, MANIFEST, backup, check_backup


# Runs in a throwaway container of the hub's image: the schema revision this JupyterHub expects.
_HEAD_SCRIPT = """
import json, os
import jupyterhub
from alembic.config import Config
from alembic.script import ScriptDirectory
cfg = Config()
cfg.set_main_option("script_location", os.path.join(os.path.dirname(jupyterhub.__file__), "alembic"))
print(json.dumps({"head": ScriptDirectory.from_config(cfg).get_current_head(), "jupyterhub": jupyterhub.__version__}))
"""


# Runs in a throwaway container with the hub's volume at /data, the hub stopped: the copied
# database replaces the old one in one rename (never a half-written database).
_PLACE_SCRIPT = """
import hashlib, os, sys
src, dst = "/data/.hubops-restore.sqlite", "/data/jupyterhub.sqlite"
digest = hashlib.sha256(open(src, "rb").read()).hexdigest()
if digest != sys.argv[1]:
    os.remove(src)
    sys.exit("the database copied into the volume does not match the backup's sha256")
for extra in ("-journal", "-wal", "-shm"):
    try:
        os.remove(dst + extra)
    except FileNotFoundError:
        pass
os.replace(src, dst)
os.chown(dst, int(sys.argv[2]), int(sys.argv[3]))  # the hub's user (the hub is not root)
print(digest)
"""


def _schema_head(p: Loaded, clients: Clients, image: str) -> dict[str, str]:
    """The database schema revision the hub's image expects (a throwaway container on the hub node)."""
    node = _data_node(p, clients)
    hc = clients[node]
    with docker_op(f"read the schema revision of {image}", node):
        out = hc.containers.run(image, ["python3", "-c", _HEAD_SCRIPT], remove=True, network_mode="none",
                                labels=L.labels(p.deployment, "restore", role="restore-check"))
    return json.loads(out.decode().strip().splitlines()[-1])


def _data_node(p: Loaded, clients: Clients) -> str:
    """Where the hub's data is reached: its manager's volume, or, when it is on storage every manager
    mounts (storage.hub shared-path), the first manager whose engine answers."""
    return clients.manager_name if p.hub_can_move else p.hub_host.name


def _data_where(p: Loaded) -> str:
    if p.hub_db_postgres:
        from hubops.hub import hubdb

        return hubdb.describe(p)
    return f"{p.storage.hub.path} (storage.hub.path)" if p.hub_can_move else f"volume {p.hub_volume} on {p.hub_host.name}"


def _wait_hub_stopped(p: Loaded, clients: Clients, timeout: float = 90) -> None:
    # A hub that can move may run on any manager: every manager whose engine answers is asked.
    nodes = [m.name for m in p.hosts.managers if clients.answers(m.name)] if p.hub_can_move else [p.hub_host.name]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = [n for n in nodes
                   if clients[n].containers.list(filters={"label": [*L.selector(p.deployment), f"{L.ROLE}=hub"]})]
        if not running:
            return
        time.sleep(0.5)
    raise DockerOpError(f"the hub's container on {', '.join(running)} still runs {timeout:.0f} s after scaling "
                        f"{p.hub_service} to 0; see `docker service ps {p.hub_service}`")


def _place_db(p: Loaded, clients: Clients, image: str, db: Path, sha: str) -> None:
    """Put the backup's database where the hub keeps it (the hub is stopped)."""
    node = _data_node(p, clients)
    hc = clients[node]
    if p.storage.hub.mode == "shared-path":
        mount = docker.types.Mount("/data", str(p.storage.hub.path), type="bind")
    else:
        mount = docker.types.Mount("/data", p.hub_volume, type="volume")
        with docker_op(f"inspect volume {p.hub_volume}", node):
            try:
                hc.volumes.get(p.hub_volume)
            except docker.errors.NotFound:
                raise NotDeployed(f"volume {p.hub_volume} is missing on {node}: run 70-storage and 80-deploy first") from None
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(str(db), arcname=".hubops-restore.sqlite")
    with docker_op(f"put the database into {_data_where(p)}", node):
        ctr = hc.containers.create(image, ["python3", "-c", _PLACE_SCRIPT, sha, str(hubconfig.HUB_UID), str(hubconfig.HUB_GID)], user="0:0", network_mode="none",
                                   mounts=[mount],
                                   labels=L.labels(p.deployment, "restore", role="restore"))
        try:
            ctr.put_archive("/data", buf.getvalue())
            ctr.start()
            status = ctr.wait(timeout=120)
            logs = ctr.logs().decode(errors="replace")
        finally:
            ctr.remove(force=True)
    if status.get("StatusCode") != 0:
        raise DockerOpError(f"replacing the database in {_data_where(p)} failed: {logs[-500:]}")


def _scale(svc, replicas: int) -> None:
    with docker_op(f"scale service {svc.name} to {replicas}"):
        svc.reload()
        svc.scale(replicas)


def _hub_users(p: Loaded) -> dict[str, dict]:
    api = running.HubAPI(p)
    users: dict[str, dict] = {}
    offset = 0
    while True:
        page = api.request("GET", f"/hub/api/users?include_stopped_servers=1&offset={offset}&limit=200").json()
        users.update({u["name"]: u for u in page})
        if len(page) < 200:
            return users
        offset += 200


def restore(p: Loaded, clients: Clients, which: str = "latest", *, safety_backup: bool = True,
            dry_run: bool = False, image: str = "") -> list[Result]:
    """Restore the hub's database from a backup onto this deployment (deployed, possibly fresh).

    Changes on the cluster: the hub stops (scaled to 0; users' servers keep running), its
    database is replaced, it starts again; with `image` (a reference, or "backup" for the image the
    backup names), on that image: the way back across a schema migration (the older JupyterHub and
    the database of its schema, together). Refuses, before any change, a backup that is corrupt,
    partial, not a hub database, or of a schema the hub's image does not expect."""
    checked = check_backup(p, which)
    path = Path(checked.facts["path"])
    m = json.loads((path / MANIFEST).read_text())
    info = m["database"]
    from hubops.ops import backup_pg

    engine = info.get("engine", "sqlite")
    mismatch = backup_pg.mode_mismatch(p, path, engine)
    if mismatch:
        raise BackupError(mismatch)
    if m["deployment"] != p.deployment:
        checked.check("deployment", f"a backup of {m['deployment']}, restored onto {p.deployment}")
    svc = running.hub_service(p, clients)
    current = running.service_image(svc)
    image = (m.get("hub_image") or "") if image == "backup" else (image or current)
    head = _schema_head(p, clients, image)
    if head["head"] != info["alembic_revision"]:
        raise BackupError(
            f"{path}: refused, nothing was changed: the backup's database has schema {info['alembic_revision']} "
            f"(JupyterHub {m.get('jupyterhub_version')}), the hub's image {image} expects {head['head']} "
            f"(JupyterHub {head['jupyterhub']}). Restore it with the backup's image, which the hub then runs: "
            f"`hubops ops restore -p {p.source} --set backup={path.name} --set image={m.get('hub_image')} "
            "--set confirm=true` (the image must be on the hub's node), then upgrade if you want")
    checked.check(f"image {image}", f"JupyterHub {head['jupyterhub']} expects schema {head['head']}, as in the backup")
    if engine == backup_pg.ENGINE:
        backup_pg.check_archive(p, clients, path / backup_pg.PGDUMP)
        checked.check("archive", "pg_restore reads all of it")
    results = [checked]
    hub_running = False
    try:
        hub_running = running.hub_container(p, clients) is not None
    except HubNotRunning:
        pass
    if safety_backup and hub_running:
        results.append(backup(p, clients, reason=f"before restoring {path.name}", dry_run=dry_run))
    r = Result("restore", dry_run=dry_run)
    results.append(r)
    db_file = backup_pg.PGDUMP if engine == backup_pg.ENGINE else DB
    size = m["files"][db_file]["bytes"]
    r.change("update", f"service {p.hub_service}", "scaled to 0: the hub stops (users' servers keep running)")
    r.change("update", _data_where(p),
             (f"tables replaced by pg_restore of the backup's {db_file}" if engine == backup_pg.ENGINE
              else f"{db_file} replaced by the backup's") + f" ({size} bytes, sha256 {m['files'][db_file]['sha256'][:16]})")
    if image != current:
        r.change("update", f"service {p.hub_service}", f"image {current} -> {image} (JupyterHub {head['jupyterhub']}, "
                 "whose schema the backup's database has)")
    r.change("update", f"service {p.hub_service}", "scaled to 1: the hub starts on the restored database")
    if dry_run:
        return results
    t0 = time.monotonic()
    _scale(svc, 0)
    try:
        _wait_hub_stopped(p, clients)
        if engine == backup_pg.ENGINE:
            backup_pg.restore_into(p, clients, path / backup_pg.PGDUMP)
        else:
            _place_db(p, clients, image, path / DB, m["files"][DB]["sha256"])
        if image != current:
            from hubops.stages import deploy

            deploy.ensure_hub(p, clients, hub_image=image, wait=False)
    finally:
        _scale(svc, 1)  # the hub comes back, on the restored database or, if placing failed, on the old one
    r.facts["answered_after_s"] = running.wait_until_serving(p, clients, changed=False)
    r.facts["hub_down_s"] = round(time.monotonic() - t0, 1)
    _check_restored(p, info, r)
    return results


def _check_restored(p: Loaded, info: dict[str, Any], r: Result) -> None:
    users = _hub_users(p)
    missing = [u["name"] for u in info["users"] if u["name"] not in users]
    not_admin = [a for a in info["admins"] if a in users and not users[a].get("admin")]
    lost = [f"{s['user']}/{s['server']}" for s in info["servers"]
            if s["user"] in users and s["server"] not in (users[s["user"]].get("servers") or {})]
    if missing or not_admin or lost:
        raise BackupError(
            "the hub runs on the restored database but it does not hold what the backup does: "
            + "; ".join(x for x in (f"users missing: {', '.join(missing)}" if missing else "",
                                    f"no longer admin: {', '.join(not_admin)}" if not_admin else "",
                                    f"server records missing: {', '.join(lost)}" if lost else "") if x))
    r.check("users", f"{len(info['users'])} of {len(info['users'])} back: {', '.join(u['name'] for u in info['users'])}")
    r.check("admins", f"admin again: {', '.join(info['admins']) or 'none'}")
    r.check("server records", f"{len(info['servers'])} back" + (
        ": " + ", ".join(f"{s['user']}/{s['server'] or '(default)'}" for s in info["servers"]) if info["servers"] else ""))
    r.facts["users"] = sorted(users)


# Public for ops/upgrade_migrate: the way back after a migration is a restore of the backup taken before it.
data_where, wait_hub_stopped, place_db, scale, hub_users = _data_where, _wait_hub_stopped, _place_db, _scale, _hub_users
