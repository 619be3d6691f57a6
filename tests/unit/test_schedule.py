"""`hubops schedule renew-tls`: the systemd service + timer and the cron.d entry it writes, and
what it refuses (secrets from the environment without --env-file, tls.mode files, a bad time).
That the command they contain really runs, is idempotent and is locked against overlap is
tested on a lab in tests/e2e/test_lab_acme_github.py."""
from __future__ import annotations

import shlex
import textwrap
from pathlib import Path

import pytest

from hubops.cli import schedule
from hubops.core.errors import ScheduleError
from hubops.core.params import load_params
from tests.helpers import write_cert_pair


def params(tmp_path: Path, tls: str = "", auth: str = "") -> Path:
    (tmp_path / "users").write_text("ann admin\nbob\n")
    write_cert_pair(tmp_path / "cert.pem", tmp_path / "key.pem")
    f = tmp_path / "p%x.yaml"  # a '%' that systemd and cron must not expand
    f.write_text(textwrap.dedent("""
        deployment: sched1
        hosts:
          managers:
            - {name: m1, url: "unix:///var/run/docker.sock", advertise_addr: 127.0.0.1}
        hub: {public_name: hub.example.org}
    """) + textwrap.dedent(tls or """
        tls:
          mode: acme
          acme: {directory_url: letsencrypt-staging, email: ops@example.org}
    """) + textwrap.dedent(auth or """
        auth: {userlist: users}
    """))
    return f


def unit_value(text: str, key: str) -> list[str]:
    return [ln.split("=", 1)[1] for ln in text.splitlines() if ln.startswith(key + "=")]


def test_systemd_pair_runs_renew_tls_daily_under_a_lock(tmp_path):
    f = params(tmp_path)
    s = schedule.plan(load_params(f), at="04:05", outputs=tmp_path / "out")
    assert s.name == "hubops-renew-tls-sched1"
    service, timer = s.files[f"{s.name}.service"], s.files[f"{s.name}.timer"]
    (exec_start,) = unit_value(service, "ExecStart")
    argv = shlex.split(exec_start.replace("%%", "%"))
    assert argv == s.argv
    assert argv[:5] == ["/usr/bin/flock", "--nonblock", "--conflict-exit-code", "75",
                        "/run/lock/hubops-renew-tls-sched1.lock"]
    assert argv[-4:] == ["ops", "renew-tls", "-p", str(f)] and Path(argv[5]).name in ("hubops", "python3", "python")
    assert "%%x.yaml" in exec_start  # systemd specifiers escaped
    assert unit_value(service, "Type") == ["oneshot"] and unit_value(service, "SuccessExitStatus") == ["75"]
    assert unit_value(service, "Environment") == [f'"HUBOPS_OUTPUTS={tmp_path / "out"}"'.replace("%", "%%")]
    assert unit_value(timer, "OnCalendar") == ["*-*-* 04:05:00"] and unit_value(timer, "Persistent") == ["true"]
    assert "WantedBy=timers.target" in timer


def test_cron_entry_is_the_same_command(tmp_path):
    f = params(tmp_path)
    s = schedule.plan(load_params(f), at="23:59", outputs=tmp_path / "out")
    lines = [ln for ln in s.files[s.name].splitlines() if ln and not ln.startswith("#")]
    assert f"HUBOPS_OUTPUTS={tmp_path / 'out'}" in lines
    (entry,) = [ln for ln in lines if ln.startswith("59 23 * * * root ")]
    command = entry.removeprefix("59 23 * * * root ")
    assert "\\%x.yaml" in command  # cron would end the command at a bare '%'
    cd, _, rest = command.replace("\\%", "%").partition(" && ")
    assert shlex.split(cd) == ["cd", str(s.workdir)]
    assert shlex.split(rest) == s.argv


def test_write_puts_the_files_in_dest(tmp_path):
    s = schedule.plan(load_params(params(tmp_path)))
    dest = tmp_path / "units"
    dest.mkdir()
    written = schedule.write(s, "systemd", dest)
    assert sorted(p.name for p in written) == ["hubops-renew-tls-sched1.service", "hubops-renew-tls-sched1.timer"]
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in written)
    assert [p.name for p in schedule.write(s, "cron", dest)] == ["hubops-renew-tls-sched1"]
    with pytest.raises(ScheduleError, match="is not a directory"):
        schedule.write(s, "cron", tmp_path / "missing")


def test_env_secret_needs_an_env_file(tmp_path, monkeypatch):
    monkeypatch.setenv("HUBOPS_T_SCHED_SECRET", "s3cr3t-value")
    auth = """
        auth:
          mode: github
          userlist: users
          github: {client_id: cid, client_secret: {env: HUBOPS_T_SCHED_SECRET}}
    """
    p = load_params(params(tmp_path, auth=auth))
    with pytest.raises(ScheduleError, match=r"auth\.github\.client_secret \(env HUBOPS_T_SCHED_SECRET\).*--env-file"):
        schedule.plan(p)
    env = tmp_path / "renew.env"
    env.write_text("HUBOPS_T_SCHED_SECRET=s3cr3t-value\n")
    s = schedule.plan(p, env_file=env)
    assert unit_value(s.files[f"{s.name}.service"], "EnvironmentFile") == [str(env)]
    assert f". {env} && set +a && cd " in s.files[s.name]
    assert all("s3cr3t-value" not in text for text in s.files.values())
    with pytest.raises(ScheduleError, match="no such file"):
        schedule.plan(p, env_file=tmp_path / "nope.env")


def test_refusals(tmp_path):
    files = """
        tls:
          mode: files
          files: {cert: cert.pem, key: key.pem}
    """
    with pytest.raises(ScheduleError, match="tls.mode files: hubops does not renew"):
        schedule.plan(load_params(params(tmp_path, tls=files)))
    p = load_params(params(tmp_path))
    for at in ("3am", "24:00", "7:5"):
        with pytest.raises(ScheduleError, match=rf"--at {at!r}: give the daily time as HH:MM"):
            schedule.plan(p, at=at)
    with pytest.raises(ScheduleError, match="cannot be scheduled"):
        schedule.plan(p, "teardown")
