"""Log in through a real OpenID Connect provider, groups and roles, and taking someone out:
`hubops deploy` of a hub with `auth.mode: oidc`, every login driven in headless Chromium.

- The provider is npm's oidc-provider (OpenID Certified), run by this module over HTTPS with a test
  CA, on the host's address on docker_gwbridge (which the hub's container reaches), with a few
  accounts and their groups. The hub trusts the test CA through auth.oidc.ca_bundle.
- A user of an allowed group logs in through the provider's login and consent pages and lands in
  their own server; a user in no allowed group gets 403; an admin group makes an admin; a userlist
  '@group' word makes a group; the role `teaching` lets the `staff` group open a student's server,
  and a student cannot open another's.
- Taking someone out: a user removed from the userlist cannot log in after 50-auth and 80-deploy,
  and their running server is stopped by that deploy (the record says whose); a user removed from
  an allowed group at the provider is refused at their next login.
- No secret (client secret, generated secrets, tokens) under the records or in the hub's log.

Deployment `lgoidc-RUN`, its ports and overlay subnet from tests/helpers (tests/e2e/logins.py deploys
it); the module tears everything down at the end. Takes about 5 minutes (a cold deploy, warm images).
"""
from __future__ import annotations

import json
import time

import docker
import pytest

from hubops.hub.running import HubAPI
from tests import browser as chrome, helpers
from tests.e2e import logins
from tests.helpers import free_port, free_subnet, run_name, runs, stage_record
from tests.peers_oidc import running_provider

pytestmark = [pytest.mark.engine, pytest.mark.e2e, pytest.mark.slow]
DEPLOYMENT = run_name("lgoidc")
PORT = free_port()
PROVIDER_PORT = free_port(avoid=(PORT,))
SUBNET = free_subnet()
CLIENT_ID = f"hubops-{DEPLOYMENT}"
USERS = "opadmin admin\ncarol @students\n"
ACCOUNTS = {"alice": ["students"], "bob": ["students"], "prof": ["staff"], "dora": ["hubadmins"],
            "mallory": ["visitors"], "carol": [], "opadmin": []}
FIGURES: dict[str, float] = {}


@pytest.fixture(scope="module")
def provider(tmp_path_factory):
    gw = docker.from_env().networks.get("docker_gwbridge").attrs["IPAM"]["Config"][0]["Gateway"]
    with running_provider(tmp_path_factory.mktemp("oidc-provider"), gw, PROVIDER_PORT, client_id=CLIENT_ID,
                          hub_url=f"https://localhost:{PORT}", accounts=ACCOUNTS,
                          secret_prefix="oidc-e2e-") as pr:
        yield pr


@pytest.fixture(scope="module")
def browser():
    with chrome.chromium() as b:
        yield b


@pytest.fixture(scope="module")
def deployed(tmp_path_factory, provider):
    tmp = tmp_path_factory.mktemp("lgoidc")
    secret = tmp / "oidc-client-secret"
    secret.write_text(provider.client_secret + "\n")
    secret.chmod(0o600)
    with logins.deployed(tmp, DEPLOYMENT, port=PORT, subnet=SUBNET, users=USERS, figures=FIGURES, provider=provider,
                         auth=f"""
            mode: oidc
            userlist: userlist
            oidc:
              issuer: {provider.issuer}
              client_id: {CLIENT_ID}
              client_secret: {{file: oidc-client-secret}}
              scopes: [openid, profile, groups]
              allowed_groups: [students, staff]
              admin_groups: [hubadmins]
              ca_bundle: {provider.ca}
            roles:
              - name: teaching
                groups: [staff]
                scopes: ["access:servers!group=students", "admin:servers!group=students", "read:users!group=students"]
            """) as d:
        yield d


# -- the browser ----------------------------------------------------------------------------------
def log_in(d, browser, user: str, *, next_path: str = "/hub/home"):
    """`user` logs in in a fresh browser through the provider's login and consent pages
    (tests/peers_oidc.py); (page, status of the hub's answer at /hub/oauth_callback)."""
    page, status = d["provider"].browser_login(browser, d["p"].hub_url, user, next_path=next_path)
    if (status or 0) >= 500:
        print(chrome.hub_log_tail(d["p"].hub_service))
    return page, status


# -- the tests -------------------------------------------------------------------------------------
def test_cold_deploy_reads_the_discovery_document(deployed):
    cold = deployed["cold"]
    assert cold.returncode == 0, cold.stderr[-4000:]
    run = runs(deployed["outputs"])[0]
    assert run["status"] == "ok", [(s["name"], s["status"]) for s in run["stages"]]
    rec = stage_record(deployed["outputs"], run, "50-auth")
    facts = rec["results"][0]["facts"]
    issuer = deployed["provider"].issuer
    assert facts["mode"] == "oidc" and facts["discovery"]["issuer"] == issuer
    assert facts["discovery"]["authorization_endpoint"] == f"{issuer}/auth"
    assert facts["roles"] == {"teaching": {"groups": ["staff"], "scopes": [
        "access:servers!group=students", "admin:servers!group=students", "read:users!group=students"]}}
    assert facts["groups"] == {"students": ["carol"]}
    changes = "\n".join(rec["changes"])
    assert f"create secret {deployed['p'].prefix}-oidc-client-secret-" in changes \
        and f"create config {deployed['p'].prefix}-oidc-ca-" in changes
    assert any("answers with a valid discovery document" in k for k in rec["kept"]), rec["kept"]
    assert deployed["provider"].requests_seen("/.well-known/openid-configuration") >= 2  # 50-auth and 80-deploy


