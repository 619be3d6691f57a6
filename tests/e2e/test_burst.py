"""A class starting at once never takes the hub down (issue 13 item 9), on the local default with a
small limit: `spawner.concurrent_spawn_limit: 2` and five users asking for their servers at the
same moment through the REST API. One deployment, `burst-RUN` (a free port and subnet), torn down
at the end.

- the hub's configuration carries the limit, and 80-deploy's record says what it is;
- while two servers start, a third user's browser gets the hub's 429 page ("Your server starts in
  a moment", retried by itself) and the REST API answers 429 with JupyterHub's message and a
  Retry-After header;
- every user's server answers through the proxy in the end (clients honour Retry-After);
- the hub's container is the same one throughout (no task of the hub service ended), and its
  healthcheck (hubops/inhub/health.py) says why it is healthy;
- then, with 450 more users made in one request (more than the 200 one answer of the hub's API
  holds), `HubAPI.users()` lists every user exactly once, and what lists users' servers through
  the hub (teardown, renew-tls) sees a server of a user on the third page.
Figures (times, 429 counts) are printed, never asserted.
"""
from __future__ import annotations

import concurrent.futures as cf
import json
import time
from pathlib import Path

import docker
import pytest
import requests

from hubops.core import operator
from hubops.core.engine import Clients
from hubops.core.params import load_params
from hubops.core.record import read_record
from hubops.hub.running import hub_session
from hubops.ops import teardown
from tests.helpers import ensure_swarm, free_port, free_subnet, hubops_cli, make_params, run_name, runs

# 71 s on a quiet 2-core machine (in `make test`); 4.3-4.8 min at load 20.
pytestmark = [pytest.mark.engine, pytest.mark.e2e]
DEPLOYMENT = run_name("burst")
USERS = [f"class{i}" for i in range(5)]
LIMIT = 2


def labelled_objects() -> list[str]:
    client = docker.from_env()
    return [f"{kind} {o.name}" for kind, coll in (("service", client.services), ("secret", client.secrets),
                                                  ("config", client.configs), ("network", client.networks),
                                                  ("volume", client.volumes))
            for o in coll.list(filters={"label": f"hubops.deployment={DEPLOYMENT}"})]


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("burst")
    ensure_swarm()
    params = make_params(tmp, DEPLOYMENT, port=free_port(), subnet=free_subnet(),
                         users="operator admin\n" + "".join(f"{u}\n" for u in USERS),
                         extra=f"spawner: {{concurrent_spawn_limit: {LIMIT}}}\nculler: {{enabled: false}}\n")
    outputs = tmp / "outputs"
    assert not labelled_objects(), f"deployment {DEPLOYMENT} exists already: {labelled_objects()}"
    t0 = time.monotonic()
    r = hubops_cli("deploy", "-p", str(params), outputs=outputs)
    print(f"\ndeploy: {time.monotonic() - t0:.1f} s")
    p = load_params(params)
    try:
        assert r.returncode == 0, r.stderr[-4000:]  # the hub makes the userlist's users when it starts
        yield {"p": p, "outputs": outputs}
    finally:
        down = hubops_cli("ops", "teardown", "-p", str(params), "--set", "confirm=true", "--set", "remove_volumes=true",
                          "--set", "remove_user_data=true", outputs=outputs)
        left = labelled_objects()
        if down.returncode != 0 or left:
            teardown.teardown(p, Clients(p), remove_volumes=True, remove_user_data=True)
        assert down.returncode == 0, down.stderr[-3000:]
        assert not left, f"teardown left {left}"


def api(p) -> requests.Session:
    s = hub_session(p)
    s.headers["Authorization"] = f"token {operator.read(p, 'api-token').decode().strip()}"
    return s


def hub_container(p):
    c = docker.from_env()
    [ctr] = c.containers.list(filters={"label": [f"hubops.deployment={DEPLOYMENT}", "hubops.role=hub"]})
    return ctr


def hub_task_ids(p) -> set[str]:
    return {t["ID"] for t in docker.from_env().services.get(p.hub_service).tasks()}


