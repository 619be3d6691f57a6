"""A stage's record: the last cell of every stage notebook stores its results in the notebook.

The record is displayed with its own MIME type, so the chain runner and the report read it
back from the executed notebook without guessing: what changed, what was already right and
why, and the facts the stage found.
"""
from __future__ import annotations

import html
import json
from typing import Any

from hubops.core.result import Result

MIME = "application/vnd.hubops.record+json"


class Record:
    def __init__(self, stage: str, results: tuple[Result, ...]):
        self.stage = stage
        self.results = results

    def to_dict(self) -> dict[str, Any]:
        changes = [("would " if r.dry_run else "") + f"{i.action} {i.target}" + (f" ({i.detail})" if i.detail else "")
                   for r in self.results for i in r.changes]
        kept = [f"{i.target}: {i.detail}" for r in self.results for i in r.items if not i.changed]
        return {
            "stage": self.stage,
            "dry_run": any(r.dry_run for r in self.results),
            "changed": len(changes),
            "changes": changes,
            "kept": kept,
            "results": [r.to_dict() for r in self.results],
        }

    def __repr__(self) -> str:
        d = self.to_dict()
        verb = "would change" if d["dry_run"] else "changed"
        return f"{self.stage}: {d['changed']} {verb}, {len(d['kept'])} already right or checked"

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict[str, Any]:
        # The results themselves are shown by the cells above (each returns its result); the
        # record cell shows one line and carries the whole record as data for the runner, the
        # report and the CLI (`hubops record show RUN --stage NAME` prints it as text).
        from hubops.core import textview

        d = self.to_dict()
        line = textview.summary(d)
        return {MIME: d, "text/html": f"<p class='hubops-record'>{html.escape(line)}</p>", "text/plain": line}


def record(stage: str, *results: Result) -> Record:
    """The stage's record; make it the value of the notebook's last cell."""
    return Record(stage, results)


def read_record(nb: dict) -> dict[str, Any] | None:
    """The record stored in an executed notebook (nbformat dict), or None."""
    for cell in reversed(nb.get("cells", [])):
        for out in cell.get("outputs", []) or []:
            data = out.get("data") or {}
            if MIME in data:
                value = data[MIME]
                return json.loads(value) if isinstance(value, str) else value
    return None


def stopped_stage(manifest: dict) -> str | None:
    """For a run recorded as running whose runner is gone (killed, the machine restarted): the stage it
    stopped in. None when the run finished, or its runner still runs (or ran on another machine)."""
    import platform

    if manifest.get("status") != "running" or manifest.get("machine") != platform.node():
        return None
    pid = manifest.get("runner_pid")
    if not pid:
        return None  # recorded by an older hubops: cannot tell
    try:
        with open(f"/proc/{int(pid)}/cmdline", "rb") as f:
            if b"python" in f.read():
                return None  # its runner still runs
    except (OSError, ValueError):
        pass
    stage = next((s for s in manifest.get("stages", []) if s.get("status") == "running"), None)
    return stage["name"] if stage else "(between stages)"
