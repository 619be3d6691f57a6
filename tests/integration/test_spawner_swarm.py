"""hubops's spawner (hubops/inhub/spawner.py, a subclass of the real dockerspawner 14 SwarmSpawner)
starting and stopping real Swarm services on the local engine's single-node swarm, configured by the
generated jupyterhub_config.py and made by JupyterHub's own User objects: the task is watched every
0.1 s (SwarmSpawner alone sleeps 1 s at its first look), stop returns only once the old container
is gone (SwarmSpawner alone returns while it still runs), a node-local home pins later servers to
its node (also across a hub restart, and not to a node that left the swarm), a shared-path home is
created with its owner and mounted.

The servers are a tiny image made here (/bin/sleep and its libraries), whose PID 1 ignores SIGTERM,
so its container lingers for the stop grace period (3 s) after its service is removed, as a busy
server would. The test process is outside the overlay network, so the spawner's own HTTP check is
off (http_timeout 0); the whole deploy chain (tests/e2e) spawns real servers through the hub.
Takes about 110 s on a busy 2-core machine."""
from __future__ import annotations

import asyncio
import ipaddress
import os
import secrets
import time

import docker
import dockerspawner
import pytest
from jupyterhub import orm

from hubops.stages import network
from hubops.core.engine import Clients
from hubops.inhub.spawner import HubopsSpawner
from hubops.core.params import load_params
from tests.helpers import hub_config, hub_spawner, make_params, sleep_image_tar

pytestmark = pytest.mark.engine

GRACE_S = 3


def _free_subnet(client: docker.DockerClient) -> str:
    used = [ipaddress.ip_network(c["Subnet"]) for n in client.networks.list()
            for c in ((n.attrs.get("IPAM") or {}).get("Config") or []) if c.get("Subnet") and ":" not in c["Subnet"]]
    for third in range(10, 250):
        net = ipaddress.ip_network(f"10.161.{third}.0/24")
        if not any(net.overlaps(u) for u in used):
            return str(net)
    raise AssertionError("no free /24 in 10.161.0.0/16")


@pytest.fixture(scope="module")
def swarm(tmp_path_factory):
    """A deployment's overlay network (made by hubops's own network stage) in the local engine's
    swarm, and the tiny server image; everything of this run removed afterwards."""
    client = docker.from_env(timeout=120)
    if client.info()["Swarm"]["LocalNodeState"] != "active":
        client.swarm.init(advertise_addr="127.0.0.1")  # left in place: other suites may use it by now
    suffix = secrets.token_hex(3)
    tmp = tmp_path_factory.mktemp("spawner")
    p = load_params(make_params(tmp, f"sp{suffix}", port=18100, subnet=_free_subnet(client)))
    image = f"sp-spawner-sleep:{suffix}"
    client.api.import_image_from_data(sleep_image_tar(), repository=image.split(":")[0], tag=suffix)
    clients = Clients(p)
    try:
        network.ensure_network(p, clients)
        yield {"client": client, "p": p, "image": image, "tmp": tmp,
               "node": client.info()["Swarm"]["NodeID"]}
    finally:
        mine = {"label": f"hubops.deployment={p.deployment}"}
        for svc in client.services.list(filters=mine):
            svc.remove()
        for _ in range(60):  # containers go after their grace period; the network only then
            if not client.containers.list(all=True, filters=mine):
                break
            time.sleep(0.5)
        for net in client.networks.list(filters=mine):
            net.remove()
        for vol in client.volumes.list(filters=mine):
            vol.remove(force=True)
        client.images.remove(image, force=True)
        clients.close()
        client.close()


def spawner_config(swarm, extra: str = ""):
    """The generated config for this run's deployment, with the tiny image as the server."""
    p = swarm["p"]
    if extra:
        d = swarm["tmp"] / secrets.token_hex(3)
        d.mkdir()
        p = load_params(make_params(d, p.deployment, port=18100, subnet=p.network.subnet, extra=extra))
    cfg = hub_config(p)
    cfg.SwarmSpawner.image = swarm["image"]
    cfg.SwarmSpawner.cmd = ["/bin/sleep", "infinity"]
    cfg.SwarmSpawner.extra_container_spec = dict(cfg.SwarmSpawner.extra_container_spec,
                                                 stop_grace_period=GRACE_S * 10**9)
    cfg.Spawner.http_timeout = 0  # the overlay network is not reachable from the test process
    return cfg


