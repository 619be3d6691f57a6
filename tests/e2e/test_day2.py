"""Day-2 operations on the local single-node swarm, run the way an operator runs them
(`hubops deploy`, `hubops ops RUNBOOK`). One deployment, `day2-RUN` (a free port and subnet: see
tests/helpers), shared by the tests of this file, in order:

1. shared-path homes: a file a user writes survives stopping and starting the server;
2. the idle culler stops a server left idle past its (short) timeout;
3. backup while the hub runs (users, an admin made through the hub, server records);
4. corrupt, truncated and partial backups are refused before anything changes;
5. an upgrade to a deliberately broken hub image is rolled back by Swarm: the hub ends on the old
   image, serves, and the record says "rolled back"; diagnose names what happened;
6. an upgrade to a good image completes, and upgrade without parameters goes back to images/hub;
7. restore onto a fresh deployment (torn down, deployed again, now with node-local homes) brings
   back users, admins and server records; users' files on the shared path outlived the teardown;
8. node-local homes: the file survives a restart, the server pinned to the node of its volume.

Teardown at the end, through the teardown runbook, leaves no object labelled for the deployment.
"""
from __future__ import annotations

import io
import json
import shutil
import time
from pathlib import Path

import docker
import pytest
import requests

from hubops.ops import teardown
from hubops.core.engine import Clients
from hubops.core.params import load_params
from hubops.core.record import read_record
from hubops.hub.running import HubAPI
from tests.helpers import admin_session, create_user, ensure_swarm, server_state, free_port, free_subnet, hubops_cli, make_params, run_name

pytestmark = [pytest.mark.engine, pytest.mark.e2e]
PROJECT = Path(__file__).resolve().parents[2]
DEPLOYMENT = run_name("day2")
BROKEN = f"hubops-{DEPLOYMENT}-broken:test"
NEXT = f"hubops-{DEPLOYMENT}-next:test"
NO_SPAWNER = f"hubops-{DEPLOYMENT}-nospawner:test"


def last_run(outputs: Path) -> tuple[dict, dict | None]:
    """The newest run's manifest and its (single) notebook's record."""
    run_json = sorted(outputs.glob("*/run.json"), key=lambda f: f.stat().st_mtime)[-1]
    run = json.loads(run_json.read_text())
    nb = run_json.parent / run["stages"][-1]["notebook"]
    return run, (read_record(json.loads(nb.read_text())) if nb.exists() else None)


def labelled_objects() -> list[str]:
    client = docker.from_env()
    return [f"{kind} {o.name}" for kind, coll in (("service", client.services), ("secret", client.secrets),
                                                  ("config", client.configs), ("network", client.networks),
                                                  ("volume", client.volumes))
            for o in coll.list(filters={"label": f"hubops.deployment={DEPLOYMENT}"})]


def params_text(users: Path, backups: Path, storage: str, culler: str) -> str:
    return f"storage: {{users: {storage}}}\nculler: {culler}\nbackup: {{dir: {backups}}}\n"


