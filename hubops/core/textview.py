"""A stage's record as plain text for a terminal: what `hubops ops status` and `hubops record show
RUN --stage NAME` print.

It reads the record's data (the JSON the last cell of a stage writes, see `record`), never the
notebook's HTML, so the CLI prints exactly what the runner and the report read. Tables look like
`docker node ls`: upper-case headers, columns two spaces apart, no colour and no box drawing, so
the output can be piped, grepped and mailed. Lines fit `width` columns: a long cell is wrapped
inside its column (nothing is cut off; its continuation lines leave the other columns blank),
and escape sequences and control characters found in the data (a log line's colour codes) are
removed. Redaction is the caller's: pass the text through the deployment's redactor.
"""
from __future__ import annotations

import os
import re
import sys
import textwrap
from typing import Any, Iterable, Mapping, Optional

DEFAULT_WIDTH = 120  # when the output is not a terminal and COLUMNS is not set
MIN_WIDTH = 40
GAP = "  "
LONG_WORD = 24  # a word longer than this may be broken to fit a column
# CSI and OSC escape sequences (colours, titles, hyperlinks) and the other C0/C1 controls but \n and \t.
_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(\x07|\x1b\\)|\x1b[@-_]")
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def terminal_width(stream: Any = None) -> int:
    """Columns to fit: COLUMNS when set, else the terminal's width when `stream` (default stdout) is
    one, else DEFAULT_WIDTH (a pipe, a file, a cron mail)."""
    env = os.environ.get("COLUMNS", "")
    if env.isdigit() and int(env) > 0:
        return max(MIN_WIDTH, int(env))
    stream = sys.stdout if stream is None else stream
    try:
        if stream.isatty():
            return max(MIN_WIDTH, os.get_terminal_size(stream.fileno()).columns)
    except (AttributeError, OSError, ValueError):
        pass
    return DEFAULT_WIDTH


def clean(value: Any) -> str:
    """A value as one printable text: no escape sequences, tabs as spaces, no other control character."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)) and all(not isinstance(v, (dict, list, tuple)) for v in value):
        text = ", ".join(clean(v) for v in value)
    elif isinstance(value, Mapping):
        text = ", ".join(f"{k}: {clean(v)}" for k, v in value.items())
    else:
        text = str(value)
    text = _ESCAPES.sub("", text).replace("\r\n", "\n").replace("\t", "    ")
    return _CONTROLS.sub("", text)


def _wrap(text: str, width: int) -> list[str]:
    """A cell's lines at most `width` wide: words kept whole where they fit, long ones broken."""
    out: list[str] = []
    for para in text.split("\n"):
        out += textwrap.wrap(para, width, break_long_words=True, break_on_hyphens=False,
                             replace_whitespace=False, drop_whitespace=True) or [""]
    return out or [""]


def _fit(natural: list[int], floors: list[int], avail: int) -> list[int]:
    """Column widths within `avail`, taken from the widest columns first (free text such as a
    reason or a log line) and never below a column's floor; may stay wider than `avail` when the
    floors do not fit (then the terminal folds the line, as it does `docker node ls`)."""
    widths = list(natural)
    excess = sum(widths) - avail
    while excess > 0:
        wide = [i for i in range(len(widths)) if widths[i] > floors[i]]
        if not wide:
            break
        i = max(wide, key=lambda k: widths[k] - floors[k])
        widths[i] -= 1
        excess -= 1
    return widths


def table(rows: Iterable[Mapping[str, Any]], width: int = DEFAULT_WIDTH, indent: int = 0) -> list[str]:
    """Rows of dicts as a plain-text table fitting `width` columns (headers upper case)."""
    rows = list(rows)
    cols = list(dict.fromkeys(str(k) for r in rows for k in r))
    if not cols:
        return []
    heads = [c.upper() for c in cols]
    cells = [[clean(r.get(c, "")) for c in cols] for r in rows]
    natural = [max([len(h)] + [len(line) for row in cells for line in row[i].split("\n")]) for i, h in enumerate(heads)]
    avail = width - indent - len(GAP) * (len(cols) - 1)
    # A column is never narrower than its header nor than its longest word, so names, addresses
    # and versions are not broken; words over LONG_WORD (paths, digests, long log tokens) may be.
    longest = [max([0] + [len(w) for row in cells for w in row[i].split() if len(w) <= LONG_WORD])
               for i in range(len(cols))]
    floors = [min(natural[i], max(len(heads[i]), longest[i])) for i in range(len(cols))]
    widths = _fit(natural, floors, avail)
    pad = " " * indent
    out = [pad + GAP.join(h.ljust(w) for h, w in zip(heads, widths)).rstrip()]
    for row in cells:
        wrapped = [_wrap(cell, w) for cell, w in zip(row, widths)]
        for k in range(max(len(lines) for lines in wrapped)):
            parts = [(lines[k] if k < len(lines) else "").ljust(w) for lines, w in zip(wrapped, widths)]
            out.append(pad + GAP.join(parts).rstrip())
    return out


