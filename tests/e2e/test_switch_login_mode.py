"""Switching the login mode of a running deployment is one deploy (issue 14, item 7).

A hub deployed with the shared password, alice logged in with it and a file in her running
server's home; then the parameters say `auth.mode: oidc` (npm's oidc-provider, a real OpenID
provider over HTTPS with a test CA, see tests/peers_oidc.py) and one `hubops deploy` switches:

- 50-auth's record says the switch (shared-password -> oidc), 80-deploy's that the shared
  passwords' Swarm secrets were removed and the operator's password files retired (kept under
  `retired/`, 0600, still known to the redactor);
- the shared password no longer logs anyone in; alice logs in through the provider in headless
  Chromium and finds the same server (same Swarm service, never restarted) and her file;
- no secret of either mode under the records.

Deployment, ports and subnet per run (tests/helpers); torn down at the end. About 5 minutes with
warm images (two deploys).
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import docker
import pytest
import requests

from hubops.core.engine import Clients
from hubops.core.params import load_params
from hubops.hub.running import HubAPI
from hubops.ops import teardown
from tests import browser as chrome, helpers
from tests.helpers import ensure_swarm, free_port, free_subnet, hubops_cli, run_name, runs, stage_record
from tests.peers_oidc import running_provider

pytestmark = [pytest.mark.engine, pytest.mark.e2e, pytest.mark.slow]
PROJECT = Path(__file__).resolve().parents[2]
DEPLOYMENT = run_name("switch")
PORT = free_port()
PROVIDER_PORT = free_port(avoid=(PORT,))
CLIENT_ID = "hubops-switch"
USERS = "opadmin admin\nalice\n"
PROOF = "written before the switch"


def labelled(role: str | None = None) -> list[str]:
    client = docker.from_env()
    sel = [f"hubops.deployment={DEPLOYMENT}"] + ([f"hubops.role={role}"] if role else [])
    colls = {"service": client.services, "secret": client.secrets, "config": client.configs}
    return sorted(f"{k} {o.name}" for k, coll in colls.items() for o in coll.list(filters={"label": sel}))


@pytest.fixture(scope="module")
def provider(tmp_path_factory):
    gw = docker.from_env().networks.get("docker_gwbridge").attrs["IPAM"]["Config"][0]["Gateway"]
    with running_provider(tmp_path_factory.mktemp("oidc-provider"), gw, PROVIDER_PORT, client_id=CLIENT_ID,
                          hub_url=f"https://localhost:{PORT}", accounts={"alice": ["students"], "opadmin": []},
                          secret_prefix="oidc-switch-") as pr:
        yield pr


@pytest.fixture(scope="module")
def browser():
    with chrome.chromium() as b:
        yield b


def alice_container():
    """alice's server's container on this engine (one replica)."""
    client = docker.from_env()
    (svc,) = client.services.list(filters={"name": f"hubops-{DEPLOYMENT}-user-alice"})
    cid = next(t["Status"]["ContainerStatus"]["ContainerID"] for t in svc.tasks({"desired-state": "running"}))
    return svc, client.containers.get(cid)


@pytest.fixture(scope="module")
def switched(tmp_path_factory, provider):
    ensure_swarm()
    tmp = tmp_path_factory.mktemp("switch")
    params = helpers.make_params(tmp, DEPLOYMENT, port=PORT, subnet=free_subnet(), users=USERS)
    outputs = tmp / "outputs"
    p = load_params(params)
    try:
        first = hubops_cli("deploy", "-p", str(params), outputs=outputs)
        assert first.returncode == 0, first.stderr[-4000:]
        # alice logs in with the shared password, her server starts, a file goes into her home.
        s = requests.Session()
        s.trust_env, s.verify = False, str(p.operator_path / "ca.pem")
        s.get(f"{p.hub_url}/hub/login", timeout=10)
        shared = (p.operator_path / "user-password").read_text().strip()
        r = s.post(f"{p.hub_url}/hub/login", data={"username": "alice", "password": shared, "_xsrf": s.cookies.get("_xsrf")},
                   allow_redirects=False, timeout=10)
        assert r.status_code == 302, r.text[:300]
        HubAPI(p).request("POST", "/hub/api/users/alice/server", ok=(201, 202))
        HubAPI(p).wait_server("alice", ready=True, timeout=180)
        svc, ctr = alice_container()
        rc, out = ctr.exec_run(["sh", "-c", f'echo "{PROOF}" > "$HOME/switch-proof.txt"'])
        assert rc == 0, out
        before = {"service_id": svc.id, "container_id": ctr.id, "shared_password": shared,
                  "user_password_secrets": labelled("user-password")}
        assert before["user_password_secrets"], "the shared-password deploy made no user-password secret"

        secret = tmp / "oidc-client-secret"
        secret.write_text(provider.client_secret + "\n")
        secret.chmod(0o600)
        text = params.read_text().replace("auth: {mode: shared-password, userlist: userlist}", textwrap.dedent(f"""\
            auth:
              mode: oidc
              userlist: userlist
              oidc:
                issuer: {provider.issuer}
                client_id: {CLIENT_ID}
                client_secret: {{file: oidc-client-secret}}
                scopes: [openid, profile, groups]
                allowed_groups: [students]
                ca_bundle: {provider.ca}"""))
        assert "mode: oidc" in text
        params.write_text(text)
        second = hubops_cli("deploy", "-p", str(params), outputs=outputs)
        yield {"p": load_params(params), "outputs": outputs, "second": second, "before": before,
               "provider": provider, "tmp": tmp}
    finally:
        teardown.teardown(p, Clients(p), remove_volumes=True, remove_user_data=True)
        left = labelled()
        assert not left, f"teardown left {left}"


def test_one_deploy_switches_and_the_record_says_so(switched):
    assert switched["second"].returncode == 0, switched["second"].stderr[-4000:]
    run = runs(switched["outputs"])[-1]
    assert run["status"] == "ok", [(s["name"], s["status"]) for s in run["stages"]]
    auth = stage_record(switched["outputs"], run, "50-auth")
    assert any("switch login mode" in c and "shared-password -> oidc" in c for c in auth["changes"]), auth["changes"]
    assert auth["results"][0]["facts"]["mode_before"] == "shared-password"
    deploy = "\n".join(stage_record(switched["outputs"], run, "80-deploy")["changes"])
    for name in switched["before"]["user_password_secrets"]:
        assert f"remove {name}" in deploy, deploy
    assert "retire operator file user-password" in deploy and "retire operator file admin-password" in deploy, deploy


def test_the_old_secrets_are_gone_and_the_passwords_retired(switched):
    p = switched["p"]
    assert labelled("user-password") == [] and labelled("admin-password") == []
    assert labelled("oidc-client-secret"), "no OpenID client secret in the Swarm"
    for name in ("user-password", "admin-password"):
        assert not (p.operator_path / name).exists()
        kept = p.operator_path / "retired" / name
        assert kept.is_file() and kept.stat().st_mode & 0o077 == 0, oct(kept.stat().st_mode)


def test_the_shared_password_no_longer_logs_in(switched):
    p = switched["p"]
    s = requests.Session()
    s.trust_env, s.verify = False, str(p.operator_path / "ca.pem")
    s.get(f"{p.hub_url}/hub/login", timeout=10)
    r = s.post(f"{p.hub_url}/hub/login", data={"username": "alice", "password": switched["before"]["shared_password"],
                                                "_xsrf": s.cookies.get("_xsrf")}, allow_redirects=False, timeout=10)
    assert not (r.status_code == 302 and "/hub/login" not in r.headers.get("location", "")), (r.status_code, r.headers)
    assert s.get(f"{p.hub_url}/hub/api/user", timeout=10).status_code in (401, 403)


def test_alice_logs_in_through_the_provider_and_finds_her_server_and_file(switched, browser):
    p = switched["p"]
    page, status = switched["provider"].browser_login(browser, p.hub_url, "alice")  # login and consent pages
    assert status == 302, status
    ctx = page.context
    # Her server first (its own OAuth round with the hub), then its API, as a browser would.
    resp = chrome.goto(page, f"{p.hub_url}/user/alice/")
    if "/hub/api/oauth2/authorize" in page.url and resp and resp.status == 200:
        with page.expect_navigation():
            page.click("input[type=submit], button[type=submit]")
    assert page.url.startswith(f"{p.hub_url}/user/alice/"), page.url
    resp = chrome.goto(page, f"{p.hub_url}/user/alice/api/contents/switch-proof.txt?content=1")
    assert resp and resp.status == 200, (resp and resp.status, page.content()[:500])
    assert PROOF in page.inner_text("body"), page.content()[:500]
    ctx.close()
    svc, ctr = alice_container()
    assert (svc.id, ctr.id) == (switched["before"]["service_id"], switched["before"]["container_id"])
    assert HubAPI(p).user("alice")["groups"] == ["students"]


def test_no_secret_of_either_mode_under_the_records(switched):
    p = switched["p"]
    values = helpers.deployment_secrets(p, docker.from_env())
    values["shared-password"] = switched["before"]["shared_password"]
    values["oidc-client-secret"] = switched["provider"].client_secret
    values.update({f"issued by the provider #{i}": t for i, t in enumerate(switched["provider"].issued_tokens())})
    assert switched["provider"].issued_tokens(), "alice's login above made the provider issue codes and tokens"
    hits = helpers.secret_hits(values, [switched["outputs"]], {})
    assert not hits, hits
