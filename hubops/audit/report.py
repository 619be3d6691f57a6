"""The run's report: outputs/RUN-ID/index.html, a summary page linking each stage rendered to HTML.

The summary says who ran what, where and when; a table of the stages with their status and
links to each stage's page and notebook; what changed, as a table (for a plan run: what would
change, under a "PLAN — nothing was changed" banner); and whether the record verified against
its hash chain when the report was written. Pages are self-contained (no script or style from
the network), so a record can be read offline, and every page passes through the redactor.
`hubops report RUN-ID` writes it again.
"""
from __future__ import annotations

import functools
import html
import logging
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Optional

import nbformat

if TYPE_CHECKING:
    from hubops.audit.redact import Redactor
    from hubops.audit.runner import Run

log = logging.getLogger("hubops")

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:75em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f5f5f5}
.ok{color:#2e7d32}.failed,.bad{color:#c62828}.pending,.running,.interrupted,.skipped{color:#ef6c00}
.status{font-weight:600;white-space:nowrap}
.banner{padding:.6em 1em;border-radius:4px;font-weight:600;margin:1em 0}
.banner.plan{background:#e3f2fd;border:1px solid #64b5f6;color:#0d47a1}
.banner.fail{background:#ffebee;border:1px solid #e57373;color:#b71c1c}
.verdict.ok{background:#e8f5e9;border:1px solid #81c784}.verdict.bad{background:#ffebee;border:1px solid #e57373}
.verdict{padding:.5em 1em;border-radius:4px}
code{font-size:90%}.num{text-align:right}.muted{color:#666}
"""
_ICON = {"ok": "✔", "failed": "✘", "interrupted": "✘", "pending": "…", "running": "▶", "skipped": "–"}

# The lab template without the scripts it would load from a CDN (require.js, MathJax, mermaid):
# a stage page must render offline, and opening a record must not call out to the network.
_STAGE_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block extra_css -%}<link rel="icon" href="data:,">{%- endblock extra_css -%}
{%- block body_header -%}{{ super() }}
<p style="font-family:system-ui,sans-serif;margin:1em 0 0 1em"><a href="index.html">&larr; the run's summary</a></p>
{{ resources.hubops_params_line }}
{%- endblock body_header -%}
"""


@functools.lru_cache(maxsize=1)
def _exporter():
    """One exporter per process: building one compiles the templates, which costs more than a page."""
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    return HTMLExporter(template_name="lab", template_file="hubops-stage.html.j2",
                        extra_loaders=[DictLoader({"hubops-stage.html.j2": _STAGE_TEMPLATE})])


def _stage_html(run: "Run", name: str, redactor: Optional["Redactor"] = None) -> str | None:
    """Render one executed stage notebook to HTML beside it. The injected-parameters cell stays, under a
    line naming the run's deployment and parameter file (see `paramnote`): the first code cell holds
    the runbook's defaults, not what this run used."""
    from hubops.audit.paramnote import page_line

    src = run.dir / f"{name}.ipynb"
    if not src.exists():
        return None
    nb = nbformat.read(src, as_version=4)
    nb.metadata.pop("widgets", None)  # widget state needs the widget manager from a CDN; the outputs say enough
    body, _ = _exporter().from_notebook_node(nb, resources={"metadata": {"name": f"{run.id}: {name}"},
                                                            "hubops_params_line": page_line(run.manifest)})
    out = run.dir / f"{name}.html"
    out.write_text(redactor.redact(body) if redactor is not None else body, encoding="utf-8")
    return out.name


def _e(v: Any) -> str:
    return html.escape("" if v is None else str(v))


def _status(s: str) -> str:
    return f"<span class='status {_e(s)}'>{_ICON.get(s, '')} {_e(s)}</span>"


def _stage_rows(run: "Run", redactor: Optional["Redactor"]) -> str:
    rows = []
    for s in run.manifest["stages"]:
        page = None
        try:
            page = _stage_html(run, s["name"], redactor)
        except Exception as e:  # a report must never hide the run: keep the summary, say what failed
            log.warning("could not render %s to HTML: %s", s["name"], e)
        name = _e(s["name"])
        link = f"<a href='{_e(page)}'>{name}</a>" if page else name
        nb = s.get("notebook")
        nb_link = f"<a href='{_e(nb)}' download>{_e(nb)}</a>" if nb and (run.dir / nb).exists() else ""
        err = s.get("error")
        if err:
            note = (f"<b>failed in cell {_e(err.get('cell'))}</b>: {_e(err.get('ename'))}: "
                    f"{_e(str(err.get('evalue'))[:500])}")
        elif s.get("status") == "ok" and not s.get("changed"):
            note = f"<span class='muted'>nothing to change ({_e(s.get('kept', 0))} already right)</span>"
        else:
            note = ""
        rows.append(
            f"<tr data-stage='{name}'><td>{link}</td><td>{_status(s.get('status', '?'))}</td>"
            f"<td class='num'>{_e(s.get('duration_s', ''))}</td><td class='num'>{_e(s.get('changed', ''))}</td>"
            f"<td>{nb_link}</td><td>{note}</td></tr>"
        )
    return "".join(rows)


def _changes_table(m: dict[str, Any], plan: bool) -> str:
    rows = []
    for s in m["stages"]:
        for c in s.get("changes", []) or []:
            action, _, target = str(c).partition(" ")
            rows.append(f"<tr><td>{_e(s['name'])}</td><td>{_e(action)}</td><td>{_e(target)}</td></tr>")
    heading = "What would change" if plan else "What changed"
    if not rows:
        none = "Nothing would change." if plan else "Nothing was changed."
        return f"<h2 id='changes'>{heading}</h2><p class='muted'>{none}</p>"
    verb = "would" if plan else "did"
    return (f"<h2 id='changes'>{heading}</h2><table class='changes'><thead><tr><th>stage</th>"
            f"<th>action ({verb})</th><th>object</th></tr></thead><tbody>{''.join(rows)}</tbody></table>")


def _verdict_html(run: "Run") -> str:
    from hubops.audit.ledger import verify_run

    try:
        v = verify_run(run.dir)
    except Exception as e:  # noqa: BLE001 - say so rather than drop the report
        return f"<p class='verdict bad'>the record could not be verified: {_e(e)}</p>"
    cls = "ok" if v.ok else "bad"
    items = "".join(f"<li>{_e(p)}</li>" for p in v.problems[1:])
    when = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return (f"<p class='verdict {cls}' id='verdict'>{'✔' if v.ok else '✘'} {_e(v.verdict)}</p>"
            + (f"<ul>{items}</ul>" if items else "")
            + f"<p class='muted'>checked {when}, when this page was written; "
              f"<code>hubops record verify {_e(run.id)}</code> checks it again.</p>")


def write_report(run: "Run", redactor: Optional["Redactor"] = None) -> None:
    """Write index.html and one page per executed stage into the run's folder.

    Without `redactor`, the run's parameter file is loaded again to find its secrets."""
    if redactor is None:
        from hubops.audit.redact import redactor_for

        redactor = redactor_for(params_file=run.manifest.get("params_file"))
    m = run.manifest
    plan = m.get("kind") == "plan"
    rows = _stage_rows(run, redactor)
    engines = ", ".join(f"{h}: Docker {e.get('engine')}" for h, e in (m.get("engines") or {}).items())
    banner = ""
    if plan:
        banner = "<p class='banner plan' id='plan'>PLAN — nothing was changed. The changes below are what a deploy would make.</p>"
    elif m.get("status") in ("failed", "interrupted"):
        stopped = next((s["name"] for s in m["stages"] if s.get("status") in ("failed", "interrupted")), "?")
        banner = (f"<p class='banner fail'>The run stopped at {_e(stopped)}; continue it with "
                  f"<code>hubops deploy -p {_e(m.get('params_file'))} --resume {_e(m['run_id'])}</code></p>")
    verb = "would change" if plan else "changes"
    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>hubops {_e(m['run_id'])}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,">
<style>{_CSS}</style></head><body>
<h1>hubops {_e('PLAN' if plan else m['kind'])}: {_e(m['deployment'])}</h1>
{banner}
<table class="summary">
<tr><th>run</th><td>{_e(m['run_id'])}</td></tr>
<tr><th>outcome</th><td>{_status(m.get('status', '?'))}</td></tr>
<tr><th>who, where</th><td>{_e(m.get('who'))} on {_e(m.get('machine'))}</td></tr>
<tr><th>when</th><td>{_e(m.get('started'))} to {_e(m.get('finished'))} ({_e(m.get('duration_s', '?'))} s)</td></tr>
<tr><th>hubops</th><td>{_e(m.get('hubops_version'))} ({_e(m.get('git_commit'))})</td></tr>
<tr><th>parameters</th><td><code>{_e(m.get('params_file'))}</code> sha256 {_e(str(m.get('params_sha256'))[:16])}</td></tr>
<tr><th>engines</th><td>{_e(engines)}</td></tr>
<tr><th>{verb}</th><td>{_e(m.get('changed', 0))}</td></tr>
</table>
<h2 id="stages">Stages</h2>
<table class="stages"><thead><tr><th>stage</th><th>status</th><th>seconds</th><th>{verb}</th><th>notebook</th><th>notes</th></tr></thead>
<tbody>{rows}</tbody></table>
{_changes_table(m, plan)}
<h2 id="verification">Record verification</h2>
{_verdict_html(run)}
<p><a href="run.json">run.json</a></p>
</body></html>
"""
    (run.dir / "index.html").write_text(redactor.redact(page), encoding="utf-8")
    from .runner import tighten

    tighten(run.dir)  # 0600 files in a 0700 folder, whatever the umask
