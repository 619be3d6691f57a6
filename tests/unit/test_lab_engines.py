"""Choosing lab nodes' engines, and preflight's reading of engine versions (pure logic, no engine)."""
from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from hubops.lab import cluster as lab
from hubops.lab import engines as lab_engines
from hubops.core.errors import HubopsError
from hubops.stages.preflight import engine_release, mixed_versions

NODES = lab.node_names("en", 1, 2)  # en-manager, en-node0, en-node1


@pytest.mark.parametrize("given,key", [("28", "28"), ("28.5", "28"), ("28.5.2", "28"), ("26", "26"),
                                       ("26.1.5", "26"), ("20.10", "20.10"), ("20.10.24", "20.10")])
def test_versions_as_users_write_them(given, key):
    assert lab_engines.spec(given).key == key


@pytest.mark.parametrize("bad", ["27", "24.0", "29", "latest", "2", "28.4"])
def test_an_unknown_version_is_refused_with_the_buildable_ones(bad):
    with pytest.raises(HubopsError) as e:
        lab_engines.spec(bad)
    msg = str(e.value)
    assert repr(bad) in msg and "20.10" in msg and "26" in msg and "28" in msg and "--engine" in msg


def test_one_version_for_all_nodes_or_per_node():
    assert lab_engines.parse_engines(None, NODES, "en") == dict.fromkeys(["en-manager", "en-node0", "en-node1"], "20.10")
    assert set(lab_engines.parse_engines("28", NODES, "en").values()) == {"28"}
    assert lab_engines.parse_engines("manager=28,node0=26", NODES, "en") == {
        "en-manager": "28", "en-node0": "26", "en-node1": "20.10"}
    assert lab_engines.parse_engines("en-node1=28.5.2", NODES, "en")["en-node1"] == "28"


@pytest.mark.parametrize("bad,match", [("node7=28", "no node 'node7'; its nodes are manager, node0, node1"),
                                       ("manager=28,node0", "'node0' is not NODE=VERSION"),
                                       ("manager=27", "'27' cannot be built")])
def test_bad_engine_choices_name_what_is_wrong(bad, match):
    with pytest.raises(HubopsError, match=match):
        lab_engines.parse_engines(bad, NODES, "en")


def test_lab_up_refuses_an_unknown_engine_before_anything_is_made(tmp_path):
    state, run = tmp_path / "state", tmp_path / "run"
    with pytest.raises(HubopsError, match="cannot be built"):
        lab.lab_up(name="enx", params_out=tmp_path / "lab.yaml", engines="manager=27", state_root=state,
                   run_root=run, cache_root=tmp_path / "cache")
    assert not any(p.exists() for p in (state, run, tmp_path / "cache", tmp_path / "lab.yaml"))


def test_the_plan_and_the_parameter_file_say_each_nodes_engine():
    nodes = lab._plan("en", 1, 2, ipaddress.ip_network("10.65.9.0/24"), "manager=28,node0=26")
    assert [(n.name, n.engine) for n in nodes] == [("en-manager", "28"), ("en-node0", "26"), ("en-node1", "20.10")]
    assert [n.plan()["engine"] for n in nodes] == ["28", "26", "20.10"]
    text = lab.params_text("en", nodes, state=Path("/s"), run=Path("/r"), overlay_subnet="10.165.9.0/24",
                           userlist="u", engines={"en-manager": lab.engine_label("28", {"docker": "28.5.2"})})
    assert "# engine of en-manager: Docker 28.5.2 (Debian sid root file system)\n" in text
    assert "# engine of en-node0: Docker 26.1.x (Debian trixie root file system)\n" in text
    assert "# engine of en-node1: Docker 20.10 (this machine's dockerd)\n" in text


def test_a_state_file_from_before_engines_reads_as_this_machines_engine():
    node = lab.LabNode(**{"name": "en-node0", "role": "worker", "index": 1, "address": "10.65.9.12",
                          "netns": "hl-en-node0", "veth": "hv-en-1", "bip": "172.30.2.1/24"})
    assert node.engine == "20.10"


