"""OpenID Connect login on a lab (issue 14, item 1's "and on a lab"): a hub deployed with
`hubops deploy` and `auth.mode: oidc` on one manager and one worker, each a Docker engine in its own
network namespace reached over mutual TLS, against npm's oidc-provider (tests/peers_oidc.py, a real
OpenID Certified provider over HTTPS with a test CA) running on this machine; every login driven in
headless Chromium.

- The provider listens on the lab bridge's host-side address: the one address of this machine that
  both the hub's container inside the lab (through its node's namespace) and Chromium on this
  machine reach, so the issuer URL is the same for both. hubops reads its discovery document, keeps
  the client secret (a {file:} reference) as a Swarm secret and the test CA as a Swarm config on the
  lab; the hub verifies the provider against that CA alone.
- alice (group `students` at the provider) logs in through the provider's login and consent pages,
  lands on the hub, her server is spawned on the worker (not the hub's manager), and she reaches it
  through the proxy; her groups come from the `groups` claim; dora (group `hubadmins`) is an admin;
  mallory (group `visitors`, not allowed) is refused with 403 and gets no server.
- Taking someone out: carol (let in by the userlist) has a running server; she is taken off the
  userlist and bob is taken out of `students` at the provider; `hubops deploy --only 50-auth --only
  80-deploy` stops carol's server and deletes her from the hub (the record names her); neither can
  log in afterwards.
- No secret under the run's records or in the hub's log: the client secret, every authorization
  code, access token and ID token the provider issued, the generated secrets, the join tokens.

Resources: lab `oclab-RUN` on a free lab subnet, overlay and ports chosen free (tests/helpers);
the lab is taken down at the end, also on failure. About 9 minutes (lab up, a cold deploy that
delivers the images to two engines, six logins, a partial redeploy, lab down).
"""
from __future__ import annotations

import json
import re
import time

import pytest

from hubops.core.engine import Clients
from hubops.hub.running import HubAPI
from tests import browser as chrome, helpers
from tests.e2e import logins
from tests.helpers import LAB_SUBNETS, free_port, free_subnet, hubops_cli, run_name, runs, stage_record
from tests.peers_oidc import running_provider

pytestmark = [pytest.mark.engine, pytest.mark.e2e, pytest.mark.slow]  # `make test-all` only (see README: Tests)
LAB = run_name("oclab")
SUBNET = free_subnet(LAB_SUBNETS)
BRIDGE_ADDR = SUBNET.rsplit(".", 1)[0] + ".1"  # the lab bridge's host-side address: lab containers and Chromium reach it
OVERLAY = free_subnet()
PORT = free_port()
PROVIDER_PORT = free_port(avoid=(PORT,))
CLIENT_ID = "hubops-oclab"
USERS = "opadmin admin\ncarol\n"
ACCOUNTS = {"alice": ["students"], "bob": ["students"], "dora": ["hubadmins"], "mallory": ["visitors"],
            "carol": [], "opadmin": []}
FIGURES: dict[str, float] = {}


# -- the lab, the provider, the deployment ---------------------------------------------------------
@pytest.fixture(scope="module")
def lab_info(tmp_path_factory):
    with logins.lab_running(tmp_path_factory.mktemp("oclab"), LAB, subnet=SUBNET, overlay=OVERLAY,
                            figures=FIGURES) as info:
        yield info


@pytest.fixture(scope="module")
def provider(lab_info, tmp_path_factory):
    manager = lab_info["info"].managers[0]
    with running_provider(tmp_path_factory.mktemp("oidc-provider"), BRIDGE_ADDR, PROVIDER_PORT, client_id=CLIENT_ID,
                          hub_url=f"https://{manager.address}:{PORT}", accounts=ACCOUNTS,
                          secret_prefix="oidc-lab-") as pr:
        yield pr


@pytest.fixture(scope="module")
def browser():
    with chrome.chromium() as b:
        yield b


@pytest.fixture(scope="module")
def deployed(lab_info, provider):
    d = logins.deploy_on_lab(
        lab_info, LAB, users=USERS, figures=FIGURES, secret_files={"oidc-client-secret": provider.client_secret},
        hub={"public_name": lab_info["info"].managers[0].address, "https_port": PORT},
        auth={"mode": "oidc", "userlist": "userlist",
              "oidc": {"issuer": provider.issuer, "client_id": CLIENT_ID,
                       "client_secret": {"file": "oidc-client-secret"},
                       "scopes": ["openid", "profile", "groups"],
                       "allowed_groups": ["students"], "admin_groups": ["hubadmins"],
                       "ca_bundle": str(provider.ca)}})
    yield {**d, "provider": provider}