@pytest.fixture(autouse=True)
def own_docker_client(monkeypatch):
    """dockerspawner keeps one Docker client per class: the local engine's, for this test alone."""
    monkeypatch.setattr(HubopsSpawner, "_client", None)
    monkeypatch.setattr(dockerspawner.SwarmSpawner, "_client", None)


@pytest.fixture
def sleeps(monkeypatch):
    """Every asyncio.sleep SwarmSpawner and hubops's spawner make (both call asyncio.sleep), in seconds."""
    seen: list[float] = []
    real = asyncio.sleep

    async def sleep(delay, *args, **kwargs):
        seen.append(delay)
        return await real(delay, *args, **kwargs)

    monkeypatch.setattr(asyncio, "sleep", sleep)
    return seen


def containers(swarm, name: str) -> list:
    return swarm["client"].containers.list(filters={"label": f"com.docker.swarm.service.name={name}"})


def service(swarm, name: str):
    return swarm["client"].services.get(name)


def test_start_watches_the_new_task_closely(swarm, sleeps):
    cfg = spawner_config(swarm)
    s = hub_spawner(cfg, "alice")
    t0 = time.monotonic()
    asyncio.run(s.start())
    took = time.monotonic() - t0
    ours = list(sleeps)
    [task] = service(swarm, s.object_name).tasks(filters={"desired-state": "running"})
    assert task["Status"]["State"] == "running"
    asyncio.run(s.stop())
    # The same start by SwarmSpawner alone, for the contrast (and to show this test can fail).
    sleeps.clear()
    plain = dockerspawner.SwarmSpawner(user=s.user, hub=s.hub, config=cfg, orm_spawner=s.orm_spawner)
    t1 = time.monotonic()
    asyncio.run(plain.start())
    plain_took = time.monotonic() - t1
    theirs = list(sleeps)
    asyncio.run(plain.stop())
    while containers(swarm, plain.object_name):  # gone before the next test
        time.sleep(0.2)
    print(f"\nstart to a running task: hubops's spawner {took:.2f} s, sleeps {ours}; "
          f"SwarmSpawner alone {plain_took:.2f} s, sleeps {theirs}")
    assert ours and max(ours) <= 0.1, f"hubops's spawner slept {max(ours)} s at once while the task started"
    assert max(theirs) >= 1, "SwarmSpawner alone waits a whole second at its first look at the new task"


def test_stop_returns_once_the_old_container_is_gone(swarm):
    cfg = spawner_config(swarm)
    s = hub_spawner(cfg, "bob")
    asyncio.run(s.start())
    name = s.object_name
    assert len(containers(swarm, name)) == 1
    t0 = time.monotonic()
    asyncio.run(s.stop())
    took = time.monotonic() - t0
    left = containers(swarm, name)
    assert left == [], f"the old container {left[0].name} still runs after stop() returned"
    assert not s.object_id and s.get_state() == {}
    # SwarmSpawner alone returns as soon as the service is removed, its container still running.
    plain = dockerspawner.SwarmSpawner(user=s.user, hub=s.hub, config=cfg, orm_spawner=s.orm_spawner)
    asyncio.run(plain.start())
    t1 = time.monotonic()
    asyncio.run(plain.stop())
    plain_took = time.monotonic() - t1
    lingering = containers(swarm, name)
    t2 = time.monotonic()
    while containers(swarm, name):
        time.sleep(0.2)
    print(f"\nstop: hubops's spawner returned after {took:.2f} s, no container left; SwarmSpawner alone after "
          f"{plain_took:.2f} s, {len(lingering)} container still running, gone {time.monotonic() - t2:.2f} s later "
          f"(grace period {GRACE_S} s)")
    assert len(lingering) == 1, "SwarmSpawner alone leaves the old container running (this test can fail)"


