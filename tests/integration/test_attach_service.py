"""stages/attachments.py on the local engine's swarm: the global service `hubops-DEP-attach` that keeps
a deployment's overlay network attached on every node while a profile asks for generic resources.

80-deploy calls `attachments.ensure` on every deploy with the single-user image of that deploy. Here:
a first call creates the service; a second call with another image updates the same service (same
ID, same creation time, the previous spec on the first image) start-first, so that the node never
loses its attachment: the new image's container started before the old one stopped, and a task
of the service ran at every moment of the update; a third call with the same image changes
nothing (no new spec version, the same task running). One deployment of this run (`attach-RUN`,
its own subnet) and two tiny images of this run (/bin/sleep), all removed at the end.
"""
from __future__ import annotations

import io
import tarfile
import threading
import time

import docker
import pytest

from hubops.core.engine import Clients
from hubops.core.params import load_params
from hubops.core.result import Result
from hubops.ops import teardown
from hubops.stages import attachments, network
from tests.helpers import RUN, ensure_swarm, sleep_image_tar

pytestmark = pytest.mark.engine

PROFILES = """
profiles:
  - {name: small, description: "Small: 1 CPU", cpu_limit: 1}
  - {name: gpu, description: One GPU, generic_resources: {NVIDIA-GPU: 1}}
"""


def image_tar(marker: str) -> bytes:
    """/bin/sleep's image with one extra file: a different image for each `marker`."""
    src = tarfile.open(fileobj=io.BytesIO(sleep_image_tar()))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as out:
        for m in src.getmembers():
            out.addfile(m, src.extractfile(m))
        data = marker.encode()
        info = tarfile.TarInfo("hubops-attach-test")
        info.size = len(data)
        out.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def deployment(params_factory, docker_client):
    ensure_swarm()
    p = load_params(params_factory("attach", extra=PROFILES))
    assert attachments.wanted(p)
    clients = Clients(p)
    repo = f"hubops-attach-test-{RUN}"
    images = []
    try:
        for tag in ("one", "two"):
            docker_client.api.import_image_from_data(image_tar(tag), repository=repo, tag=tag)
            images.append(f"{repo}:{tag}")
        network.ensure_network(p, clients)
        yield p, clients, images
    finally:
        teardown.teardown(p, clients, remove_volumes=True)
        left = [o.name for coll in (docker_client.services, docker_client.networks)
                for o in coll.list(filters={"label": f"hubops.deployment={p.deployment}"})]
        for img in images:
            for _ in range(60):  # the service's exited containers go with it, a moment later
                try:
                    docker_client.images.remove(img, force=True)
                    break
                except docker.errors.NotFound:
                    break
                except docker.errors.APIError:
                    time.sleep(0.5)
        clients.close()
        assert not left, f"teardown left {left}"


def instant(stamp: str) -> tuple[str, int]:
    """An engine's RFC 3339 UTC time with nanoseconds (trailing zeros cut) as a comparable pair."""
    whole, _, frac = stamp.rstrip("Z").partition(".")
    return whole, int((frac + "000000000")[:9])


def running_tasks(c: docker.DockerClient, name: str) -> list[dict]:
    return [t for t in c.api.tasks(filters={"service": name}) if t["Status"]["State"] == "running"]


def wait_update_completed(svc, timeout: float = 180) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            svc.reload()
        except docker.errors.NotFound:
            raise AssertionError(f"service {svc.name} ({svc.id}) is gone: it was removed (recreated?), not updated") from None
        state = (svc.attrs.get("UpdateStatus") or {}).get("State")
        if state in ("completed", "paused", "rollback_completed", "rollback_paused"):
            return state
        assert time.monotonic() < deadline, f"the update of {svc.name} did not end in {timeout:.0f} s: {svc.attrs.get('UpdateStatus')}"
        time.sleep(0.25)


def test_image_change_updates_the_same_service_start_first_and_a_rerun_changes_nothing(deployment, docker_client):
    p, clients, (one, two) = deployment
    c = docker_client
    name = attachments.service_name(p)

    first = Result("attach")
    attachments.ensure(p, clients, first, image=one)
    assert [(i.action, i.target) for i in first.items] == [("create", f"service {name}")], first.items
    svc = c.services.get(name)
    created, version = svc.attrs["CreatedAt"], svc.attrs["Version"]["Index"]
    [old_task] = running_tasks(c, name)
    old_ctr = old_task["Status"]["ContainerStatus"]["ContainerID"]
    assert old_task["Spec"]["ContainerSpec"]["Image"].startswith(one)

    # Watch the service's tasks through the update: at least one running at every look.
    looks: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            looks.append(len(running_tasks(c, name)))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        second = Result("attach")
        attachments.ensure(p, clients, second, image=two)
        state = wait_update_completed(svc)
        for _ in range(400):  # the old task is shut down once the new one runs
            tasks = running_tasks(c, name)
            if [t["ID"] for t in tasks] != [old_task["ID"]] and len(tasks) == 1:
                break
            time.sleep(0.05)
    finally:
        stop.set()
        watcher.join(timeout=30)
    print(f"\nupdate {state}: {len(looks)} looks at the tasks during the update, running tasks seen: "
          f"min {min(looks)}, max {max(looks)}")
    assert [(i.action, i.target) for i in second.items] == [("update", f"service {name}")], second.items
    assert state == "completed", svc.attrs.get("UpdateStatus")

    # Updated, not recreated: the same service, a newer spec, the previous one on the first image.
    svc.reload()
    assert svc.id == c.services.get(name).id and svc.attrs["CreatedAt"] == created
    assert svc.attrs["Version"]["Index"] > version
    assert svc.attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"].startswith(two)
    assert svc.attrs["PreviousSpec"]["TaskTemplate"]["ContainerSpec"]["Image"].startswith(one)
    [new_task] = running_tasks(c, name)
    assert new_task["ID"] != old_task["ID"] and new_task["Spec"]["ContainerSpec"]["Image"].startswith(two)

    # Start-first: the new container started before the old one stopped, and no look found none running.
    old = c.api.inspect_container(old_ctr)["State"]
    new = c.api.inspect_container(new_task["Status"]["ContainerStatus"]["ContainerID"])["State"]
    print(f"old container finished {old['FinishedAt']}, new container started {new['StartedAt']}")
    assert not old["Running"]
    assert instant(new["StartedAt"]) < instant(old["FinishedAt"]), (new["StartedAt"], old["FinishedAt"])
    assert looks and min(looks) >= 1, looks
    assert svc.attrs["Spec"]["UpdateConfig"]["Order"] == "start-first"

    # The same image again: nothing changes, the same task keeps running.
    version = svc.attrs["Version"]["Index"]
    third = Result("attach")
    attachments.ensure(p, clients, third, image=two)
    assert [(i.action, i.target) for i in third.items] == [("keep", f"service {name}")], third.items
    svc.reload()
    assert svc.attrs["Version"]["Index"] == version
    assert [t["ID"] for t in running_tasks(c, name)] == [new_task["ID"]]
