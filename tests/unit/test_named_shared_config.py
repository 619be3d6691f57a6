"""Named servers and shared data without an engine: the generated config read back as JupyterHub reads
it, and hubops's spawner (the real dockerspawner over JupyterHub's own User and ORM objects) naming,
labelling and mounting. With real Swarm services and a real hub: tests/e2e/test_named_shared.py."""
from __future__ import annotations

import pytest

from hubops.core.errors import ParameterError
from hubops.core.params import load_params
from hubops.inhub.spawner import MAX_SERVICE_NAME, fit_name
from tests.helpers import hub_config, hub_spawner, make_params

USERS = "operator admin\nalice @physics\nbob\n"
SHARED = """
shared_data:
  datasets:
    - {name: census, path: /srv/data/census}
    - {name: sky, driver: local, driver_opts: {type: nfs, o: "addr=10.1.0.9,ro", device: ":/export/sky"}, groups: [physics]}
    - {name: big, path: /srv/data/big, on_request: true}
  group_folders:
    - {group: physics, gid: 2001, path: /srv/hubops-shared/physics}
"""


def params(tmp_path, extra: str = "", users: str = USERS, deployment: str = "nsu"):
    return load_params(make_params(tmp_path, deployment, port=18102, subnet="10.161.251.0/24", extra=extra, users=users))


def spawner(cfg, user: str, server: str = ""):
    """The spawner of `user`'s default server, or of a named server as the hub makes one (its ORM row first)."""
    s = hub_spawner(cfg, user)
    if server:
        s.user._new_orm_spawner(server, server)
        s = s.user.spawners[server]
    return s


def test_named_servers_are_off_by_default_and_limited_when_on(tmp_path):
    cfg = hub_config(params(tmp_path))
    assert not cfg.JupyterHub.get("allow_named_servers", False)
    cfg = hub_config(params(tmp_path, "spawner: {named_servers: 3}"))
    assert cfg.JupyterHub.allow_named_servers is True and cfg.JupyterHub.named_server_limit_per_user == 3


def test_a_short_culler_timeout_makes_the_hub_read_activity_often_enough(tmp_path):
    assert "last_activity_interval" not in hub_config(params(tmp_path)).JupyterHub  # default: JupyterHub's 300 s
    cfg = hub_config(params(tmp_path, "culler: {timeout: 40, every: 5}"))
    assert cfg.JupyterHub.last_activity_interval == 10


def test_each_named_server_has_its_own_service_name_and_labels(tmp_path):
    cfg = hub_config(params(tmp_path, "spawner: {named_servers: 2}"))
    default, busy = spawner(cfg, "alice"), spawner(cfg, "alice", "busy")
    assert default.object_name == "hubops-nsu-user-alice"
    assert busy.object_name == "hubops-nsu-user-alice--busy"  # dockerspawner's separator: no user name has '--'
    kwargs = {"labels": cfg.SwarmSpawner.extra_create_kwargs["labels"],
              "task_template": {"ContainerSpec": {"Labels": cfg.SwarmSpawner.extra_container_spec["labels"]}}}
    busy.label_server(kwargs)
    assert kwargs["labels"]["hubops.user"] == "alice" and kwargs["labels"]["hubops.server"] == "busy"
    assert kwargs["task_template"]["ContainerSpec"]["Labels"]["hubops.server"] == "busy"
    assert kwargs["labels"]["hubops.deployment"] == "nsu"
    # the configured labels, shared by every spawner, are not changed
    assert "hubops.user" not in cfg.SwarmSpawner.extra_create_kwargs["labels"]


def test_long_names_stay_within_docker_s_limit_and_distinct(tmp_path):
    user = "a" * 40
    cfg = hub_config(params(tmp_path, "spawner: {named_servers: 2}", users=f"operator admin\n{user}\n",
                            deployment="d" * 32))
    names = {spawner(cfg, user, s).object_name for s in ("experiment-one-with-a-long-name", "experiment-two-with-a-long-name")}
    names.add(spawner(cfg, user).object_name)
    assert len(names) == 3 and all(len(n) <= MAX_SERVICE_NAME and n[-1].isalnum() for n in names), names
    assert fit_name("short") == "short"


