"""What the login suites share (test_oidc_login, test_ldap_login, test_native_login): a deployment on
this machine's engine with the mode's `auth:` block, deployed once per module and torn down at the
end (nothing of it left), the browser steps every mode has (the hub's own login form, opening a
server, starting one), and the secret scan of the records, the hub's log and the hub's image. And
what the lab login suites share (test_lab_oidc_login, test_lab_acme_github): a lab of one manager
and one worker, up for the module and down at the end, and a deployment on it.

Not collected by pytest (no test_ prefix). Names, ports and subnets come from tests/helpers
(run_name, free_port, free_subnet): two runs on one engine never meet.
"""
from __future__ import annotations

import json
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import docker
import yaml

from hubops.core.engine import Clients
from hubops.core.params import load_params
from hubops.hub.running import HubAPI
from hubops.lab import cluster as lab
from hubops.ops import teardown
from tests import browser as chrome, helpers
from tests.helpers import hubops_cli


def labelled(deployment: str) -> list[str]:
    """The deployment's services, secrets and configs still on the engine."""
    client = docker.from_env()
    colls = {"service": client.services, "secret": client.secrets, "config": client.configs}
    return sorted(f"{k} {o.name}" for k, coll in colls.items()
                  for o in coll.list(filters={"label": f"hubops.deployment={deployment}"}))


def write_params(tmp: Path, deployment: str, *, port: int, subnet: str, users: str, auth: str) -> Path:
    """The parameter file `tmp/DEPLOYMENT.yaml` of a one-node deployment on this machine's engine whose
    `auth:` block is `auth` (YAML as it goes under `auth:`, any indentation), and its userlist
    (tests/helpers.make_params)."""
    return helpers.make_params(tmp, deployment, port=port, subnet=subnet, users=users, auth=auth)


@contextmanager
def deployed(tmp: Path, deployment: str, *, port: int, subnet: str, users: str, auth: str,
             figures: dict, **extra) -> Iterator[dict]:
    """`hubops deploy` of a one-node deployment whose `auth:` block is `auth` (YAML, indented under
    `auth:`; the userlist is the file `userlist` beside the parameters, holding `users`). Yields
    {params, tmp, outputs, p, cold (the CLI's result), **extra}; tears down (users' data too) and
    asserts nothing labelled with the deployment is left."""
    params = write_params(tmp, deployment, port=port, subnet=subnet, users=users, auth=auth)
    outputs = tmp / "outputs"
    p = load_params(params)
    try:
        t0 = time.monotonic()
        cold = hubops_cli("deploy", "-p", str(params), outputs=outputs)
        figures["cold_deploy_s"] = round(time.monotonic() - t0, 1)
        yield {"params": params, "tmp": tmp, "outputs": outputs, "p": p, "cold": cold, **extra}
    finally:
        print(f"\nfigures: {json.dumps(figures)}")
        try:
            teardown.teardown(p, Clients(p), remove_volumes=True, remove_user_data=True)
        except Exception as e:  # a loaded machine: the hub's API may time out once; teardown again
            print(f"teardown failed once ({e.__class__.__name__}: {str(e)[:200]}); again")
            teardown.teardown(p, Clients(p), remove_volumes=True, remove_user_data=True)
        left = labelled(deployment)
        assert not left, f"teardown left {left}"


def redeploy_auth(d: dict, users: str):
    """The userlist becomes `users`; `hubops deploy --only 50-auth --only 80-deploy`; the CLI's result."""
    (d["tmp"] / "userlist").write_text(users)
    return hubops_cli("deploy", "-p", str(d["params"]), "--only", "50-auth", "--only", "80-deploy", outputs=d["outputs"])


# -- on a lab -------------------------------------------------------------------------------------
@contextmanager
def lab_running(tmp: Path, name: str, *, subnet: str, overlay: str, figures: dict) -> Iterator[dict]:
    """The lab `name` (hubops.lab.cluster) of one manager and one worker, on the lab subnet `subnet`
    with the overlay `overlay`, its parameter file `tmp/lab.yaml`; yields {info, tmp}. At the end, also
    on failure: lab down, `figures` (lab_up_s, lab_down_s and the suite's own) printed, and nothing of
    the lab left (asserted)."""
    t0 = time.monotonic()
    try:
        info = lab.lab_up(name=name, managers=1, workers=1, subnet=subnet, overlay_subnet=overlay,
                          params_out=tmp / "lab.yaml")
        figures["lab_up_s"] = round(time.monotonic() - t0, 1)
        yield {"info": info, "tmp": tmp}
    finally:
        t0 = time.monotonic()
        lab.lab_down(name=name)
        figures["lab_down_s"] = round(time.monotonic() - t0, 1)
        print(f"\nfigures: {json.dumps(figures)}")
        assert not lab.lab_status(name=name).exists, "lab down left the lab"


