"""`ops status` and `ops diagnose` read every user's server's tasks with one request to the manager, not one
per service (a hundred users' servers were a hundred round trips each; bench/scale.py), and still put each
task with its own service. Real services on the local engine's swarm; the Docker SDK's own tasks call is
counted as it passes (the engine answers it)."""
from __future__ import annotations

import time

import docker
import docker.types
import pytest

from hubops.core import labels as L
from hubops.core.facts import TASKS_CHUNK, tasks_by_service
from hubops.core.params import load_params
from hubops.core.result import Result
from hubops.ops import diagnose, status
from tests.helpers import RUN, ensure_swarm, free_port, free_subnet, make_params, run_name, sleep_image_tar

pytestmark = pytest.mark.engine

USERS = ["alice", "bob", "carol"]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, docker_client):
    ensure_swarm()
    tmp = tmp_path_factory.mktemp("stt")
    p = load_params(make_params(tmp, run_name("stt"), port=free_port(), subnet=free_subnet()))
    image = f"hubops-stt-sleep:{RUN}"
    docker_client.api.import_image_from_data(sleep_image_tar(), repository=image.split(":")[0], tag=RUN)
    made = []
    try:
        for i, user in enumerate([*USERS, "idle"]):
            made.append(docker_client.services.create(
                image, command=["/bin/sleep", "600"], name=f"{p.prefix}-user-{user}",
                labels=L.labels(p.deployment, "spawn", role="user-server"),
                env=[f"JUPYTERHUB_USER={user}"], endpoint_spec=docker.types.EndpointSpec(mode="dnsrr"),
                # "idle": a service with no task (0 replicas), as a server whose task is gone
                mode=docker.types.ServiceMode("replicated", replicas=0 if user == "idle" else 1)))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            states = [t["Status"]["State"] for s in made[:3] for t in s.tasks(filters={"desired-state": "running"})]
            if states.count("running") == 3:
                break
            time.sleep(0.5)
        yield p, made
    finally:
        for s in made:
            try:
                s.remove()
            except docker.errors.NotFound:
                pass
        time.sleep(2)
        try:
            docker_client.images.remove(image, force=True)
        except docker.errors.APIError:
            pass


class Counting:
    """The engine's own client, with its tasks requests counted."""

    def __init__(self, client: docker.DockerClient):
        self.client, self.calls = client, []
        real = client.api.tasks

        def tasks(*args, **kwargs):
            self.calls.append(kwargs.get("filters"))
            return real(*args, **kwargs)

        client.api.tasks = tasks


def test_status_reads_all_servers_tasks_in_one_request(deployment):
    p, made = deployment
    c = Counting(docker.from_env(timeout=120))
    rows = status.placements(p, c.client)
    by_user = {r["user"]: r for r in rows}
    assert sorted(by_user) == sorted([*USERS, "idle"])
    for user in USERS:
        assert by_user[user]["state"] == "running", rows
        assert by_user[user]["service"] == f"{p.prefix}-user-{user}"
        assert by_user[user]["node"] != "-"
    assert by_user["idle"]["state"] == "no task"
    assert len(c.calls) == 1, f"one tasks request for {len(made)} services, not {len(c.calls)}: {c.calls}"


def test_diagnose_reads_all_servers_tasks_in_one_request(deployment):
    p, made = deployment
    c = Counting(docker.from_env(timeout=120))
    r = Result("diagnose")
    diagnose._swarm_report(p, c.client, r, [], [], 5)
    assert r.facts["users' servers not running"] == [{"service": f"{p.prefix}-user-idle", "state": "no task"}]
    assert len(c.calls) == 1, f"one tasks request for {len(made)} services, not {len(c.calls)}: {c.calls}"


def test_tasks_by_service_asks_in_chunks_and_keeps_each_task_with_its_service(deployment, monkeypatch):
    p, made = deployment
    monkeypatch.setattr("hubops.core.facts.TASKS_CHUNK", 2)
    c = Counting(docker.from_env(timeout=120))
    got = tasks_by_service(c.client, made, **{"desired-state": "running"})
    assert len(c.calls) == 2  # 4 services, 2 a request
    assert [len(got[s.id]) for s in made] == [1, 1, 1, 0]
    assert all(t["ServiceID"] == s.id for s in made for t in got[s.id])
    assert TASKS_CHUNK >= 2
