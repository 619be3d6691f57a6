"""The hub with a certificate from a real ACME server and GitHub OAuth against a GitHub-compatible
endpoint, both started by this module, deployed the way a user deploys: `hubops deploy`.

- Pebble (Let's Encrypt's ACME test server) issues the hub's certificate through HTTP-01 on port
  80 of this machine (the hub's node); the hub's HTTPS chain verifies against Pebble's root, and a
  second deploy makes no ACME call and changes nothing;
- wrong inputs (a name that resolves elsewhere or not at all, an ACME error, port 80 taken) fail
  with a clear message before anything changes;
- the real OAuth login flow through the hub: an allowed user logs in and reaches their server, a
  user not on the userlist gets 403 and no server, members of an allowed organisation or team
  (allowed_organizations, GitHub's membership API) log in and a member of another team does not, the userlist's admin is admin in the hub, and
  a userlist change (50-auth and 80-deploy) takes effect while running servers keep running;
- `hubops ops renew-tls` is a no-op while the certificate is fresh and, forced, rotates it with
  the downtime measured while users' servers survive;
- no secret (client secret, account key, TLS key, API token) appears under the runs' outputs.

One deployment (`acme-RUN`, a free port and subnet, Pebble on free ports: see tests/helpers) is shared
by the tests and torn down at the end; the /etc/hosts line that makes `hub-RUN.acme.test` resolve to
this machine is removed too. Port 80 of this machine is one for all: the module holds the lock
/tmp/hubops-lock-port-80 while it runs, so that two runs on one machine take turns.
"""
from __future__ import annotations

import base64
import json
import os
import re
import socket
import textwrap
import time
from pathlib import Path

import docker
import pytest
import requests

from hubops.hub import running
from hubops.stages import tls_acme as acme_tls, tls
from hubops.ops import teardown
from hubops.core.engine import Clients
from hubops.core.errors import TLSError
from hubops.core.params import load_params
from hubops.core.result import Result
from hubops.hub.running import HubAPI
from tests.peers import FakeGitHub, Pebble
from tests import helpers
from tests.helpers import RUN, ensure_swarm, free_port, free_subnet, hubops_cli, machine_lock, run_name, runs, stage_record

pytestmark = [pytest.mark.engine, pytest.mark.e2e]
PROJECT = Path(__file__).resolve().parents[2]
DEPLOYMENT = run_name("acme")
PORT = free_port()
NAME = f"hub-{RUN}.acme.test"
BAD_NAME = f"bad_name-{RUN}.acme.test"  # resolves, but no ACME server accepts '_' in a name
HOSTS = Path("/etc/hosts")
HOSTS_MARK = f"# hubops tests/e2e/test_acme_github.py run {RUN}"
CLIENT_ID = "hubops-e2e-client"
USERS = "octoadmin admin\nalice\nbob\n"
FIGURES: dict[str, float] = {}


def labelled(kind: str | None = None) -> list[str]:
    client = docker.from_env()
    colls = {"service": client.services, "secret": client.secrets, "config": client.configs}
    return sorted(f"{k} {o.name}" for k, coll in colls.items() if kind in (None, k)
                  for o in coll.list(filters={"label": f"hubops.deployment={DEPLOYMENT}"}))


# -- peers and name resolution --------------------------------------------------------------
@pytest.fixture(scope="module")
def hosts_entry():
    """NAME (and the bad name) resolve to this machine, for this module only."""
    line = f"127.0.0.1 {NAME} {BAD_NAME}  {HOSTS_MARK}\n"
    try:
        text = HOSTS.read_text()
        if HOSTS_MARK not in text:
            with HOSTS.open("a") as f:  # in place: /etc/hosts may be a bind mount
                f.write(("" if text.endswith("\n") or not text else "\n") + line)
    except OSError as e:
        pytest.fail(f"cannot add {NAME} to {HOSTS} ({e}); this test needs root", pytrace=False)
    yield
    HOSTS.write_text("".join(ln for ln in HOSTS.read_text().splitlines(keepends=True) if HOSTS_MARK not in ln))


