"""The TLS front (front.enabled), without an engine: HAProxy's configuration (TLS policy, client
address, websockets, the backend on the overlay), the hub's configuration and service spec with the
front, and the refusal of a certificate the front must not serve, both in hubops (before any change)
and in the agent that runs in the front's image (images/front/front.py)."""
from __future__ import annotations

import datetime as dt
import importlib.util
import textwrap
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from traitlets.config import Config

from hubops.core import certs
from hubops.core.errors import TLSError
from hubops.core.params import load_params
from hubops.hub import config as hubconfig
from hubops.stages import deploy, front
from tests.helpers import make_params

PROJECT = Path(__file__).resolve().parents[2]


def _params(tmp_path, extra="front: {enabled: true}\n"):
    return load_params(make_params(tmp_path, "fronttest", port=18443, subnet="10.213.7.0/24", extra=extra))


def _agent():
    spec = importlib.util.spec_from_file_location("hubops_front_agent", PROJECT / "images/front/front.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _cert(name: str, *, days_from: float, days_to: float, key=None) -> tuple[bytes, bytes]:
    """A self-signed certificate for `name`, valid from now+days_from to now+days_to."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now + dt.timedelta(days=days_from)).not_valid_after(now + dt.timedelta(days=days_to))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


def test_haproxy_config_keeps_the_tls_policy_client_address_and_websockets(tmp_path):
    p = _params(tmp_path)
    cfg = front.render_config(p)
    assert f"ssl-default-bind-ciphers {hubconfig.TLS12_CIPHERS}" in cfg
    assert "ssl-min-ver TLSv1.2" in cfg and "CBC" not in cfg
    assert f'Strict-Transport-Security "{hubconfig.HSTS}"' in cfg
    # The client's address and scheme are set by the front, never taken from the client.
    for header in ("X-Forwarded-For %[src]", "X-Real-IP %[src]", "X-Scheme https", "X-Forwarded-Proto https"):
        assert f"http-request set-header {header}" in cfg
    assert "timeout tunnel" in cfg  # websockets stay open
    assert f"server proxy hubops-fronttest-hub:{hubconfig.PROXY_PORT} resolvers swarm" in cfg
    assert f"bind :{front.FRONT_PORT} ssl crt {front.RUN_DIR}/hub.pem" in cfg
    assert f"stats socket {front.RUN_DIR}/admin.sock mode 600 level admin" in cfg
    assert "BEGIN" not in cfg  # no certificate or key in the configuration


def test_hub_behind_the_front_serves_plain_http_on_the_overlay_and_mounts_no_tls_secret(tmp_path):
    p = _params(tmp_path)
    assert "tls-cert" not in hubconfig.secret_roles(p) and "tls-key" not in hubconfig.secret_roles(p)
    src = hubconfig.render(p, singleuser_image="hubops-singleuser:abc")
    cfg = Config()
    # Only the network lines: the rest reads secrets.
    net = [ln for ln in src.splitlines() if ln.startswith(("c.JupyterHub.bind_url", "c.JupyterHub.ssl_",
                                                             "c.ConfigurableHTTPProxy.command"))]
    exec("\n".join(net), {"c": cfg})
    assert cfg.JupyterHub.bind_url == f"http://:{hubconfig.PROXY_PORT}"
    assert "ssl_cert" not in cfg.JupyterHub and cfg.ConfigurableHTTPProxy.command == ["configurable-http-proxy"]
    spec = front.hub_spec(p, deploy.service_spec(p, hub_image="hubops-hub:x", secret_refs=[], config_refs=[]))
    assert not (spec["endpoint_spec"].get("Ports") or [])  # the front publishes hub.https_port
    test = " ".join(spec["task_template"]["ContainerSpec"]["Healthcheck"]["Test"])
    assert f"http://127.0.0.1:{hubconfig.PROXY_PORT}/hub/health" in test and "https://" not in test
    # Without the front, nothing changes.
    (tmp_path / "off").mkdir()
    q = _params(tmp_path / "off", extra="")
    assert "tls-cert" in hubconfig.secret_roles(q)
    plain = deploy.service_spec(q, hub_image="hubops-hub:x", secret_refs=[], config_refs=[])
    assert front.hub_spec(q, plain) is plain and plain["endpoint_spec"]["Ports"][0]["PublishedPort"] == 18443


def test_front_and_agent_specs(tmp_path):
    p = _params(tmp_path)
    f = front.front_spec(p, image="hubops-front:x", config_ref={"ConfigName": "c"})
    port = f["endpoint_spec"]["Ports"][0]
    assert (port["PublishedPort"], port["TargetPort"], port["PublishMode"]) == (18443, front.FRONT_PORT, "host")
    assert f["task_template"]["Placement"]["Constraints"] == ["node.labels.hubops.fronttest.hub==true"]
    a = front.agent_spec(p, image="hubops-front:x", secret_refs=[])
    assert a["mode"].mode == "global" and "Ports" not in (a.get("endpoint_spec") or {})
    vol = [m for m in a["task_template"]["ContainerSpec"]["Mounts"] if m["Target"] == front.RUN_DIR][0]
    assert vol["VolumeOptions"]["DriverConfig"]["Options"]["type"] == "tmpfs"  # the key never on disk
    assert f["task_template"]["ContainerSpec"]["Mounts"][0]["Source"] == vol["Source"]


@pytest.mark.parametrize("case", ["expired", "not-yet-valid", "mismatched-key", "other-name"])
def test_a_certificate_the_front_must_not_serve_is_refused_before_the_swap(tmp_path, case):
    p = _params(tmp_path)
    good_cert, good_key = _cert("localhost", days_from=-1, days_to=30)
    cert, key = {
        "expired": _cert("localhost", days_from=-30, days_to=-1),
        "not-yet-valid": _cert("localhost", days_from=2, days_to=30),
        "mismatched-key": (good_cert, _cert("localhost", days_from=-1, days_to=30)[1]),
        "other-name": _cert("elsewhere.test", days_from=-1, days_to=30),
    }[case]
    words = {"expired": "expired", "not-yet-valid": "not valid before", "mismatched-key": "does not match",
             "other-name": "does not cover"}[case]
    with pytest.raises(TLSError, match=words) as e:
        front.check_pair(cert, key, p, source="renewed certificate")
    assert "renewed certificate" in str(e.value)
    assert front.check_pair(good_cert, good_key, p, source="x").fingerprint_sha256 == certs.cert_info(good_cert).fingerprint_sha256
    # The agent in the front's image refuses the same pairs (defence in depth: a secret made by hand).
    agent = _agent()
    with pytest.raises(ValueError):
        agent.check(cert, key, ["localhost"])
    sha1, sha256 = agent.check(good_cert, good_key, ["localhost"])
    assert sha256 == certs.cert_info(good_cert).fingerprint_sha256 and len(sha1) == 40


def test_front_parameter_is_a_boolean(tmp_path):
    assert _params(tmp_path).front.enabled is True
    (tmp_path / "d").mkdir()
    assert _params(tmp_path / "d", extra="").front.enabled is False
