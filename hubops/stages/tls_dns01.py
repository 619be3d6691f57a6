"""DNS-01 for 40-tls and renew-tls: the ACME challenge answered by a TXT record published with
RFC 2136 dynamic updates signed by a TSIG key (BIND, PowerDNS, Knot and many providers accept
them), for hubs whose port 80 cannot be opened to the ACME server.

What changes where, for the length of one validation only: in the zone that holds the hub's
name, one TXT record ``_acme-challenge.NAME`` per certificate name, added through the server in
``tls.acme.dns.server`` and removed after validation, also when it fails (the removal is checked
by asking the server again). Nothing changes on the cluster and no port is opened.

Before the ACME server is asked to validate, the record must be served by the server hubops
updated (``tls.acme.dns.propagation_timeout``); a server that refuses the update names the
cause (TSIG key unknown or wrong, update not allowed for the key, zone not served there).
Another provider (a cloud DNS API) is another ChallengeSolver with the same `answering` contract.
"""
from __future__ import annotations

import base64
import binascii
import ipaddress
import logging
import socket
import time
from contextlib import contextmanager
from typing import Iterator

from hubops.core.errors import ParameterError, TLSError
from hubops.core.params import Loaded
from hubops.core.result import Result

log = logging.getLogger("hubops")

# The TSIG algorithms RFC 8945 recommends (and BIND's tsig-keygen offers).
ALGORITHMS = ("hmac-sha256", "hmac-sha384", "hmac-sha512", "hmac-sha224", "hmac-sha1")


def _server(p: Loaded) -> tuple[str, int]:
    """(address, port) of the server that takes the updates."""
    host, port = p.tls.acme.dns.server, 53
    if host.startswith("["):  # [v6]:port
        h, _, rest = host[1:].partition("]")
        host, port = h, int(rest[1:]) if rest.startswith(":") else 53
    elif host.count(":") == 1:
        host, port_s = host.split(":")
        port = int(port_s)
    try:
        return str(ipaddress.ip_address(host)), port
    except ValueError:
        pass
    try:
        return socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0][4][0], port
    except socket.gaierror as e:
        raise TLSError(f"{p.source}: tls.acme.dns.server: {host} does not resolve ({e.strerror}); give the address "
                       "of the DNS server that accepts dynamic updates for the hub's zone") from None


def _keyring(p: Loaded):
    import dns.name
    import dns.tsig
    import dns.tsigkeyring

    d = p.tls.acme.dns
    secret = p.resolve_secret(d.tsig_secret, "tls.acme.dns.tsig_secret")
    try:
        base64.b64decode(secret, validate=True)
    except (binascii.Error, ValueError):
        # never echo the value: it is a secret even when it is malformed
        raise ParameterError(f"{p.source}: tls.acme.dns.tsig_secret ({d.tsig_secret.describe()}): not base64; give the "
                             "key's secret as tsig-keygen prints it (the `secret \"...\";` line)") from None
    ring = dns.tsigkeyring.from_text({d.tsig_key_name: (d.tsig_algorithm, secret)})
    return ring, dns.name.from_text(d.tsig_key_name)


def _send(p: Loaded, msg, what: str) -> None:
    import dns.exception
    import dns.query
    import dns.rcode
    import dns.tsig

    addr, port = _server(p)
    try:
        resp = dns.query.tcp(msg, addr, port=port, timeout=10)
    except dns.tsig.PeerBadKey:
        raise TLSError(f"{p.tls.acme.dns.server} does not know the TSIG key {p.tls.acme.dns.tsig_key_name!r} "
                       f"({what}): check tls.acme.dns.tsig_key_name and the server's key list") from None
    except dns.tsig.PeerBadSignature:
        raise TLSError(f"{p.tls.acme.dns.server} rejected the signature of {what}: tls.acme.dns.tsig_secret is not "
                       f"the secret of key {p.tls.acme.dns.tsig_key_name!r}, or the algorithm "
                       f"{p.tls.acme.dns.tsig_algorithm} differs") from None
    except (dns.exception.DNSException, OSError) as e:
        raise TLSError(f"DNS server {addr}:{port} (tls.acme.dns.server) did not take {what}: "
                       f"{e.__class__.__name__}: {e}") from None
    rcode = resp.rcode()
    if rcode != dns.rcode.NOERROR:
        why = {dns.rcode.REFUSED: "the server refuses updates from this key for this zone (its update-policy or "
                                  "allow-update)",
               dns.rcode.NOTAUTH: "the server is not authoritative for the zone, or the TSIG key is not accepted",
               dns.rcode.NOTZONE: "the name is not inside tls.acme.dns.zone"}.get(rcode, "see the server's log")
        raise TLSError(f"DNS server {addr}:{port} answered {dns.rcode.to_text(rcode)} to {what}: {why}")


