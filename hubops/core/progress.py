"""Progress and confirmation for the runbooks: widgets in JupyterLab, a few plain lines headless.

A stage calls `step(...)` around work that takes long (an image build or transfer, waiting for a
service or a task, the verify spawn) and `Step.update(...)` as it goes. Where it runs decides how it
shows:

- **interactive** (a notebook opened in JupyterLab or Jupyter Server, whose kernels get
  `JPY_SESSION_NAME`): an ipywidgets progress bar with a label, updated at most a few times a second,
  green when done, red when the step failed;
- **headless** (papermill, `hubops deploy`/`hubops ops`, which set `HUBOPS_HEADLESS=1`, or plain
  Python): one log line when the step starts, at most one "still …" line every 30 s, one line when it
  ends. No widget is made, so the record holds no widget state and the report needs no JavaScript.

`HUBOPS_WIDGETS=1` or `=0` overrides the detection.

`confirm(...)` is how a destructive step asks (teardown, remove-node, renew-tls's secret rotation).
Interactive: it shows the plan's size and two buttons and waits, in an `await`, until one is clicked.
A cell that awaits lets ipykernel (7.4 and later) deliver the buttons' comm messages while it waits,
and the kernel keeps the next cells of a "Run All" queued behind it, so nothing after it runs before
the answer. Headless it never waits: the runbook's parameter is the answer.
"""
from __future__ import annotations

import asyncio
import html
import logging
import os
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator, Optional

log = logging.getLogger("hubops")

HEADLESS_EVERY = 30.0  # seconds between "still …" lines in a headless log
WIDGET_EVERY = 0.2  # seconds between widget updates (each is a comm message)


def interactive() -> bool:
    """Whether widgets can be shown and answered: a kernel started by a Jupyter server for a notebook."""
    forced = os.environ.get("HUBOPS_WIDGETS")
    if forced in ("0", "1"):
        return forced == "1" and _kernel() is not None
    if os.environ.get("HUBOPS_HEADLESS") == "1" or not os.environ.get("JPY_SESSION_NAME"):
        return False
    return _kernel() is not None


def _kernel() -> Any:
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    shell = get_ipython()
    return getattr(shell, "kernel", None)


def _fmt_secs(s: float) -> str:
    return f"{s:.1f} s" if s < 120 else f"{int(s // 60)} min {int(s % 60)} s"


class Step:
    """One long piece of work. `total` is the amount that means done (steps, bytes, seconds), or None."""

    def __init__(self, title: str, total: Optional[float], unit: str, widgets: bool):
        self.title = title
        self.total = total
        self.unit = unit
        self.done = 0.0
        self.note = ""
        self.t0 = time.monotonic()
        self._last_shown = 0.0
        self._last_logged = self.t0
        self._bar = self._label = None
        self._lock = threading.RLock()
        self._stop = threading.Event()
        if widgets:
            import ipywidgets as w
            from IPython.display import display

            self._bar = w.FloatProgress(value=0.0, min=0.0, max=1.0, bar_style="info",
                                        layout=w.Layout(width="40%"))
            self._label = w.HTML(value=self._label_html())
            box = w.HBox([self._bar, self._label])
            box.add_class("hubops-progress")
            display(box)
        else:
            log.info("%s …", title)
        # A waiting step (unit "s") fills with the time spent; any step keeps its clock moving and,
        # headless, says it is still running, even while the caller blocks in one long call.
        self._ticker = threading.Thread(target=self._tick, name="hubops-progress", daemon=True)
        self._ticker.start()

    def _tick(self) -> None:
        while not self._stop.wait(0.5):
            self.update(self.elapsed if self.unit == "s" else None)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def _amount(self) -> str:
        if self.total is None:
            return ""
        if self.unit == "B":
            return f"{self.done / 2**20:.0f}/{self.total / 2**20:.0f} MB"
        if self.unit == "s":
            return f"{self.done:.0f}/{self.total:.0f} s"
        return f"{self.done:.0f}/{self.total:.0f}{(' ' + self.unit) if self.unit else ''}"

    def _label_html(self, verdict: str = "") -> str:
        parts = [f"<b>{html.escape(self.title)}</b>"]
        if verdict:
            parts.append(html.escape(verdict))
        else:
            parts += [html.escape(x) for x in (self._amount(), _fmt_secs(self.elapsed), self.note) if x]
        return " · ".join(parts)

    def update(self, done: Optional[float] = None, *, total: Optional[float] = None, note: str = "") -> None:
        """Record progress: `done` so far (of `total`, which may be learnt late), and a short note."""
        with self._lock:
            self._update(done, total, note)

    def _update(self, done: Optional[float], total: Optional[float], note: str) -> None:
        if total is not None:
            self.total = total
        if done is not None:
            self.done = done
        if note:
            self.note = note[:120]
        now = time.monotonic()
        if self._bar is not None:
            if now - self._last_shown >= WIDGET_EVERY:
                self._last_shown = now
                if self.total:
                    self._bar.value = max(0.0, min(1.0, self.done / self.total))
                else:  # unknown amount: a bar that fills slowly and never looks finished
                    self._bar.value = 1.0 - 1.0 / (1.0 + self.elapsed / 30.0)
                self._label.value = self._label_html()
        elif now - self._last_logged >= HEADLESS_EVERY:
            self._last_logged = now
            amount = self._amount()
            log.info("%s: still running after %s%s%s", self.title, _fmt_secs(self.elapsed),
                     f" ({amount})" if amount else "", f": {self.note}" if self.note else "")

    def _finish(self, error: Optional[BaseException]) -> None:
        self._stop.set()
        self._ticker.join(timeout=2)
        secs = self.elapsed
        verdict = (f"done in {_fmt_secs(secs)}" if error is None
                   else f"failed after {_fmt_secs(secs)}: {type(error).__name__}")
        if self._bar is not None:
            self._bar.value = 1.0
            self._bar.bar_style = "success" if error is None else "danger"
            self._label.value = self._label_html(verdict)
        elif error is None:
            log.info("%s: %s", self.title, verdict)
        # a failure is told by the exception itself; a second line would only repeat it