# -- helpers ---------------------------------------------------------------------------------------
def log_in(d, browser, user: str, next_path: str = "/hub/home"):
    page, status = d["provider"].browser_login(browser, d["p"].hub_url, user, next_path=next_path)
    if (status or 0) >= 500:
        print(hub_log(d)[-6000:])
    return page, status


def hub_log(d) -> str:
    """The hub's log, from the lab manager's engine."""
    svc = Clients(d["p"]).manager.services.get(d["p"].hub_service)
    return b"".join(svc.logs(stdout=True, stderr=True)).decode(errors="replace")


def user_services(d, user: str) -> list:
    return Clients(d["p"]).manager.services.list(filters={"name": f"{d['p'].prefix}-user-{user}"})


def server_node(d, user: str) -> str:
    clients = Clients(d["p"])
    svc = clients.manager.services.get(f"{d['p'].prefix}-user-{user}")
    for _ in range(120):
        running = [t for t in svc.tasks(filters={"desired-state": "running"}) if t["Status"]["State"] == "running"]
        if running:
            return clients.manager.nodes.get(running[0]["NodeID"]).attrs["Description"]["Hostname"]
        time.sleep(0.5)
    raise AssertionError(f"{user}'s server has no running task")


def goto(page, url: str):
    """page.goto, again (at most 3 times) when Chromium gave up on the connection itself: besides
    ERR_NETWORK_CHANGED (tests/browser.py), ERR_TOO_MANY_RETRIES, seen once at load 15 on this shared
    machine while a page of JupyterLab was still loading. The hub's answer is never retried."""
    for n in range(4):
        try:
            return chrome.goto(page, url)
        except Exception as e:  # playwright's Error
            if "ERR_TOO_MANY_RETRIES" not in str(e) or n == 3:
                raise
            print(f"browser: ERR_TOO_MANY_RETRIES at {url}; again")
            time.sleep(1)


def reach_own_server(page, d, user: str) -> int:
    """In the logged-in page: `user`'s server's page (its OAuth round with the hub), then its API, through
    the hub's proxy. The HTTP status the browser ends with."""
    hub = d["p"].hub_url
    page.wait_for_load_state()
    resp = goto(page, f"{hub}/user/{user}/")
    if resp is None or resp.status >= 400:
        return resp.status if resp else 0
    resp = goto(page, f"{hub}/user/{user}/api/status")
    return resp.status if resp else 0


# -- the tests -------------------------------------------------------------------------------------
def test_deploy_on_the_lab_reads_the_providers_discovery_document(deployed):
    cold = deployed["cold"]
    assert cold.returncode == 0, cold.stderr[-4000:]
    (run,) = runs(deployed["outputs"])
    assert run["status"] == "ok", [(s["name"], s["status"]) for s in run["stages"]]
    assert set(run["engines"]) == {f"{LAB}-manager", f"{LAB}-node0"}
    rec = stage_record(deployed["outputs"], run, "50-auth")
    facts = rec["results"][0]["facts"]
    issuer = deployed["provider"].issuer
    assert issuer == f"https://{BRIDGE_ADDR}:{PROVIDER_PORT}"
    assert facts["mode"] == "oidc" and facts["discovery"]["issuer"] == issuer
    assert facts["discovery"]["token_endpoint"] == f"{issuer}/token"
    changes = "\n".join(rec["changes"])
    assert f"create secret hubops-{LAB}-oidc-client-secret-" in changes, changes
    assert f"create config hubops-{LAB}-oidc-ca-" in changes, changes
    # The client secret and the provider's CA are Swarm objects on the lab's manager, not on this machine's engine.
    c = Clients(deployed["p"]).manager
    assert c.secrets.list(filters={"name": f"hubops-{LAB}-oidc-client-secret-"})
    assert c.configs.list(filters={"name": f"hubops-{LAB}-oidc-ca-"})


def test_alice_logs_in_in_chromium_and_reaches_her_server_on_the_worker(deployed, browser):
    p, pr = deployed["p"], deployed["provider"]
    tokens_before = pr.requests_seen("/token")
    t0 = time.monotonic()
    page, status = log_in(deployed, browser, "alice", next_path="/hub/spawn")
    FIGURES["login_s"] = round(time.monotonic() - t0, 1)
    assert status == 302, status
    # The hub's container, inside the lab, redeemed the code and read the user's claims over verified HTTPS.
    assert pr.requests_seen("/token") > tokens_before and pr.requests_seen("/me") >= 1
    page.wait_for_url(f"{p.hub_url}/user/alice/**", timeout=240_000)
    FIGURES["login_to_own_server_s"] = round(time.monotonic() - t0, 1)
    assert server_node(deployed, "alice") == f"{LAB}-node0"  # the worker, not the hub's manager
    assert reach_own_server(page, deployed, "alice") == 200, page.content()[:500]
    assert "started" in json.loads(page.inner_text("body"))
    page.screenshot(path=str(helpers.screenshot_path("lab-oidc-alice-server.png")))
    u = HubAPI(p).user("alice")
    assert u["groups"] == ["students"] and u["admin"] is False
    page.context.close()


