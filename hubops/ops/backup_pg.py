"""Backup and restore of the hub's database when it is in PostgreSQL (storage.hub.mode postgres).

The same backup folder and manifest as with SQLite (ops/backup), with ``jupyterhub.pgdump`` in place
of ``jupyterhub.sqlite``: PostgreSQL's custom archive made by ``pg_dump`` (one consistent snapshot,
taken while the hub runs), uncompressed so that the secret scan of every backup reads it byte by byte.
pg_dump and pg_restore run in a throwaway container of the postgres image (images/postgres, the
server's major version) on a manager, on the overlay network. The manifest's ``database`` block says
``engine: postgres`` and holds, as for SQLite, the schema revision, users, admins and server records,
read from the archive itself (``pg_restore`` of its data back to SQL, parsed here).

Restore: ``pg_restore --clean --if-exists --single-transaction`` of the archive into the database (the
hub stopped): all of it or nothing.
"""
from __future__ import annotations

import io
import re
import tarfile
from pathlib import Path
from typing import Any

from hubops.core.engine import Clients
from hubops.core.errors import BackupError
from hubops.core.params import Loaded
from hubops.hub import hubdb
from hubops.stages import postgres

PGDUMP = "jupyterhub.pgdump"
ENGINE = "postgres"
OUT = f"{hubdb.TASK_DIR}/out"
HUB_TABLES = ("users", "spawners", "alembic_version")


def _unescape(v: str) -> Any:
    if v == "\\N":
        return None
    return re.sub(r"\\(.)", lambda m: {"t": "\t", "n": "\n", "r": "\r", "\\": "\\"}.get(m.group(1), m.group(1)), v)


def parse_copy(sql: str) -> dict[str, list[dict[str, Any]]]:
    """The rows of every `COPY public.TABLE (cols) FROM stdin;` block of a plain SQL dump (pure)."""
    out: dict[str, list[dict[str, Any]]] = {}
    lines = iter(sql.splitlines())
    for line in lines:
        m = re.match(r"^COPY (?:\w+\.)?\"?(\w+)\"? \((.*)\) FROM stdin;$", line)
        if not m:
            continue
        cols = [c.strip().strip('"') for c in m.group(2).split(",")]
        rows = out.setdefault(m.group(1), [])
        for row in lines:
            if row == "\\.":
                break
            rows.append(dict(zip(cols, (_unescape(v) for v in row.split("\t")))))
    return out


def database_info(sql: str, toc: str) -> dict[str, Any]:
    """The manifest's `database` block from the archive's data (as SQL) and its table of contents (pure).
    Raises BackupError when the archive is not a JupyterHub database."""
    tables = set(re.findall(r"\bTABLE (?:DATA )?\w+ (\w+)", toc))
    missing = [t for t in HUB_TABLES if t not in tables]
    if missing:
        raise BackupError(f"the PostgreSQL archive is not JupyterHub's (no table {', '.join(missing)})")
    rows = parse_copy(sql)
    users = {u["id"]: u for u in rows.get("users", [])}
    names = sorted(({"name": u["name"], "admin": u["admin"] == "t"} for u in users.values()), key=lambda u: u["name"])
    servers = sorted(({"user": users[s["user_id"]]["name"], "server": s.get("name") or "",
                       "running": s.get("server_id") is not None}
                      for s in rows.get("spawners", []) if s.get("user_id") in users),
                     key=lambda s: (s["user"], s["server"]))
    revision = (rows.get("alembic_version") or [{}])[0].get("version_num")
    return {"engine": ENGINE, "integrity": "ok (pg_restore read the whole archive)", "alembic_revision": revision,
            "users": names, "admins": [u["name"] for u in names if u["admin"]], "servers": servers,
            "tables": sorted(tables)}


def _untar(data: bytes) -> dict[str, bytes]:
    out = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for m in tar.getmembers():
            if m.isfile():
                out[m.name.rsplit("/", 1)[-1]] = tar.extractfile(m).read()  # type: ignore[union-attr]
    return out