@pytest.fixture(scope="module")
def port80():
    """Port 80 of this machine, where Pebble validates HTTP-01: one run of this module at a time."""
    with machine_lock("port-80") as waited:
        print(f"\nport 80: lock taken after {waited:.1f} s")
        yield


@pytest.fixture(scope="module")
def pebble(tmp_path_factory):
    pb = Pebble(tmp_path_factory.mktemp("pebble"), acme_port=free_port(), management_port=free_port(),
                dns_port=free_port(), challtest_management_port=free_port()).start()
    yield pb
    pb.stop()


@pytest.fixture(scope="module")
def github():
    """The fake GitHub, on the host's address on docker_gwbridge (what the hub's container reaches)."""
    gw = docker.from_env().networks.get("docker_gwbridge").attrs["IPAM"]["Config"][0]["Gateway"]
    gh = FakeGitHub(gw, client_id=CLIENT_ID, client_secret="ghs-e2e-" + os.urandom(16).hex()).start()
    # Not on the userlist: pia is in the physics organisation, erin in chem's staff team, dave
    # in chem but only in its students team (chem itself is not allowed, only chem:staff).
    gh.orgs = {"physics": {"pia"}, "chem": {"dave", "erin"}}
    gh.teams = {("chem", "staff"): {"erin"}, ("chem", "students"): {"dave"}}
    yield gh
    gh.stop()


@pytest.fixture(scope="module")
def deployed(tmp_path_factory, port80, hosts_entry, pebble, github):
    ensure_swarm()
    tmp = tmp_path_factory.mktemp("acme")
    (tmp / "userlist").write_text(USERS)
    secret = tmp / "github-client-secret"
    secret.write_text(github.client_secret + "\n")
    secret.chmod(0o600)
    params = tmp / f"{DEPLOYMENT}.yaml"
    params.write_text(textwrap.dedent(f"""
        deployment: {DEPLOYMENT}
        operator_dir: {tmp / 'operator'}
        hosts:
          managers:
            - {{name: local, url: "unix:///var/run/docker.sock", advertise_addr: 127.0.0.1}}
        hub: {{public_name: {NAME}, https_port: {PORT}}}
        network: {{subnet: {free_subnet()}}}
        tls:
          mode: acme
          acme:
            directory_url: {pebble.directory_url}
            email: hub-admin@acme.test
            ca_bundle: {pebble.bundle}
        auth:
          mode: github
          userlist: userlist
          github:
            client_id: {CLIENT_ID}
            client_secret: {{file: github-client-secret}}
            enterprise_url: {github.url}
            allowed_organizations: [physics, "chem:staff"]
        images: {{dir: {PROJECT / 'images'}}}
    """))
    outputs = tmp / "outputs"
    p = load_params(params)
    try:
        t0 = time.monotonic()
        cold = hubops_cli("deploy", "-p", str(params), outputs=outputs)
        FIGURES["cold_deploy_s"] = round(time.monotonic() - t0, 1)
        acme_after_cold = pebble.requests_seen()
        t0 = time.monotonic()
        warm = hubops_cli("deploy", "-p", str(params), outputs=outputs)
        FIGURES["warm_deploy_s"] = round(time.monotonic() - t0, 1)
        yield {"params": params, "tmp": tmp, "outputs": outputs, "p": p, "cold": cold, "warm": warm,
               "acme_after_cold": acme_after_cold, "acme_after_warm": pebble.requests_seen(),
               "pebble": pebble, "github": github}
    finally:
        print(f"\nfigures: {json.dumps(FIGURES)}")
        # users' homes (kept by default since users' files are kept by default) go too
        teardown.teardown(p, Clients(p), remove_volumes=True, remove_user_data=True)
        left = labelled()
        assert not left, f"teardown left {left}"


