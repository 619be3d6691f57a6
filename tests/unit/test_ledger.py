"""The record's hash chain (no engine): runs made by the runner on tiny notebooks, then tampered with."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import nbformat
import pytest
from click.testing import CliRunner

from hubops.cli import main as cli
from hubops.audit import ledger, runner

PROJECT = Path(__file__).resolve().parents[2]
PARAMS = PROJECT / "parameters/local.yaml"
RECORD = 'import hubops\nhubops.record("{name}", hubops.Result("x").change("create", "thing {name}"))'


def notebook(path: Path, *cells: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell('params_file = ""  # the file\ndry_run = False  # plan')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params] + [nbformat.v4.new_code_cell(c) for c in cells]
    nbformat.write(nb, path)
    return path


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """One finished three-stage run, made once; each test tampers with its own copy."""
    tmp = tmp_path_factory.mktemp("ledger")
    stages = [notebook(tmp / f"{n}.ipynb", RECORD.format(name=n)) for n in ("00-a", "10-b", "20-c")]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runner, "OUTPUTS", tmp / "outputs")
        mp.setattr(runner, "deploy_stages", lambda: stages)
        run = runner.run_chain(PARAMS)
    assert run.manifest["status"] == "ok"
    return run.dir


@pytest.fixture
def run_dir(made, tmp_path, monkeypatch):
    outputs = tmp_path / "outputs"
    d = outputs / made.name
    shutil.copytree(made, d)
    monkeypatch.setattr(runner, "OUTPUTS", outputs)
    return d


def manifest(d: Path) -> dict:
    return json.loads((d / "run.json").read_text())


def rewrite(d: Path, m: dict) -> None:
    (d / "run.json").write_text(json.dumps(m, indent=2) + "\n")


def test_an_untouched_run_verifies(run_dir):
    m = manifest(run_dir)
    v = ledger.verify_run(run_dir)
    assert v.ok, v.problems
    assert v.stages == 3 and v.head == m["stages"][-1]["entry_sha256"] == m["ledger"]["head"]
    assert m["stages"][0]["prev_sha256"] == m["ledger"]["genesis"] == ledger.genesis(m)
    for prev, e in zip(m["stages"], m["stages"][1:]):
        assert e["prev_sha256"] == prev["entry_sha256"]
    assert all(len(e["notebook_sha256"]) == 64 for e in m["stages"])
    assert v.verdict.startswith("intact")


def test_one_changed_byte_of_a_notebook_names_its_stage(run_dir):
    nb = run_dir / "10-b.ipynb"
    data = bytearray(nb.read_bytes())
    i = data.index(b"thing 10-b")
    data[i] = ord("T")
    nb.write_bytes(bytes(data))
    v = ledger.verify_run(run_dir)
    assert not v.ok
    assert (v.first.kind, v.first.stage) == ("notebook-changed", "10-b")
    assert [p.kind for p in v.problems] == ["notebook-changed"]


def test_a_removed_entry_is_detected(run_dir):
    m = manifest(run_dir)
    del m["stages"][1]
    rewrite(run_dir, m)
    v = ledger.verify_run(run_dir)
    assert not v.ok
    assert v.first.kind == "entry-removed" and "10-b" in str(v.first)
    assert any(p.kind == "extra-notebook" and p.stage == "10-b" for p in v.problems)


def test_a_removed_last_entry_is_detected(run_dir):
    m = manifest(run_dir)
    m["stages"].pop()
    (run_dir / "20-c.ipynb").unlink()
    rewrite(run_dir, m)
    v = ledger.verify_run(run_dir)
    assert [p.kind for p in v.problems][:1] == ["entry-removed"] and "20-c" in str(v.first)


def test_swapped_entries_are_detected(run_dir):
    m = manifest(run_dir)
    m["stages"][0], m["stages"][1] = m["stages"][1], m["stages"][0]
    rewrite(run_dir, m)
    v = ledger.verify_run(run_dir)
    assert not v.ok
    assert (v.first.kind, v.first.stage) == ("reordered", "10-b")
    assert {p.kind for p in v.problems} == {"reordered"}


def test_an_edited_field_is_detected(run_dir):
    m = manifest(run_dir)
    m["stages"][1]["changed"] = 0
    rewrite(run_dir, m)
    v = ledger.verify_run(run_dir)
    assert (v.first.kind, v.first.stage) == ("entry-edited", "10-b")


def test_an_edited_and_resealed_entry_breaks_the_next_link(run_dir):
    m = manifest(run_dir)
    e = m["stages"][1]
    e["changes"] = []
    e["entry_sha256"] = ledger.entry_digest(e)
    rewrite(run_dir, m)
    v = ledger.verify_run(run_dir)
    assert not v.ok and v.first.stage == "20-c" and v.first.kind == "entry-removed"


def test_an_edited_header_is_detected(run_dir):
    m = manifest(run_dir)
    m["who"] = "someone-else"
    rewrite(run_dir, m)
    assert ledger.verify_run(run_dir).first.kind == "header-edited"


def test_a_notebook_not_in_the_record_is_detected(run_dir):
    shutil.copy(run_dir / "00-a.ipynb", run_dir / "30-extra.ipynb")
    v = ledger.verify_run(run_dir)
    assert [(p.kind, p.stage) for p in v.problems] == [("extra-notebook", "30-extra")]


def test_a_missing_notebook_is_detected(run_dir):
    (run_dir / "00-a.ipynb").unlink()
    assert (ledger.verify_run(run_dir).first.kind, ledger.verify_run(run_dir).first.stage) == ("notebook-missing", "00-a")


def test_a_run_without_a_chain_is_reported_unsealed(run_dir):
    m = manifest(run_dir)
    del m["ledger"]
    rewrite(run_dir, m)
    assert ledger.verify_run(run_dir).first.kind == "unsealed"


def test_cli_verify_exit_codes_and_show(run_dir):
    cli_runner = CliRunner()
    ok = cli_runner.invoke(cli.main, ["record", "verify", run_dir.name])
    assert ok.exit_code == 0, ok.output
    assert "intact" in ok.output
    shown = cli_runner.invoke(cli.main, ["record", "show", run_dir.name])
    assert shown.exit_code == 0 and "record: intact" in shown.output
    listed = cli_runner.invoke(cli.main, ["record", "list"])
    assert listed.exit_code == 0 and "intact" in listed.output

    m = manifest(run_dir)
    m["stages"][2]["status"] = "failed"
    rewrite(run_dir, m)
    bad = cli_runner.invoke(cli.main, ["record", "verify", run_dir.name])
    assert bad.exit_code == 1 and "NOT INTACT" in bad.output and "20-c" in bad.output
    assert "NOT INTACT" in cli_runner.invoke(cli.main, ["record", "show", run_dir.name]).output
    assert cli_runner.invoke(cli.main, ["record", "verify", "no-such-run"]).exit_code == 1


def test_report_shows_stages_changes_and_verdict_and_can_be_regenerated(run_dir):
    (run_dir / "index.html").unlink()
    res = CliRunner().invoke(cli.main, ["report", run_dir.name])
    assert res.exit_code == 0, res.output
    page = (run_dir / "index.html").read_text()
    for name in ("00-a", "10-b", "20-c"):
        assert f"<a href='{name}.html'>{name}</a>" in page
        assert f"<td>{name}</td><td>create</td><td>thing {name}</td>" in page
    assert "intact" in page and "PLAN" not in page
    stage = (run_dir / "10-b.html").read_text()
    assert "thing 10-b" in stage
    assert "injected-parameters" in stage and "local.yaml" in stage, "the injected cell shows this run's values"
    assert '<span class="n">params_file</span>' in stage, "the notebook's own parameters cell stays"
    assert "<script src=" not in stage, "stage pages load nothing from the network"


def test_resume_keeps_the_chain_valid_and_refuses_a_tampered_run(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "OUTPUTS", tmp_path / "outputs")
    flag = tmp_path / "fixed"
    stages = [notebook(tmp_path / "00-a.ipynb", RECORD.format(name="00-a")),
              notebook(tmp_path / "10-b.ipynb", f"import os\nassert os.path.exists({str(flag)!r}), 'not yet'",
                       RECORD.format(name="10-b"))]
    monkeypatch.setattr(runner, "deploy_stages", lambda: stages)
    run = runner.run_chain(PARAMS, dry_run=True)
    assert run.manifest["status"] == "failed" and ledger.verify_run(run.dir).ok
    page = (run.dir / "index.html").read_text()
    assert "PLAN — nothing was changed" in page and "What would change" in page

    flag.write_text("yes")
    saved = (run.dir / "run.json").read_text()
    m = json.loads(saved)
    m["stages"][0]["changes"] = ["create nothing"]
    rewrite(run.dir, m)
    with pytest.raises(Exception, match="does not verify"):
        runner.run_chain(PARAMS, resume=run.id)
    (run.dir / "run.json").write_text(saved)

    again = runner.run_chain(PARAMS, resume=run.id)
    assert again.manifest["status"] == "ok"
    v = ledger.verify_run(again.dir)
    assert v.ok, v.problems
