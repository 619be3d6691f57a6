"""Issue 4's "done when", on a lab: one manager (hub and proxy) and one worker (users' servers),
each a Docker engine in its own network namespace reached over mutual TLS on 2376, deployed the
way a user deploys (`hubops deploy`) with `tls.mode: acme` against a real Pebble and
`auth.mode: github` against a GitHub-compatible OAuth endpoint, both started by this module.

- Pebble's HTTP-01 validation goes to port 80 of the hub node's own address (challtestsrv
  resolves the public name to the lab manager's netns address, nothing else), and the hub's
  HTTPS chains to Pebble's root;
- the hub's container, inside the lab, reaches the fake GitHub on the lab bridge's host-side
  address: an allowed user logs in through the real OAuth flow and gets a server that lands on
  the worker and answers; a user not on the userlist gets 403 and no server; the userlist's admin
  is admin;
- `hubops ops renew-tls --set force=true` rotates the certificate on the lab, the downtime is
  measured and printed, and the user's running server survives;
- the daily schedule `hubops schedule renew-tls` writes runs the exact command its unit contains:
  a no-op far from expiry (no ACME call), and a second run while one holds the lock does nothing;
- no secret (client secret, API token, ACME account key, TLS keys old and new, the lab's client
  key, the swarm join tokens) appears in any file under the run's outputs, plain or base64.

Resources: lab `aclab-RUN` on a free subnet (tests/helpers), overlay 10.245.0.0/24 inside the lab,
hub port 8480 on the manager's own address, fake GitHub on the lab bridge's address, port 8489,
Pebble and challtestsrv on free ports of this machine. The lab is taken down and the /etc/hosts line removed at the end, also on failure.
"""
from __future__ import annotations

import base64
import fcntl
import os
import shlex
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests

from hubops.stages import tls
from hubops.core.engine import Clients
from hubops.hub.running import HubAPI
from tests import helpers
from tests.e2e import logins
from tests.helpers import LAB_SUBNETS, RUN, free_port, free_subnet, hubops_cli, run_name, runs, stage_record
from tests.peers import FakeGitHub, Pebble

pytestmark = [pytest.mark.engine, pytest.mark.e2e, pytest.mark.slow]  # `make test-all` only (see README: Tests)
LAB = run_name("aclab")
SUBNET = free_subnet(LAB_SUBNETS)
BRIDGE_ADDR = SUBNET.rsplit(".", 1)[0] + ".1"  # the lab bridge's host-side address: what the lab's containers reach
OVERLAY = "10.245.0.0/24"
PORT = 8480
GITHUB_PORT = 8489
NAME = f"hub-{RUN}.aclab.test"
HOSTS = Path("/etc/hosts")
HOSTS_MARK = f"# hubops tests/e2e/test_lab_acme_github.py run {RUN}"
CLIENT_ID = "hubops-lab-client"
USERS = "octoadmin admin\nalice\nbob\n"
FIGURES: dict[str, float] = {}


# -- the lab, the peers, the deployment -------------------------------------------------------
@pytest.fixture(scope="module")
def lab_info(tmp_path_factory):
    with logins.lab_running(tmp_path_factory.mktemp("aclab"), LAB, subnet=SUBNET, overlay=OVERLAY,
                            figures=FIGURES) as info:
        yield info


@pytest.fixture(scope="module")
def hosts_entry(lab_info):
    """The public name resolves to the lab manager's address on this machine (the probe, the
    browser); Pebble resolves it through challtestsrv to the same address."""
    addr = lab_info["info"].managers[0].address
    line = f"{addr} {NAME}  {HOSTS_MARK}\n"
    try:
        text = HOSTS.read_text()
        if HOSTS_MARK not in text:
            with HOSTS.open("a") as f:  # in place: /etc/hosts may be a bind mount
                f.write(("" if text.endswith("\n") or not text else "\n") + line)
    except OSError as e:
        pytest.fail(f"cannot add {NAME} to {HOSTS} ({e}); this test needs root", pytrace=False)
    try:
        yield addr
    finally:
        HOSTS.write_text("".join(ln for ln in HOSTS.read_text().splitlines(keepends=True) if HOSTS_MARK not in ln))


@pytest.fixture(scope="module")
def pebble(tmp_path_factory, lab_info):
    pb = Pebble(tmp_path_factory.mktemp("pebble"), resolve_to=lab_info["info"].managers[0].address,
                acme_port=free_port(), management_port=free_port(), dns_port=free_port(),
                challtest_management_port=free_port()).start()
    try:
        yield pb
    finally:
        pb.stop()


