"""Headless runs show what they found (issue 11, item 10), on a real single-node deployment.

A small deployment of its own (`hlXXXX`: preflight, hosts, swarm, overlay network, self-signed
TLS and shared-password auth; no images, no hub) is made with `hubops deploy --only`, then, as an
operator types them in a terminal:

- `hubops ops status` prints the nodes table on stdout (plain text, as `docker node ls` does);
- `hubops ops diagnose` prints its findings and the known recoveries;
- `hubops record show RUN --stage NAME` prints a chosen stage's tables from the record;

with no escape sequence (stdout is a pipe here), lines within 120 columns, and none of the
deployment's secrets. Torn down through the teardown runbook. About 1 to 2 minutes.
"""
from __future__ import annotations

import json
import re
import secrets as pysecrets
import socket
import time

import docker
import pytest

from hubops.core.engine import Clients
from hubops.core.params import load_params
from hubops.ops import teardown
from tests.helpers import hubops_cli, make_params, secret_hits

pytestmark = pytest.mark.engine

SUFFIX = pysecrets.token_hex(2)
DEPLOYMENT = f"hl{SUFFIX}"
SUBNET = f"10.168.{int(SUFFIX, 16) % 250 + 1}.0/24"


def free_port() -> int:
    """A free port in 18800-18899 (this suite's range)."""
    for port in range(18800, 18900):
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
                return port
            except OSError:
                continue
    raise AssertionError("no free port in 18800-18899")


def labelled(client) -> list[str]:
    return [f"{kind} {o.name}" for kind, coll in (("service", client.services), ("secret", client.secrets),
                                                  ("config", client.configs), ("network", client.networks),
                                                  ("volume", client.volumes))
            for o in coll.list(filters={"label": f"hubops.deployment={DEPLOYMENT}"})]


def cli(*args, outputs):
    res = hubops_cli(*args, outputs=outputs)
    print(f"\n$ hubops {' '.join(args)}  (exit {res.returncode})\n--- stdout\n{res.stdout}--- stderr (last lines)\n"
          + "\n".join(res.stderr.splitlines()[-6:]))
    return res


def newest_run(outputs, kind: str) -> str:
    runs = [json.loads(f.read_text()) for f in outputs.glob("*/run.json")]
    return max((r for r in runs if r["kind"] == kind), key=lambda r: r["started"])["run_id"]


@pytest.fixture(scope="module")
def small(tmp_path_factory, docker_client, request):
    tmp = tmp_path_factory.mktemp(DEPLOYMENT)
    outputs = tmp / "outputs"
    params = make_params(tmp, DEPLOYMENT, port=free_port(), subnet=SUBNET)
    assert not labelled(docker_client), f"deployment {DEPLOYMENT} exists already"
    t0 = time.monotonic()
    up = cli("deploy", "-p", str(params), "--only", "00", "--only", "10", "--only", "20", "--only", "30",
             "--only", "40", "--only", "50", outputs=outputs)
    print(f"\ndeploy of 00 to 50: {time.monotonic() - t0:.1f} s")
    p = load_params(params)
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        yield {"params": params, "outputs": outputs, "p": p, "tmp": tmp}
    finally:
        down = hubops_cli("ops", "teardown", "-p", str(params), "--set", "confirm=true", outputs=outputs)
        left = labelled(docker_client)
        if down.returncode != 0 or left:
            teardown.teardown(p, Clients(p), remove_volumes=True)
        assert down.returncode == 0, down.stderr[-3000:]
        assert not left, f"teardown left {left}"


def plain_and_fitting(text: str) -> None:
    assert "\x1b" not in text, "an escape sequence in output that is not a terminal"
    # a path or a digest is kept whole (it must stay copyable); everything else fits
    too_long = [line for line in text.splitlines() if len(line) > 120 and not any(len(w) > 40 for w in line.split())]
    assert not too_long, too_long


def no_secret(small, *outputs: str) -> None:
    p = small["p"]
    values = {f"operator/{f.name}": f.read_text().strip() for f in sorted(p.operator_path.glob("*"))
              if f.is_file() and (f.suffix != ".pem" or "key" in f.name)}
    assert "operator/admin-password" in values and "operator/ca-key.pem" in values, sorted(values)
    hits = secret_hits(values, [], {f"output {i}": text for i, text in enumerate(outputs)})
    assert not hits, hits


