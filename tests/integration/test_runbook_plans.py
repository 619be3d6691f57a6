"""Notebook regression tests (pytest-notebook) for the runbooks, on what is stable: the
parameters cell, the cells' structure, and the plan (`dry_run = True`) against a fixed cluster
state: deployment `nb2` (tests/data/runbook-plans/nb2.yaml), of which nothing exists.

Each expected notebook under tests/data/runbook-plans/ is the runbook with its parameters cell
pointed at nb2.yaml and `dry_run = True`, executed. The test checks that it still matches the
runbook cell by cell, then executes it again and compares every output with volatile values masked
(times, digests, IDs, addresses, this machine's name, temporary paths, engine versions).

The expected notebooks hold no value of the machine they were recorded on: every output (text, HTML,
an error's message and the stage's record) and the notebook's metadata are masked when they are
written (`scrub`; an error's traceback is dropped), and
the values of this machine's state (the swarm's and the node's IDs, the engine's ID, name and
version, the host name, the user, the home and project folders, CPU and memory figures) are masked
in the fresh run wherever they appear, beside the patterns below. The fixed state includes a swarm:
the local engine is put in a single-node swarm when it is in none, as the other integration tests do,
its node carries `hubops.managed=true` as after any deployment, and the base image and the
network-policy agent's image (65-netpolicy plans to deliver it, or to build it when it is missing) exist.

A runbook that refuses this state records its refusal instead of a plan (REFUSED): ops/migrate-db
with nb2's SQLite parameters stops at its first check, and the cells after it fail for want of the
plan. The expected notebook keeps those errors (their names and messages are compared; tracebacks are
not) and the test checks that the first is the refusal named in REFUSED.

After a deliberate change to a runbook or to what a plan says, regenerate and review the diff:
    .venv/bin/pytest tests/integration/test_runbook_plans.py --nb-force-regen
"""
from __future__ import annotations

import getpass
import json
import os
import platform
import re
from pathlib import Path

import docker
import nbformat
import pytest

from hubops.core.nodes import update_node
from hubops.stages import images, netpolicy
from tests.helpers import ensure_swarm

pytestmark = pytest.mark.engine
PROJECT = Path(__file__).resolve().parents[2]
DATA = PROJECT / "tests" / "data" / "runbook-plans"
PARAMS = "tests/data/runbook-plans/nb2.yaml"
RUNBOOKS = ["20-swarm", "30-network", "40-tls", "50-auth", "65-netpolicy", "70-storage", "80-deploy", "90-verify",
            "ops/migrate-db", "ops/teardown"]
# Runbooks whose answer to the fixed state is a refusal: (the exception's name, words of its message).
REFUSED = {"ops/migrate-db": ("MigrationRefused", "storage.hub.mode is volume: refused, nothing was changed")}
OUTPUTS = ("/cells/*/outputs/*/text", "/cells/*/outputs/*/data/text/plain", "/cells/*/outputs/*/data/text/html",
           "/cells/*/outputs/*/evalue")
MASKS = [
    # The swarm's ID, wherever it stands: "swarm ID", "swarm_id: ID", "<td>swarm_id</td><td><code>ID".
    (r"\b(swarm_id\b\W*(?:<[^>]*>\W*)*|swarm )[0-9a-z]{10,25}\b", r"\1SWARM-ID"),
    (r"\b\d{2}:\d{2}:\d{2}\b", "HH:MM:SS"),
    (r"\b\d{4}-\d{2}-\d{2}[T ][0-9:.+Z]*", "DATETIME"),
    (r"\b(sha256:)?[0-9a-f]{12,64}\b", "DIGEST"),
    (r"\b[0-9a-z]{25}\b", "SWARM-ID"),
    (r"\b\d{1,3}(\.\d{1,3}){3}(/\d+)?(:\d+)?\b", "ADDRESS"),  # with its port: a swarm's port is its own
    (r"/tmp/[^\s'\"<,)]+", "TMP-PATH"),
    (r"\b\d+(\.\d+)? s\b", "N s"),
    (r"\b\d+\.\d+\.\d+([-+~][\w.~+-]*)?", "VERSION"),
    (r"\b\d+(\.\d+)? ?([KMGT]i?B|bytes)\b", "N B"),  # memory and disk figures
    (r"\b\d+ (CPUs?|cores?)\b", "N CPUs"),
]


