"""hubops.core.progress: plain lines and never a widget headless; widgets only where a Jupyter server
runs the kernel; confirmation never waits headless."""
from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time

import nbformat
import pytest

from hubops import Result
from hubops.core import progress


def test_headless_step_says_start_and_end_in_plain_lines(caplog, monkeypatch):
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    monkeypatch.setattr(progress, "HEADLESS_EVERY", 0.3)
    caplog.set_level(logging.INFO, logger="hubops")
    with progress.step("wait for the thing", total=10, unit="s") as s:
        time.sleep(1.0)
        s.update(note="task starting")
    lines = [r.getMessage() for r in caplog.records]
    print(lines)
    assert lines[0] == "wait for the thing …"
    assert any(x.startswith("wait for the thing: still running after") for x in lines[1:-1])
    assert lines[-1].startswith("wait for the thing: done in ")
    assert len(lines) <= 6, "a few plain lines, not one per update"


def test_a_failed_step_raises_and_does_not_say_done(caplog, monkeypatch):
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    caplog.set_level(logging.INFO, logger="hubops")
    with pytest.raises(RuntimeError, match="boom"):
        with progress.step("build x", unit="steps") as s:
            s.update(3, total=12)
            raise RuntimeError("boom")
    assert [r.getMessage() for r in caplog.records] == ["build x …"]


def test_interactive_only_in_a_kernel_of_a_jupyter_server(monkeypatch):
    monkeypatch.delenv("HUBOPS_WIDGETS", raising=False)
    monkeypatch.delenv("HUBOPS_HEADLESS", raising=False)
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    assert not progress.interactive()
    monkeypatch.setenv("JPY_SESSION_NAME", "/x/runbooks/90-verify.ipynb")
    assert not progress.interactive(), "no IPython kernel here (pytest): no widget"
    monkeypatch.setattr(progress, "_kernel", lambda: object())
    assert progress.interactive()
    monkeypatch.setenv("HUBOPS_HEADLESS", "1")
    assert not progress.interactive(), "the chain runner's kernels are headless"
    monkeypatch.setenv("HUBOPS_WIDGETS", "1")
    assert progress.interactive()


def test_confirm_never_waits_headless(monkeypatch):
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    plan = Result("teardown", dry_run=True).change("remove", "network hubops-x")
    assert asyncio.run(progress.confirm("Remove?", answer=False, plan=plan)) is False
    assert asyncio.run(progress.confirm("Remove?", answer=True, plan=plan)) is True
    assert asyncio.run(progress.confirm("Remove?", answer=True, plan=plan, dry_run=True)) is False
    nothing = Result("teardown", dry_run=True).keep("users' servers")
    assert asyncio.run(progress.confirm("Remove?", answer=False, plan=[nothing])) is True


NOTEBOOK = """
import hubops, time
from hubops.core import progress
hubops.log_to_notebook()
with progress.step("a long wait", total=5, unit="s"):
    time.sleep(0.5)
confirmed = await hubops.confirm("Remove?", answer=False, plan=hubops.Result("t").change("remove", "x"))
confirmed
"""


@pytest.mark.parametrize("env,widgets", [({"HUBOPS_HEADLESS": "1"}, False), ({"HUBOPS_WIDGETS": "1"}, True)])
def test_an_executed_notebook_holds_widgets_only_when_asked(tmp_path, env, widgets):
    """A kernel started by papermill with JPY_SESSION_NAME inherited (as from a JupyterLab terminal):
    the runner's HUBOPS_HEADLESS=1 keeps widgets out of the record; HUBOPS_WIDGETS=1 shows the
    same notebook would have made one (so the check can fail)."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(NOTEBOOK)]
    src, out = tmp_path / "in.ipynb", tmp_path / "out.ipynb"
    nbformat.write(nb, src)
    run_env = {k: v for k, v in os.environ.items() if k not in ("HUBOPS_HEADLESS", "HUBOPS_WIDGETS")}
    run_env.update(JPY_SESSION_NAME=str(src), **env)
    if widgets:  # interactive: the confirm cell would wait for a click; answer it by a dry run
        nb.cells = [nbformat.v4.new_code_cell(NOTEBOOK.replace("answer=False,", "answer=False, dry_run=True,"))]
        nbformat.write(nb, src)
    done = subprocess.run([sys.executable, "-m", "papermill", str(src), str(out), "--no-progress-bar"],
                          env=run_env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    executed = nbformat.read(out, as_version=4)
    views = [o for c in executed["cells"] for o in c.get("outputs", [])
             if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert bool(views) is widgets
    assert ("widgets" in executed["metadata"]) is widgets
    if not widgets:
        stream = "".join(o.get("text", "") for c in executed["cells"] for o in c.get("outputs", [])
                         if o["output_type"] == "stream")
        assert "a long wait …" in stream and "a long wait: done in" in stream
        assert "not confirmed (the runbook's confirm parameter is False)" in stream
