"""Building a lab engine's root file system fails cleanly: nothing half-made is left, and no lab is
made on top of it (needs root; debootstrap against a mirror that does not answer fails within seconds)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from hubops.lab import cluster as lab
from hubops.lab import engines as lab_engines
from hubops.core.errors import HubopsError

pytestmark = pytest.mark.engine
DEAD_MIRROR = "http://127.0.0.1:9/debian"  # nothing listens on port 9 of loopback


def _left(cache: Path) -> list[str]:
    return sorted(p.name for p in (cache / "rootfs").iterdir() if not p.name.startswith(".lock-"))


def test_a_failed_build_leaves_nothing_and_clears_an_unfinished_one(tmp_path):
    cache = tmp_path / "cache"
    # What a build killed mid-way left (its process is gone): removed by the next build.
    stale = cache / "rootfs" / ".build-docker-28-999999999"
    (stale / "usr").mkdir(parents=True)
    changes: list[str] = []
    with pytest.raises(HubopsError, match=r"debootstrap sid from http://127.0.0.1:9/debian failed") as e:
        lab_engines.ensure_rootfs("28", cache=cache, mirror=DEAD_MIRROR, changes=changes)
    print(f"\n{e.value}")
    assert _left(cache) == []
    assert changes == [f"removed an unfinished build {stale}"]
    assert lab_engines.manifest(cache, "28") is None


def test_no_lab_is_made_when_its_engine_cannot_be_built(tmp_path):
    name = "enfail"
    cache = tmp_path / "cache"
    with pytest.raises(HubopsError, match="debootstrap trixie"):
        lab.lab_up(name=name, workers=1, subnet="10.65.99.0/24", overlay_subnet="10.165.99.0/24",
                   params_out=tmp_path / "lab.yaml", engines="node0=26", cache_root=cache, mirror=DEAD_MIRROR)
    assert not (lab.STATE_ROOT / name).exists() and not (lab.RUN_ROOT / name).exists()
    assert not [ns for ns in os.listdir("/var/run/netns") if ns.startswith(f"hl-{name}-")] \
        if os.path.isdir("/var/run/netns") else True
    assert not (tmp_path / "lab.yaml").exists()
    assert _left(cache) == []
    assert lab.lab_status(name=name).exists is False


def test_a_completion_that_fails_says_to_rebuild_and_leaves_the_manifest(tmp_path):
    """A tree an older hubops built (no openssh-server in its manifest) whose completion fails (here:
    a tree with no shell to run apt in): the error says what to do, the manifest still says what
    the tree lacks (the next `lab up` tries again), and no policy-rc.d is left in it."""
    import json

    cache = tmp_path / "cache"
    tree = lab_engines.tree(cache, "28")
    for d in ("etc", "usr/sbin", "proc"):
        (tree / d).mkdir(parents=True)
    first = {"engine": "28", "suite": "sid", "docker": "28.5.2", "packages": {"docker.io": "28.5.2+dfsg4-5"}}
    (tree / "hubops-rootfs.json").write_text(json.dumps(first))
    changes: list[str] = []
    with pytest.raises(HubopsError, match=r"(?s)completing the Docker 28 root file system .*--rebuild") as e:
        lab_engines.ensure_rootfs("28", cache=cache, changes=changes, in_use=lambda: [])
    print(f"\n{e.value}")
    assert lab_engines.manifest(cache, "28") == first and changes == []
    assert lab_engines.missing_packages(lab_engines.manifest(cache, "28"), tree) == ["openssh-server"]
    assert not (tree / "usr" / "sbin" / "policy-rc.d").exists()