# -- helpers ----------------------------------------------------------------------------------
def browser(d) -> requests.Session:
    """A user's browser: trusts Pebble's root alone, deaf to the environment."""
    s = requests.Session()
    s.trust_env = False
    s.verify = str(d["pebble"].root)
    return s


def github_login(d, user: str) -> tuple[requests.Session, requests.Response]:
    """The OAuth login through the hub with `user` signing in at "GitHub"; the hub's answer at the callback."""
    return d["github"].log_in(d["p"].hub_url, user, verify=str(d["pebble"].root))


def served_fingerprint(d) -> str:
    return helpers.served_fingerprint(NAME, PORT, d["pebble"].root)


def ensure_server(d, user: str) -> None:
    """`user` logged in through GitHub with a running server they reach through the proxy."""
    api = HubAPI(d["p"])
    u = api.user(user)
    if u and ((u.get("servers") or {}).get("") or {}).get("ready"):
        return
    s, cb = github_login(d, user)
    assert cb.status_code == 302, cb.text[:500]
    s.get(f"{d['p'].hub_url}/hub/spawn", timeout=60)  # what the browser does next: start my server
    api.wait_server(user, ready=True, timeout=180)


# -- TLS through ACME -----------------------------------------------------------------------------
def test_cold_deploy_issues_a_certificate_from_pebble(deployed):
    cold = deployed["cold"]
    assert cold.returncode == 0, cold.stderr[-4000:]
    run = runs(deployed["outputs"])[0]
    assert run["status"] == "ok" and all(s["status"] == "ok" for s in run["stages"])
    rec = stage_record(deployed["outputs"], run, "40-tls")
    facts = rec["results"][0]["facts"]
    assert facts["mode"] == "acme" and facts["acme_call"] is True
    assert facts["issuer_cn"].startswith("Pebble Intermediate CA"), facts
    assert facts["names"] == [NAME] and facts["expires_in_days"] > 30 and facts["not_after"]
    assert facts["acme_directory"] == deployed["pebble"].directory_url
    changes = "\n".join(rec["changes"])
    for what in (f"create service hubops-{DEPLOYMENT}-acme-responder", f"remove service hubops-{DEPLOYMENT}-acme-responder",
                 f"create secret hubops-{DEPLOYMENT}-tls-cert-", f"create secret hubops-{DEPLOYMENT}-tls-key-",
                 f"create secret hubops-{DEPLOYMENT}-acme-account-key-"):
        assert what in changes, changes
    assert any("port 80 answers" in k for k in rec["kept"]), rec["kept"]
    # The responder and its challenge files are gone; the account key stays in Swarm (not pruned).
    assert not [o for o in labelled() if "acme-responder" in o or f"-{DEPLOYMENT}-acme-" in o and "config" in o]
    roles = {s.attrs["Spec"]["Labels"].get("hubops.role") for s in docker.from_env().secrets.list(
        filters={"label": f"hubops.deployment={DEPLOYMENT}"})}
    assert {"tls-cert", "tls-key", "acme-account-key"} <= roles
    op = deployed["p"].operator_path
    for f in ("acme-account-key.pem", "tls-key.pem", "tls-cert.pem", "acme.json"):
        assert (op / f).stat().st_mode & 0o777 == 0o600, f


def test_hub_https_chains_to_pebble_root(deployed):
    p, root = deployed["p"], str(deployed["pebble"].root)
    assert running.trust_path(p) == str(deployed["pebble"].bundle)
    s = browser(deployed)  # Pebble's root alone, not the bundle with Pebble's HTTPS CA
    assert s.get(f"{p.hub_url}/hub/health", timeout=10).status_code == 200
    plain = requests.Session()
    plain.trust_env = False
    with pytest.raises(requests.exceptions.SSLError):  # the system roots do not know Pebble
        plain.get(f"{p.hub_url}/hub/health", timeout=10)
    kept = (p.operator_path / "tls-cert.pem").read_bytes()
    tls.chain_verifies(kept, Path(root).read_bytes(), NAME)
    assert served_fingerprint(deployed) == tls.cert_info(kept).fingerprint_sha256


