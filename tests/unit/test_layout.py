"""The house a newcomer relies on, as tests: a runbook's module and tests found by name, and the
import rules that keep the parts changeable (hubops/__init__.py lists the parts).

Rules (each test names the file and line that breaks one):
- core imports only core; hub only core and hub; lab only core; inhub nothing of hubops;
- stages import core, hub and other stages' public names; never ops, audit, lab or cli;
- ops import core, hub, stages, other ops modules and audit.redact; never the runner, lab or cli;
- audit (the record) imports core and audit; never a stage or a day-2 module;
- no module imports or uses another module's private names (a leading underscore);
- loading parameters (hubops.core.params) and `import hubops` never load the Docker SDK.
"""
from __future__ import annotations

import ast
import collections
import json
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[2]
PKG = PROJECT / "hubops"

ALLOWED = {  # part -> parts (or part.module) it may import
    "core": {"core"},
    "hub": {"core", "hub"},
    "inhub": set(),
    "stages": {"core", "hub", "stages"},
    "ops": {"core", "hub", "stages", "ops", "audit.redact"},
    "audit": {"core", "audit"},
    "lab": {"core", "lab"},
    "cli": {"core", "hub", "stages", "ops", "audit", "lab", "cli"},
}


def module_name(path: Path) -> str:
    rel = path.relative_to(PROJECT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def part_of(module: str) -> str:
    bits = module.split(".")
    return bits[1] if len(bits) > 1 else ""


def imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, imported hubops module, names taken from it) for every import, at any depth."""
    tree = ast.parse(path.read_text(), str(path))
    me = module_name(path)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("hubops"):
                    out.append((node.lineno, a.name, []))
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:  # relative: resolve against this module's package
                base = me.split(".")[: -node.level] if not path.name == "__init__.py" else me.split(".")[: len(me.split(".")) - node.level + 1]
                mod = ".".join([*base, mod] if mod else base)
            if mod.startswith("hubops"):
                names = [a.name for a in node.names]
                # `from hubops.stages import images` imports the module hubops.stages.images
                subs = [n for n in names if (PKG / Path(*mod.split(".")[1:]) / f"{n}.py").exists()
                        or (PKG / Path(*mod.split(".")[1:]) / n / "__init__.py").exists()]
                for n in subs:
                    out.append((node.lineno, f"{mod}.{n}", []))
                rest = [n for n in names if n not in subs]
                if rest or not subs:
                    out.append((node.lineno, mod, rest))
    return out


def library_files() -> list[Path]:
    return sorted(p for p in PKG.rglob("*.py") if "__pycache__" not in p.parts)


def violations() -> list[str]:
    found = []
    for path in library_files():
        me = module_name(path)
        mine = part_of(me)
        if not mine:  # hubops/__init__.py: lazy by design, checked below
            continue
        allowed = ALLOWED[mine]
        for line, target, names in imports(path):
            where = f"{path.relative_to(PROJECT)}:{line}"
            tpart = part_of(target)
            tsub = ".".join(target.split(".")[1:3])
            if target == "hubops":
                if names and set(names) - {"__version__"}:
                    found.append(f"{where}: imports {names} from the package root; import from the part that defines them")
                continue
            if tpart not in allowed and tsub not in allowed:
                found.append(f"{where}: {mine} may not import {target} (allowed: {', '.join(sorted(allowed)) or 'nothing of hubops'})")
            private = [n for n in names if n.startswith("_") and n != "__version__"]
            if private and target != me:
                found.append(f"{where}: imports private {', '.join(private)} from {target}")
        # attribute access to another module's private names: `mod._name`
        tree = ast.parse(path.read_text())
        aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("hubops"):
                for a in node.names:
                    aliases[a.asname or a.name] = f"{node.module}.{a.name}"
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("hubops"):
                        aliases[a.asname or a.name.split(".")[0]] = a.name
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                found.append(f"{path.relative_to(PROJECT)}:{node.lineno}: uses private {node.value.id}.{node.attr} "
                             f"of {aliases[node.value.id]}")
    return found


def test_the_import_rules_hold():
    assert violations() == []


def test_the_rules_catch_a_broken_rule(tmp_path, monkeypatch):
    """The checker itself can fail: a stage that imports the runner and another stage's private
    name is reported, line by line."""
    bad = PKG / "stages" / "zz_rule_probe.py"
    bad.write_text("from hubops.audit import runner\nfrom hubops.stages.deploy import _what_changed\n"
                   "from hubops.stages import images\nimages._build\n")
    try:
        found = "\n".join(violations())
    finally:
        bad.unlink()
    assert "zz_rule_probe.py:1: stages may not import hubops.audit.runner" in found
    assert "zz_rule_probe.py:2: imports private _what_changed from hubops.stages.deploy" in found
    assert "zz_rule_probe.py:4: uses private images._build" in found


def loaded_after(statement: str) -> set[str]:
    code = f"import sys, json\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=PROJECT, capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout))


@pytest.mark.parametrize("statement", ["import hubops", "import hubops.core.params",
                                       "from hubops.core.params import load_params"])
def test_loading_parameters_does_not_load_docker(statement):
    mods = loaded_after(statement)
    assert not {m for m in mods if m == "docker" or m.startswith("docker.")}, statement


def test_import_hubops_loads_no_stage():
    mods = loaded_after("import hubops")
    assert not {m for m in mods if m.startswith(("hubops.stages", "hubops.ops", "hubops.audit", "hubops.lab"))}


def test_the_runner_loads_no_stage():
    mods = loaded_after("import hubops.audit.runner, hubops.audit.report")
    assert not {m for m in mods if m.startswith(("hubops.stages", "hubops.ops", "hubops.lab", "hubops.cli"))}


def test_version_comes_from_the_package_metadata():
    import importlib.metadata

    import hubops

    assert hubops.__version__ == importlib.metadata.version("hubops")


def test_test_modules_have_unique_names():
    # pytest imports test modules by basename (no __init__.py): two of one name break collection.
    names = collections.Counter(p.name for p in (PROJECT / "tests").rglob("test_*.py"))
    assert [n for n, k in names.items() if k > 1] == []


def runbooks(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.ipynb"))


@pytest.mark.parametrize("nb", runbooks(PROJECT / "runbooks"), ids=lambda p: p.stem)
def test_every_stage_runbook_has_its_module(nb):
    """runbooks/NN-NAME.ipynb -> hubops/stages/NAME.py, which the notebook imports."""
    name = nb.stem.split("-", 1)[1].replace("-", "_")
    assert (PKG / "stages" / f"{name}.py").exists(), f"{nb.name}: no hubops/stages/{name}.py"
    assert f"from hubops.stages import {name}" in nb.read_text(), nb.name


@pytest.mark.parametrize("nb", runbooks(PROJECT / "runbooks" / "ops"), ids=lambda p: p.stem)
def test_every_day2_runbook_has_its_module(nb):
    """runbooks/ops/NAME.ipynb -> hubops/ops/NAME.py (dashes become underscores)."""
    name = nb.stem.replace("-", "_")
    assert (PKG / "ops" / f"{name}.py").exists(), f"{nb.name}: no hubops/ops/{name}.py"
    assert f"from hubops.ops import {name}" in nb.read_text(), nb.name
