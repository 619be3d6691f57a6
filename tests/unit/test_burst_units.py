"""A burst of users must not take the hub down (issue 13 item 9), the parts that need no engine:
the spawn limit sized to the cluster and rendered into the hub's configuration, the 429 page, the
spawner's pacing, and the healthcheck that tells a busy hub from a dead one, run against real
sockets and a real HTTP server that answers late, or not at all."""
from __future__ import annotations

import asyncio
import http.server
import os
import socket
import threading
import time
from pathlib import Path

import jinja2
import pytest
from tornado import web

from hubops.core.params import load_params
from hubops.hub import config as hubconfig, spawn_limits
from hubops.inhub import health
from hubops.inhub.spawner import HubopsSpawner
from hubops.stages import deploy
from tests.helpers import make_params

PROJECT = Path(__file__).resolve().parents[2]


def params(tmp_path, extra: str = ""):
    return load_params(make_params(tmp_path, "burstunit", port=8443, subnet="10.176.9.0/24", extra=extra))


# -- the limit ------------------------------------------------------------------------------------

def test_the_limit_is_twice_the_cpus_of_the_user_nodes(tmp_path):
    p = params(tmp_path)
    assert spawn_limits.concurrent_spawn_limit(p, [2.0]) == 4          # the embedded default: one 2-core node
    assert spawn_limits.concurrent_spawn_limit(p, [2.0, 2.0, 8.0]) == 24
    assert spawn_limits.concurrent_spawn_limit(p, [0.5]) == spawn_limits.MINIMUM
    assert spawn_limits.concurrent_spawn_limit(p, None) == 4            # nodes unknown: 2 CPUs per host


def test_the_limit_set_by_hand_wins_and_zero_means_none(tmp_path):
    assert spawn_limits.concurrent_spawn_limit(params(tmp_path, "spawner: {concurrent_spawn_limit: 7}\n"), [64]) == 7
    assert spawn_limits.concurrent_spawn_limit(params(tmp_path, "spawner: {concurrent_spawn_limit: 0}\n"), [64]) == 0


class _Node:
    def __init__(self, role, cpus, state="ready", availability="active"):
        self.attrs = {"Spec": {"Role": role, "Availability": availability}, "Status": {"State": state},
                      "Description": {"Resources": {"NanoCPUs": int(cpus * 1e9)}}}


class _Nodes:
    def __init__(self, nodes):
        self.nodes = nodes

    def list(self):
        return self.nodes


class _Client:
    def __init__(self, nodes):
        self.nodes = _Nodes(nodes)


def test_only_nodes_that_run_users_servers_count(tmp_path):
    nodes = [_Node("manager", 4), _Node("worker", 2), _Node("worker", 2, state="down"),
             _Node("worker", 8, availability="drain")]
    one = params(tmp_path)
    assert spawn_limits.user_node_cpus(_Client(nodes), one) == [4.0, 2.0]   # no workers listed: servers go anywhere
    on_workers = params(tmp_path, "spawner: {placement: workers}\n")
    assert spawn_limits.user_node_cpus(_Client(nodes), on_workers) == [2.0]


