"""The deploy chain on engines with the containerd image store (Docker 29's default for new installs,
an option of 24 to 28): a lab of one manager and one worker on Docker 28 with
`features.containerd-snapshotter` (`hubops lab up --engine 28 --image-store containerd`).

There a loaded image's ID is its manifest's digest, not its configuration's: 60-images must still
see the images it streams as the source's (same layers and configuration), the chain must run with
90-verify's spawn on the worker, and a second deploy must change nothing.
"""
from __future__ import annotations

import time

import docker
import pytest

from hubops.lab import cluster as lab
from tests import engine_labs as el
from tests.helpers import LAB_SUBNETS, free_subnet, run_name
from tests.helpers import hubops_cli as cli

pytestmark = [pytest.mark.engine, pytest.mark.e2e, pytest.mark.slow]
NAME = run_name("ctrd")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ctrd")
    params = tmp / "lab.yaml"
    try:
        lab.lab_up(name=NAME, managers=1, workers=1, subnet=free_subnet(LAB_SUBNETS), overlay_subnet=free_subnet(),
                   params_out=params, engines="28", image_store="containerd")
        outputs = tmp / "outputs"
        t0 = time.monotonic()
        first = cli("deploy", "-p", str(params), outputs=outputs)
        print(f"\ndeploy on the containerd image store (cold): {time.monotonic() - t0:.1f} s")
        t0 = time.monotonic()
        second = cli("deploy", "-p", str(params), outputs=outputs)
        print(f"second deploy: {time.monotonic() - t0:.1f} s")
        yield {"params": params, "outputs": outputs, "first": first, "second": second}
    finally:
        lab.lab_down(name=NAME)


def test_the_engines_use_the_containerd_image_store(cluster):
    for node in (f"{NAME}-manager", f"{NAME}-node0"):
        c = docker.DockerClient(base_url=f"unix://{lab.node_socket(lab.RUN_ROOT / NAME, node)}")
        try:
            assert ["driver-type", "io.containerd.snapshotter.v1"] in (c.info().get("DriverStatus") or []), c.info()
        finally:
            c.close()


def test_the_chain_runs_and_the_images_are_recognised(cluster):
    assert cluster["first"].returncode == 0, cluster["first"].stderr[-4000:]
    run = el.runs(cluster["outputs"])[0]
    assert run["status"] == "ok"
    images = el.stage_record(cluster["outputs"], run, "60-images")
    kept = " ".join(images["kept"]) + " ".join(images["changes"])
    print(kept[:1500])
    # the worker's image, streamed there, has another ID than on the building engine, and is the same image
    worker = docker.DockerClient(base_url=f"unix://{lab.node_socket(lab.RUN_ROOT / NAME, f'{NAME}-node0')}")
    src = docker.from_env()
    try:
        ref = next(t for i in worker.images.list() for t in i.tags if t.startswith("hubops-singleuser:"))
        assert worker.images.get(ref).id != src.images.get(ref).id
    finally:
        worker.close()


def test_a_second_deploy_changes_nothing(cluster):
    assert cluster["second"].returncode == 0, cluster["second"].stderr[-4000:]
    run = el.runs(cluster["outputs"])[-1]
    assert run["status"] == "ok"
    images = el.stage_record(cluster["outputs"], run, "60-images")
    assert images["changes"] == [], images["changes"]
    assert any("same layers and configuration" in k for k in images["kept"]), images["kept"]
