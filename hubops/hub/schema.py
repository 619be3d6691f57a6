"""The hub database's schema (alembic revision) against a hub image's JupyterHub, and the migration.

JupyterHub keeps its database schema under alembic: each release with a schema change adds a
revision, and a hub refuses to start on a database whose revision is not its own head
("Found database schema version X != Y ... run `jupyterhub upgrade-db`"). `jupyterhub upgrade-db`
migrates forward only: once migrated, the older JupyterHub can no longer read the database, so the
way back after a migration is the backup taken before it.

What this module does, each in a throwaway container of a hub image with the hub's data mounted
where the hub keeps it (its manager's volume, or storage.hub.path), labelled for the deployment:

- `read`: the database's revision and what the image's JupyterHub knows (its head, every revision
  it can migrate from), plus users' API tokens and groups for the checks after an upgrade;
- `plan`: same schema, a migration forward, or a downgrade (refused);
- `migrate`: `jupyterhub upgrade-db` of the image against the database (the hub stopped).
"""
from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import docker.errors
import docker.types

from hubops.core import labels as L
from hubops.core.engine import Clients, docker_op
from hubops.core.errors import DockerOpError, HubopsError
from hubops.core.params import Loaded
from hubops.hub import config as hubconfig

log = logging.getLogger("hubops")

DB_PATH = f"{hubconfig.DATA_DIR}/jupyterhub.sqlite"
DB_URL = f"sqlite:///{DB_PATH}"


class SchemaError(HubopsError):
    """The hub's database and a hub image do not fit (a downgrade across a migration), or a
    migration failed."""


class DowngradeRefused(SchemaError):
    """An image whose JupyterHub is older than the database's schema: refused before any change."""


class MigrationFailed(SchemaError):
    """`jupyterhub upgrade-db` failed, or left the database at another revision than the image's head."""


# Runs in a throwaway container of a hub image (its own python3 and JupyterHub), the hub's data at
# DATA_DIR: what the image knows of schemas and what the database holds. Read-only on the database.
_READ_SCRIPT = """
import importlib.util, json, os, sqlite3, sys
import jupyterhub
from alembic.config import Config
from alembic.script import ScriptDirectory
cfg = Config()
cfg.set_main_option("script_location", os.path.join(os.path.dirname(jupyterhub.__file__), "alembic"))
sd = ScriptDirectory.from_config(cfg)
out = {"jupyterhub": jupyterhub.__version__, "head": sd.get_current_head(),
       "revisions": [r.revision for r in sd.walk_revisions()], "db": None, "exists": os.path.exists(sys.argv[1]),
       "spawner": importlib.util.find_spec("hubops") is not None and importlib.util.find_spec("hubops.inhub") is not None}
if out["exists"]:
    con = sqlite3.connect("file:" + sys.argv[1] + "?mode=ro", uri=True, timeout=30)
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if "alembic_version" in tables:
        row = con.execute("SELECT version_num FROM alembic_version").fetchone()
        out["db"] = row[0] if row else None
    if {"api_tokens", "users"} <= tables:
        out["user_tokens"] = [[i, u, e] for i, u, e in con.execute(
            "SELECT t.id, u.name, t.expires_at FROM api_tokens t JOIN users u ON t.user_id = u.id ORDER BY t.id")]
    if {"groups", "user_group_map", "users"} <= tables:
        groups = {g: [] for (g,) in con.execute("SELECT name FROM groups")}
        for g, u in con.execute("SELECT g.name, u.name FROM user_group_map m JOIN groups g ON m.group_id = g.id "
                                "JOIN users u ON m.user_id = u.id ORDER BY u.name"):
            groups.setdefault(g, []).append(u)
        out["groups"] = groups
    con.close()
print(json.dumps(out))
"""


@dataclass
class Schema:
    """What an image's JupyterHub knows about schemas, and the database's revision (None: no database yet)."""

    image: str
    jupyterhub: str
    head: str
    revisions: list[str]
    db: Optional[str]
    exists: bool = False
    user_tokens: list[list[Any]] = field(default_factory=list)
    groups: dict[str, list[str]] = field(default_factory=dict)
    spawner: bool = True  # the image holds hubops's spawner (hubops/inhub), which the hub's config imports

    @property
    def plan(self) -> str:
        return plan(self.db, self.head, self.revisions)


def plan(db: Optional[str], head: str, revisions: list[str]) -> str:
    """What moving a database at revision `db` onto a JupyterHub whose head is `head` (and which knows
    `revisions`) takes (pure): "fresh" (no database yet), "same", "migrate" (forward, with
    `jupyterhub upgrade-db`), or "downgrade" (the database is newer than this JupyterHub: refused)."""
    if not db:
        return "fresh"
    if db == head:
        return "same"
    if db in revisions:
        return "migrate"
    return "downgrade"


