"""A TLS failure is told apart: the hub's certificate refused (stop and say so) or the connection
closed during the handshake, as a restarting hub behind the engine's published port does (wait).
Real TLS servers on loopback: one with a certificate the client does not trust, one that accepts
and closes."""
from __future__ import annotations

import socket
import ssl
import threading

import pytest
import requests

from hubops.core import certs
from hubops.hub.running import certificate_rejected


def _serve(tmp_path, handshake: bool):
    ca, ca_key = certs.make_ca("untrusted test CA")
    cert, key = certs.issue_server_cert(ca, ca_key, ["localhost", "127.0.0.1"])
    (tmp_path / "cert.pem").write_bytes(cert)
    (tmp_path / "key.pem").write_bytes(key)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(5)

    def loop():
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            if handshake:
                try:
                    ctx.wrap_socket(conn, server_side=True).close()
                except (ssl.SSLError, OSError):
                    conn.close()
            else:
                conn.close()  # what the engine's port does while the hub restarts

    threading.Thread(target=loop, daemon=True).start()
    return sock, f"https://127.0.0.1:{sock.getsockname()[1]}"


@pytest.mark.parametrize("handshake, rejected", [(True, True), (False, False)])
def test_a_refused_certificate_is_told_from_a_closed_connection(tmp_path, handshake, rejected):
    sock, url = _serve(tmp_path, handshake)
    s = requests.Session()
    s.trust_env = False
    try:
        with pytest.raises(requests.exceptions.SSLError) as e:
            s.get(url, verify=True, timeout=5)  # the system roots: the test CA is not among them
        assert certificate_rejected(e.value) is rejected, str(e.value)
    finally:
        sock.close()
