"""Result objects: what an ensure_* step changed, or why nothing needed to change.

Every ensure_* function returns a `Result`. It renders as an HTML table in JupyterLab and in
the report (`_repr_html_`) and as plain text in logs (`__repr__`). A stage's last cell passes
its results to `hubops.core.record`, which stores them in the executed notebook for the runner.
"""
from __future__ import annotations

import html
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable


@dataclass
class Item:
    """One object a step looked at.

    `action` is what was (or, in a dry run, would be) done: ``create``, ``update``,
    ``remove``, ``keep`` when the object was already right, or ``check`` for something
    verified that changed nothing; `detail` says why.
    """

    action: str
    target: str
    detail: str = ""

    @property
    def changed(self) -> bool:
        return self.action not in ("keep", "check")


@dataclass
class Result:
    """The outcome of one ensure_* step."""

    step: str
    items: list[Item] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    dry_run: bool = False

    # -- building -----------------------------------------------------------------------
    def keep(self, target: str, detail: str = "") -> "Result":
        self.items.append(Item("keep", target, detail))
        return self

    def check(self, target: str, detail: str = "") -> "Result":
        self.items.append(Item("check", target, detail))
        return self

    def change(self, action: str, target: str, detail: str = "") -> "Result":
        self.items.append(Item(action, target, detail))
        return self

    # -- reading ------------------------------------------------------------------------
    @property
    def changes(self) -> list[Item]:
        return [i for i in self.items if i.changed]

    @property
    def changed(self) -> bool:
        return bool(self.changes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "dry_run": self.dry_run,
            "items": [asdict(i) for i in self.items],
            "facts": _plain(self.facts),
            # A notebook stores JSON with its keys sorted: the facts' and tables' own order is kept here.
            "order": key_order(_plain(self.facts)),
        }

    # -- rendering ----------------------------------------------------------------------
    def __repr__(self) -> str:
        verb = "would change" if self.dry_run else "changed"
        head = f"{self.step}: {len(self.changes)} {verb}, {len(self.items) - len(self.changes)} already right"
        lines = [head]
        for i in self.items:
            action = f"would {i.action}" if self.dry_run and i.changed else i.action
            lines.append(f"  {action:<14} {i.target}" + (f"  ({i.detail})" if i.detail else ""))
        for k, v in self.facts.items():
            if _is_rows(v):
                lines.append(f"  {k}:")
                lines += ["    " + line for line in text_table(v)]
            else:
                lines.append(f"  {k}: {v}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        return render_html([self])


def _is_rows(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(r, dict) for r in value)


def text_table(rows: list[dict]) -> list[str]:
    """Rows of dicts as aligned plain-text lines (for logs and the CLI)."""
    cols = list(dict.fromkeys(k for r in rows for k in r))
    cells = [[str(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*cols), *(fmt.format(*row) for row in cells)]


def html_table(rows: list[dict]) -> str:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(r.get(c, '')))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def key_order(value: Any) -> Any:
    """The order of a plain value's keys, which a JSON file with sorted keys loses: for a dict
    {"keys": [...], "sub": {key: order of its value}}, for a table (a list of dicts) {"keys": its
    columns}, else None. `textview` puts it back when it prints a record read from a notebook."""
    if isinstance(value, dict):
        sub = {k: o for k, v in value.items() if (o := key_order(v)) is not None}
        return {"keys": list(value), **({"sub": sub} if sub else {})}
    if _is_rows(value):
        return {"keys": list(dict.fromkeys(k for r in value for k in r))}
    return None


def _plain(value: Any) -> Any:
    """Facts as JSON-safe plain values."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


_COLOURS = {"check": "#2e7d32", "keep": "#2e7d32", "create": "#1565c0", "update": "#ef6c00", "remove": "#c62828"}


def render_html(results: Iterable[Result]) -> str:
    """One table for several results (a stage's record), facts below each step."""
    rows = []
    facts = []
    for r in results:
        for i in r.items:
            colour = _COLOURS.get(i.action, "#555")
            action = f"would {i.action}" if r.dry_run and i.changed else i.action
            rows.append(
                f"<tr><td>{html.escape(r.step)}</td>"
                f"<td style='color:{colour};font-weight:bold'>{html.escape(action)}</td>"
                f"<td><code>{html.escape(i.target)}</code></td><td>{html.escape(i.detail)}</td></tr>"
            )
        if r.facts:
            facts.append(
                f"<tr><th colspan=2 style='text-align:left'>{html.escape(r.step)}</th></tr>"
                + "".join(
                    f"<tr><td>{html.escape(str(k))}</td><td>"
                    + (html_table(v) if _is_rows(v) else f"<code>{html.escape(str(v))}</code>")
                    + "</td></tr>"
                    for k, v in _plain(r.facts).items()
                )
            )
    out = (
        "<table class='hubops-result'><thead><tr><th>step</th><th>action</th><th>object</th>"
        "<th>why</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
    )
    if facts:
        out += "<table class='hubops-facts'><tbody>" + "".join(facts) + "</tbody></table>"
    return out
