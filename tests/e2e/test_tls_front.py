"""The TLS front (front.enabled: HAProxy before the hub's proxy) on the local single-node swarm,
deployed and renewed the way an operator does (`hubops deploy`, `hubops ops renew-tls`). One
deployment, `front-RUN` (a free port and subnet), shared by the tests of this file, in order:

1. the deploy chain ends with the front and its certificate agent running, the hub publishing no
   port and mounting no TLS secret; a second deploy changes nothing;
2. the front keeps the project's TLS policy (openssl s_client: no TLS 1.0/1.1, no CBC suite on 1.2;
   AEAD on 1.2 and TLS 1.3 accepted) and HSTS on the hub's pages and on a user's server;
3. the client's address reaches the hub (its log names the address the front saw, not the front's
   address on the overlay network);
4. a forced renewal while a client sends a request every 0.1 s on a new TLS connection each time and
   a websocket to a user's kernel stays open: **0 failed requests**, the websocket still works, the
   front's task and the hub's service were not restarted, the new certificate is served, the user's
   server is the same one (figures printed: sent, failed, slowest; no timed assertion);
5. a certificate the front must not serve (its key swapped for another) is refused by 80-deploy
   before anything changes: the served certificate and the agent's service stay as they were;
6. teardown leaves no object of the deployment (the front's tmpfs volume included).
"""
from __future__ import annotations

import importlib.util
import ipaddress
import re
import subprocess
import time
import uuid
from pathlib import Path

import docker
import pytest

from hubops.core import certs
from hubops.core.engine import Clients
from hubops.core.params import load_params
from hubops.hub import running
from hubops.hub.running import HubAPI
from hubops.ops import teardown
from hubops.stages import front
from tests.helpers import ensure_swarm, free_port, free_subnet, hubops_cli, make_params, run_name, runs, stage_record

pytestmark = [pytest.mark.engine, pytest.mark.e2e, pytest.mark.slow]
PROJECT = Path(__file__).resolve().parents[2]
DEPLOYMENT = run_name("front")


def _bench():
    spec = importlib.util.spec_from_file_location("renew_probe", PROJECT / "bench/renew_probe.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def labelled() -> list[str]:
    client = docker.from_env()
    return sorted(f"{kind} {o.name}" for kind, coll in (("service", client.services), ("secret", client.secrets),
                                                        ("config", client.configs), ("volume", client.volumes))
                  for o in coll.list(filters={"label": f"hubops.deployment={DEPLOYMENT}"}))


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    ensure_swarm()
    tmp = tmp_path_factory.mktemp("front")
    params = make_params(tmp, DEPLOYMENT, port=free_port(), subnet=free_subnet(), extra="front: {enabled: true}\n")
    outputs = tmp / "outputs"
    assert not labelled(), f"deployment {DEPLOYMENT} exists already"
    p = load_params(params)
    state = {"tmp": tmp, "params": params, "outputs": outputs, "p": p}
    try:
        t0 = time.monotonic()
        out = hubops_cli("deploy", "-p", str(params), outputs=outputs)
        print(f"\ndeploy with the TLS front: {time.monotonic() - t0:.1f} s")
        assert out.returncode == 0, out.stderr[-4000:]
        yield state
    finally:
        down = hubops_cli("ops", "teardown", "-p", str(params), "--set", "confirm=true", "--set", "remove_volumes=true",
                          "--set", "remove_user_data=true", outputs=outputs)
        left = labelled()
        if down.returncode != 0 or left:
            teardown.teardown(p, Clients(p), remove_volumes=True, remove_user_data=True)
        assert down.returncode == 0, down.stderr[-3000:]
        assert not left, f"teardown left {left}"


def _service(name: str):
    return docker.from_env().services.get(name)


def test_deploy_runs_the_front_and_a_second_deploy_changes_nothing(deployed):
    p = deployed["p"]
    hub = _service(p.hub_service).attrs["Spec"]
    assert not (hub.get("EndpointSpec") or {}).get("Ports"), hub.get("EndpointSpec")  # the front publishes the port
    assert not any("tls" in s["SecretName"] for s in hub["TaskTemplate"]["ContainerSpec"].get("Secrets") or [])
    fs = _service(front.front_service(p)).attrs
    assert fs["Endpoint"]["Ports"][0]["PublishedPort"] == p.hub.https_port
    agent = _service(front.agent_service(p)).attrs["Spec"]["TaskTemplate"]["ContainerSpec"]
    assert sorted(s["File"]["Name"] for s in agent["Secrets"]) == ["hubops-tls-cert", "hubops-tls-key"]
    assert HubAPI(p).request("GET", "/hub/api/").json()["version"]
    again = hubops_cli("deploy", "-p", str(deployed["params"]), outputs=deployed["outputs"])
    assert again.returncode == 0, again.stderr[-3000:]
    run = runs(deployed["outputs"])[-1]
    assert run["changed"] == 0, [s.get("changes") for s in run["stages"]]


def openssl_connects(p, *args: str) -> tuple[bool, str]:
    out = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{p.hub.https_port}", "-servername",
                          p.hub.public_name, "-CAfile", str(p.operator_path / "ca.pem"), *args],
                         input="", capture_output=True, text=True, timeout=30)
    text = out.stdout + out.stderr
    return out.returncode == 0 and "Cipher is (NONE)" not in text and "Verify return code: 0" in text, text


