"""ops/announce: a message on every user's hub pages (or on chosen users' pages), with an expiry;
or the announcements taken down. remove-node uses the same notices to warn the users it moves.

Changes on the cluster: the hub's notices, in its data folder, or with storage.hub.mode postgres in
its database so that they follow the hub (hubops/hub/notices.py); read by the hub on each page; no
restart, users' servers untouched. Undo: run it again with `clear=true`.
"""
from __future__ import annotations

import time
from typing import Any

from hubops.core.engine import Clients
from hubops.core.errors import ParameterError
from hubops.core.params import Loaded
from hubops.core.result import Result
from hubops.hub import running

MAX_CHARS = 2000  # a notice is a sentence or two, not a page


def _until(note: Any) -> float:
    return note.get("until", float("inf")) if isinstance(note, dict) else float("inf")


def _text(note: Any) -> str:
    return note.get("text", "") if isinstance(note, dict) else str(note)


def plan(current: dict[str, Any], *, message: str, users: list[str], hours: float, clear: bool,
         now: float) -> tuple[dict[str, Any], list[tuple[str, str, str]]]:
    """(the notices to write, [(action, target, detail)]) from the current ones (pure). Expired
    notices are dropped; `clear` takes down those of `users` (everyone's when none are named)."""
    targets = users or ["*"]
    live = {k: v for k, v in current.items() if _until(v) > now}
    changes = [("remove", f"notice for {k}", "expired") for k in current if k not in live]
    if clear:
        drop = set(live) if not users else set(users) & set(live)
        changes += [("remove", f"notice for {k}", f"taken down: {_text(live[k])[:60]!r}") for k in sorted(drop)]
        return {k: v for k, v in live.items() if k not in drop}, changes
    note = {"text": message, "until": round(now + hours * 3600)}
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(note["until"]))
    for k in targets:
        who = "everyone" if k == "*" else k
        if _text(live.get(k, "")) == message:
            changes.append(("update", f"notice for {who}", f"same text, shown until {when}"))
        else:
            changes.append(("create" if k not in live else "update", f"notice for {who}",
                            f"{message[:60]!r}, shown until {when}"))
    return {**live, **{k: note for k in targets}}, changes


def announce(p: Loaded, clients: Clients, *, message: str = "", users: str = "", hours: float = 24,
             clear: bool = False, dry_run: bool = False) -> Result:
    """Put `message` on the hub pages of `users` (comma-separated; everyone when empty) for
    `hours`, or take notices down with `clear`."""
    names = [u.strip() for u in users.split(",") if u.strip()]
    unknown = [u for u in names if u not in p.users]
    if unknown:
        raise ParameterError(f"users: {', '.join(unknown)} not in the userlist ({p.auth.userlist}); "
                             "name users who can log in, or leave users empty for everyone")
    if not clear:
        if not message.strip():
            raise ParameterError("message: empty; give the text to show (or clear=true to take notices down)")
        if len(message) > MAX_CHARS:
            raise ParameterError(f"message: {len(message)} characters; keep it under {MAX_CHARS}")
        if not 0 < hours <= 24 * 90:
            raise ParameterError(f"hours: {hours}; give a number of hours above 0 and at most {24 * 90} (90 days)")
    r = Result("announce", dry_run=dry_run)
    current = running.announcements(p, clients)
    new, changes = plan(current, message=message.strip(), users=names, hours=hours, clear=clear, now=time.time())
    for action, target, detail in changes:
        r.change(action, target, detail)
    if not changes:
        r.keep("announcements", "none shown, none to take down")
    r.facts["shown"] = {("everyone" if k == "*" else k): _text(v) for k, v in new.items()}
    if dry_run or new == current:
        return r
    running.announce(p, clients, new)
    return r