def test_node_local_home_pins_later_servers_to_its_node(swarm):
    cfg = spawner_config(swarm, "storage: {users: {mode: node-local}}")
    db = orm.new_session_factory("sqlite://")()
    s = hub_spawner(cfg, "carol", db)
    asyncio.run(s.start())
    name, node = s.object_name, swarm["node"]
    assert service(swarm, name).attrs["Spec"]["TaskTemplate"]["Placement"].get("Constraints") in (None, [])
    assert s.home_node == node, "the first server's node is remembered"
    vol = swarm["client"].volumes.get(s.home_volume)
    assert vol.attrs["Labels"]["hubops.user"] == "carol" and vol.attrs["Labels"]["hubops.role"] == "user-home"
    asyncio.run(s.stop())
    assert s.get_state() == {"home_node": node}, "a stop forgets the service, not the home's node"
    s.orm_spawner.state = s.get_state()  # as the hub keeps it
    db.commit()
    # The hub restarts: JupyterHub makes a new spawner from its database; its server goes to that node.
    again = hub_spawner(cfg, "carol", db)
    assert again is not s and again.home_node == node
    asyncio.run(again.start())
    spec = service(swarm, name).attrs["Spec"]["TaskTemplate"]["Placement"]
    assert spec["Constraints"] == [f"node.id=={node}"], spec
    [task] = service(swarm, name).tasks(filters={"desired-state": "running"})
    assert task["NodeID"] == node and task["Status"]["State"] == "running"
    asyncio.run(again.stop())
    # A home on a node that left the swarm (a database restored elsewhere): anywhere, not "no suitable node".
    gone = hub_spawner(cfg, "carol", db)
    gone.load_state({"home_node": "x" * 25})
    asyncio.run(gone.start())
    assert service(swarm, name).attrs["Spec"]["TaskTemplate"]["Placement"].get("Constraints") in (None, [])
    assert gone.home_node == node
    asyncio.run(gone.stop())


def test_shared_path_home_is_created_and_mounted(swarm):
    homes = swarm["tmp"] / "homes"
    homes.mkdir()
    uid, gid = (1000, 100) if os.geteuid() == 0 else (os.getuid(), os.getgid())
    cfg = spawner_config(swarm, f"storage: {{users: {{mode: shared-path, path: {homes}, uid: {uid}, gid: {gid}}}}}")
    s = hub_spawner(cfg, "dave")
    assert not (homes / "dave").exists()
    asyncio.run(s.start())
    st = (homes / "dave").stat()
    assert (st.st_uid, st.st_gid, oct(st.st_mode & 0o777)) == (uid, gid, "0o700")
    mounts = service(swarm, s.object_name).attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Mounts"]
    assert [(m["Type"], m["Source"], m["Target"]) for m in mounts] == [("bind", str(homes / "dave"), "/home/jovyan")]
    [c] = containers(swarm, s.object_name)
    assert [(m["Source"], m["Destination"]) for m in c.attrs["Mounts"]] == [(str(homes / "dave"), "/home/jovyan")]
    asyncio.run(s.stop())


def test_users_servers_are_locked_down(swarm):
    """Every capability dropped (bounding set empty), a process limit, memory and CPU limits and a
    memory reservation from the parameters' defaults; no-new-privileges where the engine's API
    takes it for services (printed)."""
    cfg = spawner_config(swarm)
    s = hub_spawner(cfg, "dora")
    asyncio.run(s.start())
    try:
        spec = service(swarm, s.object_name).attrs["Spec"]["TaskTemplate"]
        assert spec["ContainerSpec"]["CapabilityDrop"] == ["ALL"]
        assert spec["Resources"]["Limits"]["Pids"] == 1024
        assert spec["Resources"]["Limits"]["MemoryBytes"] == 2 * 1024**3
        assert spec["Resources"]["Limits"]["NanoCPUs"] == 2 * 10**9
        assert spec["Resources"]["Reservations"]["MemoryBytes"] == 128 * 1024**2
        [ctr] = containers(swarm, s.object_name)
        ctr.reload()
        host = ctr.attrs["HostConfig"]
        assert host["PidsLimit"] == 1024 and host["Memory"] == 2 * 1024**3, host
        status = dict(line.split(":\t", 1) for line in
                      open(f"/proc/{ctr.attrs['State']['Pid']}/status").read().splitlines() if ":\t" in line)
        assert int(status["CapBnd"], 16) == 0, f"capabilities left in the bounding set: {status['CapBnd']}"
        assert int(status["CapEff"], 16) == 0
        api = swarm["client"].version()["ApiVersion"]
        nnp = status.get("NoNewPrivs", "?").strip()
        print(f"\nlockdown on Docker API {api}: CapBnd 0, pids 1024, memory 2 GiB, NoNewPrivs {nnp}")
        if nnp != "1":
            # Engines whose service API has no NoNewPrivileges ignore it; say which, fail on newer ones.
            assert tuple(int(x) for x in api.split(".")) < (1, 44), f"API {api} took no no-new-privileges"
    finally:
        asyncio.run(s.stop())