@pytest.fixture(scope="module")
def day2(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("day2")
    users, backups, outputs = tmp / "users", tmp / "backups", tmp / "outputs"
    users.mkdir()  # the "shared filesystem": mounted at the same place on every node (one node here)
    ensure_swarm()
    shared = make_params(tmp, DEPLOYMENT, port=free_port(), subnet=free_subnet(), extra=params_text(
        users, backups, f"{{mode: shared-path, path: {users}}}", "{timeout: 40, every: 10}"))
    node_local = tmp / "day2-node-local.yaml"
    node_local.write_text(shared.read_text().split("storage:")[0] + params_text(
        users, backups, "{mode: node-local}", "{timeout: 3600}"))
    assert not labelled_objects(), f"deployment {DEPLOYMENT} exists already: {labelled_objects()}"
    state = {"tmp": tmp, "users": users, "backups": backups, "outputs": outputs, "params": shared,
             "node_local": node_local, "p": load_params(shared)}
    try:  # a deploy that fails half-way is torn down too
        t0 = time.monotonic()
        cold = hubops_cli("deploy", "-p", str(shared), outputs=outputs)
        print(f"\ndeploy with shared-path homes: {time.monotonic() - t0:.1f} s")
        assert cold.returncode == 0, cold.stderr[-4000:]
        run_dir = next(outputs.glob(f"*-{DEPLOYMENT}-deploy"))
        rec = read_record(json.loads((run_dir / "70-storage.ipynb").read_text()))
        checks = {i["target"]: i["detail"] for r in rec["results"] for i in r["items"]}
        assert checks[f"{users} on local"].startswith("exists and is writable by root"), checks  # 70-storage probed it
        yield state
    finally:
        p = state["p"]
        try:
            down = hubops_cli("ops", "teardown", "-p", str(state["params"]), "--set", "confirm=true",
                              "--set", "remove_volumes=true", "--set", "remove_user_data=true", outputs=outputs)
            left = labelled_objects()
            if down.returncode != 0 or left:
                teardown.teardown(p, Clients(p), remove_volumes=True, remove_user_data=True)
        finally:  # the upgrade images the tests build, whatever became of the deployment
            remove_test_images()
    assert down.returncode == 0, down.stderr[-3000:]
    assert not left, f"teardown left {left}"


def remove_test_images() -> list[str]:
    """The images this module's tests build (named after this run), removed; the names it removed."""
    c, gone = docker.from_env(), []
    for img in (BROKEN, NEXT, NO_SPAWNER):
        try:
            c.images.remove(img, force=True)
            gone.append(img)
        except docker.errors.ImageNotFound:
            pass
    return gone


def api_for(p) -> HubAPI:
    return HubAPI(p, timeout=30)


def start(api: HubAPI, user: str) -> None:
    api.request("POST", f"/hub/api/users/{user}/server", ok=(201, 202))
    api.wait_server(user, ready=True, timeout=180)


def stop(api: HubAPI, user: str) -> None:
    api.request("DELETE", f"/hub/api/users/{user}/server", ok=(202, 204))
    api.wait_server(user, ready=False, timeout=90)


def write_file(api: HubAPI, user: str, name: str, text: str) -> None:
    """Through the proxy, with hubops's service token (access:servers), as the user's notebook would."""
    api.request("PUT", f"/user/{user}/api/contents/{name}", ok=(200, 201),
                json={"type": "file", "format": "text", "content": text})


def read_file(api: HubAPI, user: str, name: str) -> str | None:
    r = api.request("GET", f"/user/{user}/api/contents/{name}", ok=(200, 404))
    return r.json()["content"] if r.status_code == 200 else None


def hub_state(p) -> tuple[int, str]:
    """The hub service's version index and its running container's ID (both change on any restart)."""
    c = docker.from_env()
    svc = c.services.get(p.hub_service)
    [ctr] = c.containers.list(filters={"label": [f"hubops.deployment={DEPLOYMENT}", "hubops.role=hub"]})
    return svc.version, ctr.id


# -- 1. shared-path homes -----------------------------------------------------------------------
def test_shared_path_file_survives_a_restart(day2):
    p, users = day2["p"], day2["users"]
    api = api_for(p)
    start(api, "alice")
    home = users / "alice"
    st = home.stat()
    assert (st.st_uid, st.st_gid, oct(st.st_mode & 0o777)) == (1000, 100, "0o700"), "made before the server started"
    token = f"written at {time.time()}"
    write_file(api, "alice", "persist.txt", token)
    assert (home / "persist.txt").read_text() == token  # on the shared path, not in the container
    stop(api, "alice")
    assert not docker.from_env().services.list(filters={"name": f"hubops-{DEPLOYMENT}-user-alice"})
    t0 = time.monotonic()
    start(api, "alice")
    print(f"\nrestart to a running server: {time.monotonic() - t0:.1f} s")
    assert read_file(api, "alice", "persist.txt") == token
    svc = docker.from_env().services.get(f"hubops-{DEPLOYMENT}-user-alice")
    [mount] = svc.attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Mounts"]
    assert mount["Type"] == "bind" and mount["Source"] == str(home) and mount["Target"] == "/home/jovyan"
    stop(api, "alice")


# -- 2. idle culler -------------------------------------------------------------------------------
def test_an_idle_server_is_culled(day2):
    p = day2["p"]
    api = api_for(p)
    start(api, "alice")
    t0 = time.monotonic()
    while time.monotonic() - t0 < 40 + 10 + 60:
        if not ((api.user("alice") or {}).get("servers") or {}).get(""):
            break
        time.sleep(1)
    culled_after = time.monotonic() - t0
    print(f"\nculled {culled_after:.1f} s after it was ready (timeout 40 s, checked every 10 s)")
    assert not ((api.user("alice") or {}).get("servers") or {}).get(""), "the idle server is still running"
    assert culled_after >= 30, "culled before its timeout"
    logs = b"".join(docker.from_env().services.get(p.hub_service).logs(stdout=True, stderr=True, tail=400)).decode()
    assert "Culling server alice" in logs
    assert "DELETE /hub/api/users/alice/server (idle-culler@" in logs  # the culler's own token, its own scopes


# -- 3. backup ------------------------------------------------------------------------------------
def test_backup_while_the_hub_runs(day2):
    p, outputs = day2["p"], day2["outputs"]
    api = api_for(p)
    create_user(p, "carol")
    r = admin_session(p).patch(f"{p.hub_url}/hub/api/users/carol", json={"admin": True}, timeout=10)
    assert r.status_code == 200, r.text[:300]
    start(api, "carol")
    stop(api, "carol")
    version_before = hub_state(p)
    res = hubops_cli("ops", "backup", "-p", str(day2["params"]), "--set", "reason=e2e", outputs=outputs)
    assert res.returncode == 0, res.stderr[-3000:]
    assert hub_state(p) == version_before, "a backup does not restart the hub"
    run, rec = last_run(outputs)
    facts = rec["results"][0]["facts"]
    folder = Path(facts["path"])
    assert folder.parent == day2["backups"] and outputs not in folder.parents
    assert sorted(f.name for f in folder.iterdir()) == ["jupyterhub.sqlite", "jupyterhub_config.py", "manifest.json",
                                                        "parameters.yaml", "userlist"]
    m = json.loads((folder / "manifest.json").read_text())
    assert {u["name"]: u["admin"] for u in m["database"]["users"]} == {"alice": False, "carol": True, "operator": True}
    assert {"user": "carol", "server": "", "running": False} in m["database"]["servers"]
    assert m["jupyterhub_version"] == "6.1.1" and m["database"]["integrity"] == "ok"
    assert oct(folder.stat().st_mode & 0o777) == "0o700"
    # No secret of the deployment in the backup, in any form the redactor knows.
    from hubops.audit.redact import Redactor, known_secrets

    red = Redactor(known_secrets(p))
    for f in folder.iterdir():
        text = f.read_bytes().decode("latin-1")
        assert red.redact(text) == text, f"secret in {f.name}"
    print(f"\nbackup: {facts['seconds']} s, {m['files']['jupyterhub.sqlite']['bytes']} bytes of database")
    day2["backup"] = folder


# -- 4. refused backups ---------------------------------------------------------------------------
@pytest.mark.parametrize("damage, message", [
    ("flip-db-byte", "jupyterhub.sqlite: sha256 does not match the manifest"),
    ("truncate-userlist", "userlist: "),
    ("drop-manifest", "no manifest.json"),
    ("db-not-sqlite", "not a SQLite database"),
])
def test_a_corrupt_or_partial_backup_is_refused_before_anything_changes(day2, damage, message):
    p = day2["p"]
    bad = day2["tmp"] / f"bad-{damage}"
    shutil.copytree(day2["backup"], bad)
    if damage == "flip-db-byte":
        data = bytearray((bad / "jupyterhub.sqlite").read_bytes())
        data[4096] ^= 0x55
        (bad / "jupyterhub.sqlite").write_bytes(bytes(data))
    elif damage == "truncate-userlist":
        (bad / "userlist").write_bytes((bad / "userlist").read_bytes()[:5])
    elif damage == "drop-manifest":
        (bad / "manifest.json").unlink()
    else:  # a file that is not a database, with a manifest rewritten to match it
        import hashlib

        junk = b"not a database, but the digest matches" * 100
        (bad / "jupyterhub.sqlite").write_bytes(junk)
        m = json.loads((bad / "manifest.json").read_text())
        m["files"]["jupyterhub.sqlite"] = {"sha256": hashlib.sha256(junk).hexdigest(), "bytes": len(junk)}
        (bad / "manifest.json").write_text(json.dumps(m))
    before = hub_state(p)
    res = hubops_cli("ops", "restore", "-p", str(day2["params"]), "--set", f"backup={bad}", "--set", "confirm=true",
                     outputs=day2["outputs"])
    assert res.returncode != 0
    run, _ = last_run(day2["outputs"])
    err = run["stages"][0]["error"]
    assert err["ename"] == "BackupError" and message in err["evalue"], err
    assert hub_state(p) == before, "the hub was touched"
    assert requests.get(f"{p.hub_url}/hub/health", verify=str(p.operator_path / "ca.pem"), timeout=10).status_code == 200


# -- 5. broken upgrade --------------------------------------------------------------------------
def build_from_hub(p, tag: str, run: str) -> None:
    c = docker.from_env()
    current = c.services.get(p.hub_service).attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"].split("@")[0]
    dockerfile = f"FROM {current}\n{run}\nLABEL hubops.test={tag}\n"
    c.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, rm=True, forcerm=True)