def test_front_keeps_the_tls_policy_and_hsts(deployed):
    p = deployed["p"]
    for proto in ("-tls1", "-tls1_1"):
        ok, text = openssl_connects(p, proto, "-cipher", "DEFAULT@SECLEVEL=0")
        assert not ok, f"{proto} was accepted:\n{text[-800:]}"
    for cbc in ("ECDHE-RSA-AES128-SHA", "ECDHE-ECDSA-AES128-SHA", "ECDHE-RSA-AES256-SHA384", "AES128-GCM-SHA256"):
        ok, text = openssl_connects(p, "-tls1_2", "-cipher", cbc)
        assert not ok, f"TLS 1.2 with {cbc} was accepted:\n{text[-800:]}"
    ok, text = openssl_connects(p, "-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256")
    assert ok, f"TLS 1.2 with an AEAD suite was refused:\n{text[-800:]}"
    ok, text = openssl_connects(p, "-tls1_3")
    assert ok, f"TLS 1.3 was refused:\n{text[-800:]}"
    api = HubAPI(p)
    page = api.s.get(f"{api.base}/hub/login", timeout=10)
    assert page.headers.get("Strict-Transport-Security") == "max-age=31536000", dict(page.headers)
    api.request("POST", "/hub/api/users/alice/server", ok=(201, 202), timeout=running.SPAWN_REQUEST_TIMEOUT)
    api.wait_server("alice", ready=True, timeout=180)
    user = api.request("GET", "/user/alice/api/status")
    assert user.headers.get("Strict-Transport-Security", "").startswith("max-age="), dict(user.headers)


def test_the_hub_sees_the_clients_address(deployed):
    p = deployed["p"]
    path = f"/hub/front-probe-{uuid.uuid4().hex[:12]}"
    s = running.hub_session(p)
    # A client that claims another address is not believed: the front sets the headers itself.
    s.get(f"{p.hub_url}{path}", timeout=10, headers={"X-Forwarded-For": "192.0.2.7", "X-Real-IP": "192.0.2.7"})
    c = running.hub_container(p, Clients(p))
    deadline = time.monotonic() + 20
    line = ""
    while time.monotonic() < deadline and not line:
        line = next((ln for ln in c.logs(tail=400).decode(errors="replace").splitlines() if path in ln), "")
        time.sleep(0.5)
    assert line, f"the hub did not log {path}"
    m = re.search(r"\(\S*@([0-9a-fA-F.:]+)\)", line)
    assert m, line
    seen = ipaddress.ip_address(m.group(1))
    print(f"\nthe hub logged the client as {seen}: {line.strip()[-120:]}")
    assert str(seen) != "192.0.2.7", "the hub believed the client's own X-Forwarded-For"
    assert seen not in ipaddress.ip_network(p.network.subnet), f"{seen} is an overlay address (the front's), not the client's"


def test_renewal_fails_no_request_and_keeps_websockets(deployed):
    p = deployed["p"]
    api = HubAPI(p)
    api.wait_server("alice", ready=True, timeout=180)
    started = api.request("GET", "/user/alice/api/status").json()["started"]
    hub_before = _service(p.hub_service).attrs["Version"]["Index"]
    old_fp = certs.cert_info((p.operator_path / "tls-cert.pem").read_bytes()).fingerprint_sha256
    fig = _bench().renew_with_probe(p, deployed["params"], deployed["outputs"], user="alice")
    print(f"\nrenew-tls through the TLS front: {fig['sent']} requests sent, {fig['failed']} failed, slowest "
          f"{fig['slowest_s']} s, {fig['over_1s']} over 1 s; swap {fig.get('swap_s')} s; websocket kept: "
          f"{fig.get('websocket_kept')}; renewal {fig['renew_s']} s")
    assert fig["returncode"] == 0, fig.get("stderr")
    assert fig["sent"] > 10 and fig["failed"] == 0, fig["failures"]
    assert fig["websocket_kept"] is True, fig.get("websocket_error")
    rec = stage_record(deployed["outputs"], runs(deployed["outputs"])[-1], "renew-tls")
    facts = rec["results"][0]["facts"]
    assert facts["front"]["front_task_kept"] is True and facts["health_failures"] == 0
    assert facts["new_fingerprint_sha256"] != old_fp
    changes = "\n".join(rec["changes"])
    assert f"update service {front.agent_service(p)}" in changes and f"service {p.hub_service}" not in changes
    assert f"remove secret hubops-{DEPLOYMENT}-tls-cert-" in changes  # the old version pruned
    assert _service(p.hub_service).attrs["Version"]["Index"] == hub_before  # the hub was not touched
    assert api.request("GET", "/user/alice/api/status").json()["started"] == started


def test_a_certificate_the_front_must_not_serve_is_refused_before_any_change(deployed):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    p = deployed["p"]
    key_file = p.operator_path / "tls-key.pem"
    good = key_file.read_bytes()
    agent_before = _service(front.agent_service(p)).attrs["Version"]["Index"]
    served_before = _bench_served(p)
    other = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    key_file.write_bytes(other)
    try:
        out = hubops_cli("deploy", "-p", str(deployed["params"]), "--only", "80-deploy", outputs=deployed["outputs"])
    finally:
        key_file.write_bytes(good)
    assert out.returncode != 0
    assert "private key does not match the certificate" in out.stdout + out.stderr, (out.stdout + out.stderr)[-2000:]
    assert _service(front.agent_service(p)).attrs["Version"]["Index"] == agent_before
    assert _bench_served(p) == served_before
    assert not [s for s in docker.from_env().secrets.list(filters={"label": f"hubops.deployment={DEPLOYMENT}"})
                if s.name.startswith(f"hubops-{DEPLOYMENT}-tls-key-") and s.id not in _agent_secret_ids(p)]


def _agent_secret_ids(p) -> set[str]:
    cs = _service(front.agent_service(p)).attrs["Spec"]["TaskTemplate"]["ContainerSpec"]
    return {s["SecretID"] for s in cs.get("Secrets") or []}


def _bench_served(p) -> str:
    from hubops.ops.renew_tls import served_certificate

    return served_certificate(p)[0]
