"""The layout a newcomer relies on: a stage's notebook, its hubops module and its tests found by name."""
from __future__ import annotations

import collections
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]


def test_test_modules_have_unique_names():
    # pytest imports test modules by basename (no __init__.py): two of one name break collection.
    names = collections.Counter(p.name for p in (PROJECT / "tests").rglob("test_*.py"))
    assert [n for n, k in names.items() if k > 1] == []


def test_every_stage_has_its_module():
    modules = {p.stem for p in (PROJECT / "hubops").glob("*.py")}
    stage_module = {"00-preflight": "preflight", "10-hosts": "hosts", "20-swarm": "swarm", "30-network": "network",
                    "40-tls": "tls", "50-auth": "auth", "60-images": "images", "70-storage": "storage",
                    "80-deploy": "deploy", "90-verify": "verify"}
    stages = {p.stem for p in (PROJECT / "runbooks").glob("[0-9][0-9]-*.ipynb")}
    assert stages == set(stage_module)
    for stage, module in stage_module.items():
        assert module in modules, f"{stage}: no hubops/{module}.py"
        assert f"hubops.{module}." in (PROJECT / "runbooks" / f"{stage}.ipynb").read_text(), stage
