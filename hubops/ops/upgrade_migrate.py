"""An upgrade across a database schema migration, with a way back that works after the migration.

Swarm's own rollback puts back the previous image, which cannot read a migrated database. So when
the new image's JupyterHub has a newer schema than the database (schema.plan == "migrate"):

1. a backup of the database (always: it is the way back), and what the hub holds now (users,
   admins, groups, running servers and whether their routes answer; users' API tokens in the database);
2. the hub stopped (scaled to 0; users' servers keep running);
3. `jupyterhub upgrade-db` of the NEW image against the database, the revision read back;
4. the service switched to the new image and started; hubops watches it (a task that fails, or no
   healthy answer within hub.start_timeout, is a failure) for Swarm's monitor period;
5. on success, what the hub held is checked again. On a failed migration or a failed new hub: the
   hub stopped again, the database put back from the backup of step 1 (sha256 checked), the service
   back on the previous image, and the same checks: the verdict is "rolled back" (exit status 3).
"""
from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from hubops.core import progress, secrets
from hubops.core.engine import Clients
from hubops.core.errors import DockerOpError, HubopsError, VerifyError
from hubops.core.params import Loaded
from hubops.core.result import Result
from hubops.hub import running, schema
from hubops.ops import backup as _backup, restore as _restore
from hubops.stages import deploy

log = logging.getLogger("hubops")
MONITOR_S = 15  # as the service's update_config.monitor: a hub that dies within it has failed


def _hub_version(p: Loaded) -> str:
    return running.HubAPI(p).request("GET", "/hub/api/").json().get("version", "?")


def snapshot(p: Loaded) -> dict[str, Any]:
    """What the running hub holds, through its API: users, admins, groups, running servers."""
    users = _restore.hub_users(p)
    return {
        "users": sorted(users),
        "admins": sorted(u for u, m in users.items() if m.get("admin")),
        "groups": {u: sorted(m.get("groups") or []) for u, m in users.items() if m.get("groups")},
        "running": {f"{u}/{s}": srv.get("url") for u, m in users.items()
                    for s, srv in (m.get("servers") or {}).items() if srv.get("ready")},
    }


def _routes_answer(p: Loaded, servers: dict[str, str], limit: int = 20) -> dict[str, str]:
    """For each running server (up to `limit`), whether the proxy routes to it: its /api/status answers."""
    api = running.HubAPI(p)
    out = {}
    for key, url in sorted(servers.items())[:limit]:
        try:
            r = api.request("GET", f"{url.rstrip('/')}/api/status", ok=(200, 302, 403, 404, 503), timeout=15)
            out[key] = "answers" if r.status_code == 200 else f"HTTP {r.status_code}"
        except VerifyError as e:
            out[key] = f"no answer ({e})"
    return out


