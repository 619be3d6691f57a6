"""Backup and restore of the hub's state.

A backup is a folder under `backup.dir` (default ``OPERATOR_DIR/DEPLOYMENT/backups/``, never
under outputs/) holding:

- ``jupyterhub.sqlite``: a consistent copy of the hub's database taken while the hub runs
  (SQLite's online backup API, run inside the hub's container, copied out through the engine);
- ``userlist`` and ``jupyterhub_config.py``: what the hub runs with (its Swarm configs);
- ``parameters.yaml``: the parameter file;
- ``manifest.json``: sha256 and size of each file, the deployment, the hub image and JupyterHub
  version, the database's schema revision, its users, admins and server records.

No secret is in it: secrets live in Swarm secrets and the operator folder, the database keeps only
hashes of tokens (a backup is refused if any known secret value shows up in it).

Restore checks everything before it changes anything (manifest, digests, files present, a
JupyterHub SQLite database whose schema the hub's image expects), takes a safety backup of the
current database, scales the hub service to 0, puts the database into the hub's volume, scales it
back to 1, waits until the hub serves and checks that the backup's users, admins and server
records are back.
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import os
import shutil
import sqlite3
import tarfile
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import docker.errors
import docker.types

from . import hubconfig, labels as L, operator
from .engine import Clients, docker_op
from .errors import BackupError, DockerOpError, HubopsError, ParameterError
from .params import Loaded
from .result import Result

log = logging.getLogger("hubops")

FORMAT = "hubops-backup/1"
MANIFEST = "manifest.json"
DB = "jupyterhub.sqlite"
USERLIST = "userlist"
HUB_CONFIG = "jupyterhub_config.py"
PARAMETERS = "parameters.yaml"
REQUIRED = (DB, USERLIST, HUB_CONFIG)
DB_PATH = f"{hubconfig.DATA_DIR}/{DB}"
HUB_TABLES = {"users", "spawners", "alembic_version"}

# Runs inside the hub's container (its own python3): a consistent copy through SQLite's online
# backup API, which reads the live database page by page under SQLite's own locking.
_COPY_SCRIPT = """
import json, sqlite3, sys
src = sqlite3.connect(sys.argv[1], timeout=30)
dst = sqlite3.connect(sys.argv[2])
src.backup(dst)
src.close()
info = {"integrity": dst.execute("PRAGMA integrity_check").fetchone()[0], "sqlite": sqlite3.sqlite_version}
dst.close()
try:
    from importlib.metadata import version
    info["jupyterhub"] = version("jupyterhub")
except Exception:
    info["jupyterhub"] = None
print(json.dumps(info))
"""

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
print(digest)
"""


# -- where backups go ------------------------------------------------------------------------
def backup_root(p: Loaded) -> Path:
    """The deployment's backup folder (parameter backup.dir); refused under outputs/."""
    from .runner import OUTPUTS, PROJECT

    root = p.path(p.backup.dir) if p.backup.dir else p.operator_path / "backups"
    root = Path(os.path.abspath(root))
    for outputs in {Path(os.path.abspath(OUTPUTS)), PROJECT / "outputs"}:
        if root == outputs or outputs in root.parents:
            raise ParameterError(f"{p.source}: backup.dir: {root} is under {outputs}; backups hold users' data "
                                 "and belong outside the record: choose another folder")
    return root


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# -- reading a hub database -------------------------------------------------------------------
def inspect_db(path: Path) -> dict[str, Any]:
    """What a JupyterHub SQLite database holds (read-only). Raises BackupError if it is not one."""
    try:
        with open(path, "rb") as f:
            header = f.read(16)
    except OSError as e:
        raise BackupError(f"{path}: cannot read the database: {e.strerror}") from None
    if header != b"SQLite format 3\x00":
        raise BackupError(f"{path}: not a SQLite database (its first bytes are {header[:16]!r})")
    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            integrity = con.execute("PRAGMA integrity_check").fetchone()[0]
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if not HUB_TABLES <= tables:
                raise BackupError(f"{path}: a SQLite database, but not JupyterHub's (no table "
                                  f"{', '.join(sorted(HUB_TABLES - tables))})")
            users = [{"name": n, "admin": bool(a)} for n, a in con.execute("SELECT name, admin FROM users ORDER BY name")]
            servers = [{"user": u, "server": s or "", "running": sid is not None}
                       for u, s, sid in con.execute("SELECT u.name, s.name, s.server_id FROM spawners s "
                                                    "JOIN users u ON s.user_id = u.id ORDER BY u.name, s.name")]
            revision = (con.execute("SELECT version_num FROM alembic_version").fetchone() or [None])[0]
        finally:
            con.close()
    except sqlite3.DatabaseError as e:
        raise BackupError(f"{path}: the database cannot be read ({e}): it is corrupt") from None
    if integrity != "ok":
        raise BackupError(f"{path}: the database fails SQLite's integrity check ({integrity[:200]})")
    return {"integrity": integrity, "alembic_revision": revision, "users": users,
            "admins": [u["name"] for u in users if u["admin"]], "servers": servers}