def test_the_hub_config_carries_the_limits_the_retry_range_and_the_429_page(tmp_path):
    p = params(tmp_path, "spawner: {active_server_limit: 30}\n")
    src = hubconfig.render(p, singleuser_image="hubops-singleuser:abc", node_cpus=[2.0])
    from traitlets.config import Config

    cfg = Config()
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    for name in hubconfig.SECRET_FILES.values():
        (secrets / name).write_text("ab" * 32 + "\n")
    (tmp_path / "ul").write_text(p.userlist_text())
    os.environ.update(HUBOPS_SECRETS_DIR=str(secrets), HUBOPS_USERLIST=str(tmp_path / "ul"))
    try:
        exec(compile(src, "jupyterhub_config.py", "exec"), {"get_config": lambda: cfg})
    finally:
        os.environ.pop("HUBOPS_SECRETS_DIR")
        os.environ.pop("HUBOPS_USERLIST")
    assert cfg.JupyterHub.concurrent_spawn_limit == 4
    assert cfg.JupyterHub.active_server_limit == 30
    # JupyterHub reads the retry range from its tornado settings only (the trait is not configurable),
    # beside the HSTS header set there before.
    assert cfg.JupyterHub.tornado_settings["spawn_throttle_retry_range"] == spawn_limits.RETRY_RANGE
    assert "Strict-Transport-Security" in cfg.JupyterHub.tornado_settings["headers"]
    from jupyterhub.app import JupyterHub

    assert not JupyterHub.class_traits()["spawn_throttle_retry_range"].metadata.get("config")
    assert cfg.JupyterHub.template_paths == [health.TEMPLATES]
    assert (Path(health.TEMPLATES) / "429.html").is_file()


def test_the_429_page_says_the_server_starts_in_turn_and_retries_by_itself():
    share = Path(__import__("jupyterhub").__file__).resolve().parents[4] / "share/jupyterhub/templates"
    if not share.is_dir():  # jupyterhub installed elsewhere: its data files sit beside its prefix
        import sys

        share = Path(sys.prefix) / "share/jupyterhub/templates"
    env = jinja2.Environment(loader=jinja2.FileSystemLoader([health.TEMPLATES, str(share)]))
    tpl = env.get_template("429.html")
    ns = {"static_url": lambda *a, **k: "/s", "base_url": "/hub/", "prefix": "/", "user": None,
          "xsrf_token": "", "parsed_scopes": set(), "services": [], "announcement": "", "no_spawner_check": True}
    throttled = web.HTTPError(429, "Too many users trying to log in right now. Try again in 10 seconds.")
    throttled.headers = {"Retry-After": 12}
    html = tpl.render(status_code=429, status_message="Too Many Requests", message=throttled.log_message,
                      message_html="", extra_error_html="", exception=throttled, **ns)
    assert "Your server starts in a moment" in html and "tries again by itself in" in html
    assert 'var left = 12;' in html and "window.location.replace" in html
    full = web.HTTPError(429, "Active user limit exceeded. Try again in a few minutes.")
    html = tpl.render(status_code=429, status_message="Too Many Requests", message=full.log_message,
                      message_html="", extra_error_html="", exception=full, **ns)
    assert "The hub is full right now" in html and "window.location.replace" not in html


# -- the spawner's pacing -------------------------------------------------------------------------

def test_looks_are_paced_by_the_number_of_servers_starting():
    s = HubopsSpawner.__new__(HubopsSpawner)
    s._trait_values = {}
    s._trait_notifiers = {}
    s._trait_validators = {}
    s._cross_validation_lock = False
    HubopsSpawner.max_poll_interval.instance_init(s)
    old = HubopsSpawner._starting
    try:
        HubopsSpawner._starting = 1
        assert s.paced(0.1) == pytest.approx(0.1)   # one spawn: watched as closely as before
        HubopsSpawner._starting = 4
        assert s.paced(0.1) == pytest.approx(0.4)
        HubopsSpawner._starting = 50
        assert s.paced(0.1) == pytest.approx(1.0)   # never longer than max_poll_interval
        assert s.paced(2.0) == pytest.approx(2.0)   # never shorter than asked
    finally:
        HubopsSpawner._starting = old


def test_docker_calls_share_a_pool_of_several_threads():
    s = HubopsSpawner.__new__(HubopsSpawner)
    s._trait_values = {"docker_threads": 4}
    assert s.executor._max_workers == 4 and s.executor is HubopsSpawner._hubops_executor


# -- the healthcheck ------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Hub(http.server.BaseHTTPRequestHandler):
    delay = 0.0
    status = 200

    def do_GET(self):
        time.sleep(type(self).delay)
        self.send_response(type(self).status if self.path == "/hub/health" else 404)
        self.end_headers()

    def log_message(self, *a):
        pass


