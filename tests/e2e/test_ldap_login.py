"""Log in against a real LDAP directory: `hubops deploy` of a hub with `auth.mode: ldap`
(jupyterhub-ldapauthenticator in the hub image), the hub's login form driven in headless Chromium.

- The directory is Debian's slapd, started by this module on the host's address on docker_gwbridge
  (which the hub's container reaches) with its own config, database and ports; TLS from a test CA;
  binds without TLS refused by the server itself. The hub uses ldap:// with StartTLS, verified
  against the test CA (auth.ldap.ca_bundle).
- Members of an allowed group log in with their directory password and reach their server; a wrong
  password and a user in no allowed group are refused; the admin group makes an admin; the role
  `teaching` lets the `staff` group open a student's server and a student cannot open another's.
- Taking someone out: a user removed from the userlist cannot log in after 50-auth and 80-deploy and
  their running server is stopped by that deploy (the record says whose); a user removed from the
  group in the directory is refused at their next login.
- No secret (bind password, users' passwords, generated secrets) under the records or in the hub's log.

Deployment `lgldap` (hub on port 18605, overlay 10.166.2.0/24), slapd on ports 18606 (StartTLS) and
18607 (LDAPS). Takes about 5 minutes with warm images.
"""
from __future__ import annotations

import json
import os
import subprocess
import textwrap
import time
from pathlib import Path

import docker
import pytest

from hubops.core.engine import Clients
from hubops.core.params import load_params
from hubops.hub.running import HubAPI
from hubops.ops import teardown
from tests import browser as chrome, helpers
from tests.helpers import hubops_cli, runs, stage_record
from tests.peers_ldap import SERVICE_DN, Slapd, group_dn

pytestmark = [pytest.mark.engine, pytest.mark.e2e, pytest.mark.slow]
PROJECT = Path(__file__).resolve().parents[2]
DEPLOYMENT = "lgldap"
PORT = 18605
SUBNET = "10.166.2.0/24"
USERS = "carol @students\n"  # admins come from the directory's hubadmins group
PEOPLE = ["alice", "bob", "prof", "dora", "mallory", "carol"]
GROUPS = {"students": ["alice", "bob"], "staff": ["prof"], "hubadmins": ["dora"], "visitors": ["mallory"]}
FIGURES: dict[str, float] = {}


def labelled() -> list[str]:
    client = docker.from_env()
    colls = {"service": client.services, "secret": client.secrets, "config": client.configs}
    return sorted(f"{k} {o.name}" for k, coll in colls.items()
                  for o in coll.list(filters={"label": f"hubops.deployment={DEPLOYMENT}"}))


@pytest.fixture(scope="module")
def slapd(tmp_path_factory):
    gw = docker.from_env().networks.get("docker_gwbridge").attrs["IPAM"]["Config"][0]["Gateway"]
    s = Slapd(tmp_path_factory.mktemp("slapd"), gw, 18606, 18607,
              users={u: f"{u}-pw-{os.urandom(6).hex()}" for u in PEOPLE}, groups=GROUPS,
              service_password="svc-" + os.urandom(12).hex(), root_password="root-" + os.urandom(12).hex()).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def browser():
    with chrome.chromium() as b:
        yield b


