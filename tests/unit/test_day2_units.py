"""Day-2 operations without an engine: parameters, the hub configuration they produce (users'
homes, idle culler) loaded into a traitlets Config, the spawner subclass's behaviour against a
stand-in SwarmSpawner, backup checking (corrupt and partial backups refused), upgrade planning
and diagnose's failure signatures."""
from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import sys
import textwrap
import types
from pathlib import Path
from hubops.core.paths import PROJECT as PROJECT_ROOT

import docker.types
import pytest
from traitlets import Dict, Unicode
from traitlets.config import Config, LoggingConfigurable

from hubops.ops import backup, diagnose, upgrade
from hubops.stages import deploy
from hubops.hub import config as hubconfig
from hubops.core.errors import BackupError, HubopsError, ParameterError
from hubops.core.params import load_params
from tests.helpers import make_params


def params(tmp_path: Path, extra: str = ""):
    return load_params(make_params(tmp_path, "day2u", port=8460, subnet="10.242.9.0/24", extra=extra))


# -- parameters ------------------------------------------------------------------------------
def test_defaults_keep_nothing_and_cull_after_an_hour(tmp_path):
    p = params(tmp_path)
    assert p.storage.users.mode == "none"
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

    p = params(tmp_path, f"backup: {{dir: {OUTPUTS / 'backups'}}}")
    with pytest.raises(ParameterError, match="backup.dir: .* is under"):
        backup.backup_root(p)
    p = params(tmp_path, "backup: {dir: saved}")
    assert backup.backup_root(p) == tmp_path / "saved"  # relative to the parameter file


# -- the hub configuration ----------------------------------------------------------------
SECRETS = {"hubops-cookie-secret": "ab" * 32, "hubops-proxy-token": "proxy-token-value",
           "hubops-crypt-key": "cd" * 32, "hubops-api-token": "api-token-value",
           "hubops-user-password": "user-password-value", "hubops-admin-password": "admin-password-value-32"}


class FakeUser:
    def __init__(self, name):
        self.name = name


class SwarmSpawner(LoggingConfigurable):  # named as dockerspawner names it: config sections go by class name
    """What the subclass uses of dockerspawner's SwarmSpawner (not installed here)."""

    extra_placement_spec = Dict(config=True)
    image = Unicode(config=True)
    network_name = Unicode(config=True)
    tasks: list = []
    http_timeout = 0.3
    address = None  # where start() says the server is; None: a name that does not resolve here

    def __init__(self, user, **kw):
        super().__init__(**kw)
        self.user = user
        self.escaped_name = user.name
        self.object_id = None
        self.started_with: list = []

    def load_state(self, state):
        self.object_id = state.get("object_id")

    def get_state(self):
        return {"object_id": self.object_id} if self.object_id else {}

    def clear_state(self):
        self.object_id = None

    async def start(self):
        self.started_with.append(dict(self.extra_placement_spec))
        self.object_id = "svc1"
        return self.address or ("hubops-day2u-user-" + self.user.name, 8888)

    @property
    def mounts(self):
        return []

    async def get_task(self):
        return {"NodeID": "node-abc"}

    @property
    def object_name(self):
        return "hubops-day2u-user-" + self.user.name

    async def stop(self, now=False):
        self.tasks = [{"ServiceID": self.object_id, "Status": {"State": s}} for s in ("running", "running", "complete")]

    nodes = {"node-abc", "w1"}

    async def docker(self, method, *args, **kw):
        if method == "inspect_node":
            if args[0] not in self.nodes:
                import docker.errors

                raise docker.errors.NotFound(f"node {args[0]} not found")
            return {"ID": args[0]}
        assert method == "tasks" and kw == {"filters": {"name": self.object_name}}
        return [self.tasks.pop(0)] if self.tasks else []


def load_config(p, tmp_path, monkeypatch) -> Config:
    d = tmp_path / "secrets"
    d.mkdir(exist_ok=True)
    for k, v in SECRETS.items():
        (d / k).write_text(v)
    (tmp_path / "userlist-in-hub").write_text(p.userlist_text())
    monkeypatch.setenv("HUBOPS_SECRETS_DIR", str(d))
    monkeypatch.setenv("HUBOPS_USERLIST", str(tmp_path / "userlist-in-hub"))
    monkeypatch.setitem(sys.modules, "dockerspawner", types.SimpleNamespace(SwarmSpawner=SwarmSpawner))
    src = hubconfig.render(p, singleuser_image="hubops-singleuser:abc")
    for v in SECRETS.values():
        assert v not in src
    cfg = Config()
    exec(compile(src, "jupyterhub_config.py", "exec"), {"get_config": lambda: cfg})
    return cfg


