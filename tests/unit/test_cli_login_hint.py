"""The summary after a deploy says how users log in, in the deployment's own login mode (it said
"with GitHub" for every mode but the shared password)."""
from __future__ import annotations

import textwrap

from hubops.cli.main import login_hint
from hubops.core.params import load_params


def params(tmp_path, monkeypatch, auth: str, users: str = "opadmin admin\ncarol\n"):
    (tmp_path / "users").write_text(users)
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    monkeypatch.setenv("HUBOPS_T_SECRET", "not-shown")
    f = tmp_path / "p.yaml"
    f.write_text(textwrap.dedent("""
        deployment: uni
        hosts:
          managers: [{name: m, url: "unix:///var/run/docker.sock", advertise_addr: 127.0.0.1}]
        hub: {public_name: hub.example.org}
    """) + textwrap.dedent(auth))
    return load_params(f)


def test_oidc_names_the_issuer_the_users_and_the_groups(tmp_path, monkeypatch):
    p = params(tmp_path, monkeypatch, """
        auth:
          mode: oidc
          userlist: users
          oidc:
            issuer: https://login.example.org/realms/hub
            client_id: jupyterhub
            client_secret: {env: HUBOPS_T_SECRET}
            allowed_groups: [students]
            admin_groups: [hubadmins]
    """)
    hint = login_hint(p)
    assert hint == ("with OpenID Connect at https://login.example.org/realms/hub, as one of carol, opadmin, "
                    "or a member of hubadmins, students")
    assert "GitHub" not in hint and "not-shown" not in hint


def test_ldap_names_the_server_and_the_groups(tmp_path, monkeypatch):
    p = params(tmp_path, monkeypatch, """
        auth:
          mode: ldap
          userlist: users
          ldap:
            url: ldaps://ldap.example.org
            ca_bundle: ca.pem
            bind_dn: cn=hub,dc=example,dc=org
            bind_password: {env: HUBOPS_T_SECRET}
            user_search_base: ou=people,dc=example,dc=org
            allowed_groups: ["cn=students,ou=groups,dc=example,dc=org"]
    """)
    assert login_hint(p) == "with LDAP at ldaps://ldap.example.org, as one of carol, opadmin, or a member of students"


def test_native_says_sign_up_and_approval(tmp_path, monkeypatch):
    p = params(tmp_path, monkeypatch, "auth: {mode: native, userlist: users}\n")
    assert login_hint(p) == ("with their own password; new users sign up at https://hub.example.org/hub/signup "
                             "and wait for an admin's approval (admins: opadmin)")


def test_github_as_before(tmp_path, monkeypatch):
    p = params(tmp_path, monkeypatch, """
        auth:
          mode: github
          userlist: users
          github: {client_id: abc, client_secret: {env: HUBOPS_T_SECRET}}
    """)
    assert login_hint(p) == "with GitHub, as one of carol, opadmin"
