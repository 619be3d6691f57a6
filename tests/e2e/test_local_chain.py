"""The whole deploy chain on the local default (a single-node Swarm on this engine), run the way
a user runs it: the `hubops deploy` command. One deployment (`e2e-RUN`, a free port and subnet: see
tests/helpers) is shared by the tests in this file and torn down at the end.

- the cold deploy runs all eleven stages; 90-verify spawned a server and reached it through the proxy;
- the hub serves HTTPS verified against the deployment's CA, and the generated admin password
  logs in through the real login form;
- a second deploy changes nothing, and the hub answers throughout;
- no secret (passwords, API token, private keys, Swarm secrets, join tokens; as text, base64 or PEM
  lines) appears under the run's folder or in the CLI's log;
- teardown leaves no object labelled for the deployment.
"""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import docker
import pytest
import requests

from hubops.ops import teardown
from hubops.core.engine import Clients
from hubops.core.params import load_params
from tests.helpers import (deployment_secrets, ensure_swarm, free_port, free_subnet, hubops_cli, make_params,
                           run_name, runs, secret_hits)

pytestmark = [pytest.mark.engine, pytest.mark.e2e]
PROJECT = Path(__file__).resolve().parents[2]
DEPLOYMENT = run_name("e2e")


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    ensure_swarm()  # made here when the engine has none: two runs' 20-swarm must not both init it
    params = make_params(tmp, DEPLOYMENT, port=free_port(), subnet=free_subnet())
    outputs = tmp / "outputs"
    plan = hubops_cli("deploy", "-p", str(params), "--plan", outputs=outputs)
    after_plan = labelled_objects()
    operator_after_plan = sorted(f.name for f in (tmp / "operator").rglob("*") if f.is_file())
    t0 = time.monotonic()
    cold = hubops_cli("deploy", "-p", str(params), outputs=outputs)
    cold_s = time.monotonic() - t0
    print(f"\ncold deploy: {cold_s:.1f} s\n{cold.stderr[-3000:]}")
    p = load_params(params)
    yield {"params": params, "outputs": outputs, "cold": cold, "cold_s": cold_s, "p": p,
           "plan": plan, "after_plan": after_plan, "operator_after_plan": operator_after_plan}
    # Tear down the way an operator does: the teardown runbook, confirmed, volumes included.
    # Users' homes are kept by default (a user's files survive a teardown unless asked): asked here.
    down = hubops_cli("ops", "teardown", "-p", str(params), "--set", "confirm=true", "--set", "remove_volumes=true",
                      "--set", "remove_user_data=true", outputs=outputs)
    left = labelled_objects()
    if down.returncode != 0 or left:  # still leave the machine clean for the next test
        teardown.teardown(p, Clients(p), remove_volumes=True, remove_user_data=True)
    assert down.returncode == 0, down.stderr[-3000:]
    assert not left, f"teardown left {left}"


def labelled_objects() -> list[str]:
    client = docker.from_env()
    if client.info()["Swarm"]["LocalNodeState"] != "active":
        return [f"volume {v.name}" for v in client.volumes.list(filters={"label": f"hubops.deployment={DEPLOYMENT}"})]
    return [f"{kind} {o.name}" for kind, coll in (("service", client.services), ("secret", client.secrets),
                                                  ("config", client.configs), ("network", client.networks),
                                                  ("volume", client.volumes))
            for o in coll.list(filters={"label": f"hubops.deployment={DEPLOYMENT}"})]


def hub_tasks(p) -> str:
    """The hub service's task history (a hub Swarm restarted, e.g. after failed healthchecks on a
    machine too busy to answer them, shows here), for failure messages."""
    try:
        tasks = docker.from_env().services.get(p.hub_service).tasks()
    except docker.errors.DockerException as e:
        return f"\nhub tasks: unreadable ({e})"
    rows = sorted((t["CreatedAt"][:19], t["Status"]["State"], t["Status"].get("Err", "")) for t in tasks)
    return "\nhub tasks (created, state, error):\n" + "\n".join("  " + "  ".join(r) for r in rows)


