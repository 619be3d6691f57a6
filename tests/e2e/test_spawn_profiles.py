"""Spawn profiles on the local engine, end to end: `hubops deploy` of a hub with two profiles, the
second built by 60-images from images/example-profile (FROM the single-user image, so cheap) and
placed by a node label; then, in headless Chromium, a user logs in, sees the spawn page with both
profiles (screenshot), picks the second, and the server starts from that profile's image with its
limits and reservation, on the labelled node, labelled with the profile; `ops status` says who
runs which profile where. A user outside the profile's group neither sees it nor can start it
through the API.

Deployment `prof-RUN` (tests/helpers: run_name, free_port, free_subnet); torn down afterwards.
About 3-4 minutes with warm base, hub and single-user images (the hub image is rebuilt when the
spawner changed; the profile image builds in seconds)."""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import docker
import pytest

from hubops.core.engine import Clients
from hubops.core.params import load_params
from hubops.hub.running import HubAPI
from hubops.ops import status as ops_status
from hubops.ops import teardown
from tests import browser as chrome
from tests.helpers import (create_user, free_port, free_subnet, hubops_cli, make_params, run_name, runs,
                           screenshot_path, stage_record)

pytestmark = [pytest.mark.engine, pytest.mark.e2e]
DEPLOYMENT = run_name("prof")
PORT = free_port()
CHROMIUM = Path("/usr/bin/chromium")
USERS = "operator admin\nalice @teaching\nbob\n"
PROFILES = """
hosts:
  managers:
    - {name: local, url: "unix:///var/run/docker.sock", advertise_addr: 127.0.0.1, labels: {site.extras: "yes"}}
profiles:
  - {name: standard, description: "The single-user image, 1 GiB, 1 CPU", mem_limit: 1G, cpu_limit: 1}
  - name: extras
    description: "The example profile image, 768 MiB, half a CPU"
    image: images/example-profile
    mem_limit: 768M
    cpu_limit: 0.5
    mem_guarantee: 256M
    placement: {site.extras: "yes"}
    groups: [teaching]
"""
FIGURES: dict[str, float] = {}


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium", pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                               args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prof")
    f = make_params(tmp, DEPLOYMENT, port=PORT, subnet=free_subnet(), extra=PROFILES, users=USERS)
    text = f.read_text()  # make_params's host list gives way to the labelled one above
    start = text.index("hosts:\n")
    text = text[:start] + text[text.index("hub:", start):]
    # a machine shared with other suites can be slow: more time for the hub and the servers to start
    f.write_text(text.replace(f"https_port: {PORT}}}", f"https_port: {PORT}, start_timeout: 600}}")
                 + "spawner: {start_timeout: 300}\n")
    outputs = tmp / "outputs"
    p = load_params(f)
    try:
        t0 = time.monotonic()
        deploy = hubops_cli("deploy", "-p", str(f), outputs=outputs)
        FIGURES["deploy_s"] = round(time.monotonic() - t0, 1)
        yield {"p": p, "deploy": deploy, "outputs": outputs, "tmp": tmp}
    finally:
        print(f"\nfigures: {json.dumps(FIGURES)}")
        try:
            teardown.teardown(p, Clients(p), remove_volumes=True, remove_user_data=True)
        except Exception as e:  # a loaded machine: the hub's API may time out once
            print(f"teardown failed once ({e.__class__.__name__}: {str(e)[:200]}); again")
            teardown.teardown(p, Clients(p), remove_volumes=True, remove_user_data=True)


def service_of(p, user: str):
    return docker.from_env().services.get(f"{p.prefix}-user-{user}")


def test_deploy_builds_the_profile_image_and_delivers_it(deployed):
    d = deployed["deploy"]
    assert d.returncode == 0, d.stderr[-4000:]
    run = runs(deployed["outputs"])[0]
    assert run["status"] == "ok", [(s["name"], s["status"]) for s in run["stages"]]
    rec = stage_record(deployed["outputs"], run, "60-images")
    prof = next(r for r in rec["results"] if r["step"] == "profile images")
    print(json.dumps(prof, indent=1)[:2000])
    assert prof["facts"]["profile extras"].startswith("hubops-example-profile:")
    assert prof["facts"]["profile extras"].endswith(" on local")
    pre = stage_record(deployed["outputs"], run, "00-preflight")["results"][0]["facts"]
    assert pre["generic resources"] == [{"host": "local", "advertises": "none"}]


def log_in(*args, **kwargs):
    return chrome.again(_log_in, *args, **kwargs)


def _log_in(browser, p, user: str):
    page = browser.new_context(ignore_https_errors=True, viewport={"width": 1100, "height": 800}).new_page()
    chrome.goto(page, f"{p.hub_url}/hub/login?next=/hub/spawn")
    page.fill("#username_input", user)
    page.fill("#password_input", (p.operator_path / "user-password").read_text().strip())
    with page.expect_navigation():
        page.click("#login_submit")
    page.wait_for_load_state()
    return page


