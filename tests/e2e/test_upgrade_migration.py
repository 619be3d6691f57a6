"""Upgrades across JupyterHub's database schema migration, on the local single-node swarm, run the way
an operator runs them (`hubops deploy`, `hubops ops upgrade`). One deployment, `j6up-RUN`, on JupyterHub
5.5.4 (parameter images.jupyterhub_version), with a running user server, a user's API token, a group,
an extra admin and the idle culler polling every 10 s; in order:

1. an upgrade to a JupyterHub 6.1.1 image made to fail after its migration (its `jupyterhub` runs
   `upgrade-db`, then exits 3 when started as the hub): the database is migrated, the new hub fails,
   the database is put back from the backup taken just before, JupyterHub 5.5.4 serves again with
   everything intact; exit status 3;
2. the upgrade to JupyterHub 6.1.1 (`--set jupyterhub_version=6.1.1`): backup, `upgrade-db`
   (schema 4621fec11365 -> f460b0348206), the new hub; everything intact, the server still reached;
3. back to 5.5.4 is refused before anything changes, by `ops upgrade` and by `deploy`, naming the
   backup to restore and the image;
4. that restore (`ops restore --set backup=... --set image=...`) puts JupyterHub 5.5.4 back with the
   database of its schema, everything intact; a deploy then changes nothing.

Teardown at the end leaves no object labelled for the deployment. Marked slow: 251 s with the images
built, 522 s while other suites ran; building the 5.5.4 and 6.1.1 images adds 5 to 9 minutes.
"""
from __future__ import annotations

import io
import json
import re
import time
from pathlib import Path

import docker
import pytest
import requests

from hubops.core.engine import Clients
from hubops.core.params import load_params
from hubops.core.record import read_record
from hubops.hub.running import HubAPI
from hubops.ops import teardown, upgrade
from tests.helpers import admin_session, free_port, free_subnet, hubops_cli, make_params, run_name

pytestmark = [pytest.mark.engine, pytest.mark.e2e, pytest.mark.slow]
DEPLOYMENT = run_name("j6up")
PORT = free_port()
SUBNET = free_subnet()
FAILS_AFTER_MIGRATION = f"hubops-{DEPLOYMENT}-fails-after-migration:test"
V5_SCHEMA, V6_SCHEMA = "4621fec11365", "f460b0348206"


def last_run(outputs: Path) -> tuple[dict, dict | None]:
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


def hub_image(p) -> str:
    return docker.from_env().services.get(p.hub_service).attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"].split("@")[0]


def hub_state(p) -> tuple[int, str]:
    c = docker.from_env()
    [ctr] = c.containers.list(filters={"label": [f"hubops.deployment={DEPLOYMENT}", "hubops.role=hub"]})
    return c.services.get(p.hub_service).version, ctr.id


