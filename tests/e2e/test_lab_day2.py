"""Day-2 operations on a real lab of one manager and two workers (engines over mutual TLS), run
the way an operator runs them (`hubops deploy`, `hubops ops RUNBOOK`). One lab, two deployments of
`d2lab-RUN` one after the other (the second from scratch), shared by the tests of this file, in order:

1. node-local homes: a user's file survives stopping and starting the server; the new server lands
   on the node of the user's volume although Swarm's spread would pick the other worker, and the
   volume exists on that node only;
2. backup while the hub runs (users, an admin made through the hub, server records);
3. a deliberately broken hub image rolled out by `upgrade` is rolled back by Swarm: the hub ends on
   the old image and serves, the record says "rolled back", and the command exits 3;
4. teardown after a hub crash: decoys without hubops labels on every node; the users' services the
   crashed hub left are removed; afterwards nothing labelled for the deployment is left on any node
   but the users' home volumes (user data is kept unless asked); every decoy untouched;
5. a fresh deployment (with a short culler timeout), the backup restored onto it: users, admins
   and server records are back, and the user's restored record sends her server to the node that
   kept her home, where her file is;
6. the idle culler stops that server (hub API and Swarm agree), with only the scopes it needs;
7. teardown with remove_user_data (and volumes, images): nothing labelled for the deployment on
   any node; every decoy untouched.

A corrupted or partial backup being refused before anything changes is shown by
tests/e2e/test_day2.py (the checks run on the operator's machine, before any engine is touched).
"""
from __future__ import annotations

import io
import json
import tarfile
import time
from pathlib import Path

import docker
import docker.errors
import docker.types
import pytest

from hubops.hub import config as hubconfig
from hubops.stages import images
from hubops.lab import cluster as lab
from hubops.ops import teardown
from hubops.core.engine import Clients
from hubops.core.params import load_params
from hubops.core.record import read_record
from hubops.hub.running import HubAPI
from tests.helpers import LAB_SUBNETS, RUN, admin_session, free_subnet, hubops_cli, run_name, server_state

pytestmark = [pytest.mark.engine, pytest.mark.e2e, pytest.mark.slow]  # `make test-all` only (see README: Tests)
NAME = run_name("d2lab")  # the lab and the deployment: d2lab-RUN (tests/helpers)
OVERLAY = "10.244.0.0/24"  # inside the lab's own engines
BROKEN = f"hubops-broken-test:hub-exits-{RUN}"
DECOY_IMAGE = f"hubops-broken-test:decoy-{RUN}"
DECOY = f"{NAME}-decoy"
T0 = time.monotonic()
TIMINGS: list[tuple[str, float]] = []


def timed(what: str, t0: float) -> float:
    took = time.monotonic() - t0
    TIMINGS.append((what, took))
    print(f"\n{what}: {took:.1f} s (suite at {time.monotonic() - T0:.0f} s)")
    return took


def last_run(outputs: Path) -> tuple[dict, dict | None]:
    """The newest run's manifest and its (last) notebook's record."""
    run_json = sorted(outputs.glob("*/run.json"), key=lambda f: f.stat().st_mtime)[-1]
    run = json.loads(run_json.read_text())
    nb = run_json.parent / run["stages"][-1]["notebook"]
    return run, (read_record(json.loads(nb.read_text())) if nb.exists() else None)