def wait_for_own_server(page, p, user: str) -> None:
    """The browser follows the spawn to the user's server; a navigation Chromium aborts with
    ERR_NETWORK_CHANGED (other tests' interfaces coming and going) is not the hub's answer: the spawn
    is then followed through the API and the page opened again."""
    try:
        try:
            page.wait_for_url(f"{p.hub_url}/user/{user}/**", timeout=300_000)
        except Exception as e:  # playwright's Error
            if not chrome.network_changed(e):
                raise
            print(f"browser: ERR_NETWORK_CHANGED while following {user}'s spawn; following it through the API")
            HubAPI(p).wait_server(user, ready=True, timeout=300)
    except Exception:
        print(f"page {page.url}: {page.inner_text('body')[:1500]}")
        print(chrome.hub_log_tail(p.hub_service, 150))
        print(subprocess.run(["docker", "service", "ps", "--no-trunc", f"{p.prefix}-user-{user}"],
                             capture_output=True, text=True).stdout)
        raise
    resp = chrome.goto(page, f"{p.hub_url}/user/{user}/api/status")
    assert resp.status == 200, resp.status


def test_a_user_picks_a_profile_on_the_spawn_page_and_gets_its_image_limits_and_node(deployed, browser):
    p = deployed["p"]
    page = log_in(browser, p, "alice")
    assert page.url.startswith(f"{p.hub_url}/hub/spawn"), page.url
    page.wait_for_selector("#profile-extras")
    text = page.inner_text("#spawn_form")
    assert "standard" in text and "extras" in text and "The example profile image" in text, text
    shot = screenshot_path("profiles-spawn-page.png")
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")
    page.check("#profile-extras")
    t0 = time.monotonic()
    page.click("#spawn_form button[type=submit]")
    wait_for_own_server(page, p, "alice")
    FIGURES["spawn_extras_s"] = round(time.monotonic() - t0, 1)
    page.context.close()

    svc = service_of(p, "alice")
    spec = svc.attrs["Spec"]
    tt = spec["TaskTemplate"]
    assert tt["ContainerSpec"]["Image"].startswith("hubops-example-profile:")
    assert tt["Resources"]["Limits"]["MemoryBytes"] == 768 << 20
    assert tt["Resources"]["Limits"]["NanoCPUs"] == 500_000_000
    assert tt["Resources"]["Reservations"]["MemoryBytes"] == 256 << 20
    assert "node.labels.site.extras==yes" in tt["Placement"]["Constraints"]
    assert spec["Labels"]["hubops.profile"] == "extras"
    [task] = [t for t in svc.tasks() if t["Status"]["State"] == "running"]
    ct = docker.from_env().containers.get(task["Status"]["ContainerStatus"]["ContainerID"])
    assert ct.exec_run(["cat", "/etc/hubops-profile"]).output.decode().strip() == "example-profile"
    assert ct.attrs["HostConfig"]["Memory"] == 768 << 20
    # the hub keeps the choice
    model = HubAPI(p).user("alice")
    assert model["servers"][""]["user_options"] == {"profile": "extras"}, model["servers"][""]
    # ops status: who runs which profile where
    r = ops_status.status(p, Clients(p))
    row = next(s for s in r.facts["services"] if s["user"] == "alice")
    assert (row["profile"], row["node"], row["state"]) == ("extras", "local", "running"), row
    assert {"node": "local", "users": "alice (extras)"} in r.facts["users by node"]


def test_a_user_outside_the_group_sees_one_profile_and_cannot_force_the_other(deployed, browser):
    p = deployed["p"]
    api = HubAPI(p)
    if api.user("bob") is None:  # the userlist's users exist once the hub has started
        create_user(p, "bob")
    r = api.request("POST", "/hub/api/users/bob/server", ok=(201, 202, 400, 403, 500),
                    json={"profile": "extras"})
    print(r.status_code, r.text[:300])
    assert r.status_code in (400, 403, 500) and "teaching" in r.text, r.text[:500]
    assert (api.user("bob") or {}).get("servers", {}) == {}
    # with one profile to choose, bob has no spawn page: the login goes straight to his server
    page = log_in(browser, p, "bob")
    wait_for_own_server(page, p, "bob")
    page.context.close()
    tt = service_of(p, "bob").attrs["Spec"]["TaskTemplate"]
    assert tt["ContainerSpec"]["Image"].startswith("hubops-singleuser:")
    assert tt["Resources"]["Limits"]["MemoryBytes"] == 1 << 30
    assert service_of(p, "bob").attrs["Spec"]["Labels"]["hubops.profile"] == "standard"
