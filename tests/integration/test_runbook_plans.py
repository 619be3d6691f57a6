"""Notebook regression tests (pytest-notebook) for the runbooks, on what is stable: the
parameters cell, the cells' structure, and the plan (`dry_run = True`) against a fixed cluster
state: deployment `nb2` (tests/data/runbook-plans/nb2.yaml), of which nothing exists.

Each expected notebook under tests/data/runbook-plans/ is the runbook with its parameters cell
pointed at nb2.yaml and `dry_run = True`, executed. The test checks that it still matches the
runbook cell by cell, then executes it again and compares every output with volatile values masked
(times, digests, IDs, addresses, this machine's name, temporary paths, engine versions).

After a deliberate change to a runbook or to what a plan says, regenerate and review the diff:
    .venv/bin/pytest tests/integration/test_runbook_plans.py --nb-force-regen
"""
from __future__ import annotations

import json
import platform
import re
from pathlib import Path

import docker
import nbformat
import pytest

pytestmark = pytest.mark.engine
PROJECT = Path(__file__).resolve().parents[2]
DATA = PROJECT / "tests" / "data" / "runbook-plans"
PARAMS = "tests/data/runbook-plans/nb2.yaml"
RUNBOOKS = ["20-swarm", "30-network", "40-tls", "50-auth", "70-storage", "80-deploy", "90-verify", "ops/teardown"]
OUTPUTS = ("/cells/*/outputs/*/text", "/cells/*/outputs/*/data/text/plain", "/cells/*/outputs/*/data/text/html")
MASKS = [
    (r"\b\d{2}:\d{2}:\d{2}\b", "HH:MM:SS"),
    (r"\b\d{4}-\d{2}-\d{2}[T ][0-9:.+Z]*", "DATETIME"),
    (r"\b(sha256:)?[0-9a-f]{12,64}\b", "DIGEST"),
    (r"\b[0-9a-z]{25}\b", "SWARM-ID"),
    (r"\b(swarm_id: |swarm )[0-9a-z]{10,25}\b", r"\1SWARM-ID"),
    (r"\b\d{1,3}(\.\d{1,3}){3}(/\d+)?\b", "ADDRESS"),
    (r"/tmp/[^\s'\"<,)]+", "TMP-PATH"),
    (r"\b\d+(\.\d+)? s\b", "N s"),
    (r"\b\d+\.\d+\.\d+\b", "VERSION"),
]


def expected_source(runbook: str) -> nbformat.NotebookNode:
    """The runbook as the expected notebook's cells must read: parameters pointed at nb2, a plan."""
    nb = nbformat.read(PROJECT / "runbooks" / f"{runbook}.ipynb", as_version=4)
    params = nb.cells[1]
    assert "parameters" in params.metadata.get("tags", []), f"{runbook}: the second cell is the parameters cell"
    src = params.source.replace('"parameters/local.yaml"', json.dumps(PARAMS), 1)
    src, n = re.subn(r"^dry_run = False\b", "dry_run = True", src, count=1, flags=re.M)
    assert PARAMS in src and n == 1, f"{runbook}: parameters cell lacks params_file or dry_run = False"
    params.source = src
    return nb


@pytest.fixture(scope="module")
def fixed_state():
    client = docker.from_env()
    sel = {"label": "hubops.deployment=nb2"}
    left = [o.name for coll in (client.services, client.secrets, client.configs, client.networks, client.volumes)
            for o in coll.list(filters=sel)]
    assert left == [], f"the fixed state is 'nothing of nb2 exists', but these do: {left}"
    assert not Path("/tmp/hubops-nb2-plan-operator").exists(), "a plan must not write the operator folder"


@pytest.mark.parametrize("runbook", RUNBOOKS)
def test_runbook_plan_matches(runbook, fixed_state, nb_regression, request):
    path = DATA / f"{runbook.replace('/', '-')}.ipynb"
    want = expected_source(runbook)
    regen = request.config.getoption("nb_force_regen", default=False)
    if regen and (not path.exists() or [c.source for c in nbformat.read(path, as_version=4).cells]
                  != [c.source for c in want.cells]):
        nbformat.write(want, path)  # the runbook changed: start again from its cells
    assert path.exists(), f"no expected notebook {path.relative_to(PROJECT)}: run with --nb-force-regen"
    have = nbformat.read(path, as_version=4)
    # Structure and parameters: the expected notebook is the runbook, cell for cell.
    assert [(c.cell_type, c.source) for c in have.cells] == [(c.cell_type, c.source) for c in want.cells], \
        f"{path.name} no longer matches runbooks/{runbook}.ipynb: regenerate with --nb-force-regen and review"
    assert regen or any(c.get("outputs") for c in have.cells), f"{path.name} holds no outputs: regenerate it"

    nb_regression.exec_cwd = str(PROJECT)
    nb_regression.exec_timeout = 180
    nb_regression.exec_env = {"HUBOPS_HEADLESS": "1"}
    nb_regression.diff_ignore = ("/metadata", "/cells/*/metadata", "/cells/*/execution_count",
                                 "/cells/*/outputs/*/execution_count",
                                 "/cells/*/outputs/*/data/application/vnd.hubops.record+json")
    host = re.escape(platform.node())
    nb_regression.diff_replace = tuple((where, rx, sub) for where in OUTPUTS
                                       for rx, sub in MASKS + [(rf"\b{host}\b", "HOSTNAME")])
    nb_regression.check(str(path))