def test_second_deploy_makes_no_acme_call_and_changes_nothing(deployed):
    warm = deployed["warm"]
    assert warm.returncode == 0, warm.stderr[-4000:]
    run = runs(deployed["outputs"])[1]
    assert run["status"] == "ok" and run["changed"] == 0, [s.get("changes") for s in run["stages"]]
    assert deployed["acme_after_warm"] == deployed["acme_after_cold"], "the second deploy asked Pebble something"
    rec = stage_record(deployed["outputs"], run, "40-tls")
    assert rec["results"][0]["facts"]["acme_call"] is False
    assert any("no ACME call" in k for k in rec["kept"]), rec["kept"]


def test_wrong_inputs_fail_before_any_change(deployed):
    pebble: Pebble = deployed["pebble"]
    base = deployed["params"].read_text()
    op = deployed["p"].operator_path

    def variant(name: str, old: str, new: str):
        f = deployed["tmp"] / f"{name}.yaml"
        assert old in base
        f.write_text(base.replace(old, new, 1))
        v = load_params(f)
        return v, Clients(v)

    def state():
        return labelled(), {f.name: f.read_bytes() for f in op.iterdir()}

    before = state()
    asked = pebble.requests_seen()
    # The name resolves, but not to the hub's node: refused before the ACME server is asked.
    v, c = variant("elsewhere", "email: hub-admin@acme.test", "email: hub-admin@acme.test\n    public_addr: 192.0.2.10")
    with pytest.raises(TLSError, match=re.escape(NAME) + r" resolves to 127\.0\.0\.1, not to the hub's node local \(192\.0\.2\.10\)"):
        acme_tls.issue(v, c, Result("t"))
    # The name does not resolve at all (.invalid never does).
    v, c = variant("unresolved", f"public_name: {NAME}", "public_name: hub.acme.invalid")
    with pytest.raises(TLSError, match=r"hub\.acme\.invalid does not resolve"):
        acme_tls.issue(v, c, Result("t"))
    assert pebble.requests_seen() == asked
    # An ACME error: the server's own message is shown.
    v, c = variant("acme-error", f"https_port: {PORT}", f"https_port: {PORT}, extra_names: [{BAD_NAME}]")
    with pytest.raises(TLSError, match=r"refused to open an order .*illegal character: '_'.*\[malformed\]"):
        acme_tls.issue(v, c, Result("t"))
    # Port 80 of the hub's node taken: the responder cannot start; it is removed again.
    v, c = variant("port80", "email: hub-admin@acme.test", "email: hub-admin@acme.test")
    blocker = socket.socket()
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        blocker.bind(("0.0.0.0", 80))
        blocker.listen(1)
        with pytest.raises(TLSError, match=r"responder could not start on local: .*address already in use.*port 80"):
            acme_tls.issue(v, c, Result("t"))
    finally:
        blocker.close()
    assert state() == before, "a refused issuance changed the cluster or the operator folder"


# -- GitHub OAuth -----------------------------------------------------------------------------
def test_allowed_user_logs_in_and_gets_a_server(deployed):
    p = deployed["p"]
    s, cb = github_login(deployed, "alice")
    assert cb.status_code == 302, cb.text[:500]
    assert deployed["github"].token_requests_bad_secret == 0  # the hub sent the right client secret
    s.get(f"{p.hub_url}/hub/spawn", timeout=60)
    HubAPI(p).wait_server("alice", ready=True, timeout=180)
    # alice opens her server through the proxy (the single-user server's own OAuth round with the
    # hub included), then its API answers her browser.
    page = s.get(f"{p.hub_url}/user/alice/", timeout=60)
    assert page.status_code == 200 and page.url.startswith(f"{p.hub_url}/user/alice/"), (page.url, page.status_code)
    status = s.get(f"{p.hub_url}/user/alice/api/status", timeout=30)
    assert status.status_code == 200 and "started" in status.json(), status.text[:300]
    assert docker.from_env().services.list(filters={"name": f"hubops-{DEPLOYMENT}-user-alice"})
    # bob is allowed too (he logs in now and is taken off the userlist later).
    assert github_login(deployed, "bob")[1].status_code == 302


