"""Named servers and shared data on the local single-node swarm, with a real hub deployed by
`hubops deploy` (deployment `named-RUN`, a free port and subnet). In order:

1. shared data: alice (group physics) and bob (no group) start their servers; inside alice's server
   the read-only data set is readable and not writable, the group folder is writable (the server's
   process has the group's gid, the file belongs to the group); bob's server has the data set and no
   group folder, and a process like bob's server (the single-user image as 1000:100, capabilities
   dropped) cannot write into the folder even when it is mounted;
2. named servers and the culler: alice starts two named servers, each its own Swarm service named
   and labelled for its server; one is kept busy through the proxy, the idle one is culled by the
   hub's idle culler (timeout 30 s), the busy one keeps running; `ops status` shows both servers;
3. backup and restore: the backup's manifest lists the named servers, a restore brings their
   records back;
4. a third named server is refused (the limit is 2); teardown stops the named servers through the
   hub and removes every labelled object.
"""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import docker
import pytest

from hubops.core.engine import Clients
from hubops.core.errors import VerifyError
from hubops.core.params import load_params
from hubops.core.record import read_record
from hubops.hub.running import HubAPI, server_path
from hubops.ops import teardown
from tests.helpers import ensure_swarm, free_port, free_subnet, hubops_cli, make_params, run_name

pytestmark = [pytest.mark.engine, pytest.mark.e2e, pytest.mark.slow]  # a deployment of its own: 5-10 minutes
DEPLOYMENT = run_name("named")
GID = 2001
CULL_TIMEOUT = 30
HUB_GAPS: list[str] = []  # requests that found the hub restarting (see servers_of)


def labelled(kind: str = "") -> list[str]:
    client = docker.from_env()
    out = []
    for k, coll in (("service", client.services), ("secret", client.secrets), ("config", client.configs),
                    ("network", client.networks), ("volume", client.volumes)):
        if not kind or kind == k:
            out += [f"{k} {o.name}" for o in coll.list(filters={"label": f"hubops.deployment={DEPLOYMENT}"})]
    return out


def last_record(outputs: Path) -> dict:
    run_json = sorted(outputs.glob("*/run.json"), key=lambda f: f.stat().st_mtime)[-1]
    run = json.loads(run_json.read_text())
    return read_record(json.loads((run_json.parent / run["stages"][-1]["notebook"]).read_text()))


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("named")
    data, shared, outputs = tmp / "data" / "census", tmp / "shared", tmp / "outputs"
    data.mkdir(parents=True)
    (data / "readme.txt").write_text("population 42\n")
    data.chmod(0o755)
    (data / "readme.txt").chmod(0o644)
    shared.mkdir()  # the shared storage's folder for group folders (physics is made in it by 70-storage)
    ensure_swarm()
    params = make_params(tmp, DEPLOYMENT, port=free_port(), subnet=free_subnet(),
                         users="operator admin\nalice @physics\nbob @chem\n", extra=f"""
        spawner: {{named_servers: 2}}
        culler: {{timeout: {CULL_TIMEOUT}, every: 5}}
        backup: {{dir: {tmp / 'backups'}}}
        shared_data:
          datasets:
            - {{name: census, path: {data}}}
            - {{name: census2, driver: local, driver_opts: {{type: none, o: bind, device: {data}}}}}
          group_folders:
            - {{group: physics, gid: {GID}, path: {shared / 'physics'}}}
            - {{group: chem, gid: {GID + 1}, driver: local}}  # a volume (one node: shared by its servers)
    """)
    assert not labelled(), f"deployment {DEPLOYMENT} exists already: {labelled()}"
    t0 = time.monotonic()
    res = hubops_cli("deploy", "-p", str(params), outputs=outputs)
    print(f"\ndeploy: {time.monotonic() - t0:.1f} s")
    p = load_params(params)
    if res.returncode != 0:
        teardown.teardown(p, Clients(p), remove_volumes=True, remove_user_data=True)
    assert res.returncode == 0, res.stderr[-4000:]
    state = {"p": p, "params": params, "outputs": outputs, "data": data, "folder": shared / "physics",
             "tmp": tmp, "torn_down": False}
    yield state
    try:  # the hub's last words, for a failure's reader
        svc = docker.from_env().services.get(p.hub_service)
        print("\nhub log (last 60 lines):\n" + b"".join(svc.logs(stdout=True, stderr=True, tail=60)).decode(errors="replace"))
    except docker.errors.NotFound:
        pass
    if not state["torn_down"] or labelled():
        teardown.teardown(p, Clients(p), remove_volumes=True, remove_user_data=True)
    assert not labelled(), f"left behind: {labelled()}"