def spawner(cfg: Config, name: str):
    cls = cfg.JupyterHub.spawner_class
    assert isinstance(cls, type) and issubclass(cls, SwarmSpawner)
    return cls(FakeUser(name), config=cfg)


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


def test_no_storage_still_uses_hubops_spawner_without_mounts(tmp_path, monkeypatch):
    cfg = load_config(params(tmp_path), tmp_path, monkeypatch)
    s = spawner(cfg, "alice")
    assert s.mounts == []


def test_a_new_service_s_task_is_asked_for_again_soon(tmp_path, monkeypatch):
    """SwarmSpawner sleeps 1 s when a new service has no task yet; hubops's spawner asks again
    every 0.05 s while it creates the service, and only then."""
    import asyncio
    import time

    cfg = load_config(params(tmp_path), tmp_path, monkeypatch)
    s = spawner(cfg, "alice")
    calls = []

    async def fake_docker(self, method, *args, **kw):
        calls.append(method)
        return [{"ID": "t1"}] if len(calls) >= 3 else []

    monkeypatch.setattr(SwarmSpawner, "docker", fake_docker)

    async def create_like_swarmspawner(self):  # what dockerspawner's create_object does
        tasks = await self.docker("tasks", filters={"service": "x"})
        return tasks

    monkeypatch.setattr(SwarmSpawner, "create_object", create_like_swarmspawner, raising=False)
    t0 = time.monotonic()
    assert asyncio.run(s.create_object()) == [{"ID": "t1"}]
    assert calls == ["tasks"] * 3 and time.monotonic() - t0 < 0.5
    calls.clear()
    assert asyncio.run(s.docker("tasks", filters={"service": "x"})) == []  # not creating: one call, no wait
    assert calls == ["tasks"]


def test_start_returns_once_the_server_answers(tmp_path, monkeypatch):
    """The spawner's own close check: start() returns as soon as the server answers HTTP."""
    import asyncio
    import http.server
    import socket
    import threading
    import time

    cfg = load_config(params(tmp_path), tmp_path, monkeypatch)
    s = spawner(cfg, "alice")
    s.http_timeout = 10
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    s.address = ("127.0.0.1", port)
    server = http.server.HTTPServer
    httpd = []

    def late():  # the server starts listening 0.6 s after the spawn began
        time.sleep(0.6)
        httpd.append(server(("127.0.0.1", port), http.server.SimpleHTTPRequestHandler))
        httpd[0].serve_forever()

    threading.Thread(target=late, daemon=True).start()
    t0 = time.monotonic()
    assert asyncio.run(s.start()) == ("127.0.0.1", port)
    took = time.monotonic() - t0
    httpd[0].shutdown()
    assert 0.6 <= took < 1.5, took


def test_shared_path_home_is_a_bind_mount_created_with_its_owner(tmp_path, monkeypatch):
    users = tmp_path / "users"
    users.mkdir()
    uid, gid = (1000, 100) if os.geteuid() == 0 else (os.getuid(), os.getgid())
    p = params(tmp_path, f"storage: {{users: {{mode: shared-path, path: {users}, uid: {uid}, gid: {gid}}}}}")
    cfg = load_config(p, tmp_path, monkeypatch)
    assert cfg.SwarmSpawner.image == "hubops-singleuser:abc"  # SwarmSpawner's settings reach the subclass
    s = spawner(cfg, "alice")
    assert s.image == "hubops-singleuser:abc"
    [m] = s.mounts
    assert m == docker.types.Mount("/home/jovyan", f"{users}/alice", type="bind")
    asyncio.run(s.start())
    st = (users / "alice").stat()
    assert (st.st_uid, st.st_gid) == (uid, gid) and oct(st.st_mode & 0o777) == "0o700"
    # The hub's own service mounts the shared path at the same place, to create homes there.
    spec = deploy.service_spec(p, hub_image="h:1", secret_refs=[], config_refs=[])
    mounts = spec["task_template"]["ContainerSpec"]["Mounts"]
    assert {"Target": str(users), "Source": str(users), "Type": "bind", "ReadOnly": False} in mounts


def test_shared_path_missing_says_what_to_do(tmp_path, monkeypatch):
    p = params(tmp_path, f"storage: {{users: {{mode: shared-path, path: {tmp_path / 'not-mounted'}}}}}")
    s = spawner(load_config(p, tmp_path, monkeypatch), "bob")
    with pytest.raises(RuntimeError, match="Is .*not-mounted mounted on the hub's node"):
        asyncio.run(s.start())