def test_plan_first_changes_nothing(deployed):
    plan = deployed["plan"]
    assert plan.returncode == 0, plan.stderr[-4000:]
    run = runs(deployed["outputs"])[0]
    assert run["kind"] == "plan" and run["status"] == "ok"
    assert run["changed"] > 0, "a plan on a new deployment predicts changes"
    assert deployed["after_plan"] == [], f"the plan changed the cluster: {deployed['after_plan']}"
    assert deployed["operator_after_plan"] == [], "a plan writes no credentials either"


def test_cold_deploy_runs_every_stage(deployed):
    cold = deployed["cold"]
    assert cold.returncode == 0, cold.stderr[-4000:]
    run = runs(deployed["outputs"])[1]
    assert run["status"] == "ok" and run["kind"] == "deploy"
    assert [s["name"] for s in run["stages"]] == ["00-preflight", "10-hosts", "20-swarm", "30-network", "40-tls",
                                                  "50-auth", "60-images", "65-netpolicy", "70-storage", "80-deploy", "90-verify"]
    assert all(s["status"] == "ok" and s["duration_s"] > 0 for s in run["stages"])
    assert run["engines"]["local"]["engine"], run["engines"]
    assert run["params_sha256"] == deployed["p"].digest
    assert (deployed["outputs"] / run["run_id"] / "index.html").exists()
    assert f"hub:       https://localhost:{deployed['p'].hub.https_port}/" in cold.stderr


def test_verify_spawned_a_server_and_reached_it_through_the_proxy(deployed):
    run = runs(deployed["outputs"])[1]
    nb = json.loads((deployed["outputs"] / run["run_id"] / "90-verify.ipynb").read_text())
    outputs = [o for c in nb["cells"] for o in c.get("outputs", [])]
    record = next(o["data"]["application/vnd.hubops.record+json"] for o in outputs
                  if "application/vnd.hubops.record+json" in o.get("data", {}))
    checks = {i["target"]: i["detail"] for r in record["results"] for i in r["items"]}
    port = deployed["p"].hub.https_port
    assert "200 through the proxy" in checks[f"GET https://localhost:{port}/user/hubopsverify/api/status"]
    assert "spawned by SwarmSpawner" in checks[f"service hubops-{DEPLOYMENT}-user-hubopsverify"]
    facts = record["results"][0]["facts"]
    assert facts["server_node"] == "local" and facts["spawn_seconds"] > 0
    # ... and removed afterwards.
    assert not docker.from_env().services.list(filters={"name": f"hubops-{DEPLOYMENT}-user-"})


def test_hub_serves_https_and_the_generated_password_logs_in(deployed):
    p = deployed["p"]
    ca = str(p.operator_path / "ca.pem")
    assert requests.get(f"{p.hub_url}/hub/health", verify=ca, timeout=10).status_code == 200  # verify= wins over env
    plain = requests.Session()
    plain.trust_env = False  # the machine's CA bundle variables must not decide this
    with pytest.raises(requests.exceptions.SSLError):
        plain.get(f"{p.hub_url}/hub/health", timeout=10)  # not trusted without the CA
    s = requests.Session()
    s.trust_env = False
    s.verify = ca
    s.get(f"{p.hub_url}/hub/login", timeout=10)
    password = (p.operator_path / "admin-password").read_text().strip()
    bad = s.post(f"{p.hub_url}/hub/login", data={"username": "operator", "password": "wrong-password",
                                                 "_xsrf": s.cookies.get("_xsrf")}, timeout=10, allow_redirects=False)
    assert bad.status_code == 403
    ok = s.post(f"{p.hub_url}/hub/login", data={"username": "operator", "password": password,
                                                "_xsrf": s.cookies.get("_xsrf")}, timeout=10, allow_redirects=False)
    assert ok.status_code == 302, ok.text[:300]
    # Cookie-authenticated API calls need the XSRF token header in JupyterHub 5.
    me = s.get(f"{p.hub_url}/hub/api/user", headers={"X-XSRFToken": s.cookies.get("_xsrf")}, timeout=10)
    assert me.status_code == 200 and me.json()["name"] == "operator" and me.json()["admin"] is True

    # Day-2 runbooks warn users through the hub: a notice on their hub pages, for them only.
    from hubops.hub import running

    clients = Clients(p)
    running.announce(p, clients, {"operator": "Maintenance notice 7f3a: your server moves"})
    assert "Maintenance notice 7f3a" in s.get(f"{p.hub_url}/hub/home", timeout=10).text
    running.announce(p, clients, {"alice": "Maintenance notice 7f3a"})
    assert "Maintenance notice 7f3a" not in s.get(f"{p.hub_url}/hub/home", timeout=10).text
    running.announce(p, clients, {})