def data_node(p: Loaded, clients: Clients) -> str:
    """Where the hub's data is reached: its manager (volume), or the first manager whose engine
    answers when it is on storage every manager mounts (storage.hub shared-path)."""
    return clients.manager_name if p.hub_can_move else p.hub_host.name


def data_mount(p: Loaded) -> docker.types.Mount:
    if p.storage.hub.mode == "shared-path":
        return docker.types.Mount(hubconfig.DATA_DIR, str(p.storage.hub.path), type="bind")
    return docker.types.Mount(hubconfig.DATA_DIR, p.hub_volume, type="volume")


def _volume_missing(p: Loaded, clients: Clients, node: str) -> bool:
    """Whether the hub's volume does not exist yet (a container mounting it would make an unlabelled one)."""
    if p.hub_can_move:
        return False
    with docker_op(f"inspect volume {p.hub_volume}", node):
        try:
            clients[node].volumes.get(p.hub_volume)
            return False
        except docker.errors.NotFound:
            return True


def _run(p: Loaded, clients: Clients, image: str, cmd: list[str], *, what: str, role: str,
         timeout: float = 600) -> tuple[int, str]:
    """Run `cmd` in a throwaway container of `image` with the hub's data mounted; (exit code, output)."""
    node = data_node(p, clients)
    hc = clients[node]
    with docker_op(what, node):
        ctr = hc.containers.create(image, cmd, entrypoint=[], user="0:0", network_mode="none",
                                   mounts=[data_mount(p)], working_dir="/tmp",
                                   labels=L.labels(p.deployment, "upgrade", role=role))
        try:
            ctr.start()
            status = ctr.wait(timeout=timeout)
            out = ctr.logs(stdout=True, stderr=True).decode(errors="replace")
        finally:
            ctr.remove(force=True)
    return status.get("StatusCode", -1), out


def read(p: Loaded, clients: Clients, image: str) -> Schema:
    """The database's schema revision and what `image`'s JupyterHub knows (a throwaway container of
    the image on the data's node; nothing is written). Works whether the hub runs or not."""
    node = data_node(p, clients)
    if p.hub_db_postgres:  # the image's schemas from the image, the database's revision from PostgreSQL
        from hubops.hub import hubdb

        code, out = _run_head_only(p, clients, image)
        if code == 0:
            info = json.loads(out.strip().splitlines()[-1])
            db = hubdb.read_hub_db(p, clients, image)
            return Schema(image=image, jupyterhub=info["jupyterhub"], head=info["head"], revisions=info["revisions"],
                          db=db.get("db"), exists=bool(db.get("exists")), user_tokens=db.get("user_tokens") or [],
                          groups=db.get("groups") or {})
    elif _volume_missing(p, clients, node):
        code, out = _run_head_only(p, clients, image)
    else:
        code, out = _run(p, clients, image, ["python3", "-c", _READ_SCRIPT, DB_PATH],
                         what=f"read the database schema with {image}", role="schema-check")
    if code != 0:
        raise DockerOpError(f"reading the database schema with image {image} on {node} failed (exit {code}): "
                            f"{out.strip()[-600:]}")
    info = json.loads(out.strip().splitlines()[-1])
    return Schema(image=image, jupyterhub=info["jupyterhub"], head=info["head"], revisions=info["revisions"],
                  db=info.get("db"), exists=bool(info.get("exists")), user_tokens=info.get("user_tokens") or [],
                  groups=info.get("groups") or {}, spawner=bool(info.get("spawner", True)))


def _run_head_only(p: Loaded, clients: Clients, image: str) -> tuple[int, str]:
    node = data_node(p, clients)
    with docker_op(f"read the schema revision of {image}", node):
        try:
            out = clients[node].containers.run(image, ["python3", "-c", _READ_SCRIPT, "/nonexistent"], entrypoint=[],
                                               remove=True, network_mode="none",
                                               labels=L.labels(p.deployment, "upgrade", role="schema-check"))
        except docker.errors.ContainerError as e:
            return e.exit_status, (e.stderr or b"").decode(errors="replace")
    return 0, out.decode()


def _backups_at(p: Loaded, revision: str) -> list[tuple[Any, dict]]:
    """Finished backups (folder, manifest) of the deployment whose database has schema `revision`,
    newest first (read here, not through ops/backup: a stage may refuse with this message too)."""
    root = p.path(p.backup.dir) if p.backup.dir else p.operator_path / "backups"
    found = []
    if root.is_dir():
        for folder in sorted((d for d in root.iterdir() if d.is_dir() and not d.name.endswith(".partial")), reverse=True):
            try:
                m = json.loads((folder / "manifest.json").read_text())
            except (OSError, ValueError):
                continue
            if (m.get("database") or {}).get("alembic_revision") == revision:
                found.append((folder, m))
    return found