def test_a_broken_upgrade_rolls_back_by_itself(day2):
    p, outputs = day2["p"], day2["outputs"]
    c = docker.from_env()
    old = c.services.get(p.hub_service).attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"].split("@")[0]
    # The hub's program exits at once: Swarm's update sees the task fail and rolls back.
    build_from_hub(p, BROKEN, 'RUN printf "#!/bin/sh\\necho broken hub image >&2\\nexit 3\\n" > /opt/venv/bin/jupyterhub')
    t0 = time.monotonic()
    res = hubops_cli("ops", "upgrade", "-p", str(day2["params"]), "--set", f"image={BROKEN}", outputs=outputs)
    print(f"\nbroken upgrade, from start to the old hub serving again: {time.monotonic() - t0:.1f} s")
    assert res.returncode == 3, res.stderr[-3000:]  # 3: rolled back (0 would say "upgraded")
    run, rec = last_run(outputs)
    assert any(ch.startswith(f"rollback service hubops-{DEPLOYMENT}-hub (rolled back: {BROKEN} failed")
               for ch in run["stages"][0]["changes"]), run["stages"][0]["changes"]
    up = next(r for r in rec["results"] if r["step"] == "upgrade")
    assert up["facts"]["verdict"] == "rolled back" and up["facts"]["serving_image"] == old
    assert any(t["exit"] == 3 for t in up["facts"]["failed_tasks"]), up["facts"]["failed_tasks"]
    assert any(r["step"] == "backup" for r in rec["results"]), "a backup was taken first"
    assert c.services.get(p.hub_service).attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"].split("@")[0] == old
    assert api_for(p).request("GET", "/hub/api/").json()["version"] == "6.1.1"
    # diagnose names it.
    res = hubops_cli("ops", "diagnose", "-p", str(day2["params"]), outputs=outputs)
    assert res.returncode == 0, res.stderr[-3000:]
    _, rec = last_run(outputs)
    facts = rec["results"][0]["facts"]
    names = {f["recovery"] for f in facts["findings"]}
    assert {"update-rolled-back", "hub-exits"} <= names, facts["findings"]
    assert facts["managers"] == "1 of 1 reachable: quorum kept"
    assert any(row["image"] == BROKEN and row["exit"] == 3 for row in facts["hub tasks"])
    assert facts["hub log (last lines)"] and facts["certificate"]["days_left"] > 300


