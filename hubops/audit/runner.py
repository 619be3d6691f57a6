"""The chain runner: executes stage notebooks with papermill into outputs/RUN-ID/.

Writes `run.json` after every stage (who, where, when, project version and git commit,
parameter file digest, per-stage status, duration and changes, engine versions), stops at
the first failing stage and says which cell failed, and can resume a run from that stage.

The record is kept trustworthy: after each stage the notebook and the stage's entry are
redacted (no known secret value, in any usual encoding, stays in them; see `redact`), and every
save seals the manifest's hash chain (see `ledger`), so a later edit shows up in
`hubops record verify`.
"""
from __future__ import annotations

import collections
import getpass
import json
import logging
import os
import platform
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional

import nbformat

from hubops.audit import kernels, ledger, paramnote
from hubops.core.errors import HubopsError, ParameterError
from hubops.core.params import Loaded, load_params
from hubops.core.paths import OUTPUTS, PROJECT, RUNBOOKS
from hubops.core.record import read_record
from hubops.audit.redact import MASK, Redactor, known_secrets, session_redactor

log = logging.getLogger("hubops")

DEFAULT_TIMEOUT = 1800  # seconds per cell; image builds are the long ones


# -- private from the first byte --------------------------------------------------------------
# A run folder is made 0700 before anything is written into it, and every file in it is 0600.
# papermill writes a stage's notebook cell by cell, with whatever the cells print, into a private
# working folder beside outputs/ (never under it); the notebook enters the run folder only once it
# is redacted. A runner killed mid-stage leaves its partial notebook there, unpublished; `--resume`
# redacts it into the record.
def work_root() -> Path:
    """Where stage notebooks are written while they run: $HUBOPS_WORK, or `.outputs-work` beside
    the outputs folder (0700)."""
    return Path(os.environ.get("HUBOPS_WORK") or OUTPUTS.parent / f".{OUTPUTS.name}-work")


def _private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def _work_path(run: "Run", name: str) -> Path:
    _private_dir(work_root())
    return _private_dir(work_root() / run.id) / f"{name}.ipynb"