# -- backup -------------------------------------------------------------------------------------
def _hub_service(p: Loaded, clients: Clients):
    from .deploy import _find_service

    svc = _find_service(clients.manager, p)
    if svc is None:
        raise HubopsError(f"no hub service {p.hub_service}: deploy first (hubops deploy -p {p.source})")
    return svc


def _hub_container(p: Loaded, clients: Clients):
    from .nodes import _hub_container

    return _hub_container(p, clients)


def _running_configs(c, svc) -> dict[str, bytes]:
    """The Swarm configs the hub service runs with, by their path in the container."""
    out = {}
    for ref in svc.attrs["Spec"]["TaskTemplate"]["ContainerSpec"].get("Configs") or []:
        with docker_op(f"read config {ref['ConfigName']}"):
            data = c.configs.get(ref["ConfigID"]).attrs["Spec"]["Data"]
        out[ref["File"]["Name"]] = base64.b64decode(data)
    return out


def _copy_out(container, path: str) -> bytes:
    with docker_op(f"copy {path} out of the hub's container"):
        stream, _ = container.get_archive(path)
        with tempfile.SpooledTemporaryFile(max_size=64 << 20) as buf:
            for chunk in stream:
                buf.write(chunk)
            buf.seek(0)
            with tarfile.open(fileobj=buf) as tar:
                member = next(m for m in tar.getmembers() if m.isfile())
                return tar.extractfile(member).read()  # type: ignore[union-attr]


def _no_secret_in(p: Loaded, files: dict[str, bytes]) -> None:
    from .redact import Redactor, known_secrets

    red = Redactor(known_secrets(p))
    for name, data in files.items():
        text = data.decode("latin-1")  # byte for byte: a secret stored as text shows up as itself
        if red.redact(text) != text:
            raise BackupError(f"the backup's {name} would contain a secret value of deployment {p.deployment}; "
                              "nothing was written. Report this: hubops keeps secrets out of backups")


def backup(p: Loaded, clients: Clients, *, reason: str = "", dry_run: bool = False) -> Result:
    """Write a backup of the running hub into a new folder under backup.dir.

    Changes on the cluster: none (a temporary file in the hub container's /tmp, removed)."""
    r = Result("backup", dry_run=dry_run)
    root = backup_root(p)
    if dry_run:
        return r.change("create", f"backup under {root}", "would copy the hub's database (while it runs), "
                        "userlist, hub config and parameters, with a manifest of sha256 digests")
    t0 = time.monotonic()
    c = clients.manager
    svc = _hub_service(p, clients)
    ctr = _hub_container(p, clients)
    tmp = f"/tmp/hubops-backup-{os.getpid()}-{int(time.time())}.sqlite"
    with docker_op("copy the hub database inside its container"):
        code, (out, err) = ctr.exec_run(["python3", "-c", _COPY_SCRIPT, DB_PATH, tmp], demux=True)
    try:
        if code != 0:
            raise BackupError(f"copying {DB_PATH} in the hub's container failed "
                              f"(exit {code}): {(err or b'').decode(errors='replace')[-500:]}")
        inside = json.loads((out or b"{}").decode().strip().splitlines()[-1])
        db = _copy_out(ctr, tmp)
    finally:
        ctr.exec_run(["rm", "-f", tmp])
    configs = _running_configs(c, svc)
    files = {
        DB: db,
        USERLIST: configs.get(hubconfig.USERLIST_PATH, p.userlist_text().encode()),
        HUB_CONFIG: configs.get(hubconfig.CONFIG_PATH, b""),
        PARAMETERS: p.source.read_bytes(),
    }
    _no_secret_in(p, files)
    cs = svc.attrs["Spec"]["TaskTemplate"]["ContainerSpec"]
    final, manifest = write_folder(root, files, {
        "deployment": p.deployment,
        "reason": reason,
        "hub_service": p.hub_service,
        "hub_image": cs.get("Image", "").split("@")[0],
        "jupyterhub_version": inside.get("jupyterhub"),
        "sqlite_version": inside.get("sqlite"),
    })
    info = manifest["database"]
    secs = round(time.monotonic() - t0, 2)
    r.change("create", f"backup {final}",
             f"database of {len(info['users'])} users ({len(info['admins'])} admins, {len(info['servers'])} server "
             f"records), a consistent copy taken while the hub ran; userlist, hub config, parameters; "
             f"manifest with sha256" + (f"; reason: {reason}" if reason else ""))
    r.facts.update({
        "path": str(final), "seconds": secs, "jupyterhub": manifest["jupyterhub_version"],
        "hub_image": manifest["hub_image"], "schema": info["alembic_revision"],
        "users": [u["name"] for u in info["users"]], "admins": info["admins"],
        "files": [{"file": k, "bytes": v["bytes"], "sha256": v["sha256"][:16]} for k, v in manifest["files"].items()],
    })
    log.info("backup of %s written to %s in %s s", p.deployment, final, secs)
    return r


