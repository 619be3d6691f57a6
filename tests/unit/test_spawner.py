"""hubops's spawner (hubops/inhub/spawner.py) without an engine, against the real dockerspawner and
jupyterhub releases the hub image pins: what it may import (it runs in the hub image, alone), how the
generated config's settings reach it through JupyterHub's own User and ORM objects, users' homes as
mounts, shared-path home creation, the spawner state across a hub restart, and a swarm without a
leader. Its behaviour with real Swarm services (task polling, stop, node-local pinning, a shared-path
home mounted) is in tests/integration/test_spawner_swarm.py, in a real swarm that loses its quorum in
tests/integration/test_spawner_quorum.py."""
from __future__ import annotations

import ast
import asyncio
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import threading
import time
from importlib import metadata
from pathlib import Path

import docker.errors
import dockerspawner
import pytest
from traitlets import TraitError
from traitlets.config import Config

from hubops.stages import apiproxy, deploy
from hubops.inhub import spawner as spawner_module
from hubops.inhub.spawner import HubopsSpawner
from hubops.core.params import load_params
from tests.helpers import PROJECT, hub_config, hub_spawner, make_params

INHUB = PROJECT / "hubops" / "inhub"
# What code in the hub may import besides the standard library: the hub image's packages.
HUB_IMAGE_PACKAGES = {"jupyterhub", "dockerspawner", "docker", "traitlets", "tornado"}


def params(tmp_path: Path, extra: str = ""):
    return load_params(make_params(tmp_path, "spu", port=18101, subnet="10.161.250.0/24", extra=extra))


# -- the module: real dockerspawner, what it imports, how the hub image holds it -----------------
def _pins(text: str) -> dict[str, str]:
    return {m[1].lower(): m[2] for m in re.finditer(r'^"?([A-Za-z0-9_.-]+)==([^"\s,#]+)', text, re.M)}


def test_tests_use_the_releases_the_hub_image_pins():
    image = _pins((PROJECT / "images/hub/requirements.txt").read_text())
    extras = _pins("\n".join(line.strip() for line in (PROJECT / "pyproject.toml").read_text().split('"')
                             if "==" in line))
    for pkg in ("jupyterhub", "dockerspawner"):
        assert extras[pkg] == image[pkg], f"pyproject.toml's test extra pins {pkg}=={extras[pkg]}, the hub image {image[pkg]}"
        assert metadata.version(pkg) == image[pkg], f"installed {pkg} {metadata.version(pkg)}: pip install -e '.[test]'"
    assert issubclass(HubopsSpawner, dockerspawner.SwarmSpawner)
    assert "site-packages" in dockerspawner.__file__, dockerspawner.__file__  # the release, no stand-in


def test_inhub_imports_only_the_standard_library_and_the_hub_image_s_packages():
    allowed = set(sys.stdlib_module_names) | HUB_IMAGE_PACKAGES | {"__future__"}
    files = sorted(INHUB.glob("*.py"))
    assert {f.name for f in files} >= {"__init__.py", "spawner.py"}
    bad = []
    for f in files:
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = ["." * node.level + (node.module or "")]
            else:
                continue
            bad += [f"{f.name}:{node.lineno} imports {n}" for n in names if n.split(".")[0] not in allowed]
    assert not bad, "hubops/inhub runs in the hub image, alone: " + "; ".join(bad)
    assert "never another" in (INHUB / "__init__.py").read_text() and "never another" in (INHUB / "spawner.py").read_text()


