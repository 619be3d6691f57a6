"""`ops diagnose`'s "hub-down" finding against the real engine's swarm, without a deployment: a hub
service shaped like 80-deploy's (its name, its labels, the base image) whose task runs, then one whose
task exits with an error, then one Swarm cannot place. Diagnose reads the swarm as it does for a real
hub; these say it reports the hub down when, and only when, no task of the hub's service runs, and
names the cause from the task's error and the hub's log lines.

About 10 s on a quiet machine (9.0 s measured): three one-task services of the base image, each removed at the end."""
from __future__ import annotations

import time

import docker
import docker.types
import pytest

from hubops.core import labels as L
from hubops.core.engine import Clients
from hubops.core.params import load_params
from hubops.ops import diagnose
from hubops.stages import images
from tests.helpers import ensure_swarm, free_port, free_subnet, make_params, run_name

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def dep(tmp_path_factory):
    ensure_swarm()
    tmp = tmp_path_factory.mktemp("diag")
    p = load_params(make_params(tmp, run_name("diag"), port=free_port(), subnet=free_subnet()))
    clients = Clients(p)
    images.ensure_base(p, clients)  # made once per machine; every deploy needs it too
    yield p, clients
    c = clients.manager
    for s in c.services.list(filters={"label": L.selector(p.deployment)}):
        s.remove()
    assert c.services.list(filters={"label": L.selector(p.deployment)}) == []
    clients.close()


def _hub(p, c, shell: str, *, constraints: list[str] | None = None):
    """A service named and labelled as the deployment's hub, running `shell` in the base image, made
    as 80-deploy makes the hub's (dnsrr, restarted on failure), but given up after one restart."""
    for s in c.services.list(filters={"name": p.hub_service}):
        if s.name == p.hub_service:
            s.remove()
            _wait(lambda: not c.containers.list(all=True, filters={"label": f"com.docker.swarm.service.name={p.hub_service}"}),
                  "the previous hub's container to go")
    return c.services.create(
        p.images.base, ["sh", "-c", shell], name=p.hub_service,
        labels=L.labels(p.deployment, "80-deploy", role="hub"),
        endpoint_spec=docker.types.EndpointSpec(mode="dnsrr"),
        restart_policy=docker.types.RestartPolicy(condition="on-failure", delay=1_000_000_000, max_attempts=1),
        constraints=constraints or [], stop_grace_period=1_000_000_000)


def _wait(ok, what: str, timeout: float = 120):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        got = ok()
        if got:
            return got
        time.sleep(0.5)
    raise AssertionError(f"waited {timeout} s for {what}")


def _states(svc) -> list[str]:
    return [t["Status"]["State"] for t in svc.tasks()]


def _report(p, clients):
    r = diagnose.diagnose(p, clients, log_lines=20)
    findings = r.facts["findings"] if isinstance(r.facts["findings"], list) else []
    checks = {it.target: it.detail for it in r.items}
    print(f"hub check: {checks.get(f'service {p.hub_service}')!r}; findings: "
          f"{[(f['recovery'], f['seen in'], f['evidence']) for f in findings]}")
    return r, {f["recovery"]: f for f in findings}, checks


def test_a_running_hub_is_not_reported_down(dep):
    p, clients = dep
    svc = _hub(p, clients.manager, "echo hub up; exec sleep 3600")
    _wait(lambda: "running" in _states(svc), "the hub's task to run")
    r, found, checks = _report(p, clients)
    assert "hub-down" not in found and "hub-missing" not in found
    assert checks[f"service {p.hub_service}"] == "1 running task(s)"
    assert r.facts["hub service"]["running tasks"] == 1


def test_a_hub_whose_task_exits_is_reported_down_with_its_cause(dep):
    """The hub's process fails (here: as a hub with a locked SQLite database does): Swarm restarts it
    once, then gives up; diagnose reports the hub down, the task's exit and the log's known cause."""
    p, clients = dep
    svc = _hub(p, clients.manager, "echo 'sqlite3.OperationalError: database is locked' >&2; exit 3")
    # Both attempts failed and no other is coming (the restart policy allows one).
    _wait(lambda: (lambda st: st.count("failed") >= 2 and "running" not in st and "starting" not in st)(_states(svc)),
          "the hub's task to fail twice")
    r, found, checks = _report(p, clients)
    assert checks[f"service {p.hub_service}"] == "PROBLEM: no running task"
    assert found["hub-down"]["seen in"] == f"service {p.hub_service}"
    assert found["hub-down"]["evidence"] == "no running task"
    assert "non-zero exit" in found["hub-exits"]["evidence"], found["hub-exits"]
    assert found["db-locked"]["seen in"] == "hub log"
    assert r.facts["hub service"]["running tasks"] == 0
    assert {row["state"] for row in r.facts["hub tasks"]} == {"failed"}, r.facts["hub tasks"]


def test_a_hub_swarm_cannot_place_is_reported_down(dep):
    """The hub's node lost the label that pins the hub (here: a constraint no node meets): its task
    stays pending; diagnose reports the hub down and Swarm's "no suitable node"."""
    p, clients = dep
    svc = _hub(p, clients.manager, "exec sleep 3600",
               constraints=[f"node.labels.hubops.{p.deployment}.nowhere==true"])
    _wait(lambda: any("no suitable node" in (t["Status"].get("Err") or "") for t in svc.tasks()),
          "Swarm to say it has no node for the hub")
    r, found, checks = _report(p, clients)
    assert checks[f"service {p.hub_service}"] == "PROBLEM: no running task"
    assert found["hub-down"]["evidence"] == "no running task"
    assert found["no-suitable-node"]["seen in"].startswith("hub task ")
    assert "hub-exits" not in found
