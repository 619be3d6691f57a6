"""Spawn profiles (parameter profiles:): the parameters and their check-time refusals, the generated
config on the real spawner JupyterHub makes (options form by group, the choice's image, limits,
placement, generic resources and label on the service spec, the refusal when no GPU is free), the
preflight's node checks on engines' `docker info` answers, and the lab's fake generic resources.
No engine: tests/e2e/test_spawn_profiles.py, tests/e2e/test_lab_gpu_profiles.py use real ones."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from jupyterhub import orm
from tornado import web

from hubops.core.errors import ParameterError, PreflightError
from hubops.core.params import load_params
from hubops.core.result import Result
from hubops.inhub.spawner import HubopsSpawner
from hubops.lab import cluster as lab
from hubops.stages import profiles as stage_profiles
from tests.helpers import PROJECT, hub_config, hub_spawner, make_params

USERS = "operator admin\nalice @gpu-users\nbob\n"
PROFILES = """
hosts:
  managers:
    - {name: m1, url: "unix:///var/run/docker.sock", advertise_addr: 10.9.0.1}
  workers:
    - {name: w1, url: "ssh://root@10.9.0.2", advertise_addr: 10.9.0.2, labels: {gpu: "yes"}}
    - {name: w2, url: "ssh://root@10.9.0.3", advertise_addr: 10.9.0.3}
profiles:
  - {name: small, description: "Small: 1 CPU, 1 GiB", mem_limit: 1G, cpu_limit: 1}
  - name: extras
    description: Same, with the extras
    image: images/example-profile
    mem_limit: 2G
    cpu_guarantee: 0.5
  - name: gpu
    description: One GPU
    placement: {gpu: "yes"}
    groups: [gpu-users]
    generic_resources: {NVIDIA-GPU: 1}
    when_full: refuse