def test_user_not_on_the_userlist_is_refused(deployed):
    s, cb = github_login(deployed, "mallory")
    assert cb.status_code == 403, (cb.status_code, cb.text[:300])
    assert HubAPI(deployed["p"]).user("mallory") is None
    assert not docker.from_env().services.list(filters={"name": f"hubops-{DEPLOYMENT}-user-mallory"})
    assert s.get(f"{deployed['p'].hub_url}/hub/spawn", allow_redirects=False, timeout=10).status_code == 302  # to login


def test_organisation_and_team_members_log_in_and_others_do_not(deployed):
    """auth.github.allowed_organizations: [physics, "chem:staff"]: OAuthenticator asks GitHub's
    membership API (with read:org) for each; a member of chem's other team is refused."""
    gh, api = deployed["github"], HubAPI(deployed["p"])
    checks = len(gh.membership_checks)
    assert github_login(deployed, "pia")[1].status_code == 302  # physics member
    assert "read:org" in gh.scopes[-1].split()
    assert github_login(deployed, "erin")[1].status_code == 302  # chem:staff member
    s, cb = github_login(deployed, "dave")  # in chem, but in its students team only
    assert cb.status_code == 403, (cb.status_code, cb.text[:300])
    assert api.user("pia") and api.user("erin") and api.user("dave") is None
    asked = gh.membership_checks[checks:]
    assert "physics pia" in asked and "chem:staff erin" in asked and "chem:staff dave" in asked, asked
    # Taking someone out of the team at GitHub refuses them at their next login.
    gh.teams[("chem", "staff")].discard("erin")
    assert github_login(deployed, "erin")[1].status_code == 403


def test_userlist_admin_is_admin_in_the_hub(deployed):
    p = deployed["p"]
    s, cb = github_login(deployed, "octoadmin")
    assert cb.status_code == 302
    s.get(f"{p.hub_url}/hub/home", timeout=10)
    me = s.get(f"{p.hub_url}/hub/api/user", headers={"X-XSRFToken": s.cookies.get("_xsrf")}, timeout=10)
    assert me.status_code == 200 and me.json()["name"] == "octoadmin" and me.json()["admin"] is True
    assert HubAPI(p).user("alice")["admin"] is False


