"""The hub's Docker API door (hubops/inhub/apiproxy.py): its pure rules, without an engine.

The spec a real user's server gets is made by the real HubopsSpawner (dockerspawner's SwarmSpawner)
from the generated jupyterhub_config.py and captured as docker-py would send it: the door lets it
through, for every storage.users mode; each way out of the container is refused with a message that
names the key and why. The door against a real engine (and from inside a real hub) is in
tests/integration/test_apiproxy_engine.py and tests/e2e/test_apiproxy_hub.py.
"""
from __future__ import annotations

import asyncio
import copy
import json

import docker
import dockerspawner
import pytest

from hubops.inhub import apiproxy as door
from hubops.inhub.spawner import HubopsSpawner
from hubops.stages import apiproxy, deploy
from hubops.hub import config as hubconfig
from hubops.core.params import load_params
from tests.helpers import hub_config, hub_spawner, make_params

NET_ID = "n0tw0rk1d0000000000000000"


def params(tmp_path, extra: str = ""):
    return load_params(make_params(tmp_path, "apx", port=18131, subnet="10.161.251.0/24", extra=extra))


class _Sent(Exception):
    pass


class _Capture(docker.APIClient):
    """docker-py's own client; the request body it would send is kept instead of sent."""
    sent: list = []

    def _post_json(self, url, data, **kwargs):
        _Capture.sent.append((url, json.loads(json.dumps({k: v for k, v in data.items() if v is not None}))))
        raise _Sent()


def spawner_spec(p, monkeypatch, user: str = "alice") -> dict:
    """The body of POST /services/create the real spawner sends for `user`'s server."""
    client = _Capture(base_url="unix:///nonexistent.sock", version="1.41")
    monkeypatch.setattr(HubopsSpawner, "_client", client)
    monkeypatch.setattr(dockerspawner.SwarmSpawner, "_client", client)
    _Capture.sent = []
    s = hub_spawner(hub_config(p), user)
    with pytest.raises(_Sent):
        asyncio.run(s.create_object())
    [(url, body)] = _Capture.sent
    assert url.endswith("/services/create")
    return body


def policy(p) -> door.Policy:
    return door.Policy.from_dict(apiproxy.policy(p))


def nets(p) -> set[str]:
    return {p.network_name, NET_ID}


def refused(spec, p, match: str):
    with pytest.raises(door.Refused, match=match) as e:
        door.check_service_spec(spec, policy(p), nets(p))
    return str(e.value)


# -- routes ----------------------------------------------------------------------------------
@pytest.mark.parametrize("method,path,action", [
    ("GET", "/v1.41/_ping", "pass"), ("HEAD", "/_ping", "pass"), ("GET", "/v1.41/version", "pass"),
    ("GET", "/v1.41/services?filters=%7B%7D", "pass"), ("GET", "/v1.41/services/hubops-apx-user-alice", "pass"),
    ("POST", "/v1.41/services/create", "service-create"), ("POST", "/v1.41/services/abc/update?version=3", "service-update"),
    ("DELETE", "/v1.41/services/abc", "service-delete"), ("GET", "/v1.41/tasks?filters=x", "pass"),
    ("GET", "/v1.41/nodes/n1", "pass"), ("GET", "/v1.41/networks/hubops-apx", "network-inspect"),
    ("GET", "/v1.41/images/hubops-singleuser:abc/json", "pass"), ("GET", "/v1.41/images/reg:5000/a/b:c/json", "pass"),
    ("POST", "/v1.41/secrets/create", "secret-create"), ("DELETE", "/v1.41/configs/c1", "config-delete"),
    ("POST", "/v1.41/hubops/homes/alice", "home"),
])
def test_the_calls_spawning_needs_are_routed(method, path, action):
    assert door.route(method, path)[0] == action