def user_browser(p, user: str) -> requests.Session:
    """A user logged in through the real login form with the shared user password."""
    s = hub_session(p)
    s.get(f"{p.hub_url}/hub/login", timeout=30)
    pw = (p.operator_path / "user-password").read_text().strip()
    r = s.post(f"{p.hub_url}/hub/login", data={"username": user, "password": pw, "_xsrf": s.cookies.get("_xsrf")},
               allow_redirects=False, timeout=30)
    assert r.status_code == 302, r.text[:300]
    return s


def start_until_answering(p, user: str, t0: float, seen: dict) -> float:
    """Ask for the server as a client that honours 429's Retry-After, then reach it through the proxy."""
    s = api(p)
    deadline = time.monotonic() + 600
    while True:
        assert time.monotonic() < deadline, f"{user}: the hub never took the request"
        r = s.post(f"{p.hub_url}/hub/api/users/{user}/server", timeout=120)
        if r.status_code in (201, 202) or (r.status_code == 400 and "already" in r.text):
            break
        assert r.status_code == 429, f"{user}: HTTP {r.status_code} {r.text[:300]}"
        seen.setdefault("api_429", []).append((r.json()["message"], r.headers.get("Retry-After")))
        time.sleep(float(r.headers["Retry-After"]))
    while True:
        assert time.monotonic() < deadline, f"{user}: the server never answered through the proxy"
        r = s.get(f"{p.hub_url}/user/{user}/api/status", timeout=60, allow_redirects=False)
        if r.status_code == 200:
            return time.monotonic() - t0
        time.sleep(0.5)


def test_deploy_renders_the_limit_and_records_it(hub):
    p = hub["p"]
    deploy_run = [r for r in runs(hub["outputs"]) if r["kind"] == "deploy"][-1]
    rec = read_record(json.loads((hub["outputs"] / deploy_run["run_id"] / "80-deploy.ipynb").read_text()))
    facts = {k: v for r in rec["results"] for k, v in r["facts"].items()}
    assert facts["concurrent_spawn_limit"] == LIMIT
    conf = hub_container(p).exec_run(["cat", "/srv/jupyterhub/jupyterhub_config.py"]).output.decode()
    assert f"c.JupyterHub.concurrent_spawn_limit = {LIMIT}\n" in conf
    assert "hubops_health.start_heartbeat()" in conf


def test_five_users_at_once_with_a_limit_of_two(hub):
    p = hub["p"]
    ctr = hub_container(p)
    tasks_before = hub_task_ids(p)
    seen: dict = {}
    # The browser of the user who will find the hub busy, logged in beforehand.
    waiting_user, starters = USERS[-1], USERS[:LIMIT]
    browser = user_browser(p, waiting_user)
    s = api(p)
    t0 = time.monotonic()
    with cf.ThreadPoolExecutor(len(USERS)) as pool:
        first = [pool.submit(start_until_answering, p, u, t0, seen) for u in starters]
        # As soon as the hub counts two spawns pending, the third user opens the spawn page.
        while not all(((s.get(f"{p.hub_url}/hub/api/users/{u}", timeout=30).json().get("servers") or {})
                       .get("", {}).get("pending") == "spawn") for u in starters):
            assert not any(f.done() for f in first), [f.result() for f in first if f.done()]
            time.sleep(0.05)
        page = browser.get(f"{p.hub_url}/hub/spawn", timeout=60, allow_redirects=False)
        rest = [pool.submit(start_until_answering, p, u, t0, seen) for u in USERS[LIMIT:]]
        times = {u: f.result() for u, f in zip(USERS, first + rest)}
    print(f"\nfive users, limit {LIMIT}: all answered in {max(times.values()):.1f} s; per user "
          + ", ".join(f"{u} {t:.1f} s" for u, t in times.items()) + f"; REST API 429s: {len(seen.get('api_429', []))}")
    # The user in the browser was told to wait, kindly, and the page retries by itself.
    assert page.status_code == 429, (page.status_code, page.text[:500])
    assert "Your server starts in a moment" in page.text and "tries again by itself" in page.text, page.text[:3000]
    assert 5 <= int(page.headers["Retry-After"]) <= 15
    # The REST API said the same, with JupyterHub's message and when to try again.
    assert seen.get("api_429"), "no client was asked to wait: the limit did not hold"
    message, retry = seen["api_429"][0]
    assert message.startswith("Too many users trying to log in right now. Try again in") and 5 <= int(retry) <= 15
    # Everyone got a server, and the hub never went away.
    assert len(times) == len(USERS)
    assert hub_container(p).id == ctr.id, "the hub's container changed: Swarm replaced the hub"
    assert hub_task_ids(p) == tasks_before, "a task of the hub service ended during the burst"
    ctr.reload()
    health = ctr.attrs["State"]["Health"]
    print("healthcheck: " + health["Status"] + "; last: " + (health["Log"][-1]["Output"] or "").strip())
    assert health["Status"] == "healthy"
    assert health["Log"][-1]["Output"].startswith(("healthy: /hub/health answered", "healthy: busy")), health["Log"][-1]


