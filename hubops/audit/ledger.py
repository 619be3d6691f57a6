"""The record as a tamper-evident log: a hash chain over the stage entries of run.json.

Each stage entry carries
- ``notebook_sha256``: the digest of its executed notebook's bytes (once it has run);
- ``prev_sha256``: the ``entry_sha256`` of the entry before it, or for the first entry the
  run's *genesis* digest, which covers the run's header (run_id, kind, deployment, parameter
  file and its digest, hubops version and git commit, when it started, who and where);
- ``entry_sha256``: sha256 over ``prev_sha256`` and a canonical JSON of the entry's other fields.

So changing a byte of a notebook, editing a field of an entry, removing an entry or reordering
entries all break the chain at a place `verify_run` names. The runner seals the chain at every
save, so a resumed run stays valid; resuming a run whose record does not verify is refused.

A chain anyone can recompute proves no authorship: it detects edits, not a forger who reruns
this code. Keep the head digest (`hubops record show` prints it) somewhere else, e.g. in the
change ticket, to pin a run's record as it was.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

VERSION = 1
HEADER_FIELDS = ("run_id", "kind", "deployment", "params_file", "params_sha256", "hubops_version",
                 "git_commit", "started", "who", "machine", "runbook_parameters")
_SEAL = ("entry_sha256",)  # the fields an entry's own digest does not cover


def canonical(obj: Any) -> bytes:
    """The canonical JSON of `obj`: sorted keys, no white space, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def _sha(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part)
    return h.hexdigest()


def genesis(manifest: dict[str, Any]) -> str:
    """The digest the chain starts from: it covers the run's header fields."""
    header = {k: manifest.get(k) for k in HEADER_FIELDS}
    return _sha(f"hubops-ledger-v{VERSION}\n".encode(), canonical(header))


def entry_digest(entry: dict[str, Any]) -> str:
    """sha256 over the entry's `prev_sha256` and the canonical JSON of its fields (all but
    `entry_sha256` itself; `prev_sha256` is one of the fields, so the link is covered too)."""
    fields = {k: v for k, v in entry.items() if k not in _SEAL}
    return _sha(str(entry.get("prev_sha256")).encode(), b"\n", canonical(fields))


def seal(manifest: dict[str, Any]) -> str:
    """(Re)compute the chain over the manifest's stage entries, in place; returns the head digest."""
    prev = genesis(manifest)
    g = prev
    for entry in manifest.get("stages", []):
        entry.pop("entry_sha256", None)
        entry["prev_sha256"] = prev
        entry["entry_sha256"] = prev = entry_digest(entry)
    manifest["ledger"] = {"version": VERSION, "algorithm": "sha256", "genesis": g, "head": prev,
                          "stages": [e.get("name") for e in manifest.get("stages", [])]}
    return prev


def notebook_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class Problem:
    kind: str  # unreadable | unsealed | header-edited | notebook-changed | notebook-missing |
    #            entry-edited | entry-removed | reordered | extra-notebook | summary
    stage: Optional[str]
    detail: str

    def __str__(self) -> str:
        return f"{self.stage}: {self.detail}" if self.stage else self.detail


@dataclass
class VerifyReport:
    run_id: str
    run_dir: Path
    stages: int = 0
    head: Optional[str] = None
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first(self) -> Optional[Problem]:
        return self.problems[0] if self.problems else None

    @property
    def verdict(self) -> str:
        """One line: intact, with the head digest; or the first problem and how many more."""
        if self.ok:
            return f"intact: {self.stages} stage entries and their notebooks match the hash chain (head {self.head})"
        more = len(self.problems) - 1
        return f"NOT INTACT: {self.first}" + (f" (and {more} more problem{'s' if more > 1 else ''})" if more else "")

    def lines(self) -> list[str]:
        return [self.verdict] + [f"  · {p}" for p in self.problems[1:]]