def api_for(p) -> HubAPI:
    return HubAPI(p, timeout=30)


def servers_of(api: HubAPI, user: str, patience: float = 300) -> dict:
    """The user's servers as the hub lists them. On this shared 2-core machine under load the hub's
    healthcheck can fail and Swarm restart it: that is waited for (and counted), not a failure here."""
    t0 = time.monotonic()
    while True:
        try:
            return (api.user(user) or {}).get("servers") or {}
        except VerifyError as e:
            if time.monotonic() - t0 > patience:
                raise
            HUB_GAPS.append(str(e)[:100])
            time.sleep(2)


def wait_server(api: HubAPI, user: str, server: str = "", *, ready: bool, timeout: float = 180) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        found = servers_of(api, user).get(server)
        if (ready and found and found.get("ready")) or (not ready and not found):
            return time.monotonic() - t0
        time.sleep(0.5)
    raise AssertionError(f"server {user}/{server} not {'ready' if ready else 'stopped'} after {timeout} s")


def start(api: HubAPI, user: str, server: str = "") -> None:
    api.request("POST", server_path(user, server), ok=(201, 202))
    wait_server(api, user, server, ready=True)


def stop(api: HubAPI, user: str, server: str = "") -> None:
    api.request("DELETE", server_path(user, server), ok=(202, 204))
    wait_server(api, user, server, ready=False, timeout=90)


class keep_busy:
    """`with keep_busy(api, "/user/alice/busy") as touches:` a user working in those servers: a request
    through the proxy every 2 s, as a browser's would make (the culler then leaves them running)."""

    def __init__(self, api: HubAPI, *prefixes: str):
        self.api, self.prefixes, self.touches = api, prefixes, []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop.is_set():
            for prefix in self.prefixes:
                try:
                    self.touches.append(self.api.request("GET", f"{prefix}/api/status", ok=(200,), timeout=10).status_code)
                except Exception as e:  # noqa: BLE001 - kept, and the test's assertions decide
                    self.touches.append(repr(e)[:120])
            self.stop.wait(2)

    def __enter__(self) -> list:
        self.thread.start()
        return self.touches

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def container_of(user: str, server: str = ""):
    c = docker.from_env()
    found = [ct for ct in c.containers.list(filters={"label": [f"hubops.deployment={DEPLOYMENT}", f"hubops.user={user}"]})
             if ct.labels.get("hubops.server", "") == server]
    assert len(found) == 1, [ct.name for ct in found]
    return found[0]


def sh(container, script: str) -> tuple[int, str]:
    code, out = container.exec_run(["sh", "-c", script])
    return code, out.decode(errors="replace").strip()


def groups_of_pid1(container) -> set[str]:
    """The supplementary groups of the server's own process (PID 1 of the container: the server or its init)."""
    _, status = sh(container, "cat /proc/1/status")
    line = next(line for line in status.splitlines() if line.startswith("Groups:"))
    return set(line.split(":", 1)[1].split())


# -- 1. shared data ---------------------------------------------------------------------------
def test_group_members_write_the_shared_folder_and_data_sets_are_read_only(hub):
    p, folder = hub["p"], hub["folder"]
    st = folder.stat()
    assert (st.st_uid, st.st_gid, oct(st.st_mode & 0o7777)) == (0, GID, "0o2770"), "70-storage made it so"
    rec = hub["outputs"].glob(f"*-{DEPLOYMENT}-deploy/70-storage.ipynb")
    storage = read_record(json.loads(next(rec).read_text()))
    folders = [f for r in storage["results"] for f in r["facts"].get("group folders", [])]
    assert folders and folders[0]["owner and mode"] == f"0:{GID} 2770", folders
    api = api_for(p)
    start(api, "alice")
    with keep_busy(api, "/user/alice"):  # not culled (timeout 30 s) while bob's starts and the checks run
        start(api, "bob")
        with keep_busy(api, "/user/bob"):
            check_shared_data(hub)
    for user in ("alice", "bob"):
        stop(api, user)


