"""40-tls with tls.acme.challenge dns-01, against real servers started here: Debian's BIND 9 as
the authoritative server of a test zone that takes RFC 2136 updates signed with a TSIG key, and
Pebble (Let's Encrypt's ACME test server) resolving through that BIND, so its DNS-01 validation
reads the TXT record hubops published. A certificate is issued, kept (a re-run makes no ACME
call), issued again (what renew-tls does), and the TXT record is gone after each; a wrong TSIG
secret is refused with the key named and nothing left in the zone, the secret never shown.
"""
from __future__ import annotations

import re
import secrets as _random
import socket
import textwrap

import docker
import pytest

from hubops.core.engine import Clients
from hubops.core.errors import TLSError
from hubops.core.params import load_params
from hubops.core.result import Result
from hubops.stages import swarm, tls, tls_acme
from tests.helpers import PROJECT
from tests.peers import Bind, Pebble

pytestmark = pytest.mark.engine
ZONE = "dns01.test"
NAME = f"hub.{ZONE}"
TXT = f"_acme-challenge.{NAME}."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dns01")
    bind = Bind(tmp / "bind", zone=ZONE, port=free_port(), a_records={"hub": "127.0.0.1"}).start()
    pebble = Pebble(tmp / "pebble", acme_port=free_port(), management_port=free_port(), dns_port=free_port(),
                    challtest_management_port=free_port(), dns_server=bind.address)
    try:
        pebble.start()
        yield {"bind": bind, "pebble": pebble, "tmp": tmp}
    finally:
        pebble.stop()
        bind.stop()


def params_for(servers, deployment: str, secret_env: str) -> "object":
    tmp, bind, pebble = servers["tmp"], servers["bind"], servers["pebble"]
    (tmp / "userlist").write_text("operator admin\n")
    f = tmp / f"{deployment}.yaml"
    f.write_text(textwrap.dedent(f"""
        deployment: {deployment}
        operator_dir: {tmp / deployment / 'operator'}
        hosts:
          managers:
            - {{name: local, url: "unix:///var/run/docker.sock", advertise_addr: 127.0.0.1}}
        hub: {{public_name: {NAME}, https_port: {free_port()}}}
        network: {{subnet: 10.239.{_random.randbelow(200) + 20}.0/24}}
        auth: {{mode: shared-password, userlist: userlist}}
        images: {{dir: {PROJECT / 'images'}}}
        tls:
          mode: acme
          acme:
            directory_url: {pebble.directory_url}
            email: hub-admin@example.org
            ca_bundle: {pebble.bundle}
            challenge: dns-01
            dns:
              server: {bind.address}
              tsig_key_name: {bind.key_name}
              tsig_secret: {{env: {secret_env}}}
              propagation_timeout: 20
    """))
    return load_params(f)


@pytest.fixture
def deployment(request):
    name = f"dn{_random.token_hex(3)}"
    yield name
    client = docker.from_env()
    for coll in (client.secrets, client.configs):
        for o in coll.list(filters={"label": f"hubops.deployment={name}"}):
            o.remove()


def test_dns01_issues_keeps_and_renews_through_rfc2136(servers, deployment, monkeypatch, caplog):
    bind, pebble = servers["bind"], servers["pebble"]
    monkeypatch.setenv("HUBOPS_TEST_TSIG", bind.secret)
    p = params_for(servers, deployment, "HUBOPS_TEST_TSIG")
    clients = Clients(p)
    swarm.ensure_swarm(p, clients)

    first = tls.ensure_tls(p, clients)
    text = repr(first)
    assert any(i.action == "create" and i.target == f"TXT {TXT}" for i in first.items), text
    assert any(i.action == "remove" and i.target == f"TXT {TXT}" for i in first.items), text
    assert bind.txt(TXT) == set(), "the TXT record is gone after validation"
    assert first.facts["names"] == [NAME] or NAME in first.facts["names"]
    log = pebble.log.read_text(errors="replace")
    assert "dns-01" in log.lower(), "Pebble validated a DNS-01 challenge"
    named_log = bind.log.read_text(errors="replace")
    for verb in ("adding", "deleting"):  # BIND quotes the name in one message and not the other
        assert re.search(rf"{verb} an RR at '?{re.escape(TXT[:-1])}'? TXT", named_log), f"BIND logged no {verb}"
    fp1 = first.facts["fingerprint_sha256"]

    orders = pebble.requests_seen("/order-plz")
    again = tls.ensure_tls(p, clients)
    assert pebble.requests_seen("/order-plz") == orders, "a certificate far from expiry makes no ACME call"
    assert not [i for i in again.items if i.action != "keep" and "TXT" in i.target]

    renewed = Result("renew-tls")
    issued = tls_acme.issue(p, clients, renewed, stage="renew-tls")  # what renew-tls calls
    assert issued.info.fingerprint_sha256 != fp1
    assert bind.txt(TXT) == set()
    everything = "\n".join([repr(first), repr(again), repr(renewed), first._repr_html_(), caplog.text])
    assert bind.secret not in everything, "the TSIG secret appears in a result or the log"
    print(f"\nDNS-01: issued {fp1[:16]}, renewed {issued.info.fingerprint_sha256[:16]}; TXT gone after each")


def test_a_wrong_tsig_secret_is_refused_naming_the_key(servers, deployment, monkeypatch):
    bind = servers["bind"]
    wrong = "c2VjcmV0LXRoYXQtaXMtbm90LXRoZS1rZXlzLXNlY3JldC0xMjM0"  # base64, not the key's secret
    monkeypatch.setenv("HUBOPS_TEST_TSIG_WRONG", wrong)
    p = params_for(servers, deployment, "HUBOPS_TEST_TSIG_WRONG")
    clients = Clients(p)
    swarm.ensure_swarm(p, clients)
    with pytest.raises(TLSError) as e:
        tls.ensure_tls(p, clients)
    msg = str(e.value)
    assert "tsig" in msg.lower() and bind.key_name in msg, msg
    assert wrong not in msg and bind.secret not in msg
    assert bind.txt(TXT) == set(), "nothing is left in the zone after a refused update"
    client = docker.from_env()
    assert not client.secrets.list(filters={"label": f"hubops.deployment={deployment}"}), "no secret made"