def test_admin_group_at_the_provider_makes_an_admin(deployed, browser):
    page, status = log_in(deployed, browser, "dora")
    assert status == 302, status
    u = HubAPI(deployed["p"]).user("dora")
    assert u["admin"] is True and u["groups"] == ["hubadmins"]
    page.context.close()


def test_user_in_no_allowed_group_is_refused(deployed, browser):
    page, status = log_in(deployed, browser, "mallory", next_path="/hub/spawn")
    assert status == 403, status
    assert HubAPI(deployed["p"]).user("mallory") is None
    assert not user_services(deployed, "mallory")
    page.context.close()


def test_taken_out_they_cannot_log_in_and_the_deploy_stops_their_server(deployed, browser):
    p, pr = deployed["p"], deployed["provider"]
    api = HubAPI(p)
    page, status = log_in(deployed, browser, "carol", next_path="/hub/spawn")  # let in by the userlist
    assert status == 302, status
    api.wait_server("carol", ready=True, timeout=240)
    assert reach_own_server(page, deployed, "carol") == 200
    page.context.close()
    assert user_services(deployed, "carol") and server_node(deployed, "carol") == f"{LAB}-node0"
    page, status = log_in(deployed, browser, "bob")  # let in by his group at the provider
    assert status == 302, status
    page.context.close()
    alice_started = api.request("GET", "/user/alice/api/status").json()["started"]

    (deployed["tmp"] / "userlist").write_text("opadmin admin\n")  # carol off the userlist
    pr.set_account("bob", ["alumni"])  # bob out of `students` at the provider
    t0 = time.monotonic()
    out = hubops_cli("deploy", "-p", str(deployed["params"]), "--only", "50-auth", "--only", "80-deploy",
                     outputs=deployed["outputs"])
    FIGURES["redeploy_auth_deploy_s"] = round(time.monotonic() - t0, 1)
    assert out.returncode == 0, out.stderr[-4000:]
    run = runs(deployed["outputs"])[-1]
    assert run["status"] == "ok" and [s["name"] for s in run["stages"]] == ["50-auth", "80-deploy"]
    rec = stage_record(deployed["outputs"], run, "80-deploy")
    changes = "\n".join(rec["changes"])
    assert "remove user carol" in changes and "their running server was stopped" in changes, changes
    assert rec["results"][0]["facts"]["users_removed"] == [{"user": "carol", "server_stopped": True}]
    assert not user_services(deployed, "carol")
    assert api.user("carol") is None
    for user in ("carol", "bob"):
        page, status = log_in(deployed, browser, user, next_path="/hub/spawn")
        assert status == 403, (user, status)
        page.context.close()
    assert not user_services(deployed, "carol")
    # alice, let in by her group, kept her server (same start time) through the hub's restart.
    assert api.request("GET", "/user/alice/api/status").json()["started"] == alice_started


def test_no_secret_or_token_in_the_records_or_the_hub_log(deployed):
    p, pr = deployed["p"], deployed["provider"]
    values = helpers.deployment_secrets(p, Clients(p).manager)
    assert any("oidc-client-secret" in k for k in values), sorted(values)
    values["oidc client secret"] = pr.client_secret
    issued = pr.issued_tokens()
    # Each successful login: a code, an access token and an ID token (alice, dora, carol, bob, and the refusals'
    # codes and tokens: the provider issues them before the hub refuses the user).
    assert len(issued) >= 3 * 4, issued and len(issued)
    values |= {f"issued code or token #{i}": v for i, v in enumerate(issued)}
    log = hub_log(deployed)
    hits = helpers.secret_hits(values, [deployed["outputs"]], {"hub log (lab manager)": log})
    # Tornado's own line for each refused callback is there, scrubbed (hubops/inhub/logscrub.py).
    refused = re.findall(r"403 GET /hub/oauth_callback\?code=\[secret\]&state=\[secret\][^\n]* \([^)]*\): ", log)
    assert len(refused) >= 3, [ln for ln in log.splitlines() if "oauth_callback" in ln]
    print(f"\nscanned the records of {len(runs(deployed['outputs']))} runs and the hub's log for {len(values)} "
          f"values ({len(issued)} codes and tokens the provider issued)")
    assert len(runs(deployed["outputs"])) == 2
    assert not hits, hits
