"""hubops's spawner in a real swarm that loses its quorum: a lab of two managers (two Docker engines
in their own namespaces, hubops.lab), a user's server as a real Swarm service on the first, then the
second loses power. The first manager then answers every service question with Docker's "The swarm
does not have a leader" (HTTP 500): SwarmSpawner 14 alone polls the server as stopped (the hub would
drop its route and record), hubops's spawner says it still runs, and its container does run.

Slow (a lab of its own): about 60-90 s. Lab `spq`, subnet 10.61.0.0/24, overlay 10.161.200.0/24."""
from __future__ import annotations

import asyncio
import time

import docker.errors
import dockerspawner
import pytest
from traitlets.config import Config

from hubops.lab import cluster as lab
from hubops.core.engine import Clients
from hubops.inhub.spawner import HubopsSpawner, no_leader
from hubops.core.params import load_params
from tests.helpers import hub_spawner, sleep_image_tar

pytestmark = [pytest.mark.engine, pytest.mark.slow]
NAME = "spq"
IMAGE = "sp-spawner-sleep:quorum"


@pytest.fixture(scope="module")
def two_managers(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("quorum")
    lab.lab_down(name=NAME)
    t0 = time.monotonic()
    info = lab.lab_up(name=NAME, managers=2, workers=0, subnet="10.61.0.0/24", overlay_subnet="10.161.200.0/24",
                      params_out=tmp / "lab.yaml")
    clients = None
    try:
        p = load_params(tmp / "lab.yaml")
        clients = Clients(p)
        (m1, a1), (m2, a2) = [(clients[n.name], n.address) for n in info.managers]
        m1.swarm.init(advertise_addr=a1)
        m2.swarm.join([f"{a1}:2377"], m1.swarm.attrs["JoinTokens"]["Manager"], advertise_addr=a2)
        for c in (m1, m2):
            c.api.import_image_from_data(sleep_image_tar(), repository=IMAGE.split(":")[0], tag=IMAGE.split(":")[1])
        print(f"\nlab of two managers up, in one swarm: {time.monotonic() - t0:.1f} s")
        yield {"info": info, "m1": m1, "m2": m2,
               "socket": lab.node_socket(lab.RUN_ROOT / NAME, info.managers[0].name)}
    finally:
        if clients is not None:
            clients.close()
        for n in info.nodes:
            lab.kill_node(name=NAME, node=n.name)
        lab.lab_down(name=NAME)


def test_quorum_lost_keeps_the_server_running_in_the_hub_s_eyes(two_managers, monkeypatch):
    m1 = two_managers["m1"]
    monkeypatch.setattr(HubopsSpawner, "_client", None)
    monkeypatch.setattr(dockerspawner.SwarmSpawner, "_client", None)
    cfg = Config()
    cfg.JupyterHub.spawner_class = HubopsSpawner
    cfg.SwarmSpawner.client_kwargs = {"base_url": f"unix://{two_managers['socket']}"}
    cfg.SwarmSpawner.image = IMAGE
    cfg.SwarmSpawner.cmd = ["/bin/sleep", "infinity"]
    cfg.SwarmSpawner.prefix = "spq-user"
    cfg.SwarmSpawner.extra_endpoint_spec = {"mode": "dnsrr"}
    # on the manager that keeps running, so its container outlives the other's loss
    cfg.SwarmSpawner.extra_placement_spec = {"constraints": [f"node.id=={m1.info()['Swarm']['NodeID']}"]}
    cfg.Spawner.http_timeout = 0  # no HTTP check from outside the lab
    s = hub_spawner(cfg, "alice")
    asyncio.run(s.start())
    assert asyncio.run(s.poll()) is None
    [container] = m1.containers.list(filters={"label": f"com.docker.swarm.service.name={s.object_name}"})

    t0 = time.monotonic()
    lab.kill_node(name=NAME, node=two_managers["info"].managers[1].name)  # power lost: 1 of 2 managers left
    error = None
    while time.monotonic() - t0 < 120:
        try:
            m1.api.inspect_service(s.object_name)
        except docker.errors.APIError as e:
            if no_leader(e):
                error = e
                break
        time.sleep(1)
    assert error is not None, "the surviving manager never said the swarm has no leader"
    print(f"\nsecond manager killed -> 'no leader' after {time.monotonic() - t0:.1f} s: {error.explanation[:120]}")
    assert error.response.status_code == 500

    plain = dockerspawner.SwarmSpawner(user=s.user, hub=s.hub, config=cfg, orm_spawner=s.orm_spawner)
    plain.object_name = s.object_name
    assert asyncio.run(plain.poll()) == 0, "SwarmSpawner alone calls the server stopped (this test can fail)"
    assert asyncio.run(s.poll()) is None, "hubops's spawner: still running, as far as anyone can tell"
    assert s.object_id, "and it does not forget its service"
    container.reload()
    assert container.status == "running", "the server's container does run on"