@pytest.mark.parametrize("method,path", [
    ("POST", "/v1.41/containers/create"), ("POST", "/v1.41/containers/abc/exec"), ("POST", "/exec/abc/start"),
    ("GET", "/v1.41/containers/json"), ("POST", "/v1.41/images/create?fromImage=x"), ("POST", "/v1.41/build"),
    ("POST", "/v1.41/nodes/n1/update?version=1"), ("POST", "/v1.41/swarm/leave"), ("GET", "/v1.41/swarm"),
    ("POST", "/v1.41/volumes/create"), ("POST", "/v1.41/networks/create"), ("POST", "/v1.41/plugins/pull"),
    ("GET", "/v1.41/services/abc/logs"), ("POST", "/v1.41/secrets/s1/update"), ("GET", "/v1.41/events"),
    ("POST", "/v1.41/networks/n/connect"), ("DELETE", "/v1.41/nodes/n1"), ("GET", "/v1.41/info"),
    ("PUT", "/v1.41/containers/abc/archive"), ("POST", "/session"), ("GET", "/v1.41/networks"),
])
def test_everything_else_is_refused(method, path):
    with pytest.raises(door.Refused, match="not a call the hub needs"):
        door.route(method, path)


@pytest.mark.parametrize("path", ["/v1.41/images/../containers/json", "/v1.41/images/x/..%2F..%2Fcontainers/json",
                                  "/v1.41/images/%2e%2e/json", "/v1.41/services//x", "/v1.41/images/a\\b/json"])
def test_no_way_around_the_routes(path):
    with pytest.raises(door.Refused, match="not a plain path"):
        door.route("GET", path)


# -- what the real spawner sends passes --------------------------------------------------------
@pytest.mark.parametrize("storage", [
    "",
    "storage: {users: {mode: node-local}}",
    "storage: {users: {mode: shared-path, path: /srv/homes}}",
    "storage: {users: {mode: volume-driver, driver: local, driver_opts: {type: nfs, o: 'addr=10.1.2.3,rw', "
    "device: ':/export/home/{username}'}}}",
    "spawner: {cap_add: [NET_BIND_SERVICE]}",
])
def test_the_real_spawners_spec_passes(tmp_path, monkeypatch, storage):
    p = params(tmp_path, storage)
    spec = spawner_spec(p, monkeypatch)
    assert spec["Name"] == "hubops-apx-user-alice"
    assert door.check_service_spec(spec, policy(p), nets(p)) == {"secrets": [], "configs": []}
    # An update sends the spec as `docker service inspect` shows it: network targets are IDs.
    spec["TaskTemplate"]["Networks"] = [{"Target": NET_ID}]
    door.check_service_spec(spec, policy(p), nets(p))


# -- and each way out of the container is refused -----------------------------------------------
def test_bind_mount_of_root_is_refused(tmp_path, monkeypatch):
    p = params(tmp_path, "storage: {users: {mode: shared-path, path: /srv/homes}}")
    spec = spawner_spec(p, monkeypatch)
    for source in ("/", "/etc", "/srv", "/srv/homes/../..", "/srv/homes/alice/deeper", "/srv/homesX/a", "//srv/homes/a"):
        bad = copy.deepcopy(spec)
        bad["TaskTemplate"]["ContainerSpec"]["Mounts"] = [{"Type": "bind", "Source": source, "Target": "/host"}]
        msg = refused(bad, p, r"Mounts\[0\]")
        assert "outside the allowed home and data paths" in msg or "not a plain path" in msg, msg


def test_no_bind_mount_at_all_without_shared_path(tmp_path, monkeypatch):
    p = params(tmp_path)
    spec = spawner_spec(p, monkeypatch)
    spec["TaskTemplate"]["ContainerSpec"]["Mounts"] = [{"Type": "bind", "Source": "/home/alice", "Target": "/h"}]
    assert "none (storage.users.mode is not shared-path)" in refused(spec, p, "outside the allowed")


@pytest.mark.parametrize("source", ["/var/run/docker.sock", "/run/docker.sock", "/run/containerd/containerd.sock",
                                    "/srv/homes/docker.sock"])
