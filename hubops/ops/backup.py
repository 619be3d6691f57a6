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


from hubops.hub import config as hubconfig, running
from hubops.core import operator
from hubops.core.engine import Clients, docker_op
from hubops.core.errors import BackupError, ParameterError
from hubops.core.params import Loaded
from hubops.core.result import Result

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


# -- where backups go ------------------------------------------------------------------------
def backup_root(p: Loaded) -> Path:
    """The deployment's backup folder (parameter backup.dir); refused under outputs/."""
    from hubops.core.paths import OUTPUTS, PROJECT

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
    from hubops.audit.redact import Redactor, known_secrets

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
    svc = running.hub_service(p, clients)
    ctr = running.hub_container(p, clients)
    database = None
    if p.hub_db_postgres:  # pg_dump in a task of the postgres image (ops/backup_pg)
        from hubops.ops import backup_pg

        db_name = backup_pg.PGDUMP
        db, database = backup_pg.dump(p, clients)
        inside = {"jupyterhub": _hub_version(ctr)}
    else:
        db_name = DB
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
        db_name: db,
        USERLIST: configs.get(hubconfig.USERLIST_PATH, p.userlist_text().encode()),
        HUB_CONFIG: configs.get(hubconfig.CONFIG_PATH, b""),
        PARAMETERS: p.source.read_bytes(),
    }
    _no_secret_in(p, files)
    final, manifest = write_folder(root, files, {
        "deployment": p.deployment,
        "reason": reason,
        "hub_service": p.hub_service,
        "hub_image": running.service_image(svc),
        "jupyterhub_version": inside.get("jupyterhub"),
        "sqlite_version": inside.get("sqlite"),
    }, database=database)
    info = manifest["database"]
    secs = round(time.monotonic() - t0, 2)
    r.change("create", f"backup {final}",
             ("PostgreSQL (pg_dump) " if database else "") + f"database of {len(info['users'])} users ({len(info['admins'])} admins, {len(info['servers'])} server "
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


def _hub_version(ctr) -> Any:
    code, out = ctr.exec_run(["python3", "-c", "from importlib.metadata import version; print(version('jupyterhub'))"])
    return out.decode().strip() if code == 0 else None


def write_folder(root: Path, files: dict[str, bytes], meta: dict[str, Any], *,
                 database: Optional[dict[str, Any]] = None) -> tuple[Path, dict[str, Any]]:
    """Write a backup folder under `root` (files 0600, folder 0700): into NAME.partial first, the
    manifest last, then renamed, so a folder without .partial is always complete."""
    from hubops import __version__

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
        if database is not None:  # PostgreSQL: read from the archive by ops/backup_pg
            from hubops.ops import backup_pg

            backup_pg.inspect_dump(partial / backup_pg.PGDUMP)
            info = database
        else:
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
    engine = (m.get("database") or {}).get("engine", "sqlite") if isinstance(m.get("database"), dict) else "sqlite"
    from hubops.ops import backup_pg

    required = REQUIRED if engine == "sqlite" else (backup_pg.PGDUMP, USERLIST, HUB_CONFIG)
    problems = [f"{name}: not in the manifest" for name in required if name not in m["files"]]
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
    if engine == "sqlite":
        inspect_db(path / DB)
    else:
        backup_pg.inspect_dump(path / backup_pg.PGDUMP)
    return m


def check_backup(p: Loaded, which: str = "latest") -> Result:
    """Verify a backup without touching the cluster."""
    path = resolve(p, which)
    m = verify_backup(path)
    info = m["database"]
    r = Result("backup check")
    r.check(f"backup {path}", f"manifest, {len(m['files'])} files and their sha256 match; "
            f"a JupyterHub database ({info.get('engine', 'sqlite')}, {len(info['users'])} users, integrity ok)")
    r.facts.update({"path": str(path), "deployment": m["deployment"], "created": m["created"],
                    "jupyterhub": m.get("jupyterhub_version"), "hub_image": m.get("hub_image"),
                    "schema": info.get("alembic_revision"), "users": [u["name"] for u in info["users"]],
                    "admins": info["admins"], "reason": m.get("reason", ""), "engine": info.get("engine", "sqlite")})
    return r


# -- restore ------------------------------------------------------------------------------------


def latest(p: Loaded) -> Optional[Path]:
    found = list_backups(p)
    return found[-1] if found else None
