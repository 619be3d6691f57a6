"""Per-user passwords: `hubops deploy` of a hub with `auth.mode: native`
(jupyterhub-nativeauthenticator in the hub image), sign-up, approval and login driven in headless
Chromium.

- The userlist's admin exists and is approved as soon as the hub starts, with the password hubops
  generated into the operator folder; nobody can claim that name by signing up first.
- A user on the userlist signs up with their own password (a too short or too common one is
  refused), cannot log in until an admin approves them at /hub/authorize, then logs in and reaches
  their server. A user not on the userlist, approved or not, cannot log in.
- Taking someone out: a user removed from the userlist cannot log in after 50-auth and 80-deploy and
  their running server is stopped by that deploy (the record says whose).
- No secret (users' passwords, the admin password, generated secrets) under the records, in the
  hub's log or in the hub image.

Deployment `lgnative-RUN`, its port and overlay subnet from tests/helpers (tests/e2e/logins.py deploys
it). About 4 minutes with warm images.
"""
from __future__ import annotations

import json
import os
import time

import docker
import pytest

from hubops.hub.running import HubAPI
from tests import browser as chrome
from tests.e2e import logins
from tests.helpers import free_port, free_subnet, run_name, runs, stage_record

pytestmark = [pytest.mark.engine, pytest.mark.e2e, pytest.mark.slow]
DEPLOYMENT = run_name("lgnative")
PORT = free_port()
SUBNET = free_subnet()
USERS = "teacher admin\nalice\ncarol\n"
PASSWORDS = {u: f"{u}-{os.urandom(8).hex()}" for u in ("alice", "carol", "mallory")}
FIGURES: dict[str, float] = {}


@pytest.fixture(scope="module")
def browser():
    with chrome.chromium() as b:
        yield b


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    with logins.deployed(tmp_path_factory.mktemp("lgnative"), DEPLOYMENT, port=PORT, subnet=SUBNET, users=USERS,
                         figures=FIGURES, auth="""
            mode: native
            userlist: userlist
            native: {minimum_password_length: 12}
            """) as d:
        yield d


def sign_up(*args, **kwargs):
    return chrome.again(_sign_up, *args, **kwargs)


def _sign_up(d, browser, user: str, password: str) -> str:
    """`user` signs up in a browser; the message the sign-up page shows."""
    page = logins.page_for(browser)
    chrome.goto(page, f"{d['p'].hub_url}/hub/signup")
    page.fill("input[name=username]", user)
    page.fill("input[name=signup_password]", password)
    page.fill("input[name=signup_password_confirmation]", password)
    with page.expect_navigation():
        page.click("#signup_submit")
    text = page.inner_text("body")
    page.context.close()
    return text


def log_in(d, browser, user: str, password: str, *, next_path: str = "/hub/home"):
    """`user` logs in with the hub's login form; (page, status of the POST /hub/login: 302 when let in;
    NativeAuthenticator answers a refused login with its login page and 200)."""
    return logins.form_log_in(d, browser, user, password, next_path=next_path)


def admin_password(d) -> str:
    return (d["p"].operator_path / "admin-password").read_text().strip()


def test_cold_deploy_and_the_admin_exists(deployed, browser):
    cold = deployed["cold"]
    assert cold.returncode == 0, cold.stderr[-4000:]
    run = runs(deployed["outputs"])[0]
    assert run["status"] == "ok", [(s["name"], s["status"]) for s in run["stages"]]
    facts = stage_record(deployed["outputs"], run, "50-auth")["results"][0]["facts"]
    assert facts["mode"] == "native" and "/hub/signup" in facts["passwords"]
    assert (deployed["p"].operator_path / "admin-password").stat().st_mode & 0o777 == 0o600
    # The admin's name cannot be claimed: it exists already.
    assert "already in use" in sign_up(deployed, browser, "teacher", "claimed-" + os.urandom(8).hex())
    page, status = log_in(deployed, browser, "teacher", admin_password(deployed))
    assert status == 302
    assert HubAPI(deployed["p"]).user("teacher")["admin"] is True
    page.context.close()


def test_sign_up_needs_a_good_password_and_an_admins_approval(deployed, browser):
    assert "at least 12 characters" in sign_up(deployed, browser, "alice", "short-pw")
    assert "at least 12 characters" in sign_up(deployed, browser, "alice", "1qaz2wsx3edc")  # long enough, but too common
    sign_up(deployed, browser, "alice", PASSWORDS["alice"])
    page, status = log_in(deployed, browser, "alice", PASSWORDS["alice"])
    assert status != 302, status  # not approved yet
    page.context.close()
    admin, status = log_in(deployed, browser, "teacher", admin_password(deployed))
    chrome.goto(admin, f"{deployed['p'].hub_url}/hub/authorize/alice")  # the approval link of the admin's page
    admin.context.close()
    t0 = time.monotonic()
    page, status = log_in(deployed, browser, "alice", PASSWORDS["alice"], next_path="/hub/spawn")
    assert status == 302, status
    page.wait_for_url(f"{deployed['p'].hub_url}/user/alice/**", timeout=180_000)
    FIGURES["login_to_own_server_s"] = round(time.monotonic() - t0, 1)
    resp = chrome.goto(page, f"{deployed['p'].hub_url}/user/alice/api/status")
    assert resp.status == 200 and "started" in json.loads(page.inner_text("body"))
    page.context.close()
    wrong, status = log_in(deployed, browser, "alice", PASSWORDS["alice"] + "x")
    assert status != 302 and "Invalid username or password" in wrong.inner_text("body")
    wrong.context.close()


def test_not_on_the_userlist_cannot_log_in_even_approved(deployed, browser):
    sign_up(deployed, browser, "mallory", PASSWORDS["mallory"])
    admin, _ = log_in(deployed, browser, "teacher", admin_password(deployed))
    chrome.goto(admin, f"{deployed['p'].hub_url}/hub/authorize/mallory")
    admin.context.close()
    page, status = log_in(deployed, browser, "mallory", PASSWORDS["mallory"])
    assert status != 302 and HubAPI(deployed["p"]).user("mallory") is None
    page.context.close()


def test_removed_from_the_userlist_cannot_log_in_and_their_server_is_stopped(deployed, browser):
    api = HubAPI(deployed["p"])
    sign_up(deployed, browser, "carol", PASSWORDS["carol"])
    admin, _ = log_in(deployed, browser, "teacher", admin_password(deployed))
    chrome.goto(admin, f"{deployed['p'].hub_url}/hub/authorize/carol")
    admin.context.close()
    page, status = log_in(deployed, browser, "carol", PASSWORDS["carol"], next_path="/hub/spawn")
    assert status == 302
    api.wait_server("carol", ready=True, timeout=180)
    page.context.close()
    out = logins.redeploy_auth(deployed, "teacher admin\nalice\n")
    assert out.returncode == 0, out.stderr[-4000:]
    rec = stage_record(deployed["outputs"], runs(deployed["outputs"])[-1], "80-deploy")
    assert rec["results"][0]["facts"]["users_removed"] == [{"user": "carol", "server_stopped": True}]
    assert not docker.from_env().services.list(filters={"name": f"{deployed['p'].prefix}-user-carol"})
    page, status = log_in(deployed, browser, "carol", PASSWORDS["carol"])
    assert status != 302, status
    assert HubAPI(deployed["p"]).user("carol") is None
    page.context.close()


def test_no_secret_in_the_records_the_hub_log_or_the_image(deployed):
    hits = logins.secret_hits(deployed, {f"password of {u}": pw for u, pw in PASSWORDS.items()})
    assert not hits, hits
