"""The `hubops` command: runs the stage notebooks headlessly and reports where things are."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from hubops.audit import runner
from hubops.core.errors import HubopsError, ParameterError
from hubops.core.params import load_params
from hubops.core.record import stopped_stage

console = Console(stderr=True)
DEFAULT_PARAMS = "parameters/local.yaml"


def _setup_logging(verbose: bool) -> None:
    from hubops.audit.redact import RedactingFilter, env_secrets, session_redactor

    logger = logging.getLogger("hubops")
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    handler = RichHandler(console=console, show_path=False, markup=False)
    # The session redactor learns each deployment's secrets as the runner reads them.
    session_redactor().add_all(env_secrets())
    handler.addFilter(RedactingFilter(session_redactor()))
    logger.addHandler(handler)


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="debug logging")
@click.version_option(package_name="hubops")
def main(verbose: bool) -> None:
    """hubops: JupyterHub on Docker Swarm, deployed and run by Jupyter runbooks."""
    _setup_logging(verbose)


def _on_stage(name: str, event: str, entry: dict) -> None:
    if event == "start":
        console.print(f"[bold]▶ {name}[/bold] …")
        return
    if event == "ok":
        n = entry.get("changed", 0)
        plan = " (plan: nothing was changed)" if entry.get("dry_run") and n else ""
        what = f"{n} change{'s' if n != 1 else ''}{plan}" if n else f"no change ({entry.get('kept', 0)} checked or already right)"
        console.print(f"  [green]✔ {name}[/green] {entry.get('duration_s')} s, {what}")
        for c in entry.get("changes", [])[:12]:
            console.print(f"     · {c}", markup=False, highlight=False)
    else:
        err = entry.get("error") or {}
        console.print(f"  [red]✘ {name} failed[/red] in cell {err.get('cell')}: {err.get('ename')}")
        console.print(f"     {err.get('evalue')}", markup=False, highlight=False)


def _run_chain(params_file: str, **kw) -> "runner.Run":
    """runner.run_chain with the CLI's progress lines and exit codes (2: parameters, 1: other errors)."""
    try:
        return runner.run_chain(params_file, on_stage=_on_stage, **kw)
    except KeyboardInterrupt:
        console.print("[red]interrupted[/red]: the run's record says which stage was running "
                      "(`hubops record list`); a deploy continues with --resume RUN-ID")
        sys.exit(130)
    except ParameterError as e:
        _fail(e, 2)
    except HubopsError as e:
        _fail(e, 1)
    raise AssertionError("unreachable")


def _fail(e: Exception, code: int) -> None:
    # soft_wrap: paths and key paths stay whole, so they can be copied from the message.
    console.print(f"[red]error:[/red] {e}", markup=True, highlight=False, soft_wrap=True)
    sys.exit(code)


@main.command()
@click.option("-p", "--params", "params_file", default=DEFAULT_PARAMS, show_default=True,
              type=click.Path(dir_okay=False), help="the deployment's parameter file")
@click.option("--plan", is_flag=True, help="show what each stage would change; change nothing")
@click.option("--resume", metavar="RUN-ID", help="continue a failed run from its failed stage")
@click.option("--only", multiple=True, metavar="STAGE", help="run only these stages (e.g. --only 80-deploy)")
@click.option("--timeout", default=runner.DEFAULT_TIMEOUT, show_default=True, help="seconds a cell may run")
def deploy(params_file: str, plan: bool, resume: str | None, only: tuple[str, ...], timeout: int) -> None:
    """Run the deploy chain (runbooks/00-… to 90-…) into outputs/RUN-ID/."""
    run = _run_chain(params_file, dry_run=plan, resume=resume, only=list(only) or None, timeout=timeout)
    m = run.manifest
    console.print()
    if m["status"] != "ok":
        failed = next(s for s in m["stages"] if s["status"] in ("failed", "interrupted"))
        console.print(f"[red]Run {run.id} stopped at {failed['name']}.[/red]")
        console.print(f"  notebook: {run.dir / failed.get('notebook', '')}  (failing cell {failed['error'].get('cell')})")
        console.print(f"  fix the cause, then: hubops deploy -p {params_file} --resume {run.id}")
        console.print(f"  record: {run.dir}/index.html", soft_wrap=True)
        sys.exit(1)
    p = load_params(params_file)
    verb = "would change" if plan else "changed"
    console.print(f"[green bold]{'Plan' if plan else 'Deployed'}[/green bold]: {m['changed']} {verb} in {m['duration_s']} s")
    if not plan:
        _print_access(p)
    console.print(f"  record:    {run.dir}/  (report: {run.dir}/index.html)", soft_wrap=True)


