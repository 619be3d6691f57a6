"""The hub's Docker API door (hubops/inhub/apiproxy.py) in front of the real engine: the real
HubopsSpawner (dockerspawner's SwarmSpawner), configured by the generated jupyterhub_config.py,
starts and stops a real Swarm service through it; a shared-path home is made through it with its
owner; docker-py through the door is refused a service mounting `/`, a privileged one, one on the
host network, one with the engine's socket, a container, and the removal of a service that is not a
user's server; the door's log names every call (what a spawn and a stop send is printed).

The door runs in this process on a unix socket of its own, the engine's socket upstream, as it runs in
its service; the whole deployment with the door as a service and the hub as a non-root user is in
tests/e2e/test_apiproxy_hub.py. Takes about 20 s."""
from __future__ import annotations

import asyncio
import logging
import os
import secrets
import threading
import time

import docker
import docker.errors
import dockerspawner
import pytest

from hubops.core.engine import Clients
from hubops.core.params import load_params
from hubops.inhub import apiproxy as door
from hubops.inhub.spawner import HubopsSpawner
from hubops.stages import apiproxy, network
from tests.helpers import free_subnet, hub_config, hub_spawner, make_params, sleep_image_tar

pytestmark = pytest.mark.engine
ENGINE = "/var/run/docker.sock"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    client = docker.from_env(timeout=120)
    if client.info()["Swarm"]["LocalNodeState"] != "active":
        client.swarm.init(advertise_addr="127.0.0.1")
    suffix = secrets.token_hex(3)
    tmp = tmp_path_factory.mktemp("apiproxy")
    homes = tmp / "homes"
    homes.mkdir()
    p = load_params(make_params(tmp, f"ap{suffix}", port=18102, subnet=free_subnet(),
                                extra=f"storage: {{users: {{mode: shared-path, path: {homes}}}}}"))
    image = f"ap-door-sleep:{suffix}"
    client.api.import_image_from_data(sleep_image_tar(), repository=image.split(":")[0], tag=suffix)
    clients = Clients(p)
    sock = str(tmp / "door" / "docker.sock")
    loop = asyncio.new_event_loop()
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    handler = Keep()
    door.log.addHandler(handler)
    door.log.setLevel(logging.INFO)
    policy = door.Policy.from_dict(apiproxy.policy(p))
    serving: dict = {}

    def run():
        asyncio.set_event_loop(loop)
        serving["task"] = loop.create_task(door.serve_forever(policy, listen=sock, upstream=ENGINE))
        try:
            loop.run_until_complete(serving["task"])
        except asyncio.CancelledError:
            pass

    thread = threading.Thread(target=run, daemon=True)
    try:
        network.ensure_network(p, clients)
        thread.start()
        for _ in range(100):
            if os.path.exists(sock):
                break
            time.sleep(0.05)
        yield {"client": client, "p": p, "image": image, "sock": sock, "records": records, "homes": homes,
               "api": docker.APIClient(base_url=f"unix://{sock}", version="auto", timeout=60)}
    finally:
        door.log.removeHandler(handler)
        try:
            if "task" in serving:
                async def stop():  # the server and every open connection's handler
                    for t in asyncio.all_tasks():
                        if t is not asyncio.current_task():
                            t.cancel()
                asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
                thread.join(10)
                pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
                if pending:
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.close()
        finally:  # what this module made on the engine goes, however the door stopped
            mine = {"label": f"hubops.deployment={p.deployment}"}
            try:
                for svc in client.services.list(filters=mine):
                    svc.remove()
                for _ in range(60):
                    if not client.containers.list(all=True, filters=mine):
                        break
                    time.sleep(0.5)
                for net in client.networks.list(filters=mine):
                    net.remove()
            finally:
                client.images.remove(image, force=True)
                clients.close()
                client.close()


@pytest.fixture(autouse=True)
def own_docker_client(monkeypatch):
    monkeypatch.setattr(HubopsSpawner, "_client", None)
    monkeypatch.setattr(dockerspawner.SwarmSpawner, "_client", None)


def test_the_real_spawner_starts_and_stops_through_the_door(setup, monkeypatch):
    p = setup["p"]
    cfg = hub_config(p)
    cfg.SwarmSpawner.image = setup["image"]
    cfg.SwarmSpawner.cmd = ["/bin/sleep", "infinity"]
    cfg.Spawner.http_timeout = 0  # the overlay network is not reachable from the test process
    cfg.SwarmSpawner.client_kwargs = {"base_url": f"unix://{setup['sock']}"}
    # As in the hub: not root, DOCKER_HOST the door, so the home is made by the door.
    monkeypatch.setattr(os, "geteuid", lambda: 990)
    monkeypatch.setenv("DOCKER_HOST", f"unix://{setup['sock']}")
    setup["records"].clear()
    s = hub_spawner(cfg, "alice")
    asyncio.run(s.start())
    svc = setup["client"].services.get(s.object_name)
    [task] = svc.tasks(filters={"desired-state": "running"})
    assert task["Status"]["State"] == "running"
    assert svc.attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Mounts"][0]["Source"] == str(setup["homes"] / "alice")
    st = (setup["homes"] / "alice").stat()
    assert (st.st_uid, st.st_gid) == (p.storage.users.uid, p.storage.users.gid)
    assert asyncio.run(s.poll()) is None
    asyncio.run(s.stop())
    assert not setup["client"].services.list(filters={"name": s.object_name})
    calls = list(setup["records"])
    print("\nwhat a spawn, a poll and a stop send through the door:\n  " + "\n  ".join(calls))
    assert not [c for c in calls if not c.startswith("allow")], calls
    for needed in ("POST /services/create", "GET /tasks", "DELETE /services/", "POST /hubops/homes/alice"):
        assert any(needed in c for c in calls), (needed, calls)


