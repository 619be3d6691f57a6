"""storage.hub.mode postgres with an existing server NEWER than hubops's pg_dump (hubdb.PG_DUMP_MAJOR,
15): a real PostgreSQL 17 (Debian trixie's package, in a tree cached beside the lab's engine trees:
tests/peers_postgres.py) that the test starts on the address Swarm containers reach this machine at
(docker_gwbridge), TLS only, a password login, set up like tests/e2e/test_postgres_external.py.

- deploy works (the hub runs on PostgreSQL 17), and 70-storage's record holds the server's version
  (17.x) and the warning that hubops's backups cannot read it;
- `ops backup` fails, says why (pg_dump's "server version mismatch" and hubops's pg_dump version),
  and writes nothing; the hub still answers;
- teardown; the server and its files are removed at the end.
"""
from __future__ import annotations

import time

import docker
import pytest

from hubops.core.engine import Clients
from hubops.core.params import load_params
from hubops.hub import hubdb
from hubops.hub.running import HubAPI
from hubops.ops import teardown
from tests import peers_postgres
from tests.helpers import ensure_swarm, free_port, free_subnet, hubops_cli, make_params, run_name, runs, stage_record

# A deploy, a failing backup and a teardown: ~3-5 min (plus ~1.5 min the first time on a machine, to
# build the PostgreSQL 17 tree).
pytestmark = [pytest.mark.engine, pytest.mark.e2e, pytest.mark.slow]
DEPLOYMENT = run_name("pgnew")


def gwbridge_address() -> str:
    net = docker.from_env().networks.get("docker_gwbridge")
    return net.attrs["IPAM"]["Config"][0]["Gateway"]


def labelled_objects() -> list[str]:
    client = docker.from_env()
    return [f"{kind} {o.name}" for kind, coll in (("service", client.services), ("secret", client.secrets),
                                                  ("config", client.configs), ("network", client.networks),
                                                  ("volume", client.volumes))
            for o in coll.list(filters={"label": f"hubops.deployment={DEPLOYMENT}"})]


@pytest.fixture(scope="module")
def server():
    ensure_swarm()  # docker_gwbridge exists once the engine is in a swarm
    t0 = time.monotonic()
    m = peers_postgres.ensure_root()
    print(f"\nPostgreSQL tree: {m['postgres']} (Debian {m['suite']}, built {m['built']}); ready in "
          f"{time.monotonic() - t0:.1f} s")
    pg = peers_postgres.NewerPostgres(DEPLOYMENT, gwbridge_address(), free_port())
    try:
        print(f"PostgreSQL {pg.version_num} (TLS only) at {pg.addr}:{pg.port}")
        assert pg.version_num // 10000 > hubdb.PG_DUMP_MAJOR, pg.version_num
        yield pg
    finally:
        pg.stop()


@pytest.fixture(scope="module")
def dep(server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pgnew")
    backups, outputs = tmp / "backups", tmp / "outputs"
    params = make_params(tmp, DEPLOYMENT, port=free_port(), subnet=free_subnet(), extra=(
        f"storage: {{hub: {{mode: postgres, postgres: {{url: 'postgresql://jh@{server.addr}:{server.port}/jupyterhub', "
        f"password: {{file: {server.pw}}}, ca: {server.ca}}}}}}}\nbackup: {{dir: {backups}}}\nculler: {{enabled: false}}\n"))
    assert not labelled_objects(), f"deployment {DEPLOYMENT} exists already: {labelled_objects()}"
    p = load_params(params)
    t0 = time.monotonic()
    res = hubops_cli("deploy", "-p", str(params), outputs=outputs)
    print(f"\ndeploy on PostgreSQL {server.version_num}: {time.monotonic() - t0:.1f} s")
    try:
        yield {"p": p, "params": params, "outputs": outputs, "backups": backups, "deploy": res}
    finally:
        down = hubops_cli("ops", "teardown", "-p", str(params), "--set", "confirm=true", "--set", "remove_volumes=true",
                          "--set", "remove_user_data=true", outputs=outputs)
        left = labelled_objects()
        if down.returncode != 0 or left:
            teardown.teardown(p, Clients(p), remove_volumes=True, remove_user_data=True)
        assert down.returncode == 0, down.stderr[-3000:]
        assert not left, f"teardown left {left}"


def test_deploy_records_the_newer_version_and_the_backup_warning(dep, server):
    res = dep["deploy"]
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-4000:]
    run = [r for r in runs(dep["outputs"]) if r["kind"] == "deploy"][-1]
    rec = stage_record(dep["outputs"], run, "70-storage")
    facts = {k: v for r in rec["results"] for k, v in r["facts"].items()}
    major = server.version_num // 10000
    print(f"70-storage: server_version {facts.get('server_version')}; warning: {facts.get('warning')}")
    assert facts["server_version"] == f"{major}.{server.version_num % 10000}", facts
    warning = facts["warning"]
    assert f"runs PostgreSQL {major}" in warning and f"pg_dump {hubdb.PG_DUMP_MAJOR}" in warning, warning
    assert "`ops backup` will fail" in warning and f"{server.addr}:{server.port}" in warning, warning
    # The hub itself runs on it: its tables are in the server.
    r = server.sql("psql", "-h", server.data, "-p", str(server.port), "-U", "jh", "-d", "jupyterhub", "-Atc",
                   "SELECT name FROM users ORDER BY name")
    assert "operator" in r.stdout.split(), r.stdout


def test_backup_fails_and_says_why(dep, server):
    assert dep["deploy"].returncode == 0
    res = hubops_cli("ops", "backup", "-p", str(dep["params"]), outputs=dep["outputs"])
    out = " ".join((res.stdout + res.stderr).split())
    print(f"\nops backup: exit {res.returncode}")
    assert res.returncode != 0, out[-3000:]
    assert "server version mismatch" in out, out[-3000:]
    assert f"hubops's pg_dump is version {hubdb.PG_DUMP_MAJOR}" in out, out[-3000:]
    assert "nothing was written" in out, out[-3000:]
    written = [f for f in dep["backups"].rglob("*") if f.is_file()] if dep["backups"].exists() else []
    assert written == [], written
    # The hub is not affected.
    assert HubAPI(dep["p"]).request("GET", "/hub/api/").json()["version"]
