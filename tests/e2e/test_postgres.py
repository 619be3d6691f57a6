"""The hub's database in PostgreSQL (storage.hub.mode postgres), on the local single-node swarm, run as
an operator runs it (`hubops deploy`, `hubops ops ...`). One deployment, `pg-RUN`, in order:

1. deploy with hubops's own PostgreSQL (a Swarm service of images/postgres, Debian's postgresql, its
   data on a labelled volume, a generated password secret): the hub's db_url points at it, the hub may
   run on any manager, no password anywhere in the record;
2. a user with a running server and an API token; a backup while the hub runs is a pg_dump archive
   with the same manifest as SQLite's (users, admins, server records, schema) and no secret in it;
3. a partial or corrupt archive is refused before anything changes;
4. a user made after the backup; restore puts the database back with pg_restore: the later user is
   gone, the server record, the admin and the token are back (the token still works);
5. a SQLite backup restored into the PostgreSQL deployment is refused with what to do;
6. an existing server's URL that does not answer, or whose certificate does not verify, is refused at
   00-preflight before anything changes.

Teardown at the end leaves nothing labelled for the deployment.
"""
from __future__ import annotations

import json
import shutil
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
from tests.helpers import (admin_session, create_user, ensure_swarm, free_port, free_subnet, hubops_cli, make_params,
                           run_name, write_cert_pair)

pytestmark = [pytest.mark.engine, pytest.mark.e2e, pytest.mark.slow]
DEPLOYMENT = run_name("pg")


def labelled_objects() -> list[str]:
    client = docker.from_env()
    return [f"{kind} {o.name}" for kind, coll in (("service", client.services), ("secret", client.secrets),
                                                  ("config", client.configs), ("network", client.networks),
                                                  ("volume", client.volumes))
            for o in coll.list(filters={"label": f"hubops.deployment={DEPLOYMENT}"})]


def last_record(outputs: Path, notebook: str) -> dict:
    run_json = sorted(outputs.glob("*/run.json"), key=lambda f: f.stat().st_mtime)[-1]
    return read_record(json.loads((run_json.parent / notebook).read_text()))


