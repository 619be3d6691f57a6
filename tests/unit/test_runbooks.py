"""Every runbook keeps the stage-notebook contract: a markdown header, a tagged parameters cell
with only plain literals (no secret), no stored outputs, and a last cell that records results."""
from __future__ import annotations

import ast
from pathlib import Path

import nbformat
import pytest

PROJECT = Path(__file__).resolve().parents[2]
RUNBOOKS = sorted((PROJECT / "runbooks").rglob("*.ipynb"))
RUNBOOKS = [r for r in RUNBOOKS if ".ipynb_checkpoints" not in r.parts]


def test_the_deploy_chain_is_complete():
    names = [r.stem for r in sorted((PROJECT / "runbooks").glob("[0-9][0-9]-*.ipynb"))]
    assert names == ["00-preflight", "10-hosts", "20-swarm", "30-network", "40-tls", "50-auth",
                     "60-images", "65-netpolicy", "70-storage", "80-deploy", "90-verify"]


@pytest.mark.parametrize("path", RUNBOOKS, ids=lambda p: p.stem)
def test_runbook_contract(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    first, second = nb.cells[0], nb.cells[1]
    assert first.cell_type == "markdown" and first.source.startswith("# ")
    for word in ("What it does", "Changes on the cluster", "Undo"):
        assert word in first.source, f"{path.name}: header lacks '{word}'"
    assert second.cell_type == "code" and "parameters" in second.metadata.get("tags", [])
    tree = ast.parse(second.source)
    for stmt in tree.body:
        assert isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.Constant), \
            f"{path.name}: the parameters cell holds only plain literals"
    for line in second.source.splitlines():
        assert "#" in line, f"{path.name}: parameter without a help comment: {line}"
        assert not any(w in line.split("#")[0].lower() for w in ("secret", "password", "token")), line
    names = {t.id for s in tree.body for t in s.targets}
    assert {"params_file", "dry_run"} <= names
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{path.name}: stored outputs"
            assert "try:" not in cell.source, f"{path.name}: no try/except in notebooks"
    assert "widgets" not in nb.metadata, f"{path.name}: widget state saved by JupyterLab; clear it"
    last = nb.cells[-1]
    assert last.cell_type == "code" and last.source.startswith(f'hubops.record("{path.stem}"')