def write_folder(root: Path, files: dict[str, bytes], meta: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    """Write a backup folder under `root` (files 0600, folder 0700): into NAME.partial first, the
    manifest last, then renamed, so a folder without .partial is always complete."""
    from . import __version__

    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    final = root / stamp
    n = 1
    while final.exists() or final.with_name(final.name + ".partial").exists():
        n += 1
        final = root / f"{stamp}-{n}"
    partial = final.with_name(final.name + ".partial")
    partial.mkdir(parents=True, mode=0o700)
    os.chmod(root, 0o700)
    try:
        for name, data in files.items():
            operator.write_private(partial / name, data)
        info = inspect_db(partial / DB)  # the copy itself, read back from disk
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    manifest = {
        "format": FORMAT,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "hubops_version": __version__,
        **meta,
        "database": info,
        "files": {name: {"sha256": _sha256(data), "bytes": len(data)} for name, data in files.items()},
    }
    operator.write_private(partial / MANIFEST, json.dumps(manifest, indent=2).encode() + b"\n")
    partial.rename(final)
    return final, manifest


def list_backups(p: Loaded) -> list[Path]:
    """Finished backups of the deployment, oldest first."""
    root = backup_root(p)
    if not root.is_dir():
        return []
    return sorted(d for d in root.iterdir() if d.is_dir() and not d.name.endswith(".partial") and (d / MANIFEST).exists())


def resolve(p: Loaded, which: str) -> Path:
    """A backup folder: "latest" (or "") for the newest, a folder name under backup.dir, or a path."""
    if which in ("", "latest"):
        found = list_backups(p)
        if not found:
            raise BackupError(f"no backup under {backup_root(p)}: run the backup runbook first, or set `backup` "
                              "to a backup folder")
        return found[-1]
    path = Path(os.path.expanduser(which))
    if not path.is_absolute() and (backup_root(p) / path).is_dir():
        return backup_root(p) / path
    return path.resolve()


# -- checking a backup ------------------------------------------------------------------------
def verify_backup(path: Path) -> dict[str, Any]:
    """The backup's manifest, once every file is there and matches its digest and the database is a
    readable JupyterHub database. Raises BackupError naming every problem; changes nothing."""
    if not path.is_dir():
        raise BackupError(f"{path}: no such backup folder")
    mf = path / MANIFEST
    if not mf.is_file():
        raise BackupError(f"{path}: refused: no {MANIFEST}; the backup is partial or unfinished. Nothing was changed")
    try:
        m = json.loads(mf.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise BackupError(f"{mf}: refused: not valid JSON ({e}); the backup is corrupt. Nothing was changed") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT or not isinstance(m.get("files"), dict):
        raise BackupError(f"{mf}: refused: not a hubops backup manifest (format {FORMAT}). Nothing was changed")
    problems = [f"{name}: not in the manifest" for name in REQUIRED if name not in m["files"]]
    for name, meta in sorted(m["files"].items()):
        f = path / name
        if "/" in name or name.startswith(".") or not isinstance(meta, dict):
            problems.append(f"{name!r}: not a valid entry")
        elif not f.is_file():
            problems.append(f"{name}: missing")
        elif f.stat().st_size != meta.get("bytes"):
            problems.append(f"{name}: {f.stat().st_size} bytes, the manifest says {meta.get('bytes')} (truncated or changed)")
        elif _sha256_file(f) != meta.get("sha256"):
            problems.append(f"{name}: sha256 does not match the manifest (corrupt or changed)")
    if problems:
        raise BackupError(f"{path}: refused, nothing was changed: " + "; ".join(problems))
    inspect_db(path / DB)
    return m


def check_backup(p: Loaded, which: str = "latest") -> Result:
    """Verify a backup without touching the cluster."""
    path = resolve(p, which)
    m = verify_backup(path)
    info = m["database"]
    r = Result("backup check")
    r.check(f"backup {path}", f"manifest, {len(m['files'])} files and their sha256 match; "
            f"a JupyterHub database ({len(info['users'])} users, integrity ok)")
    r.facts.update({"path": str(path), "deployment": m["deployment"], "created": m["created"],
                    "jupyterhub": m.get("jupyterhub_version"), "hub_image": m.get("hub_image"),
                    "schema": info.get("alembic_revision"), "users": [u["name"] for u in info["users"]],
                    "admins": info["admins"], "reason": m.get("reason", "")})
    return r


# -- restore ------------------------------------------------------------------------------------
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
    if p.hub_can_move:
        mount = docker.types.Mount("/data", str(p.storage.hub.path), type="bind")
    else:
        mount = docker.types.Mount("/data", p.hub_volume, type="volume")
        with docker_op(f"inspect volume {p.hub_volume}", node):
            try:
                hc.volumes.get(p.hub_volume)
            except docker.errors.NotFound:
                raise HubopsError(f"volume {p.hub_volume} is missing on {node}: run 70-storage and 80-deploy first") from None
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(str(db), arcname=".hubops-restore.sqlite")
    with docker_op(f"put the database into {_data_where(p)}", node):
        ctr = hc.containers.create(image, ["python3", "-c", _PLACE_SCRIPT, sha], user="0:0", network_mode="none",
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
    from .verify import HubAPI

    api = HubAPI(p)
    users: dict[str, dict] = {}
    offset = 0
    while True:
        page = api.request("GET", f"/hub/api/users?include_stopped_servers=1&offset={offset}&limit=200").json()
        users.update({u["name"]: u for u in page})
        if len(page) < 200:
            return users
        offset += 200


def restore(p: Loaded, clients: Clients, which: str = "latest", *, safety_backup: bool = True,
            dry_run: bool = False) -> list[Result]:
    """Restore the hub's database from a backup onto this deployment (deployed, possibly fresh).

    Changes on the cluster: the hub stops (scaled to 0; users' servers keep running), its
    database is replaced, it starts again. Refuses, before any change, a backup that is corrupt,
    partial, not a hub database, or of a schema the hub's image does not expect."""
    checked = check_backup(p, which)
    path = Path(checked.facts["path"])
    m = json.loads((path / MANIFEST).read_text())
    info = m["database"]
    if m["deployment"] != p.deployment:
        checked.check("deployment", f"a backup of {m['deployment']}, restored onto {p.deployment}")
    svc = _hub_service(p, clients)
    image = svc.attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"].split("@")[0]
    head = _schema_head(p, clients, image)
    if head["head"] != info["alembic_revision"]:
        raise BackupError(
            f"{path}: refused, nothing was changed: the backup's database has schema {info['alembic_revision']} "
            f"(JupyterHub {m.get('jupyterhub_version')}), the hub's image {image} expects {head['head']} "
            f"(JupyterHub {head['jupyterhub']}). Restore onto a hub running the backup's image "
            f"({m.get('hub_image')}: `hubops ops upgrade --set image=...`), then upgrade")
    checked.check(f"image {image}", f"JupyterHub {head['jupyterhub']} expects schema {head['head']}, as in the backup")
    results = [checked]
    hub_running = False
    try:
        hub_running = _hub_container(p, clients) is not None
    except HubopsError:
        pass
    if safety_backup and hub_running:
        results.append(backup(p, clients, reason=f"before restoring {path.name}", dry_run=dry_run))
    r = Result("restore", dry_run=dry_run)
    results.append(r)
    size = m["files"][DB]["bytes"]
    r.change("update", f"service {p.hub_service}", "scaled to 0: the hub stops (users' servers keep running)")
    r.change("update", _data_where(p),
             f"{DB} replaced by the backup's ({size} bytes, sha256 {m['files'][DB]['sha256'][:16]})")
    r.change("update", f"service {p.hub_service}", "scaled to 1: the hub starts on the restored database")
    if dry_run:
        return results
    from .deploy import wait_until_serving

    t0 = time.monotonic()
    _scale(svc, 0)
    try:
        _wait_hub_stopped(p, clients)
        _place_db(p, clients, image, path / DB, m["files"][DB]["sha256"])
    finally:
        _scale(svc, 1)  # the hub comes back, on the restored database or, if placing failed, on the old one
    r.facts["answered_after_s"] = wait_until_serving(p, clients, changed=False)
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


def latest(p: Loaded) -> Optional[Path]:
    found = list_backups(p)
    return found[-1] if found else None