@pytest.fixture(scope="module")
def pg(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pg")
    backups, outputs = tmp / "backups", tmp / "outputs"
    ensure_swarm()
    params = make_params(tmp, DEPLOYMENT, port=free_port(), subnet=free_subnet(),
                         extra=f"storage: {{hub: {{mode: postgres, postgres: {{}}}}}}\nbackup: {{dir: {backups}}}\n")
    assert not labelled_objects(), f"deployment {DEPLOYMENT} exists already: {labelled_objects()}"
    t0 = time.monotonic()
    res = hubops_cli("deploy", "-p", str(params), outputs=outputs)
    print(f"\ndeploy with PostgreSQL: {time.monotonic() - t0:.1f} s")
    state = {"tmp": tmp, "backups": backups, "outputs": outputs, "params": params, "p": load_params(params),
             "deploy": res}
    yield state
    p = state["p"]
    down = hubops_cli("ops", "teardown", "-p", str(params), "--set", "confirm=true", "--set", "remove_volumes=true",
                      "--set", "remove_user_data=true", outputs=outputs)
    left = labelled_objects()
    if down.returncode != 0 or left:
        teardown.teardown(p, Clients(p), remove_volumes=True, remove_user_data=True)
    assert down.returncode == 0, down.stderr[-3000:]
    assert not left, f"teardown left {left}"


def token_works(p, token: str) -> int:
    r = requests.get(f"{p.hub_url}/hub/api/user", headers={"Authorization": f"token {token}"},
                     verify=str(p.operator_path / "ca.pem"), timeout=30)
    return r.status_code


# -- 1. deploy ----------------------------------------------------------------------------------
def test_deploy_runs_the_hub_on_hubops_postgres(pg):
    p, res = pg["p"], pg["deploy"]
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-4000:]
    c = docker.from_env()
    db = c.services.get(p.db_service)
    assert db.attrs["Spec"]["Labels"]["hubops.deployment"] == DEPLOYMENT
    assert db.attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"].startswith("hubops-postgres:")
    vol = c.volumes.get(p.db_volume)
    assert vol.attrs["Labels"]["hubops.role"] == "db-data"
    rec = last_record(pg["outputs"], "70-storage.ipynb")
    facts = rec["results"][0]["facts"]
    assert facts["mode"] == "postgres" and facts["url"].startswith("postgresql+psycopg2://hub@" + p.db_service)
    hub = c.services.get(p.hub_service)
    assert hub.attrs["Spec"]["TaskTemplate"]["Placement"]["Constraints"] == ["node.role==manager"]
    # The hub's config reads the password from its secret; the password is nowhere in the record.
    import base64

    cfg = next(base64.b64decode(c.configs.get(r["ConfigID"]).attrs["Spec"]["Data"]).decode()
               for r in hub.attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Configs"]
               if r["File"]["Name"].endswith("jupyterhub_config.py"))
    assert "c.JupyterHub.db_url = 'postgresql+psycopg2://hub@" in cfg and "hubops-db-password" in cfg
    pw = hubdb.password(p)
    assert pw not in cfg
    hits = [f for f in pg["outputs"].rglob("*") if f.is_file() and pw.encode() in f.read_bytes()]
    assert not hits, hits
    info = hubdb.read_hub_db(p, Clients(p), hub.attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"].split("@")[0])
    assert info["exists"] and "operator" in info["admins"], info


# -- 2. a running server, a token, a backup -------------------------------------------------------
def test_backup_is_a_pg_dump_with_the_manifest(pg):
    p = pg["p"]
    api = HubAPI(p, timeout=30)
    api.request("POST", "/hub/api/users/alice/server", ok=(201, 202))
    api.wait_server("alice", ready=True, timeout=180)
    r = admin_session(p).post(f"{p.hub_url}/hub/api/users/alice/tokens", json={"note": "e2e-pg"}, timeout=30)
    assert r.status_code == 201, r.text[:300]
    pg["token"] = r.json()["token"]
    assert token_works(p, pg["token"]) == 200
    res = hubops_cli("ops", "backup", "-p", str(pg["params"]), "--set", "reason=e2e-pg", outputs=pg["outputs"])
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    folder = sorted(d for d in pg["backups"].iterdir() if d.is_dir())[-1]
    m = json.loads((folder / "manifest.json").read_text())
    db = m["database"]
    print(f"\nbackup (pg_dump): {m['files']['jupyterhub.pgdump']['bytes']} bytes, {db['pg_dump']}")
    assert db["engine"] == "postgres" and db["alembic_revision"]
    assert {"alice", "operator"} <= {u["name"] for u in db["users"]} and db["admins"] == ["operator"]
    assert {"user": "alice", "server": "", "running": True} in db["servers"]
    assert (folder / "jupyterhub.pgdump").read_bytes().startswith(b"PGDMP")
    assert not (folder / "jupyterhub.sqlite").exists()
    for f in folder.iterdir():  # neither the database password nor the token in any file
        assert hubdb.password(p).encode() not in f.read_bytes(), f
        assert pg["token"].encode() not in f.read_bytes(), f
    pg["backup"] = folder


# -- 3. refused archives ------------------------------------------------------------------------------
@pytest.mark.parametrize("damage,message", [
    ("truncate", "bytes, the manifest says"),
    ("partial", "no manifest.json"),
])
def test_a_damaged_pg_backup_is_refused(pg, damage, message):
    bad = pg["tmp"] / f"bad-{damage}"
    shutil.copytree(pg["backup"], bad)
    if damage == "truncate":
        data = (bad / "jupyterhub.pgdump").read_bytes()
        (bad / "jupyterhub.pgdump").write_bytes(data[: len(data) // 2])
    else:
        (bad / "manifest.json").unlink()
    version = docker.from_env().services.get(pg["p"].hub_service).version
    res = hubops_cli("ops", "restore", "-p", str(pg["params"]), "--set", f"backup={bad}", "--set", "confirm=true",
                     outputs=pg["outputs"])
    assert res.returncode != 0
    assert message in res.stdout + res.stderr, res.stdout[-2000:] + res.stderr[-2000:]
    assert docker.from_env().services.get(pg["p"].hub_service).version == version, "nothing changed"


# -- 4. restore -------------------------------------------------------------------------------------
def test_restore_with_pg_restore_brings_back_users_servers_and_tokens(pg):
    p = pg["p"]
    create_user(p, "carol")
    # The token goes away (revoked) after the backup: the restore brings it back.
    s = admin_session(p)
    tokens = s.get(f"{p.hub_url}/hub/api/users/alice/tokens", timeout=30).json()["api_tokens"]
    for t in tokens:
        if t.get("note") == "e2e-pg":
            assert s.delete(f"{p.hub_url}/hub/api/users/alice/tokens/{t['id']}", timeout=30).status_code == 204
    assert token_works(p, pg["token"]) == 403
    t0 = time.monotonic()
    res = hubops_cli("ops", "restore", "-p", str(pg["params"]), "--set", f"backup={pg['backup'].name}",
                     "--set", "confirm=true", outputs=pg["outputs"])
    print(f"\nrestore (pg_restore): {time.monotonic() - t0:.1f} s")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-4000:]
    rec = last_record(pg["outputs"], "restore.ipynb")
    steps = [r["step"] for r in rec["results"]]
    assert "backup" in steps, "a safety backup first"
    users = s.get(f"{p.hub_url}/hub/api/users", timeout=30)
    s = admin_session(p)
    names = {u["name"] for u in s.get(f"{p.hub_url}/hub/api/users", timeout=30).json()}
    assert "carol" not in names and {"alice", "operator"} <= names, names
    assert token_works(p, pg["token"]) == 200
    alice = s.get(f"{p.hub_url}/hub/api/users/alice", timeout=30).json()
    assert alice["servers"][""]["ready"], alice
    del users


# -- 5. a backup of the other mode ---------------------------------------------------------------------
def test_a_sqlite_backup_is_refused_by_a_postgres_deployment(pg):
    fake = pg["tmp"] / "sqlite-backup"
    shutil.copytree(pg["backup"], fake)
    # A SQLite backup's manifest (as ops/backup writes it for storage.hub.mode volume), files included.
    import hashlib
    import sqlite3

    db = fake / "jupyterhub.sqlite"
    con = sqlite3.connect(db)
    con.executescript("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT, admin BOOLEAN);"
                      "CREATE TABLE spawners (id INTEGER PRIMARY KEY, user_id INTEGER, server_id INTEGER, name TEXT);"
                      "CREATE TABLE alembic_version (version_num TEXT); INSERT INTO users VALUES (1, 'alice', 0);")
    con.commit()
    con.close()
    (fake / "jupyterhub.pgdump").unlink()
    m = json.loads((fake / "manifest.json").read_text())
    del m["files"]["jupyterhub.pgdump"]
    m["files"]["jupyterhub.sqlite"] = {"sha256": hashlib.sha256(db.read_bytes()).hexdigest(), "bytes": db.stat().st_size}
    m["database"] = {k: v for k, v in m["database"].items() if k not in ("engine", "pg_dump", "server", "tables")}
    (fake / "manifest.json").write_text(json.dumps(m))
    res = hubops_cli("ops", "restore", "-p", str(pg["params"]), "--set", f"backup={fake}", "--set", "confirm=true",
                     outputs=pg["outputs"])
    out = " ".join((res.stdout + res.stderr).split())
    assert res.returncode != 0
    assert "the backup holds a SQLite database" in out and "hubops ops migrate-db" in out, out[-2000:]


# -- 6. an existing server that does not answer, or whose certificate does not verify ----------------------
def test_an_existing_server_that_does_not_answer_or_verify_is_refused_at_preflight(pg, tmp_path):
    import socket
    import ssl
    import threading

    p = pg["p"]
    other_ca, other_key = tmp_path / "other-ca.pem", tmp_path / "other-key.pem"
    write_cert_pair(other_ca, other_key)
    (tmp_path / "pw").write_text("not-used-here\n")
    port = free_port()
    base = pg["params"].read_text().split("storage:")[0]
    bad = tmp_path / f"{DEPLOYMENT}-ext.yaml"
    shutil.copy(pg["tmp"] / "userlist", tmp_path / "userlist")

    def params(url_port: int) -> Path:
        bad.write_text(base + f"storage: {{hub: {{mode: postgres, postgres: {{url: 'postgresql://hub@127.0.0.1:{url_port}/"
                       f"jupyterhub', password: {{file: {tmp_path / 'pw'}}}, ca: {other_ca}}}}}}}\n")
        return bad

    before = sorted(labelled_objects())
    res = hubops_cli("deploy", "-p", str(params(port)), outputs=tmp_path / "out")  # nothing listens there
    out = " ".join((res.stdout + res.stderr).split())
    assert res.returncode != 0 and "does not answer" in out and "Nothing was changed" in out, out[-2000:]

    # A server that speaks PostgreSQL's SSLRequest and TLS with a certificate of another CA.
    srv_cert, srv_key = tmp_path / "srv-cert.pem", tmp_path / "srv-key.pem"
    write_cert_pair(srv_cert, srv_key)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(srv_cert, srv_key)
    lsock = socket.create_server(("127.0.0.1", 0))
    tls_port = lsock.getsockname()[1]

    def serve():
        conn, _ = lsock.accept()
        conn.recv(8)
        conn.sendall(b"S")
        try:
            ctx.wrap_socket(conn, server_side=True).close()
        except (ssl.SSLError, OSError):
            pass
        conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    res = hubops_cli("deploy", "-p", str(params(tls_port)), outputs=tmp_path / "out")
    lsock.close()
    out = " ".join((res.stdout + res.stderr).split())
    assert res.returncode != 0 and "does not verify" in out and "Nothing was changed" in out, out[-2000:]
    assert sorted(labelled_objects()) == before
    del p


# -- 7. a second deploy ----------------------------------------------------------------------------------
def test_a_second_deploy_changes_nothing(pg):
    p = pg["p"]
    version = docker.from_env().services.get(p.db_service).version
    res = hubops_cli("deploy", "-p", str(pg["params"]), outputs=pg["outputs"])
    tasks = [(t["Status"]["State"], t["Status"].get("Err", "")) for t in docker.from_env().api.tasks(
        filters={"service": p.hub_service})]
    assert res.returncode == 0, f"hub tasks: {tasks}\n" + res.stdout[-3000:] + res.stderr[-4000:]
    assert "Deployed: 0 changed" in res.stdout + res.stderr, res.stdout[-3000:] + res.stderr[-3000:]
    assert docker.from_env().services.get(p.db_service).version == version, "the database service was not touched"