def test_an_image_without_hubops_spawner_is_refused_before_anything_changes(day2):
    """A hub image built by an older hubops (or not FROM hubops-hub) lacks hubops/inhub, which the
    generated config imports: refused up front, not left to fail and be rolled back by Swarm."""
    p, outputs = day2["p"], day2["outputs"]
    c = docker.from_env()
    svc = c.services.get(p.hub_service)
    before = (svc.attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"], svc.attrs["Version"]["Index"])
    build_from_hub(p, NO_SPAWNER, "RUN rm -rf /opt/hubops-inhub")
    res = hubops_cli("ops", "upgrade", "-p", str(day2["params"]), "--set", f"image={NO_SPAWNER}", outputs=outputs)
    err = " ".join(res.stderr.split())  # the console wraps long lines
    assert res.returncode == 1, res.stderr[-3000:]
    assert "lacks hubops's spawner" in err and "nothing was changed" in err, res.stderr[-3000:]
    svc.reload()
    assert (svc.attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"], svc.attrs["Version"]["Index"]) == before
    c.images.remove(NO_SPAWNER, force=True)


# -- 6. good upgrade, and back ------------------------------------------------------------------
def test_a_good_upgrade_completes_and_upgrade_returns_to_images_hub(day2):
    p, outputs = day2["p"], day2["outputs"]
    c = docker.from_env()
    old = c.services.get(p.hub_service).attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"].split("@")[0]
    build_from_hub(p, NEXT, "RUN true")
    res = hubops_cli("ops", "upgrade", "-p", str(day2["params"]), "--set", f"image={NEXT}",
                     "--set", "backup_first=false", outputs=outputs)
    assert res.returncode == 0, res.stderr[-3000:]
    _, rec = last_run(outputs)
    up = rec["results"][-1]["facts"]
    assert up["verdict"] == "upgraded" and up["serving_image"] == NEXT, up
    assert "the next `hubops deploy` puts back" in up["note"]
    res = hubops_cli("ops", "upgrade", "-p", str(day2["params"]), "--set", "backup_first=false", outputs=outputs)
    assert res.returncode == 0, res.stderr[-3000:]
    _, rec = last_run(outputs)
    assert rec["results"][-1]["facts"]["verdict"] == "upgraded"
    assert c.services.get(p.hub_service).attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"].split("@")[0] == old
    # ... so a deploy now changes nothing on the hub.
    res = hubops_cli("deploy", "-p", str(day2["params"]), "--only", "80-deploy", outputs=outputs)
    assert res.returncode == 0 and "no change" in res.stderr, res.stderr[-3000:]


# -- 7. restore onto a fresh deployment -----------------------------------------------------------
def test_restore_onto_a_fresh_deployment_brings_back_users_admins_and_servers(day2):
    p, outputs = day2["p"], day2["outputs"]
    down = hubops_cli("ops", "teardown", "-p", str(day2["params"]), "--set", "confirm=true",
                      "--set", "remove_volumes=true", outputs=outputs)
    assert down.returncode == 0, down.stderr[-3000:]
    assert not labelled_objects()
    assert (day2["users"] / "alice" / "persist.txt").exists(), "users' files on the shared path outlive teardown"
    fresh = hubops_cli("deploy", "-p", str(day2["node_local"]), outputs=outputs)
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    day2["params"] = day2["node_local"]  # what teardown at the end uses
    p = day2["p"] = load_params(day2["node_local"])
    api = api_for(p)
    assert api.user("carol") is None, "a fresh hub does not know carol"
    t0 = time.monotonic()
    res = hubops_cli("ops", "restore", "-p", str(day2["params"]), "--set", f"backup={day2['backup'].name}",
                     "--set", "confirm=true", outputs=outputs)
    print(f"\nrestore onto the fresh deployment: {time.monotonic() - t0:.1f} s")
    assert res.returncode == 0, res.stderr[-3000:]
    _, rec = last_run(outputs)
    checks = {i["target"]: i["detail"] for r in rec["results"] for i in r["items"] if i["action"] == "check"}
    assert checks["users"].startswith("3 of 3 back") and checks["admins"] == "admin again: carol, operator"
    assert any(r["step"] == "backup" for r in rec["results"]), "a safety backup of the fresh database first"
    carol = api.request("GET", "/hub/api/users/carol?include_stopped_servers=1").json()
    assert carol["admin"] is True and "" in carol["servers"]
    assert api.user("alice") is not None


# -- 8. node-local homes ----------------------------------------------------------------------------
def test_node_local_file_survives_a_restart_on_its_node(day2):
    p = day2["p"]
    api = api_for(p)
    c = docker.from_env()
    start(api, "alice")
    token = f"node-local {time.time()}"
    write_file(api, "alice", "persist.txt", token)
    state = server_state(p, "alice")
    node_id = c.nodes.list()[0].id
    assert state["home_node"] == node_id
    vol = c.volumes.get(f"hubops-{DEPLOYMENT}-home-alice")
    assert vol.attrs["Labels"]["hubops.role"] == "user-home" and vol.attrs["Labels"]["hubops.user"] == "alice"
    stop(api, "alice")
    start(api, "alice")
    assert read_file(api, "alice", "persist.txt") == token
    svc = c.services.get(f"hubops-{DEPLOYMENT}-user-alice")
    assert f"node.id=={node_id}" in svc.attrs["Spec"]["TaskTemplate"]["Placement"]["Constraints"]
    [mount] = svc.attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Mounts"]
    assert mount["Type"] == "volume" and mount["Source"] == f"hubops-{DEPLOYMENT}-home-alice"
    stop(api, "alice")
