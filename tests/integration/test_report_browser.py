"""The run report in a real headless browser (Debian's chromium, driven by playwright; no engine).

A run made by the runner on tiny notebooks (one stage ok, one failed, one never reached) is
served over http on 127.0.0.1; the summary and one stage page must load with no console error
and no request leaving the local server, and show every stage's status.
"""
from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path
from urllib.parse import urlparse

import nbformat
import pytest

from hubops.audit import runner
from tests.helpers import screenshot_path

PROJECT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
RECORD = 'import hubops\nhubops.record("{name}", hubops.Result("x").change("create", "thing {name}"))'


def notebook(path: Path, *cells: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    intro = nbformat.v4.new_markdown_cell(f"# {path.stem}\nA test stage: creates *thing {path.stem}*.")
    params = nbformat.v4.new_code_cell('params_file = ""  # the file\ndry_run = False  # plan')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [intro, params] + [nbformat.v4.new_code_cell(c) for c in cells]
    nbformat.write(nb, path)
    return path


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "OUTPUTS", tmp_path / "outputs")
    stages = [
        notebook(tmp_path / "00-first.ipynb", "from IPython.display import HTML\nHTML('<i>hello from 00</i>')",
                 RECORD.format(name="00-first")),
        notebook(tmp_path / "10-broken.ipynb", "raise RuntimeError('the host is unreachable')"),
        notebook(tmp_path / "20-later.ipynb", RECORD.format(name="20-later")),
    ]
    monkeypatch.setattr(runner, "deploy_stages", lambda: stages)
    run = runner.run_chain(PROJECT / "parameters/local.yaml")
    assert [s["status"] for s in run.manifest["stages"]] == ["ok", "failed", "pending"]
    return run.dir


@pytest.fixture
def served(run_dir):
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # keep pytest's output for failures
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(run_dir)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def browser():
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: this test needs Debian's chromium "
                    "(`apt-get install -y chromium`)", pytrace=False)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: `pip install -e '.[test]'`", pytrace=False)
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                               args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            yield b
        finally:
            b.close()


def test_report_and_a_stage_page_render_in_a_browser(served, browser):
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    outside: list[str] = []
    page.on("console", lambda msg: errors.append(f"console {msg.type}: {msg.text}") if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
    page.on("requestfailed", lambda req: errors.append(f"request failed: {req.url} {req.failure}"))
    page.on("request", lambda req: outside.append(req.url)
            if urlparse(req.url).hostname not in ("127.0.0.1", None) and not req.url.startswith("data:") else None)

    page.goto(f"{served}/index.html", wait_until="load")
    expect(page.locator("h1")).to_contain_text("hubops deploy")
    for name, status in (("00-first", "ok"), ("10-broken", "failed"), ("20-later", "pending")):
        cell = page.locator(f"tr[data-stage='{name}'] .status")
        expect(cell).to_be_visible()
        expect(cell).to_have_text(f"{'✔' if status == 'ok' else '✘' if status == 'failed' else '…'} {status}")
    expect(page.locator("tr[data-stage='10-broken']")).to_contain_text("the host is unreachable")
    expect(page.locator("table.changes")).to_contain_text("thing 00-first")
    expect(page.locator("#verdict")).to_contain_text("intact")
    shot = screenshot_path("report.png")
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 0
    print(f"\nscreenshot of the report: {shot}")

    page.locator("tr[data-stage='00-first'] a").first.click()
    page.wait_for_load_state("load")
    assert page.url.endswith("/00-first.html")
    expect(page.locator("i", has_text="hello from 00")).to_be_visible()
    expect(page.get_by_role("link", name="the run's summary")).to_be_visible()
    expect(page.locator("body")).to_contain_text("thing 00-first")
    # The run's own parameters, above the runbook's defaults: the line under the link, the injected cell.
    line = page.locator(".hubops-run-params")
    expect(line).to_be_visible()
    expect(line).to_contain_text(f"deployment local with parameters {PROJECT / 'parameters/local.yaml'}")
    expect(page.locator("body")).to_contain_text("RUNBOOK DEFAULTS, NOT THIS RUN'S VALUES")
    assert "injected-parameters" in page.content()
    stage_shot = screenshot_path("report-stage.png")
    page.screenshot(path=str(stage_shot), full_page=True)
    assert stage_shot.stat().st_size > 0
    print(f"screenshot of a stage page: {stage_shot}")

    assert errors == [], errors
    assert outside == [], f"the pages reached beyond the local server: {outside}"