@pytest.fixture(scope="module")
def deployed(tmp_path_factory, slapd):
    tmp = tmp_path_factory.mktemp("lgldap")
    (tmp / "userlist").write_text(USERS)
    secret = tmp / "ldap-bind-password"
    secret.write_text(slapd.service_password + "\n")
    secret.chmod(0o600)
    params = tmp / f"{DEPLOYMENT}.yaml"
    params.write_text(textwrap.dedent(f"""
        deployment: {DEPLOYMENT}
        operator_dir: {tmp / 'operator'}
        hosts:
          managers:
            - {{name: local, url: "unix:///var/run/docker.sock", advertise_addr: 127.0.0.1}}
        hub: {{public_name: localhost, https_port: {PORT}}}
        network: {{subnet: {SUBNET}}}
        auth:
          mode: ldap
          userlist: userlist
          ldap:
            url: {slapd.url}
            starttls: true
            ca_bundle: {slapd.ca}
            bind_dn: "{SERVICE_DN}"
            bind_password: {{file: ldap-bind-password}}
            user_search_base: "ou=people,dc=hubops,dc=test"
            allowed_groups: ["{group_dn('students')}", "{group_dn('staff')}"]
            admin_groups: ["{group_dn('hubadmins')}"]
          roles:
            - name: teaching
              groups: [staff]
              scopes: ["access:servers!group=students", "admin:servers!group=students", "read:users!group=students"]
        images: {{dir: {PROJECT / 'images'}}}
    """))
    outputs = tmp / "outputs"
    p = load_params(params)
    try:
        t0 = time.monotonic()
        cold = hubops_cli("deploy", "-p", str(params), outputs=outputs)
        FIGURES["cold_deploy_s"] = round(time.monotonic() - t0, 1)
        yield {"params": params, "tmp": tmp, "outputs": outputs, "p": p, "cold": cold, "slapd": slapd}
    finally:
        print(f"\nfigures: {json.dumps(FIGURES)}")
        try:
            teardown.teardown(p, Clients(p), remove_volumes=True, remove_user_data=True)
        except Exception as e:  # a loaded machine: the hub's API may time out once; teardown again
            print(f"teardown failed once ({e.__class__.__name__}: {str(e)[:200]}); again")
            teardown.teardown(p, Clients(p), remove_volumes=True, remove_user_data=True)
        left = labelled()
        assert not left, f"teardown left {left}"


def log_in(*args, **kwargs):
    return chrome.again(_log_in, *args, **kwargs)


def _log_in(d, browser, user: str, *, password: str | None = None, next_path: str = "/hub/home"):
    """`user` logs in with the hub's login form in a fresh browser; (page, status of the POST /hub/login)."""
    hub = d["p"].hub_url
    ctx = browser.new_context(ignore_https_errors=True)  # the hub's CA is hubops's own, not in Chromium's store
    page = ctx.new_page()
    chrome.goto(page, f"{hub}/hub/login?next={next_path}")
    page.fill("#username_input", user)
    page.fill("#password_input", password if password is not None else d["slapd"].users[user])
    with page.expect_response(lambda r: r.url.startswith(f"{hub}/hub/login") and r.request.method == "POST") as posted:
        page.click("#login_submit")
    page.wait_for_load_state()
    if posted.value.status >= 500:
        print(chrome.hub_log_tail(d["p"].hub_service))
    return page, posted.value.status


def open_server_of(page, d, owner: str) -> int:
    """Open `owner`'s server as the page's user: its page first (the server's OAuth round with the hub,
    with JupyterHub's confirmation page when the server is not the user's own), then its API.
    The HTTP status the browser ends with: the hub's 403 when the user may not access it."""
    hub = d["p"].hub_url
    resp = chrome.goto(page, f"{hub}/user/{owner}/")
    if "/hub/api/oauth2/authorize" in page.url and resp and resp.status == 200:
        with page.expect_navigation():  # "Authorize access": the user confirms
            page.click("input[type=submit], button[type=submit]")
    elif resp and resp.status >= 400:
        return resp.status
    resp = chrome.goto(page, f"{hub}/user/{owner}/api/status")
    return resp.status if resp else 0


def ensure_server(d, browser, user: str) -> None:
    api = HubAPI(d["p"])
    u = api.user(user)
    if u and ((u.get("servers") or {}).get("") or {}).get("ready"):
        return
    page, status = log_in(d, browser, user, next_path="/hub/spawn")
    assert status == 302, status
    api.wait_server(user, ready=True, timeout=180)
    page.context.close()


def test_cold_deploy_checks_the_directory(deployed):
    cold = deployed["cold"]
    assert cold.returncode == 0, cold.stderr[-4000:]
    run = runs(deployed["outputs"])[0]
    assert run["status"] == "ok", [(s["name"], s["status"]) for s in run["stages"]]
    rec = stage_record(deployed["outputs"], run, "50-auth")
    facts = rec["results"][0]["facts"]
    assert facts["mode"] == "ldap" and facts["ldap"]["starttls"] is True
    assert facts["ldap"]["tls_version"].startswith("TLSv1.")
    changes = "\n".join(rec["changes"])
    assert "create secret hubops-lgldap-ldap-bind-password-" in changes and "create config hubops-lgldap-ldap-ca-" in changes
    assert any("bind as cn=jupyterhub" in k for k in rec["kept"]), rec["kept"]


