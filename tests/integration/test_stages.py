"""The ensure_* steps against a real engine in a single-node swarm: each creates what is missing,
changes nothing the second time, and refuses objects it did not make (without touching them)."""
from __future__ import annotations

import docker
import pytest

import ipaddress
import time

from hubops.core import certs
from hubops.stages import auth, network, storage, swarm, tls
from hubops.core import secrets
from hubops.ops import teardown
from hubops.core.engine import Clients
from hubops.core.errors import ConflictError, ParameterError
from hubops.core.params import load_params
from hubops.core.result import Result
from tests.helpers import ensure_swarm, run_name

pytestmark = pytest.mark.engine

# Deployments are `itest-RUN`, `itest2-RUN`, ... (tests/helpers.RUN) with free ports and subnets, so
# that two runs of this file on one engine never meet.


@pytest.fixture
def deployment(params_factory, docker_client):
    ensure_swarm()  # this file needs a swarm and makes it when the engine has none
    p = load_params(params_factory("itest"))
    clients = Clients(p)
    swarm.ensure_swarm(p, clients)
    yield p, clients
    teardown.teardown(p, clients, remove_volumes=True)
    left = [o.name for coll in (docker_client.secrets, docker_client.configs, docker_client.networks,
                                docker_client.services, docker_client.volumes)
            for o in coll.list(filters={"label": f"hubops.deployment={p.deployment}"})]
    clients.close()
    assert not left, f"teardown left {left}"


def test_swarm_is_idempotent(deployment):
    p, clients = deployment
    r = swarm.ensure_swarm(p, clients)
    assert not r.changed, r
    node = clients.manager.nodes.list()[0]
    assert node.attrs["Spec"]["Labels"][f"hubops.{p.deployment}.hub"] == "true"


def test_network_created_kept_and_foreign_one_refused(deployment, docker_client, params_factory):
    p, clients = deployment
    plan = network.ensure_network(p, clients, dry_run=True)
    assert plan.changed and not [n for n in docker_client.networks.list(names=[p.network_name]) if n.name == p.network_name]
    first = network.ensure_network(p, clients)
    assert [i.action for i in first.items] == ["create"]
    net = docker_client.networks.get(p.network_name)
    for _ in range(120):  # Swarm's allocator fills in the driver shortly after the create (later on a busy engine)
        if net.attrs["Driver"]:
            break
        time.sleep(0.25)
        net.reload()
    assert net.attrs["Driver"] == "overlay" and net.attrs["Attachable"]
    assert net.attrs["IPAM"]["Config"][0]["Subnet"] == str(p.network.subnet)
    assert not network.ensure_network(p, clients).changed

    # Another deployment asking for an overlapping subnet is refused before anything is made.
    half = next(ipaddress.ip_network(str(p.network.subnet)).subnets(new_prefix=25), None)
    q = load_params(params_factory("itest2", subnet=str(half)))
    with pytest.raises(ParameterError, match=rf"network\.subnet: .*overlaps network {p.network_name}"):
        network.ensure_network(q, Clients(q))

    # A network with hubops's name but not hubops's labels is a conflict and is left alone.
    q3 = load_params(params_factory("itest3"))
    foreign = docker_client.networks.create(q3.network_name, driver="overlay", attachable=True)
    try:
        with pytest.raises(ConflictError, match=f"{q3.network_name} exists but was not created by hubops"):
            network.ensure_network(q3, Clients(q3))
        foreign.reload()  # still there
    finally:
        foreign.remove()


def test_secret_versions_rotate_and_prune(deployment, docker_client):
    p, clients = deployment
    c = clients.manager
    r = Result("t")
    n1 = secrets.ensure_versioned(c, p, r, role="demo", value=b"one", stage="test")
    assert r.items[-1].action == "create"
    assert secrets.ensure_versioned(c, p, r, role="demo", value=b"one", stage="test") == n1
    assert r.items[-1].action == "keep"
    n2 = secrets.ensure_versioned(c, p, r, role="demo", value=b"two", stage="test")
    assert n2 != n1 and secrets.current(c, p, "demo").name == n2
    assert b"one" not in n1.encode() and "two" not in n2
    r2 = Result("prune")
    secrets.prune_unused(c, p, r2, keep={n2})
    assert [i.target for i in r2.changes] == [f"secret {n1}"]
    assert [s.name for s in secrets.versions(c, p, "demo")] == [n2]


