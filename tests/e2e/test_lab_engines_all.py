"""The whole product on one newer engine: a lab of one manager and two workers all on Docker 28
(Debian sid's docker.io), then the same on Docker 26 (Debian trixie's), run the way an operator
runs it (`hubops deploy`, `hubops ops RUNBOOK`). Slow (`make test-all`); per engine, in order:

1. the deploy chain; preflight records every node's engine and API version, no mixed warning;
2. a user's server on each worker, both answering through the hub;
3. a second deploy changes nothing;
4. remove-node of the worker that runs alice's server: her server moves to the other worker and
   answers with her file (shared-path homes); add-node brings the worker back with the images
   and it takes the next spawn;
5. renew-tls (self-signed, forced): a new certificate served, running servers untouched;
6. backup, an admin change, restore in place: the backed-up admins are back;
7. upgrade to a broken hub image (built on the hub's Docker 28 node by the engine's builder):
   Swarm rolls it back, the old hub serves, the command exits 3;
8. teardown with volumes, user data and images: nothing labelled for the deployment on any node.

`lab status` of each engine's lab is printed; each step prints its time.
"""
from __future__ import annotations

import io
import time

import pytest

from hubops.lab import cluster as lab
from hubops.core.engine import Clients
from hubops.core.params import load_params
from hubops.ops.renew_tls import served_certificate
from hubops.hub.running import HubAPI
from tests import engine_labs as el
from tests.helpers import admin_session
from tests.helpers import hubops_cli as cli
from tests.helpers import LAB_SUBNETS, RUN, free_subnet, run_name

pytestmark = [pytest.mark.engine, pytest.mark.e2e, pytest.mark.slow]
# lab names, host bridge and overlay subnets: per run (tests/helpers)
LABS = {e: (run_name(f"en{e}a"), free_subnet(LAB_SUBNETS), free_subnet()) for e in ("28", "26")}
BROKEN = f"hubops-broken-test:en-hub-exits-{RUN}"
TIMES: dict[str, list[tuple[str, float]]] = {}


def timed(engine: str, what: str, t0: float) -> None:
    took = time.monotonic() - t0
    TIMES.setdefault(engine, []).append((what, took))
    print(f"\n[Docker {engine}] {what}: {took:.1f} s")


@pytest.fixture(scope="module", params=list(LABS), ids=lambda e: f"docker{e}")
def cl(request, tmp_path_factory):
    engine = request.param
    name, subnet, overlay = LABS[engine]
    tmp = tmp_path_factory.mktemp(name)
    lab.lab_down(name=name)
    t_suite = time.monotonic()
    try:
        params, info, took = el.up(tmp, name, subnet=subnet, overlay=overlay, engines=engine)
        TIMES.setdefault(engine, []).append(("lab up", took))
        print(f"\n{info!r}")
        backups = tmp / "backups"
        params.write_text(params.read_text() + f"backup: {{dir: {backups}}}\n")
        outputs = tmp / "outputs"
        t0 = time.monotonic()
        deploy = cli("deploy", "-p", str(params), outputs=outputs)
        timed(engine, "deploy (cold)", t0)
        yield {"engine": engine, "name": name, "params": params, "outputs": outputs, "deploy": deploy,
               "p": load_params(params), "tmp": tmp}
    finally:
        t0 = time.monotonic()
        lab.lab_down(name=name)
        timed(engine, "lab down", t0)
        TIMES[engine].append(("suite", time.monotonic() - t_suite))
        print(f"\n[Docker {engine}] times: " + ", ".join(f"{w} {s:.1f} s" for w, s in TIMES[engine]))


def test_deploy_chain_records_each_engine(cl):
    assert cl["deploy"].returncode == 0, cl["deploy"].stderr[-4000:]
    run = el.runs(cl["outputs"])[-1]
    assert run["status"] == "ok" and len(run["stages"]) == 10
    want = {"28": ("28.5.", "1.51"), "26": ("26.1.", "1.45")}[cl["engine"]]
    pre = el.stage_record(cl["outputs"], run, "00-preflight")["results"][0]
    assert {r["host"]: (r["engine"][:5], r["api"]) for r in pre["facts"]["engines"]} == {
        h.name: want for h in cl["p"].hosts.all}
    assert "warning" not in pre["facts"]
    st = lab.lab_status(name=cl["name"])
    print(f"\n{st!r}")
    assert {n.engine for n in st.nodes} == {cl["engine"]}


def test_a_server_on_each_worker(cl):
    p = cl["p"]
    clients, api = Clients(p), HubAPI(p)
    t0 = time.monotonic()
    for user in ("alice", "bob"):
        el.spawn(api, user)
    timed(cl["engine"], "two spawns", t0)
    where = {u: el.server_node(p, clients, api, u) for u in ("alice", "bob")}
    assert sorted(where.values()) == [f"{cl['name']}-node0", f"{cl['name']}-node1"], where
    assert all(el.answers(api, u) for u in where)
    engines = el.swarm_engines(p, clients)
    assert all(engines[n].startswith(cl["engine"] + ".") for n in where.values()), engines
    cl["where"] = where