def _write_private(path: Path, data: bytes) -> None:
    """Write `path` created 0600 before its first byte (through a temporary file beside it)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def tighten(run_dir: Path) -> None:
    """The run folder 0700, its folders 0700 and its files 0600 (what other writers, such as the
    report, made with the process's umask; they were never readable through the 0700 folder)."""
    try:
        os.chmod(run_dir, 0o700)
        for f in run_dir.rglob("*"):
            if not f.is_symlink():
                os.chmod(f, 0o700 if f.is_dir() else 0o600)
    except OSError as e:  # a record someone else owns (read with `hubops report`): say so, go on
        log.warning("could not make %s private: %s", run_dir, e.strerror)


def _publish(work: Path, out: Path, redact: Optional[Redactor]) -> None:
    """Redact a stage notebook in its private working path, then move it into the run folder."""
    if not work.exists():
        return
    if work.stat().st_size == 0:  # papermill never wrote it
        work.unlink()
        return
    r = redact if redact is not None else session_redactor()
    try:
        r.redact_notebook(work)
    except (OSError, ValueError) as e:  # never publish a notebook we could not clean
        log.warning("could not redact %s (%s); it is not added to the record", work.name, e)
        work.unlink(missing_ok=True)
        return
    os.chmod(work, 0o600)
    try:
        os.replace(work, out)
    except OSError:  # another filesystem: copy (0600 from the first byte), then drop the work copy
        _write_private(out, work.read_bytes())
        work.unlink()


def recover_leftovers(run: "Run", redact: Optional[Redactor]) -> list[str]:
    """Notebooks a killed runner left in the private working folder: redacted into the run
    folder (what the stage did up to the kill is part of the record). Returns their names."""
    d = work_root() / run.id
    found = []
    if d.is_dir():
        for work in sorted(d.glob("*.ipynb")):
            paramnote.mark(work, run.manifest)  # the defaults cell says it is not what the run used
            _publish(work, run.dir / work.name, redact)
            found.append(work.name)
        for tmp in d.glob("*"):  # half-written temporary files of a redaction or a papermill save
            tmp.unlink(missing_ok=True)
        try:
            d.rmdir()
        except OSError:
            pass
    tighten(run.dir)
    return found


def _runner_alive(manifest: dict) -> bool:
    """Whether the runner that recorded `manifest` still runs (on this machine; a run from another
    machine counts as alive: it cannot be told from here)."""
    if manifest.get("machine") != platform.node():
        return True
    try:
        os.kill(int(manifest.get("runner_pid") or 0), 0)
    except (OSError, ValueError):
        return False
    return bool(manifest.get("runner_pid"))


def redact_stale_leftovers(p: Loaded, redact: Optional[Redactor]) -> list[str]:
    """Notebooks that killed runners of this deployment left in the private working folder, redacted
    where they are (not published: `--resume RUN` still adds them to their run's record). So nothing
    unredacted outlives the runner that wrote it beyond the next run of the deployment. Returns the
    run IDs whose leftovers were redacted."""
    root = work_root()
    done = []
    if not root.is_dir():
        return done
    r = redact if redact is not None else session_redactor()
    for d in sorted(x for x in root.iterdir() if x.is_dir()):
        try:
            manifest = json.loads((OUTPUTS / d.name / "run.json").read_text())
        except (OSError, ValueError):
            continue
        if manifest.get("deployment") != p.deployment or _runner_alive(manifest):
            continue
        for work in sorted(d.glob("*.ipynb")):
            try:
                r.redact_notebook(work)
                os.chmod(work, 0o600)
            except (OSError, ValueError) as e:  # one we cannot clean is removed: never kept unredacted
                log.warning("could not redact the leftover %s of run %s (%s); removed", work.name, d.name, e)
                work.unlink(missing_ok=True)
        done.append(d.name)
    return done


def ops_runbooks() -> list[str]:
    """The day-2 runbooks: runbooks/ops/NAME.ipynb."""
    return sorted(f.stem for f in (RUNBOOKS / "ops").glob("*.ipynb"))


def ops_runbook(name: str) -> Path:
    path = RUNBOOKS / "ops" / f"{name}.ipynb"
    if not path.is_file():
        raise HubopsError(f"no runbook {name!r}; day-2 runbooks are {', '.join(ops_runbooks())}")
    return path


def deploy_stages() -> list[Path]:
    """The deploy chain: runbooks/NN-*.ipynb in order."""
    return sorted(RUNBOOKS.glob("[0-9][0-9]-*.ipynb"))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _git_commit() -> Optional[str]:
    try:
        out = subprocess.run(["git", "-C", str(PROJECT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(PROJECT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


@dataclass
class StageOutcome:
    name: str
    status: str  # ok | failed | skipped
    notebook: Path
    entry: dict[str, Any]


class Run:
    """One run directory and its manifest."""

    def __init__(self, run_dir: Path, manifest: dict[str, Any]):
        self.dir = run_dir
        self.manifest = manifest
        # A day-2 runbook's --set values as given, for this process only: the manifest keeps them
        # redacted (a secret given as a runbook parameter must not reach run.json).
        self.runbook_values: dict[str, Any] = {}

    @property
    def id(self) -> str:
        return self.manifest["run_id"]

    def save(self) -> None:
        """Write run.json, sealing the hash chain over its stage entries first."""
        ledger.seal(self.manifest)
        _write_private(self.dir / "run.json", (json.dumps(self.manifest, indent=2) + "\n").encode())

    @classmethod
    def load(cls, run_id: str) -> "Run":
        d = OUTPUTS / run_id
        try:
            return cls(d, json.loads((d / "run.json").read_text()))
        except OSError:
            raise HubopsError(f"no run {run_id}: {d}/run.json does not exist (see `ls {OUTPUTS}`)") from None
        except ValueError as e:
            raise HubopsError(f"run {run_id}: {d}/run.json is not valid JSON ({e}); "
                              f"see `hubops record verify {run_id}`") from None


def _rel(path: Path) -> str:
    """A runbook's path as recorded: relative to the project when it is in it."""
    try:
        return str(path.relative_to(PROJECT))
    except ValueError:
        return str(path)


def new_run(p: Loaded, *, kind: str, stages: list[Path]) -> Run:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    OUTPUTS.mkdir(parents=True, exist_ok=True)
    # Two runs of one deployment and kind may start within the same second: the second gets -2, ...
    for n in range(1, 1000):
        run_id = f"{stamp}-{p.deployment}-{kind}" + (f"-{n}" if n > 1 else "")
        d = OUTPUTS / run_id
        try:
            d.mkdir(exist_ok=False, mode=0o700)
            break
        except FileExistsError:
            continue
    os.chmod(d, 0o700)  # whatever the umask: nothing in it is readable by others, from the first byte
    from hubops import __version__

    manifest = {
        "run_id": run_id,
        "kind": kind,
        "deployment": p.deployment,
        "status": "running",
        "who": getpass.getuser(),
        "machine": platform.node(),
        "runner_pid": os.getpid(),  # with `machine`: tells a run whose runner was killed from one still running
        "started": _now(),
        "finished": None,
        "hubops_version": __version__,
        "git_commit": _git_commit(),
        "params_file": str(p.source),
        "params_sha256": p.digest,
        "engines": {},
        "stages": [{"name": s.stem, "runbook": _rel(s), "status": "pending"} for s in stages],
    }
    run = Run(d, manifest)
    run.save()
    return run


def redactor(p: Loaded) -> Redactor:
    """A redactor for the deployment's secrets as they are now (a stage may just have created
    some); what it learns is added to the process's redactor, which the CLI's log handler uses."""
    r = Redactor(known_secrets(p))
    session_redactor().merge(r)
    r.merge(session_redactor())
    return r


def _seal_stage(run: Run, entry: dict[str, Any], out: Path, redact: Optional[Redactor],
                work: Optional[Path] = None) -> None:
    """Redact a finished (or stopped) stage's notebook and entry, then record the notebook's digest.
    With `work`, the notebook is redacted in its private working path and then moved to `out`."""
    # The runbook's defaults cell says that this run's values are in the injected cell after it.
    paramnote.mark(work if work is not None and work.exists() else out, run.manifest)
    if work is not None and work.exists():
        _publish(work, out, redact)
    elif redact is not None:
        try:
            redact.redact_notebook(out)
        except (OSError, ValueError) as e:  # never keep a notebook we could not clean
            log.warning("could not redact %s (%s); removing it from the record", out.name, e)
            out.unlink(missing_ok=True)
    if redact is not None:
        clean = redact.redact_obj({k: v for k, v in entry.items() if k not in ("prev_sha256", "entry_sha256")})
        entry.update(clean)
    if out.exists():
        entry["notebook_sha256"] = ledger.notebook_digest(out)


def execute_stage(run: Run, index: int, *, params_file: Path, dry_run: bool, timeout: int,
                  redact: Optional[Redactor] = None, p: Optional[Loaded] = None,
                  kernel: Optional[kernels.Prestarted] = None) -> StageOutcome:
    """Run one stage notebook into the run directory and record its outcome in run.json.

    With `p`, the deployment's secrets are read again after the stage and redacted from its
    notebook and entry; `redact` adds to them (or is used alone without `p`). With `kernel`, the
    stage runs in that kernel started ahead (see `kernels`), which is shut down after it."""
    import papermill as pm
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    entry = run.manifest["stages"][index]
    src = PROJECT / entry["runbook"]
    out = run.dir / f"{entry['name']}.ipynb"
    # A stage run again (resume) starts a fresh entry: nothing from the failed attempt is kept.
    for stale in ("error", "notebook_sha256", "changed", "changes", "dry_run", "kept", "duration_s", "cells_s",
                  "finished"):
        entry.pop(stale, None)
    entry.update(status="running", started=_now(), notebook=out.name)
    run.save()
    work = _work_path(run, entry["name"])
    _write_private(work, b"")  # papermill truncates it and keeps its mode: 0600 from the first cell
    t0 = time.monotonic()
    error: Optional[dict[str, Any]] = None
    km = kernel.take() if kernel is not None else None
    try:
        pm.execute_notebook(
            str(src), str(work),
            parameters={**run.manifest.get("runbook_parameters", {}), **run.runbook_values,
                        "params_file": str(params_file),
                        "dry_run": dry_run},
            kernel_name=kernels.KERNEL,
            cwd=str(PROJECT),
            execution_timeout=timeout,
            progress_bar=False,
            log_output=False,
            report_mode=False,
            extra_arguments=list(kernels.KERNEL_ARGS),
            **({"km": km} if km is not None else {}),
        )
    except pm.PapermillExecutionError as e:
        error = {"cell": e.exec_count, "ename": e.ename, "evalue": e.evalue}
    except CellTimeoutError as e:
        # papermill does not mark a timed-out cell in the saved notebook: find it ourselves.
        reason = f"the cell ran longer than the stage timeout ({timeout} s) and was stopped"
        error = {"cell": _mark_stopped_cell(work, reason), "ename": "CellTimeoutError", "evalue": reason}
        log.debug("timeout detail: %s", e)
    except DeadKernelError as e:
        error = {"cell": _mark_stopped_cell(work, f"the kernel died: {e}"), "ename": "DeadKernelError",
                 "evalue": str(e)}
    finally:
        kernels.shutdown(km)
    entry["duration_s"] = round(time.monotonic() - t0, 2)
    entry["finished"] = _now()
    if p is not None:  # the secrets as they are after the stage: it may have made new ones
        fresh = redactor(p)
        if redact is not None:
            fresh.merge(redact)
        redact = fresh
    nb = nbformat.read(work, as_version=4) if work.exists() and work.stat().st_size else None
    rec = read_record(nb) if nb is not None else None
    if nb is not None:  # the stage's own work; the rest of duration_s is kernel start and papermill
        entry["cells_s"] = round(sum((c.metadata.get("papermill") or {}).get("duration") or 0 for c in nb.cells), 2)
    if error is None and rec is None:
        error = {"cell": None, "ename": "NoRecord", "evalue": "the stage finished without recording its results"}
    if rec is not None:
        entry["changed"] = rec["changed"]
        entry["changes"] = rec["changes"]
        entry["dry_run"] = rec["dry_run"]
        entry["kept"] = len(rec["kept"])
        if entry["name"].endswith("preflight"):
            run.manifest["engines"] = {
                host: {"engine": f.get("engine"), "api": f.get("api"), "os": f.get("os")}
                for r in rec["results"] for host, f in r["facts"].items() if isinstance(f, dict) and "engine" in f
            }
    if error is not None:
        entry["status"] = "failed"
        entry["error"] = error
    else:
        entry["status"] = "ok"
    _seal_stage(run, entry, out, redact, work=work)
    run.save()
    tighten(run.dir)
    return StageOutcome(entry["name"], entry["status"], out, entry)


def _mark_stopped_cell(path: Path, reason: str) -> Optional[int]:
    """Find the cell a timed-out or dead kernel stopped in, mark it failed in the saved notebook
    (papermill leaves it looking finished), and return its execution count."""
    if not path.exists():
        return None
    nb = nbformat.read(path, as_version=4)
    executed = [c for c in nb.cells if c.cell_type == "code" and c.get("execution_count")]
    if not executed:
        return None
    # The interrupted cell carries the KeyboardInterrupt nbclient sent; else it is the last one run.
    cell = next((c for c in reversed(executed)
                 if any(o.get("output_type") == "error" for o in c.get("outputs", []))), executed[-1])
    cell.metadata.setdefault("papermill", {}).update(exception=True, status="failed")
    cell.outputs.append(nbformat.v4.new_output("error", ename="StageStopped", evalue=reason, traceback=[reason]))
    nb.metadata.setdefault("papermill", {})["exception"] = True
    nbformat.write(nb, path)
    return cell.execution_count


def run_chain(
    params_file: str | os.PathLike,
    *,
    dry_run: bool = False,
    resume: Optional[str] = None,
    only: Optional[list[str]] = None,
    timeout: int = DEFAULT_TIMEOUT,
    on_stage: Callable[[str, str, dict], None] = lambda name, event, entry: None,
    runbook: Optional[str] = None,
    runbook_parameters: Optional[dict[str, Any]] = None,
) -> Run:
    """Run the deploy chain, or one day-2 runbook (`runbook="remove-node"`, with its parameters),
    or resume a run. Returns the run; its manifest says how it went."""
    p = load_params(params_file)  # refused here, before any notebook or API call
    os.environ["HUBOPS_HEADLESS"] = "1"  # the stages' kernels inherit it: plain progress lines, no widgets
    if resume:
        run = Run.load(resume)
        check = ledger.verify_run(run.dir)
        if check.first is not None and check.first.kind == "unsealed":
            log.warning("run %s has no hash chain (recorded by an older hubops); resuming seals it as it is now", resume)
        elif not check.ok:
            raise HubopsError(f"run {resume}'s record does not verify, so it cannot be resumed: {check.verdict}; "
                              f"see `hubops record verify {resume}`, and start a new run")
        if run.manifest["params_sha256"] != p.digest:
            raise ParameterError(
                f"{p.source}: the parameter file changed since run {resume} began "
                f"(sha256 {run.manifest['params_sha256'][:12]} then, {p.digest[:12]} now); start a new run instead"
            )
        dry_run = run.manifest["kind"] == "plan"
        hidden = sorted(k for k, v in (run.manifest.get("runbook_parameters") or {}).items()
                        if isinstance(v, str) and MASK in v)
        if hidden:
            raise HubopsError(f"run {resume}: the runbook parameter(s) {', '.join(hidden)} held a secret, which the "
                              "record keeps redacted, so the run cannot be resumed with them; start a new run with "
                              "the same --set values")
        # What a killed runner left unpublished is redacted into the record before anything runs.
        for name in recover_leftovers(run, redactor(p)):
            log.info("run %s: the notebook %s left by the stopped runner was redacted into the record", run.id, name)
        run.manifest["status"] = "running"
        run.manifest["runner_pid"] = os.getpid()
        run.manifest.setdefault("resumed", []).append(_now())
    elif runbook:
        path = ops_runbook(runbook)
        run = new_run(p, kind="plan" if dry_run else runbook, stages=[path])
        run.runbook_values = dict(runbook_parameters or {})
        run.manifest["runbook_parameters"] = redactor(p).redact_obj(dict(runbook_parameters or {}))
    else:
        stages = deploy_stages()
        if only:
            stages = [s for s in stages if s.stem in only or s.stem[:2] in only]
            if not stages:
                raise HubopsError(f"no stage matches {only}; stages are {[s.stem for s in deploy_stages()]}")
        run = new_run(p, kind="plan" if dry_run else "deploy", stages=stages)
    run.save()
    if not resume:
        for stale in redact_stale_leftovers(p, redactor(p)):
            log.info("run %s: notebooks its stopped runner left were redacted where they are; "
                     "`hubops deploy --resume %s` adds them to its record", stale, stale)
    t0 = time.monotonic()
    failed = False
    todo = [i for i, entry in enumerate(run.manifest["stages"]) if entry["status"] != "ok"]
    # Each stage's kernel is started while the stages before it run (see `kernels`).
    ahead = collections.deque(kernels.Prestarted(PROJECT) for _ in todo[:kernels.AHEAD])
    try:
        for n, i in enumerate(todo):
            entry = run.manifest["stages"][i]
            on_stage(entry["name"], "start", entry)
            kernel = ahead.popleft() if ahead else None
            if n + kernels.AHEAD < len(todo):
                ahead.append(kernels.Prestarted(PROJECT))
            outcome = execute_stage(run, i, params_file=p.source, dry_run=dry_run, timeout=timeout, p=p,
                                    kernel=kernel)
            on_stage(entry["name"], outcome.status, outcome.entry)
            if outcome.status != "ok":
                failed = True
                break
    except BaseException as e:  # Ctrl-C or a crash of the runner itself: the record must say so
        try:
            redact: Optional[Redactor] = redactor(p)
        except Exception:  # noqa: BLE001 - fall back to what this process already knows
            redact = session_redactor()
        for entry in run.manifest["stages"]:
            if entry["status"] == "running":
                entry["status"] = "interrupted"
                entry["error"] = {"cell": None, "ename": type(e).__name__,
                                  "evalue": "the run was interrupted while this stage ran; what it had applied is "
                                            "in its notebook up to the last finished cell"}
                _seal_stage(run, entry, run.dir / entry.get("notebook", f"{entry['name']}.ipynb"), redact,
                            work=_work_path(run, entry["name"]))
        run.manifest["status"] = "interrupted"
        run.manifest["finished"] = _now()
        run.save()
        try:
            from hubops.audit.report import write_report

            write_report(run, redactor=redact)
            tighten(run.dir)
        except Exception as report_error:  # noqa: BLE001 - the interruption is what the caller must see
            log.warning("could not write the report of the interrupted run: %s", report_error)
        raise
    finally:
        for unused in ahead:  # a stage failed, or the run was interrupted, before their stages
            unused.discard()
    run.manifest["status"] = "failed" if failed else "ok"
    run.manifest["finished"] = _now()
    run.manifest["duration_s"] = round(run.manifest.get("duration_s", 0) + time.monotonic() - t0, 2)
    run.manifest["changed"] = sum(s.get("changed", 0) for s in run.manifest["stages"])
    run.save()
    from hubops.audit.report import write_report

    write_report(run, redactor=redactor(p))
    tighten(run.dir)
    try:
        (work_root() / run.id).rmdir()
    except OSError:
        pass
    return run