@pytest.fixture(scope="module")
def d2(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("d2lab")
    lab_params = tmp / "lab.yaml"
    backups, outputs = tmp / "backups", tmp / "outputs"
    first, fresh = tmp / "d2lab-first.yaml", tmp / "d2lab-fresh.yaml"
    state = {"tmp": tmp, "outputs": outputs, "backups": backups, "params": first, "fresh": fresh}
    try:
        t0 = time.monotonic()
        lab.lab_up(name=NAME, managers=1, workers=2, subnet=free_subnet(LAB_SUBNETS), overlay_subnet=OVERLAY,
                   params_out=lab_params)
        timed("lab up", t0)
        base = "\n".join(line for line in lab_params.read_text().splitlines() if not line.startswith("#"))
        first.write_text(base + f"\nstorage: {{users: {{mode: node-local}}}}\nbackup: {{dir: {backups}}}\n")
        # The fresh deployment culls idle servers after 25 s, checked every 5 s.
        fresh.write_text(base + f"\nstorage: {{users: {{mode: node-local}}}}\nbackup: {{dir: {backups}}}\n"
                         "culler: {timeout: 25, every: 5}\n")
        t0 = time.monotonic()
        res = hubops_cli("deploy", "-p", str(first), outputs=outputs)
        timed("deploy on the lab (cold: images streamed to the nodes)", t0)
        assert res.returncode == 0, res.stderr[-4000:]
        state["p"] = load_params(first)
        yield state
    finally:
        try:
            p = load_params(state["params"]) if state["params"].exists() else None
            if p and any(labelled(p, Clients(p), with_images=False).values()):
                teardown.teardown(p, Clients(p), remove_volumes=True, remove_user_data=True)
        finally:
            t0 = time.monotonic()
            lab.lab_down(name=NAME)
            timed("lab down", t0)
            local = docker.from_env()
            for img in (BROKEN, DECOY_IMAGE):
                try:
                    local.images.remove(img, force=True)
                except docker.errors.ImageNotFound:
                    pass
            print("\ntimings: " + ", ".join(f"{w} {s:.1f} s" for w, s in TIMINGS)
                  + f"; suite {time.monotonic() - T0:.0f} s")


# -- helpers -----------------------------------------------------------------------------------
def node_names(p, clients) -> dict[str, str]:
    """Swarm node ID -> hubops host name."""
    return {clients[h.name].info()["Swarm"]["NodeID"]: h.name for h in p.hosts.all}


def server_task(clients, service: str) -> dict:
    svc = clients.manager.services.get(service)
    for _ in range(120):
        running = [t for t in svc.tasks(filters={"desired-state": "running"}) if t["Status"]["State"] == "running"]
        if running:
            return running[0]
        time.sleep(0.25)
    raise AssertionError(f"service {service} has no running task")


def start(api: HubAPI, user: str) -> float:
    t0 = time.monotonic()
    api.request("POST", f"/hub/api/users/{user}/server", ok=(201, 202))
    api.wait_server(user, ready=True, timeout=180)
    return time.monotonic() - t0


def stop(api: HubAPI, user: str) -> None:
    api.request("DELETE", f"/hub/api/users/{user}/server", ok=(202, 204))
    api.wait_server(user, ready=False, timeout=90)


def write_file(api: HubAPI, user: str, name: str, text: str) -> None:
    api.request("PUT", f"/user/{user}/api/contents/{name}", ok=(200, 201),
                json={"type": "file", "format": "text", "content": text})


def read_file(api: HubAPI, user: str, name: str) -> str | None:
    r = api.request("GET", f"/user/{user}/api/contents/{name}", ok=(200, 404))
    return r.json()["content"] if r.status_code == 200 else None


def hub_image(p, clients) -> str:
    return clients.manager.services.get(p.hub_service).attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"].split("@")[0]


def labelled(p, clients, *, with_images: bool) -> dict[str, list[str]]:
    """Every object labelled for the deployment, per node (Swarm objects under the manager)."""
    sel = ["hubops.managed=true", f"hubops.deployment={p.deployment}"]
    out: dict[str, list[str]] = {}
    for h in p.hosts.all:
        c = clients[h.name]
        found = [f"container {x['Names'][0].lstrip('/')}" for x in c.api.containers(all=True, filters={"label": sel})]
        found += [f"volume {v.name}" for v in c.volumes.list(filters={"label": sel})]
        found += [f"network {n['Name']}" for n in c.api.networks(filters={"label": sel})]
        if with_images:
            found += [f"image {t}" for i in c.images.list(filters={"label": "hubops.managed=true"}) for t in i.tags or [i.id]]
        out[h.name] = found
    m = clients.manager
    out[p.hosts.managers[0].name] += (
        [f"service {s.name}" for s in m.services.list(filters={"label": sel})]
        + [f"secret {s.name}" for s in m.secrets.list(filters={"label": sel})]
        + [f"config {s.name}" for s in m.configs.list(filters={"label": sel})]
        + [f"task {t['ID'][:12]}" for t in m.api.tasks()
           if ((t["Spec"].get("ContainerSpec") or {}).get("Labels") or {}).get("hubops.deployment") == p.deployment])
    return out


def make_decoys(p, clients) -> dict[str, str]:
    """Objects hubops did not make (no hubops label), named like the deployment's, on every node."""
    ctx = io.BytesIO()
    with tarfile.open(fileobj=ctx, mode="w") as tar:
        for name, data in (("Dockerfile", b"FROM scratch\nCOPY decoy /decoy\n"), ("decoy", b"not hubops's\n")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    ctx.seek(0)
    local = docker.from_env()
    local.images.build(fileobj=ctx, custom_context=True, tag=DECOY_IMAGE, rm=True)
    images.ensure_images_on_nodes(clients.all(), [DECOY_IMAGE], source=local)
    ids, other = {}, {"owner": "someone-else"}
    for h in p.hosts.all:
        c = clients[h.name]
        ids[f"{h.name} volume"] = c.volumes.create(f"{DECOY}-vol", labels=other).name
        ids[f"{h.name} network"] = c.networks.create(f"{DECOY}-net", driver="bridge", labels=other).id
        ids[f"{h.name} container"] = c.containers.create(DECOY_IMAGE, ["/decoy"], name=f"{DECOY}-ctr", labels=other).id
    m = clients.manager
    ids["service"] = m.services.create(DECOY_IMAGE, ["/decoy"], name=f"{DECOY}-svc", labels=other,
                                       mode=docker.types.ServiceMode("replicated", replicas=0)).id
    ids["secret"] = m.secrets.create(name=f"{DECOY}-secret", data=b"a decoy value", labels=other).id
    ids["config"] = m.configs.create(name=f"{DECOY}-config", data=b"a decoy value", labels=other).id
    return ids


def decoys_now(p, clients) -> dict[str, str | None]:
    def get(fn, key, attr="id"):
        try:
            return getattr(fn(key), attr)
        except docker.errors.NotFound:
            return None

    out = {}
    for h in p.hosts.all:
        c = clients[h.name]
        out[f"{h.name} volume"] = get(c.volumes.get, f"{DECOY}-vol", "name")
        out[f"{h.name} network"] = get(c.networks.get, f"{DECOY}-net")
        out[f"{h.name} container"] = get(c.containers.get, f"{DECOY}-ctr")
    m = clients.manager
    out["service"] = get(m.services.get, f"{DECOY}-svc")
    out["secret"] = next((s.id for s in m.secrets.list(filters={"name": f"{DECOY}-secret"})), None)
    out["config"] = next((s.id for s in m.configs.list(filters={"name": f"{DECOY}-config"})), None)
    return out


# -- 1. node-local homes ------------------------------------------------------------------------
def test_node_local_home_survives_a_restart_pinned_to_its_node(d2):
    p = d2["p"]
    clients, api = Clients(p), HubAPI(p, timeout=30)
    names = node_names(p, clients)
    took = start(api, "alice")
    svc_name = f"{p.prefix}-user-alice"
    home = names[server_task(clients, svc_name)["NodeID"]]
    print(f"\nalice's first server on {home}: {took:.1f} s")
    assert home in (f"{NAME}-node0", f"{NAME}-node1")
    token = f"written on {home} at {time.time()}"
    write_file(api, "alice", "persist.txt", token)
    state = server_state(p, "alice")
    assert names[state["home_node"]] == home
    volume = f"{p.prefix}-home-alice"
    where = {h.name: bool(clients[h.name].volumes.list(filters={"name": volume})) for h in p.hosts.all}
    assert where == {h.name: h.name == home for h in p.hosts.all}, f"volume {volume} on {where}"
    labels = clients[home].volumes.get(volume).attrs["Labels"]
    assert labels["hubops.role"] == "user-home" and labels["hubops.user"] == "alice"
    singleuser = clients.manager.services.get(svc_name).attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"]
    stop(api, "alice")
    assert not clients.manager.services.list(filters={"name": svc_name})
    # A task on alice's node (a service hubops did not make): Swarm's spread would now put a new,
    # unpinned server on the other worker. alice's must go back to her node regardless.
    other = next(n for n in (f"{NAME}-node0", f"{NAME}-node1") if n != home)
    filler = clients.manager.services.create(
        singleuser.split("@")[0], ["sleep", "600"], name=f"{DECOY}-filler",
        constraints=[f"node.id=={state['home_node']}"])
    try:
        server_task(clients, filler.name)
        running = {n: len(clients[n].containers.list()) for n in (home, other)}
        took = start(api, "alice")
        again = names[server_task(clients, svc_name)["NodeID"]]
        print(f"alice's restarted server on {again} ({took:.1f} s); containers before it: {running}")
        assert running[home] > running[other]
        assert again == home, f"alice's server went to {again}, her home volume is on {home}"
        assert read_file(api, "alice", "persist.txt") == token
        spec = clients.manager.services.get(svc_name).attrs["Spec"]["TaskTemplate"]
        assert f"node.id=={state['home_node']}" in spec["Placement"]["Constraints"]
        [mount] = spec["ContainerSpec"]["Mounts"]
        assert (mount["Type"], mount["Source"]) == ("volume", volume)
        stop(api, "alice")
    finally:
        filler.remove()
    d2.update(home=home, home_node=state["home_node"], token=token)


# -- 2. backup ----------------------------------------------------------------------------------
def test_backup_while_the_hub_runs(d2):
    p = d2["p"]
    r = admin_session(p).patch(f"{p.hub_url}/hub/api/users/bob", json={"admin": True}, timeout=10)
    assert r.status_code == 200, r.text[:300]
    t0 = time.monotonic()
    res = hubops_cli("ops", "backup", "-p", str(d2["params"]), "--set", "reason=lab", outputs=d2["outputs"])
    timed("backup", t0)
    assert res.returncode == 0, res.stderr[-3000:]
    _, rec = last_run(d2["outputs"])
    folder = Path(rec["results"][0]["facts"]["path"])
    assert folder.parent == d2["backups"]
    m = json.loads((folder / "manifest.json").read_text())
    assert {u["name"]: u["admin"] for u in m["database"]["users"]} == {"alice": False, "bob": True, "operator": True}
    assert {"user": "alice", "server": "", "running": False} in m["database"]["servers"]
    assert m["database"]["integrity"] == "ok"
    d2["backup"] = folder


# -- 3. broken upgrade ----------------------------------------------------------------------------
def test_a_broken_upgrade_rolls_back_by_itself_and_exits_3(d2):
    p = d2["p"]
    clients = Clients(p)
    old = hub_image(p, clients)
    # The hub's program exits at once: Swarm sees the new task fail and rolls the service back.
    dockerfile = (f"FROM {old}\nRUN printf '#!/bin/sh\\necho broken hub image >&2\\nexit 3\\n' > /opt/venv/bin/jupyterhub\n"
                  "LABEL hubops.test=broken\n")
    # Built on the hub's node itself, which has the current image: nothing needs streaming.
    t0 = time.monotonic()
    clients[p.hub_host.name].images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=BROKEN, rm=True, forcerm=True)
    timed(f"broken image built on {p.hub_host.name}", t0)
    t0 = time.monotonic()
    res = hubops_cli("ops", "upgrade", "-p", str(d2["params"]), "--set", f"image={BROKEN}",
                     "--set", "backup_first=false", outputs=d2["outputs"])
    timed("broken upgrade, until the old hub serves again", t0)
    assert res.returncode == 3, (res.returncode, res.stderr[-3000:])
    assert "rolled back" in res.stderr
    run, rec = last_run(d2["outputs"])
    assert run["status"] == "ok"
    up = next(r for r in rec["results"] if r["step"] == "upgrade")
    assert up["facts"]["verdict"] == "rolled back" and up["facts"]["serving_image"] == old, up["facts"]
    assert any(t["exit"] == 3 for t in up["facts"]["failed_tasks"]), up["facts"]["failed_tasks"]
    assert any(c.startswith(f"rollback service {p.hub_service} (rolled back: {BROKEN} failed")
               for c in run["stages"][0]["changes"]), run["stages"][0]["changes"]
    print(f"Swarm's verdict after {up['facts']['verdict_after_s']} s, the old hub serving after "
          f"{up['facts']['hub_back_after_s']} s")
    assert hub_image(p, clients) == old
    assert HubAPI(p).request("GET", "/hub/api/").json()["version"] == up["facts"]["serving_version"]
    # Neither the broken image nor the hub's went to the workers: the hub runs on the manager only.
    has = {h.name: bool(clients[h.name].images.list(name=BROKEN)) or bool(clients[h.name].images.list(name=old))
           for h in p.hosts.all}
    assert has == {h.name: h.name == p.hub_host.name for h in p.hosts.all}, has


# -- 4. teardown after a hub crash: user data kept, decoys untouched ------------------------------
def test_teardown_after_a_hub_crash_keeps_user_data_and_touches_nothing_else(d2):
    p = d2["p"]
    clients, api = Clients(p), HubAPI(p, timeout=30)
    t0 = time.monotonic()
    d2["decoys"] = decoys = make_decoys(p, clients)
    timed("decoys made on every node", t0)
    start(api, "bob")
    bob_node = node_names(p, clients)[server_task(clients, f"{p.prefix}-user-bob")["NodeID"]]
    # The hub crashes (and stays down): bob's server is left behind as an orphan.
    clients.manager.services.get(p.hub_service).scale(0)
    for _ in range(120):
        if not clients.manager.containers.list(filters={"label": ["hubops.role=hub", f"hubops.deployment={NAME}"]}):
            break
        time.sleep(0.5)
    assert clients.manager.services.list(filters={"name": f"{p.prefix}-user-bob"})
    t0 = time.monotonic()
    res = hubops_cli("ops", "teardown", "-p", str(d2["params"]), "--set", "confirm=true",
                     "--set", "remove_volumes=true", outputs=d2["outputs"])
    timed("teardown (hub down, user data kept)", t0)
    assert res.returncode == 0, res.stderr[-3000:]
    run, rec = last_run(d2["outputs"])
    changes = run["stages"][0]["changes"]
    assert f"remove service {p.prefix}-user-bob (user-server)" in changes, changes
    kept = {i["target"]: i["detail"] for r in rec["results"] for i in r["items"] if i["action"] == "keep"}
    assert kept["users' servers through the hub"].startswith("hub not reachable"), kept
    left = labelled(p, clients, with_images=False)
    homes = {f"volume {p.prefix}-home-alice": d2["home"], f"volume {p.prefix}-home-bob": bob_node}
    want = {h.name: sorted(v for v, n in homes.items() if n == h.name) for h in p.hosts.all}
    assert {h: sorted(v) for h, v in left.items()} == want, left
    assert decoys_now(p, clients) == decoys


# -- 5. restore onto a fresh deployment -----------------------------------------------------------
def test_restore_onto_a_fresh_deployment_brings_back_users_admins_and_server_records(d2):
    d2["params"] = d2["fresh"]
    t0 = time.monotonic()
    res = hubops_cli("deploy", "-p", str(d2["fresh"]), outputs=d2["outputs"])
    timed("fresh deploy on the same lab (images there)", t0)
    assert res.returncode == 0, res.stderr[-3000:]
    p = d2["p"] = load_params(d2["fresh"])
    api = HubAPI(p, timeout=30)
    bob = api.request("GET", "/hub/api/users/bob?include_stopped_servers=1").json()
    alice = api.request("GET", "/hub/api/users/alice?include_stopped_servers=1").json()
    assert bob["admin"] is False, "a fresh hub knows nothing of the first one"
    assert "home_node" not in server_state(p, "alice", include_stopped=True), alice["servers"]
    t0 = time.monotonic()
    res = hubops_cli("ops", "restore", "-p", str(d2["fresh"]), "--set", f"backup={d2['backup']}",
                     "--set", "confirm=true", outputs=d2["outputs"])
    timed("restore onto the fresh deployment", t0)
    assert res.returncode == 0, res.stderr[-3000:]
    _, rec = last_run(d2["outputs"])
    checks = {i["target"]: i["detail"] for r in rec["results"] for i in r["items"] if i["action"] == "check"}
    assert checks["users"].startswith("3 of 3 back") and checks["admins"] == "admin again: bob, operator", checks
    bob = api.request("GET", "/hub/api/users/bob?include_stopped_servers=1").json()
    alice = api.request("GET", "/hub/api/users/alice?include_stopped_servers=1").json()
    assert bob["admin"] is True
    assert server_state(p, "alice", include_stopped=True)["home_node"] == d2["home_node"]
    # The restored record sends alice's server back to the node that kept her home through the teardown.
    clients = Clients(p)
    took = start(api, "alice")
    assert node_names(p, clients)[server_task(clients, f"{p.prefix}-user-alice")["NodeID"]] == d2["home"]
    assert read_file(api, "alice", "persist.txt") == d2["token"]
    d2["alice_ready"] = time.monotonic()
    print(f"alice's server on the fresh deployment, on {d2['home']}: {took:.1f} s")


# -- 6. the idle culler -----------------------------------------------------------------------------
CULLER_WHOAMI = r'''
import glob, json, os, urllib.request
token = None
for f in glob.glob("/proc/[0-9]*/cmdline"):
    if f == "/proc/%d/cmdline" % os.getpid():
        continue
    try:
        if b"jupyterhub_idle_culler" in open(f, "rb").read():
            env = open(f[:-len("cmdline")] + "environ", "rb").read().split(b"\0")
            token = next(e.split(b"=", 1)[1].decode() for e in env if e.startswith(b"JUPYTERHUB_API_TOKEN="))
    except (OSError, StopIteration):
        pass
req = urllib.request.Request("http://127.0.0.1:8081/hub/api/user", headers={"Authorization": "token " + token})
model = json.load(urllib.request.urlopen(req))
print(json.dumps({"kind": model.get("kind"), "name": model.get("name"), "scopes": model.get("scopes")}))
'''


def test_the_idle_culler_stops_an_idle_server_with_only_the_scopes_it_needs(d2):
    p = d2["p"]
    clients, api = Clients(p), HubAPI(p, timeout=30)
    svc_name = f"{p.prefix}-user-alice"
    while time.monotonic() - d2["alice_ready"] < 25 + 5 + 60:
        if not ((api.user("alice") or {}).get("servers") or {}).get(""):
            break
        time.sleep(1)
    culled = time.monotonic() - d2["alice_ready"]
    print(f"\nalice's idle server culled {culled:.1f} s after it was ready (timeout 25 s, checked every 5 s)")
    assert not ((api.user("alice") or {}).get("servers") or {}).get(""), "the idle server still runs"
    assert not clients.manager.services.list(filters={"name": svc_name}), "its Swarm service is still there"
    assert culled >= 20, "stopped before its timeout"
    logs = b"".join(clients.manager.services.get(p.hub_service).logs(stdout=True, stderr=True, tail=600)).decode()
    assert "DELETE /hub/api/users/alice/server (idle-culler@" in logs  # by the culler's own token
    # The scopes the hub gives the culler's token (asked inside the hub's container: the token
    # never leaves it): what hubconfig grants, the name-reading JupyterHub implies, nothing else.
    [ctr] = clients.manager.containers.list(filters={"label": [f"hubops.deployment={NAME}", "hubops.role=hub"]})
    rc, out = ctr.exec_run(["python3", "-c", CULLER_WHOAMI])
    assert rc == 0, out.decode()[-2000:]
    me = json.loads(out.decode().strip().splitlines()[-1])
    assert (me["kind"], me["name"]) == ("service", hubconfig.CULLER_SERVICE)
    print(f"the culler's scopes: {sorted(me['scopes'])}")
    assert set(hubconfig.CULLER_SCOPES) <= set(me["scopes"])
    assert set(me["scopes"]) - set(hubconfig.CULLER_SCOPES) <= {"read:users:name"}, me["scopes"]


# -- 7. teardown of everything, user data included ------------------------------------------------
def test_teardown_with_user_data_leaves_nothing_labelled_on_any_node(d2):
    p = d2["p"]
    clients = Clients(p)
    before = labelled(p, clients, with_images=True)
    assert any(v.startswith(f"volume {p.prefix}-home-") for v in sum(before.values(), [])), before
    t0 = time.monotonic()
    res = hubops_cli("ops", "teardown", "-p", str(d2["params"]), "--set", "confirm=true", "--set", "remove_volumes=true",
                     "--set", "remove_user_data=true", "--set", "remove_images=true", outputs=d2["outputs"])
    timed("teardown with user data and images", t0)
    assert res.returncode == 0, res.stderr[-3000:]
    run, _ = last_run(d2["outputs"])
    changes = run["stages"][0]["changes"]
    assert f"remove volume {p.prefix}-home-alice on {d2['home']} (a user's home)" in changes, changes
    left = labelled(p, clients, with_images=True)
    assert not any(left.values()), left
    assert decoys_now(p, clients) == d2["decoys"]