def test_the_engine_socket_is_never_mounted(tmp_path, monkeypatch, source):
    p = params(tmp_path, "storage: {users: {mode: shared-path, path: /srv/homes}}")
    spec = spawner_spec(p, monkeypatch)
    spec["TaskTemplate"]["ContainerSpec"]["Mounts"].append({"Type": "bind", "Source": source, "Target": "/x"})
    refused(spec, p, "mounts the engine's socket")


@pytest.mark.parametrize("mutate,match", [
    (lambda cs: cs.update(Privileged=True), r"ContainerSpec.Privileged: the service is privileged"),
    (lambda cs: cs.update(CapabilityAdd=["SYS_ADMIN"]), r"CapabilityAdd: adds capabilities \['SYS_ADMIN'\]"),
    (lambda cs: cs.update(CapAdd=["ALL"]), "adds capabilities"),
    (lambda cs: cs.update(Devices=[{"PathOnHost": "/dev/sda"}]), "uses the host's devices"),
    (lambda cs: cs.update(PidMode="host"), "host's PID namespace"),
    (lambda cs: cs.update(IpcMode="host"), "host's IPC namespace"),
    (lambda cs: cs.update(Sysctls={"net.ipv4.ip_forward": "1"}), "sets sysctls"),
    (lambda cs: cs.update(Privileges={"Seccomp": {"Mode": "unconfined"}}), "default seccomp"),
    (lambda cs: cs.update(Privileges={"AppArmor": {"Mode": "disabled"}}), "default AppArmor"),
    (lambda cs: cs.update(Privileges={"SELinuxContext": {"Disable": True}}), "SELinux"),
    (lambda cs: cs.update(Mounts=[{"Type": "volume", "Source": "hubops-apx-hub-data", "Target": "/d"}]),
     "not a user's home volume"),
    (lambda cs: cs.update(Mounts=[{"Type": "volume", "Source": "x", "Target": "/d",
                                   "VolumeOptions": {"DriverConfig": {"Name": "local", "Options":
                                                     {"type": "none", "o": "bind", "device": "/"}}}}]),
     "not a user's home volume"),
    (lambda cs: cs.update(Mounts=[{"Type": "npipe", "Source": "x", "Target": "/d"}]), "mount type 'npipe'"),
    (lambda cs: cs.update(Mounts=[{"Type": "cluster", "Source": "x", "Target": "/d"}]), "mount type 'cluster'"),
    (lambda cs: cs.update(Secrets=[{"SecretID": ""}]), "no SecretID"),
    (lambda cs: cs.update(Whatever=1), r"ContainerSpec.Whatever: not a setting a user's server needs"),
    (lambda cs: cs.pop("CapabilityDrop"), r"CapabilityDrop: keeps Docker's default capabilities"),
    (lambda cs: cs.update(CapabilityDrop=["NET_RAW"]), r"CapabilityDrop: keeps Docker's default capabilities"),
])
def test_container_settings_that_leave_the_container_are_refused(tmp_path, monkeypatch, mutate, match):
    p = params(tmp_path)
    spec = spawner_spec(p, monkeypatch)
    mutate(spec["TaskTemplate"]["ContainerSpec"])
    refused(spec, p, match)