def _user_spec(setup, api, **container):
    p = setup["p"]
    cs = docker.types.ContainerSpec(image=setup["image"], command=["/bin/sleep", "infinity"], cap_drop=["ALL"],
                                    **container)
    return dict(name=f"{p.prefix}-user-mallory-{secrets.token_hex(2)}",
                task_template=docker.types.TaskTemplate(container_spec=cs, networks=[p.network_name]),
                labels={"hubops.deployment": p.deployment, "hubops.role": "user-server", "hubops.managed": "true"})


@pytest.mark.parametrize("what,change,message", [
    ("a bind mount of /", lambda s: s["task_template"]["ContainerSpec"].update(
        Mounts=[{"Type": "bind", "Source": "/", "Target": "/host"}]), "bind-mounts /, outside the allowed home"),
    ("the engine's socket", lambda s: s["task_template"]["ContainerSpec"].update(
        Mounts=[{"Type": "bind", "Source": "/var/run/docker.sock", "Target": "/var/run/docker.sock"}]),
     "mounts the engine's socket"),
    ("privileged (every capability)", lambda s: s["task_template"]["ContainerSpec"].update(CapabilityAdd=["ALL"]),
     "adds capabilities"),
    ("privileged", lambda s: s["task_template"]["ContainerSpec"].update(Privileged=True), "is privileged"),
    ("the host network", lambda s: s["task_template"].update(Networks=[{"Target": "host"}]),
     "joins the 'host' network"),
    ("a published port", lambda s: s.update(endpoint_spec={"Ports": [{"TargetPort": 22, "PublishedPort": 2222}]}),
     "publishes ports"),
])
def test_a_service_leaving_its_container_is_refused_with_a_clear_message(setup, what, change, message):
    api = setup["api"]
    spec = _user_spec(setup, api)
    change(spec)
    with pytest.raises(docker.errors.APIError) as e:
        api.create_service(**spec)
    assert e.value.response.status_code == 403
    assert "refused by hubops's Docker API door" in str(e.value) and message in str(e.value), str(e.value)
    assert not setup["client"].services.list(filters={"name": spec["name"]}), f"{what}: created anyway"


def test_an_update_is_checked_like_a_create(setup):
    api = setup["api"]
    spec = _user_spec(setup, api)
    created = api.create_service(**spec)
    try:
        info = api.inspect_service(created["ID"])
        tt = info["Spec"]["TaskTemplate"]
        tt["ContainerSpec"]["Mounts"] = [{"Type": "bind", "Source": "/etc", "Target": "/etc-of-host"}]
        with pytest.raises(docker.errors.APIError, match="bind-mounts /etc"):
            api.update_service(created["ID"], info["Version"]["Index"], task_template=tt, name=spec["name"],
                               labels=spec["labels"])
        cs = setup["client"].services.get(created["ID"]).attrs["Spec"]["TaskTemplate"]["ContainerSpec"]
        assert not cs.get("Mounts")
    finally:
        api.remove_service(created["ID"])


def test_other_calls_and_others_objects_are_refused(setup):
    api, client, p = setup["api"], setup["client"], setup["p"]
    with pytest.raises(docker.errors.APIError, match="not a call the hub needs"):
        api.containers()
    with pytest.raises(docker.errors.APIError, match="not a call the hub needs"):
        api.create_container(setup["image"], ["/bin/sleep", "1"])
    with pytest.raises(docker.errors.APIError, match="not a call the hub needs"):
        api.create_volume("x")
    # A service that is not a user's server of this deployment (say, the hub's): not removed through the door.
    other = client.services.create(setup["image"], ["/bin/sleep", "infinity"], name=f"{p.prefix}-notauser",
                                   labels={"hubops.deployment": p.deployment, "hubops.role": "hub"})
    try:
        with pytest.raises(docker.errors.APIError, match="not labelled as a user's object"):
            api.remove_service(other.id)
        assert client.services.get(other.id)
    finally:
        other.remove()
    assert api.inspect_network(p.network_name)["Name"] == p.network_name
    with pytest.raises(docker.errors.APIError, match="not the deployment's"):
        api.inspect_network("bridge")