@contextmanager
def step(title: str, *, total: Optional[float] = None, unit: str = "") -> Iterator[Step]:
    """Show `title` as in progress while the block runs; see the module's docstring."""
    s = Step(title, total, unit, widgets=interactive())
    try:
        yield s
    except BaseException as e:
        s._finish(e)
        raise
    s._finish(None)


async def confirm(question: str, *, answer: bool, plan: Any = None, dry_run: bool = False,
                  action: str = "Yes, go ahead") -> bool:
    """Whether the destructive step after this cell may change the cluster.

    Headless: `answer` (the runbook's parameter), at once. Interactive: a widget with `question`,
    what the plan (a Result or a list of them) would change, and two buttons; the cell waits until one is clicked (interrupt the
    kernel to give up: nothing is changed). A dry run, or a plan that changes nothing, needs no
    answer: no widget is shown.
    """
    plans = plan if isinstance(plan, (list, tuple)) else [] if plan is None else [plan]
    changes = [i for r in plans for i in r.changes]
    if dry_run:
        log.info("dry run: nothing will be changed, so nothing to confirm")
        return False
    if plan is not None and not changes:
        log.info("the plan changes nothing, so nothing to confirm")
        return True
    if not interactive():
        if not answer:
            log.info("not confirmed (the runbook's confirm parameter is False): plan only, nothing changed")
        return answer
    return await _ask(question, changes, action)


def _kernel_delivers_comms_while_awaiting() -> bool:
    """ipykernel 7.4 and later hand a widget's comm messages to a cell that awaits; older kernels
    queue them behind the cell, so the answer would never arrive."""
    import ipykernel

    try:
        major, minor = (int(x) for x in ipykernel.__version__.split(".")[:2])
    except ValueError:
        return True
    return (major, minor) >= (7, 4)


async def _ask(question: str, changes: list, action: str) -> bool:
    import ipywidgets as w
    from IPython.display import display

    if not _kernel_delivers_comms_while_awaiting():
        from hubops.core.errors import HubopsError
        import ipykernel

        raise HubopsError(
            f"{question} This kernel (ipykernel {ipykernel.__version__}) cannot receive a button's answer "
            "while the cell runs: upgrade it (pip install 'ipykernel>=7.4', then restart the kernel), or run "
            "the runbook headless (hubops ops NAME --set …), where its parameters decide")

    listed = "".join(f"<li><code>{html.escape(i.action)}</code> {html.escape(i.target)}</li>" for i in changes[:12])
    more = f"<li>… and {len(changes) - 12} more</li>" if len(changes) > 12 else ""
    text = w.HTML(f"<p><b>{html.escape(question)}</b></p>"
                  + (f"<p>{len(changes)} change(s):</p><ul>{listed}{more}</ul>" if changes else ""))
    yes = w.Button(description=action, button_style="danger", icon="check")
    no = w.Button(description="No, plan only", icon="times")
    status = w.HTML("<i>waiting for your answer; the next cells wait too</i>")
    box = w.VBox([text, w.HBox([yes, no]), status])
    box.add_class("hubops-confirm")
    display(box)
    answered: asyncio.Future = asyncio.get_running_loop().create_future()

    def click(value: bool):
        def handler(_button):
            if not answered.done():
                answered.set_result(value)
        return handler

    yes.on_click(click(True))
    no.on_click(click(False))
    try:
        value = await answered
    except BaseException:  # interrupted: the answer is no, and the cell stops
        status.value = "<b>interrupted: nothing will be changed</b>"
        yes.disabled = no.disabled = True
        raise
    yes.disabled = no.disabled = True
    when = time.strftime("%H:%M:%S UTC", time.gmtime())
    status.value = (f"<b style='color:#c62828'>confirmed at {when}</b>" if value
                    else f"<b>declined at {when}: plan only, nothing will be changed</b>")
    log.info("%s at %s", "confirmed" if value else "declined", when)
    return value
