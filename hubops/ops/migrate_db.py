"""ops/migrate-db: move a deployment's hub database from SQLite to PostgreSQL.

Run with the deployment's parameter file already saying `storage.hub.mode: postgres` (hubops's own
server, or an existing one); the hub still runs on SQLite (its volume or storage.hub.path). In order:

1. checks, before any change: the parameters say postgres; the running hub uses SQLite (read from its
   service); the PostgreSQL database holds no hub tables yet (else refused: it is not empty);
2. the hub image for these parameters (with psycopg2) built and on the managers; the PostgreSQL ready
   (70-storage's work: hubops's own service, or an existing server's login checked);
3. a backup of the SQLite database (ops/backup, while the hub runs): the way back;
4. the hub stops (scaled to 0; users' servers keep running);
5. every table copied, in one PostgreSQL transaction, by the hub image's own JupyterHub: the schema
   from JupyterHub's SQLAlchemy metadata, the rows table by table in dependency order, the alembic
   revision, then each id sequence moved past the largest id;
6. the hub service switched to PostgreSQL (80-deploy's spec for these parameters: db_url, the password
   secret, any manager) and started; once it serves, users, admins, server records and users' API
   tokens are checked against the SQLite database, in PostgreSQL and through the hub's API.

If a step from 4 on fails, the hub is started again on SQLite as it was (the PostgreSQL transaction
left nothing behind). The SQLite file stays where it was until the operator removes it.
"""
from __future__ import annotations

import json
import logging
import time
from typing import Any

import docker.types

from hubops.core.engine import Clients, docker_op
from hubops.core.errors import HubopsError
from hubops.core.params import HubStorage, Loaded, Params, Storage
from hubops.core.result import Result
from hubops.hub import config as hubconfig, hubdb, running, schema
from hubops.ops import backup as _backup, restore as _restore
from hubops.stages import deploy, images, postgres

log = logging.getLogger("hubops")
SQLITE = f"{hubconfig.DATA_DIR}/jupyterhub.sqlite"


class MigrationRefused(HubopsError):
    """migrate-db cannot start: nothing was changed."""


# Runs in the hub's image, on the overlay network, with the SQLite data mounted read-only: the copy.
_COPY_SCRIPT = """
import json, sys
import sqlalchemy as sa
from jupyterhub import orm
try:  # jupyterhub-nativeauthenticator's users_info is a table of JupyterHub's metadata once imported
    import nativeauthenticator.orm  # noqa: F401
except ImportError:
    pass
c = json.load(open("/tmp/hubops-db/conn.json"))
args = {"password": open("/tmp/hubops-db/pw").read().strip(), "sslmode": c["sslmode"], "connect_timeout": 10}
if c["sslmode"] != "disable":
    args["sslrootcert"] = "/tmp/hubops-db/ca.pem"
host = "[%s]" % c["host"] if ":" in c["host"] else c["host"]
dst = sa.create_engine("postgresql+psycopg2://%s@%s:%s/%s" % (c["user"], host, c["port"], c["db"]), connect_args=args)
src = sa.create_engine("sqlite:///file:" + sys.argv[1] + "?mode=ro&uri=true")
meta = orm.Base.metadata
out = {"tables": {}, "sequences": {}}
with src.connect() as s:
    have = set(sa.inspect(s).get_table_names())
    unknown = sorted(have - set(meta.tables) - {"alembic_version"})
    if unknown:
        sys.exit("the SQLite database has tables this JupyterHub does not know: %s" % ", ".join(unknown))
    revision = s.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
    out["revision"] = revision
    with dst.begin() as d:
        existing = set(sa.inspect(d).get_table_names())
        if existing & (set(meta.tables) | {"alembic_version"}):
            sys.exit("the PostgreSQL database already has hub tables: %s" % ", ".join(sorted(existing)))
        meta.create_all(d)
        for t in meta.sorted_tables:
            if t.name not in have:
                out["tables"][t.name] = 0
                continue
            rows = [dict(r._mapping) for r in s.execute(t.select())]
            if rows:
                d.execute(t.insert(), rows)
            out["tables"][t.name] = len(rows)
        d.execute(sa.text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL, "
                          "CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num))"))
        d.execute(sa.text("INSERT INTO alembic_version (version_num) VALUES (:v)"), {"v": revision})
        for t in meta.sorted_tables:
            for col in t.primary_key.columns:
                if isinstance(col.type, sa.Integer):
                    seq = d.execute(sa.text("SELECT pg_get_serial_sequence(:t, :c)"), {"t": t.name, "c": col.name}).scalar()
                    if seq:
                        top = d.execute(sa.text('SELECT max("%s") FROM "%s"' % (col.name, t.name))).scalar()
                        d.execute(sa.text("SELECT setval(:s, :v, :called)"), {"s": seq, "v": top or 1, "called": top is not None})
                        out["sequences"][seq] = top
        for t in meta.sorted_tables:  # read back inside the transaction: every row arrived
            n = d.execute(sa.select(sa.func.count()).select_from(t)).scalar()
            if n != out["tables"][t.name]:
                sys.exit("table %s: %s rows copied, %s in PostgreSQL" % (t.name, out["tables"][t.name], n))
print(json.dumps(out))
"""