def test_shared_data_goes_to_whom_it_is_for(tmp_path):
    cfg = hub_config(params(tmp_path, SHARED))
    alice = spawner(cfg, "alice")
    mounts, gids = alice.shared_data()
    by_target = {m["Target"]: m for m in mounts}
    assert sorted(by_target) == ["/data/census", "/data/sky", "/shared/physics"]
    assert by_target["/data/census"]["ReadOnly"] is True and by_target["/data/census"]["Type"] == "bind"
    sky = by_target["/data/sky"]
    assert sky["Type"] == "volume" and sky["Source"] == "hubops-nsu-data-sky" and sky["ReadOnly"] is True
    assert sky["VolumeOptions"]["DriverConfig"]["Name"] == "local"
    assert sky["VolumeOptions"]["Labels"]["hubops.role"] == "dataset"
    assert by_target["/shared/physics"]["ReadOnly"] is False and gids == ["2001"]
    task = alice.add_shared_data({"ContainerSpec": {"Mounts": [{"Target": "/home/jovyan"}]}})
    assert task["ContainerSpec"]["Groups"] == ["2001"] and len(task["ContainerSpec"]["Mounts"]) == 4
    bob_mounts, bob_gids = spawner(cfg, "bob").shared_data()
    assert [m["Target"] for m in bob_mounts] == ["/data/census"] and bob_gids == []
    # the hook a profile uses: an on_request data set is mounted when asked for by name
    bob = spawner(cfg, "bob")
    bob.requested_datasets = ["big"]
    assert [m["Target"] for m in bob.shared_data()[0]] == ["/data/census", "/data/big"]


@pytest.mark.parametrize("extra, users, expect", [
    ("shared_data: {group_folders: [{group: chem, gid: 2002, path: /srv/s/chem}]}", USERS,
     "shared_data.group_folders[0]: group 'chem' has no member"),
    ("storage: {users: {mode: shared-path, path: /srv/homes}}\n"
     "shared_data: {group_folders: [{group: physics, gid: 2002, path: /srv/homes/physics}]}", USERS,
     "shared_data.group_folders[0].path: /srv/homes/physics overlaps storage.users.path /srv/homes"),
    ("shared_data: {datasets: [{name: a, path: /srv/a, target: /data/x}, {name: b, path: /srv/b, target: /data/x/y}]}",
     USERS, "shared_data.datasets[1].target: /data/x/y overlaps shared_data.datasets[0].target /data/x"),
    ("shared_data: {group_folders: [{group: physics, gid: 2001, driver: local, driver_opts: {device: '/x/{username}'}}]}",
     USERS, "shared_data.group_folders[0].driver_opts: {username} has no meaning here"),
    ("storage: {hub: {mode: shared-path, path: /srv/hub}}\n"
     "shared_data: {datasets: [{name: a, path: /srv/hub}]}", USERS,
     "shared_data.datasets[0].path: /srv/hub overlaps storage.hub.path /srv/hub"),
])
def test_mistakes_are_refused_naming_the_key(tmp_path, extra, users, expect):
    with pytest.raises(ParameterError) as e:
        params(tmp_path, extra, users=users)
    assert expect in str(e.value), str(e.value)


def test_a_named_server_goes_where_the_user_s_node_local_home_is(tmp_path):
    cfg = hub_config(params(tmp_path, "spawner: {named_servers: 2}\nstorage: {users: {mode: node-local}}"))
    default = spawner(cfg, "alice")
    assert default.user_home_node() is None
    default.home_node = "node-with-the-home"
    default.orm_spawner.state = default.get_state()  # as the hub saves it after the first start
    default.user._new_orm_spawner("busy", "busy")
    busy = default.user.spawners["busy"]
    assert busy.user_home_node() == "node-with-the-home"
    assert busy.home_volume == default.home_volume  # one home per user, whichever server