def test_student_logs_in_in_a_browser_and_reaches_their_server(deployed, browser):
    p = deployed["p"]
    t0 = time.monotonic()
    page, status = log_in(deployed, browser, "alice", next_path="/hub/spawn")
    FIGURES["login_s"] = round(time.monotonic() - t0, 1)
    assert status == 302, status
    assert deployed["provider"].requests_seen("/token") >= 1 and deployed["provider"].requests_seen("/me") >= 1
    logins.wait_for_own_server(page, deployed, "alice")
    FIGURES["login_to_own_server_s"] = round(time.monotonic() - t0, 1)
    page.screenshot(path=str(helpers.screenshot_path("oidc-alice-server.png")))
    assert logins.open_server_of(page, deployed, "alice") == 200
    assert "started" in json.loads(page.inner_text("body"))
    u = HubAPI(p).user("alice")
    assert u["groups"] == ["students"] and u["admin"] is False
    page.context.close()


def test_user_in_no_allowed_group_is_refused(deployed, browser):
    page, status = log_in(deployed, browser, "mallory")
    assert status == 403, status
    assert HubAPI(deployed["p"]).user("mallory") is None
    page.context.close()


def test_admin_group_makes_an_admin_and_userlist_groups_are_groups(deployed, browser):
    api = HubAPI(deployed["p"])
    page, status = log_in(deployed, browser, "dora")
    assert status == 302
    assert api.user("dora")["admin"] is True and api.user("dora")["groups"] == ["hubadmins"]
    page.context.close()
    page, status = log_in(deployed, browser, "carol")  # let in by the userlist, '@students' there
    assert status == 302
    assert api.user("carol")["groups"] == ["students"] and api.user("carol")["admin"] is False
    page.context.close()


def test_staff_opens_a_students_server_and_a_student_cannot_open_anothers(deployed, browser):
    logins.ensure_server(deployed, "alice", lambda u, **k: log_in(deployed, browser, u, **k))
    page, status = log_in(deployed, browser, "prof")
    assert status == 302 and HubAPI(deployed["p"]).user("prof")["groups"] == ["staff"]
    assert logins.open_server_of(page, deployed, "alice") == 200, page.content()[:500]
    assert "started" in json.loads(page.inner_text("body"))
    page.context.close()
    page, status = log_in(deployed, browser, "bob")
    assert status == 302
    code = logins.open_server_of(page, deployed, "alice")
    assert code == 403, (code, page.url, page.content()[:500])
    page.screenshot(path=str(helpers.screenshot_path("oidc-bob-refused-alices-server.png")))
    page.context.close()


def test_removed_from_the_userlist_cannot_log_in_and_their_server_is_stopped(deployed, browser):
    p = deployed["p"]
    api = HubAPI(p)
    page, status = log_in(deployed, browser, "carol")
    page.context.close()
    api.request("POST", "/hub/api/users/carol/server", ok=(201, 202))
    api.wait_server("carol", ready=True, timeout=180)
    assert docker.from_env().services.list(filters={"name": f"{p.prefix}-user-carol"})
    logins.ensure_server(deployed, "alice", lambda u, **k: log_in(deployed, browser, u, **k))
    started = api.request("GET", "/user/alice/api/status").json()["started"]
    out = logins.redeploy_auth(deployed, "opadmin admin\n")  # carol off
    assert out.returncode == 0, out.stderr[-4000:]
    run = runs(deployed["outputs"])[-1]
    rec = stage_record(deployed["outputs"], run, "80-deploy")
    changes = "\n".join(rec["changes"])
    assert "remove user carol" in changes and "their running server was stopped" in changes, changes
    facts = rec["results"][0]["facts"]
    assert facts["users_removed"] == [{"user": "carol", "server_stopped": True}]
    assert not docker.from_env().services.list(filters={"name": f"{p.prefix}-user-carol"})
    assert api.user("carol") is None
    page, status = log_in(deployed, browser, "carol")
    assert status == 403, status
    page.context.close()
    # alice, let in by her group, kept her server through the deploy.
    assert api.request("GET", "/user/alice/api/status").json()["started"] == started


def test_removed_from_the_group_at_the_provider_is_refused_at_next_login(deployed, browser):
    deployed["provider"].set_account("bob", ["alumni"])
    page, status = log_in(deployed, browser, "bob")
    assert status == 403, status
    page.context.close()


def test_no_secret_in_the_records_or_the_hub_log(deployed):
    issued = deployed["provider"].issued_tokens()  # every authorization code, access token and ID token
    assert len(issued) >= 3 * 5, len(issued)
    hits = logins.secret_hits(deployed, {"oidc client secret": deployed["provider"].client_secret,
                                         **{f"issued code or token #{i}": v for i, v in enumerate(issued)}})
    assert len(runs(deployed["outputs"])) >= 2
    assert not hits, hits