def login_hint(p) -> str:
    """How users log in to this deployment, for the summary after a deploy (every mode but the shared
    password, which prints its password files): where they log in and who is let in."""
    users = ", ".join(p.allowed)
    named = f"as one of {users}" if users else "no user by name"
    if p.auth.mode == "oidc":
        o = p.auth.oidc
        who = named + (f", or a member of {', '.join(sorted(set(o.allowed_groups) | set(o.admin_groups)))}"
                       if o.allowed_groups or o.admin_groups else "")
        return f"with OpenID Connect at {o.issuer}, {who}"
    if p.auth.mode == "ldap":
        from hubops.core.params import ldap_group_name

        ld = p.auth.ldap
        groups = sorted({ldap_group_name(dn) for dn in [*ld.allowed_groups, *ld.admin_groups]})
        return f"with LDAP at {ld.url}, {named}" + (f", or a member of {', '.join(groups)}" if groups else "")
    if p.auth.mode == "native":
        admins = ", ".join(p.admins) or "none"
        if p.auth.native.signup:
            return (f"with their own password; new users sign up at {p.hub_url}/hub/signup and wait for an "
                    f"admin's approval (admins: {admins})")
        return f"with their own password; sign-up is off: an admin ({admins}) makes users"
    return f"with GitHub, {named}"


def _print_access(p) -> None:
    from hubops.hub.running import trust_path

    # soft_wrap: paths and commands stay whole on their line, so they can be copied
    console.print(f"  hub:       {p.hub_url}/", soft_wrap=True)
    ca = trust_path(p)
    if isinstance(ca, str):
        console.print(f"  CA:        {ca}  (e.g. curl --cacert {ca} {p.hub_url}/hub/health)", soft_wrap=True)
    if p.auth.mode == "shared-password":
        console.print(f"  log in as: any of {', '.join(p.allowed)}", soft_wrap=True)
        console.print(f"  password:  users: {p.operator_path}/user-password; admins ({', '.join(p.admins)}): "
                      f"{p.operator_path}/admin-password  (files readable only by you)", soft_wrap=True)
    else:
        console.print(f"  log in:    {login_hint(p)}", markup=False, highlight=False, soft_wrap=True)
    from hubops.stages.storage import describe_users

    if p.storage.users.mode == "none":
        console.print("  [red bold]files:     users' files are LOST whenever their server stops[/red bold] (culled "
                      "after idling, upgraded, restarted): storage.users.mode is none; remove it to keep them",
                      soft_wrap=True)
    else:
        console.print(f"  files:     kept across stops, culls and restarts ({describe_users(p)})",
                      markup=False, highlight=False, soft_wrap=True)


def _parse_set(values: tuple[str, ...]) -> dict:
    """--set KEY=VALUE pairs; values are read as YAML scalars (true, 30, text)."""
    import yaml

    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise click.BadParameter(f"{item!r}: use --set NAME=VALUE, e.g. --set node=lab-node0")
        parsed = yaml.safe_load(value) if value else ""
        if isinstance(parsed, (dict, list)):
            raise click.BadParameter(f"{item!r}: runbook parameters are plain values")
        out[key] = parsed
    return out


@main.command("ops")
@click.argument("runbook", metavar="RUNBOOK")
@click.option("-p", "--params", "params_file", default=DEFAULT_PARAMS, show_default=True,
              type=click.Path(dir_okay=False), help="the deployment's parameter file")
@click.option("--set", "settings", multiple=True, metavar="NAME=VALUE", help="a runbook parameter, e.g. node=lab-node0")
@click.option("--plan", is_flag=True, help="show what the runbook would change; change nothing")
@click.option("--timeout", default=runner.DEFAULT_TIMEOUT, show_default=True, help="seconds a cell may run")
@click.option("--show/--no-show", default=None,
              help="print what the runbook found (its tables, as plain text) on stdout; "
                   "default: for the read-only runbooks (status, diagnose) and with --plan")
