"""Plain-text rendering of a stage's record (hubops.core.textview) and the commands that print it:
`hubops ops RUNBOOK` for read-only runbooks and plans, `hubops record show RUN --stage NAME`."""
from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest
from click.testing import CliRunner

from hubops.audit import runner
from hubops.cli import main as cli
from hubops.core import textview
from hubops.core.record import MIME, read_record, record
from hubops.core.result import Result

ESC = re.compile(r"\x1b")


def status_like() -> Result:
    r = Result("status")
    r.check("node hl-manager", "manager, active, ready")
    r.check("node hl-node0", "worker, active, ready")
    r.facts["nodes"] = [
        {"node": "hl-manager", "hostname": "hl-manager", "role": "manager (leader)", "availability": "active",
         "state": "ready", "address": "10.168.0.11", "engine": "20.10.24", "runs hub": "yes"},
        {"node": "hl-node0", "hostname": "hl-node0", "role": "worker", "availability": "active",
         "state": "ready", "address": "10.168.0.12", "engine": "20.10.24", "runs hub": ""},
    ]
    r.facts["services"] = [{"service": "hubops-hl-hub", "kind": "hub", "user": "", "node": "hl-manager",
                            "state": "running"}]
    r.facts["users by node"] = []
    r.facts["managers"] = "1 of 1 reachable: quorum kept"
    r.facts["certificate"] = {"names": "localhost", "days_left": 824}
    return r


def test_a_table_reads_like_docker_node_ls():
    lines = textview.table(status_like().facts["nodes"], width=200)
    assert lines[0].split() == ["NODE", "HOSTNAME", "ROLE", "AVAILABILITY", "STATE", "ADDRESS", "ENGINE", "RUNS", "HUB"]
    assert lines[1].split()[:3] == ["hl-manager", "hl-manager", "manager"] and lines[1].endswith("yes")
    # columns are aligned: every row's STATE starts where the header's does
    col = lines[0].index("STATE")
    assert all(line[col:col + 5] == "ready" for line in lines[1:])
    assert all(line == line.rstrip() for line in lines)  # no trailing blanks


def test_a_status_record_as_text():
    text = textview.record(record("status", status_like()).to_dict(), width=120)
    print(text)
    assert text.startswith("status: 0 changed, 2 already right or checked\n")
    assert re.search(r"^  ACTION +OBJECT +WHY$", text, re.M)
    assert re.search(r"^  check +node hl-node0 +worker, active, ready$", text, re.M)
    assert re.search(r"^  nodes:\n    NODE +HOSTNAME +ROLE", text, re.M)
    assert re.search(r"^    hl-manager +hl-manager +manager \(leader\) +active +ready +10\.168\.0\.11", text, re.M)
    assert re.search(r"^  services:\n    SERVICE +KIND +USER +NODE +STATE\n    hubops-hl-hub +hub +hl-manager +running$",
                     text, re.M)
    assert "  users by node: (none)\n" in text
    assert "  managers: 1 of 1 reachable: quorum kept\n" in text
    assert "  certificate:\n    names: localhost\n    days_left: 824\n" in text
    assert not ESC.search(text) and text.endswith("\n")


def test_a_plan_says_so_and_what_it_would_do():
    r = Result("teardown", dry_run=True).change("remove", "service hubops-hl-hub", "labelled for hl").keep("volume x", "kept")
    text = textview.record(record("teardown", r).to_dict())
    assert text.startswith("teardown: PLAN, nothing was changed")
    assert "teardown: 1 would change, 1 already right or checked" in text
    assert re.search(r"^  would remove +service hubops-hl-hub +labelled for hl$", text, re.M)
    assert re.search(r"^  keep +volume x +kept$", text, re.M)