def test_node_local_home_pins_later_servers_to_its_node(tmp_path, monkeypatch):
    p = params(tmp_path, "storage: {users: {mode: node-local}}")
    cfg = load_config(p, tmp_path, monkeypatch)
    s = spawner(cfg, "alice")
    [m] = s.mounts
    assert m["Type"] == "volume" and m["Source"] == "hubops-day2u-home-alice" and m["Target"] == "/home/jovyan"
    labels = m["VolumeOptions"]["Labels"]
    assert labels["hubops.deployment"] == "day2u" and labels["hubops.role"] == "user-home" and labels["hubops.user"] == "alice"
    # First server: anywhere Swarm likes; the node it landed on is remembered in the spawner state.
    asyncio.run(s.start())
    assert s.started_with[0]["constraints"] == []
    state = s.get_state()
    assert state["home_node"] == "node-abc"
    s.clear_state()  # the server stops: the home's node stays in the state
    assert s.get_state() == {"home_node": "node-abc"}
    # The hub restarts: a new spawner object loads the state; its next server goes to that node.
    again = spawner(cfg, "alice")
    again.load_state(json.loads(json.dumps(state)))
    asyncio.run(again.start())
    assert again.started_with[0]["constraints"] == ["node.id==node-abc"]
    asyncio.run(again.start())  # twice: the constraint is not added again
    assert again.started_with[1]["constraints"] == ["node.id==node-abc"]


def test_node_local_keeps_the_workers_constraint(tmp_path, monkeypatch):
    f = tmp_path / "multi.yaml"
    (tmp_path / "userlist").write_text("operator admin\n")
    f.write_text(textwrap.dedent("""
        deployment: day2m
        hosts:
          managers: [{name: m, url: "ssh://a@m", advertise_addr: 10.0.0.1}]
          workers: [{name: w, url: "ssh://a@w", advertise_addr: 10.0.0.2}]
        auth: {mode: shared-password, userlist: userlist}
        storage: {users: {mode: node-local}}
    """))
    s = spawner(load_config(load_params(f), tmp_path, monkeypatch), "alice")
    s.home_node = "w1"
    asyncio.run(s.start())
    assert s.started_with[0]["constraints"] == ["node.role==worker", "node.id==w1"]


def test_volume_driver_home_per_user_with_options(tmp_path, monkeypatch):
    p = params(tmp_path, """
        storage:
          users:
            mode: volume-driver
            driver: local
            driver_opts: {type: nfs, o: "addr=10.0.0.5,rw", device: ":/export/homes/{username}"}
    """)
    s = spawner(load_config(p, tmp_path, monkeypatch), "alice")
    [m] = s.mounts
    assert m["Source"] == "hubops-day2u-home-alice"
    assert m["VolumeOptions"]["DriverConfig"] == {
        "Name": "local", "Options": {"type": "nfs", "o": "addr=10.0.0.5,rw", "device": ":/export/homes/alice"}}


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
[I 2026-11-26 05:29:01.300 JupyterHub app:2900] Using Spawner: __main__.HubopsSpawner
[I 2026-11-26 05:29:02.000 JupyterHub service:385] Starting managed service idle-culler
[I 2026-11-26 05:29:02.100 JupyterHub app:3600] JupyterHub is now running at https://:8000/
[I 2026-11-26 05:29:09.000 JupyterHub log:192] 200 GET /hub/health (@127.0.0.1) 1.20ms"""
    assert diagnose.match(("hub log", ln) for ln in healthy.splitlines()) == []


def test_stop_waits_until_the_old_container_is_gone(tmp_path, monkeypatch):
    s = spawner(load_config(params(tmp_path, "storage: {users: {mode: node-local}}"), tmp_path, monkeypatch), "alice")
    asyncio.run(s.start())
    asyncio.run(s.stop())
    assert s.tasks == [], "polled the removed service's tasks until none was live"


def test_node_local_pin_to_a_node_that_left_the_swarm_is_dropped(tmp_path, monkeypatch):
    s = spawner(load_config(params(tmp_path, "storage: {users: {mode: node-local}}"), tmp_path, monkeypatch), "alice")
    s.load_state({"home_node": "gone-node"})  # e.g. a database restored onto another cluster
    asyncio.run(s.start())
    assert s.started_with[0]["constraints"] == []  # anywhere, instead of "no suitable node" forever
    assert s.get_state()["home_node"] == "node-abc"
