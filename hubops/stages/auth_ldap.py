"""LDAP: the directory checked before anything changes (auth.mode ldap).

`check_directory` connects as the hub will (ldaps://, or ldap:// with StartTLS; the server's
certificate verified against auth.ldap.ca_bundle or the system CAs), binds with the service account
(auth.ldap.bind_dn and its password), and reads user_search_base and each group DN named in the
parameters. It refuses a server that does not answer, a certificate that does not verify, a
refused bind, or a base or group that does not exist, naming the key and what to do.
"""
from __future__ import annotations

import ssl

from hubops.core.errors import IdentityProviderError
from hubops.core.params import Loaded


def tls_kwargs(ca_file: str | None) -> dict:
    """ldap3.Tls arguments: verify the server's certificate (and its name), against ca_file if given."""
    kw: dict = {"validate": ssl.CERT_REQUIRED, "version": ssl.PROTOCOL_TLS_CLIENT}
    if ca_file:
        kw["ca_certs_file"] = ca_file
    return kw


def _connect(p: Loaded, *, timeout: float):
    """A bound ldap3 connection as the hub makes it (TLS verified, the service account); raises
    IdentityProviderError naming the key and what to do."""
    import ldap3
    from ldap3.core import exceptions as lx

    lp = p.auth.ldap
    where = f"{p.source}: auth.ldap"
    ca = str(p.path(lp.ca_bundle)) if lp.ca_bundle is not None else None
    trust = f"the CA in auth.ldap.ca_bundle ({ca})" if ca else "the system CAs"
    password = p.resolve_secret(lp.bind_password, "auth.ldap.bind_password")
    tls = ldap3.Tls(**tls_kwargs(ca))
    server = ldap3.Server(lp.host, port=lp.port, use_ssl=lp.url.startswith("ldaps://"), tls=tls,
                          connect_timeout=timeout)
    auto_bind = ldap3.AUTO_BIND_TLS_BEFORE_BIND if lp.starttls else ldap3.AUTO_BIND_NO_TLS
    try:
        return ldap3.Connection(server, user=lp.bind_dn, password=password, auto_bind=auto_bind,
                                receive_timeout=timeout, raise_exceptions=False)
    except lx.LDAPBindError as e:
        raise IdentityProviderError(
            f"{where}.bind_dn: the server refused the bind of {lp.bind_dn!r} ({e}); check bind_dn and "
            "the password auth.ldap.bind_password refers to") from None
    except (lx.LDAPSocketOpenError, lx.LDAPStartTLSError, lx.LDAPSocketReceiveError, ssl.SSLError) as e:
        text = str(e)
        if any(w in text.lower() for w in ("certificate", "ssl", "tls", "handshake")):
            raise IdentityProviderError(
                f"{where}.url: TLS with {lp.url}{' (StartTLS)' if lp.starttls else ''} failed: the server's "
                f"certificate does not verify against {trust}, or the server offers no TLS ({text[:300]}); "
                "give the CA that signs it in auth.ldap.ca_bundle, and check that the URL's host is a name "
                "the certificate holds") from None
        raise IdentityProviderError(
            f"{where}.url: {lp.url} does not answer ({text[:300]}); check the URL and that this machine and "
            "the hub's node reach the server") from None
    except lx.LDAPException as e:
        raise IdentityProviderError(f"{where}.url: {lp.url}: {e.__class__.__name__}: {str(e)[:300]}") from None


def check_directory(p: Loaded, *, timeout: float = 10) -> dict:
    """Connect, bind and look up the search base and the groups. Returns facts for the record."""
    import ldap3

    lp = p.auth.ldap
    where = f"{p.source}: auth.ldap"
    ca = str(p.path(lp.ca_bundle)) if lp.ca_bundle is not None else None
    conn = _connect(p, timeout=timeout)
    try:
        missing = []
        for key, dn in [("user_search_base", lp.user_search_base),
                        *[("allowed_groups", g) for g in lp.allowed_groups],
                        *[("admin_groups", g) for g in lp.admin_groups]]:
            if not conn.search(dn, "(objectClass=*)", search_scope=ldap3.BASE, attributes=[]):
                missing.append(f"{where}.{key}: {dn!r} is not in the directory (or {lp.bind_dn} may not read it)")
        if missing:
            raise IdentityProviderError("; ".join(missing) + "; check the DN's spelling against the directory")
        return {"url": lp.url, "starttls": lp.starttls, "tls_verified_with": ca or "system CAs",
                "bind_dn": lp.bind_dn, "tls_version": _tls_version(conn)}
    finally:
        conn.unbind()


def _tls_version(conn) -> str | None:
    try:
        return conn.socket.version()
    except Exception:  # not every ldap3 strategy exposes its socket
        return None


def group_members(p: Loaded, *, timeout: float = 10) -> set[str]:
    """The hub names of everyone the directory lists now in auth.ldap.allowed_groups and admin_groups:
    the groups' `member` and `uniqueMember` (DNs, read for their auth.ldap.user_attribute) and
    `memberUid` (names), as ldapauthenticator's group check matches them. Lower-cased, as JupyterHub
    names users. Raises IdentityProviderError when the directory cannot be read."""
    import ldap3
    from ldap3.utils.dn import parse_dn

    lp = p.auth.ldap
    attr = lp.user_attribute
    conn = _connect(p, timeout=timeout)
    try:
        names: set[str] = set()
        dns: set[str] = set()
        for group in sorted(set(lp.allowed_groups) | set(lp.admin_groups)):
            if not conn.search(group, "(objectClass=*)", search_scope=ldap3.BASE,
                               attributes=["member", "uniqueMember", "memberUid"]):
                raise IdentityProviderError(f"{p.source}: auth.ldap: group {group!r} could not be read "
                                            f"({conn.result.get('description')}); nobody was removed")
            entry = conn.entries[0].entry_attributes_as_dict
            names |= {str(v) for v in entry.get("memberUid", [])}
            dns |= {str(v) for v in [*entry.get("member", []), *entry.get("uniqueMember", [])]}
        for dn in sorted(dns):
            first = parse_dn(dn)[0] if dn else None
            if first and first[0].lower() == attr.lower():  # uid=alice,ou=people,...: the name is in the DN
                names.add(first[1])
            elif conn.search(dn, "(objectClass=*)", search_scope=ldap3.BASE, attributes=[attr]) and conn.entries:
                names |= {str(v) for v in conn.entries[0].entry_attributes_as_dict.get(attr, [])}
        return {n.lower() for n in names}
    finally:
        conn.unbind()