@pytest.mark.parametrize("mutate,match", [
    (lambda s: s["TaskTemplate"].update(Networks=[{"Target": "host"}]), r"joins the 'host' network"),
    (lambda s: s["TaskTemplate"].update(Networks=[{"Target": "bridge"}]), r"joins the 'bridge' network"),
    (lambda s: s["TaskTemplate"].update(Networks=[{"Target": "other-deployment-net"}]), "not the deployment's"),
    (lambda s: s.update(Networks=[{"Target": "ingress"}]), r"spec.Networks\[0\]"),
    (lambda s: s.update(EndpointSpec={"Ports": [{"TargetPort": 22, "PublishedPort": 2222, "PublishMode": "host"}]}),
     "publishes ports on the nodes"),
    (lambda s: s.update(Mode={"Global": {}}), "one replicated task"),
    (lambda s: s.update(Mode={"Replicated": {"Replicas": 50}}), "one replicated task"),
    (lambda s: s.update(Name="hubops-apx-hub"), "is not a user's server of apx"),
    (lambda s: s.update(Name="other-user-alice"), "is not a user's server"),
    (lambda s: s["Labels"].update({"hubops.deployment": "other"}), "not labelled as a user's object of apx"),
    (lambda s: s["Labels"].update({"hubops.role": "hub"}), "not labelled"),
    (lambda s: s["TaskTemplate"].update(Runtime="plugin"), "Runtime"),
    (lambda s: s["TaskTemplate"].update(PluginSpec={"Name": "x"}), "is a plugin"),
    (lambda s: s["TaskTemplate"].update(LogDriver={"Name": "syslog", "Options": {"syslog-address": "tcp://x"}}),
     "LogDriver"),
])
def test_service_settings_that_leave_the_deployment_are_refused(tmp_path, monkeypatch, mutate, match):
    p = params(tmp_path)
    spec = spawner_spec(p, monkeypatch)
    mutate(spec)
    refused(spec, p, match)


def test_volume_driver_options_must_be_the_deployments(tmp_path, monkeypatch):
    p = params(tmp_path, "storage: {users: {mode: volume-driver, driver: local, driver_opts: {type: nfs, "
                         "o: 'addr=10.1.2.3,rw', device: ':/export/home/{username}'}}}")
    spec = spawner_spec(p, monkeypatch)
    opts = spec["TaskTemplate"]["ContainerSpec"]["Mounts"][0]["VolumeOptions"]["DriverConfig"]["Options"]
    assert opts["device"] == ":/export/home/alice"
    for bad in ({"device": ":/export"}, {"device": ":/export/home/a/../../etc"}, {"o": "addr=10.9.9.9,rw"},
                {"type": "none", "o": "bind", "device": "/"}):
        s = copy.deepcopy(spec)
        s["TaskTemplate"]["ContainerSpec"]["Mounts"][0]["VolumeOptions"]["DriverConfig"]["Options"] = {**opts, **bad}
        refused(s, p, "is not the deployment's")


def test_secrets_and_configs_must_be_users(tmp_path):
    p = params(tmp_path)
    pol = policy(p)
    good = {"hubops.deployment": "apx", "hubops.role": "user-server"}
    door.check_secret_spec({"Name": "hubops-apx-user-alice-token", "Labels": good, "Data": "eA=="}, pol, "secret")
    for labels in ({}, {**good, "hubops.deployment": "other"}, {**good, "hubops.role": "hub"}):
        with pytest.raises(door.Refused, match="not labelled as a user's object"):
            door.check_secret_spec({"Name": "x", "Labels": labels, "Data": "eA=="}, pol, "secret")
    with pytest.raises(door.Refused, match="Driver"):
        door.check_secret_spec({"Name": "x", "Labels": good, "Driver": {"Name": "vault"}}, pol, "secret")


# -- the deployment side ------------------------------------------------------------------------
def test_the_hub_has_no_engine_socket_and_is_not_root(tmp_path):
    p = params(tmp_path, "storage: {users: {mode: shared-path, path: /srv/homes}}")
    spec = deploy.service_spec(p, hub_image="h:1", secret_refs=[], config_refs=[])
    cs = spec["task_template"]["ContainerSpec"]
    assert cs["User"] == f"{hubconfig.HUB_UID}:{hubconfig.HUB_GID}" and hubconfig.HUB_UID != 0
    assert not [m for m in cs["Mounts"] if m["Type"] == "bind"], cs["Mounts"]  # no socket, no host path
    assert f"DOCKER_HOST=unix://{apiproxy.DOOR_SOCKET}" in cs["Env"]
    assert {"Target": apiproxy.DOOR_DIR, "Source": "hubops-apx-door", "Type": "volume"}.items() <= \
        next(m for m in cs["Mounts"] if m["Target"] == apiproxy.DOOR_DIR).items()
    d = apiproxy.service_spec(p, image="h:1", constraints=deploy.hub_constraints(p))
    dcs = d["task_template"]["ContainerSpec"]
    # The door: everywhere the hub may run (global mode, the hub's constraints), the engine's socket.
    assert d["mode"].mode == "global" and d["task_template"]["Placement"]["Constraints"] == deploy.hub_constraints(p)
    assert {"Target": apiproxy.ENGINE_SOCKET, "Source": p.hub_host.engine_socket, "Type": "bind", "ReadOnly": False} \
        in dcs["Mounts"]
    pol = json.loads(next(e for e in dcs["Env"] if e.startswith(door.POLICY_ENV + "="))[len(door.POLICY_ENV) + 1:])
    assert door.Policy.from_dict(pol).bind_paths == ["/srv/homes"]