def downgrade_message(p: Loaded, s: Schema, *, running_image: str = "") -> str:
    """What to say when `s.image` is older than the database: why, and the way back (the backup
    taken before the upgrade, which holds the database at this image's schema)."""
    found = _backups_at(p, s.head)
    way_back = (
        f"restore the backup taken before the upgrade, with this image: `hubops ops restore -p {p.source} "
        f"--set backup={found[0][0].name} --set image={s.image} --set confirm=true` (schema {s.head}, "
        f"JupyterHub {found[0][1].get('jupyterhub_version')}, taken {found[0][1].get('created')}; "
        "what changed on the hub since then is lost)" if found else
        f"restore a backup taken before the upgrade (`hubops ops backup` records each one's schema; none of "
        f"{p.deployment}'s has schema {s.head})")
    return (f"refused, nothing was changed: image {s.image} runs JupyterHub {s.jupyterhub}, whose newest "
            f"database schema is {s.head}; the database of deployment {p.deployment} has schema {s.db}, written by "
            f"a newer JupyterHub" + (f" ({running_image})" if running_image else "") + ". JupyterHub migrates forward "
            f"only: this image cannot read the database. To keep the newer hub, change nothing (or set "
            f"images.jupyterhub_version to its release). To go back to JupyterHub {s.jupyterhub}: {way_back}")


def migrate(p: Loaded, clients: Clients, image: str, *, expect_from: str, expect_head: str) -> dict[str, Any]:
    """`jupyterhub upgrade-db` of `image` against the hub's database (the hub must be stopped), then
    the revision read back. Raises MigrationFailed with the command's last output lines."""
    t0 = time.monotonic()
    if p.hub_db_postgres:
        from hubops.hub import hubdb

        code, out = hubdb.upgrade_db(p, clients, image)
    else:
        code, out = _run(p, clients, image, ["jupyterhub", "upgrade-db", f"--db={DB_URL}"],
                         what=f"migrate the database with {image}", role="migrate")
    secs = round(time.monotonic() - t0, 1)
    tail = "\n".join(out.strip().splitlines()[-12:])
    if code != 0:
        raise MigrationFailed(f"`jupyterhub upgrade-db` of {image} failed (exit {code}) after {secs} s:\n{tail}")
    after = read(p, clients, image)
    if after.db != expect_head:
        raise MigrationFailed(f"`jupyterhub upgrade-db` of {image} ended, but the database has schema {after.db}, not "
                              f"{expect_head} (from {expect_from}):\n{tail}")
    log.info("database of %s migrated from %s to %s in %s s", p.deployment, expect_from, after.db, secs)
    # JupyterHub copies a SQLite database before migrating it, beside it in the data directory: say where,
    # so that an operator knows what takes the space (hubops's own backup is the way back).
    copy = re.search(r"Backing up \S+ => (\S+)", out)
    return {"from": expect_from, "to": after.db, "seconds": secs, "log": tail,
            "jupyterhub_copy": copy.group(1) if copy else None}


def require_spawner(p: Loaded, s: Schema) -> None:
    """Refuse a hub image without hubops's spawner before anything changes (its hub cannot start)."""
    if not s.spawner:
        raise SchemaError(
            f"refused, nothing was changed: image {s.image} lacks hubops's spawner (the module hubops.inhub, which "
            "the generated jupyterhub_config.py imports), so its hub would not start; it was built by an older "
            "hubops or not FROM a hubops-hub image. Build the image FROM a hubops-hub image (or from images/hub "
            f"as 60-images does), or upgrade with `hubops ops upgrade -p {p.source} --set jupyterhub_version=X.Y.Z`")


def guard(p: Loaded, clients: Clients, image: str, *, current_image: str = "") -> Optional[Schema]:
    """Refuse, before any change, to run `image` on a database it cannot use: a newer schema (a
    downgrade across a migration) or an older one (a migration, which `ops upgrade` does with a
    backup and a way back). None when the image is not on the data's node (dry runs)."""
    node = data_node(p, clients)
    try:
        clients[node].images.get(image)
    except docker.errors.ImageNotFound:
        return None
    s = read(p, clients, image)
    require_spawner(p, s)
    if s.plan == "downgrade":
        raise DowngradeRefused(downgrade_message(p, s, running_image=current_image))
    if s.plan == "migrate":
        raise SchemaError(
            f"refused, nothing was changed: image {image} runs JupyterHub {s.jupyterhub}, whose database schema "
            f"is {s.head}; the database of deployment {p.deployment} has the older schema {s.db} and needs a "
            f"migration. Run `hubops ops upgrade -p {p.source}`: it backs up the database, migrates it with the new "
            "image while the hub is stopped, starts the new hub, and puts everything back if it fails")
    return s


def tokens_lost(before: list[list[Any]], after: list[list[Any]], now_iso: str) -> list[str]:
    """Users' API tokens (id, user, expires_at) that were there before and are gone after, leaving out
    those that expired in between (JupyterHub purges them at start) (pure)."""
    kept = {row[0] for row in after}
    return [f"{user} (token {tid})" for tid, user, expires in before
            if tid not in kept and not (expires and str(expires) <= now_iso)]