@pytest.mark.parametrize("width", [60, 80, 120])
def test_long_values_wrap_inside_their_column_and_nothing_is_lost(width):
    long_error = ("task: non-zero exit (1): dockerexec: unable to start container process: exec: "
                  "\"jupyterhub\": executable file not found in $PATH " + "x" * 90)
    rows = [{"task": "hubops-hl-hub.1", "node": "hl-manager", "state": "failed", "error": long_error},
            {"task": "hubops-hl-hub.2", "node": "hl-manager", "state": "running", "error": ""}]
    r = Result("diagnose")
    r.facts["hub tasks"] = rows
    r.facts["users' storage"] = "shared-path " + "/srv/homes/" * 12 + " (every node mounts it)"
    text = textview.record(record("diagnose", r).to_dict(), width=width)
    print(text)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= width, [line for line in lines if len(line) > width]
    # every word of the long cell is there, in order, with the pieces of the long token joined again
    table = text[text.index("TASK"):text.index("users' storage")]
    error_col = lines[[i for i, line in enumerate(lines) if "TASK" in line][0]].index("ERROR")
    pieces = [line[error_col:].strip() for line in table.splitlines()[1:] if line[error_col:].strip()]
    assert "".join(pieces).replace(" ", "") == long_error.replace(" ", "")
    # the row's other cells are on its first line, continuation lines leave them blank
    first = next(line for line in lines if "hubops-hl-hub.1" in line)
    assert "hl-manager" in first and "failed" in first
    storage = text[text.index("users' storage: ") + len("users' storage: "):]
    assert "".join(storage.split()) == "".join(r.facts["users' storage"].split())


def test_a_narrow_terminal_keeps_short_columns_whole():
    rows = [{"node": "hl-manager", "state": "ready", "line": "word " * 60}]
    lines = textview.table(rows, width=50)
    assert lines[0].startswith("NODE        STATE  LINE")
    assert lines[1].startswith("hl-manager  ready  word")
    assert all(line.startswith(" " * 19) for line in lines[2:]) and len(lines) > 3


@pytest.mark.parametrize("width", [40, 70, 90])
def test_a_table_too_wide_for_the_terminal_keeps_names_addresses_and_versions_whole(width):
    rows = status_like().facts["nodes"]
    lines = textview.table(rows, width=width, indent=4)
    print("\n".join(lines))
    words = {w for line in lines for w in line.split()}
    for r in rows:
        for value in r.values():
            assert set(value.split()) <= words, (value, width)  # each word on one line, not broken
    assert lines[0].split()[:2] == ["NODE", "HOSTNAME"]
    if width >= 90:
        assert max(len(line) for line in lines) <= width
    else:  # the shortest columns it can have are wider: the terminal folds the line, nothing is broken
        assert len(lines[1]) > width


def test_colour_codes_and_controls_in_the_data_are_not_printed():
    r = Result("diagnose")
    r.facts["hub log (last lines)"] = [{"line": "\x1b[31m[E 2026-12-01 hub]\x1b[0m spawn failed\tfor alice\x07"},
                                       {"line": "\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\ ok"}]
    text = textview.record(record("diagnose", r).to_dict())
    assert not ESC.search(text) and "\x07" not in text and "\t" not in text
    assert "[E 2026-12-01 hub] spawn failed    for alice" in text and "link ok" in text


def test_terminal_width(monkeypatch, tmp_path):
    monkeypatch.delenv("COLUMNS", raising=False)
    with open(tmp_path / "out", "w") as f:  # a file is not a terminal
        assert textview.terminal_width(f) == textview.DEFAULT_WIDTH
    monkeypatch.setenv("COLUMNS", "77")
    assert textview.terminal_width() == 77
    monkeypatch.setenv("COLUMNS", "10")
    assert textview.terminal_width() == textview.MIN_WIDTH


def test_the_record_cell_shows_one_line_and_keeps_the_whole_record():
    res = status_like()
    bundle = record("status", res)._repr_mimebundle_()
    assert bundle["text/plain"] == "status recorded: 0 changed, 2 already right or checked (results shown above: status)"
    assert bundle["text/html"].count("<p") == 1 and "<table" not in bundle["text/html"]
    data = bundle[MIME]
    assert data["results"] == [res.to_dict()] and data["results"][0]["facts"]["nodes"][1]["node"] == "hl-node0"
    assert json.loads(json.dumps(data)) == data  # plain JSON, as the notebook stores it


# -- the commands -------------------------------------------------------------------------------
STAGE = '''import hubops
r = hubops.Result("status")
r.check("node hl-manager", "manager, active, ready")
r.facts["nodes"] = [{{"node": "hl-manager", "role": "manager (leader)", "state": "ready", "note": {note!r}}}]
r.facts["managers"] = "1 of 1 reachable: quorum kept"
hubops.record("{name}", r)'''


def notebook(path: Path, source: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell('params_file = ""  # the file\ndry_run = False  # plan')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(source)]
    nbformat.write(nb, path)
    return path