def openssl_connects(p, *args: str) -> tuple[bool, str]:
    """Whether `openssl s_client` completes a handshake with the hub's proxy with these options."""
    import subprocess

    host, port = p.hub_url.split("://", 1)[1].rsplit(":", 1)
    out = subprocess.run(["openssl", "s_client", "-connect", f"{host}:{port}", "-servername", p.hub.public_name,
                          "-CAfile", str(p.operator_path / "ca.pem"), *args],
                         input="", capture_output=True, text=True, timeout=30)
    text = out.stdout + out.stderr
    return out.returncode == 0 and "Cipher is (NONE)" not in text and "Verify return code: 0" in text, text


def test_tls_only_1_2_and_up_with_aead_suites_and_hsts_on_hub_and_users_servers(deployed):
    """The proxy refuses TLS 1.0/1.1 and CBC or SHA-1 suites on TLS 1.2; the hub's pages and a
    user's server send Strict-Transport-Security (checked with openssl s_client and requests)."""
    from hubops.hub import running

    p = deployed["p"]
    for proto in ("-tls1", "-tls1_1"):
        ok, text = openssl_connects(p, proto, "-cipher", "DEFAULT@SECLEVEL=0")
        assert not ok, f"{proto} was accepted:\n{text[-800:]}"
    for cbc in ("ECDHE-RSA-AES128-SHA", "ECDHE-ECDSA-AES128-SHA", "ECDHE-RSA-AES256-SHA384", "AES128-GCM-SHA256"):
        ok, text = openssl_connects(p, "-tls1_2", "-cipher", cbc)
        assert not ok, f"TLS 1.2 with {cbc} was accepted:\n{text[-800:]}"
    ok, text = openssl_connects(p, "-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256")
    assert ok, f"TLS 1.2 with an AEAD suite was refused:\n{text[-800:]}"
    ok, text = openssl_connects(p, "-tls1_3")
    assert ok, f"TLS 1.3 was refused:\n{text[-800:]}"

    api = running.HubAPI(p)
    hub_page = api.s.get(f"{api.base}/hub/login", timeout=10)
    assert hub_page.headers.get("Strict-Transport-Security", "").startswith("max-age="), dict(hub_page.headers)
    api.request("POST", "/hub/api/users/alice/server", ok=(201, 202), timeout=running.SPAWN_REQUEST_TIMEOUT)
    try:
        api.wait_server("alice", ready=True, timeout=180)
        user = api.request("GET", "/user/alice/api/status")
        assert user.headers.get("Strict-Transport-Security", "").startswith("max-age="), dict(user.headers)
    finally:
        api.request("DELETE", "/hub/api/users/alice/server", ok=(202, 204))
        api.wait_server("alice", ready=False, timeout=120)


