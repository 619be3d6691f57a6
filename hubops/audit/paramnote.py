"""Which parameters a recorded run used, said where a reader of the record looks.

Every runbook's `parameters` cell holds its defaults (`params_file = "parameters/local.yaml"`);
papermill runs the notebook with this run's values in an `injected-parameters` cell after it.
A reader of a record of another deployment would otherwise see the default first and believe it.
So, before a stage's notebook enters the record (and before it is redacted and sealed):
- the defaults cell gets a comment saying it holds the runbook's defaults, replaced for this run by
  the next cell, and naming this run's deployment and parameter file;
- the notebook's metadata names them too (`metadata.hubops`).
The report shows the injected cell (it holds the parameter file's path, `dry_run` and the day-2
runbook's `--set` values; like every string of the record it passes through the redactor) and a
line above each stage saying the same. Nothing here changes what the cells did.
"""
from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

MARK = "hubops-defaults-note"  # metadata key of a defaults cell that carries the note


def _tagged(cell: dict, tag: str) -> bool:
    return tag in ((cell.get("metadata") or {}).get("tags") or [])


def note_lines(manifest: dict[str, Any], replaced: list[str]) -> list[str]:
    """The comment put above a runbook's defaults in the record (pure)."""
    names = ", ".join(sorted(replaced, key=lambda k: (k != "params_file", k))) or "params_file"
    return [
        "# RUNBOOK DEFAULTS, NOT THIS RUN'S VALUES: the next cell (injected-parameters) replaced",
        f"# {names} for this run: deployment {manifest.get('deployment')!r}, "
        f"parameters {manifest.get('params_file')!r}.",
    ]


def mark_notebook(nb: dict[str, Any], manifest: dict[str, Any]) -> bool:
    """Add the note to an executed notebook (a JSON dict as on disk); whether it changed it."""
    cells = nb.get("cells") or []
    for i, cell in enumerate(cells[:-1]):
        if not _tagged(cell, "parameters") or not _tagged(cells[i + 1], "injected-parameters"):
            continue
        meta = nb.setdefault("metadata", {})
        meta["hubops"] = {k: manifest.get(k) for k in ("run_id", "deployment", "params_file", "params_sha256")}
        cmeta = cell.setdefault("metadata", {})
        if cmeta.get(MARK):
            return True
        replaced = list(((meta.get("papermill") or {}).get("parameters") or {}))
        src = cell.get("source") or ""
        text = "".join(src) if isinstance(src, list) else src
        cell["source"] = "\n".join(note_lines(manifest, replaced)) + "\n" + text
        cmeta[MARK] = True
        return True
    return False


def mark(path: Path, manifest: dict[str, Any]) -> bool:
    """Add the note to the executed notebook at `path` in place (the layout nbformat writes); whether
    it did. A notebook that is not JSON (cut short by a crash) or has no injected cell is left alone."""
    if not path.exists() or path.stat().st_size == 0:
        return False
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return False
    if not isinstance(nb, dict) or not mark_notebook(nb, manifest):
        return False
    tmp = path.with_name(path.name + ".noting")
    tmp.write_text(json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.chmod(0o600)
    tmp.replace(path)
    return True


def page_line(manifest: dict[str, Any]) -> str:
    """The line above a stage's page in the report (HTML, escaped)."""
    e = lambda v: html.escape("" if v is None else str(v))  # noqa: E731
    return (f"<p class='hubops-run-params' style='font-family:system-ui,sans-serif;margin:.5em 1em'>"
            f"Run <code>{e(manifest.get('run_id'))}</code> of deployment <b>{e(manifest.get('deployment'))}</b> "
            f"with parameters <code>{e(manifest.get('params_file'))}</code> "
            f"(sha256 {e(str(manifest.get('params_sha256'))[:16])}). The first code cell shows the runbook's "
            f"defaults; the <i>injected-parameters</i> cell after it holds the values this run used.</p>")