def dump(p: Loaded, clients: Clients) -> tuple[bytes, dict[str, Any]]:
    """A consistent pg_dump of the hub's database while the hub runs: (archive bytes, database block)."""
    image = postgres.image_ref(p, clients)
    script = (hubdb.PG_ENV + "mkdir -p out && pg_dump -Fc -Z0 --no-owner --no-acl -f out/" + PGDUMP + " && "
              "pg_restore --list out/" + PGDUMP + " > out/toc.txt && "
              "pg_restore --data-only -t users -t spawners -t alembic_version -f out/data.sql out/" + PGDUMP +
              " && pg_dump --version > out/version.txt")
    code, out, got = hubdb.run_task(p, clients, image, ["sh", "-c", script], what="pg_dump of the hub's database",
                                    role="backup", fetch=OUT)
    if code != 0 or got is None:
        hint = ""
        if "server version mismatch" in out:
            hint = (f" (hubops's pg_dump is version {hubdb.PG_DUMP_MAJOR}: back a newer server up with its own "
                    "pg_dump until hubops's postgres image follows)")
        raise BackupError(f"pg_dump of the hub's database ({hubdb.describe(p)}) failed (exit {code}): "
                          f"{out.strip()[-600:]}{hint}; nothing was written")
    files = _untar(got)
    info = database_info(files["data.sql"].decode(errors="replace"), files["toc.txt"].decode(errors="replace"))
    info["pg_dump"] = files.get("version.txt", b"").decode().strip()
    info["server"] = hubdb.describe(p)
    return files[PGDUMP], info


def inspect_dump(path: Path) -> None:
    """A PostgreSQL custom archive of JupyterHub's tables (offline check). Raises BackupError."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise BackupError(f"{path}: cannot read the database archive: {e.strerror}") from None
    if not data.startswith(b"PGDMP"):
        raise BackupError(f"{path}: not a PostgreSQL custom archive (pg_dump -Fc); its first bytes are {data[:8]!r}")
    missing = [t for t in HUB_TABLES if t.encode() not in data]
    if missing:
        raise BackupError(f"{path}: a PostgreSQL archive, but not of JupyterHub's database (no table {', '.join(missing)})")


def check_archive(p: Loaded, clients: Clients, path: Path) -> None:
    """pg_restore reads the whole archive (its table of contents and every table's data), changing nothing."""
    image = postgres.image_ref(p, clients)
    script = hubdb.PG_ENV + f"pg_restore --list {PGDUMP} >/dev/null && pg_restore -f /dev/null {PGDUMP}"
    code, out, _ = hubdb.run_task(p, clients, image, ["sh", "-c", script], what="check the backup's archive",
                                  role="restore-check", files={PGDUMP: path.read_bytes()})
    if code != 0:
        raise BackupError(f"{path}: refused, nothing was changed: pg_restore cannot read the archive: {out.strip()[-400:]}")


def restore_into(p: Loaded, clients: Clients, path: Path) -> None:
    """Replace the hub's tables with the archive's, in one transaction (the hub must be stopped)."""
    image = postgres.image_ref(p, clients)
    script = hubdb.PG_ENV + (f"pg_restore --clean --if-exists --no-owner --no-acl --single-transaction "
                             f"--exit-on-error -d \"$PGDATABASE\" {PGDUMP}")
    code, out, _ = hubdb.run_task(p, clients, image, ["sh", "-c", script], what="pg_restore into the hub's database",
                                  role="restore", files={PGDUMP: path.read_bytes()})
    if code != 0:
        raise BackupError(f"pg_restore into {hubdb.describe(p)} failed (exit {code}), the database is as it was "
                          f"(one transaction): {out.strip()[-600:]}")


def mode_mismatch(p: Loaded, path: Path, engine: str) -> str | None:
    """Why a backup of one database engine cannot be restored into this deployment's, and what to do; None if it can."""
    want = ENGINE if p.hub_db_postgres else "sqlite"
    if engine == want:
        return None
    if engine == "sqlite":
        return (f"{path}: refused, nothing was changed: the backup holds a SQLite database (jupyterhub.sqlite); "
                f"deployment {p.deployment} keeps its database in PostgreSQL (storage.hub.mode postgres). Restore it "
                "with the parameters it was taken with (storage.hub.mode volume or shared-path; the backup's "
                "parameters.yaml), then move that deployment to PostgreSQL with `hubops ops migrate-db`")
    return (f"{path}: refused, nothing was changed: the backup holds a PostgreSQL archive (jupyterhub.pgdump); "
            f"deployment {p.deployment} keeps its database in SQLite (storage.hub.mode {p.storage.hub.mode}). Set "
            "storage.hub.mode postgres (as in the backup's parameters.yaml), deploy, then restore it")