def test_second_deploy_changes_nothing(cl):
    t0 = time.monotonic()
    r = cli("deploy", "-p", str(cl["params"]), outputs=cl["outputs"])
    timed(cl["engine"], "second deploy", t0)
    assert r.returncode == 0, r.stderr[-4000:]
    run = el.runs(cl["outputs"])[-1]
    assert run["changed"] == 0, [s.get("changes") for s in run["stages"]]


def test_remove_node_then_add_node(cl):
    p = cl["p"]
    clients, api = Clients(p), HubAPI(p)
    victim = cl["where"]["alice"]
    el.write_file(api, "alice", "notes.txt", "written on " + victim)
    t0 = time.monotonic()
    r = cli("ops", "remove-node", "-p", str(cl["params"]), "--set", f"node={victim}", outputs=cl["outputs"])
    timed(cl["engine"], "remove-node", t0)
    assert r.returncode == 0, r.stderr[-4000:]
    assert victim not in el.swarm_engines(p, clients)
    moved = el.server_node(p, clients, api, "alice")
    assert moved != victim and moved.startswith(f"{cl['name']}-node")
    assert el.answers(api, "alice", timeout=90)
    assert el.read_file(api, "alice", "notes.txt") == "written on " + victim
    t0 = time.monotonic()
    r = cli("ops", "add-node", "-p", str(cl["params"]), "--set", f"node={victim}", outputs=cl["outputs"])
    timed(cl["engine"], "add-node", t0)
    assert r.returncode == 0, r.stderr[-4000:]
    assert victim in el.swarm_engines(p, clients)
    el.spawn(api, "carol")
    assert el.server_node(p, clients, api, "carol") == victim
    assert el.answers(api, "carol")


def test_renew_tls_self_signed(cl):
    p = cl["p"]
    api = HubAPI(p)
    started = api.request("GET", "/user/carol/api/status").json()["started"]
    old, _ = served_certificate(p)
    t0 = time.monotonic()
    r = cli("ops", "renew-tls", "-p", str(cl["params"]), "--set", "force=true", outputs=cl["outputs"])
    timed(cl["engine"], "renew-tls (forced)", t0)
    assert r.returncode == 0, r.stderr[-4000:]
    new, _ = served_certificate(p)
    assert new != old
    rec = el.stage_record(cl["outputs"], el.runs(cl["outputs"])[-1], "renew-tls")
    facts = rec["results"][0]["facts"]
    print(f"hub did not answer for {facts['downtime_s']} s at most")
    assert facts["new_fingerprint_sha256"] == new and "carol" in facts["servers_survived"]
    assert HubAPI(p).request("GET", "/user/carol/api/status").json()["started"] == started


def test_backup_then_restore_in_place(cl):
    p = cl["p"]
    admin = admin_session(p)
    assert admin.patch(f"{p.hub_url}/hub/api/users/bob", json={"admin": True}, timeout=10).status_code == 200
    t0 = time.monotonic()
    r = cli("ops", "backup", "-p", str(cl["params"]), "--set", "reason=engines", outputs=cl["outputs"])
    timed(cl["engine"], "backup", t0)
    assert r.returncode == 0, r.stderr[-3000:]
    assert admin.patch(f"{p.hub_url}/hub/api/users/bob", json={"admin": False}, timeout=10).status_code == 200
    t0 = time.monotonic()
    r = cli("ops", "restore", "-p", str(cl["params"]), "--set", "confirm=true", outputs=cl["outputs"])
    timed(cl["engine"], "restore (latest backup, in place)", t0)
    assert r.returncode == 0, r.stderr[-3000:]
    assert HubAPI(p).request("GET", "/hub/api/users/bob").json()["admin"] is True


def _hub_image(p, clients) -> str:
    return clients.manager.services.get(p.hub_service).attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"].split("@")[0]


def test_broken_upgrade_rolls_back(cl):
    p = cl["p"]
    clients = Clients(p)
    old = _hub_image(p, clients)
    dockerfile = (f"FROM {old}\nRUN printf '#!/bin/sh\\necho broken hub image >&2\\nexit 3\\n' > /opt/venv/bin/jupyterhub\n"
                  "LABEL hubops.test=broken\n")
    t0 = time.monotonic()
    clients[p.hub_host.name].images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=BROKEN, rm=True, forcerm=True)
    timed(cl["engine"], f"broken image built on {p.hub_host.name}", t0)
    t0 = time.monotonic()
    r = cli("ops", "upgrade", "-p", str(cl["params"]), "--set", f"image={BROKEN}", "--set", "backup_first=false",
            outputs=cl["outputs"])
    timed(cl["engine"], "broken upgrade until the old hub serves", t0)
    assert r.returncode == 3, (r.returncode, r.stderr[-3000:])
    assert "rolled back" in r.stderr
    assert _hub_image(p, clients) == old
    assert HubAPI(p).request("GET", "/hub/api/").status_code == 200


def test_teardown_leaves_nothing_labelled(cl):
    p = cl["p"]
    t0 = time.monotonic()
    r = cli("ops", "teardown", "-p", str(cl["params"]), "--set", "confirm=true", "--set", "remove_volumes=true",
            "--set", "remove_user_data=true", "--set", "remove_images=true", outputs=cl["outputs"])
    timed(cl["engine"], "teardown with user data and images", t0)
    assert r.returncode == 0, r.stderr[-3000:]
    left = el.labelled(p, Clients(p), with_images=True)
    assert not any(left.values()), left