# -- renewal ------------------------------------------------------------------------------------
def test_renew_tls_is_idempotent_then_rotates_with_servers_surviving(deployed):
    p, pebble = deployed["p"], deployed["pebble"]
    ensure_server(deployed, "alice")
    api = HubAPI(p)
    started = api.request("GET", "/user/alice/api/status").json()["started"]
    asked = pebble.requests_seen()
    noop = hubops_cli("ops", "renew-tls", "-p", str(deployed["params"]), outputs=deployed["outputs"])
    assert noop.returncode == 0, noop.stderr[-3000:]
    run = runs(deployed["outputs"])[-1]
    assert run["kind"] == "renew-tls" and run["changed"] == 0, run["stages"][0].get("changes")
    assert pebble.requests_seen() == asked, "a renewal that was not due asked the ACME server"

    old_fp = served_fingerprint(deployed)
    plan = hubops_cli("ops", "renew-tls", "-p", str(deployed["params"]), "--set", "force=true", "--plan",
                      outputs=deployed["outputs"])
    assert plan.returncode == 0, plan.stderr[-3000:]
    changes = runs(deployed["outputs"])[-1]["stages"][0]["changes"]
    assert any(c.startswith("would create certificate") for c in changes), changes
    assert pebble.requests_seen() == asked and served_fingerprint(deployed) == old_fp  # a plan changes nothing
    t0 = time.monotonic()
    renewed = hubops_cli("ops", "renew-tls", "-p", str(deployed["params"]), "--set", "force=true",
                         outputs=deployed["outputs"])
    FIGURES["renew_s"] = round(time.monotonic() - t0, 1)
    assert renewed.returncode == 0, renewed.stderr[-4000:]
    run = runs(deployed["outputs"])[-1]
    rec = stage_record(deployed["outputs"], run, "renew-tls")
    facts = rec["results"][0]["facts"]
    FIGURES["renew_downtime_s"] = facts["downtime_s"]
    print(f"\nrenewal: hub did not answer for {facts['downtime_s']} s at most "
          f"({facts['health_failures']} of {facts['health_probes']} probes failed)")
    assert facts["old_fingerprint_sha256"] == old_fp != facts["new_fingerprint_sha256"]
    assert served_fingerprint(deployed) == facts["new_fingerprint_sha256"]
    assert facts["downtime_s"] > 0 and facts["servers_survived"] == ["alice"]  # the figure is printed above
    changes = "\n".join(rec["changes"])
    assert f"create secret hubops-{DEPLOYMENT}-tls-cert-" in changes and f"remove secret hubops-{DEPLOYMENT}-tls-cert-" in changes
    assert f"update service hubops-{DEPLOYMENT}-hub" in changes and "image" not in changes.split("update service")[1].split("\n")[0]
    # alice's server is the same one, still reached through the proxy.
    assert api.request("GET", "/user/alice/api/status").json()["started"] == started
    assert pebble.requests_seen("/order-plz") >= 1 and pebble.requests_seen() > asked


# -- userlist change ------------------------------------------------------------------------------
def test_userlist_change_takes_effect_and_keeps_running_servers(deployed):
    p = deployed["p"]
    ensure_server(deployed, "alice")
    api = HubAPI(p)
    started = api.request("GET", "/user/alice/api/status").json()["started"]
    assert github_login(deployed, "carol")[1].status_code == 403
    (deployed["tmp"] / "userlist").write_text("octoadmin admin\nalice\ncarol\n")  # bob off, carol on
    out = hubops_cli("deploy", "-p", str(deployed["params"]), "--only", "50-auth", "--only", "80-deploy",
                     outputs=deployed["outputs"])
    assert out.returncode == 0, out.stderr[-4000:]
    run = runs(deployed["outputs"])[-1]
    assert [s["name"] for s in run["stages"]] == ["50-auth", "80-deploy"]
    changes = "\n".join(c for s in run["stages"] for c in s.get("changes", []))
    assert f"create config hubops-{DEPLOYMENT}-userlist-" in changes and f"update service hubops-{DEPLOYMENT}-hub" in changes
    assert github_login(deployed, "carol")[1].status_code == 302
    assert github_login(deployed, "bob")[1].status_code == 403  # known to the hub, but off the userlist
    assert api.request("GET", "/user/alice/api/status").json()["started"] == started


def test_no_secret_under_the_outputs(deployed):
    op = deployed["p"].operator_path
    values = [deployed["github"].client_secret]
    for name in ("api-token", "acme-account-key.pem", "tls-key.pem"):
        text = (op / name).read_text().strip()
        values.append(text)
        if name.endswith(".pem"):
            values += [ln for ln in text.splitlines() if ln and not ln.startswith("-----")]
    needles = {n for v in values for n in (v.encode(), base64.b64encode(v.encode()))}
    hits = [f"{f.relative_to(deployed['outputs'])}" for f in deployed["outputs"].rglob("*") if f.is_file()
            for n in needles if n in f.read_bytes()]
    assert len(runs(deployed["outputs"])) >= 5
    assert not hits, f"secrets found in {hits}"