def test_users_pages_past_the_hubs_limit(hub):
    """HubAPI.users() against a hub with more users than one answer holds (JupyterHub's
    api_page_max_limit, 200): 450 more users made in one admin request, every user listed exactly
    once."""
    from collections import Counter

    from hubops.hub.running import HubAPI
    from tests.helpers import admin_session

    p = hub["p"]
    many = [f"many{i:03d}" for i in range(450)]
    t0 = time.monotonic()
    r = admin_session(p).post(f"{p.hub_url}/hub/api/users", json={"usernames": many}, timeout=600)
    assert r.status_code == 201, r.text[:300]
    print(f"\n{len(many)} users made in one request: {time.monotonic() - t0:.1f} s")
    hubapi = HubAPI(p, timeout=120)
    # One answer is capped whatever the client asks for: the paging is needed.
    one = hubapi.request("GET", "/hub/api/users?limit=1000").json()
    assert len(one) == 200, len(one)
    t0 = time.monotonic()
    listed = hubapi.users()
    print(f"users(): {len(listed)} users in {time.monotonic() - t0:.1f} s")
    counts = Counter(u["name"] for u in listed)
    assert [n for n, k in counts.items() if k > 1] == []
    assert set(counts) == {"operator", *USERS, *many}, sorted(set(counts) ^ {"operator", *USERS, *many})[:20]
    # The hub lists users in the order they were made: the last one is on the third page.
    assert [u["name"] for u in listed].index(many[-1]) >= 400


def test_teardown_and_renew_tls_see_a_server_past_the_200th_user(hub):
    """What lists users' servers through the hub pages too: a server of the last of the 450 users
    (made by the test above, on the hub's third page) is among renew-tls's running servers and
    among the servers teardown stops through the hub."""
    from hubops.core.result import Result
    from hubops.hub.running import HubAPI
    from hubops.ops import renew_tls

    p = hub["p"]
    last = "many449"
    hubapi = HubAPI(p, timeout=120)
    assert hubapi.user(last) is not None, "the 450 users of the test above are not there"
    hubapi.request("POST", f"/hub/api/users/{last}/server", ok=(201, 202), timeout=120)
    hubapi.wait_server(last, ready=True, timeout=300)
    running = renew_tls._running_servers(hubapi)
    plan = Result("teardown", dry_run=True)
    teardown._stop_servers_through_hub(p, plan, True, 60)
    stopped = {i.target for i in plan.items if i.action == "remove"}
    print(f"\nrenew-tls's running servers: {running}; teardown stops through the hub: {sorted(stopped)}")
    assert {"renew-tls sees it": last in running, "teardown stops it": f"server {last}" in stopped} == \
        {"renew-tls sees it": True, "teardown stops it": True}
    assert stopped == {f"server {u['name']}" for u in hubapi.users() if u.get("servers")}, stopped