@pytest.fixture(scope="module")
def github(lab_info):
    gh = FakeGitHub(BRIDGE_ADDR, client_id=CLIENT_ID, client_secret="ghs-lab-" + os.urandom(16).hex(),
                    port=GITHUB_PORT, bind=BRIDGE_ADDR).start()
    try:
        yield gh
    finally:
        gh.stop()


@pytest.fixture(scope="module")
def deployed(lab_info, hosts_entry, pebble, github):
    # The lab's parameter file (hosts, engine TLS, overlay), with the hub's name, ACME and GitHub.
    d = logins.deploy_on_lab(
        lab_info, LAB, users=USERS, figures=FIGURES, secret_files={"github-client-secret": github.client_secret},
        hub={"public_name": NAME, "https_port": PORT},
        tls={"mode": "acme", "acme": {"directory_url": pebble.directory_url, "email": "hub-admin@aclab.test",
                                      "ca_bundle": str(pebble.bundle)}},
        auth={"mode": "github", "userlist": "userlist",
              "github": {"client_id": CLIENT_ID, "client_secret": {"file": "github-client-secret"},
                         "enterprise_url": github.url}})
    yield {**d, "pebble": pebble, "github": github, "old_keys": []}


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


def server_node(d, user: str) -> str:
    clients = Clients(d["p"])
    svc = clients.manager.services.get(f"hubops-{LAB}-user-{user}")
    for _ in range(60):
        running = [t for t in svc.tasks(filters={"desired-state": "running"}) if t["Status"]["State"] == "running"]
        if running:
            return clients.manager.nodes.get(running[0]["NodeID"]).attrs["Description"]["Hostname"]
        time.sleep(0.5)
    raise AssertionError(f"{user}'s server has no running task")


def started(d, user: str) -> str:
    return HubAPI(d["p"]).request("GET", f"/user/{user}/api/status").json()["started"]


# -- the deployment -------------------------------------------------------------------------------
def test_deploy_on_the_lab_validates_through_port_80_of_the_hub_node(deployed):
    cold = deployed["cold"]
    assert cold.returncode == 0, cold.stderr[-4000:]
    (run,) = runs(deployed["outputs"])
    assert run["status"] == "ok" and len(run["stages"]) == 11
    assert set(run["engines"]) == {f"{LAB}-manager", f"{LAB}-node0"}
    manager = deployed["lab"].managers[0]
    rec = stage_record(deployed["outputs"], run, "40-tls")
    facts = rec["results"][0]["facts"]
    assert facts["mode"] == "acme" and facts["acme_call"] is True and facts["names"] == [NAME]
    assert facts["issuer_cn"].startswith("Pebble Intermediate CA"), facts
    changes = "\n".join(rec["changes"])
    assert f"temporary HTTP-01 responder on port 80 of {LAB}-manager" in changes, changes
    assert any(k.startswith(f"DNS {NAME}") and manager.address in k for k in rec["kept"]), rec["kept"]
    # Pebble looked the name up at challtestsrv (which answers only the manager's netns address)
    # and fetched the challenge from port 80 there: the authorization is valid.
    pebble: Pebble = deployed["pebble"]
    assert 1 in pebble.dns_queries(NAME), "Pebble never asked challtestsrv for the name's A record"
    log = pebble.log.read_text(errors="replace")
    assert f"Attempting to validate w/ HTTP: http://{NAME}:80{'/.well-known/acme-challenge/'}" in log
    assert "set VALID by completed challenge" in log and "Issued certificate serial" in log
    # The responder is gone; nothing answers on port 80 of the node now.
    with pytest.raises(OSError):
        socket.create_connection((manager.address, 80), timeout=3).close()


def test_hub_https_chains_to_pebble_root(deployed):
    p = deployed["p"]
    s = browser(deployed)
    assert s.get(f"{p.hub_url}/hub/health", timeout=10).status_code == 200
    plain = requests.Session()
    plain.trust_env = False
    with pytest.raises(requests.exceptions.SSLError):  # the system roots do not know Pebble
        plain.get(f"{p.hub_url}/hub/health", timeout=10)
    kept = (p.operator_path / "tls-cert.pem").read_bytes()
    tls.chain_verifies(kept, deployed["pebble"].root.read_bytes(), NAME)
    assert served_fingerprint(deployed) == tls.cert_info(kept).fingerprint_sha256


