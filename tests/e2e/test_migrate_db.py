"""ops/migrate-db on the local single-node swarm: a deployment on SQLite (storage.hub.mode volume) with
a user whose server runs and who has an API token moves to hubops's own PostgreSQL, as an operator
does it: change the parameter file to `storage.hub.mode: postgres`, run `hubops ops migrate-db`.

Afterwards: the hub serves from PostgreSQL (db_url, rows in PostgreSQL), the user's server still runs
and is reached through the proxy, the token still works, the admin is still admin, the SQLite file is
still in its volume; a second run changes nothing; restoring the SQLite backup it took into the
PostgreSQL deployment is refused with what to do. Teardown at the end.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import docker
import pytest
import requests

from hubops.core.engine import Clients
from hubops.core.params import load_params
from hubops.core.record import read_record
from hubops.hub import hubdb
from hubops.hub.running import HubAPI
from hubops.ops import teardown
from tests.helpers import admin_session, ensure_swarm, free_port, free_subnet, hubops_cli, make_params, run_name

pytestmark = [pytest.mark.engine, pytest.mark.e2e, pytest.mark.slow]
DEPLOYMENT = run_name("mig")


def labelled_objects() -> list[str]:
    client = docker.from_env()
    return [f"{kind} {o.name}" for kind, coll in (("service", client.services), ("secret", client.secrets),
                                                  ("config", client.configs), ("network", client.networks),
                                                  ("volume", client.volumes))
            for o in coll.list(filters={"label": f"hubops.deployment={DEPLOYMENT}"})]


@pytest.fixture(scope="module")
def mig(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mig")
    backups, outputs = tmp / "backups", tmp / "outputs"
    ensure_swarm()
    sqlite = make_params(tmp, DEPLOYMENT, port=free_port(), subnet=free_subnet(),
                         extra=f"backup: {{dir: {backups}}}\n")
    pg = tmp / f"{DEPLOYMENT}-pg.yaml"
    pg.write_text(sqlite.read_text() + "storage: {hub: {mode: postgres, postgres: {}}}\n")
    assert not labelled_objects(), f"deployment {DEPLOYMENT} exists already: {labelled_objects()}"
    res = hubops_cli("deploy", "-p", str(sqlite), outputs=outputs)
    state = {"tmp": tmp, "backups": backups, "outputs": outputs, "sqlite": sqlite, "pg": pg,
             "p_sqlite": load_params(sqlite), "p": load_params(pg), "deploy": res}
    yield state  # the deploy's outcome is the first test's first check: teardown below runs either way
    p = state["p"]
    down = hubops_cli("ops", "teardown", "-p", str(pg), "--set", "confirm=true", "--set", "remove_volumes=true",
                      "--set", "remove_user_data=true", outputs=outputs)
    left = labelled_objects()
    if down.returncode != 0 or left:
        teardown.teardown(p, Clients(p), remove_volumes=True, remove_user_data=True)
    assert down.returncode == 0, down.stderr[-3000:]
    assert not left, f"teardown left {left}"


def token_status(p, token: str) -> int:
    return requests.get(f"{p.hub_url}/hub/api/user", headers={"Authorization": f"token {token}"},
                        verify=str(p.operator_path / "ca.pem"), timeout=30).status_code


def test_migrate_sqlite_to_postgres_keeps_users_servers_and_tokens(mig):
    p_old, p = mig["p_sqlite"], mig["p"]
    assert mig["deploy"].returncode == 0, mig["deploy"].stdout[-2000:] + mig["deploy"].stderr[-4000:]
    api = HubAPI(p_old, timeout=30)
    api.request("POST", "/hub/api/users/alice/server", ok=(201, 202))
    api.wait_server("alice", ready=True, timeout=180)
    s = admin_session(p_old)
    r = s.post(f"{p_old.hub_url}/hub/api/users/alice/tokens", json={"note": "e2e-migrate"}, timeout=30)
    assert r.status_code == 201, r.text[:300]
    token = r.json()["token"]
    assert token_status(p_old, token) == 200
    c = docker.from_env()
    [alice_svc] = [sv for sv in c.services.list(filters={"label": f"hubops.deployment={DEPLOYMENT}"})
                   if sv.name.endswith("-user-alice")]
    alice_before = alice_svc.id

    plan = hubops_cli("ops", "migrate-db", "-p", str(mig["pg"]), outputs=mig["outputs"])
    assert plan.returncode == 0, plan.stdout[-2000:] + plan.stderr[-3000:]
    assert [sv.name for sv in c.services.list(filters={"name": p.db_service})] == [], "a plan changes nothing"

    t0 = time.monotonic()
    res = hubops_cli("ops", "migrate-db", "-p", str(mig["pg"]), "--set", "confirm=true", outputs=mig["outputs"])
    print(f"\nmigrate-db SQLite -> PostgreSQL: {time.monotonic() - t0:.1f} s")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    run_json = sorted(mig["outputs"].glob("*/run.json"), key=lambda f: f.stat().st_mtime)[-1]
    rec = read_record(json.loads((run_json.parent / "migrate-db.ipynb").read_text()))
    migrated = next(r for r in rec["results"] if r["step"] == "migrate-db")
    print(f"rows copied: {migrated['facts']['rows']}; hub down {migrated['facts']['hub_down_s']} s")
    assert migrated["facts"]["rows"]["users"] >= 2 and migrated["facts"]["rows"]["api_tokens"] >= 1
    assert any(r["step"] == "backup" for r in rec["results"]), "a backup of the SQLite database first"

    # The hub serves from PostgreSQL; the server, the token and the admin survived.
    hub = c.services.get(p.hub_service)
    info = hubdb.read_hub_db(p, Clients(p), hub.attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"].split("@")[0])
    assert {"alice", "operator"} <= {u["name"] for u in info["users"]} and info["admins"] == ["operator"]
    assert {"user": "alice", "server": "", "running": True} in info["servers"]
    assert token_status(p, token) == 200
    s = admin_session(p)
    alice = s.get(f"{p.hub_url}/hub/api/users/alice", timeout=30).json()
    assert alice["servers"][""]["ready"], alice
    assert c.services.get(alice_svc.id).id == alice_before, "the user's server kept running"
    r = HubAPI(p, timeout=30).request("GET", "/user/alice/api/status", ok=(200,))
    assert r.status_code == 200
    # The SQLite file is kept in its volume.
    out = c.containers.run("hubops-base:bookworm", ["ls", "/data"], remove=True,
                           volumes={p.hub_volume: {"bind": "/data", "mode": "ro"}})
    assert b"jupyterhub.sqlite" in out
    mig["migration_backup"] = sorted(d for d in mig["backups"].iterdir() if d.is_dir())[-1]

    again = hubops_cli("ops", "migrate-db", "-p", str(mig["pg"]), "--set", "confirm=true", outputs=mig["outputs"])
    assert again.returncode == 0, again.stderr[-3000:]
    run_json = sorted(mig["outputs"].glob("*/run.json"), key=lambda f: f.stat().st_mtime)[-1]
    rec = read_record(json.loads((run_json.parent / "migrate-db.ipynb").read_text()))
    details = [i["detail"] for r in rec["results"] for i in r["items"]]
    assert any("already uses PostgreSQL" in d for d in details), details


def test_the_sqlite_backup_is_refused_by_the_postgres_deployment(mig):
    folder = mig["migration_backup"]
    assert (folder / "jupyterhub.sqlite").exists()
    res = hubops_cli("ops", "restore", "-p", str(mig["pg"]), "--set", f"backup={folder}", "--set", "confirm=true",
                     outputs=mig["outputs"])
    out = " ".join((res.stdout + res.stderr).split())
    assert res.returncode != 0 and "the backup holds a SQLite database" in out, out[-2000:]