def test_group_member_logs_in_and_reaches_their_server(deployed, browser):
    p = deployed["p"]
    page, status = log_in(deployed, browser, "alice", password="not-her-password")
    assert status == 403, status
    page.context.close()
    t0 = time.monotonic()
    page, status = log_in(deployed, browser, "alice", next_path="/hub/spawn")
    assert status == 302, status
    page.wait_for_url(f"{p.hub_url}/user/alice/**", timeout=180_000)
    FIGURES["login_to_own_server_s"] = round(time.monotonic() - t0, 1)
    assert open_server_of(page, deployed, "alice") == 200
    assert "started" in json.loads(page.inner_text("body"))
    u = HubAPI(p).user("alice")
    assert u["groups"] == ["students"] and u["admin"] is False
    page.context.close()


def test_no_allowed_group_refused_and_admin_group_admin(deployed, browser):
    api = HubAPI(deployed["p"])
    page, status = log_in(deployed, browser, "mallory")
    assert status == 403 and api.user("mallory") is None
    page.context.close()
    page, status = log_in(deployed, browser, "dora")
    assert status == 302 and api.user("dora")["admin"] is True and api.user("dora")["groups"] == ["hubadmins"]
    page.context.close()
    page, status = log_in(deployed, browser, "carol")  # by the userlist, '@students' there
    assert status == 302 and api.user("carol")["groups"] == ["students"]
    page.context.close()


def test_staff_opens_a_students_server_and_a_student_cannot_open_anothers(deployed, browser):
    ensure_server(deployed, browser, "alice")
    page, status = log_in(deployed, browser, "prof")
    assert status == 302 and HubAPI(deployed["p"]).user("prof")["groups"] == ["staff"]
    assert open_server_of(page, deployed, "alice") == 200, page.content()[:500]
    page.context.close()
    page, status = log_in(deployed, browser, "bob")
    assert status == 302
    code = open_server_of(page, deployed, "alice")
    assert code == 403, (code, page.url)
    page.context.close()


def test_removed_from_the_userlist_cannot_log_in_and_their_server_is_stopped(deployed, browser):
    api = HubAPI(deployed["p"])
    ensure_server(deployed, browser, "carol")
    (deployed["tmp"] / "userlist").write_text("# nobody by name: the directory's groups decide\n")
    out = hubops_cli("deploy", "-p", str(deployed["params"]), "--only", "50-auth", "--only", "80-deploy",
                     outputs=deployed["outputs"])
    assert out.returncode == 0, out.stderr[-4000:]
    rec = stage_record(deployed["outputs"], runs(deployed["outputs"])[-1], "80-deploy")
    assert rec["results"][0]["facts"]["users_removed"] == [{"user": "carol", "server_stopped": True}]
    assert not docker.from_env().services.list(filters={"name": "hubops-lgldap-user-carol"})
    page, status = log_in(deployed, browser, "carol")
    assert status == 403, status
    page.context.close()
    assert api.user("alice")["servers"][""]["ready"]  # alice's group still lets her in: kept


def test_removed_from_the_group_in_the_directory_is_refused(deployed, browser):
    deployed["slapd"].remove_member("students", "bob")
    page, status = log_in(deployed, browser, "bob")
    assert status == 403, status
    page.context.close()


def test_no_secret_in_the_records_or_the_hub_log(deployed):
    p = deployed["p"]
    client = docker.from_env()
    values = helpers.deployment_secrets(p, client)
    values["ldap bind password"] = deployed["slapd"].service_password
    values.update({f"password of {u}": pw for u, pw in deployed["slapd"].users.items()})
    log = subprocess.run(["docker", "service", "logs", "--raw", p.hub_service], capture_output=True,
                         text=True, timeout=60)
    image = client.services.get(p.hub_service).attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"].split("@")[0]
    history = subprocess.run(["docker", "history", "--no-trunc", image], capture_output=True, text=True, timeout=60)
    inspect = subprocess.run(["docker", "image", "inspect", image], capture_output=True, text=True, timeout=60)
    hits = helpers.secret_hits(values, [deployed["outputs"]], {
        "hub log": log.stdout + log.stderr, f"image {image} history": history.stdout, f"image {image}": inspect.stdout})
    assert not hits, hits
