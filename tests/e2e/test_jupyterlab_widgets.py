"""The runbooks stepped through in a real JupyterLab, driven by real Chromium (playwright).

One JupyterLab (on a free port) serves copies of two runbooks, and the tests in this file run in order:

1. `90-verify`, with only its parameter file pointed at a deployment of the test's own (`nbv-RUN`,
   deployed for the test and removed after; the operator's `local` and ~/.hubops are never touched):
   "Run All" from the Run menu; the spawn's progress bar renders and ends "done", the final status
   table renders (the record cell below it says it in one line), every cell ran, no traceback;
2. `ops/teardown` on a scratch deployment `nb1-RUN` (swarm labels, its network, its auth configs and
   secrets), answered "No, plan only": every cell runs, the record is a plan, nothing is removed;
3. the same, answered "Remove": "Run All" stops at the confirmation widget; nothing is removed while
   it waits and the cells after it have not run; one click, and everything labelled `nb1-RUN` is gone.

Screenshots go to `outputs/screenshots/` (or `$HUBOPS_SCREENSHOTS`); each path is printed.
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import docker
import nbformat
import pytest
import requests

from tests.helpers import (PROJECT, ensure_swarm, free_port, free_subnet, hubops_cli, make_params, run_name,
                           screenshot_path)

pytestmark = [pytest.mark.engine, pytest.mark.e2e]
PORT = free_port()  # JupyterLab's
SCRATCH = run_name("nb1")
VERIFIED = run_name("nbv")  # the deployment 90-verify runs against
CHROMIUM = Path("/usr/bin/chromium")
LAB_SETTINGS = {  # no network calls, no autosave of executed copies, no pop-ups over the notebook
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
    "@jupyterlab/extensionmanager-extension/plugin.jupyterlab-settings": {"enabled": False},
}


def labelled(client: docker.DockerClient, deployment: str) -> list[str]:
    sel = {"label": f"hubops.deployment={deployment}"}
    return [f"{kind} {o.name}" for kind, coll in (("service", client.services), ("secret", client.secrets),
                                                  ("config", client.configs), ("network", client.networks))
            for o in coll.list(filters=sel)]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab serving a folder with the runbook copies; yields its base URL with the token."""
    tmp = tmp_path_factory.mktemp("lab")
    root = tmp / "root"
    (root / "ops").mkdir(parents=True)
    for name, value in LAB_SETTINGS.items():
        f = tmp / "settings" / name
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(value))
    token = secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if k not in ("HUBOPS_HEADLESS", "HUBOPS_WIDGETS")}
    env.update(JUPYTER_CONFIG_DIR=str(tmp / "config"), JUPYTER_RUNTIME_DIR=str(tmp / "runtime"),
               JUPYTER_DATA_DIR=str(tmp / "data"))
    log = (tmp / "lab.log").open("w")
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={PORT}", "--ip=127.0.0.1",
         "--ServerApp.port_retries=0", "--allow-root", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
         f"--LabApp.user_settings_dir={tmp / 'settings'}", f"--LabApp.workspaces_dir={tmp / 'workspaces'}"],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{PORT}"
        while True:
            if proc.poll() is not None:
                pytest.fail(f"JupyterLab exited ({proc.returncode}); see {tmp / 'lab.log'}:\n"
                            + (tmp / "lab.log").read_text()[-3000:], pytrace=False)
            try:
                if requests.get(f"{url}/api/status?token={token}", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() - t0 > 90:
                pytest.fail(f"JupyterLab did not answer on port {PORT} within 90 s; see {tmp / 'lab.log'}")
            time.sleep(0.3)
        print(f"\nJupyterLab answered after {time.monotonic() - t0:.1f} s (log: {tmp / 'lab.log'})")
        yield {"url": url, "token": token, "root": root, "tmp": tmp}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the server and the kernels it started
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install -y chromium`", pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                               args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """Deployment nb1 with a few objects to remove: node labels, network, auth configs and secrets."""
    client = docker.from_env()
    tmp = tmp_path_factory.mktemp("nb1")
    ensure_swarm()
    params = make_params(tmp, SCRATCH, port=free_port(), subnet=free_subnet())
    t0 = time.monotonic()
    made = hubops_cli("deploy", "-p", str(params), "--only", "20-swarm", "--only", "30-network", "--only", "50-auth",
                      outputs=tmp / "outputs")
    print(f"\nscratch deployment {SCRATCH} (swarm labels, network, auth): {time.monotonic() - t0:.1f} s")
    assert made.returncode == 0, made.stderr[-3000:]
    try:
        yield {"params": params, "client": client}
    finally:
        if labelled(client, SCRATCH):  # the test failed before the click: remove it headless
            hubops_cli("ops", "teardown", "-p", str(params), "--set", "confirm=true", outputs=tmp / "outputs")
        assert labelled(client, SCRATCH) == []


@pytest.fixture
def on_failure(request):
    """Pages to photograph if the test fails (the picture and the notebook's text say why)."""
    pages: list = []
    failed_before = request.session.testsfailed
    yield pages
    if request.session.testsfailed > failed_before:
        for page in pages:
            if not page.is_closed():
                shot = screenshot_path(f"{request.node.name}-failed.png")
                page.screenshot(path=str(shot), full_page=True)
                print(f"\nscreenshot of the failure: {shot}\n" + page.locator("body").inner_text()[-3000:])


@pytest.fixture(scope="module")
def verified_hub(tmp_path_factory):
    """A deployment of the test's own for 90-verify to talk to (like parameters/local.yaml, with its own
    name, port, subnet and operator folder), deployed here and torn down after."""
    ensure_swarm()
    tmp = tmp_path_factory.mktemp("nbv")
    params = make_params(tmp, VERIFIED, port=free_port(), subnet=free_subnet())
    outputs = tmp / "outputs"
    t0 = time.monotonic()
    made = hubops_cli("deploy", "-p", str(params), outputs=outputs)
    print(f"\ndeployed {VERIFIED} for the test in {time.monotonic() - t0:.1f} s")
    try:
        assert made.returncode == 0, made.stderr[-3000:]
        yield params
    finally:
        down = hubops_cli("ops", "teardown", "-p", str(params), "--set", "confirm=true",
                          "--set", "remove_volumes=true", outputs=outputs)
        assert down.returncode == 0, down.stderr[-3000:]
        assert labelled(docker.from_env(), VERIFIED) == []


def open_notebook(browser, lab, path: str):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
    # A workspace of its own per notebook: only this notebook's panel is open in the page.
    workspace = Path(path).stem
    page.goto(f"{lab['url']}/lab/workspaces/{workspace}/tree/{path}?token={lab['token']}", wait_until="load")
    page.locator(".jp-NotebookPanel .jp-Cell").first.wait_for(timeout=60_000)
    # Opened before the kernel specs arrived, JupyterLab asks which kernel: its default (the
    # notebook's python3) is the one a user accepts.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        dialog = page.locator(".jp-Dialog .jp-mod-accept")
        if dialog.count():
            dialog.first.click()
        kernel = page.locator(".jp-NotebookPanel-toolbar .jp-KernelName").inner_text().strip()
        if kernel.startswith("Python 3") and page.locator(
                ".jp-NotebookPanel-toolbar [data-status='idle']").count():
            return page, errors
        time.sleep(0.3)
    raise AssertionError("the notebook's kernel did not start within 60 s")


def run_all(page) -> None:
    """Run > Run All Cells, from the menu bar as a user does (again if the click fell on a menu
    that was still being built: then no cell starts)."""
    for _ in range(3):
        page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        item = page.locator(".lm-Menu-itemLabel").get_by_text("Run All Cells", exact=True)
        item.wait_for(timeout=10_000)
        item.click()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if any(p != "[ ]:" for p in prompts(page)):
                return
            time.sleep(0.2)
    raise AssertionError(f"Run > Run All Cells started no cell: prompts {prompts(page)}")


def prompts(page) -> list[str]:
    return [t.strip() for t in page.locator(".jp-CodeCell .jp-InputArea-prompt").all_inner_texts()]


def wait_all_ran(page, timeout_s: float) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = prompts(page)
        if got and all(p.startswith("[") and p[1:-2].isdigit() for p in got):
            return got
        errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']",
                              has_text="Traceback")
        if errors.count():
            raise AssertionError(f"a cell failed: prompts {got}\n{errors.first.inner_text()[-3000:]}")
        time.sleep(0.5)
    raise AssertionError(f"not every cell ran within {timeout_s} s: prompts {prompts(page)}")


def test_verify_runbook_runs_top_to_bottom_with_widgets(lab, browser, verified_hub, on_failure):
    from playwright.sync_api import expect

    page, errors = open_notebook(browser, lab, runbook_copy(lab, "90-verify.ipynb", "90-verify.ipynb", verified_hub))
    on_failure.append(page)
    t0 = time.monotonic()
    run_all(page)
    # The spawn's progress bar appears while the server starts, then says done.
    bar = page.locator(".hubops-progress").first
    bar.wait_for(timeout=60_000)
    print(f"progress widget shown {time.monotonic() - t0:.1f} s after Run All")
    got = wait_all_ran(page, 120)
    print(f"90-verify ran top to bottom in JupyterLab in {time.monotonic() - t0:.1f} s; prompts {got}")
    expect(bar).to_contain_text("spawn a server for")
    expect(bar).to_contain_text("done in")
    expect(bar.locator(".progress-bar-success, .widget-progress .progress-bar-success")).to_have_count(1)
    # The result's table is in the cell that makes it; the record cell below says it in one line.
    table = page.locator("table.hubops-result").last
    expect(table).to_be_visible()
    expect(page.locator(".jp-Cell").last).to_contain_text("90-verify recorded:")
    expect(table).to_contain_text("server stopped, service removed, user deleted")
    text = page.locator(".jp-NotebookPanel").inner_text()
    assert "Traceback" not in text, text[-3000:]
    bar.scroll_into_view_if_needed()
    shot = screenshot_path("jupyterlab-90-verify.png")
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")
    page.locator(".jp-Cell").last.scroll_into_view_if_needed()
    shot = screenshot_path("jupyterlab-90-verify-status.png")
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")
    assert errors == [], errors
    page.close()


def runbook_copy(lab, runbook: str, name: str, params_file: Path) -> str:
    """runbooks/RUNBOOK with only its parameter file pointed at `params_file`, as NAME in the lab's folder."""
    nb = nbformat.read(PROJECT / "runbooks" / runbook, as_version=4)
    params = nb.cells[1]
    assert "parameters" in params.metadata.tags
    params.source = params.source.replace('"parameters/local.yaml"', json.dumps(str(params_file)), 1)
    assert str(params_file) in params.source
    nbformat.write(nb, lab["root"] / name)
    return name


def teardown_copy(lab, scratch, name: str) -> str:
    """runbooks/ops/teardown.ipynb with only its parameter file pointed at the scratch deployment."""
    return runbook_copy(lab, "ops/teardown.ipynb", f"ops/{name}", scratch["params"])


def test_teardown_declined_changes_nothing(lab, browser, scratch, on_failure):
    from playwright.sync_api import expect

    client = scratch["client"]
    before = labelled(client, SCRATCH)
    page, errors = open_notebook(browser, lab, teardown_copy(lab, scratch, "teardown-declined.ipynb"))
    on_failure.append(page)
    run_all(page)
    ask = page.locator(".hubops-confirm")
    ask.wait_for(timeout=60_000)
    ask.get_by_role("button", name="No, plan only").click()
    got = wait_all_ran(page, 120)
    print(f"\ndeclined: every cell ran, prompts {got}")
    expect(ask).to_contain_text("declined at")
    expect(page.locator("table.hubops-result").last).to_contain_text("would remove")
    expect(page.locator(".jp-Cell").last).to_contain_text("teardown recorded:")
    assert labelled(client, SCRATCH) == before, "declining removed something"
    assert errors == [], errors
    page.close()


def test_teardown_waits_for_the_confirmation_widget(lab, browser, scratch, on_failure):
    from playwright.sync_api import expect

    client = scratch["client"]
    before = labelled(client, SCRATCH)
    assert any(o.startswith("network ") for o in before) and any(o.startswith("secret ") for o in before), before
    page, errors = open_notebook(browser, lab, teardown_copy(lab, scratch, "teardown.ipynb"))
    on_failure.append(page)
    t0 = time.monotonic()
    run_all(page)
    ask = page.locator(".hubops-confirm")
    ask.wait_for(timeout=60_000)
    expect(ask).to_contain_text(f"Remove everything labelled for deployment {SCRATCH}?")
    expect(ask).to_contain_text("waiting for your answer")
    print(f"confirmation widget shown {time.monotonic() - t0:.1f} s after Run All")
    time.sleep(3)  # give a wrongly unblocked run the time to remove something
    assert labelled(client, SCRATCH) == before, "something was removed before the click"
    waiting = prompts(page)
    assert waiting[-3:] == ["[*]:", "[*]:", "[*]:"], f"the confirm cell and the cells after it must wait: {waiting}"
    ask.scroll_into_view_if_needed()
    shot = screenshot_path("jupyterlab-teardown-confirm.png")
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")

    t1 = time.monotonic()
    ask.get_by_role("button", name="Remove").click()
    got = wait_all_ran(page, 120)
    print(f"teardown finished {time.monotonic() - t1:.1f} s after the click; prompts {got}")
    expect(ask).to_contain_text("confirmed at")
    record = page.locator("table.hubops-result").last  # the removal's result, above the record cell
    expect(record).to_contain_text("remove")
    expect(page.locator(".jp-Cell").last).to_contain_text("teardown recorded: ")
    assert labelled(client, SCRATCH) == [], "teardown left objects after the click"
    text = page.locator(".jp-NotebookPanel").inner_text()
    assert "Traceback" not in text, text[-3000:]
    record.scroll_into_view_if_needed()
    shot = screenshot_path("jupyterlab-teardown-done.png")
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")
    assert errors == [], errors
    page.close()
