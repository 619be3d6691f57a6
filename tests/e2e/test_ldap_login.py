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

Deployment `lgldap-RUN`; its ports, slapd's (StartTLS and LDAPS) and the overlay subnet from
tests/helpers (tests/e2e/logins.py deploys it). Takes about 5 minutes with warm images.
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
from tests.peers_ldap import SERVICE_DN, Slapd, group_dn

pytestmark = [pytest.mark.engine, pytest.mark.e2e, pytest.mark.slow]
DEPLOYMENT = run_name("lgldap")
PORT = free_port()
SUBNET = free_subnet()
USERS = "carol @students\n"  # admins come from the directory's hubadmins group
PEOPLE = ["alice", "bob", "prof", "dora", "mallory", "carol"]
GROUPS = {"students": ["alice", "bob"], "staff": ["prof"], "hubadmins": ["dora"], "visitors": ["mallory"]}
FIGURES: dict[str, float] = {}


@pytest.fixture(scope="module")
def slapd(tmp_path_factory):
    gw = docker.from_env().networks.get("docker_gwbridge").attrs["IPAM"]["Config"][0]["Gateway"]
    starttls_port = free_port(avoid=(PORT,))
    s = Slapd(tmp_path_factory.mktemp("slapd"), gw, starttls_port, free_port(avoid=(PORT, starttls_port)),
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
    secret = tmp / "ldap-bind-password"
    secret.write_text(slapd.service_password + "\n")
    secret.chmod(0o600)
    with logins.deployed(tmp, DEPLOYMENT, port=PORT, subnet=SUBNET, users=USERS, figures=FIGURES, slapd=slapd,
                         auth=f"""
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
            """) as d:
        yield d


def log_in(d, browser, user: str, *, password: str | None = None, next_path: str = "/hub/home"):
    """`user` logs in with the hub's login form, with their directory password unless `password`."""
    return logins.form_log_in(d, browser, user, password if password is not None else d["slapd"].users[user],
                              next_path=next_path)


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
    assert f"create secret {deployed['p'].prefix}-ldap-bind-password-" in changes \
        and f"create config {deployed['p'].prefix}-ldap-ca-" in changes
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
    assert logins.open_server_of(page, deployed, "alice") == 200
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
    logins.ensure_server(deployed, "alice", lambda u, **k: log_in(deployed, browser, u, **k))
    page, status = log_in(deployed, browser, "prof")
    assert status == 302 and HubAPI(deployed["p"]).user("prof")["groups"] == ["staff"]
    assert logins.open_server_of(page, deployed, "alice") == 200, page.content()[:500]
    page.context.close()
    page, status = log_in(deployed, browser, "bob")
    assert status == 302
    code = logins.open_server_of(page, deployed, "alice")
    assert code == 403, (code, page.url)
    page.context.close()


def test_removed_from_the_userlist_cannot_log_in_and_their_server_is_stopped(deployed, browser):
    api = HubAPI(deployed["p"])
    logins.ensure_server(deployed, "carol", lambda u, **k: log_in(deployed, browser, u, **k))
    out = logins.redeploy_auth(deployed, "# nobody by name: the directory's groups decide\n")
    assert out.returncode == 0, out.stderr[-4000:]
    rec = stage_record(deployed["outputs"], runs(deployed["outputs"])[-1], "80-deploy")
    assert rec["results"][0]["facts"]["users_removed"] == [{"user": "carol", "server_stopped": True}]
    assert not docker.from_env().services.list(filters={"name": f"{deployed['p'].prefix}-user-carol"})
    page, status = log_in(deployed, browser, "carol")
    assert status == 403, status
    page.context.close()
    assert api.user("alice")["servers"][""]["ready"]  # alice's group still lets her in: kept


def test_removed_from_the_group_in_the_directory_is_refused_and_the_next_deploy_stops_their_server(deployed, browser):
    """bob is let in by the directory's `students` group only; taken out of it there, he is refused at
    once, and the next deploy of 50-auth and 80-deploy (userlist unchanged) asks the directory, takes
    him out of the hub and stops his running server; alice, still a member, keeps hers."""
    api = HubAPI(deployed["p"])
    logins.ensure_server(deployed, "bob", lambda u, **k: log_in(deployed, browser, u, **k))
    started = api.request("GET", "/user/alice/api/status").json()["started"]
    deployed["slapd"].remove_member("students", "bob")
    page, status = log_in(deployed, browser, "bob")
    assert status == 403, status
    page.context.close()
    out = logins.redeploy_auth(deployed, (deployed["tmp"] / "userlist").read_text())
    assert out.returncode == 0, out.stderr[-4000:]
    rec = stage_record(deployed["outputs"], runs(deployed["outputs"])[-1], "80-deploy")
    assert rec["results"][0]["facts"]["users_removed"] == [{"user": "bob", "server_stopped": True}], rec["changes"]
    assert any("remove user bob" in c and "in no allowed group of the directory" in c for c in rec["changes"])
    assert not docker.from_env().services.list(filters={"name": f"{deployed['p'].prefix}-user-bob"})
    assert api.user("bob") is None
    assert api.request("GET", "/user/alice/api/status").json()["started"] == started


def test_no_secret_in_the_records_or_the_hub_log(deployed):
    slapd = deployed["slapd"]
    hits = logins.secret_hits(deployed, {"ldap bind password": slapd.service_password,
                                         **{f"password of {u}": pw for u, pw in slapd.users.items()}})
    assert not hits, hits
