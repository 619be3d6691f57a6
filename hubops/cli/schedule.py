"""Scheduled day-2 runs: `renew-tls` every day, without a person.

`hubops schedule renew-tls -p FILE` writes (or prints) either a systemd service + timer pair or a
cron.d entry that runs, once a day,

    flock --nonblock --conflict-exit-code 75 LOCK  HUBOPS ops renew-tls -p FILE

in hubops's project directory, with the records going where this machine's records go
(`HUBOPS_OUTPUTS`). `renew-tls` is a no-op while the certificate has more than `renew_days` left,
so a daily run asks the ACME server nothing on most days. The lock (one file per deployment, under
/run/lock) keeps two runs from overlapping: a run that finds the lock taken exits with 75 at once
(systemd counts that as success). Secrets the parameter file takes from the environment
(`{env: NAME}`) are not in a timer's environment: name a file that sets them with `--env-file`
(systemd `EnvironmentFile=`, cron sources it), or use `{file: PATH}` references.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from hubops.core.errors import ScheduleError
from hubops.core.params import Loaded, SecretRef

RUNBOOKS = ("renew-tls",)
LOCK_DIR = Path("/run/lock")
LOCKED_EXIT = 75  # EX_TEMPFAIL: another run holds the lock; nothing was done
SYSTEMD_DIR = Path("/etc/systemd/system")
CRON_DIR = Path("/etc/cron.d")
_TIME_RE = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


@dataclass
class Schedule:
    """What runs (argv, in `workdir`, with `env`) and the files that make it run daily."""

    name: str  # hubops-renew-tls-DEPLOYMENT
    argv: list[str]
    workdir: Path
    env: dict[str, str]
    env_file: Path | None
    lock: Path
    files: dict[str, str] = field(default_factory=dict)  # file name -> content

    @property
    def command(self) -> str:
        return shlex.join(self.argv)


def _hubops_exe() -> list[str]:
    """How to run this hubops: the `hubops` script beside this Python, else `python -m hubops.cli.main`."""
    exe = Path(sys.executable).with_name("hubops")
    if exe.is_file() and os.access(exe, os.X_OK):
        return [str(exe)]
    return [sys.executable, "-m", "hubops.cli.main"]


def _env_refs(p: Loaded) -> list[tuple[str, str]]:
    """(key path, variable) of every {env: NAME} reference in the parameters."""
    found = []

    def walk(obj, path: str) -> None:
        if isinstance(obj, SecretRef):
            if obj.env:
                found.append((path, obj.env))
            return
        fields = getattr(type(obj), "model_fields", None)
        if fields:
            for k in fields:
                walk(getattr(obj, k), f"{path}.{k}" if path else k)
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                walk(v, f"{path}[{i}]")
        elif isinstance(obj, dict):
            for k, v in obj.items():
                walk(v, f"{path}.{k}")

    walk(p.params, "")
    return found


def plan(p: Loaded, runbook: str = "renew-tls", *, at: str = "03:17", env_file: Path | None = None,
         lock: Path | None = None, outputs: Path | None = None) -> Schedule:
    """The schedule for `runbook` of the deployment in `p` (nothing is written)."""
    from hubops.audit import runner

    if runbook not in RUNBOOKS:
        raise ScheduleError(f"{runbook!r} cannot be scheduled; schedulable runbooks: {', '.join(RUNBOOKS)}")
    if runbook == "renew-tls" and p.tls.mode == "files":
        raise ScheduleError(f"{p.source}: tls.mode files: hubops does not renew a certificate it did not issue, "
                            "so there is nothing to schedule; use tls.mode acme (or self-signed)")
    m = _TIME_RE.match(at)
    if not m:
        raise ScheduleError(f"--at {at!r}: give the daily time as HH:MM (24 h, local time), e.g. 03:17")
    refs = _env_refs(p)
    if refs and env_file is None:
        listed = ", ".join(f"{k} (env {v})" for k, v in refs)
        raise ScheduleError(
            f"{p.source}: {listed} come(s) from the environment, which a scheduled run does not have: pass "
            "--env-file FILE (a root-only file of NAME=VALUE lines) or use {file: PATH} references instead")
    if env_file is not None:
        env_file = Path(os.path.abspath(env_file))
        if not env_file.is_file():
            raise ScheduleError(f"--env-file {env_file}: no such file (NAME=VALUE lines, mode 0600)")
    params_file = Path(os.path.abspath(p.source))
    lock = Path(os.path.abspath(lock)) if lock else LOCK_DIR / f"hubops-{runbook}-{p.deployment}.lock"
    out = Path(os.path.abspath(outputs or runner.OUTPUTS))
    argv = ["/usr/bin/flock" if Path("/usr/bin/flock").exists() else (shutil.which("flock") or "flock"),
            "--nonblock", "--conflict-exit-code", str(LOCKED_EXIT), str(lock),
            *_hubops_exe(), "ops", runbook, "-p", str(params_file)]
    for a in argv:
        if any(ch in a for ch in "\n\r\0"):
            raise ScheduleError(f"{a!r}: a path with a line break cannot go into a unit or crontab")
    s = Schedule(name=f"hubops-{runbook}-{p.deployment}", argv=argv, workdir=runner.PROJECT,
                 env={"HUBOPS_OUTPUTS": str(out)}, env_file=env_file, lock=lock)
    hour, minute = int(m.group(1)), int(m.group(2))
    s.files = {f"{s.name}.service": _service(s, p, runbook), f"{s.name}.timer": _timer(s, p, runbook, hour, minute),
               s.name: _cron(s, p, runbook, hour, minute)}
    return s


def _sd(v: str) -> str:
    return v.replace("%", "%%")  # systemd expands % specifiers


def _service(s: Schedule, p: Loaded, runbook: str) -> str:
    env = "".join(f'Environment="{_sd(k)}={_sd(v)}"\n' for k, v in s.env.items())
    env += f"EnvironmentFile={_sd(str(s.env_file))}\n" if s.env_file else ""
    return (
        f"# Written by `hubops schedule {runbook}` for deployment {p.deployment} ({p.source}).\n"
        "[Unit]\n"
        f"Description=hubops {runbook} for deployment {p.deployment} (a no-op unless due)\n"
        "Wants=network-online.target\nAfter=network-online.target\n\n"
        "[Service]\nType=oneshot\n"
        f"WorkingDirectory={_sd(str(s.workdir))}\n{env}"
        f"ExecStart={_sd(s.command)}\n"
        f"# {LOCKED_EXIT}: another run holds {s.lock}; this one did nothing\n"
        f"SuccessExitStatus={LOCKED_EXIT}\n"
    )


def _timer(s: Schedule, p: Loaded, runbook: str, hour: int, minute: int) -> str:
    return (
        f"# Written by `hubops schedule {runbook}` for deployment {p.deployment} ({p.source}).\n"
        "[Unit]\n"
        f"Description=daily hubops {runbook} for deployment {p.deployment}\n\n"
        "[Timer]\n"
        f"OnCalendar=*-*-* {hour:02d}:{minute:02d}:00\n"
        "RandomizedDelaySec=15min\n"
        "Persistent=true\n\n"
        "[Install]\nWantedBy=timers.target\n"
    )


def _cron(s: Schedule, p: Loaded, runbook: str, hour: int, minute: int) -> str:
    # cron runs the line with /bin/sh; '%' would end the command there.
    env = "".join(f"{k}={v}\n" for k, v in s.env.items())
    source = f"set -a && . {shlex.quote(str(s.env_file))} && set +a && " if s.env_file else ""
    line = f"{source}cd {shlex.quote(str(s.workdir))} && {s.command}".replace("%", r"\%")
    return (
        f"# Written by `hubops schedule {runbook}` for deployment {p.deployment} ({p.source}).\n"
        f"# Daily {runbook}; a no-op unless due. Exit {LOCKED_EXIT}: another run held {s.lock}.\n"
        f"SHELL=/bin/sh\nPATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n{env}"
        f"{minute} {hour} * * * root {line}\n"
    )


def write(s: Schedule, fmt: str, dest: Path | None = None) -> list[Path]:
    """Write the schedule's files for `fmt` (systemd or cron) into `dest` (default: /etc/...)."""
    names = [f"{s.name}.service", f"{s.name}.timer"] if fmt == "systemd" else [s.name]
    d = Path(dest) if dest else (SYSTEMD_DIR if fmt == "systemd" else CRON_DIR)
    if not d.is_dir():
        raise ScheduleError(f"{d} is not a directory: {'is systemd installed?' if fmt == 'systemd' else 'is cron installed?'}")
    written = []
    for n in names:
        f = d / n
        f.write_text(s.files[n])
        f.chmod(0o644)
        written.append(f)
    return written


def enable(s: Schedule) -> str:
    """Reload systemd and start the timer; the systemctl output."""
    if not shutil.which("systemctl"):
        raise ScheduleError("systemctl not found: use --format cron on a machine without systemd")
    out = []
    for argv in (["systemctl", "daemon-reload"], ["systemctl", "enable", "--now", f"{s.name}.timer"]):
        r = subprocess.run(argv, capture_output=True, text=True)
        if r.returncode != 0:
            raise ScheduleError(f"{' '.join(argv)} failed: {(r.stderr or r.stdout).strip()} (the unit files are "
                                f"written; is systemd running? `systemctl is-system-running`; or use --format cron)")
        out.append((r.stdout + r.stderr).strip())
    return "\n".join(o for o in out if o)