def test_allowed_user_logs_in_and_gets_a_server_on_the_worker(deployed):
    p = deployed["p"]
    t0 = time.monotonic()
    s, cb = github_login(deployed, "alice")
    assert cb.status_code == 302, (cb.status_code, cb.text[:500])
    assert deployed["github"].token_requests_bad_secret == 0
    assert any("POST /login/oauth/access_token" in ln for ln in deployed["github"].log)  # from the hub's container
    s.get(f"{p.hub_url}/hub/spawn", timeout=60)
    HubAPI(p).wait_server("alice", ready=True, timeout=180)
    FIGURES["login_to_server_s"] = round(time.monotonic() - t0, 1)
    assert server_node(deployed, "alice") == f"{LAB}-node0"  # the worker, not the hub's manager
    page = s.get(f"{p.hub_url}/user/alice/", timeout=60)
    assert page.status_code == 200 and page.url.startswith(f"{p.hub_url}/user/alice/"), (page.url, page.status_code)
    status = s.get(f"{p.hub_url}/user/alice/api/status", timeout=30)
    assert status.status_code == 200 and "started" in status.json(), status.text[:300]


def test_user_not_on_the_userlist_gets_403_and_no_server(deployed):
    s, cb = github_login(deployed, "mallory")
    assert cb.status_code == 403, (cb.status_code, cb.text[:300])
    assert HubAPI(deployed["p"]).user("mallory") is None
    assert not Clients(deployed["p"]).manager.services.list(filters={"name": f"hubops-{LAB}-user-mallory"})


def test_userlist_admin_is_admin(deployed):
    p = deployed["p"]
    s, cb = github_login(deployed, "octoadmin")
    assert cb.status_code == 302
    s.get(f"{p.hub_url}/hub/home", timeout=10)
    me = s.get(f"{p.hub_url}/hub/api/user", headers={"X-XSRFToken": s.cookies.get("_xsrf")}, timeout=10)
    assert me.status_code == 200 and me.json()["name"] == "octoadmin" and me.json()["admin"] is True
    assert HubAPI(p).user("alice")["admin"] is False


# -- renewal --------------------------------------------------------------------------------------
def test_forced_renewal_rotates_the_certificate_and_the_server_survives(deployed):
    p, pebble = deployed["p"], deployed["pebble"]
    was = started(deployed, "alice")
    old_fp = served_fingerprint(deployed)
    deployed["old_keys"].append((p.operator_path / "tls-key.pem").read_text())
    orders = pebble.requests_seen("/order-plz")
    t0 = time.monotonic()
    out = hubops_cli("ops", "renew-tls", "-p", str(deployed["params"]), "--set", "force=true",
                     outputs=deployed["outputs"])
    FIGURES["renew_s"] = round(time.monotonic() - t0, 1)
    assert out.returncode == 0, out.stderr[-4000:]
    run = runs(deployed["outputs"])[-1]
    assert run["kind"] == "renew-tls" and run["status"] == "ok"
    rec = stage_record(deployed["outputs"], run, "renew-tls")
    facts = rec["results"][0]["facts"]
    FIGURES["renew_downtime_s"] = facts["downtime_s"]
    print(f"\nlab renewal: the hub did not answer for {facts['downtime_s']} s at most "
          f"({facts['health_failures']} of {facts['health_probes']} probes every 0.2 s failed); "
          f"renew-tls took {FIGURES['renew_s']} s")
    assert facts["old_fingerprint_sha256"] == old_fp != facts["new_fingerprint_sha256"]
    assert served_fingerprint(deployed) == facts["new_fingerprint_sha256"]
    assert facts["downtime_s"] > 0 and facts["servers_survived"] == ["alice"]
    assert pebble.requests_seen("/order-plz") == orders + 1
    changes = "\n".join(rec["changes"])
    assert f"temporary HTTP-01 responder on port 80 of {LAB}-manager" in changes
    assert f"create secret hubops-{LAB}-tls-cert-" in changes and f"remove secret hubops-{LAB}-tls-cert-" in changes
    assert started(deployed, "alice") == was and server_node(deployed, "alice") == f"{LAB}-node0"


