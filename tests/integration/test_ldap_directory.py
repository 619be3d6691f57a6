"""auth.mode ldap: the directory checked before anything changes, against a real slapd started
here (StartTLS and LDAPS from a test CA, binds refused without TLS): a good directory passes;
an unverifiable certificate, a refused bind, a DN not in the directory and a server that does
not answer are each refused with the key and what to do. ldap:// without StartTLS and an inline
bind password are refused when the parameters are read."""
from __future__ import annotations

import socket
import textwrap
from pathlib import Path

import pytest

from hubops.core import certs as tls
from hubops.stages import auth_ldap as ldap_dir
from hubops.core.errors import IdentityProviderError, ParameterError
from hubops.core.params import load_params
from tests.helpers import free_port
from tests.peers_ldap import SERVICE_DN, Slapd, group_dn

PORT = free_port()
TLS_PORT = free_port(avoid=(PORT,))


@pytest.fixture(scope="module")
def slapd(tmp_path_factory):
    s = Slapd(tmp_path_factory.mktemp("slapd"), "127.0.0.1", PORT, TLS_PORT, users={"alice": "alice-pw-1", "bob": "bob-pw-2"},
              groups={"students": ["alice"], "staff": ["alice"], "ta": ["bob", "alice"]}, service_password="svc-pw-" + "7" * 12,
              root_password="root-pw-" + "9" * 12).start()
    yield s
    s.stop()


def params(tmp: Path, slapd: Slapd, *, url: str, starttls: bool, ca: Path | None, password: str | None = None,
           groups: tuple[str, ...] = ("students",), inline: bool = False) -> Path:
    (tmp / "users").write_text("ann admin\n")
    (tmp / "bind-pw").write_text((password or slapd.service_password) + "\n")
    f = tmp / "p.yaml"
    secret = "just-written-here" if inline else "{file: bind-pw}"
    f.write_text(textwrap.dedent(f"""
        deployment: lgldapchk
        hosts: {{managers: [{{name: m, url: "unix:///var/run/docker.sock", advertise_addr: 127.0.0.1}}]}}
        auth:
          mode: ldap
          userlist: users
          ldap:
            url: {url}
            starttls: {str(starttls).lower()}
            bind_dn: "{SERVICE_DN}"
            bind_password: {secret}
            user_search_base: "ou=people,dc=hubops,dc=test"
            allowed_groups: {[group_dn(g) for g in groups]!r}
    """) + (f"    ca_bundle: {ca}\n" if ca else ""))
    return f


@pytest.mark.parametrize("mode", ["starttls", "ldaps"])
def test_good_directory(mode, slapd, tmp_path):
    url, st = (slapd.url, True) if mode == "starttls" else (slapd.ldaps_url, False)
    binds = slapd.binds()
    facts = ldap_dir.check_directory(load_params(params(tmp_path, slapd, url=url, starttls=st, ca=slapd.ca)))
    assert facts["tls_version"] and facts["tls_version"].startswith("TLSv1."), facts
    assert slapd.binds() == binds + 1


def test_bad_directories_are_refused(slapd, tmp_path):
    other_ca, _ = tls.make_ca("some other CA")
    (tmp_path / "other-ca.pem").write_bytes(other_ca)
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    closed = free.getsockname()[1]
    free.close()
    cases = [
        (dict(url=slapd.url, starttls=True, ca=tmp_path / "other-ca.pem"),
         rf"auth.ldap.url: TLS with ldap://127.0.0.1:{PORT} \(StartTLS\) failed: the server's certificate does not "
         r"verify against the CA in auth.ldap.ca_bundle"),
        (dict(url=slapd.ldaps_url, starttls=False, ca=None),
         rf"auth.ldap.url: TLS with ldaps://127.0.0.1:{TLS_PORT} failed: the server's certificate does not verify against the system CAs"),
        (dict(url=slapd.ldaps_url, starttls=False, ca=slapd.ca, password="wrong-password"),
         r"auth.ldap.bind_dn: the server refused the bind of 'cn=jupyterhub,ou=services,dc=hubops,dc=test'"),
        (dict(url=slapd.url, starttls=True, ca=slapd.ca, groups=("students", "studnets")),
         r"auth.ldap.allowed_groups: 'cn=studnets,ou=groups,dc=hubops,dc=test' is not in the directory"),
        (dict(url=f"ldaps://127.0.0.1:{closed}", starttls=False, ca=slapd.ca),
         rf"auth.ldap.url: ldaps://127.0.0.1:{closed} does not answer"),
    ]
    for kw, match in cases:
        f = params(tmp_path, slapd, **kw)
        with pytest.raises(IdentityProviderError, match=match) as e:
            ldap_dir.check_directory(load_params(f))
        assert str(f) in str(e.value)
        assert "wrong-password" not in str(e.value) and slapd.service_password not in str(e.value)


def test_plain_ldap_and_inline_password_are_refused(slapd, tmp_path):
    with pytest.raises(ParameterError, match=r"auth.ldap: .*ldap:// without StartTLS would send users' passwords"):
        load_params(params(tmp_path, slapd, url=slapd.url, starttls=False, ca=slapd.ca))
    with pytest.raises(ParameterError, match=r"auth.ldap.bind_password: a secret written inline is refused"):
        load_params(params(tmp_path, slapd, url=slapd.url, starttls=True, ca=slapd.ca, inline=True))


def test_group_members_are_read_as_the_hub_matches_them(slapd, tmp_path):
    """removal.py asks the directory who is in the allowed groups now (80-deploy takes out the others):
    members by DN, named by their uid; someone taken out of a group is no longer listed."""
    p = load_params(params(tmp_path, slapd, url=slapd.url, starttls=True, ca=slapd.ca, groups=("students", "ta")))
    assert ldap_dir.group_members(p) == {"alice", "bob"}
    slapd.remove_member("ta", "bob")  # (groupOfNames keeps at least one member: alice stays in it)
    assert ldap_dir.group_members(p) == {"alice"}
