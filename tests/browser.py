"""Driving the hub's pages in headless Chromium on a machine shared with other tests.

Other tests on this machine create and remove network interfaces (labs' bridges, veths, Swarm's
overlays) all the time; Chromium then aborts whatever navigation is under way with
net::ERR_NETWORK_CHANGED. That is not the hub's answer: the step is done again."""
from __future__ import annotations

import time


def network_changed(e: Exception) -> bool:
    return "ERR_NETWORK_CHANGED" in str(e)


def again(step, *args, tries: int = 5, **kwargs):
    """Run a browser step (a function of a page, or one that makes its own), again while Chromium
    reports ERR_NETWORK_CHANGED; any other error is raised at once."""
    for n in range(tries):
        try:
            return step(*args, **kwargs)
        except Exception as e:  # playwright's Error
            if not network_changed(e) or n == tries - 1:
                raise
            print(f"browser: {e.__class__.__name__} ERR_NETWORK_CHANGED in {getattr(step, '__name__', step)}; again")
            time.sleep(0.5)


def goto(page, url: str):
    """page.goto, again after ERR_NETWORK_CHANGED; the response."""
    return again(page.goto, url)


def hub_log_tail(service: str, lines: int = 60) -> str:
    """The hub's last log lines (for a failed step's message: a 500 says nothing by itself)."""
    import subprocess

    out = subprocess.run(["docker", "service", "logs", "--raw", "--tail", str(lines), service],
                         capture_output=True, text=True, timeout=60)
    return out.stdout + out.stderr


CHROMIUM = "/usr/bin/chromium"  # Debian's; Playwright's own browser download needs the internet


def chromium():
    """Headless Debian Chromium driven by Playwright, as a context manager yielding the browser:
    `with chromium() as b: page = b.new_context(...).new_page()`. A missing Chromium fails the test
    with what to install."""
    import contextlib
    import os

    import pytest

    @contextlib.contextmanager
    def launched():
        if not os.path.exists(CHROMIUM):
            pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium", pytrace=False)
        from playwright.sync_api import sync_playwright

        with sync_playwright() as pw:
            b = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                   args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
            try:
                yield b
            finally:
                b.close()

    return launched()
