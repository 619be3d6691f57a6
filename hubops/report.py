"""The run's report: outputs/RUN-ID/index.html, a summary page linking each stage rendered to HTML."""
from __future__ import annotations

import html
import logging
from typing import TYPE_CHECKING

import nbformat

if TYPE_CHECKING:
    from .runner import Run

log = logging.getLogger("hubops")

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:70em}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}
.ok{color:#2e7d32}.failed{color:#c62828}.pending,.running,.interrupted{color:#ef6c00}
code{font-size:90%}
"""


def _stage_html(run: "Run", name: str) -> str | None:
    """Render one executed stage notebook to HTML beside it, without the injected-parameters cell."""
    from nbconvert import HTMLExporter

    src = run.dir / f"{name}.ipynb"
    if not src.exists():
        return None
    nb = nbformat.read(src, as_version=4)
    nb.cells = [c for c in nb.cells if "injected-parameters" not in c.get("metadata", {}).get("tags", [])]
    body, _ = HTMLExporter(template_name="lab").from_notebook_node(nb)
    out = run.dir / f"{name}.html"
    out.write_text(body)
    return out.name


def write_report(run: "Run") -> None:
    m = run.manifest
    rows = []
    for s in m["stages"]:
        page = None
        try:
            page = _stage_html(run, s["name"])
        except Exception as e:  # a report must never hide the run: keep the summary, say what failed
            log.warning("could not render %s to HTML: %s", s["name"], e)
        link = f"<a href='{html.escape(page)}'>{html.escape(s['name'])}</a>" if page else html.escape(s["name"])
        err = s.get("error")
        what = "<br>".join(html.escape(c) for c in s.get("changes", [])) or (
            f"nothing to change ({s.get('kept', 0)} already right)" if s.get("status") == "ok" else "")
        if err:
            what += f"<br><b>failed in cell {err.get('cell')}</b>: {html.escape(str(err.get('ename')))}: " \
                    f"{html.escape(str(err.get('evalue'))[:500])}"
        rows.append(
            f"<tr><td>{link}</td><td class='{html.escape(s['status'])}'>{html.escape(s['status'])}</td>"
            f"<td>{s.get('duration_s', '')}</td><td>{what}</td></tr>"
        )
    engines = ", ".join(f"{h}: Docker {e.get('engine')}" for h, e in (m.get("engines") or {}).items())
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>hubops {html.escape(m['run_id'])}</title>
<style>{_CSS}</style></head><body>
<h1>hubops {html.escape(m['kind'])}: {html.escape(m['deployment'])}</h1>
<table>
<tr><th>run</th><td>{html.escape(m['run_id'])}</td></tr>
<tr><th>outcome</th><td class='{html.escape(m['status'])}'>{html.escape(m['status'])}</td></tr>
<tr><th>who, where</th><td>{html.escape(m['who'])} on {html.escape(m['machine'])}</td></tr>
<tr><th>when</th><td>{html.escape(m['started'])} to {html.escape(str(m.get('finished')))} ({m.get('duration_s', '?')} s)</td></tr>
<tr><th>hubops</th><td>{html.escape(m['hubops_version'])} ({html.escape(str(m.get('git_commit')))})</td></tr>
<tr><th>parameters</th><td><code>{html.escape(m['params_file'])}</code> sha256 {html.escape(m['params_sha256'][:16])}</td></tr>
<tr><th>engines</th><td>{html.escape(engines)}</td></tr>
<tr><th>changes</th><td>{m.get('changed', 0)}</td></tr>
</table>
<table><thead><tr><th>stage</th><th>status</th><th>seconds</th><th>what changed</th></tr></thead>
<tbody>{''.join(rows)}</tbody></table>
<p><a href="run.json">run.json</a></p>
</body></html>
"""
    (run.dir / "index.html").write_text(page)