def test_scheduled_renewal_runs_its_exact_command_idempotently_under_a_lock(deployed):
    units = deployed["tmp"] / "units"
    units.mkdir()
    for fmt in ("systemd", "cron"):
        out = hubops_cli("schedule", "renew-tls", "-p", str(deployed["params"]), "--format", fmt,
                         "--dest", str(units), outputs=deployed["outputs"])
        assert out.returncode == 0, out.stderr[-2000:]
    service = (units / f"hubops-renew-tls-{LAB}.service").read_text()
    timer = (units / f"hubops-renew-tls-{LAB}.timer").read_text()
    cron = (units / f"hubops-renew-tls-{LAB}").read_text()
    assert "OnCalendar=*-*-* 03:17:00" in timer and "Persistent=true" in timer

    def value(key: str) -> str:
        (v,) = [ln.split("=", 1)[1] for ln in service.splitlines() if ln.startswith(key + "=")]
        return v.replace("%%", "%")

    argv = shlex.split(value("ExecStart"))
    env_k, _, env_v = shlex.split(value("Environment"))[0].partition("=")
    assert argv[-4:] == ["ops", "renew-tls", "-p", str(deployed["params"])] and "flock" in argv[0]
    assert env_k == "HUBOPS_OUTPUTS" and env_v == str(deployed["outputs"])
    pebble = deployed["pebble"]
    fp, asked, before = served_fingerprint(deployed), pebble.requests_seen(), len(runs(deployed["outputs"]))
    # What systemd would run, as it would run it (its environment, its working directory).
    t0 = time.monotonic()
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", env_k: env_v}
    r = subprocess.run(argv, cwd=value("WorkingDirectory"), env=env, capture_output=True, text=True, timeout=600)
    FIGURES["scheduled_noop_s"] = round(time.monotonic() - t0, 1)
    assert r.returncode == 0, r.stderr[-3000:]
    run = runs(deployed["outputs"])[-1]
    assert len(runs(deployed["outputs"])) == before + 1 and run["kind"] == "renew-tls"
    assert run["status"] == "ok" and run["changed"] == 0, run["stages"][0].get("changes")
    assert pebble.requests_seen() == asked, "a renewal far from expiry asked the ACME server"
    assert served_fingerprint(deployed) == fp
    # The cron.d entry's command while another run holds the lock: it does nothing, at once.
    (line,) = [ln for ln in cron.splitlines() if ln.startswith("17 3 * * * root ")]
    cron_env = {k: v for k, _, v in (ln.partition("=") for ln in cron.splitlines() if ln and not ln.startswith("#")
                                     and "=" in ln.split()[0])}
    lock = Path(argv[argv.index("--conflict-exit-code") + 2])
    try:
        with open(lock, "a") as held:
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
            t0 = time.monotonic()
            r = subprocess.run(["/bin/sh", "-c", line.removeprefix("17 3 * * * root ").replace("\\%", "%")],
                               env=cron_env, capture_output=True, text=True, timeout=60)
            FIGURES["scheduled_locked_s"] = round(time.monotonic() - t0, 2)
    finally:
        lock.unlink(missing_ok=True)
    assert r.returncode == 75, (r.returncode, r.stderr[-2000:])
    assert len(runs(deployed["outputs"])) == before + 1, "a run started while another held the lock"


def test_no_secret_under_the_outputs(deployed):
    p = deployed["p"]
    op = p.operator_path
    values = [deployed["github"].client_secret, *deployed["old_keys"],
              Path(deployed["lab"].certs["key"]).read_text()]
    for name in ("api-token", "acme-account-key.pem", "tls-key.pem"):
        values.append((op / name).read_text())
    tokens = Clients(p).manager.swarm.attrs["JoinTokens"]
    values += [tokens["Worker"], tokens["Manager"]]
    needles = set()
    for v in values:
        v = v.strip()
        parts = [v] + ([ln for ln in v.splitlines() if ln and not ln.startswith("-----")] if "-----BEGIN" in v else [])
        for part in parts:
            needles |= {part.encode(), base64.b64encode(part.encode())}
    files = [f for f in deployed["outputs"].rglob("*") if f.is_file()]
    assert len(runs(deployed["outputs"])) == 3 and len(files) > 20
    hits = sorted({str(f.relative_to(deployed["outputs"])) for f in files for n in needles if n in f.read_bytes()})
    print(f"\nscanned {len(files)} files under the outputs for {len(needles)} secret forms")
    assert not hits, f"secrets found in {hits}"