def machine_values() -> list[tuple[str, str]]:
    """This machine's state, as (literal value, mask): whatever shape an output gives them, they are
    masked. Longest first, so that a value containing another is masked whole."""
    found = {platform.node(): "HOSTNAME", str(PROJECT): "PROJECT", os.path.expanduser("~"): "HOME",
             getpass.getuser(): "USER", platform.python_version(): "VERSION", platform.release(): "VERSION"}
    try:
        client = docker.from_env(timeout=30)
        info = client.info()
        sw = info.get("Swarm") or {}
        for v, what in ((sw.get("NodeID"), "NODE-ID"), ((sw.get("Cluster") or {}).get("ID"), "SWARM-ID"),
                        (info.get("ID"), "ENGINE-ID"), (info.get("Name"), "HOSTNAME"),
                        (info.get("ServerVersion"), "VERSION"), (info.get("KernelVersion"), "VERSION")):
            if v:
                found[v] = what
                if what.endswith("-ID"):
                    found[v[:12]] = what  # as hubops shows IDs
        found[str(info.get("MemTotal"))] = "N B"
        client.close()
    except docker.errors.DockerException:
        pass
    # Too short or too common to mask as a word (a user `root` beside "root CA", a 1-digit figure, a
    # machine named like the parameters' `localhost`): those stay as they are.
    return sorted(((v, m) for v, m in found.items() if v and len(v) >= 5 and v not in ("localhost", "local")),
                  key=lambda vm: -len(vm[0]))


def masks() -> list[tuple[str, str]]:
    return [(rf"(?<![\w.-]){re.escape(v)}(?![\w-])", m) for v, m in machine_values()] + MASKS


ID_KEYS = {"swarm_id": "SWARM-ID", "node_id": "NODE-ID", "engine_id": "ENGINE-ID"}  # a record's facts


def scrub(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The notebook as it is kept under tests/data: every string of every output (the record too) and
    of the metadata masked, so that it holds no value of the machine that recorded it."""
    rules = [(re.compile(rx), sub) for rx, sub in masks()]

    def walk(x):
        if isinstance(x, str):
            for rx, sub in rules:
                x = rx.sub(sub, x)
            return x
        if isinstance(x, list):
            return [walk(v) for v in x]
        if isinstance(x, dict):
            return type(x)({k: ID_KEYS[k] if k in ID_KEYS and isinstance(v, str) else walk(v) for k, v in x.items()})
        return x

    for cell in nb.cells:
        if "outputs" in cell:
            cell.outputs = nbformat.from_dict(walk(cell.outputs))
            for out in cell.outputs:
                if out.output_type == "error":  # not compared; colour codes hide its paths from the masks
                    out.traceback = []
        cell.metadata = nbformat.from_dict(walk(cell.metadata))
    nb.metadata = nbformat.from_dict(walk(nb.metadata))
    return nb


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
    ensure_swarm()
    client = docker.from_env()
    # The plans name the images 60-images would build (80-deploy: hubops-hub:DIGEST): their tags come
    # from the base image, made here when the engine has none (pulled, or debootstrapped: ~1 min).
    images.ensure_base_image(client)
    # 65-netpolicy's plan keeps the agent image when it exists and plans to build it when not: the
    # fixed state has it (content-addressed, shared with every deployment: built once per machine).
    images.ensure_image_built(client, netpolicy.KIND, images_dir=images.PROJECT_IMAGES, deployment="nb2")
    # A node any hubops deployment has used carries hubops.managed=true (teardown keeps it); the plans
    # are recorded against such a node, whether or not an earlier test or deploy labelled it.
    node = client.nodes.get(client.info()["Swarm"]["NodeID"])
    if (node.attrs["Spec"].get("Labels") or {}).get("hubops.managed") != "true":
        update_node(node, lambda spec: spec["Labels"].update({"hubops.managed": "true"}))  # others label it too
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
    nb_regression.exec_allow_errors = runbook in REFUSED
    nb_regression.diff_ignore = ("/metadata", "/cells/*/metadata", "/cells/*/execution_count",
                                 "/cells/*/outputs/*/execution_count", "/cells/*/outputs/*/traceback",
                                 "/cells/*/outputs/*/data/application/vnd.hubops.record+json")
    nb_regression.diff_replace = tuple((where, rx, sub) for where in OUTPUTS for rx, sub in masks())
    try:
        nb_regression.check(str(path))
    finally:
        if regen:  # what pytest-notebook wrote holds this machine's values: keep it masked
            nbformat.write(scrub(nbformat.read(path, as_version=4)), path)
    errors = [o for c in nbformat.read(path, as_version=4).cells for o in c.get("outputs", [])
              if o.output_type == "error"]
    if runbook in REFUSED:
        name, words = REFUSED[runbook]
        assert errors and errors[0].ename == name and words in errors[0].evalue, \
            f"{path.name}: the first error is not the refusal {name} ({words!r}): {errors[:1]}"
    else:
        assert errors == [], f"{path.name} records errors: {[(e.ename, e.evalue) for e in errors]}"


def test_expected_notebooks_hold_no_value_of_this_machine():
    """The kept notebooks are masked: none of this machine's values (its swarm, node and engine IDs,
    names, version, folders) is in them, and the masking itself finds nothing more to mask."""
    values = [v for v, _ in machine_values()]
    for path in sorted(DATA.glob("*.ipynb")):
        text = path.read_text()
        assert [v for v in values if v in text] == [], f"{path.name} holds values of this machine"
        nb = nbformat.read(path, as_version=4)
        assert nbformat.writes(scrub(nbformat.read(path, as_version=4))) == nbformat.writes(nb), \
            f"{path.name} is not masked: regenerate it with --nb-force-regen"