def check_shared_data(hub):
    folder = hub["folder"]
    alice, bob = container_of("alice"), container_of("bob")

    # alice: the server's process has the group; she writes into the folder; the file is the group's
    assert str(GID) in groups_of_pid1(alice)
    code, out = sh(alice, "id -u; echo from-alice > /shared/physics/alice.txt && stat -c '%u:%g' /shared/physics/alice.txt")
    print(f"\nalice writes into /shared/physics: exit {code}: {out}")
    assert code == 0 and out.splitlines()[-1] == f"1000:{GID}", out
    assert (folder / "alice.txt").read_text() == "from-alice\n"
    # the data set: readable, not writable
    code, out = sh(alice, "cat /data/census/readme.txt")
    assert code == 0 and out == "population 42", out
    code, out = sh(alice, "echo x > /data/census/new.txt")
    print(f"alice writes into /data/census: exit {code}: {out}")
    assert code != 0 and "Read-only file system" in out, out
    assert not (hub["data"] / "new.txt").exists()

    # the same data set through a volume driver: read-only too
    code, out = sh(alice, "cat /data/census2/readme.txt; echo x > /data/census2/new.txt")
    assert "population 42" in out and code != 0 and "Read-only file system" in out, out

    # bob: the data sets, and not physics's folder or gid; his own group's folder, on a driver's volume
    assert str(GID) not in groups_of_pid1(bob) and str(GID + 1) in groups_of_pid1(bob)
    code, out = sh(bob, "cat /data/census/readme.txt")
    assert code == 0 and out == "population 42", out
    code, out = sh(bob, "stat -c '%u:%g %a' /shared/chem; echo from-bob > /shared/chem/bob.txt && stat -c '%u:%g' /shared/chem/bob.txt")
    print(f"bob writes into /shared/chem (a volume): exit {code}: {out}")
    assert code == 0 and out.splitlines() == [f"0:{GID + 1} 2770", f"1000:{GID + 1}"], out
    code, out = sh(alice, "ls /shared/chem")
    assert code != 0, f"chem's folder is mounted in alice's server: {out}"
    code, out = sh(bob, "echo from-bob > /shared/physics/bob.txt")
    print(f"bob writes into /shared/physics: exit {code}: {out}")
    assert code != 0 and not (folder / "bob.txt").exists(), out
    code, out = sh(bob, "ls -ld /shared/physics")
    assert code != 0, f"the folder is mounted in bob's server: {out}"
    # the folder's own permissions keep non-members out even where it is visible: a process as bob's
    # server runs (the single-user image, 1000:100, every capability dropped), the folder mounted
    image = bob.attrs["Config"]["Image"]
    c = docker.from_env()
    out = c.containers.run(image, ["sh", "-c", "id; ls /f 2>&1; echo x > /f/bob.txt 2>&1; echo exit=$?"],
                           user="1000:100", cap_drop=["ALL"], remove=True, network_mode="none",
                           mounts=[docker.types.Mount("/f", str(folder), type="bind")]).decode()
    print(f"non-member with the folder mounted: {out.strip()}")
    assert "Permission denied" in out and "exit=0" not in out and not (folder / "bob.txt").exists(), out


# -- 2. named servers and the culler ------------------------------------------------------------
def test_two_named_servers_the_idle_one_is_culled(hub):
    p, outputs = hub["p"], hub["outputs"]
    api = api_for(p)
    start(api, "alice", "busy")
    with keep_busy(api, "/user/alice/busy") as touches:
        start(api, "alice", "idle")
        t_idle = time.monotonic()
        c = docker.from_env()
        svcs = {s.attrs["Spec"]["Labels"].get("hubops.server"): s
                for s in c.services.list(filters={"label": [f"hubops.deployment={DEPLOYMENT}", "hubops.user=alice"]})}
        assert sorted(svcs) == ["busy", "idle"], sorted(svcs)
        assert svcs["busy"].name == f"hubops-{DEPLOYMENT}-user-alice--busy" and len(svcs["busy"].name) <= 63
        assert svcs["idle"].attrs["Spec"]["Labels"]["hubops.role"] == "user-server"

        st = hubops_cli("ops", "status", "-p", str(hub["params"]), outputs=outputs)
        assert st.returncode == 0, st.stderr[-3000:]
        facts = last_record(outputs)["results"][0]["facts"]
        servers = sorted(row["server"] for row in facts["services"] if row["user"] == "alice")
        assert servers == ["busy", "idle"], facts["services"]
        assert "alice/busy" in facts["users by node"][0]["users"] and "alice/idle" in facts["users by node"][0]["users"]

        while time.monotonic() - t_idle < CULL_TIMEOUT + 90:
            if "idle" not in servers_of(api, "alice"):
                break
            time.sleep(1)
        culled_after = time.monotonic() - t_idle
        servers = servers_of(api, "alice")
        print(f"\nidle named server culled {culled_after:.1f} s after it was ready (timeout {CULL_TIMEOUT} s, "
              f"checked every 5 s); busy touched {len(touches)} times through the proxy")
        assert "idle" not in servers, "the idle named server is still running"
        assert culled_after >= CULL_TIMEOUT - 10, "culled before its timeout"
        assert servers.get("busy", {}).get("ready"), f"the busy named server was stopped: {servers}"
        ok = sum(t == 200 for t in touches)
        print(f"busy answered {ok} of {len(touches)} requests through the proxy; the hub was found restarting "
              f"{len(HUB_GAPS)} times")
        assert ok >= len(touches) // 2, touches
    assert [s.name for s in docker.from_env().services.list(
        filters={"label": [f"hubops.deployment={DEPLOYMENT}", "hubops.user=alice"]})] == [svcs["busy"].name]
    logs = b"".join(docker.from_env().services.get(p.hub_service).logs(stdout=True, stderr=True, tail=600)).decode()
    assert "DELETE /hub/api/users/alice/servers/idle (idle-culler@" in logs  # the culler's own token


