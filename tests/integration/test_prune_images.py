"""ops/prune-images on real engines: a lab of a manager and a worker (name `pr-RUN`, a free subnet), so
that pruning never touches the images this machine's own engine caches for the other tests.

Each node gets versions of `hubops-hub` and `hubops-singleuser` (tiny images imported with hubops's
labels, oldest first), builder-stage leftovers, an image hubops did not make, and an image with
hubops's label but of no kind hubops prunes. A service in the swarm uses one version, a container
on the worker another. The prune must remove exactly the rest, after a plan that removes nothing.
"""
from __future__ import annotations

import io
import json
import tarfile
import time

import pytest

from hubops.ops import prune_images
from hubops.lab import cluster as lab
from hubops.core.engine import Clients
from hubops.core.params import load_params
from tests.helpers import LAB_SUBNETS, free_subnet, run_name

pytestmark = pytest.mark.engine

NAME = run_name("pr")


def _tar(text: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        data = text.encode()
        info = tarfile.TarInfo("version")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _import(client, repo: str, tag: str, labels: dict[str, str]) -> str:
    """A one-file image with these labels, tagged repo:tag (or untagged when tag is empty)."""
    changes = [f"LABEL {k}={v}" for k, v in labels.items()]
    out = client.api.import_image_from_data(_tar(f"{repo}:{tag}:{time.time_ns()}"), repository=repo if tag else None,
                                            tag=tag or None, changes=changes)
    image_id = [json.loads(line)["status"] for line in out.splitlines() if line.strip()][-1]
    time.sleep(1.1)  # Created has a resolution of a second in some engines; keep the order plain
    return client.images.get(image_id).id


def _kind(kind: str, stage: bool = False) -> dict[str, str]:
    out = {"hubops.managed": "true", "hubops.image-kind": kind, "hubops.deployment": "someone"}
    if stage:
        out["hubops.build-stage"] = "builder"
    return out


def _has(client, image_id: str) -> bool:
    try:
        client.images.get(image_id)
        return True
    except Exception:  # noqa: BLE001 - docker.errors.ImageNotFound
        return False


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    params = tmp_path_factory.mktemp("prune") / "pr.yaml"
    lab.lab_down(name=NAME)
    try:
        lab.lab_up(name=NAME, managers=1, workers=1, subnet=free_subnet(LAB_SUBNETS), params_out=params,
                   overlay_subnet="10.249.9.0/24")  # inside the lab's own engines
        p = load_params(params)
        clients = Clients(p)
        m, w = clients.manager, clients[p.hosts.workers[0].name]
        m.swarm.init(advertise_addr=p.hosts.managers[0].advertise_addr)
        for k, n in [("hub", 1), ("hub", 2), ("hub", 3), ("hub", 4), ("singleuser", 1), ("singleuser", 2)]:
            _import(m, f"hubops-{k}", f"v{n}", _kind(k))
        ids = {"m": {}, "w": {n: _import(w, "hubops-hub", f"v{n}", _kind("hub")) for n in (1, 3, 4)}}
        ids["m"]["stages"] = [_import(m, "", "", _kind("hub", stage=True)) for _ in range(3)]
        ids["m"]["other"] = _import(m, "someone-else", "1", {"maintainer": "someone"})
        ids["m"]["otherkind"] = _import(m, "hubops-base-like", "1", {"hubops.managed": "true"})
        su = {n: m.images.get(f"hubops-singleuser:v{n}").id for n in (1, 2)}
        hub = {n: m.images.get(f"hubops-hub:v{n}").id for n in (1, 2, 3, 4)}
        m.services.create("hubops-hub:v2", name="prtest-uses-v2", command=["/nothing"],
                          constraints=["node.labels.prtest==nowhere"])  # no task: kept for the spec alone
        w.containers.create("hubops-hub:v3", command=["/nothing"], name="prtest-made-from-v3")
        yield {"p": p, "clients": clients, "m": m, "w": w, "hub": hub, "su": su, "ids": ids}
    finally:
        lab.lab_down(name=NAME)


def test_a_plan_removes_nothing_and_names_what_would_go(cluster):
    c = cluster
    plan = prune_images.prune_images(c["p"], c["clients"], keep=1, dry_run=True)
    gone = sorted(ch.target for ch in plan.changes)
    assert gone == sorted([
        f"image hubops-hub:v1 on {c['p'].hosts.managers[0].name}",
        f"image hubops-hub:v3 on {c['p'].hosts.managers[0].name}",
        f"image hubops-singleuser:v1 on {c['p'].hosts.managers[0].name}",
        f"hub builder stage {c['m'].images.get(c['ids']['m']['stages'][0]).short_id} on {c['p'].hosts.managers[0].name}",
        f"image hubops-hub:v1 on {c['p'].hosts.workers[0].name}",
    ]), gone
    assert all(_has(c["m"], i) for i in c["hub"].values())


def test_prune_keeps_what_is_used_the_newest_and_what_is_not_hubops(cluster):
    c = cluster
    m, w, hub, su, ids = c["m"], c["w"], c["hub"], c["su"], c["ids"]
    prune_images.prune_images(c["p"], c["clients"], keep=1)
    # manager: v4 newest kept, v2 used by a service, v1 and v3 gone
    assert [_has(m, hub[n]) for n in (1, 2, 3, 4)] == [False, True, False, True]
    assert [_has(m, su[n]) for n in (1, 2)] == [False, True]
    assert [_has(m, i) for i in ids["m"]["stages"]] == [False, True, True]
    assert _has(m, ids["m"]["other"]) and _has(m, ids["m"]["otherkind"])
    # worker: v3 has a container made from it, v4 is the newest other; v1 gone
    assert [_has(w, ids["w"][n]) for n in (1, 3, 4)] == [False, True, True]
    again = prune_images.prune_images(c["p"], c["clients"], keep=1)
    assert again.changes == [], "a second prune removes nothing"


def test_keep_zero_leaves_only_what_is_in_use(cluster):
    c = cluster
    m, w, hub, ids = c["m"], c["w"], c["hub"], c["ids"]
    prune_images.prune_images(c["p"], c["clients"], keep=0)
    assert [_has(m, hub[n]) for n in (2, 4)] == [True, False]
    assert [_has(w, ids["w"][n]) for n in (3, 4)] == [True, False]
    assert _has(m, ids["m"]["other"]) and _has(m, ids["m"]["otherkind"])