@pytest.fixture(scope="module")
def j6up(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("j6up")
    outputs, backups = tmp / "outputs", tmp / "backups"
    params = make_params(tmp, DEPLOYMENT, port=PORT, subnet=SUBNET, users="operator admin\nalice\ncarol\n", extra=(
        "culler: {timeout: 3600, every: 10}\n"
        f"backup: {{dir: {backups}}}\n"
        "images: {dir: %s, jupyterhub_version: 5.5.4}\n" % (Path(__file__).resolve().parents[2] / "images")))
    # make_params wrote its own images: line first; keep only the last one
    text = params.read_text().splitlines()
    first = next(i for i, line in enumerate(text) if line.startswith("images:"))
    params.write_text("\n".join(text[:first] + text[first + 1:]) + "\n")
    assert not labelled_objects(), f"deployment {DEPLOYMENT} exists already: {labelled_objects()}"
    t0 = time.monotonic()
    res = hubops_cli("deploy", "-p", str(params), outputs=outputs)
    print(f"\ndeploy on JupyterHub 5.5.4: {time.monotonic() - t0:.1f} s")
    assert res.returncode == 0, res.stderr[-4000:]
    p = load_params(params)
    state = {"tmp": tmp, "outputs": outputs, "params": params, "p": p}
    yield state
    # users' homes are kept by a teardown unless asked: this test's go too
    down = hubops_cli("ops", "teardown", "-p", str(params), "--set", "confirm=true", "--set", "remove_volumes=true",
                      "--set", "remove_user_data=true", outputs=outputs)
    left = labelled_objects()
    if down.returncode != 0 or left:
        teardown.teardown(p, Clients(p), remove_volumes=True, remove_user_data=True)
    try:
        docker.from_env().images.remove(FAILS_AFTER_MIGRATION, force=True)
    except docker.errors.ImageNotFound:
        pass
    assert down.returncode == 0, down.stderr[-3000:]
    assert not left, f"teardown left {left}"


def hub_version(p) -> str:
    return HubAPI(p).request("GET", "/hub/api/").json()["version"]


def intact(p, token: str) -> None:
    """Users, the admin, the group, alice's token and her running server (reached through the proxy)."""
    api = HubAPI(p, timeout=30)
    alice, carol = api.user("alice"), api.user("carol")
    assert alice and carol and carol["admin"] is True
    assert alice["groups"] == ["students"], alice
    assert (alice["servers"].get("") or {}).get("ready"), alice["servers"]
    s = requests.Session()
    s.trust_env = False  # REQUESTS_CA_BUNDLE would replace the deployment's CA
    s.verify = str(p.operator_path / "ca.pem")
    me = s.get(f"{p.hub_url}/hub/api/user", headers={"Authorization": f"token {token}"}, timeout=10)
    assert me.status_code == 200 and me.json()["name"] == "alice", me.text[:300]
    status = api.request("GET", "/user/alice/api/status")
    assert status.status_code == 200, status.text[:300]


def culler_answered_since(p, since: float, timeout: float = 40) -> None:
    """The idle culler (a hub-managed service, with the token the hub gives it) got 200 from this hub."""
    c = docker.from_env()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        [ctr] = c.containers.list(filters={"label": [f"hubops.deployment={DEPLOYMENT}", "hubops.role=hub"]})
        logs = ctr.logs(since=int(since)).decode(errors="replace")
        if re.search(r"200 GET /hub/api/users\S* \(idle-culler@", logs):
            return
        time.sleep(2)
    raise AssertionError("the idle culler got no 200 from the hub: " + logs[-1500:])


def test_setup_a_user_server_a_token_a_group_an_admin(j6up):
    p = j6up["p"]
    assert hub_version(p) == "5.5.4"
    api = HubAPI(p, timeout=30)
    api.request("POST", "/hub/api/users/alice/server", ok=(201, 202))
    api.wait_server("alice", ready=True, timeout=180)
    admin = admin_session(p)
    r = admin.post(f"{p.hub_url}/hub/api/users/alice/tokens", json={"note": "e2e", "expires_in": 86400}, timeout=10)
    assert r.status_code == 201, r.text[:300]
    j6up["token"] = r.json()["token"]
    assert admin.post(f"{p.hub_url}/hub/api/groups/students", json={"users": ["alice"]}, timeout=10).status_code == 201
    assert admin.patch(f"{p.hub_url}/hub/api/users/carol", json={"admin": True}, timeout=10).status_code == 200
    intact(p, j6up["token"])


def test_an_upgrade_failing_after_its_migration_is_put_back(j6up):
    p, outputs = j6up["p"], j6up["outputs"]
    old = hub_image(p)
    # The JupyterHub 6.1.1 hub image (what `--set jupyterhub_version=6.1.1` builds), made to fail after
    # its migration: its `jupyterhub` runs upgrade-db, and exits 3 when started as the hub.
    ref, _ = upgrade.target_image(p, Clients(p), jupyterhub_version="6.1.1")
    wrapper = ('#!/bin/sh\\nif [ "$1" = upgrade-db ]; then exec /opt/venv/bin/jupyterhub-real "$@"; fi\\n'
               'echo "hub made to fail after its migration" >&2\\nexit 3\\n')
    dockerfile = (f"FROM {ref}\nRUN mv /opt/venv/bin/jupyterhub /opt/venv/bin/jupyterhub-real && "
                  f"printf '{wrapper}' > /opt/venv/bin/jupyterhub && chmod +x /opt/venv/bin/jupyterhub\n"
                  f"LABEL hubops.test={DEPLOYMENT}\n")
    docker.from_env().images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=FAILS_AFTER_MIGRATION, rm=True,
                                   forcerm=True)
    t0 = time.monotonic()
    res = hubops_cli("ops", "upgrade", "-p", str(j6up["params"]), "--set", f"image={FAILS_AFTER_MIGRATION}",
                     outputs=outputs)
    print(f"\nupgrade failing after its migration, to 5.5.4 serving again: {time.monotonic() - t0:.1f} s")
    assert res.returncode == 3, res.stderr[-4000:]
    run, rec = last_run(outputs)
    up = next(r for r in rec["results"] if r["step"] == "upgrade")["facts"]
    print(json.dumps({k: up.get(k) for k in ("schema_from", "schema_to", "migration", "failure", "serving_schema",
                                             "hub_down_s", "serving_version")}, indent=1))
    assert (up["schema_from"], up["schema_to"]) == (V5_SCHEMA, V6_SCHEMA)
    assert up["migration"]["from"] == V5_SCHEMA and up["migration"]["to"] == V6_SCHEMA, "the migration itself ran"
    assert "exit 3" in up["failure"], up["failure"]
    assert up["verdict"] == "rolled back" and up["serving_image"] == old and up["serving_schema"] == V5_SCHEMA
    assert any(r["step"] == "backup" for r in rec["results"]), "a backup was taken first"
    changes = run["stages"][0]["changes"]
    assert any("database put back from" in ch for ch in changes), changes
    assert hub_image(p) == old and hub_version(p) == "5.5.4"
    intact(p, j6up["token"])
    culler_answered_since(p, time.time() - 5)