def deploy_on_lab(lab_info: dict, deployment: str, *, users: str, hub: dict, auth: dict, secret_files: dict[str, str],
                  figures: dict, **settings) -> dict:
    """`hubops deploy` on the lab of `lab_info` (lab_running): its parameter file (hosts, engine TLS,
    overlay) with `deployment`, an operator folder beside it, `hub`, the other top-level `settings`
    (tls, ...) and `auth`, whose userlist `userlist` holds `users`; `secret_files` (name: value) are
    written beside it, readable by their owner alone, for the {file:} references. figures:
    cold_deploy_s. Returns {params, tmp, outputs, p, cold, lab}; the deployment goes with the lab."""
    tmp = lab_info["tmp"]
    (tmp / "userlist").write_text(users)
    for name, value in secret_files.items():
        secret = tmp / name
        secret.write_text(value + "\n")
        secret.chmod(0o600)
    data = yaml.safe_load((tmp / "lab.yaml").read_text())
    data.update({"deployment": deployment, "operator_dir": str(tmp / "operator"), "hub": hub, **settings, "auth": auth})
    data["images"]["dir"] = str(helpers.PROJECT / "images")
    params = tmp / f"{deployment}.yaml"
    params.write_text(yaml.safe_dump(data, sort_keys=False))
    outputs = tmp / "outputs"
    t0 = time.monotonic()
    cold = hubops_cli("deploy", "-p", str(params), outputs=outputs)
    figures["cold_deploy_s"] = round(time.monotonic() - t0, 1)
    print(f"\nlab deploy (cold): {figures['cold_deploy_s']} s\n{cold.stderr[-3000:]}")
    return {"params": params, "tmp": tmp, "outputs": outputs, "p": load_params(params), "cold": cold,
            "lab": lab_info["info"]}


# -- the browser ----------------------------------------------------------------------------------
def page_for(browser):
    """A page in a fresh context: the hub's CA is hubops's own, not in Chromium's store."""
    return browser.new_context(ignore_https_errors=True).new_page()


def form_log_in(d: dict, browser, user: str, password: str, *, next_path: str = "/hub/home"):
    """`user` logs in with the hub's login form (LDAP, native) in a fresh browser; (page, status of
    the POST /hub/login: 302 when let in)."""
    return chrome.again(_form_log_in, d, browser, user, password, next_path=next_path)


def _form_log_in(d: dict, browser, user: str, password: str, *, next_path: str):
    hub = d["p"].hub_url
    page = page_for(browser)
    chrome.goto(page, f"{hub}/hub/login?next={next_path}")
    page.fill("#username_input", user)
    page.fill("#password_input", password)
    with page.expect_response(lambda r: r.url.startswith(f"{hub}/hub/login") and r.request.method == "POST") as posted:
        page.click("#login_submit")
    page.wait_for_load_state()
    if posted.value.status >= 500:
        print(chrome.hub_log_tail(d["p"].hub_service))
    return page, posted.value.status


def open_server_of(page, d: dict, owner: str) -> int:
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


def wait_for_own_server(page, d: dict, user: str, *, timeout_s: float = 180) -> None:
    """The browser, sent to /hub/spawn after login, lands in `user`'s own server (JupyterHub's
    spawn-pending page follows the spawn's progress, then redirects). On a timeout, where the browser
    is, what it shows, what the hub says of the server and the hub's log end up in the report."""
    try:
        page.wait_for_url(f"{d['p'].hub_url}/user/{user}/**", timeout=timeout_s * 1000)
    except Exception:
        print(f"browser at {page.url}; page text: {page.inner_text('body')[:800]!r}")
        print(f"the hub says: {json.dumps((HubAPI(d['p']).user(user) or {}).get('servers'))[:800]}")
        print(chrome.hub_log_tail(d["p"].hub_service))
        raise


def ensure_server(d: dict, user: str, log_in: Callable) -> None:
    """`user`'s server runs: when it does not, they log in (`log_in(user, next_path=...)` -> (page,
    status)) and are sent to /hub/spawn."""
    api = HubAPI(d["p"])
    u = api.user(user)
    if u and ((u.get("servers") or {}).get("") or {}).get("ready"):
        return
    page, status = log_in(user, next_path="/hub/spawn")
    assert status == 302, status
    api.wait_server(user, ready=True, timeout=180)
    page.context.close()


# -- secrets --------------------------------------------------------------------------------------
def secret_hits(d: dict, more: dict[str, str]) -> list[str]:
    """Where any of the deployment's secrets (tests/helpers.deployment_secrets) or `more` (the mode's
    own: a client secret, a bind password, users' passwords) shows in the run's records, the hub's
    log, or the hub image's history and configuration."""
    p = d["p"]
    client = docker.from_env()
    values = {**helpers.deployment_secrets(p, client), **more}
    log = subprocess.run(["docker", "service", "logs", "--raw", p.hub_service], capture_output=True,
                         text=True, timeout=60)
    image = client.services.get(p.hub_service).attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"].split("@")[0]
    history = subprocess.run(["docker", "history", "--no-trunc", image], capture_output=True, text=True, timeout=60)
    inspect = subprocess.run(["docker", "image", "inspect", image], capture_output=True, text=True, timeout=60)
    return helpers.secret_hits(values, [d["outputs"]], {
        "hub log": log.stdout + log.stderr, f"image {image} history": history.stdout, f"image {image}": inspect.stdout})