def ops(runbook: str, params_file: str, settings: tuple[str, ...], plan: bool, timeout: int,
        show: bool | None) -> None:
    """Run a day-2 runbook (runbooks/ops/RUNBOOK.ipynb): status, add-node, remove-node, teardown, ...

    The read-only runbooks (status, diagnose) and any run with --plan print what they found on
    stdout, as plain-text tables; progress goes to stderr. `hubops record show RUN --stage NAME`
    prints it again later.

    Exit status: 0 done; 1 failed (the record names the cell); 2 bad parameters; 3 rolled back
    (upgrade: the new image failed, the hub serves on the previous one)."""
    extra = _parse_set(settings)
    forbidden = {"params_file", "dry_run"} & set(extra)
    if forbidden:
        raise click.BadParameter(f"{', '.join(sorted(forbidden))}: use -p / --plan instead")
    run = _run_chain(params_file, dry_run=plan, runbook=runbook, runbook_parameters=extra, timeout=timeout)
    entry = run.manifest["stages"][0]
    if run.manifest["status"] == "ok" and (show if show is not None else (plan or runbook in READ_ONLY_RUNBOOKS)):
        from hubops.audit.redact import redactor_for

        _print_stage(run, entry, redactor_for(params_file=params_file))
    # soft_wrap: the paths stay whole on one line, so they can be copied
    console.print(f"  record: {run.dir}/  (report: {run.dir}/index.html)", soft_wrap=True)
    if run.manifest["status"] != "ok":
        console.print(f"  failing notebook: {run.dir / entry.get('notebook', '')} (cell {entry['error'].get('cell')})",
                      soft_wrap=True)
        sys.exit(1)
    if _rolled_back(run.dir / entry.get("notebook", "")):
        console.print(f"[yellow]rolled back[/yellow]: the new image failed and Swarm put the previous one back; "
                      f"the hub serves on it (exit status {ROLLED_BACK}; the record says why)")
        sys.exit(ROLLED_BACK)


# Day-2 runbooks that change nothing on the cluster: a run prints what it found (see `ops`).
READ_ONLY_RUNBOOKS = ("status", "diagnose")


def _print_stage(run: "runner.Run", entry: dict, redactor) -> None:
    """A stage's record (its results and their tables) as plain text on stdout, redacted: no colour,
    lines fitting the terminal (or COLUMNS, or 120 columns when stdout is not a terminal)."""
    import nbformat

    from hubops.core import textview
    from hubops.core.record import read_record

    notebook = run.dir / entry.get("notebook", f"{entry['name']}.ipynb")
    try:
        rec = read_record(nbformat.read(notebook, as_version=4))
    except (OSError, ValueError) as e:
        click.echo(f"(cannot read {notebook}: {e})")
        return
    text = textview.stage_text(rec, textview.terminal_width(sys.stdout))
    # The notebook was redacted when the run sealed it; the deployment's secrets as they are now,
    # the environment's and what this process learnt are taken out again before printing.
    click.echo(redactor.redact(text), nl=False)


# Exit status of a runbook that ran to its end but whose change was rolled back (an upgrade whose
# new image failed): the hub serves, on the old image. 0 means the change took; 1 an error; 2 bad
# parameters. Automation tells "upgraded" from "rolled back" by it.
ROLLED_BACK = 3


def _rolled_back(notebook: Path) -> bool:
    """True when the executed runbook's record has a result whose verdict is "rolled back"."""
    import nbformat

    from hubops.core.record import read_record

    if not notebook.is_file():
        return False
    rec = read_record(nbformat.read(notebook, as_version=4)) or {}
    return any((r.get("facts") or {}).get("verdict") == "rolled back" for r in rec.get("results", []))


@main.command("schedule")
@click.argument("runbook", metavar="RUNBOOK", type=click.Choice(["renew-tls"]))
@click.option("-p", "--params", "params_file", default=DEFAULT_PARAMS, show_default=True,
              type=click.Path(dir_okay=False), help="the deployment's parameter file")
@click.option("--format", "fmt", type=click.Choice(["systemd", "cron"]), default="systemd", show_default=True,
              help="a systemd service + timer pair, or a cron.d entry")
