"""The hub's Tornado logs no credential from a refused request's URL (hubops/inhub/logscrub.py).

Seen on a lab (tests/e2e/test_lab_oidc_login.py): a login refused at the OAuth callback left
`403 GET /hub/oauth_callback?code=...&state=...` in the hub's log, the provider's authorization code
in clear. Here a real Tornado server refuses such requests as JupyterHub does (web.HTTPError with a
message), with and without the filter the generated jupyterhub_config.py installs."""
from __future__ import annotations

import logging

import pytest
import tornado.httpclient
import tornado.httpserver
import tornado.ioloop
import tornado.web
from tornado.testing import bind_unused_port

from hubops.inhub import logscrub
from tests.helpers import hub_config, make_params

SECRETS = {"code": "c0de-Vy7Qw9", "state": "st4te-Zk2", "token": "t0ken-Pq8"}


class Refuse(tornado.web.RequestHandler):
    def get(self):
        raise tornado.web.HTTPError(403, "user not allowed")


class Crash(tornado.web.RequestHandler):
    def get(self):
        raise RuntimeError("boom")


def serve_and_ask(paths: list[str]) -> str:
    """Ask a real Tornado server for `paths`; every line Tornado logged meanwhile."""
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            lines.append(self.format(record))

    keep = Keep()
    tornado_log = logging.getLogger("tornado")
    tornado_log.addHandler(keep)
    old_level = tornado_log.level
    tornado_log.setLevel(logging.INFO)
    sock, port = bind_unused_port()
    app = tornado.web.Application([(r"/hub/oauth_callback", Refuse), (r"/hub/api/users", Refuse), (r"/crash", Crash)])
    server = tornado.httpserver.HTTPServer(app)
    server.add_sockets([sock])

    async def ask():
        client = tornado.httpclient.AsyncHTTPClient()
        for path in paths:
            await client.fetch(f"http://127.0.0.1:{port}{path}", raise_error=False)

    try:
        tornado.ioloop.IOLoop.current().run_sync(ask, timeout=30)
    finally:
        server.stop()
        tornado_log.removeHandler(keep)
        tornado_log.setLevel(old_level)
    return "\n".join(lines)


PATHS = [f"/hub/oauth_callback?code={SECRETS['code']}&state={SECRETS['state']}&iss=https%3A%2F%2Fidp",
         f"/hub/api/users?token={SECRETS['token']}", f"/crash?next=/hub/home&api_key={SECRETS['token']}"]


@pytest.fixture
def bare():
    """Tornado's loggers without the filter (other tests that execute a generated config install it in this
    process), as they were afterwards."""
    kept = {n: list(logging.getLogger(n).filters) for n in logscrub.LOGGERS}
    for name in logscrub.LOGGERS:
        lg = logging.getLogger(name)
        lg.filters[:] = [f for f in lg.filters if not isinstance(f, logscrub.ScrubQuery)]
    yield
    for name, filters in kept.items():
        logging.getLogger(name).filters[:] = filters


@pytest.fixture
def installed(bare):
    logscrub.install()
    logscrub.install()  # twice: one filter
    yield


def test_tornado_alone_logs_the_code_state_and_token(bare):
    """What the filter is for: without it, Tornado writes them (the test can fail)."""
    log = serve_and_ask(PATHS)
    assert all(v in log for v in SECRETS.values()), log


def test_with_the_filter_the_values_are_scrubbed_and_the_rest_kept(installed):
    assert [len([f for f in logging.getLogger(n).filters if isinstance(f, logscrub.ScrubQuery)]) for n in logscrub.LOGGERS] == [1, 1, 1]
    log = serve_and_ask(PATHS)
    assert not [v for v in SECRETS.values() if v in log], log
    assert "403 GET /hub/oauth_callback?code=[secret]&state=[secret]&iss=https%3A%2F%2Fidp" in log, log
    assert "user not allowed" in log and "/hub/api/users?token=[secret]" in log
    assert "Uncaught exception GET /crash?next=/hub/home&api_key=[secret]" in log, log


def test_scrub_leaves_urls_without_credentials_alone():
    assert logscrub.scrub("302 GET /hub/oauth_login?next=%2Fhub%2Fspawn (10.0.0.2) 3.1ms") == \
        "302 GET /hub/oauth_login?next=%2Fhub%2Fspawn (10.0.0.2) 3.1ms"
    assert logscrub.scrub("GET /user/alice/api/status?_xsrf=abc&x=1") == "GET /user/alice/api/status?_xsrf=[secret]&x=1"


def test_the_generated_config_installs_it(tmp_path, bare):
    from hubops.core.params import load_params

    hub_config(load_params(make_params(tmp_path, "scrub", port=18000, subnet="10.176.9.0/24")))
    assert any(isinstance(f, logscrub.ScrubQuery) for f in logging.getLogger("tornado.general").filters)
