"""Day-2 operations without an engine: parameters, the hub configuration they produce (idle
culler) loaded into a traitlets Config (users' homes and the spawner's behaviour are in
test_spawner.py, against the real dockerspawner), backup checking (corrupt and partial backups
refused), upgrade planning and diagnose's failure signatures."""
from __future__ import annotations

import sqlite3
import sys
from pathlib import Path
from hubops.core.paths import PROJECT as PROJECT_ROOT

import pytest
from traitlets.config import Config

from hubops.ops import backup, diagnose, upgrade
from hubops.hub import config as hubconfig
from hubops.core.errors import BackupError, HubopsError, ParameterError
from hubops.core.params import load_params
from tests.helpers import make_params


def params(tmp_path: Path, extra: str = ""):
    return load_params(make_params(tmp_path, "day2u", port=8460, subnet="10.242.9.0/24", extra=extra))


# -- parameters ------------------------------------------------------------------------------
def test_defaults_keep_users_files_and_cull_after_an_hour(tmp_path):
    p = params(tmp_path)
    assert p.storage.users.mode == "node-local"  # issue 13 item 8: the default loses no data
    assert (p.culler.enabled, p.culler.timeout, p.culler.every) == (True, 3600, 60)
    assert backup.backup_root(p) == p.operator_path / "backups"


@pytest.mark.parametrize("extra, message", [
    ("storage: {users: {mode: volume-driver}}", "storage.users: mode 'volume-driver' needs driver"),
    ("storage: {users: {mode: node-local, path: /srv/x}}", "path is for mode 'shared-path'"),
    ("storage: {users: {mode: shared-path, path: relative/dir}}", "storage.users.path: 'relative/dir'"),
    ("storage: {users: {mode: nfs}}", "storage.users.mode"),
    ("storage: {users: {mode: shared-path, driver: local}}", "driver and driver_opts are for mode 'volume-driver'"),
    ("culler: {timeout: 1}", "culler.timeout"),
    ("culler: {every: 60, timout: 5}", "culler.timout: unknown key"),
])
def test_bad_day2_parameters_are_refused_with_the_key(tmp_path, extra, message):
    with pytest.raises(ParameterError) as e:
        params(tmp_path, extra)
    assert message in str(e.value)


def test_backup_dir_under_outputs_is_refused(tmp_path):
    from hubops.audit.runner import OUTPUTS

    # Refused when the parameters are read (hubops check), before any backup is attempted.
    with pytest.raises(ParameterError, match="backup.dir: .* is inside"):
        params(tmp_path, f"backup: {{dir: {OUTPUTS / 'backups'}}}")
    p = params(tmp_path, "backup: {dir: saved}")
    assert backup.backup_root(p) == tmp_path / "saved"  # relative to the parameter file


# -- the hub configuration ----------------------------------------------------------------
SECRETS = {"hubops-cookie-secret": "ab" * 32, "hubops-proxy-token": "proxy-token-value",
           "hubops-crypt-key": "cd" * 32, "hubops-api-token": "api-token-value",
           "hubops-user-password": "user-password-value", "hubops-admin-password": "admin-password-value-32"}


def load_config(p, tmp_path, monkeypatch) -> Config:
    d = tmp_path / "secrets"
    d.mkdir(exist_ok=True)
    for k, v in SECRETS.items():
        (d / k).write_text(v)
    (tmp_path / "userlist-in-hub").write_text(p.userlist_text())
    monkeypatch.setenv("HUBOPS_SECRETS_DIR", str(d))
    monkeypatch.setenv("HUBOPS_USERLIST", str(tmp_path / "userlist-in-hub"))
    src = hubconfig.render(p, singleuser_image="hubops-singleuser:abc")
    for v in SECRETS.values():
        assert v not in src
    cfg = Config()
    exec(compile(src, "jupyterhub_config.py", "exec"), {"get_config": lambda: cfg})
    return cfg


def test_culler_is_a_hub_service_with_the_least_scopes(tmp_path, monkeypatch):
    p = params(tmp_path, "culler: {timeout: 45, every: 15}")
    cfg = load_config(p, tmp_path, monkeypatch)
    culler = next(s for s in cfg.JupyterHub.services if s["name"] == "idle-culler")
    assert culler["command"][0] == sys.executable  # the hub's own python, where the package is installed
    assert culler["command"][1:] == ["-m", "jupyterhub_idle_culler", "--timeout=45", "--cull-every=15"]
    assert "api_token" not in culler  # a managed service: the hub gives it a token
    role = next(r for r in cfg.JupyterHub.load_roles if r["name"] == "idle-culler")
    assert role["services"] == ["idle-culler"]
    assert sorted(role["scopes"]) == sorted(["list:users", "read:users:activity", "read:servers", "delete:servers"])
    assert "admin:users" not in role["scopes"] and "admin:servers" not in role["scopes"]
    assert "jupyterhub-idle-culler==" in (PROJECT_ROOT / "images/hub/requirements.txt").read_text()