def _is_rows(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(r, Mapping) for r in value)


def _pair(key: str, value: str, width: int, indent: int) -> list[str]:
    """`key: value`, the value wrapped with its continuation lines under its first."""
    head = " " * indent + f"{key}: "
    if len(head) > width // 2:  # a long key: the value goes below it
        return [head.rstrip()] + [" " * (indent + 4) + line for line in _wrap(value, max(20, width - indent - 4))]
    lines = _wrap(value, max(20, width - len(head)))
    return [head + lines[0]] + [" " * len(head) + line for line in lines[1:]]


def facts(values: Mapping[str, Any], width: int = DEFAULT_WIDTH, indent: int = 0) -> list[str]:
    """A result's facts in their order: tables under a `name:` line, the rest as `name: value`."""
    out: list[str] = []
    for key, value in values.items():
        key = clean(key)
        if _is_rows(value):
            if out and out[-1] != "":
                out.append("")
            out += [" " * indent + line for line in _wrap(f"{key}:", width - indent)]
            out += table(value, width, indent + 2)
            out.append("")
        elif isinstance(value, Mapping) and value and any(isinstance(v, (Mapping, list)) for v in value.values()):
            out.append(" " * indent + f"{key}:")
            out += facts(value, width, indent + 2)
        elif isinstance(value, Mapping) and value:
            out.append(" " * indent + f"{key}:")
            for k, v in value.items():
                out += _pair(clean(k), clean(v), width, indent + 2)
        else:
            shown = clean(value) if value not in ([], {}, "", None) else "(none)"
            out += _pair(key, shown, width, indent)
    while out and out[-1] == "":
        out.pop()
    return out


def in_order(value: Any, order: Any) -> Any:
    """`value` with its keys back in the order `Result.to_dict()` recorded (see `result.key_order`);
    keys the order does not name follow, as they are."""
    if not isinstance(order, Mapping) or not isinstance(order.get("keys"), list):
        return value
    keys = [k for k in order["keys"] if isinstance(k, str)]
    if isinstance(value, Mapping):
        sub = order.get("sub") if isinstance(order.get("sub"), Mapping) else {}
        names = [k for k in keys if k in value] + [k for k in value if k not in keys]
        return {k: in_order(value[k], sub.get(k)) for k in names}
    if _is_rows(value):
        return [{**{k: r[k] for k in keys if k in r}, **{k: v for k, v in r.items() if k not in keys}} for r in value]
    return value


def _action(item: Mapping[str, Any], dry_run: bool) -> str:
    action = str(item.get("action", ""))
    changed = action not in ("keep", "check")
    return f"would {action}" if dry_run and changed else action


def result(res: Mapping[str, Any], width: int = DEFAULT_WIDTH) -> list[str]:
    """One result (`Result.to_dict()`): its step, what it did to each object and why, then its facts."""
    items = res.get("items") or []
    dry = bool(res.get("dry_run"))
    n_changed = sum(1 for i in items if i.get("action") not in ("keep", "check"))
    verb = "would change" if dry else "changed"
    out = _wrap(f"{clean(res.get('step', '?'))}: {n_changed} {verb}, {len(items) - n_changed} already right or checked",
                width)
    if items:
        out += table(({"action": _action(i, dry), "object": i.get("target", ""), "why": i.get("detail", "")}
                      for i in items), width, 2)
    if res.get("facts"):
        out.append("")
        out += facts(in_order(res["facts"], res.get("order")), width, 2)
    return out


def record(rec: Mapping[str, Any], width: int = DEFAULT_WIDTH) -> str:
    """A stage's whole record (the `record` MIME data) as plain text, ending with a newline."""
    lines: list[str] = []
    if rec.get("dry_run"):
        lines += _wrap(f"{clean(rec.get('stage', '?'))}: PLAN, nothing was changed; "
                       "the actions below are what a run would do", width)
        lines.append("")
    for n, res in enumerate(rec.get("results") or []):
        if n:
            lines.append("")
        lines += result(res, width)
    return "\n".join(line.rstrip() for line in lines) + "\n"


def summary(rec: Mapping[str, Any]) -> str:
    """The record in one line, as the record cell shows it (the result itself is the cell above)."""
    changed, kept = rec.get("changed", 0), len(rec.get("kept") or [])
    verb = "would change" if rec.get("dry_run") else "changed"
    steps = ", ".join(clean(r.get("step", "")) for r in rec.get("results") or [])
    return (f"{clean(rec.get('stage', '?'))} recorded: {changed} {verb}, {kept} already right or checked"
            + (f" (results shown above: {steps})" if steps else ""))


def stage_text(rec: Optional[Mapping[str, Any]], width: int = DEFAULT_WIDTH) -> str:
    """`record(rec)`, or a line saying the stage recorded nothing (it failed before its last cell)."""
    if not rec:
        return "(the stage recorded no results: it stopped before its last cell; see its notebook)\n"
    return record(rec, width)