def sqlite_params(p: Loaded, data: docker.types.Mount | dict) -> Loaded:
    """The same parameters with the hub's database where the running hub keeps it (SQLite): its
    volume, or a shared path; for the backup and the way back."""
    kind = data.get("Type")
    hub = (HubStorage(mode="shared-path", path=data["Source"]) if kind == "bind" else HubStorage(mode="volume"))
    params = p.params.model_copy(update={"storage": Storage(users=p.storage.users, hub=hub)})
    if kind != "bind" and data.get("Source") != p.hub_volume:
        params = params.model_copy(update={"hub": p.hub.model_copy(update={"data_volume": data["Source"]})})
    old = Loaded(Params.model_validate(params.model_dump()), p.source, p.digest, p.users)
    old.groups = p.groups
    return old


def running_sqlite(p: Loaded, clients: Clients) -> tuple[Any, dict | None, str]:
    """The hub service, its data mount when it runs on SQLite (None when it already uses PostgreSQL),
    and the node its task runs on."""
    import base64

    svc = running.hub_service(p, clients)
    cs = svc.attrs["Spec"]["TaskTemplate"]["ContainerSpec"]
    cfg = ""
    for ref in cs.get("Configs") or []:
        if ref["File"]["Name"] == hubconfig.CONFIG_PATH:
            with docker_op(f"read config {ref['ConfigName']}"):
                cfg = base64.b64decode(clients.manager.configs.get(ref["ConfigID"]).attrs["Spec"]["Data"]).decode(
                    errors="replace")
    mount = next((m for m in cs.get("Mounts") or [] if m.get("Target") == hubconfig.DATA_DIR), None)
    on_sqlite = "sqlite:///" in cfg and mount is not None
    node = running.hub_node(p, clients)  # p says postgres: the node the hub's task runs on, wherever it is
    return svc, (mount if on_sqlite else None), node


def migrate_db(p: Loaded, clients: Clients, *, dry_run: bool = False) -> list[Result]:
    """Move the hub's database from SQLite to PostgreSQL (see the module's docstring)."""
    check = Result("checks", dry_run=dry_run)
    if not p.hub_db_postgres:
        raise MigrationRefused(
            f"{p.source}: storage.hub.mode is {p.storage.hub.mode}: refused, nothing was changed. Set storage.hub.mode: "
            "postgres (with storage.hub.postgres: {} for a PostgreSQL hubops runs, or url, password and ca for an "
            "existing server) in the parameter file, then run migrate-db again")
    svc, mount, node = running_sqlite(p, clients)
    if mount is None:
        check.keep(f"service {p.hub_service}", "the hub already uses PostgreSQL: nothing to migrate")
        return [check]
    where = (f"{mount['Source']} (a shared path)" if mount.get("Type") == "bind"
             else f"volume {mount['Source']} on {node}")
    check.check("source", f"the running hub keeps its database in SQLite, {where}")
    old = sqlite_params(p, mount)
    hub_image = running.service_image(svc)
    sch = schema.read(old, clients, hub_image)
    check.check("schema", f"SQLite database at {sch.db} (JupyterHub {sch.jupyterhub}), "
                f"{len(sch.user_tokens)} users' API tokens")
    results = [check]
    prep = Result("PostgreSQL and hub image", dry_run=dry_run)
    results.append(prep)
    new_image = hub_image
    if not dry_run:
        hub_built = images.ensure_built(p, clients, "hub")
        prep.items.extend(hub_built.items)
        prep.items.extend(images.ensure_delivered(p, clients).items)
        # The copy and the new hub use the image these parameters build (it has psycopg2); its JupyterHub
        # must expect the SQLite database's schema (a migration is ops/upgrade's, before or after this).
        new_image = images.desired_refs(p, images.builder(p, clients))["hub"]
        if new_image != hub_image:
            fit = schema.read(old, clients, new_image)
            if fit.plan != "same":
                raise MigrationRefused(
                    f"the hub image for these parameters, {new_image} (JupyterHub {fit.jupyterhub}, schema {fit.head}), "
                    f"does not have the SQLite database's schema {sch.db}: refused, nothing of the hub was changed. "
                    f"Upgrade first (`hubops ops upgrade -p {p.source}` with the SQLite parameters), then migrate-db")
            check.check("hub image", f"{new_image}: JupyterHub {fit.jupyterhub}, the same schema")
    db = postgres.ensure_db(p, clients, dry_run=dry_run)
    results.append(db)
    if not dry_run:
        target = hubdb.read_hub_db(p, clients, new_image)
        hub_tables = [t for t in target.get("tables", []) if t in ("users", "alembic_version", "spawners", "api_tokens")]
        if hub_tables:
            raise MigrationRefused(
                f"the PostgreSQL database ({hubdb.describe(p)}) already has hub tables ({', '.join(hub_tables)}): "
                "refused, the hub still runs on SQLite and nothing of it was changed. Give migrate-db an empty "
                "database (drop those tables, or point storage.hub.postgres at another database)")
        check.check("target", f"{hubdb.describe(p)}: no hub tables yet")
    r = Result("migrate-db", dry_run=dry_run)
    results.append(r)
    r.change("create", "backup", f"of the SQLite database ({where}), while the hub runs")
    r.change("update", f"service {p.hub_service}", "scaled to 0: the hub stops (users' servers keep running)")
    r.change("create", "hub tables", f"every table copied from SQLite into {hubdb.describe(p)}, one transaction")
    r.change("update", f"service {p.hub_service}", f"db_url -> {hubdb.url(p)}; may run on any manager; started")
    if dry_run:
        return results
    taken = _backup.backup(old, clients, reason="before migrate-db (SQLite -> PostgreSQL)")
    results.insert(-1, taken)
    manifest = json.loads((_backup.latest(old) / _backup.MANIFEST).read_text())  # type: ignore[operator]
    info = manifest["database"]
    t0 = time.monotonic()
    _restore.scale(svc, 0)
    switched = False
    try:
        _restore.wait_hub_stopped(old, clients)
        copied = _copy(p, clients, new_image, mount, node)
        r.facts["rows"] = copied["tables"]
        r.facts["schema"] = copied["revision"]
        switched = True
        deploy.ensure_hub(p, clients, wait=False, hub_image=new_image)
        _restore.scale(svc, 1)
        r.facts["answered_after_s"] = running.wait_until_serving(p, clients, changed=True)
    except BaseException:
        log.error("migrate-db failed; the hub goes back to SQLite (%s)", where)
        if switched:
            deploy.ensure_hub(old, clients, wait=False, hub_image=hub_image)
        _restore.scale(svc, 1)
        raise
    r.facts["hub_down_s"] = round(time.monotonic() - t0, 1)
    _verify(p, clients, new_image, info, sch, r)
    r.facts["sqlite_kept"] = where
    r.keep("SQLite database", f"kept in {where} ({_backup.DB}; a backup in {taken.facts['path']}); the hub no longer "
           "uses it: remove it once you are satisfied")
    return results