def test_culler_disabled(tmp_path, monkeypatch):
    cfg = load_config(params(tmp_path, "culler: {enabled: false}"), tmp_path, monkeypatch)
    assert [s["name"] for s in cfg.JupyterHub.services] == ["hubops"]


# -- backups -----------------------------------------------------------------------------------
def hub_db(path: Path) -> bytes:
    """A small database with JupyterHub's tables (the columns backup reads)."""
    con = sqlite3.connect(path)
    con.executescript("""
        CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL);
        INSERT INTO alembic_version VALUES ('4621fec11365');
        CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT, admin BOOLEAN);
        INSERT INTO users VALUES (1, 'operator', 1), (2, 'alice', 0), (3, 'carol', 1);
        CREATE TABLE spawners (id INTEGER PRIMARY KEY, user_id INTEGER, server_id INTEGER, name TEXT, state TEXT);
        INSERT INTO spawners VALUES (1, 2, NULL, '', '{"home_node": "n1"}'), (2, 1, 7, '', '{}');
    """)
    con.commit()
    con.close()
    return path.read_bytes()


@pytest.fixture
def saved(tmp_path) -> Path:
    data = hub_db(tmp_path / "src.sqlite")
    folder, manifest = backup.write_folder(tmp_path / "backups", {
        backup.DB: data, backup.USERLIST: b"operator admin\nalice\n", backup.HUB_CONFIG: b"c = get_config()\n",
        backup.PARAMETERS: b"deployment: day2u\n"}, {"deployment": "day2u", "hub_image": "hubops-hub:1"})
    assert manifest["database"]["users"] == [{"name": "alice", "admin": False}, {"name": "carol", "admin": True},
                                             {"name": "operator", "admin": True}]
    assert manifest["database"]["servers"] == [{"user": "alice", "server": "", "running": False},
                                               {"user": "operator", "server": "", "running": True}]
    return folder


def test_a_complete_backup_verifies(saved):
    assert oct(saved.stat().st_mode & 0o777) == "0o700"
    assert all(oct(f.stat().st_mode & 0o777) == "0o600" for f in saved.iterdir())
    m = backup.verify_backup(saved)
    assert m["database"]["alembic_revision"] == "4621fec11365"
    assert m["database"]["admins"] == ["carol", "operator"]


def _refused(folder: Path, *words: str) -> None:
    with pytest.raises(BackupError) as e:
        backup.verify_backup(folder)
    for w in words:
        assert w in str(e.value), str(e.value)


def test_corrupt_database_is_refused(saved):
    db = saved / backup.DB
    data = bytearray(db.read_bytes())
    data[200] ^= 0xFF
    db.write_bytes(bytes(data))
    _refused(saved, "refused, nothing was changed", "jupyterhub.sqlite: sha256 does not match")


def test_truncated_and_missing_files_are_refused(saved):
    (saved / backup.USERLIST).write_bytes(b"oper")
    (saved / backup.HUB_CONFIG).unlink()
    _refused(saved, "userlist: 4 bytes, the manifest says", "jupyterhub_config.py: missing")


def test_partial_backup_without_manifest_is_refused(saved):
    (saved / backup.MANIFEST).unlink()
    _refused(saved, "no manifest.json", "partial")


def test_manifest_that_does_not_parse_is_refused(saved):
    (saved / backup.MANIFEST).write_text("{not json")
    _refused(saved, "not valid JSON")


def test_a_file_that_is_not_a_sqlite_database_is_refused_even_with_matching_digests(tmp_path):
    (tmp_path / "x.sqlite").write_bytes(b"this is not a database at all, just text" * 10)
    with pytest.raises(BackupError, match="not a SQLite database"):
        backup.inspect_db(tmp_path / "x.sqlite")
    con = sqlite3.connect(tmp_path / "other.sqlite")
    con.execute("CREATE TABLE t (x)")
    con.commit()
    con.close()
    with pytest.raises(BackupError, match="not JupyterHub's"):
        backup.inspect_db(tmp_path / "other.sqlite")
    with pytest.raises(BackupError, match="not JupyterHub's"):  # never written as a backup either
        backup.write_folder(tmp_path / "b", {backup.DB: (tmp_path / "other.sqlite").read_bytes()}, {})
    assert not list((tmp_path / "b").iterdir()), "a refused backup leaves no partial folder"


def test_latest_is_the_newest_finished_backup(tmp_path, saved):
    p = params(tmp_path, f"backup: {{dir: {saved.parent}}}")
    second, _ = backup.write_folder(saved.parent, {backup.DB: (saved / backup.DB).read_bytes()}, {})
    (saved.parent / "29990101T000000Z.partial").mkdir()  # unfinished: never chosen
    assert backup.resolve(p, "latest") == second
    assert backup.resolve(p, saved.name) == saved
    r = backup.check_backup(p, saved.name)
    assert r.facts["users"] == ["alice", "carol", "operator"] and not r.changed


