"""The TLS front with a certificate from a real ACME server (Pebble, HTTP-01 on port 80 of this
machine): the front leaves port 80 to ACME's temporary responder, so the deploy issues through
HTTP-01 as before, and a forced renewal (a new Pebble certificate, validated through port 80 while
the front serves the hub's port) fails no request of a client sending one every 0.1 s.

Takes this machine's port 80 (the lock /tmp/hubops-lock-port-80, like tests/e2e/test_acme_github.py,
whose Pebble, /etc/hosts and port-80 fixtures it uses). Marked slow: a deploy and a renewal.
"""
from __future__ import annotations

import importlib.util
import textwrap
import time
from pathlib import Path

import docker
import pytest

from hubops.core import certs
from hubops.core.engine import Clients
from hubops.core.params import load_params
from hubops.ops import teardown
from tests.e2e.test_acme_github import NAME, hosts_entry, pebble, port80  # noqa: F401 - fixtures
from tests.helpers import ensure_swarm, free_port, free_subnet, hubops_cli, run_name, runs, stage_record

pytestmark = [pytest.mark.engine, pytest.mark.e2e, pytest.mark.slow]
PROJECT = Path(__file__).resolve().parents[2]
DEPLOYMENT = run_name("fracme")


def labelled() -> list[str]:
    client = docker.from_env()
    return sorted(f"{k} {o.name}" for k, coll in (("service", client.services), ("secret", client.secrets),
                                                  ("config", client.configs), ("volume", client.volumes))
                  for o in coll.list(filters={"label": f"hubops.deployment={DEPLOYMENT}"}))


@pytest.fixture(scope="module")
def deployed(tmp_path_factory, port80, hosts_entry, pebble):  # noqa: F811 - the imported fixtures
    ensure_swarm()
    tmp = tmp_path_factory.mktemp("fracme")
    (tmp / "userlist").write_text("operator admin\nalice\n")
    params = tmp / f"{DEPLOYMENT}.yaml"
    params.write_text(textwrap.dedent(f"""
        deployment: {DEPLOYMENT}
        operator_dir: {tmp / 'operator'}
        hosts:
          managers:
            - {{name: local, url: "unix:///var/run/docker.sock", advertise_addr: 127.0.0.1}}
        hub: {{public_name: {NAME}, https_port: {free_port()}}}
        network: {{subnet: {free_subnet()}}}
        tls:
          mode: acme
          acme: {{directory_url: {pebble.directory_url}, email: hub-admin@acme.test, ca_bundle: {pebble.bundle}}}
        auth: {{mode: shared-password, userlist: userlist}}
        images: {{dir: {PROJECT / 'images'}}}
        front: {{enabled: true}}
    """))
    outputs = tmp / "outputs"
    p = load_params(params)
    try:
        out = hubops_cli("deploy", "-p", str(params), outputs=outputs)
        assert out.returncode == 0, out.stderr[-4000:]
        yield {"p": p, "params": params, "outputs": outputs, "pebble": pebble}
    finally:
        teardown.teardown(p, Clients(p), remove_volumes=True, remove_user_data=True)
        assert not labelled(), f"teardown left {labelled()}"


def test_acme_renewal_through_http01_with_the_front_fails_no_request(deployed):
    p, pebble = deployed["p"], deployed["pebble"]
    old_fp = certs.cert_info((p.operator_path / "tls-cert.pem").read_bytes()).fingerprint_sha256
    spec = importlib.util.spec_from_file_location("renew_probe", PROJECT / "bench/renew_probe.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    asked = pebble.requests_seen("/order-plz")
    fig = bench.renew_with_probe(p, deployed["params"], deployed["outputs"], user=None)
    print(f"\nACME renew-tls through the TLS front: {fig['sent']} requests sent, {fig['failed']} failed, "
          f"slowest {fig['slowest_s']} s; swap {fig.get('swap_s')} s; renewal {fig['renew_s']} s")
    assert fig["returncode"] == 0, fig.get("stderr")
    assert fig["failed"] == 0, fig["failures"]
    assert pebble.requests_seen("/order-plz") > asked  # a new order, validated through port 80
    rec = stage_record(deployed["outputs"], runs(deployed["outputs"])[-1], "renew-tls")
    changes = "\n".join(rec["changes"])
    assert "acme-responder" in changes  # the HTTP-01 responder ran on port 80 beside the front
    facts = rec["results"][0]["facts"]
    assert facts["new_fingerprint_sha256"] != old_fp and facts["front"]["front_task_kept"] is True