def _copy(p: Loaded, clients: Clients, hub_image: str, mount: dict, node: str) -> dict[str, Any]:
    src = docker.types.Mount(hubconfig.DATA_DIR, mount["Source"], type=mount.get("Type", "volume"), read_only=True)
    code, out, _ = hubdb.run_task(p, clients, hub_image, ["python3", "-c", _COPY_SCRIPT, SQLITE],
                                  what="copy the hub's tables from SQLite to PostgreSQL", role="migrate-db",
                                  mounts=[src], node=node, timeout=1800)
    if code != 0:
        raise HubopsError(f"copying the hub's tables into {hubdb.describe(p)} failed (exit {code}); the PostgreSQL "
                          f"transaction left nothing behind: {out.strip()[-800:]}")
    return json.loads(out.strip().splitlines()[-1])


def _verify(p: Loaded, clients: Clients, hub_image: str, info: dict, sch: schema.Schema, r: Result) -> None:
    """Users, admins, server records and users' API tokens of the SQLite database, in PostgreSQL and
    through the hub's API."""
    now = hubdb.read_hub_db(p, clients, hub_image)
    names = {u["name"] for u in now["users"]}
    servers = {(s["user"], s["server"]) for s in now["servers"]}
    missing = [u["name"] for u in info["users"] if u["name"] not in names]
    not_admin = [a for a in info["admins"] if a not in now["admins"]]
    lost = [f"{s['user']}/{s['server']}" for s in info["servers"] if (s["user"], s["server"]) not in servers]
    tokens = schema.tokens_lost(sch.user_tokens, now["user_tokens"], time.strftime("%Y-%m-%dT%H:%M:%S"))
    if missing or not_admin or lost or tokens or now.get("db") != info.get("alembic_revision"):
        raise HubopsError("the hub runs on PostgreSQL but it does not hold what SQLite did: " + "; ".join(
            x for x in (f"users missing: {', '.join(missing)}" if missing else "",
                        f"no longer admin: {', '.join(not_admin)}" if not_admin else "",
                        f"server records missing: {', '.join(lost)}" if lost else "",
                        f"API tokens missing: {', '.join(tokens)}" if tokens else "",
                        f"schema {now.get('db')} != {info.get('alembic_revision')}"
                        if now.get("db") != info.get("alembic_revision") else "") if x)
            + "; the SQLite database is untouched: `hubops ops restore` of the backup with the SQLite parameters "
              "puts the hub back on it")
    _restore.hub_users(p)  # the hub's API answers with the users from PostgreSQL
    r.check("users", f"{len(info['users'])} of {len(info['users'])} in PostgreSQL and in the hub's API")
    r.check("admins", f"admin still: {', '.join(info['admins']) or 'none'}")
    r.check("server records", f"{len(info['servers'])} kept" + (
        ": " + ", ".join(f"{s['user']}/{s['server'] or '(default)'}" for s in info["servers"]) if info["servers"] else ""))
    r.check("API tokens", f"{len(sch.user_tokens)} users' tokens kept")
    r.check("schema", f"{now.get('db')} in PostgreSQL, as in SQLite")