@pytest.fixture
def hub():
    handler = type("Hub", (_Hub,), {})
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    proxy = socket.socket()
    proxy.bind(("127.0.0.1", 0))
    proxy.listen(64)
    yield handler, srv.server_address[1], proxy.getsockname()[1]
    srv.shutdown()
    proxy.close()


def test_a_hub_that_answers_is_healthy(hub, tmp_path):
    handler, hub_port, proxy_port = hub
    beat = tmp_path / "beat"
    beat.touch()
    ok, why = health.check(hub_port=hub_port, proxy_port=proxy_port, heartbeat=beat)
    assert ok and why.startswith("/hub/health answered in"), why


def test_a_busy_hub_whose_loop_still_runs_is_healthy(hub, tmp_path):
    handler, hub_port, proxy_port = hub
    handler.delay = 1.5
    beat = tmp_path / "beat"
    beat.touch()
    ok, why = health.check(hub_port=hub_port, proxy_port=proxy_port, heartbeat=beat, http_timeout=0.5)
    assert ok and why.startswith("busy: /hub/health did not answer within"), why


def test_a_slow_hub_without_heartbeat_or_with_a_stale_one_is_not(hub, tmp_path):
    handler, hub_port, proxy_port = hub
    handler.delay = 1.5
    ok, why = health.check(hub_port=hub_port, proxy_port=proxy_port, heartbeat=tmp_path / "none", http_timeout=0.5)
    assert not ok and "no heartbeat" in why, why
    beat = tmp_path / "beat"
    beat.touch()
    os.utime(beat, (time.time() - 120, time.time() - 120))
    handler.delay = 0
    ok, why = health.check(hub_port=hub_port, proxy_port=proxy_port, heartbeat=beat, stale_after=60)
    assert not ok and "event loop has not run for 120 s" in why, why


def test_nothing_listening_or_an_error_answer_is_unhealthy_at_once(hub, tmp_path):
    handler, hub_port, proxy_port = hub
    beat = tmp_path / "beat"
    beat.touch()
    ok, why = health.check(hub_port=hub_port, proxy_port=free_port(), heartbeat=beat)
    assert not ok and why.startswith("nothing listens on the proxy's port"), why
    ok, why = health.check(hub_port=free_port(), proxy_port=proxy_port, heartbeat=beat)
    assert not ok and why.startswith("nothing listens on the hub's port"), why
    handler.status = 503
    ok, why = health.check(hub_port=hub_port, proxy_port=proxy_port, heartbeat=beat)
    assert not ok and why == "/hub/health answered HTTP 503", why


def test_the_heartbeat_is_touched_by_the_running_loop_and_not_without_one(tmp_path):
    beat = tmp_path / "beat"
    assert health.start_heartbeat(beat, every=0.05) is False and not beat.exists()

    async def run():
        assert health.start_heartbeat(beat, every=0.05) is True
        first = beat.stat().st_mtime_ns
        await asyncio.sleep(0.3)
        return first, beat.stat().st_mtime_ns

    first, later = asyncio.run(run())
    assert later > first


def test_the_service_runs_that_check_with_room_for_a_busy_node(tmp_path):
    p = params(tmp_path)
    spec = deploy.service_spec(p, hub_image="hubops-hub:x", secret_refs=[], config_refs=[])
    hc = spec["task_template"]["ContainerSpec"]["Healthcheck"]
    assert hc["Test"][:3] == ["CMD", "python3", "-c"] and "hubops.inhub.health import main" in hc["Test"][3]
    compile(hc["Test"][3], "healthcheck", "exec")
    assert hc["Timeout"] >= 30 * deploy.NS and hc["Retries"] >= 3
    # Swarm replaces the task only when the check fails (or the container exits); updates roll back.
    assert spec["task_template"]["RestartPolicy"]["Condition"] == "any"
    assert spec["update_config"]["FailureAction"] == "rollback"
