"""Two deployments label one node at the same moment (two deploys, a deploy and a teardown, two test
runs on one engine): every change lands and none erases another (hubops.core.nodes.update_node on the
real engine's node)."""
from __future__ import annotations

import threading

import pytest

from hubops.core.nodes import update_node
from tests.helpers import RUN, ensure_swarm

pytestmark = pytest.mark.engine


def test_concurrent_label_updates_all_land(docker_client):
    ensure_swarm()
    node_id = docker_client.info()["Swarm"]["NodeID"]
    prefix = f"hubops.nodetest-{RUN}."
    errors: list[Exception] = []

    def writer(w: int) -> None:
        node = docker_client.nodes.get(node_id)
        for i in range(8):
            try:
                update_node(node, lambda spec: spec["Labels"].update({f"{prefix}w{w}-{i}": "true"}))
            except Exception as e:  # noqa: BLE001 - collected and reported below
                errors.append(e)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(3)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        labels = docker_client.nodes.get(node_id).attrs["Spec"]["Labels"]
        ours = sorted(k for k in labels if k.startswith(prefix))
        assert errors == [], errors
        assert ours == sorted(f"{prefix}w{w}-{i}" for w in range(3) for i in range(8)), "an update erased another"
    finally:
        update_node(docker_client.nodes.get(node_id), lambda spec: spec.update(
            Labels={k: v for k, v in spec["Labels"].items() if not k.startswith(prefix)}))
    assert not [k for k in docker_client.nodes.get(node_id).attrs["Spec"]["Labels"] if k.startswith(prefix)]