def test_the_upgrade_to_jupyterhub_6_migrates_and_keeps_everything(j6up):
    p, outputs = j6up["p"], j6up["outputs"]
    t0 = time.monotonic()
    res = hubops_cli("ops", "upgrade", "-p", str(j6up["params"]), "--set", "jupyterhub_version=6.1.1", outputs=outputs)
    print(f"\nupgrade 5.5.4 -> 6.1.1 with a migration: {time.monotonic() - t0:.1f} s")
    assert res.returncode == 0, res.stderr[-4000:]
    run, rec = last_run(outputs)
    up = next(r for r in rec["results"] if r["step"] == "upgrade")["facts"]
    print(json.dumps({k: up.get(k) for k in ("from_version", "serving_version", "schema_from", "schema_to", "migration",
                                             "hub_down_s", "watched_s", "before", "after_upgraded")}, indent=1))
    assert up["verdict"] == "upgraded" and up["serving_version"] == "6.1.1" and up["from_version"] == "5.5.4"
    assert (up["schema_from"], up["schema_to"]) == (V5_SCHEMA, V6_SCHEMA) and up["serving_schema"] == V6_SCHEMA
    checks = {i["target"]: i["detail"] for r in rec["results"] for i in r["items"] if i["action"] == "check"}
    assert checks["running servers"].startswith("1 still running") and "alice/" in checks["running servers"], checks
    j6up["upgrade_backup"] = next(r for r in rec["results"] if r["step"] == "backup")["facts"]["path"]
    assert hub_version(p) == "6.1.1"
    intact(p, j6up["token"])
    culler_answered_since(p, time.time() - 5)


def test_going_back_across_the_migration_is_refused_before_anything_changes(j6up):
    p, outputs = j6up["p"], j6up["outputs"]
    before = hub_state(p)
    res = hubops_cli("ops", "upgrade", "-p", str(j6up["params"]), "--set", "jupyterhub_version=5.5.4", outputs=outputs)
    assert res.returncode == 1, res.stderr[-3000:]
    run, _ = last_run(outputs)
    err = run["stages"][0]["error"]
    assert err["ename"] == "DowngradeRefused" and "refused, nothing was changed" in err["evalue"], err
    assert f"--set backup={Path(j6up['upgrade_backup']).name}" in err["evalue"], err["evalue"]
    print(f"\n{err['evalue']}")
    j6up["refusal"] = err["evalue"]
    # The parameter file still says 5.5.4: a plain deploy is refused as well, at 80-deploy.
    res = hubops_cli("deploy", "-p", str(j6up["params"]), "--only", "80-deploy", outputs=outputs)
    assert res.returncode != 0
    run, _ = last_run(outputs)
    assert run["stages"][-1]["error"]["ename"] == "DowngradeRefused", run["stages"][-1]
    assert hub_state(p) == before, "the hub was touched"
    assert hub_version(p) == "6.1.1"
    intact(p, j6up["token"])


def test_the_way_back_the_refusal_names_restores_jupyterhub_5(j6up):
    """`ops restore` of the backup taken before the upgrade, with the image the refusal names: the
    older JupyterHub and the database of its schema together, everything of that moment back."""
    p, outputs = j6up["p"], j6up["outputs"]
    cmd = re.search(r"`hubops ops restore -p \S+ (--set backup=\S+) (--set image=\S+) (--set confirm=true)`",
                    j6up.get("refusal", ""))
    assert cmd, j6up.get("refusal")
    t0 = time.monotonic()
    res = hubops_cli("ops", "restore", "-p", str(j6up["params"]), *" ".join(cmd.groups()).split(), outputs=outputs)
    print(f"\nrestore onto JupyterHub 5.5.4 with the backup taken before the upgrade: {time.monotonic() - t0:.1f} s")
    assert res.returncode == 0, res.stderr[-4000:]
    run, rec = last_run(outputs)
    assert any("image " in ch and "-> hubops-hub:" in ch for ch in run["stages"][0]["changes"]), run["stages"][0]["changes"]
    assert hub_version(p) == "5.5.4"
    intact(p, j6up["token"])
    # The parameter file says 5.5.4, and so does the hub now: a deploy changes nothing on it.
    res = hubops_cli("deploy", "-p", str(j6up["params"]), "--only", "80-deploy", outputs=outputs)
    assert res.returncode == 0 and "no change" in res.stderr, res.stderr[-3000:]
