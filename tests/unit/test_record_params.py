"""A record says which parameters its run used, not the runbook's default (no engine).

Runbooks' parameters cells hold `params_file = "parameters/local.yaml"`; a run of another
deployment gets its real values in papermill's injected-parameters cell. The executed notebook
and the report must say so, and a secret given as a runbook parameter must still be redacted
from both (the injected cell is shown in the report now)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest

from hubops.audit import ledger, paramnote, runner
from hubops.audit.redact import MASK
from tests.helpers import make_params

DEFAULTS = ('params_file = "parameters/local.yaml"  # the deployment\'s parameter file\n'
            'dry_run = False  # plan only\nnote = ""  # a runbook parameter')
SECRET = "s3cr3t-runbook-value-9f2c41"  # named like a token in the environment: the redactor knows it


def runbook(path: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell(DEFAULTS)
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(
        'import hubops\nhubops.record("announce", hubops.Result("x").change("create", f"thing from {params_file}"))')]
    nbformat.write(nb, path)
    return path


@pytest.fixture
def other_run(tmp_path, monkeypatch):
    """One run of a non-default parameter file (deployment `elsewhere`), with a secret among the
    runbook's parameters."""
    monkeypatch.setattr(runner, "OUTPUTS", tmp_path / "outputs")
    monkeypatch.setenv("HUBOPS_TEST_RUNBOOK_TOKEN", SECRET)
    params = make_params(tmp_path, "elsewhere", port=18999, subnet="10.251.3.0/24")
    src = runbook(tmp_path / "announce.ipynb")
    monkeypatch.setattr(runner, "ops_runbook", lambda name: src)
    run = runner.run_chain(params, runbook="announce", runbook_parameters={"note": f"token {SECRET}"})
    assert run.manifest["status"] == "ok", run.manifest
    return run, params


def test_the_executed_notebook_marks_the_defaults_and_names_the_run_s_parameters(other_run):
    run, params = other_run
    nb = nbformat.read(run.dir / "announce.ipynb", as_version=4)
    defaults, injected = nb.cells[0], nb.cells[1]
    assert "injected-parameters" in injected.metadata.tags and str(params) in injected.source
    assert defaults.source.startswith("# RUNBOOK DEFAULTS, NOT THIS RUN'S VALUES"), defaults.source
    assert "'elsewhere'" in defaults.source and str(params) in defaults.source
    assert "params_file, dry_run, note" in defaults.source
    assert defaults.source.endswith(DEFAULTS), "the defaults themselves are unchanged"
    assert nb.metadata.hubops["deployment"] == "elsewhere" and nb.metadata.hubops["params_file"] == str(params)
    assert ledger.verify_run(run.dir).ok, "the note is written before the notebook is sealed"


def test_the_report_shows_the_injected_parameters_not_only_the_default(other_run):
    """Fails on the report that hid the injected cell: the page then showed only local.yaml."""
    run, params = other_run
    text = (run.dir / "announce.html").read_text()
    plain = re.sub(r"<[^>]+>", "", text)
    assert "injected-parameters" in text, "the injected cell is shown"
    assert str(params) in plain, "the page names the parameter file this run used"
    assert "deployment elsewhere" in plain and "holds the values this run used" in plain
    assert plain.index(str(params)) < plain.index("parameters/local.yaml"), \
        "the run's own file is named before the runbook's default"
    assert "RUNBOOK DEFAULTS, NOT THIS RUN" in plain


def test_a_secret_given_as_a_runbook_parameter_is_redacted_from_the_shown_injected_cell(other_run):
    run, _ = other_run
    files = [f for f in run.dir.rglob("*") if f.is_file()]
    assert {f.suffix for f in files} >= {".ipynb", ".html", ".json"}
    for f in files:
        assert SECRET.encode() not in f.read_bytes(), f"{f.name} holds the secret"
    nb = json.loads(next(f for f in files if f.suffix == ".ipynb").read_text())
    injected = "".join(nb["cells"][1]["source"])
    assert f"token {MASK}" in injected, injected
    assert MASK in nb["metadata"]["papermill"]["parameters"]["note"]


def test_mark_is_pure_and_idempotent():
    nb = {"metadata": {"papermill": {"parameters": {"params_file": "/x/lab.yaml", "dry_run": False}}},
          "cells": [{"cell_type": "code", "metadata": {"tags": ["parameters"]}, "source": "params_file = 'd'"},
                    {"cell_type": "code", "metadata": {"tags": ["injected-parameters"]}, "source": "params_file = '/x'"}]}
    m = {"run_id": "r", "deployment": "lab", "params_file": "/x/lab.yaml", "params_sha256": "ab"}
    assert paramnote.mark_notebook(nb, m) and paramnote.mark_notebook(nb, m)
    assert nb["cells"][0]["source"].count("RUNBOOK DEFAULTS") == 1
    assert nb["cells"][0]["source"].endswith("params_file = 'd'")
    bare = {"cells": [{"cell_type": "code", "metadata": {"tags": ["parameters"]}, "source": "x = 1"}]}
    assert not paramnote.mark_notebook(bare, m), "a notebook run without injected parameters is left alone"


def test_a_run_whose_runbook_parameter_was_redacted_is_not_resumed_with_the_mask(other_run):
    run, params = other_run
    assert MASK in json.loads((run.dir / "run.json").read_text())["runbook_parameters"]["note"]
    with pytest.raises(Exception, match="note held a secret"):
        runner.run_chain(params, resume=run.id)