def check_same(p: Loaded, before: dict[str, Any], before_tokens: list, after_tokens: list, r: Result,
               *, where: str) -> None:
    """Raise VerifyError unless the hub holds what it held before; record the checks in `r`."""
    now = snapshot(p)
    routes = _routes_answer(p, now["running"])
    problems = []
    missing = [u for u in before["users"] if u not in now["users"]]
    if missing:
        problems.append(f"users missing: {', '.join(missing)}")
    lost_admin = [a for a in before["admins"] if a not in now["admins"]]
    if lost_admin:
        problems.append(f"no longer admin: {', '.join(lost_admin)}")
    lost_groups = [f"{u} in {g}" for u, gs in before["groups"].items() for g in gs if g not in now["groups"].get(u, [])]
    if lost_groups:
        problems.append(f"group memberships missing: {', '.join(lost_groups)}")
    stopped = [k for k in before["running"] if k not in now["running"]]
    if stopped:
        problems.append(f"servers no longer running: {', '.join(stopped)}")
    unrouted = [f"{k} ({v})" for k, v in routes.items() if v != "answers" and k in before["running"]]
    if unrouted:
        problems.append(f"servers not reached through the proxy: {', '.join(unrouted)}")
    lost_tokens = schema.tokens_lost(before_tokens, after_tokens,
                                     datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S"))
    if lost_tokens:
        problems.append(f"users' API tokens missing: {', '.join(lost_tokens)}")
    if problems:
        raise VerifyError(f"{where}: the hub does not hold what it held before: " + "; ".join(problems))
    r.check("users", f"{len(before['users'])} of {len(before['users'])} there ({where}), admins: "
            f"{', '.join(before['admins']) or 'none'}")
    groups = sorted({g for gs in before["groups"].values() for g in gs})
    r.check("groups", f"{len(groups)} groups, every membership kept" + (f": {', '.join(groups)}" if groups else ""))
    r.check("users' API tokens", f"{len(before_tokens)} in the database before, all there after")
    r.check("running servers", f"{len(before['running'])} still running, each reached through the proxy"
            + (f": {', '.join(sorted(before['running']))}" if before["running"] else ""))
    r.facts[f"after_{where.split()[0]}"] = {"users": len(now["users"]), "running": sorted(now["running"]),
                                            "routes": routes, "user_tokens": len(after_tokens)}


def _watch(p: Loaded, clients: Clients, image: str, *, since: str, timeout: float) -> tuple[bool, str, float]:
    """Watch the hub service's new task of `image` (created after `since`): (healthy, why not, seconds).
    Healthy: running, /hub/health answers, and no task of the image failed through the monitor period."""
    session = running.hub_session(p)
    t0 = time.monotonic()
    healthy_since = None
    last = "no task yet"
    while time.monotonic() - t0 < timeout:
        svc = running.find_service(clients.manager, p)
        tasks = [t for t in (svc.tasks() if svc else [])
                 if t["Spec"]["ContainerSpec"]["Image"].split("@")[0] == image and t.get("CreatedAt", "") > since]
        failed = []
        for t in tasks:
            st = t["Status"]
            code = (st.get("ContainerStatus") or {}).get("ExitCode")
            if st.get("State") in ("failed", "rejected") or (code not in (None, 0)):
                failed.append(f"task {t['ID'][:12]} {st.get('State')}" + (f" (exit {code})" if code else "")
                              + (f": {st.get('Err')}" if st.get("Err") else ""))
        if failed:
            return False, "; ".join(failed), time.monotonic() - t0
        up_tasks = [t for t in tasks if t["Status"]["State"] == "running"]
        ok = False
        if up_tasks:
            for url in p.hub_urls:
                try:
                    if session.get(f"{url}/hub/health", timeout=5).status_code == 200:
                        ok = True
                        break
                    last = "health not 200"
                except Exception as e:  # noqa: BLE001 - not answering yet
                    last = e.__class__.__name__
        else:
            last = tasks[0]["Status"]["State"] if tasks else "no task yet"
        if ok:
            healthy_since = healthy_since or time.monotonic()
            if time.monotonic() - healthy_since >= MONITOR_S:
                return True, "", time.monotonic() - t0
        else:
            healthy_since = None
        time.sleep(1)
    return False, f"no healthy hub within {timeout:.0f} s (last: {last})", time.monotonic() - t0


def _put_back(p: Loaded, clients: Clients, svc, *, backup_dir: Path, image: str, r: Result) -> None:
    """The database from `backup_dir` back in place (hub stopped), the service on `image`, serving."""
    import json

    m = json.loads((backup_dir / _backup.MANIFEST).read_text())
    _restore.scale(svc, 0)
    _restore.wait_hub_stopped(p, clients)
    if p.hub_db_postgres:  # pg_restore of the archive, in one transaction
        from hubops.ops import backup_pg

        backup_pg.restore_into(p, clients, backup_dir / backup_pg.PGDUMP)
        db_file = backup_pg.PGDUMP
    else:
        _restore.place_db(p, clients, image, backup_dir / _backup.DB, m["files"][_backup.DB]["sha256"])
        db_file = _backup.DB
    r.change("update", _restore.data_where(p),
             f"database put back from {backup_dir.name} (schema {m['database']['alembic_revision']}, "
             f"sha256 {m['files'][db_file]['sha256'][:16]})")
    back = deploy.ensure_hub(p, clients, hub_image=image, wait=False)
    r.items += [i for i in back.items if i.target == f"service {p.hub_service}" and i.changed]
    _restore.scale(svc, 1)  # ensure_hub leaves the replica count alone when the spec is otherwise unchanged
    running.wait_until_serving(p, clients, changed=False)


def upgrade_with_migration(p: Loaded, clients: Clients, svc, *, current: str, target: str, sch: schema.Schema,
                           up: Result, backup_first: bool, dry_run: bool) -> list[Result]:
    """Upgrade from `current` to `target` whose JupyterHub migrates the database (see the module's doc)."""
    results: list[Result] = []
    if not backup_first:
        up.facts["note_backup"] = "backup_first=false ignored: a migration's way back is the backup taken before it"
    results.append(_backup.backup(p, clients, reason=f"before migrating the database ({sch.db} -> {sch.head}) "
                                  f"to upgrade {current} to {target}", dry_run=dry_run))
    try:
        up.facts["from_version"] = _hub_version(p)
    except HubopsError as e:
        up.facts["from_version"] = f"unknown (hub not answering: {e.__class__.__name__})"
    results.append(up)
    steps = [("update", f"service {p.hub_service}", "scaled to 0: the hub stops (users' servers keep running)"),
             ("update", _restore.data_where(p), f"`jupyterhub upgrade-db` of {target} (JupyterHub {sch.jupyterhub}): "
              f"schema {sch.db} -> {sch.head}"),
             ("update", f"service {p.hub_service}", f"image {current} -> {target}, started; if the migration or "
              "the new hub fails, the database is put back from the backup and the previous image starts again")]
    if dry_run:
        for action, target_, detail in steps:
            up.change(action, target_, detail)
        return results
    bdir = Path(results[0].facts["path"])
    before = snapshot(p)
    before_tokens = sch.user_tokens  # read with the hub running, just now
    up.facts["before"] = {"users": len(before["users"]), "admins": before["admins"],
                          "running": sorted(before["running"]), "user_tokens": len(before_tokens)}
    t0 = time.monotonic()
    with progress.step(f"stop {p.hub_service} for the migration"):
        _restore.scale(svc, 0)
        _restore.wait_hub_stopped(p, clients)
    up.change(*steps[0])
    why, unexpected = "", None
    try:
        with progress.step(f"jupyterhub upgrade-db ({sch.db} -> {sch.head})"):
            mig = schema.migrate(p, clients, target, expect_from=sch.db or "", expect_head=sch.head)
        up.facts["migration"] = {k: v for k, v in mig.items() if k != "log"}
        up.change("update", _restore.data_where(p), f"migrated by `jupyterhub upgrade-db` of {target}: schema "
                  f"{mig['from']} -> {mig['to']} in {mig['seconds']} s")
        since = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
        applied = deploy.ensure_hub(p, clients, hub_image=target, wait=False)
        up.items += [i for i in applied.items if i.target == f"service {p.hub_service}"]
        with progress.step(f"watch the new hub ({target})", total=p.hub.start_timeout, unit="s"):
            ok, why, waited = _watch(p, clients, target, since=since, timeout=p.hub.start_timeout)
        up.facts["watched_s"] = round(waited, 1)
        if ok:
            version = _hub_version(p)
            up.facts.update({"verdict": "upgraded", "serving_image": target, "serving_version": version,
                             "serving_schema": sch.head, "hub_down_s": round(time.monotonic() - t0, 1)})
            after_tokens = schema.read(p, clients, target).user_tokens
            # What the hub held must all be there, else the upgrade is undone like a failed one.
            check_same(p, before, before_tokens, after_tokens, up, where="upgraded hub")
            up.check(f"{p.hub_url}/hub/health", f"JupyterHub {version} serves on {target}, database schema {sch.head}")
            secrets.prune_unused(clients.manager, p, up, keep=set())
            return results
    except schema.MigrationFailed as e:
        why = f"the migration failed: {e}"
    except VerifyError as e:
        why = f"the new hub serves but {e}"
    except Exception as e:  # noqa: BLE001 - the hub is stopped: whatever went wrong, the way back comes first
        why, unexpected = f"{e.__class__.__name__}: {e}", e
    up.facts.pop("verdict", None)
    # The way back: the database of the backup (the old schema), then the old image.
    log.warning("upgrade of %s to %s failed (%s): putting back the database and %s", p.hub_service, target, why, current)
    up.facts["failure"] = why
    svc = running.find_service(clients.manager, p)
    with progress.step(f"put back the database from {bdir.name} and {current}"):
        _put_back(p, clients, svc, backup_dir=bdir, image=current, r=up)
    now = schema.read(p, clients, current)
    version = _hub_version(p)
    up.facts.update({"verdict": "rolled back", "serving_image": current, "serving_version": version,
                     "serving_schema": now.db, "hub_down_s": round(time.monotonic() - t0, 1)})
    if now.db != sch.db:
        raise DockerOpError(f"the database was put back from {bdir} but has schema {now.db}, not {sch.db}")
    up.change("rollback", f"service {p.hub_service}",
              f"rolled back: {target} failed ({why}); the database was put back from {bdir.name} (schema {now.db}) "
              f"and {current} serves again (JupyterHub {version})")
    check_same(p, before, before_tokens, now.user_tokens, up, where="rolled-back hub")
    if unexpected is not None:
        raise DockerOpError(f"the upgrade of {p.hub_service} to {target} failed unexpectedly ({why}); the database was "
                            f"put back from {bdir} and {current} serves again") from unexpected
    return results