@click.option("--at", default="03:17", show_default=True, help="daily time, HH:MM local (systemd adds up to 15 min)")
@click.option("--env-file", type=click.Path(dir_okay=False), help="NAME=VALUE file for {env: NAME} secrets")
@click.option("--lock", type=click.Path(dir_okay=False), help="lock file (default /run/lock/hubops-RUNBOOK-DEPLOYMENT.lock)")
@click.option("--dest", type=click.Path(file_okay=False), help="write the files into this directory")
@click.option("--install", is_flag=True, help="write into /etc/systemd/system (and enable the timer) or /etc/cron.d")
def schedule_cmd(runbook: str, params_file: str, fmt: str, at: str, env_file: str | None, lock: str | None,
                 dest: str | None, install: bool) -> None:
    """Run RUNBOOK daily without a person (renew-tls: a no-op unless the certificate is due).

    Prints the unit files (or cron.d entry) unless --dest or --install is given."""
    from hubops.cli import schedule

    try:
        p = load_params(params_file)
        s = schedule.plan(p, runbook, at=at, env_file=Path(env_file) if env_file else None,
                          lock=Path(lock) if lock else None)
        names = [f"{s.name}.service", f"{s.name}.timer"] if fmt == "systemd" else [s.name]
        if not (dest or install):
            for n in names:
                where = schedule.SYSTEMD_DIR if fmt == "systemd" else schedule.CRON_DIR
                click.echo(f"# ---- {where / n}\n{s.files[n]}")
            console.print(f"runs daily: {s.command}\n  (hubops schedule {runbook} -p {params_file} --install "
                          f"{'--format cron ' if fmt == 'cron' else ''}installs it)")
            return
        written = schedule.write(s, fmt, Path(dest) if dest else None)
        for f in written:
            console.print(f"wrote {f}")
        if install and not dest and fmt == "systemd":
            out = schedule.enable(s)
            console.print(f"enabled {s.name}.timer{': ' + out if out else ''}")
    except ParameterError as e:
        _fail(e, 2)
    except HubopsError as e:
        _fail(e, 1)


@main.command("check")
@click.option("-p", "--params", "params_file", default=DEFAULT_PARAMS, show_default=True)
def check(params_file: str) -> None:
    """Check a parameter file without touching any host."""
    try:
        p = load_params(params_file)
        if p.auth.mode == "oidc":
            # The issuer answers with a valid discovery document (no host of the deployment is asked).
            from hubops.core.errors import IdentityProviderError
            from hubops.stages import auth_oidc

            try:
                d = auth_oidc.discover(p)
            except IdentityProviderError as e:
                raise ParameterError(str(e)) from None
            console.print(f"OpenID provider {d.issuer}: discovery document valid "
                          f"(authorize at {d.authorization_endpoint})")
        if p.auth.mode == "ldap":
            # TLS verified, the service account's bind, the base and groups found (no host of the deployment is asked).
            from hubops.core.errors import IdentityProviderError
            from hubops.stages import auth_ldap

            try:
                facts = auth_ldap.check_directory(p)
            except IdentityProviderError as e:
                raise ParameterError(str(e)) from None
            console.print(f"LDAP server {facts['url']}: {facts['tls_version'] or 'TLS'} verified, "
                          f"bind as {facts['bind_dn']} accepted")
    except ParameterError as e:
        _fail(e, 2)
    console.print(f"[green]{p.source}: valid[/green]: deployment {p.deployment}, "
                  f"{len(p.hosts.managers)} manager(s), {len(p.hosts.workers)} worker(s), "
                  f"{len(p.allowed)} users ({len(p.admins)} admins), hub at {p.hub_url}")


@main.group()
def record() -> None:
    """Browse the runs under outputs/."""


@record.command("list")
def record_list() -> None:
    """Runs with status, who, when, duration, parameter file and whether the record verifies."""
    from hubops.audit.ledger import verify_run

    t = Table("run", "status", "who", "started", "seconds", "changes", "parameters", "record")
    for d in sorted(runner.OUTPUTS.glob("*/run.json")):
        v = verify_run(d.parent)
        try:
            m = json.loads(d.read_text())
            stopped = stopped_stage(m)
            t.add_row(m["run_id"], f"stopped in {stopped}" if stopped else m["status"], m["who"], m["started"], str(m.get("duration_s", "")),
                      str(m.get("changed", "")), Path(m["params_file"]).name, _verdict_word(v))
        except (ValueError, KeyError, TypeError):
            t.add_row(d.parent.name, "?", "", "", "", "", "", _verdict_word(v))
    Console().print(t)


def _verdict_word(v) -> str:
    if v.ok:
        return "intact"
    return "unsealed" if v.first.kind == "unsealed" else f"NOT INTACT ({v.first.kind})"


def _run_dir(run_id: str) -> Path:
    d = runner.OUTPUTS / run_id
    if not (d / "run.json").exists():
        _fail(HubopsError(f"no run {run_id}: {d}/run.json does not exist (see `hubops record list`)"), 1)
    return d


