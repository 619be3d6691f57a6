"""The authenticator part of the hub's configuration for auth.mode oidc, groups and roles,
loaded as JupyterHub loads it (a traitlets Config)."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from hubops.hub import config as hubconfig
from hubops.core.errors import ParameterError
from hubops.stages.auth_oidc import Discovery
from hubops.core.params import load_params
from tests.unit.test_hub_config import load

DISCOVERY = Discovery(issuer="https://login.example.org/realms/hub",
                      authorization_endpoint="https://login.example.org/realms/hub/auth",
                      token_endpoint="https://login.example.org/realms/hub/token",
                      userinfo_endpoint="https://login.example.org/realms/hub/me")


def oidc_params(tmp_path: Path, monkeypatch, *, oidc: str, users: str = "opadmin admin\ncarol @students\n",
                roles: str = "") -> object:
    (tmp_path / "users").write_text(users)
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    f = tmp_path / "p.yaml"
    f.write_text(textwrap.dedent("""
        deployment: uni
        hosts:
          managers: [{name: m, url: "unix:///var/run/docker.sock", advertise_addr: 127.0.0.1}]
        hub: {public_name: hub.example.org}
        auth:
          mode: oidc
          userlist: users
          oidc:
            issuer: https://login.example.org/realms/hub/
            client_id: jupyterhub
            client_secret: {env: HUBOPS_T_OIDC}
    """) + textwrap.indent(textwrap.dedent(oidc), " " * 4) + textwrap.indent(textwrap.dedent(roles), "  "))
    monkeypatch.setenv("HUBOPS_T_OIDC", "the-client-secret")
    return load_params(f)


def secrets_dir(tmp_path: Path) -> Path:
    d = tmp_path / "secrets"
    d.mkdir()
    for name in ("hubops-cookie-secret", "hubops-crypt-key"):
        (d / name).write_text("ab" * 32)
    for name in ("hubops-proxy-token", "hubops-api-token", "hubops-oidc-client-secret"):
        (d / name).write_text(f"value-of-{name}\n")
    return d


def test_oidc_with_groups_and_roles(tmp_path, monkeypatch):
    p = oidc_params(tmp_path, monkeypatch, oidc="""
        allowed_groups: [students, staff]
        admin_groups: [hubadmins]
        scopes: [openid, profile, groups]
        ca_bundle: ca.pem
    """, roles="""
        roles:
          - name: teaching
            groups: [staff]
            scopes: ["access:servers!group=students", "admin:servers!group=students"]
    """)
    assert p.auth.oidc.issuer == "https://login.example.org/realms/hub"  # trailing slash dropped
    assert p.groups == {"students": ["carol"]}
    src = hubconfig.render(p, singleuser_image="su:1", discovery=DISCOVERY)
    assert "the-client-secret" not in src
    ul = tmp_path / "userlist"
    ul.write_text(p.userlist_text())
    assert ul.read_text() == "carol @students\nopadmin admin\n"
    c = load(src, secrets_dir(tmp_path), ul, monkeypatch)
    g = c.GenericOAuthenticator
    assert c.JupyterHub.authenticator_class == "generic-oauth"
    assert g.client_secret == "value-of-hubops-oidc-client-secret"
    assert (g.authorize_url, g.token_url, g.userdata_url) == (
        DISCOVERY.authorization_endpoint, DISCOVERY.token_endpoint, DISCOVERY.userinfo_endpoint)
    assert g.oauth_callback_url == "https://hub.example.org/hub/oauth_callback"
    assert g.scope == ["openid", "profile", "groups"] and g.username_claim == "preferred_username"
    assert g.manage_groups is True and g.auth_state_groups_key == "oauth_user.groups"
    # manage_groups comes before the group settings OAuthenticator refuses without it
    keys = list(g.keys())
    assert keys.index("manage_groups") < keys.index("allowed_groups")
    assert g.allowed_groups == {"students", "staff"} and g.admin_groups == {"hubadmins"}
    assert g.http_request_kwargs == {"ca_certs": "/srv/jupyterhub/oidc-ca.pem"}
    assert g.allow_all is False and g.allow_existing_users is False and g.enable_auth_state is False
    assert c.Authenticator.allowed_users == {"opadmin", "carol"} and c.Authenticator.admin_users == {"opadmin"}
    role = next(r for r in c.JupyterHub.load_roles if r["name"] == "teaching")
    assert role["groups"] == ["staff"] and role["scopes"] == ["access:servers!group=students", "admin:servers!group=students"]
    assert "load_groups" not in c.JupyterHub  # refused by JupyterHub while the authenticator manages groups
    # At login: the provider's groups and the userlist's, together.
    hook = c.Authenticator.post_auth_hook
    assert hook(None, None, {"name": "carol", "groups": ["staff"]})["groups"] == ["staff", "students"]
    assert hook(None, None, {"name": "zed", "groups": None})["groups"] == []
    assert hubconfig.config_roles(p) == ["hub-config", "userlist", "oidc-ca"]
    assert "oidc-client-secret" in hubconfig.secret_roles(p)


def test_oidc_without_groups_claim(tmp_path, monkeypatch):
    p = oidc_params(tmp_path, monkeypatch, oidc="groups_claim: null\n", users="opadmin admin\nann\n")
    ul = tmp_path / "userlist"
    ul.write_text(p.userlist_text())
    c = load(hubconfig.render(p, singleuser_image="su:1", discovery=DISCOVERY), secrets_dir(tmp_path), ul, monkeypatch)
    assert c.GenericOAuthenticator.manage_groups is False
    assert "auth_state_groups_key" not in c.GenericOAuthenticator and "post_auth_hook" not in c.Authenticator
    assert "http_request_kwargs" not in c.GenericOAuthenticator
    assert hubconfig.config_roles(p) == ["hub-config", "userlist"]
    with pytest.raises(ValueError, match="discovery"):
        hubconfig.render(p, singleuser_image="su:1")


def test_shared_password_with_userlist_groups_and_roles(tmp_path, monkeypatch):
    from tests.helpers import make_params

    f = make_params(tmp_path, "grp", port=18699, subnet="10.166.99.0/24",
                    users="operator admin\nprof @staff\nalice @students\nbob @students # a comment\n",
                    extra="""
        """)
    text = f.read_text().replace("auth: {mode: shared-password, userlist: userlist}", textwrap.dedent("""\
        auth:
          mode: shared-password
          userlist: userlist
          roles:
            - {name: teaching, groups: [staff], scopes: ["access:servers!group=students"]}"""))
    f.write_text(text)
    p = load_params(f)
    assert p.groups == {"staff": ["prof"], "students": ["alice", "bob"]}
    ul = tmp_path / "userlist-in-hub"
    ul.write_text(p.userlist_text())
    d = secrets_dir(tmp_path)
    for name in ("hubops-user-password", "hubops-admin-password"):
        (d / name).write_text("pw")
    c = load(hubconfig.render(p, singleuser_image="su:1"), d, ul, monkeypatch)
    assert c.Authenticator.manage_groups is True
    assert c.Authenticator.allowed_users == {"operator", "prof", "alice", "bob"}
    hook = c.Authenticator.post_auth_hook
    assert hook(None, None, {"name": "bob"})["groups"] == ["students"]
    assert hook(None, None, {"name": "operator"})["groups"] == []


def test_a_role_naming_a_group_nobody_is_in_is_refused(tmp_path):
    from tests.helpers import make_params

    f = make_params(tmp_path, "grp", port=18699, subnet="10.166.99.0/24", users="operator admin\nalice @students\n")
    f.write_text(f.read_text().replace("auth: {mode: shared-password, userlist: userlist}",
                                       "auth: {mode: shared-password, userlist: userlist, roles: "
                                       "[{name: teaching, groups: [staf], scopes: [access:servers]}]}"))
    with pytest.raises(ParameterError, match=r"auth.roles\[0\].groups: group 'staf' has no member in the userlist"):
        load_params(f)


def test_admin_groups_make_a_userlist_admin_optional(tmp_path, monkeypatch):
    p = oidc_params(tmp_path, monkeypatch, oidc="admin_groups: [hubadmins]\n", users="ann\n")
    assert p.admins == [] and p.allowed == ["ann"]
    with pytest.raises(ParameterError, match="has no admin"):
        oidc_params(tmp_path, monkeypatch, oidc="allowed_groups: [x]\n", users="ann\n")


def test_ldap_config(tmp_path, monkeypatch):
    (tmp_path / "users").write_text("ann @staff\n")
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    f = tmp_path / "p.yaml"
    f.write_text(textwrap.dedent("""
        deployment: uni
        hosts:
          managers: [{name: m, url: "unix:///var/run/docker.sock", advertise_addr: 127.0.0.1}]
        hub: {public_name: hub.example.org}
        auth:
          mode: ldap
          userlist: users
          ldap:
            url: ldap://ldap.example.org:1389
            starttls: true
            ca_bundle: ca.pem
            bind_dn: cn=jupyterhub,ou=services,dc=example,dc=org
            bind_password: {env: HUBOPS_T_LDAP}
            user_search_base: ou=people,dc=example,dc=org
            allowed_groups: ["cn=students,ou=groups,dc=example,dc=org"]
            admin_groups: ["cn=hubadmins,ou=groups,dc=example,dc=org"]
          roles:
            - {name: teaching, groups: [staff], scopes: ["access:servers!group=students"]}
    """))
    monkeypatch.setenv("HUBOPS_T_LDAP", "the-bind-password")
    p = load_params(f)
    assert p.admins == []  # admins come from the admin group
    src = hubconfig.render(p, singleuser_image="su:1")
    assert "the-bind-password" not in src
    ul = tmp_path / "userlist"
    ul.write_text(p.userlist_text())
    d = secrets_dir(tmp_path)
    (d / "hubops-ldap-bind-password").write_text("value-of-bind-password\n")
    import sys
    import types

    from traitlets.config import LoggingConfigurable

    class LDAPAuthenticator(LoggingConfigurable):  # the real one is in the hub image (ldapauthenticator 2.0.2)
        pass

    monkeypatch.setitem(sys.modules, "ldapauthenticator", types.SimpleNamespace(LDAPAuthenticator=LDAPAuthenticator))
    c = load(src, d, ul, monkeypatch)
    lc = c.LDAPAuthenticator
    assert c.JupyterHub.authenticator_class.__name__ == "HubopsLDAPAuthenticator"
    assert (lc.server_address, lc.server_port, lc.tls_strategy) == ("ldap.example.org", 1389, "before_bind")
    assert lc.tls_kwargs["ca_certs_file"] == "/srv/jupyterhub/ldap-ca.pem"
    import ssl

    assert lc.tls_kwargs["validate"] == ssl.CERT_REQUIRED
    assert lc.lookup_dn is True and lc.lookup_dn_search_password == "value-of-bind-password"
    assert lc.allowed_groups == ["cn=hubadmins,ou=groups,dc=example,dc=org", "cn=students,ou=groups,dc=example,dc=org"]
    assert c.Authenticator.manage_groups is True
    assert hubconfig.config_roles(p) == ["hub-config", "userlist", "ldap-ca"]
    assert "ldap-bind-password" in hubconfig.secret_roles(p)


def test_an_unquoted_dn_in_a_yaml_list_is_refused(tmp_path, monkeypatch):
    (tmp_path / "users").write_text("ann admin\n")
    f = tmp_path / "p.yaml"
    f.write_text(textwrap.dedent("""
        deployment: uni
        hosts:
          managers: [{name: m, url: "unix:///var/run/docker.sock", advertise_addr: 127.0.0.1}]
        auth:
          mode: ldap
          userlist: users
          ldap:
            url: ldaps://ldap.example.org
            bind_dn: cn=jupyterhub,ou=services,dc=example,dc=org
            bind_password: {env: HUBOPS_T_LDAP}
            user_search_base: ou=people,dc=example,dc=org
            allowed_groups: [cn=students,ou=groups,dc=example,dc=org]
    """))
    with pytest.raises(ParameterError, match=r"auth.ldap.allowed_groups: 'cn=students' is a single RDN.*put each DN in quotes"):
        load_params(f)


def test_native_config(tmp_path, monkeypatch):
    """The subclass is loaded with a stand-in for nativeauthenticator's classes (the real one is in the
    hub image and exercised by tests/e2e/test_native_login.py): the admins are created and approved."""
    from tests.helpers import make_params
    import sys
    import types

    from traitlets import Bool
    from traitlets.config import LoggingConfigurable

    f = make_params(tmp_path, "nat", port=18699, subnet="10.166.99.0/24", users="operator admin\nalice\n")
    f.write_text(f.read_text().replace("auth: {mode: shared-password, userlist: userlist}",
                                       "auth: {mode: native, userlist: userlist, native: {minimum_password_length: 14}}"))
    p = load_params(f)
    src = hubconfig.render(p, singleuser_image="su:1")
    ul = tmp_path / "userlist-in-hub"
    ul.write_text(p.userlist_text())
    d = secrets_dir(tmp_path)
    (d / "hubops-admin-password").write_text("generated-admin-password-0123456789\n")
    created = {}

    class Info:
        def __init__(self, name):
            self.username, self.is_authorized = name, False

    class NativeAuthenticator(LoggingConfigurable):
        enable_signup = Bool(True, config=True)
        admin_users = {"operator"}
        db = types.SimpleNamespace(commit=lambda: None)

        def get_user(self, name):
            return created.get(name)

        def create_user(self, name, password):
            assert self.enable_signup and password == "generated-admin-password-0123456789"
            created[name] = Info(name)
            return created[name]

    class LoginHandler:  # as on JupyterHub 6: no `statsd` (its base handler dropped it)
        pass

    handlers = types.SimpleNamespace(LoginHandler=LoginHandler)
    monkeypatch.setitem(sys.modules, "nativeauthenticator", types.SimpleNamespace(NativeAuthenticator=NativeAuthenticator,
                                                                                  handlers=handlers))
    monkeypatch.setitem(sys.modules, "nativeauthenticator.handlers", handlers)
    monkeypatch.setitem(sys.modules, "nativeauthenticator.orm", types.SimpleNamespace(
        UserInfo=types.SimpleNamespace(all_users=lambda db: list(created.values()))))
    c = load(src, d, ul, monkeypatch)
    cls = c.JupyterHub.authenticator_class
    assert cls.__name__ == "HubopsNativeAuthenticator"
    assert c.NativeAuthenticator.open_signup is False and c.NativeAuthenticator.minimum_password_length == 14
    assert c.Authenticator.allowed_users == {"operator", "alice"} and c.Authenticator.admin_users == {"operator"}
    a = cls(enable_signup=False)
    assert created["operator"].is_authorized and a.enable_signup is False  # restored
    assert a.get_authed_users() == {"operator"}  # alice, listed, is not approved in advance
    # NativeAuthenticator's login times itself with the handler's statsd, which JupyterHub 6 removed:
    # the config gives its LoginHandler one that does nothing.
    LoginHandler.statsd.timer("login.authenticate").start().stop(send=False)
    assert hubconfig.secret_roles(p)[-1] == "admin-password"
    assert "generated-admin-password" not in src