def verify_run(run_dir: str | Path) -> VerifyReport:
    """Recompute the record's hash chain and the notebooks' digests; list what does not match,
    in the order of the stages (the first problem names the first stage that was changed)."""
    run_dir = Path(run_dir)
    report = VerifyReport(run_id=run_dir.name, run_dir=run_dir)
    try:
        m = json.loads((run_dir / "run.json").read_text())
        entries = list(m["stages"])
        report.run_id = m.get("run_id", run_dir.name)
    except (OSError, ValueError, KeyError, TypeError) as e:
        report.problems.append(Problem("unreadable", None, f"run.json cannot be read as a run manifest: {e}"))
        return report
    report.stages = len(entries)
    ledger = m.get("ledger")
    if not isinstance(ledger, dict) or "genesis" not in ledger:
        report.problems.append(Problem("unsealed", None, "the record has no hash chain (written before hubops "
                                                         "sealed its records); it cannot be verified"))
        _extra_notebooks(report, entries)
        return report
    report.head = ledger.get("head")
    g = genesis(m)
    if ledger.get("genesis") != g:
        report.problems.append(Problem("header-edited", None, "the run's header (" + ", ".join(HEADER_FIELDS) +
                                       ") was changed after it was recorded"))
    g_recorded = ledger.get("genesis")
    by_hash = {e.get("entry_sha256"): i for i, e in enumerate(entries) if isinstance(e, dict)}
    names_now = [e.get("name") for e in entries if isinstance(e, dict)]
    removed = [n for n in ledger.get("stages", []) if n not in names_now]
    removed_reported = False

    def name_of(i: int) -> str:
        return str(entries[i].get("name")) if 0 <= i < len(entries) else "?"

    for i, e in enumerate(entries):
        if not isinstance(e, dict):
            report.problems.append(Problem("entry-edited", f"stage #{i + 1}", "the entry is not a JSON object"))
            continue
        name = str(e.get("name"))
        # 1. The notebook's bytes.
        nb_sha, nb_name = e.get("notebook_sha256"), e.get("notebook")
        if nb_sha and nb_name:
            nb = run_dir / nb_name
            if not nb.is_file():
                report.problems.append(Problem("notebook-missing", name, f"its notebook {nb_name} is missing"))
            elif notebook_digest(nb) != nb_sha:
                report.problems.append(Problem("notebook-changed", name,
                                               f"its notebook {nb_name} was changed after it was recorded "
                                               f"(sha256 {notebook_digest(nb)[:16]}…, recorded {nb_sha[:16]}…)"))
        # 2. The entry itself.
        if "entry_sha256" not in e or "prev_sha256" not in e:
            report.problems.append(Problem("entry-edited", name, "the entry has no digest: it was added or "
                                                                "rewritten after the record was sealed"))
            continue
        if entry_digest(e) != e["entry_sha256"]:
            report.problems.append(Problem("entry-edited", name, "its entry in run.json was edited after it was "
                                                                "recorded (fields no longer match entry_sha256)"))
        # 3. Its link to the entry before it.
        expected = g_recorded if i == 0 else entries[i - 1].get("entry_sha256") if isinstance(entries[i - 1], dict) else None
        prev = e["prev_sha256"]
        if prev == expected:
            continue
        before = "the start of the run" if i == 0 else name_of(i - 1)
        if prev == g_recorded:
            report.problems.append(Problem("reordered", name, f"entries were reordered: this was the first stage, "
                                                              f"it now comes after {before}"))
        elif prev in by_hash:
            report.problems.append(Problem("reordered", name, f"entries were reordered: this stage was recorded "
                                                              f"after {name_of(by_hash[prev])}, it now comes after {before}"))
        else:
            which = (f"stage {', '.join(map(str, removed))}" if removed and not removed_reported
                     else "an entry")
            removed_reported = removed_reported or bool(removed)
            report.problems.append(Problem("entry-removed", name, f"{which} recorded before this stage was removed "
                                                                  f"or replaced (the link to it is broken)"))
    # 4. The end of the chain: entries removed after the last one left.
    last = entries[-1].get("entry_sha256") if entries and isinstance(entries[-1], dict) else g_recorded
    if report.head != last:
        if report.head in by_hash:
            report.problems.append(Problem("reordered", name_of(by_hash[report.head]),
                                           "entries were reordered: this was the last stage recorded"))
        else:
            which = f"stage {', '.join(map(str, removed))}" if removed and not removed_reported else "the last entries"
            report.problems.append(Problem("entry-removed", None, f"{which} at the end of the run was removed "
                                                                  f"(the recorded head of the chain is gone)"))
    # 5. Notebooks the manifest does not mention, and a summary that contradicts the stages.
    _extra_notebooks(report, entries)
    _summary(report, m, entries)
    return report


def _extra_notebooks(report: VerifyReport, entries: list) -> None:
    listed = {e.get("notebook") for e in entries if isinstance(e, dict)}
    for nb in sorted(report.run_dir.glob("*.ipynb")):
        if nb.name not in listed:
            report.problems.append(Problem("extra-notebook", nb.stem, f"notebook {nb.name} is in the run folder "
                                                                     f"but not in the record"))


def _summary(report: VerifyReport, m: dict, entries: list) -> None:
    stages = [e for e in entries if isinstance(e, dict)]
    if m.get("status") == "ok" and any(e.get("status") != "ok" for e in stages):
        report.problems.append(Problem("summary", None, "the run says ok but not every stage is ok"))
    if "changed" in m and m.get("status") in ("ok", "failed"):
        total = sum(e.get("changed", 0) or 0 for e in stages)
        if m["changed"] != total:
            report.problems.append(Problem("summary", None, f"the run says {m['changed']} changes but its stages "
                                                            f"add up to {total}"))