@pytest.fixture
def ops_runbooks(tmp_path, monkeypatch, params_factory):
    """runbooks/ops/{status,backup}.ipynb replaced by small notebooks that record a status-like result."""
    books = tmp_path / "runbooks"
    (books / "ops").mkdir(parents=True)
    note = "rotated on " + "hl-manager " * 3 + "because the disk was full"
    notebook(books / "ops" / "status.ipynb", STAGE.format(name="status", note=note))
    notebook(books / "ops" / "backup.ipynb", STAGE.format(name="backup", note=note))
    notebook(books / "ops" / "broken.ipynb", "raise RuntimeError('engine local does not answer')")
    monkeypatch.setattr(runner, "RUNBOOKS", books)
    monkeypatch.setattr(runner, "OUTPUTS", tmp_path / "outputs")
    monkeypatch.setenv("COLUMNS", "60")
    return params_factory("hltext")


def only_run() -> Path:
    (run,) = list(runner.OUTPUTS.glob("*/run.json"))
    return run.parent


def test_ops_status_prints_its_tables_on_stdout_and_a_changing_runbook_does_not(ops_runbooks):
    res = CliRunner().invoke(cli.ops, ["status", "-p", str(ops_runbooks)])
    print(res.stdout)
    assert res.exit_code == 0, res.output
    assert re.search(r"^  nodes:\n    NODE +ROLE +STATE +NOTE\n    hl-manager +manager \(leader\) +ready +rotated",
                     res.stdout, re.M)
    assert max(len(line) for line in res.stdout.splitlines()) <= 60
    assert not ESC.search(res.stdout)

    backup = CliRunner().invoke(cli.ops, ["backup", "-p", str(ops_runbooks)])
    assert backup.exit_code == 0 and "NODE" not in backup.stdout  # not read-only: progress only
    shown = CliRunner().invoke(cli.ops, ["backup", "-p", str(ops_runbooks), "--show"])
    assert shown.exit_code == 0 and "NODE" in shown.stdout
    plan = CliRunner().invoke(cli.ops, ["backup", "-p", str(ops_runbooks), "--plan"])
    assert plan.exit_code == 0 and "NODE" in plan.stdout


def test_record_show_prints_a_stage_redacted(ops_runbooks, monkeypatch):
    assert CliRunner().invoke(cli.ops, ["status", "-p", str(ops_runbooks), "--no-show"]).exit_code == 0
    run = only_run()
    rec = read_record(nbformat.read(run / "status.ipynb", as_version=4))
    assert rec["results"][0]["facts"]["nodes"][0]["state"] == "ready"
    # A value that became a secret after the run (a token whose value is in the record) is not printed.
    monkeypatch.setenv("HL_TEXTVIEW_TOKEN", "hl-manager")
    res = CliRunner().invoke(cli.record, ["show", run.name, "--stage", "status"])
    print(res.stdout)
    assert res.exit_code == 0, res.output
    assert "hl-manager" not in res.stdout
    assert re.search(r"^    NODE +ROLE +STATE +NOTE$", res.stdout, re.M)
    assert "managers: 1 of 1 reachable: quorum kept" in res.stdout
    assert re.search(r"^record: intact: 1 stage entries", res.stdout, re.M)

    summary = CliRunner().invoke(cli.record, ["show", run.name])
    assert f"hubops record show {run.name} --stage status" in summary.stdout and "NODE" not in summary.stdout
    wrong = CliRunner().invoke(cli.record, ["show", run.name, "--stage", "20-swarm"])
    assert wrong.exit_code == 1 and "has no stage '20-swarm'; its stages are status" in wrong.output


def test_record_show_of_a_stage_that_failed_says_where(ops_runbooks):
    res = CliRunner().invoke(cli.ops, ["broken", "-p", str(ops_runbooks)])
    assert res.exit_code == 1 and "NODE" not in res.stdout
    shown = CliRunner().invoke(cli.record, ["show", only_run().name, "--stage", "broken"])
    print(shown.stdout)
    assert shown.exit_code == 0, shown.output
    assert "== broken: failed" in shown.stdout
    assert "(the stage recorded no results: it stopped before its last cell; see its notebook)" in shown.stdout
    assert "✘ failed in cell 3: RuntimeError: engine local does not answer" in shown.stdout
