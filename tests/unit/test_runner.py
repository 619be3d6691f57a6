"""The chain runner on small notebooks (no engine): records, failures, timeouts, resume."""
from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from hubops.audit import runner
from hubops.core.params import load_params

PROJECT = Path(__file__).resolve().parents[2]


def notebook(path: Path, *cells: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell('params_file = ""  # the file\ndry_run = False  # plan')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params] + [nbformat.v4.new_code_cell(c) for c in cells]
    nbformat.write(nb, path)
    return path


RECORD = 'import hubops\nhubops.record("{name}", hubops.Result("x").change("create", "thing {name}"))'


@pytest.fixture
def chain(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "OUTPUTS", tmp_path / "outputs")
    flag = tmp_path / "fixed"
    stages = [
        notebook(tmp_path / "00-a.ipynb", RECORD.format(name="00-a")),
        notebook(tmp_path / "10-b.ipynb", f"import os\nassert os.path.exists({str(flag)!r}), 'not fixed yet'",
                 RECORD.format(name="10-b")),
        notebook(tmp_path / "20-c.ipynb", RECORD.format(name="20-c")),
    ]
    monkeypatch.setattr(runner, "deploy_stages", lambda: stages)
    return tmp_path, flag


def test_failure_stops_the_chain_then_resume_continues(chain):
    tmp, flag = chain
    params = PROJECT / "parameters/local.yaml"
    run = runner.run_chain(params)
    m = json.loads((run.dir / "run.json").read_text())
    assert m["status"] == "failed"
    assert [s["status"] for s in m["stages"]] == ["ok", "failed", "pending"]
    failed = m["stages"][1]
    assert failed["error"]["ename"] == "AssertionError" and "not fixed yet" in failed["error"]["evalue"]
    assert failed["error"]["cell"] == 3  # execution count, as Jupyter shows it: parameters, injected, failing
    assert m["stages"][0]["changes"] == ["create thing 00-a"]
    assert m["params_sha256"] == load_params(params).digest and m["who"] and m["machine"]
    assert (run.dir / "index.html").exists() and "failed" in (run.dir / "index.html").read_text()

    flag.write_text("yes")
    again = runner.run_chain(params, resume=run.id)
    m2 = json.loads((again.dir / "run.json").read_text())
    assert again.dir == run.dir and m2["status"] == "ok"
    assert [s["status"] for s in m2["stages"]] == ["ok", "ok", "ok"]
    assert m2["stages"][0]["started"] == m["stages"][0]["started"], "a finished stage is not run again"
    assert m2["changed"] == 3


def test_timeout_is_recorded_as_a_failure_with_its_cell(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "OUTPUTS", tmp_path / "outputs")
    slow = notebook(tmp_path / "00-slow.ipynb", "x = 1", "import time\ntime.sleep(30)", RECORD.format(name="00-slow"))
    monkeypatch.setattr(runner, "deploy_stages", lambda: [slow])
    run = runner.run_chain(PROJECT / "parameters/local.yaml", timeout=3)
    stage = run.manifest["stages"][0]
    assert run.manifest["status"] == "failed" and stage["status"] == "failed"
    assert stage["error"]["ename"] == "CellTimeoutError"
    assert stage["error"]["cell"] == 4  # parameters, injected parameters, x = 1, the sleep
    print(f"\nthe stage stopped after {stage['duration_s']} s (timeout 3 s, the cell sleeps 30 s)")
    nb = nbformat.read(run.dir / "00-slow.ipynb", as_version=4)
    marked = [c for c in nb.cells if c.get("metadata", {}).get("papermill", {}).get("exception")]
    assert [c.execution_count for c in marked] == [4]
    assert any(o.get("ename") == "StageStopped" for o in marked[0].outputs)


def test_a_stage_without_a_record_fails(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "OUTPUTS", tmp_path / "outputs")
    quiet = notebook(tmp_path / "00-quiet.ipynb", "x = 1")
    monkeypatch.setattr(runner, "deploy_stages", lambda: [quiet])
    run = runner.run_chain(PROJECT / "parameters/local.yaml")
    assert run.manifest["stages"][0]["error"]["ename"] == "NoRecord"


def test_resume_refuses_a_changed_parameter_file(chain, tmp_path):
    params = tmp_path / "p.yaml"
    params.write_text((PROJECT / "parameters/local.yaml").read_text().replace("local.userlist",
                                                                             str(PROJECT / "parameters/local.userlist")))
    run = runner.run_chain(params)
    params.write_text(params.read_text() + "\n# edited\n")
    with pytest.raises(Exception, match="changed since run"):
        runner.run_chain(params, resume=run.id)


@pytest.mark.parametrize("ahead", [2, 0])
def test_each_stage_runs_in_its_own_kernel_and_none_is_left_running(tmp_path, monkeypatch, ahead):
    """Kernels are started ahead of their stages (hubops.audit.kernels; 0: not at all); every stage
    still gets a fresh one, and the ones started for stages that never ran are shut down when a
    stage fails."""
    import psutil

    from hubops.audit import kernels

    monkeypatch.setattr(kernels, "AHEAD", ahead)
    monkeypatch.setattr(runner, "OUTPUTS", tmp_path / "outputs")
    pid_cell = "import os\nprint('kernel pid', os.getpid())"
    stages = [notebook(tmp_path / f"{i}0-s.ipynb", pid_cell, RECORD.format(name=f"{i}0-s")) for i in range(3)]
    stages.append(notebook(tmp_path / "30-fails.ipynb", pid_cell, "raise RuntimeError('stop here')"))
    stages += [notebook(tmp_path / f"{i}0-never.ipynb", RECORD.format(name=f"{i}0-never")) for i in (4, 5, 6)]
    monkeypatch.setattr(runner, "deploy_stages", lambda: stages)
    before = {c.pid for c in psutil.Process().children(recursive=True)}
    run = runner.run_chain(PROJECT / "parameters/local.yaml")
    m = json.loads((run.dir / "run.json").read_text())
    assert [s["status"] for s in m["stages"]] == ["ok"] * 3 + ["failed"] + ["pending"] * 3
    pids = []
    for s in m["stages"][:4]:
        nb = nbformat.read(run.dir / s["notebook"], as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert [c.execution_count for c in code][:3] == [1, 2, 3], "the warm-up left no trace in the counts"
        pids.append(int(code[2].outputs[0]["text"].split()[-1]))
        assert s["cells_s"] <= s["duration_s"]
    assert len(set(pids)) == 4, f"stages shared a kernel: {pids}"
    left = [c for c in psutil.Process().children(recursive=True) if c.pid not in before and c.is_running()
            and c.status() != psutil.STATUS_ZOMBIE]
    assert not left, f"kernels left running after the run: {[c.cmdline() for c in left]}"