def test_announce_shows_a_notice_until_cleared(deployed):
    """`hubops ops announce` puts a message on every user's hub pages; clear takes it down."""
    from tests.helpers import admin_session

    p, params, outputs = deployed["p"], str(deployed["params"]), deployed["outputs"]
    s = admin_session(p)
    shown = hubops_cli("ops", "announce", "-p", params, "--set", "message=Maintenance Saturday 9b1e",
                       "--set", "hours=2", outputs=outputs)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "Maintenance Saturday 9b1e" in s.get(f"{p.hub_url}/hub/home", timeout=10).text
    again = hubops_cli("ops", "announce", "-p", params, "--set", "message=Maintenance Saturday 9b1e",
                       "--set", "hours=2", outputs=outputs)
    assert again.returncode == 0 and "same text" in again.stdout + again.stderr
    cleared = hubops_cli("ops", "announce", "-p", params, "--set", "clear=true", outputs=outputs)
    assert cleared.returncode == 0, cleared.stderr[-2000:]
    assert "Maintenance Saturday 9b1e" not in s.get(f"{p.hub_url}/hub/home", timeout=10).text
    bad = hubops_cli("ops", "announce", "-p", params, "--set", "message=x", "--set", "users=nobody", outputs=outputs)
    assert bad.returncode != 0 and "nobody not in the userlist" in bad.stdout + bad.stderr


def test_second_deploy_changes_nothing_and_the_hub_keeps_serving(deployed):
    p = deployed["p"]
    ca = str(p.operator_path / "ca.pem")
    failures: list[str] = []
    answered = 0
    stop = threading.Event()

    def watch():
        nonlocal answered
        while not stop.is_set():
            try:
                r = requests.get(f"{p.hub_url}/hub/health", verify=ca, timeout=5)
                if r.status_code != 200:
                    failures.append(f"HTTP {r.status_code}")
                answered += 1
            except requests.RequestException as e:
                failures.append(e.__class__.__name__)
            time.sleep(0.5)

    t = threading.Thread(target=watch)
    t.start()
    t0 = time.monotonic()
    try:
        warm = hubops_cli("deploy", "-p", str(deployed["params"]), outputs=deployed["outputs"])
    finally:
        stop.set()
        t.join()
    warm_s = time.monotonic() - t0
    deployed["warm"] = warm  # its log is scanned for secrets too
    print(f"\nwarm deploy: {warm_s:.1f} s (cold was {deployed['cold_s']:.1f} s)")
    assert warm.returncode == 0, warm.stderr[-4000:] + hub_tasks(p)
    run = runs(deployed["outputs"])[-1]
    assert run["status"] == "ok" and run["changed"] == 0, [s.get("changes") for s in run["stages"]]
    assert all(s["kept"] > 0 for s in run["stages"]), "every stage says what it found already right"
    assert "0 changed" in warm.stderr
    assert answered > 5 and not failures, failures


def test_no_secret_under_the_run_folder_or_in_the_cli_log(deployed):
    """Scanned: every file under the outputs folder (each run's notebooks, run.json, index.html
    and stage pages: the plan, the cold and the warm deploy), and the CLI's whole stdout and stderr
    of those three commands. Looked for: every value of deployment_secrets (the operator folder's
    passwords, API token and private keys; every Swarm secret as the hub reads it: cookie secret,
    proxy token, crypt key, passwords, API token, TLS key; the swarm's join tokens), as text, as
    base64, and each private key's PEM body lines."""
    p = deployed["p"]
    values = deployment_secrets(p, docker.from_env())
    assert any("cookie-secret" in k for k in values) and any("join token" in k for k in values), sorted(values)
    logs = {f"{name} {stream}": getattr(deployed[name], stream)
            for name in ("plan", "cold", "warm") if name in deployed for stream in ("stdout", "stderr")}
    assert len(logs) == 6, "the warm deploy's log is missing: run the whole module in order"
    files = [f for f in deployed["outputs"].rglob("*") if f.is_file()]
    print(f"\nsecret scan: {len(values)} values x 2-3 forms over {len(files)} files and {len(logs)} CLI logs")
    hits = secret_hits(values, [deployed["outputs"]], logs)
    assert not hits, f"secrets found in {hits}"