def test_storage_volume_and_foreign_volume(deployment, docker_client, params_factory):
    p, clients = deployment
    assert storage.ensure_hub_volume(p, clients).changed
    r = storage.ensure_hub_volume(p, clients)
    assert not r.changed and r.facts["hub_can_move"] is False
    q = load_params(params_factory("itest4"))
    volume = f"hubops-{q.deployment}-hub-data"
    foreign = docker_client.volumes.create(volume)
    try:
        with pytest.raises(ConflictError, match=f"volume {volume} on local exists"):
            storage.ensure_hub_volume(q, Clients(q))
        docker_client.volumes.get(volume)  # untouched
    finally:
        foreign.remove()


def test_tls_self_signed_is_issued_once(deployment, docker_client):
    p, clients = deployment
    first = tls.ensure_tls(p, clients)
    assert {i.action for i in first.items} == {"create"}
    assert first.facts["names"] == ["localhost"]
    again = tls.ensure_tls(p, clients)
    assert not again.changed, again
    cert = secrets.current(clients.manager, p, "tls-cert")
    assert cert.attrs["Spec"]["Labels"]["hubops.stage"] == "40-tls"
    assert (p.operator_path / "ca-key.pem").stat().st_mode & 0o077 == 0


def test_tls_files_mode_refuses_mismatched_key_before_any_change(deployment, docker_client, params_factory, tmp_path):
    p, clients = deployment
    ca, ca_key = certs.make_ca("test CA")
    cert, _ = certs.issue_server_cert(ca, ca_key, ["localhost"])
    _, other_key = certs.issue_server_cert(ca, ca_key, ["localhost"])
    (tmp_path / "cert.pem").write_bytes(cert)
    (tmp_path / "key.pem").write_bytes(other_key)
    # Refused when the parameters are read (hubops check), before any stage runs.
    with pytest.raises(ParameterError, match="tls.files.key: .* is not the key of tls.files.cert"):
        load_params(params_factory("itest5",
                                   extra=f"tls: {{mode: files, files: {{cert: {tmp_path}/cert.pem, key: {tmp_path}/key.pem}}}}\n"))
    assert not docker_client.secrets.list(filters={"label": f"hubops.deployment={run_name('itest5')}"})


def test_auth_userlist_change_makes_a_new_version(deployment, params_factory, tmp_path):
    p, clients = deployment
    r1 = auth.ensure_auth(p, clients)
    assert len(r1.changes) == 3  # userlist, user password, admin password
    assert not auth.ensure_auth(p, clients).changed
    pw = (p.operator_path / "admin-password").read_text().strip()
    assert len(pw) >= 32 and (p.operator_path / "admin-password").stat().st_mode & 0o077 == 0
    assert all(pw not in repr(x) for x in (r1, r1.to_dict()))
    (tmp_path / "userlist").write_text("operator admin\nalice\nbob\n")
    p2 = load_params(p.source)
    r3 = auth.ensure_auth(p2, clients)
    assert [i.action for i in r3.changes] == ["create"] and "userlist" in r3.changes[0].target


def test_teardown_removes_only_labelled_objects(deployment, docker_client):
    p, clients = deployment
    network.ensure_network(p, clients)
    storage.ensure_hub_volume(p, clients)
    bystander = docker_client.secrets.create(name=f"hubops-{p.deployment}-bystander", data=b"x")
    try:
        r = teardown.teardown(p, clients, remove_volumes=True)
        assert any(f"network {p.network_name}" in i.target for i in r.changes)
        docker_client.secrets.get(bystander.id)  # untouched: no hubops labels
        with pytest.raises(docker.errors.NotFound):
            docker_client.networks.get(p.network_name)
    finally:
        bystander.remove()