"""


def params(tmp: Path, extra: str = PROFILES, users: str = USERS):
    f = make_params(tmp, "prof", port=18443, subnet="10.231.5.0/24", extra=extra, users=users)
    # make_params's single local host is replaced by the hosts above (one top-level `hosts:` key)
    text = f.read_text()
    if "\nhosts:\n  managers:\n    - {name: m1" in extra:
        start = text.index("hosts:\n")
        end = text.index("hub:", start)
        text = text[:start] + text[end:]
    f.write_text(text)
    return load_params(f)


def refused(tmp: Path, extra: str, users: str = USERS) -> str:
    with pytest.raises(ParameterError) as e:
        params(tmp, extra, users)
    return str(e.value)


IMAGES = {"extras": "hubops-example-profile:0123456789ab"}


def spawner_for(p, name: str, groups: tuple[str, ...] = ()):
    cfg = hub_config(p, profile_images=IMAGES)
    db = orm.new_session_factory("sqlite://")()
    user = orm.User(name=name)
    db.add(user)
    for g in groups:
        user.groups.append(orm.Group(name=g))
    db.commit()
    return hub_spawner(cfg, name, db=db)


# -- parameters -------------------------------------------------------------------------------
def test_profiles_load_with_defaults_from_the_spawner(tmp_path):
    p = params(tmp_path)
    assert [pr.name for pr in p.profiles] == ["small", "extras", "gpu"]
    gpu = p.profiles[2]
    assert gpu.constraints == ["node.labels.gpu==yes"] and gpu.generic_resources == {"NVIDIA-GPU": 1}
    assert p.profiles[1].image_folder == "example-profile"
    from hubops.core.profiles import eligible_hosts, limits

    assert limits(p, gpu)["mem_limit"] == "2G"  # spawner.mem_limit's default
    assert [h.name for h in eligible_hosts(p, gpu)] == ["w1"]


@pytest.mark.parametrize("extra, key, fix", [
    ("profiles:\n  - {name: a, image: images/no-such-folder}\n", "profiles[0] (a).image",
     "does not exist; create the folder with a Dockerfile"),
    ("profiles:\n  - {name: a, groups: [nobody-here]}\n", "profiles[0] (a).groups",
     "group 'nobody-here' has no member in the userlist"),
    ("profiles:\n  - {name: a, placement: {gpu: 'yes'}}\n", "profiles[0] (a).placement",
     "no host carries gpu=yes"),
    ("profiles:\n  - {name: a}\n  - {name: a}\n", "profiles[1] (a).name", "is given twice"),
    ("profiles:\n  - {name: a, mem_limit: 1G, mem_guarantee: 2G}\n", "profiles[0] (a).mem_guarantee",
     "is more than its mem_limit 1G"),
    ("profiles:\n  - {name: a, mem_limit: 4GB}\n", "profiles[0] (a).mem_limit", "is not a size"),
])
def test_check_time_refusals_name_the_profile_and_key(tmp_path, extra, key, fix):
    msg = refused(tmp_path, extra)
    assert key in msg and fix in msg and str(tmp_path) in msg, msg


@pytest.mark.parametrize("extra, key, fix", [
    ("profiles:\n  - {name: A}\n", "profiles[0].name", "lower-case letters"),
    ("profiles:\n  - {name: a, generic_resources: {NVIDIA-GPU: 0}}\n", "profiles[0].generic_resources",
     "ask for 1 or more"),
    ("profiles:\n  - {name: a, image: images/hub}\n", "profiles[0].image", "not hub or singleuser"),
    ("profiles:\n  - {name: a, when_full: queue}\n", "profiles[0].when_full", "'wait' or 'refuse'"),
])
def test_type_refusals_name_the_key(tmp_path, extra, key, fix):
    msg = refused(tmp_path, extra)
    assert key in msg and fix in msg, msg


def test_no_profiles_changes_nothing_in_the_config(tmp_path):
    p = load_params(make_params(tmp_path, "plain", port=18443, subnet="10.231.5.0/24"))
    from hubops.hub import config

    assert "profiles" not in config.render(p, singleuser_image="hubops-singleuser:abc")
    s = hub_spawner(hub_config(p), "alice")
    assert s.profiles == [] and asyncio.run(s.get_options_form()) == ""
    s.apply_profile()
    assert s.image == "hubops-singleuser:abc" and s.mem_limit == 2 << 30


def test_a_profile_image_not_built_is_refused_by_render(tmp_path):
    from hubops.hub import config

    with pytest.raises(ValueError, match="extras.*60-images"):
        config.render(params(tmp_path), singleuser_image="hubops-singleuser:abc")


# -- the spawner JupyterHub makes from the generated config ------------------------------------
def test_the_options_form_lists_what_the_user_s_groups_allow(tmp_path):
    p = params(tmp_path)
    alice = spawner_for(p, "alice", groups=("gpu-users",))
    form = asyncio.run(alice.get_options_form())
    assert [n in form for n in ('value="small"', 'value="extras"', 'value="gpu"')] == [True, True, True]
    assert "1 NVIDIA-GPU" in form and "hubops-example-profile:0123456789ab" in form
    bob = spawner_for(p, "bob")
    form = asyncio.run(bob.get_options_form())
    assert 'value="gpu"' not in form and 'value="small"' in form
    assert alice.run_options_from_form({"profile": ["gpu"]}) == {"profile": "gpu"}


def test_one_profile_means_no_spawn_page_but_its_settings(tmp_path):
    p = params(tmp_path, "profiles:\n  - {name: only, mem_limit: 3G, cpu_limit: 1.5}\n")
    s = spawner_for(p, "bob")
    assert asyncio.run(s.get_options_form()) == ""
    s.apply_profile()
    assert (s.mem_limit, s.cpu_limit, s.image) == (3 << 30, 1.5, "hubops-singleuser:abc")


def test_the_choice_sets_image_limits_placement_resources_and_label(tmp_path):
    p = params(tmp_path)
    s = spawner_for(p, "alice", groups=("gpu-users",))
    s.user_options = {"profile": "extras"}
    s.apply_profile()
    assert (s.image, s.mem_limit, s.cpu_guarantee) == ("hubops-example-profile:0123456789ab", 2 << 30, 0.5)
    s.user_options = {"profile": "gpu"}
    s.apply_profile()
    kwargs = {"task_template": {"ContainerSpec": {"Image": s.image}, "Placement": {"Constraints": ["node.role==worker"]}},
              "labels": {"hubops.deployment": "prof"}}
    s.profile_service(kwargs)
    tt = kwargs["task_template"]
    assert tt["Placement"]["Constraints"] == ["node.role==worker", "node.labels.gpu==yes"]
    assert tt["Resources"]["Reservations"]["GenericResources"] == [
        {"DiscreteResourceSpec": {"Kind": "NVIDIA-GPU", "Value": 1}}]
    assert kwargs["labels"] == {"hubops.deployment": "prof", "hubops.profile": "gpu"}
    assert tt["ContainerSpec"]["Labels"]["hubops.profile"] == "gpu"


def test_a_profile_not_allowed_or_unknown_is_refused_with_a_message(tmp_path):
    p = params(tmp_path)
    bob = spawner_for(p, "bob")
    bob.user_options = {"profile": "gpu"}
    with pytest.raises(web.HTTPError) as e:
        bob.apply_profile()
    assert e.value.status_code == 403 and "gpu-users" in e.value.jupyterhub_message
    bob.user_options = {"profile": "huge"}
    with pytest.raises(web.HTTPError, match="no profile 'huge'"):
        bob.apply_profile()
    bob.user_options = {}  # the API without options: the first profile the user may choose
    bob.apply_profile()
    assert bob._profile["name"] == "small"


def test_when_full_refuse_ends_a_spawn_swarm_cannot_place_and_wait_does_not(tmp_path):
    p = params(tmp_path)
    s = spawner_for(p, "alice", groups=("gpu-users",))
    s.user_options = {"profile": "gpu"}
    s.apply_profile()
    pending = {"Status": {"State": "pending", "Message": "pending task scheduling",
                          "Err": "no suitable node (insufficient resources on 3 nodes)"}}
    s.refuse_when_full({"Status": {"State": "pending", "Message": "pending task scheduling"}})  # not yet decided
    with pytest.raises(web.HTTPError) as e:
        s.refuse_when_full(pending)
    assert "profile gpu needs 1 NVIDIA-GPU" in e.value.jupyterhub_message and "try again later" in e.value.jupyterhub_message
    s._profile = dict(s._profile, when_full="wait")
    s.refuse_when_full(pending)  # waits


# -- preflight on the engines' answers ---------------------------------------------------------
def facts(mem_gib: float, cpus: int, gpus: list[str] | None = None) -> dict:
    info = {"GenericResources": [{"NamedResourceSpec": {"Kind": "NVIDIA-GPU", "Value": g}} for g in gpus or []] or None}
    return {"mem_bytes": int(mem_gib * 2**30), "memory_gib": mem_gib, "cpus": cpus,
            "generic_resources": stage_profiles.generic_resources(info)}


def test_preflight_reports_generic_resources_and_passes_a_satisfiable_profile(tmp_path):
    p = params(tmp_path)
    r = Result("preflight")
    stage_profiles.check_nodes(p, {"m1": facts(8, 2), "w1": facts(16, 4, ["gpu0", "gpu1"]), "w2": facts(8, 2)}, r)
    assert {"host": "w1", "advertises": "NVIDIA-GPU: gpu0, gpu1"} in r.facts["generic resources"]
    assert any(i.target == "profile gpu" and "on w1" in i.detail for i in r.items)


@pytest.mark.parametrize("extra_profile, nodes, fix", [
    ("{name: big, mem_limit: 64G}", {"w1": facts(16, 4), "w2": facts(8, 2)},
     "profiles[0] (big).mem_limit: 64G is more than the memory of every node"),
    ("{name: many, cpu_limit: 16}", {"w1": facts(16, 4), "w2": facts(8, 2)},
     "profiles[0] (many).cpu_limit: 16 CPUs is more than every node"),
    ("{name: g, generic_resources: {NVIDIA-GPU: 1}}", {"w1": facts(16, 4), "w2": facts(8, 2)},
     "profiles[0] (g).generic_resources.NVIDIA-GPU: no node it may run on (w1, w2) advertises 1 NVIDIA-GPU"),
    ("{name: g2, generic_resources: {NVIDIA-GPU: 2}}", {"w1": facts(16, 4, ["gpu0"]), "w2": facts(8, 2)},
     "advertises 2 NVIDIA-GPU"),
])
def test_preflight_refuses_a_profile_no_node_can_take(tmp_path, extra_profile, nodes, fix):
    text = PROFILES.split("profiles:")[0] + f"profiles:\n  - {extra_profile}\n"
    p = params(tmp_path, text)
    with pytest.raises(PreflightError) as e:
        stage_profiles.check_nodes(p, {"m1": facts(256, 64, ["gpu9", "gpu8"]), **nodes}, Result("preflight"))
    assert fix in str(e.value), str(e.value)  # the manager's resources do not count: servers go to workers


# -- the lab's fake GPUs -----------------------------------------------------------------------
def test_lab_nodes_advertise_fake_generic_resources(tmp_path):
    import ipaddress

    nodes = lab._plan("gl", 1, 2, ipaddress.ip_network("10.77.9.0/24"), None, "node0:NVIDIA-GPU=gpu0,node0:NVIDIA-GPU=gpu1")
    by = {n.name: n for n in nodes}
    assert by["gl-node0"].generic_resources == ("NVIDIA-GPU=gpu0", "NVIDIA-GPU=gpu1")
    assert by["gl-node1"].generic_resources == () and "generic_resources" not in by["gl-node1"].plan()
    argv = lab._engine_argv(by["gl-node0"], tmp_path, tmp_path, {"ca": tmp_path / "ca.pem"})
    assert argv[argv.index("--node-generic-resource") + 1] == "NVIDIA-GPU=gpu0"
    assert "--node-generic-resource" not in lab._engine_argv(by["gl-node1"], tmp_path, tmp_path, {"ca": tmp_path / "ca.pem"})
    with pytest.raises(Exception, match="no node 'node7'"):
        lab.parse_generic_resources("node7:NVIDIA-GPU=gpu0", [n.name for n in nodes], "gl")
    with pytest.raises(Exception, match="give NODE:KIND=ID"):
        lab.parse_generic_resources("NVIDIA-GPU=gpu0", [n.name for n in nodes], "gl")


def test_the_example_profile_folder_builds_from_the_single_user_image():
    text = (PROJECT / "images/example-profile/Dockerfile").read_text()
    assert "FROM ${BASE}" in text and "ARG BASE" in text


def test_gpu_profiles_keep_the_overlay_attached_on_every_node(tmp_path):
    """stages/attachments.py: with a profile asking for generic resources, a global service keeps the
    deployment's network attached on every node (a spawn must not update a GPU node: swarmkit's
    constraint enforcer then rejects its GPU tasks); without one, only with more than one host."""
    from hubops.stages import attachments

    p = params(tmp_path)
    assert attachments.wanted(p)
    spec = attachments.service_spec(p, image="hubops-singleuser:abc")
    assert spec["name"] == f"{p.prefix}-attach"
    assert spec["mode"].mode == "global"
    task = spec["task_template"]
    assert [n["Target"] for n in task["Networks"]] == [p.network_name]
    cs = task["ContainerSpec"]
    assert (cs["Image"], cs["Command"], cs["User"], cs["ReadOnly"]) == ("hubops-singleuser:abc", ["sleep", "infinity"],
                                                                         "1000:100", True)
    assert cs["CapabilityDrop"] == ["ALL"]
    assert task["Resources"]["Limits"]["MemoryBytes"] == 16 * 1024 * 1024
    assert spec["labels"]["hubops.role"] == attachments.ROLE
    assert spec["update_config"]["Order"] == "start-first"  # the node keeps its attachment through an update
    # Without GPU profiles: wanted while there is more than one host (a spawn on a node with no other server
    # would first wait for the node's attachment), not with one host (the hub keeps that node attached).
    (tmp_path / "b").mkdir()
    no_gpu = params(tmp_path / "b", extra=PROFILES.replace("    generic_resources: {NVIDIA-GPU: 1}\n", ""))
    assert len(no_gpu.hosts.all) == 3 and attachments.wanted(no_gpu)
    (tmp_path / "c").mkdir()
    one_host = PROFILES[PROFILES.index("profiles:"):].replace("    generic_resources: {NVIDIA-GPU: 1}\n", "")
    one = params(tmp_path / "c", extra=one_host.replace('    placement: {gpu: "yes"}\n', ""))
    assert len(one.hosts.all) == 1 and not attachments.wanted(one)