# -- issue 13: the default keeps users' files; hubops's API token is scoped, expires, rotates ------------
def _wait_server(api, user: str, ready: bool, limit: float = 120) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        servers = api.request("GET", f"/hub/api/users/{user}").json().get("servers") or {}
        if bool(servers.get("", {}).get("ready")) == ready and (ready or "" not in servers):
            return
        time.sleep(1)
    raise AssertionError(f"{user}'s server did not become {'ready' if ready else 'stopped'} in {limit} s")


def test_the_default_keeps_a_users_files_across_a_stop(deployed):
    """Item 8: on the embedded default (no storage setting), a file a user saved is there after their
    server is stopped (as the idle culler stops it) and started again."""
    from hubops.hub.running import HubAPI

    p = deployed["p"]
    assert p.storage.users.mode == "node-local"
    api = HubAPI(p)
    api.request("POST", "/hub/api/users/alice/server", ok=(201, 202), timeout=60)
    _wait_server(api, "alice", ready=True)
    body = {"type": "file", "format": "text", "content": "kept across a stop 5d1e"}
    api.request("PUT", "/user/alice/api/contents/kept.txt", ok=(200, 201), json=body)
    api.request("DELETE", "/hub/api/users/alice/server", ok=(202, 204), timeout=60)
    _wait_server(api, "alice", ready=False)
    client = docker.from_env()
    assert client.volumes.get(f"{p.prefix}-home-alice").attrs["Labels"]["hubops.user"] == "alice"
    api.request("POST", "/hub/api/users/alice/server", ok=(201, 202), timeout=60)
    _wait_server(api, "alice", ready=True)
    got = api.request("GET", "/user/alice/api/contents/kept.txt").json()
    assert got["content"] == "kept across a stop 5d1e"
    api.request("DELETE", "/hub/api/users/alice/server", ok=(202, 204), timeout=60)
    _wait_server(api, "alice", ready=False)


def test_hubops_token_is_scoped_and_a_rotated_one_is_revoked(deployed):
    """Item 6: hubops's token may do what hubops does and no more; near its expiry a deploy makes a
    new one, and the hub refuses the old one from its restart on."""
    from datetime import datetime, timedelta, timezone

    from hubops.core import api_token
    from hubops.hub.running import HubAPI

    p = deployed["p"]
    api = HubAPI(p)
    assert api.request("GET", "/hub/api/users").status_code == 200
    # create a user other than the verify user, or make one admin: refused (JupyterHub answers 404 "No access
    # to resources or resources not found" to a scope filtered to another user, 403 to a missing scope)
    assert api.request("POST", "/hub/api/users/mallory", ok=(403, 404)).status_code in (403, 404)
    assert api.request("PATCH", "/hub/api/users/alice", ok=(403, 404), json={"admin": True}).status_code in (403, 404)
    assert api.request("GET", "/hub/api/users/mallory", ok=(404,)).status_code == 404  # not created
    expires = api_token.read_expiry(p)
    assert expires is not None and timedelta(days=80) < expires - datetime.now(timezone.utc) <= timedelta(days=90)

    old = (p.operator_path / "api-token").read_text().strip()
    soon = datetime.now(timezone.utc) + timedelta(days=3)  # inside RENEW_DAYS: the next deploy rotates
    (p.operator_path / "api-token-expires").write_text(soon.isoformat() + "\n")
    again = hubops_cli("deploy", "-p", str(deployed["params"]), outputs=deployed["outputs"])
    assert again.returncode == 0, again.stderr[-3000:]
    new = (p.operator_path / "api-token").read_text().strip()
    assert new != old and api_token.read_expiry(p) - datetime.now(timezone.utc) > timedelta(days=80)
    s = requests.Session()
    s.trust_env = False
    s.verify = str(p.operator_path / "ca.pem")
    url = f"{p.hub_url}/hub/api/users"
    assert s.get(url, headers={"Authorization": f"token {new}"}, timeout=10).status_code == 200
    assert s.get(url, headers={"Authorization": f"token {old}"}, timeout=10).status_code == 403