@pytest.fixture(autouse=True)
def no_columns(monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)  # the width of a pipe: 120 columns


def test_ops_status_prints_the_nodes_table(small):
    res = cli("ops", "status", "-p", str(small["params"]), outputs=small["outputs"])
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout
    assert re.search(r"^    NODE +HOSTNAME +ROLE +AVAILABILITY +STATE +ADDRESS +ENGINE +RUNS HUB$", out, re.M), out
    assert re.search(r"^    local +\S+ +manager \(leader\) +active +ready +127\.0\.0\.1 +\d+\.\d+\.\d+\S* +yes$", out, re.M), out
    assert re.search(r"^  managers: 1 of 1 reachable: quorum kept$", out, re.M), out
    assert re.search(r"^  check +node local +manager, active, ready$", out, re.M), out
    # progress and the record's place go to stderr, the findings to stdout
    assert "✔ status" in res.stderr and "record:" in res.stderr and "✔ status" not in out
    assert "\x1b" not in res.stderr, "colour codes on a stderr that is not a terminal"
    plain_and_fitting(out)
    no_secret(small, out, res.stderr)


def test_ops_diagnose_prints_its_findings(small):
    res = cli("ops", "diagnose", "-p", str(small["params"]), outputs=small["outputs"])
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout
    assert out.startswith("diagnose: 0 changed")
    assert re.search(r"^  nodes:\n    NODE +", out, re.M), out
    assert re.search(r"^  findings:", out, re.M), out
    assert re.search(r"^  recoveries:\n    RECOVERY +WHEN +DO$", out, re.M), out
    assert re.search(r"^    stale-vxlan +", out, re.M), out
    # no hub was deployed: diagnose finds it missing and names the recovery
    assert re.search(rf"^    hub-missing +service hubops-{DEPLOYMENT}-hub +no such service +the hub is not deployed", out, re.M), out
    assert re.search(r"^  certificate:\n    error: localhost:\d+: ConnectionRefusedError", out, re.M), out
    plain_and_fitting(out)
    no_secret(small, out, res.stderr)


def test_record_show_prints_a_chosen_stage(small):
    outputs = small["outputs"]
    status = newest_run(outputs, "status")
    res = cli("record", "show", status, "--stage", "status", outputs=outputs)
    assert res.returncode == 0, res.stderr
    assert re.search(r"^    NODE +HOSTNAME +ROLE +AVAILABILITY +STATE +ADDRESS +ENGINE +RUNS HUB$", res.stdout, re.M)
    assert re.search(r"^    local +\S+ +manager \(leader\)", res.stdout, re.M)
    assert re.search(r"^record: intact: 1 stage entries", res.stdout, re.M), res.stdout

    deploy = newest_run(outputs, "deploy")
    swarm = cli("record", "show", deploy, "--stage", "20", "--stage", "network", outputs=outputs)
    assert swarm.returncode == 0, swarm.stderr
    assert "== 20-swarm: ok" in swarm.stdout and "== 30-network: ok" in swarm.stdout
    assert re.search(r"^  ACTION +OBJECT +WHY$", swarm.stdout, re.M)
    assert re.search(rf"^  (create|keep) +network hubops-{DEPLOYMENT} +", swarm.stdout, re.M), swarm.stdout
    plain_and_fitting(res.stdout + swarm.stdout)
    no_secret(small, res.stdout, swarm.stdout)

    summary = cli("record", "show", deploy, outputs=outputs)
    assert f"hubops record show {deploy} --stage 50-auth" in summary.stdout


def test_a_plan_prints_what_it_would_do(small):
    res = cli("ops", "teardown", "-p", str(small["params"]), "--plan", outputs=small["outputs"])
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout
    assert out.startswith("teardown: PLAN, nothing was changed"), out
    assert re.search(rf"^  would remove +network hubops-{DEPLOYMENT}$", out, re.M), out
    assert re.search(rf"^  would remove +secret hubops-{DEPLOYMENT}-", out, re.M), out
    plain_and_fitting(out)
    no_secret(small, out, res.stderr)
    assert any(o.startswith("network ") for o in labelled(docker.from_env())), "a plan removed the network"