# -- 3. backup and restore --------------------------------------------------------------------
def test_backup_and_restore_keep_named_servers(hub):
    p, outputs = hub["p"], hub["outputs"]
    res = hubops_cli("ops", "backup", "-p", str(hub["params"]), outputs=outputs)
    assert res.returncode == 0, res.stderr[-3000:]
    folder = Path(last_record(outputs)["results"][0]["facts"]["path"])
    servers = json.loads((folder / "manifest.json").read_text())["database"]["servers"]
    assert {"user": "alice", "server": "busy", "running": True} in servers, servers
    assert {"user": "alice", "server": "idle", "running": False} in servers, servers
    t0 = time.monotonic()
    with keep_busy(api_for(p), "/user/alice/busy"):  # alice goes on working (requests fail while the hub is down)
        res = hubops_cli("ops", "restore", "-p", str(hub["params"]), "--set", f"backup={folder}",
                         "--set", "confirm=true", outputs=outputs)
    print(f"\nrestore: {time.monotonic() - t0:.1f} s")
    assert res.returncode == 0, res.stderr[-3000:]
    checks = {i["target"]: i["detail"] for r in last_record(outputs)["results"] for i in r["items"]}
    assert "alice/busy" in checks["server records"] and "alice/idle" in checks["server records"], checks
    api = api_for(p)
    known = api.request("GET", "/hub/api/users/alice?include_stopped_servers=1").json()["servers"]
    assert {"busy", "idle"} <= set(known), known  # both records back, running or not
    # Whether busy still runs depends on the restore's length: a hub down for longer than the culler's
    # timeout (30 s here) comes back with busy's last activity from before, and the culler may stop it.
    print(f"after the restore busy is {'running' if (known['busy'] or {}).get('ready') else 'stopped'}")


# -- 4. teardown ------------------------------------------------------------------------------
def test_teardown_stops_named_servers_through_the_hub_and_removes_them(hub):
    p, outputs = hub["p"], hub["outputs"]
    api = api_for(p)
    if not (servers_of(api, "alice").get("busy") or {}).get("ready"):  # culled after the restore (or being culled)
        wait_server(api, "alice", "busy", ready=False, timeout=90)
        start(api, "alice", "busy")
    with keep_busy(api, "/user/alice/busy"):  # not culled before the teardown
        start(api, "alice", "idle")
    # alice/busy and alice/idle (beside the hub, its Docker API door and the network-policy agent)
    assert sorted(s for s in labelled("service") if "-user-" in s) == [
        f"service {p.prefix}-user-alice--busy", f"service {p.prefix}-user-alice--idle"], labelled("service")
    # spawner.named_servers: 2 is the hub's limit
    r = api.request("POST", server_path("alice", "third"), ok=(400,))
    assert "already has the maximum of 2 named servers" in r.text, r.text
    res = hubops_cli("ops", "teardown", "-p", str(hub["params"]), "--set", "confirm=true",
                     "--set", "remove_volumes=true", "--set", "remove_user_data=true", outputs=outputs)
    hub["torn_down"] = True
    assert res.returncode == 0, res.stderr[-3000:]
    items = {i["target"]: i for r in last_record(outputs)["results"] for i in r["items"]}
    for server in ("alice/busy", "alice/idle"):
        assert items[f"server {server}"]["detail"].startswith("stopped through the hub"), items
    assert not labelled(), labelled()
    assert (hub["folder"] / "alice.txt").exists(), "a group folder on a shared path is the operator's storage: kept"