@record.command("verify")
@click.argument("run_id")
def record_verify(run_id: str) -> None:
    """Check a run's record against its hash chain: exit 0 when intact, 1 on any problem.

    Names the first stage whose notebook or entry was changed, removed or reordered, and any
    notebook in the run folder that the record does not list."""
    from hubops.audit.ledger import verify_run

    v = verify_run(_run_dir(run_id))
    out = Console()
    style = "green" if v.ok else "red"
    out.print(f"{v.run_id}: [{style}]{v.verdict}[/{style}]", highlight=False)
    for p in v.problems[1:]:
        out.print(f"  · {p}", markup=False, highlight=False)
    sys.exit(0 if v.ok else 1)


def _pick_stages(m: dict, wanted: tuple[str, ...]) -> list[dict]:
    """The run's stage entries named by --stage: `20-swarm`, `20` or `swarm` (an ops run: `status`)."""
    picked = []
    for w in wanted:
        found = [s for s in m["stages"]
                 if w == s["name"] or (s["name"][:2].isdigit() and w in (s["name"][:2], s["name"][3:]))]
        if not found:
            names = ", ".join(s["name"] for s in m["stages"])
            _fail(HubopsError(f"run {m['run_id']} has no stage {w!r}; its stages are {names}"), 1)
        picked += [s for s in found if s not in picked]
    return picked


@record.command("show")
@click.argument("run_id")
@click.option("--stage", "stages", multiple=True, metavar="NAME",
              help="print this stage's findings: its results and tables as plain text (e.g. --stage status, "
                   "--stage 20-swarm or --stage 20); repeat for several")
def record_show(run_id: str, stages: tuple[str, ...]) -> None:
    """Stages of one run, what each changed, where it failed; with --stage, what a stage found."""
    try:
        run = runner.Run.load(run_id)
    except HubopsError as e:
        _fail(e, 1)
    from hubops.audit.ledger import verify_run

    m = run.manifest
    if stages:
        import textwrap

        from hubops.core import textview
        from hubops.audit.redact import redactor_for

        picked = _pick_stages(m, stages)
        redactor = redactor_for(params_file=m.get("params_file"))
        click.echo(f"{m['run_id']}: {m['status']} ({m['kind']}, by {m['who']} on {m['machine']})")
        for s in picked:
            click.echo(f"\n== {s['name']}: {s['status']}, {s.get('duration_s', '?')} s\n"
                       f"   notebook: {run.dir / s.get('notebook', s['name'] + '.ipynb')}\n")
            if s["status"] in ("pending", "skipped"):
                click.echo("(the stage did not run)")
                continue
            _print_stage(run, s, redactor)
            if s.get("error"):
                e = s["error"]
                click.echo(redactor.redact(f"✘ failed in cell {e.get('cell')}: {e.get('ename')}: {e.get('evalue')}"))
        v = verify_run(run.dir)
        width = textview.terminal_width(sys.stdout)
        click.echo("\n" + textwrap.fill(f"record: {v.verdict}", width, break_long_words=False, break_on_hyphens=False,
                                        subsequent_indent="  "))
        return
    Console().print(f"{m['run_id']}: {m['status']} ({m['kind']}, {m.get('duration_s')} s, by {m['who']} on {m['machine']})")
    stopped = stopped_stage(m)
    if stopped:
        Console().print(f"  STOPPED in {stopped}: its runner (pid {m.get('runner_pid')}) is gone without finishing the "
                        f"run (killed, or the machine restarted); continue with: hubops deploy -p {m['params_file']} "
                        f"--resume {m['run_id']}", markup=False, highlight=False)
    if m.get("kind") == "plan":
        Console().print("  PLAN — nothing was changed; the changes below are what a deploy would make")
    for s in m["stages"]:
        Console().print(f"  {s['name']:<14} {s['status']:<8} {s.get('duration_s', '')}")
        for c in s.get("changes", []):
            Console().print(f"      · {c}", markup=False, highlight=False)
        if s.get("error"):
            e = s["error"]
            Console().print(f"      ✘ cell {e.get('cell')}: {e.get('ename')}: {e.get('evalue')}", markup=False, highlight=False)
    v = verify_run(run.dir)
    Console().print(f"  record: {v.verdict}", markup=False, highlight=False)
    for p in v.problems[1:]:
        Console().print(f"    · {p}", markup=False, highlight=False)
    Console().print(f"  what a stage found: hubops record show {m['run_id']} --stage {m['stages'][-1]['name']}",
                    markup=False, highlight=False, soft_wrap=True)  # one line: it is a command to copy