def test_the_hub_image_user_matches_the_config():
    from tests.helpers import PROJECT

    text = (PROJECT / "images/hub/Dockerfile").read_text()
    assert f"--uid {hubconfig.HUB_UID} " in text and f"--gid {hubconfig.HUB_GID} " in text
    assert f"chown {hubconfig.HUB_UID}:{hubconfig.HUB_GID} /srv/jupyterhub" in text


def test_a_hub_whose_door_does_not_answer_keeps_its_servers(tmp_path, monkeypatch):
    """The door restarting (or starting after the hub): poll cannot know, so the server is taken as
    running, as JupyterHub would otherwise forget it; SwarmSpawner alone raises."""
    p = params(tmp_path)
    client = docker.APIClient(base_url=f"unix://{tmp_path}/no-door.sock", version="1.41", timeout=5)
    monkeypatch.setattr(HubopsSpawner, "_client", client)
    monkeypatch.setattr(dockerspawner.SwarmSpawner, "_client", client)
    s = hub_spawner(hub_config(p), "alice")
    s.object_id = "svc1"
    assert asyncio.run(s.poll()) is None
    plain = dockerspawner.SwarmSpawner(user=s.user, hub=s.hub, config=hub_config(p), orm_spawner=s.orm_spawner)
    with pytest.raises(OSError):
        asyncio.run(plain.poll())


def test_shared_data_mounts_pass_and_nothing_beside_them(tmp_path, monkeypatch):
    """The real spawner's spec for a user in group physics, with shared_data's data sets (a path, a
    volume driver) and group folder: the door lets exactly those through, a data set only read-only,
    and refuses a neighbouring path or a data set volume with other driver options."""
    p = load_params(make_params(tmp_path, "apx", port=18131, subnet="10.161.251.0/24",
                                users="operator admin\nalice @physics\nbob\n", extra="""
shared_data:
  datasets:
    - {name: census, path: /srv/data/census}
    - {name: sky, driver: local, driver_opts: {type: nfs, o: "addr=10.1.0.9,ro", device: ":/export/sky"}}
  group_folders:
    - {group: physics, gid: 2001, path: /srv/hubops-shared/physics}
"""))
    spec = spawner_spec(p, monkeypatch, "alice")
    mounts = spec["TaskTemplate"]["ContainerSpec"]["Mounts"]
    assert {m["Source"] for m in mounts} >= {"/srv/data/census", "/srv/hubops-shared/physics", f"{p.prefix}-data-sky"}
    door.check_service_spec(spec, policy(p), nets(p))  # passes
    census = next(m for m in mounts if m["Source"] == "/srv/data/census")
    census["ReadOnly"] = False
    refused(spec, p, "must be mounted read-only")
    census["ReadOnly"] = True
    census["Source"] = "/srv/data"  # the data set's parent: not a data set
    refused(spec, p, "outside the allowed home and data paths")
    census["Source"] = "/srv/data/census"
    sky = next(m for m in mounts if m["Source"] == f"{p.prefix}-data-sky")
    sky["VolumeOptions"]["DriverConfig"]["Options"]["device"] = ":/"
    refused(spec, p, "another driver or options")
