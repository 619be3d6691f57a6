"""Notices kept in the hub's PostgreSQL database (storage.hub.mode postgres), against a real PostgreSQL 15
(Debian's, started here on 127.0.0.1, TLS only, password login; no Docker engine needed).

- hubops's read/write task script (hubops/hub/notices.py, run as the hub image runs it) creates and
  fills the one-row table;
- the generated jupyterhub_config.py's `announcement` (executed as JupyterHub executes it, with the
  hub's libpq environment) shows the data folder's file while the table has no row, then the row,
  per user and for everyone, and nothing once cleared;
- JupyterHub's own database set-up accepts a database that holds the table.
"""
from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from hubops.core import certs
from hubops.core.params import load_params
from hubops.hub import hubdb, notices
from tests.helpers import free_port, free_subnet, hub_config, make_params, run_name

BIN = Path("/usr/lib/postgresql/15/bin")
SERIAL = itertools.count(1)
PASSWORD = "ab" * 32  # what tests.helpers.hub_config writes into every secret file the hub reads


def as_postgres(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", *cmd],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def server():
    if not (BIN / "postgres").exists():
        pytest.fail("Debian's postgresql-15 is not installed: apt-get install -y postgresql")
    tmp = Path(tempfile.mkdtemp(prefix="hubops-notices-"))  # not under pytest's 0700 folder: postgres reads it
    os.chmod(tmp, 0o755)
    data = tmp / "data"
    data.mkdir(mode=0o700)
    port = free_port()
    pwfile = tmp / "pw-for-initdb"
    pwfile.write_text(PASSWORD + "\n")
    subprocess.run(["chown", "-R", "postgres:postgres", str(data), str(pwfile)], check=True)
    r = as_postgres(str(BIN / "initdb"), "-D", str(data), "-U", "jh", f"--pwfile={pwfile}", "--auth-local=trust",
                    "--auth-host=reject", "--encoding=UTF8", "--locale=C.UTF-8")
    assert r.returncode == 0, r.stderr
    ca_pem, ca_key = certs.make_ca("hubops notices test CA")
    chain, key = certs.issue_server_cert(ca_pem, ca_key, ["127.0.0.1"])
    (tmp / "ca.pem").write_bytes(ca_pem)
    (data / "server.crt").write_bytes(chain)
    (data / "server.key").write_bytes(key)
    subprocess.run(["chown", "postgres:postgres", str(data / "server.crt"), str(data / "server.key")], check=True)
    os.chmod(data / "server.key", 0o600)
    # The whole file: initdb's own lines reject 127.0.0.1 before anything appended could match.
    (data / "pg_hba.conf").write_text("local all all trust\nhostssl all all 127.0.0.1/32 scram-sha-256\n")
    proc = subprocess.Popen(["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", str(BIN / "postgres"),
                             "-D", str(data), "-c", "listen_addresses=127.0.0.1", "-c", f"port={port}",
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
        yield {"tmp": tmp, "port": port, "ca": tmp / "ca.pem", "data": data}
    finally:
        # Fast shutdown (SIGINT): the pools of the hub config's reader and of JupyterHub in this process
        # still hold connections, which a smart shutdown (SIGTERM) would wait for. Its own handle.
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def deployment(server, tmp_path, monkeypatch):
    """A deployment whose hub database is a new database of the server (each test its own)."""
    name = run_name(f"notes{next(SERIAL)}")
    dbname = name.replace("-", "_")
    r = as_postgres("psql", "-h", str(server["data"]), "-p", str(server["port"]), "-U", "jh", "-d", "postgres", "-c",
                    f"CREATE DATABASE {dbname} OWNER jh")
    assert r.returncode == 0, r.stderr
    (tmp_path / "db-pw").write_text(PASSWORD + "\n")
    params = make_params(tmp_path, name, port=free_port(), subnet=free_subnet(), extra=(
        f"storage: {{hub: {{mode: postgres, postgres: {{url: 'postgresql://jh@127.0.0.1:{server['port']}/{dbname}', "
        f"password: {{file: {tmp_path / 'db-pw'}}}, ca: {server['ca']}}}}}}}\n"))
    p = load_params(params)
    assert notices.in_database(p)
    # The task's login files, as hubdb.run_task puts them into its container.
    task = tmp_path / "task"
    task.mkdir()
    for name, data in hubdb.task_files(p).items():
        (task / name).write_bytes(data)
    # What the hub's container holds: the data folder's notices file (written by an older hubops).
    old_file = tmp_path / "hubops-announcements.json"
    old_file.write_text(json.dumps({"*": "from the data folder 51d0"}))
    monkeypatch.setenv("HUBOPS_ANNOUNCEMENTS", str(old_file))
    for k in ("PGPASSWORD", "PGSSLMODE", "PGCONNECT_TIMEOUT", "PGSSLROOTCERT"):
        monkeypatch.delenv(k, raising=False)  # the generated config sets them in this process
    cfg = hub_config(p)
    os.environ["PGSSLROOTCERT"] = str(server["ca"])  # the hub finds its CA at /srv/jupyterhub/db-ca.pem
    announcement = cfg.JupyterHub.template_vars["announcement"]
    # The hub reads the table at most every NOTES_TTL (5 s); here every call reads it.
    assert announcement.__globals__["NOTES_TTL"] == 5.0
    announcement.__globals__["NOTES_TTL"] = 0.0
    yield {"p": p, "task": task, "announcement": announcement}
    for k in ("PGPASSWORD", "PGSSLMODE", "PGCONNECT_TIMEOUT", "PGSSLROOTCERT"):
        os.environ.pop(k, None)
    monkeypatch.undo()


def task(d: dict, action: str, notes: dict | None = None) -> dict:
    """Run hubops's notices script as the hub image runs it (python3 -c SCRIPT ACTION)."""
    if notes is not None:
        (d["task"] / "notes.json").write_text(json.dumps(notes, sort_keys=True))
    out = subprocess.run([sys.executable, "-c", notices._SCRIPT, action], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "HUBOPS_TASK_DIR": str(d["task"])})
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


class User:
    def __init__(self, name: str):
        self.name = name


def test_notices_in_the_database_are_what_the_hub_shows(deployment):
    d = deployment
    show = d["announcement"]
    assert task(d, "read") == {"table": False, "notes": None}
    assert show(None) == "from the data folder 51d0", "before the first write, the data folder's notices stay shown"

    until = round(time.time() + 3600)
    assert task(d, "write", {"*": {"text": "Maintenance 7c2e", "until": until}, "alice": "moves 7c2e"})["written"]
    assert task(d, "read") == {"table": True,
                               "notes": {"*": {"text": "Maintenance 7c2e", "until": until}, "alice": "moves 7c2e"}}
    assert show(None) == "Maintenance 7c2e", "the login page (no user) shows the notice for everyone"
    assert show(User("alice")) == "moves 7c2e" and show(User("bob")) == "Maintenance 7c2e"

    task(d, "write", {"*": {"text": "expired", "until": round(time.time() - 1)}})
    assert show(User("bob")) == ""
    task(d, "write", {})
    assert task(d, "read")["notes"] == {} and show(None) == "", "cleared: the file is no longer read"


def test_jupyterhub_sets_up_a_database_that_holds_the_notices_table(deployment):
    from jupyterhub import orm

    d = deployment
    task(d, "write", {"*": "before the hub's first start"})
    db = orm.new_session_factory(hubdb.url(d["p"]))()  # the hub's own set-up: schema check, tables
    try:
        db.add(orm.User(name="alice"))
        db.commit()
        assert db.query(orm.User).filter_by(name="alice").one()
    finally:
        db.close()
    assert task(d, "read")["notes"] == {"*": "before the hub's first start"}