@main.command("report")
@click.argument("run_id")
def report(run_id: str) -> None:
    """Write a run's HTML report (outputs/RUN-ID/index.html and a page per stage) again."""
    from hubops.audit.report import write_report

    try:
        run = runner.Run.load(run_id)
    except HubopsError as e:
        _fail(e, 1)
    write_report(run)
    console.print(f"report: {run.dir / 'index.html'}", highlight=False)


@main.group()
def lab() -> None:
    """A lab: several Docker engines on this machine, one per network namespace (needs root)."""


@lab.command("up")
@click.option("--name", default="lab", show_default=True, help="lab name (bridge hl-NAME, nodes NAME-manager, NAME-node0, ...)")
@click.option("--managers", default=1, show_default=True, type=click.IntRange(1, 20))
@click.option("--workers", default=2, show_default=True, type=click.IntRange(0, 100))
@click.option("--subnet", default="10.77.0.0/24", show_default=True, help="the lab's own subnet; must overlap no route")
@click.option("--overlay-subnet", default="10.240.0.0/24", show_default=True, help="the deployment's overlay subnet")
@click.option("--params", "params_file", default="parameters/lab.yaml", show_default=True,
              type=click.Path(dir_okay=False), help="parameter file to write for the lab")
@click.option("--engine", "engines", default=None, metavar="VERSION|NODE=VERSION,...",
              help="Docker engine of the nodes: one version for all (28, 26, 20.10) or per node "
                   "(manager=28,node0=26,node1=20.10; nodes not named: 20.10, this machine's dockerd)")
@click.option("--rebuild", is_flag=True, help="build the chosen engines' root file systems again")
@click.option("--ssh", "ssh_nodes", default=None, metavar="all|NODE,...",
              help="reach these nodes over ssh:// (sshd in their namespaces, the lab's key, pinned host keys) "
                   "instead of tcp+TLS; nodes of every engine (20.10: this machine's sshd; 26, 28: their root's)")
@click.option("--generic-resource", "generic", multiple=True, metavar="NODE:KIND=ID",
              help="a fake generic resource a node's engine advertises to Swarm, as a GPU host's does "
                   "(e.g. node0:NVIDIA-GPU=gpu0; repeat for more)")
@click.option("--image-store", type=click.Choice(["classic", "containerd"]), default="classic", show_default=True,
              help="the engines' image store: containerd is Docker 29's default for new installs (26 and 28 nodes only)")
def lab_up_cmd(name: str, managers: int, workers: int, subnet: str, overlay_subnet: str, params_file: str,
               engines: str | None, rebuild: bool, ssh_nodes: str | None, generic: tuple[str, ...] = (),
               image_store: str = "classic") -> None:
    """Bring up the lab (idempotent) and write its parameter file."""
    from hubops.lab.cluster import lab_up

    try:
        info = lab_up(name=name, managers=managers, workers=workers, subnet=subnet,
                      overlay_subnet=overlay_subnet, params_out=Path(params_file), engines=engines, rebuild=rebuild,
                      generic_resources=",".join(generic) or None, image_store=image_store)
        if ssh_nodes:
            from hubops.lab.ssh import enable_ssh

            chosen = None if ssh_nodes == "all" else [n.strip() for n in ssh_nodes.split(",") if n.strip()]
            info.changes += enable_ssh(name, Path(params_file), nodes=chosen)
    except HubopsError as e:
        _fail(e, 1)
    click.echo(repr(info))
    console.print(f"[green]lab {name} is up[/green]; parameters: {info.params_file}")
    console.print(f"  deploy on it:  hubops deploy -p {params_file}")
    console.print(f"  remove it:     hubops lab down --name {name}")


@lab.command("down")
@click.option("--name", default="lab", show_default=True)
def lab_down_cmd(name: str) -> None:
    """Stop the lab's engines and remove everything the lab made (not its parameter file)."""
    from hubops.lab.cluster import lab_down

    try:
        info = lab_down(name=name)
    except HubopsError as e:
        _fail(e, 1)
    click.echo(repr(info))


@lab.command("status")
@click.option("--name", default="lab", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def lab_status_cmd(name: str, as_json: bool) -> None:
    """Nodes of the lab: namespace, engine pid, TLS answer (version, name), Swarm state."""
    from hubops.lab.cluster import lab_status

    try:
        info = lab_status(name=name)
    except HubopsError as e:
        _fail(e, 1)
    if as_json:
        click.echo(json.dumps(info.to_dict(), indent=2))
    else:
        click.echo(repr(info))


if __name__ == "__main__":
    main()
