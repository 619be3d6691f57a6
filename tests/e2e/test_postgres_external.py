"""storage.hub.mode postgres with an existing server: a real PostgreSQL 15 (Debian's, on this machine)
that the test starts on the address Swarm containers reach this machine at (docker_gwbridge), TLS only
(`hostssl`), its certificate from a CA of the test's, a password login. The deployment names it by
URL, password as a file reference, the CA file: deploy (00-preflight verifies TLS from here, 70-storage
logs in from the overlay network, the hub connects with sslmode verify-full), a backup with pg_dump over
the same verified TLS, a restore with pg_restore, teardown. The server is stopped at the end.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import docker
import pytest

from hubops.core import certs
from hubops.core.engine import Clients
from hubops.core.params import load_params
from hubops.ops import teardown
from tests.helpers import create_user, ensure_swarm, free_port, free_subnet, hubops_cli, make_params, run_name

pytestmark = [pytest.mark.engine, pytest.mark.e2e, pytest.mark.slow]
DEPLOYMENT = run_name("pgx")
BIN = Path("/usr/lib/postgresql/15/bin")


def gwbridge_address() -> str:
    net = docker.from_env().networks.get("docker_gwbridge")
    return net.attrs["IPAM"]["Config"][0]["Gateway"]


def as_postgres(*cmd: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", *cmd],
                          capture_output=True, text=True, timeout=120, **kw)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not (BIN / "postgres").exists():
        pytest.fail("Debian's postgresql-15 is not installed: apt-get install -y postgresql")
    import shutil
    import tempfile

    # Not under pytest's folder (0700, closed to the postgres user the server runs as).
    tmp = Path(tempfile.mkdtemp(prefix=f"hubops-{DEPLOYMENT}-"))
    os.chmod(tmp, 0o755)
    data = tmp / "data"
    data.mkdir(mode=0o700)
    addr, port = gwbridge_address(), free_port()
    pw = tmp / "db-password"
    pw.write_text("ext-" + os.urandom(12).hex() + "\n")
    pw.chmod(0o600)
    pwcopy = tmp / "pw-for-initdb"
    pwcopy.write_text(pw.read_text())
    subprocess.run(["chown", "-R", "postgres:postgres", str(data), str(pwcopy)], check=True)
    r = as_postgres(str(BIN / "initdb"), "-D", str(data), "-U", "jh", f"--pwfile={pwcopy}", "--auth-local=trust",
                    "--auth-host=reject", "--encoding=UTF8", "--locale=C.UTF-8")
    assert r.returncode == 0, r.stderr
    pwcopy.unlink()
    ca_pem, ca_key = certs.make_ca("hubops test database CA")
    chain, key = certs.issue_server_cert(ca_pem, ca_key, [addr])
    (tmp / "ca.pem").write_bytes(ca_pem)
    (data / "server.crt").write_bytes(chain)
    (data / "server.key").write_bytes(key)
    subprocess.run(["chown", "postgres:postgres", str(data / "server.crt"), str(data / "server.key")], check=True)
    os.chmod(data / "server.key", 0o600)
    with open(data / "pg_hba.conf", "a") as f:
        f.write("hostssl all all 0.0.0.0/0 scram-sha-256\n")
    proc = subprocess.Popen(["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", str(BIN / "postgres"),
                             "-D", str(data), "-c", f"listen_addresses={addr}", "-c", f"port={port}",
                             "-c", f"unix_socket_directories={data}", "-c", "ssl=on"],
                            stdout=open(tmp / "server.log", "w"), stderr=subprocess.STDOUT)
    try:
        for _ in range(60):
            if as_postgres(str(BIN / "pg_isready"), "-q", "-h", str(data), "-p", str(port)).returncode == 0:
                break
            time.sleep(0.5)
        r = as_postgres("psql", "-h", str(data), "-p", str(port), "-U", "jh", "-d", "postgres", "-c",
                        "CREATE DATABASE jupyterhub OWNER jh")
        assert r.returncode == 0, r.stderr + (tmp / "server.log").read_text()
        print(f"\nPostgreSQL 15 (TLS only) at {addr}:{port}")
        yield {"tmp": tmp, "addr": addr, "port": port, "pw": pw, "ca": tmp / "ca.pem", "data": data}
    finally:
        proc.terminate()  # the server this fixture started, by its own process handle
        proc.wait(timeout=60)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def ext(server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pgxdep")
    backups, outputs = tmp / "backups", tmp / "outputs"
    ensure_swarm()
    params = make_params(tmp, DEPLOYMENT, port=free_port(), subnet=free_subnet(), extra=(
        f"storage: {{hub: {{mode: postgres, postgres: {{url: 'postgresql://jh@{server['addr']}:{server['port']}/jupyterhub', "
        f"password: {{file: {server['pw']}}}, ca: {server['ca']}}}}}}}\nbackup: {{dir: {backups}}}\n"))
    t0 = time.monotonic()
    res = hubops_cli("deploy", "-p", str(params), outputs=outputs)
    print(f"\ndeploy with an existing PostgreSQL: {time.monotonic() - t0:.1f} s")
    p = load_params(params)
    yield {"p": p, "params": params, "outputs": outputs, "backups": backups, "deploy": res}
    down = hubops_cli("ops", "teardown", "-p", str(params), "--set", "confirm=true", "--set", "remove_volumes=true",
                      "--set", "remove_user_data=true", outputs=outputs)
    if down.returncode != 0:
        teardown.teardown(p, Clients(p), remove_volumes=True, remove_user_data=True)
    assert down.returncode == 0, down.stderr[-3000:]


def test_deploy_backup_restore_against_an_existing_server_over_verified_tls(ext, server):
    p, res = ext["p"], ext["deploy"]
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-4000:]
    c = docker.from_env()
    assert not [s.name for s in c.services.list(filters={"name": p.db_service})], "no PostgreSQL service of hubops's"
    # The hub's tables are in the test's server, over TLS (the server accepts nothing else).
    r = as_postgres("psql", "-h", str(server["data"]), "-p", str(server["port"]), "-U", "jh", "-d", "jupyterhub",
                    "-Atc", "SELECT name FROM users ORDER BY name; SELECT count(*) FROM pg_stat_ssl WHERE ssl")
    assert r.returncode == 0, r.stderr
    assert "operator" in r.stdout.split(), r.stdout
    ssl_sessions = int(r.stdout.split()[-1])
    assert ssl_sessions >= 1, r.stdout  # the hub's connections
    hub = c.services.get(p.hub_service)
    refs = [x["File"]["Name"] for x in hub.attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Configs"]]
    assert "/srv/jupyterhub/db-ca.pem" in refs

    res = hubops_cli("ops", "backup", "-p", str(ext["params"]), outputs=ext["outputs"])
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    folder = sorted(d for d in ext["backups"].iterdir() if d.is_dir())[-1]
    m = json.loads((folder / "manifest.json").read_text())
    assert m["database"]["engine"] == "postgres" and "operator" in m["database"]["admins"]
    assert server["pw"].read_text().strip().encode() not in (folder / "jupyterhub.pgdump").read_bytes()

    create_user(p, "carol")
    res = hubops_cli("ops", "restore", "-p", str(ext["params"]), "--set", f"backup={folder.name}", "--set", "confirm=true",
                     outputs=ext["outputs"])
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-4000:]
    r = as_postgres("psql", "-h", str(server["data"]), "-p", str(server["port"]), "-U", "jh", "-d", "jupyterhub",
                    "-Atc", "SELECT name FROM users ORDER BY name")
    assert "carol" not in r.stdout.split() and "operator" in r.stdout.split(), r.stdout