def test_newer_engines_get_no_key_path_option():
    # dockerd 26 and 28 refuse to start on a daemon.json key they do not know.
    assert lab_engines.daemon_config("20.10", Path("/s"), "n") == {"deprecated-key-path": "/s/n/key.json"}
    assert lab_engines.daemon_config("28", Path("/s"), "n") == {}


def test_the_node_enters_its_tree_with_pivot_root_not_chroot():
    argv = lab_engines.pivot_argv(node="en-node0", key="28", cache=Path("/c"), state=Path("/s"), run=Path("/r"),
                                  binds=[("/s/en-node0", "/s/en-node0")], shared=["/srv"], dockerd=["dockerd", "-D"])
    script = argv[2]
    assert argv[:2] == ["sh", "-c"] and argv[-2:] == ["dockerd", "-D"]
    assert "lowerdir=/c/rootfs/docker-28,upperdir=/s/en-node0/rootfs/upper" in script
    for step in ("mount -t proc proc /s/en-node0/rootfs/root/proc", "mount --rbind /sys", "mount --rbind /dev",
                 "mount -t tmpfs -o mode=0755 tmpfs /s/en-node0/rootfs/root/run",
                 "mount --bind /s/en-node0 /s/en-node0/rootfs/root/s/en-node0", "pivot_root . .oldroot",
                 "umount -l /.oldroot"):
        assert step in script
    assert "chroot" not in script
    assert script.index("pivot_root") > script.index("mount -t tmpfs")


def test_engine_releases_and_mixed_clusters():
    assert engine_release("20.10.24+dfsg1") == (20, 10)
    assert engine_release("28.5.2+dfsg4") == (28, 5)
    assert engine_release("dev") is None
    same = {"a": {"engine": "28.5.2"}, "b": {"engine": "28.5.1"}}
    assert mixed_versions(same) is None
    w = mixed_versions({"m": {"engine": "28.5.2"}, "w0": {"engine": "26.1.5"}, "w1": {"engine": "20.10.24+dfsg1"}})
    assert "Docker 20.10 on w1 (20.10.24+dfsg1)" in w and "Docker 26.1 on w0" in w and "Docker 28.5 on m" in w


@pytest.mark.parametrize("version,api", [("19.03.15", "1.40"), ("1.13.1", "1.26"), ("20.10.24+dfsg1", "1.40")])
def test_engines_older_than_the_oldest_tested_are_refused_by_name(version, api):
    from hubops.core.errors import PreflightError
    from hubops.stages.preflight import refuse_old

    with pytest.raises(PreflightError, match=r"host w1: .*upgrade Docker on that host"):
        refuse_old("w1", {"Version": version, "ApiVersion": api})


@pytest.mark.parametrize("version,api", [("20.10.24+dfsg1", "1.41"), ("26.1.5+dfsg1", "1.45"), ("28.5.2+dfsg4", "1.51")])
def test_tested_engines_pass(version, api):
    from hubops.stages.preflight import refuse_old

    refuse_old("w1", {"Version": version, "ApiVersion": api})


def test_the_containerd_image_store_is_planned_for_newer_engines_only():
    nodes = lab._plan("ct", 1, 1, ipaddress.ip_network("10.65.9.0/24"), "28", image_store="containerd")
    assert [n.image_store for n in nodes] == ["containerd", "containerd"]
    assert nodes[0].plan()["image_store"] == "containerd"
    assert "image_store" not in lab._plan("ct", 1, 1, ipaddress.ip_network("10.65.9.0/24"), "28")[0].plan()
    with pytest.raises(lab.HubopsError, match=r"containerd image store needs Docker 24 or newer; node\(s\) ct-node0"):
        lab._plan("ct", 1, 1, ipaddress.ip_network("10.65.9.0/24"), "manager=28", image_store="containerd")
    with pytest.raises(lab.HubopsError, match="give classic or containerd"):
        lab._plan("ct", 1, 1, ipaddress.ip_network("10.65.9.0/24"), "28", image_store="zfs")
