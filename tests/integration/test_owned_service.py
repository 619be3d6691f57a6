"""stages/owned_service.py through its global user, stages/attachments.py, on the local engine's swarm:
the ownership rules and the removal path that attachments keeps of its own.

- A service named like the deployment's attach service but not labelled for it is refused, whether a
  profile asks for generic resources (create) or not (remove), and it is left as it was.
- The deployment's own service: created (and waited for, a task on the one node), kept on a second
  call with the same image, and removed once no profile asks for generic resources (a dry run first
  says so and removes nothing).

One deployment of this run (`owned-RUN`, its own subnet) and one tiny image of this run (/bin/sleep),
all removed at the end. About 20 s.
"""
from __future__ import annotations

import time

import docker
import docker.types
import pytest

from hubops.core.engine import Clients
from hubops.core.errors import HubopsError
from hubops.core.params import load_params
from hubops.core.result import Result
from hubops.ops import teardown
from hubops.stages import attachments, network, owned_service
from tests.helpers import RUN, ensure_swarm, sleep_image_tar

pytestmark = pytest.mark.engine

GPU = """
profiles:
  - {name: small, description: "Small: 1 CPU", cpu_limit: 1}
  - {name: gpu, description: One GPU, generic_resources: {NVIDIA-GPU: 1}}
"""
NO_GPU = """
profiles:
  - {name: small, description: "Small: 1 CPU", cpu_limit: 1}
"""


@pytest.fixture
def deployment(params_factory, docker_client):
    ensure_swarm()
    p = load_params(params_factory("owned", extra=GPU))
    subnet_port = {"subnet": str(p.network.subnet), "port": p.hub.https_port}
    # The same deployment once no profile asks for generic resources (the file is written again).
    no_gpu = lambda: load_params(params_factory("owned", extra=NO_GPU, **subnet_port))  # noqa: E731
    assert attachments.wanted(p)
    clients = Clients(p)
    image = f"hubops-owned-test-{RUN}:one"
    try:
        docker_client.api.import_image_from_data(sleep_image_tar(), repository=image.split(":")[0], tag="one")
        network.ensure_network(p, clients)
        yield p, no_gpu, clients, image
    finally:
        teardown.teardown(p, clients, remove_volumes=True)
        left = [o.name for coll in (docker_client.services, docker_client.networks)
                for o in coll.list(filters={"label": f"hubops.deployment={p.deployment}"})]
        for _ in range(60):  # the service's exited containers go with it, a moment later
            try:
                docker_client.images.remove(image, force=True)
                break
            except docker.errors.NotFound:
                break
            except docker.errors.APIError:
                time.sleep(0.5)
        clients.close()
        assert not left, f"teardown left {left}"


def test_a_service_of_the_name_that_is_not_the_deployments_is_refused_and_left(deployment, docker_client):
    p, no_gpu, clients, image = deployment
    name = attachments.service_name(p)
    foreign = docker_client.services.create(image, command=["sleep", "infinity"], name=name,
                                            mode=docker.types.ServiceMode("replicated", replicas=0))
    try:
        for params, why in ((p, "create"), (no_gpu(), "remove")):
            r = Result("attach")
            with pytest.raises(HubopsError) as e:
                attachments.ensure(params, clients, r, image=image)
            print(f"\n{why}: {e.value}")
            assert f"service {name} exists but was not created by hubops for deployment {p.deployment}" in str(e.value)
            assert r.items == [], r.items
            with pytest.raises(HubopsError):
                owned_service.find_owned_service(params, clients.manager, name)
        assert docker_client.services.get(name).id == foreign.id
    finally:
        foreign.remove()


def test_the_deployments_service_is_created_kept_and_removed(deployment, docker_client):
    p, no_gpu, clients, image = deployment
    name = attachments.service_name(p)

    first = Result("attach")
    attachments.ensure(p, clients, first, image=image)
    assert [(i.action, i.target) for i in first.items] == [("create", f"service {name}")], first.items
    assert first.facts["network attachment on nodes"] == 1  # waited for: a task runs on the one node
    svc = docker_client.services.get(name)
    labels = svc.attrs["Spec"]["Labels"]
    assert labels["hubops.deployment"] == p.deployment and labels["hubops.role"] == attachments.ROLE
    assert labels[owned_service.SPEC_DIGEST] == owned_service.spec_digest(attachments.service_spec(p, image=image))
    version = svc.attrs["Version"]["Index"]

    again = Result("attach")
    attachments.ensure(p, clients, again, image=image)
    assert [(i.action, i.target) for i in again.items] == [("keep", f"service {name}")], again.items
    assert "network attachment on nodes" not in again.facts  # nothing changed: no wait
    svc.reload()
    assert svc.attrs["Version"]["Index"] == version

    q = no_gpu()
    assert not attachments.wanted(q) and q.deployment == p.deployment
    plan = Result("attach", dry_run=True)
    attachments.ensure(q, clients, plan, image=image)
    assert [(i.action, i.target) for i in plan.items] == [("remove", f"service {name}")], plan.items
    assert docker_client.services.get(name).id == svc.id

    gone = Result("attach")
    attachments.ensure(q, clients, gone, image=image)
    assert [(i.action, i.target) for i in gone.items] == [("remove", f"service {name}")], gone.items
    assert owned_service.find_service(clients.manager, name) is None
    # Its container goes a moment later (and with it the node's attachment, which the teardown's
    # removal of the network waits for).
    for _ in range(120):
        if not docker_client.containers.list(all=True, filters={"label": f"com.docker.swarm.service.name={name}"}):
            break
        time.sleep(0.25)
    else:
        raise AssertionError(f"the container of the removed service {name} is still there after 30 s")