def test_the_module_imports_alone_as_the_hub_image_installs_it(tmp_path):
    """The hub image holds hubops/inhub and nothing else of hubops (no hubops/__init__.py): the
    config's import must work so, loading no other hubops module."""
    root = tmp_path / "opt-hubops-inhub"
    shutil.copytree(INHUB, root / "hubops" / "inhub", ignore=shutil.ignore_patterns("__pycache__"))
    site = sysconfig.get_paths()["purelib"]
    code = ("import sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]\n"
            "from hubops.inhub.spawner import HubopsSpawner\n"
            "import hubops, json\n"
            "print(json.dumps({'hubops_file': hubops.__file__, 'path': list(hubops.__path__),\n"
            "                  'modules': sorted(m for m in sys.modules if m.split('.')[0] == 'hubops')}))\n")
    # -S: no site-packages .pth files, so the editable install of the whole hubops is out of reach.
    out = subprocess.run([sys.executable, "-S", "-c", code, str(root), site], capture_output=True, text=True,
                         cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["hubops_file"] is None and seen["path"] == [str(root / "hubops")], seen  # a namespace package
    assert seen["modules"] == ["hubops", "hubops.inhub", "hubops.inhub.spawner"], seen


def test_the_hub_image_installs_the_module_and_its_tag_covers_it(tmp_path):
    from hubops.stages import images

    dockerfile = (PROJECT / "images/hub/Dockerfile").read_text()
    assert "COPY hubops/inhub /opt/hubops-inhub/hubops/inhub" in dockerfile
    assert 'python -c "import hubops.inhub.spawner' in dockerfile  # a broken module fails the build
    assert images.CONTEXT_EXTRAS["hub"] == {"hubops/inhub": INHUB}
    base = "sha256:" + "a" * 64
    ref = images.image_ref("hub", images_dir=PROJECT / "images", base_id=base, extra_ca_digest=None)
    copy = tmp_path / "inhub"
    shutil.copytree(INHUB, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert images.image_ref("hub", images_dir=PROJECT / "images", base_id=base, extra_ca_digest=None,
                            extras={"hubops/inhub": copy}) == ref
    (copy / "__pycache__").mkdir()
    (copy / "__pycache__" / "spawner.cpython-311.pyc").write_bytes(b"\0")  # caches are not the context
    assert images.image_ref("hub", images_dir=PROJECT / "images", base_id=base, extra_ca_digest=None,
                            extras={"hubops/inhub": copy}) == ref
    (copy / "spawner.py").write_text((copy / "spawner.py").read_text() + "\n# changed\n")
    changed = images.image_ref("hub", images_dir=PROJECT / "images", base_id=base, extra_ca_digest=None,
                               extras={"hubops/inhub": copy})
    assert changed != ref, "a change to the spawner must give another hub image tag (a deploy rebuilds it)"
    single = images.image_ref("singleuser", images_dir=PROJECT / "images", base_id=base, extra_ca_digest=None)
    assert single == images.image_ref("singleuser", images_dir=PROJECT / "images", base_id=base,
                                      extra_ca_digest=None, extras={})  # the single-user image has no extras


# -- settings: the generated config's data, on the spawner JupyterHub makes ----------------------
def test_config_settings_reach_the_spawner_jupyterhub_makes(tmp_path):
    users = tmp_path / "homes"
    p = params(tmp_path, f"storage: {{users: {{mode: shared-path, path: {users}, uid: 1234, gid: 99}}}}")
    cfg = hub_config(p)
    assert cfg.JupyterHub.spawner_class is HubopsSpawner
    s = hub_spawner(cfg, "alice")
    assert type(s) is HubopsSpawner
    # SwarmSpawner's settings (section SwarmSpawner) and hubops's own (section HubopsSpawner)
    assert (s.image, s.network_name, s.use_internal_ip, s.extra_endpoint_spec) == (
        "hubops-singleuser:abc", "hubops-spu", True, {"mode": "dnsrr"})
    assert s.object_name == "hubops-spu-user-alice" and s.cmd == ["jupyterhub-singleuser"]
    assert (s.home_mode, s.home_shared_path, s.home_uid, s.home_gid, s.home_target) == (
        "shared-path", str(users), 1234, 99, "/home/jovyan")
    assert s.home_labels == {"hubops.managed": "true", "hubops.deployment": "spu", "hubops.stage": "user-server",
                             "hubops.role": "user-home"}
    # what JupyterHub gives every spawner, from its own objects
    assert s.user.name == "alice" and s.hub.api_url == "http://127.0.0.1:8081/hub/api"
    assert s.get_env()["JUPYTERHUB_USER"] == "alice"


def test_a_bad_home_mode_is_refused_by_name():
    cfg = Config()
    cfg.JupyterHub.spawner_class = HubopsSpawner
    cfg.HubopsSpawner.home_mode = "nfs"
    with pytest.raises(TraitError, match="home_mode"):
        hub_spawner(cfg, "alice")


# -- users' homes ------------------------------------------------------------------------------
def test_no_storage_leaves_swarmspawner_s_mounts(tmp_path):
    s = hub_spawner(hub_config(params(tmp_path, "storage: {users: {mode: none}}")), "alice")  # asked for
    assert s.home_mode == "none" and s.mounts == []
    s.volumes = {"/srv/data": "/data"}  # SwarmSpawner's own volumes setting still works
    assert s.mounts == [{"Target": "/data", "Source": "/srv/data", "Type": "bind", "ReadOnly": False}]


def test_node_local_home_is_a_labelled_volume_per_user(tmp_path):
    s = hub_spawner(hub_config(params(tmp_path, "storage: {users: {mode: node-local}}")), "alice")
    [m] = s.mounts
    assert (m["Type"], m["Source"], m["Target"]) == ("volume", "hubops-spu-home-alice", "/home/jovyan")
    labels = m["VolumeOptions"]["Labels"]
    assert (labels["hubops.deployment"], labels["hubops.role"], labels["hubops.user"]) == ("spu", "user-home", "alice")


def test_volume_driver_home_per_user_with_options(tmp_path):
    p = params(tmp_path, """
        storage:
          users:
            mode: volume-driver
            driver: local
            driver_opts: {type: nfs, o: "addr=10.0.0.5,rw", device: ":/export/homes/{username}"}
    """)
    [m] = hub_spawner(hub_config(p), "alice").mounts
    assert m["Source"] == "hubops-spu-home-alice"
    assert m["VolumeOptions"]["DriverConfig"] == {
        "Name": "local", "Options": {"device": ":/export/homes/alice", "o": "addr=10.0.0.5,rw", "type": "nfs"}}


def test_shared_path_home_is_created_with_its_owner_and_bind_mounted(tmp_path):
    users = tmp_path / "users"
    users.mkdir()
    uid, gid = (1000, 100) if os.geteuid() == 0 else (os.getuid(), os.getgid())
    p = params(tmp_path, f"storage: {{users: {{mode: shared-path, path: {users}, uid: {uid}, gid: {gid}}}}}")
    s = hub_spawner(hub_config(p), "alice")
    [m] = s.mounts
    assert m == docker.types.Mount("/home/jovyan", f"{users}/alice", type="bind")
    s.prepare_home_dir()
    st = (users / "alice").stat()
    assert (st.st_uid, st.st_gid, oct(st.st_mode & 0o777)) == (uid, gid, "0o700")
    (users / "alice" / "work.txt").write_text("kept")
    s.prepare_home_dir()  # again: the home is kept as it is
    assert (users / "alice" / "work.txt").read_text() == "kept"
    # The hub (not root) no longer mounts the shared path: its Docker API door does, at the same
    # place, and creates homes there (stages/apiproxy.py).
    spec = deploy.service_spec(p, hub_image="h:1", secret_refs=[], config_refs=[])
    assert str(users) not in {m["Source"] for m in spec["task_template"]["ContainerSpec"]["Mounts"]}
    door = apiproxy.service_spec(p, image="h:1", constraints=[])
    assert {"Target": str(users), "Source": str(users), "Type": "bind", "ReadOnly": False} in \
        door["task_template"]["ContainerSpec"]["Mounts"]


def test_shared_path_not_mounted_says_what_to_do(tmp_path):
    p = params(tmp_path, f"storage: {{users: {{mode: shared-path, path: {tmp_path / 'not-mounted'}}}}}")
    s = hub_spawner(hub_config(p), "bob")
    # start() prepares the home before it asks Docker anything
    with pytest.raises(RuntimeError, match=r"Is .*not-mounted mounted on the hub's node"):
        asyncio.run(s.start())


def test_home_node_survives_a_hub_restart(tmp_path):
    """node-local: the node of the home is in the spawner's state, which the hub keeps in its database;
    a new hub process loads it again (that a stop keeps it is in test_spawner_swarm.py)."""
    from jupyterhub import orm

    cfg = hub_config(params(tmp_path, "storage: {users: {mode: node-local}}"))
    db = orm.new_session_factory("sqlite://")()
    s = hub_spawner(cfg, "alice", db)
    s.object_id, s.home_node = "svc1", "node-abc"
    assert s.get_state() == {"object_id": "svc1", "object_name": "hubops-spu-user-alice", "home_node": "node-abc"}
    s.orm_spawner.state = s.get_state()  # what the hub does after a start or stop
    db.commit()
    again = hub_spawner(cfg, "alice", db)  # a new User object, as after a hub restart
    assert again is not s and (again.home_node, again.object_id) == ("node-abc", "svc1")


# -- a swarm without a leader --------------------------------------------------------------------
NO_LEADER = ("rpc error: code = Unknown desc = The swarm does not have a leader. It's possible that too few "
             "managers are online. Make sure more than half of the managers are online.")


class _Manager(http.server.BaseHTTPRequestHandler):
    """Answers the Docker API as a swarm manager does in the state `answer` names (set by the test):
    "no-leader" (its managers lost their quorum), "unhealthy" (another HTTP 500), "gone" (404),
    "running" (the service and its running task)."""

    answer = "running"
    seen: list[str] = []

    def do_GET(self):  # noqa: N802 - http.server's name
        self.seen.append(self.path)
        code, body = 200, {}
        if self.answer == "no-leader":
            code, body = 500, {"message": NO_LEADER}
        elif self.answer == "unhealthy":
            code, body = 500, {"message": "node is unhealthy"}
        elif self.path.split("?")[0].rsplit("/", 2)[-2:-1] == ["services"] and self.answer == "gone":
            code, body = 404, {"message": "service hubops-spu-user-alice not found"}
        elif "/services/" in self.path:
            body = {"ID": "svc1", "Spec": {"Name": "hubops-spu-user-alice"}}
        elif "/tasks" in self.path:
            body = [{"ID": "t1", "ServiceID": "svc1", "NodeID": "n1", "Status": {"State": "running"},
                     "DesiredState": "running"}]
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def manager(monkeypatch):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Manager)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    # dockerspawner keeps one docker client per class: this test's own, then back to none.
    monkeypatch.setattr(HubopsSpawner, "_client", None)
    monkeypatch.setattr(dockerspawner.SwarmSpawner, "_client", None)
    monkeypatch.setattr(_Manager, "seen", [])
    yield f"tcp://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_a_swarm_without_leader_does_not_make_the_hub_drop_running_servers(tmp_path, manager, monkeypatch):
    """SwarmSpawner (real, 14.0) takes Docker's HTTP 500 for a service "on an unhealthy node" and polls
    the server as stopped; when that 500 says the swarm has no leader, hubops's spawner says it runs.
    The Docker answers come from a local HTTP server answering as a leaderless manager does (the text
    is Docker's); a real swarm that loses its quorum is in tests/integration/test_spawner_quorum.py."""
    cfg = hub_config(params(tmp_path))
    cfg.SwarmSpawner.client_kwargs = {"base_url": manager, "version": "1.41"}
    s = hub_spawner(cfg, "alice")
    plain = dockerspawner.SwarmSpawner(user=s.user, hub=s.hub, config=cfg, orm_spawner=s.orm_spawner)
    plain.object_name = s.object_name

    def poll(spawner, answer):
        monkeypatch.setattr(_Manager, "answer", answer)
        return asyncio.run(spawner.poll())

    assert poll(s, "running") is None and s.object_id == "svc1"
    assert poll(plain, "no-leader") == 0, "SwarmSpawner alone calls the server stopped"
    assert poll(s, "no-leader") is None, "still running, as far as anyone can tell"
    assert s.object_id == "svc1", "and its service is not forgotten"
    assert any("/services/hubops-spu-user-alice" in path for path in _Manager.seen)
    # Any other trouble: SwarmSpawner's own verdict.
    assert poll(s, "unhealthy") == 0 and s.object_id == ""
    assert poll(s, "gone") == 0
    assert spawner_module.no_leader(docker.errors.APIError("x", explanation=NO_LEADER))


# -- the spawner's own wait for the server's HTTP port --------------------------------------------
def test_wait_until_answering_returns_once_the_server_answers(tmp_path):
    from jupyterhub import orm

    s = hub_spawner(hub_config(params(tmp_path)), "alice")
    s.http_timeout = 30
    s.orm_spawner.server = orm.Server(base_url="/user/alice/")  # as User.spawn sets it before start()
    s.user.db.commit()
    probe = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    port = probe.server_address[1]
    probe.server_close()  # the port is free until the "server" starts
    served: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            served.append(self.path)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    httpd = []

    def late():  # the server listens 0.6 s after the wait began
        time.sleep(0.6)
        httpd.append(http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler))
        httpd[0].serve_forever()

    threading.Thread(target=late, daemon=True).start()
    t0 = time.monotonic()
    asyncio.run(s.wait_until_answering("127.0.0.1", port))
    took = time.monotonic() - t0
    httpd[0].shutdown()
    assert served == ["/user/alice/api"], served
    print(f"\nwait_until_answering returned {took:.2f} s after the wait began (the server listened after 0.6 s)")