def find_zone(p: Loaded, name: str) -> str:
    """The zone that holds `name`: tls.acme.dns.zone, else the closest enclosing zone whose SOA the
    update server answers for."""
    import dns.exception
    import dns.message
    import dns.name
    import dns.query
    import dns.rdatatype

    if p.tls.acme.dns.zone:
        zone = p.tls.acme.dns.zone.rstrip(".") + "."
        if not dns.name.from_text(name).is_subdomain(dns.name.from_text(zone)):
            raise ParameterError(f"{p.source}: tls.acme.dns.zone: {zone} does not contain {name}; give the zone "
                                 f"that holds {name} (or leave it out to find it)")
        return zone
    addr, port = _server(p)
    labels = dns.name.from_text(name)
    while len(labels) > 1:
        q = dns.message.make_query(labels, dns.rdatatype.SOA)
        try:
            resp = dns.query.udp(q, addr, port=port, timeout=5)
        except (dns.exception.DNSException, OSError) as e:
            raise TLSError(f"DNS server {addr}:{port} (tls.acme.dns.server) does not answer ({e.__class__.__name__}); "
                           "give the address of the server that accepts dynamic updates for the hub's zone") from None
        if any(rr.rdtype == dns.rdatatype.SOA and rr.name == labels for rr in resp.answer):
            return labels.to_text()
        labels = labels.parent()
    raise TLSError(f"DNS server {addr}:{port} serves no zone that holds {name}; set tls.acme.dns.zone, or point "
                   "tls.acme.dns.server at the zone's primary server")


def served(p: Loaded, fqdn: str) -> set[str]:
    """The TXT values the update server serves for `fqdn` now."""
    import dns.exception
    import dns.message
    import dns.query
    import dns.rdatatype

    addr, port = _server(p)
    q = dns.message.make_query(fqdn, dns.rdatatype.TXT)
    try:
        resp = dns.query.udp(q, addr, port=port, timeout=5)
    except (dns.exception.DNSException, OSError):
        return set()
    return {b"".join(rd.strings).decode() for rr in resp.answer if rr.rdtype == dns.rdatatype.TXT for rd in rr}


def _update(p: Loaded, zone: str, fqdn: str, value: str, *, add: bool) -> None:
    import dns.name
    import dns.update

    ring, keyname = _keyring(p)
    u = dns.update.UpdateMessage(zone, keyring=ring, keyname=keyname, keyalgorithm=p.tls.acme.dns.tsig_algorithm)
    rel = dns.name.from_text(fqdn).relativize(dns.name.from_text(zone))
    if add:
        u.add(rel, 60, "TXT", f'"{value}"')
    else:
        u.delete(rel, "TXT", f'"{value}"')
    _send(p, u, f"the update that {'adds' if add else 'removes'} TXT {fqdn}")


@contextmanager
def answering(p: Loaded, r: Result, challenges: list) -> Iterator[None]:
    """Each challenge's TXT record published while the block runs, removed after (also on failure)."""
    d = p.tls.acme.dns
    published: list[tuple[str, str, str]] = []
    try:
        for ch in challenges:
            name = ch.name[2:] if ch.name.startswith("*.") else ch.name  # a wildcard is validated at its base
            fqdn = f"_acme-challenge.{name.rstrip('.')}."
            zone = find_zone(p, fqdn)
            _update(p, zone, fqdn, ch.validation, add=True)
            published.append((zone, fqdn, ch.validation))
            r.change("create", f"TXT {fqdn}", f"DNS-01 answer, in zone {zone} at {d.server} (removed after validation)")
        deadline = time.monotonic() + d.propagation_timeout
        for zone, fqdn, value in published:
            while value not in served(p, fqdn):
                if time.monotonic() > deadline:
                    raise TLSError(f"DNS server {d.server} took the update but does not serve TXT {fqdn} within "
                                   f"{d.propagation_timeout} s (tls.acme.dns.propagation_timeout); is it the zone's "
                                   "primary, and does it answer for the zone?")
                time.sleep(0.5)
        log.info("DNS-01: %d TXT record(s) served by %s", len(published), d.server)
        yield
    finally:
        for zone, fqdn, value in published:
            try:
                _update(p, zone, fqdn, value, add=False)
                r.change("remove", f"TXT {fqdn}", "DNS-01 answer removed after validation")
            except TLSError as e:
                log.warning("DNS-01: could not remove TXT %s (%s); remove it by hand", fqdn, e)
                r.check(f"TXT {fqdn}", f"NOT REMOVED: {e}")