def test_backups_are_not_read_as_secrets_for_redaction(tmp_path):
    from hubops.audit.redact import known_secrets

    p = params(tmp_path)
    (p.operator_path / "backups" / "x").mkdir(parents=True)
    (p.operator_path / "backups" / "x" / "parameters.yaml").write_text("deployment: day2u-long-line\n")
    (p.operator_path / "api-token").write_text("a-real-token-value\n")
    found = known_secrets(p)
    assert "a-real-token-value" in found and "deployment: day2u-long-line" not in found


# -- upgrade and diagnose --------------------------------------------------------------------
def test_pin_jupyterhub():
    text = "# pinned\nalembic==1.0\njupyterhub==5.5.4\njupyterhub-idle-culler==2.0.0\n"
    out = upgrade.pin_jupyterhub(text, "5.5.3")
    assert "jupyterhub==5.5.3\n" in out and "jupyterhub-idle-culler==2.0.0" in out and "5.5.4" not in out
    with pytest.raises(ParameterError):
        upgrade.pin_jupyterhub(text, "latest")
    with pytest.raises(HubopsError):
        upgrade.pin_jupyterhub("alembic==1.0\n", "5.5.3")


@pytest.mark.parametrize("verdict, rolled_back", [("rolled back", True), ("upgraded", False), ("unchanged", False)])
def test_a_rolled_back_upgrade_is_told_apart_by_its_record(tmp_path, verdict, rolled_back):
    """`hubops ops upgrade` exits 3 (cli.ROLLED_BACK) when the record's verdict is "rolled back"."""
    import nbformat

    from hubops.cli import main as cli
    from hubops.core.record import record
    from hubops.core.result import Result

    up = Result("upgrade")
    up.facts["verdict"] = verdict
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("hubops.record('upgrade', upgraded)")
    cell.outputs = [nbformat.v4.new_output("execute_result", data=record("upgrade", Result("backup"), up)._repr_mimebundle_(),
                                           execution_count=1)]
    nb.cells = [cell]
    path = tmp_path / "upgrade.ipynb"
    nbformat.write(nb, path)
    assert cli._rolled_back(path) is rolled_back
    assert cli.ROLLED_BACK not in (0, 1, 2) and cli._rolled_back(tmp_path / "missing.ipynb") is False


def test_known_failure_signatures_are_named():
    found = diagnose.match([
        ("node lab-node1", "error creating vxlan interface: file exists"),
        ("hub task 1", 'invalid mount config for type "bind": bind source path does not exist: /srv/hubops-users'),
        ("service x", "no suitable node (scheduling constraints not satisfied on 3 nodes)"),
        ("hub log", "[E 2026-01-01 hubops] hubops: cannot prepare the home /srv/u/alice (owner 1000:100)"),
    ])
    assert [f["recovery"] for f in found] == ["stale-vxlan", "shared-path-missing", "no-suitable-node",
                                              "home-not-writable"]
    assert "restart the Docker engine" in found[0]["do"]


def test_a_healthy_hub_log_matches_no_signature():
    healthy = """[I 2026-11-26 05:29:01.123 JupyterHub app:3354] Running JupyterHub version 5.5.4
[I 2026-11-26 05:29:01.200 alembic.runtime.migration migration:207] Context impl SQLiteImpl.
[I 2026-11-26 05:29:01.201 alembic.runtime.migration migration:210] Will assume non-transactional DDL.
[I 2026-11-26 05:29:01.300 JupyterHub app:2900] Using Spawner: hubops.inhub.spawner.HubopsSpawner
[I 2026-11-26 05:29:02.000 JupyterHub service:385] Starting managed service idle-culler
[I 2026-11-26 05:29:02.100 JupyterHub app:3600] JupyterHub is now running at https://:8000/
[I 2026-11-26 05:29:09.000 JupyterHub log:192] 200 GET /hub/health (@127.0.0.1) 1.20ms"""
    assert diagnose.match(("hub log", ln) for ln in healthy.splitlines()) == []


def test_the_hub_log_is_read_for_a_bounded_time():
    """Docker 20.10's service log stream sometimes never ends: diagnose shows the lines that came and says
    so, instead of hanging. The service here is the smallest stand-in for docker-py's Service (its
    `logs` generator), one that gives two lines and then blocks like the engine's stream."""
    import threading as th

    from hubops.ops import diagnose

    release = th.Event()

    class Stuck:
        def logs(self, **kwargs):
            assert kwargs["tail"] == 5 and kwargs["timestamps"]
            yield b"2026-12-02T01:00:02.000000000Z second line\n"
            yield b"2026-12-02T01:00:01.000000000Z first line\n"
            release.wait(30)

    class Ends:
        def logs(self, **kwargs):
            yield b"2026-12-02T01:00:01.000000000Z only line\n"

    lines = diagnose.hub_log(Stuck(), 5, timeout=0.5)
    returned_while_blocked = not release.is_set()
    release.set()
    assert returned_while_blocked
    assert lines[:2] == ["first line", "second line"], lines
    assert "had not ended after 0.5 s" in lines[2], lines
    assert diagnose.hub_log(Ends(), 5, timeout=5) == ["only line"]
