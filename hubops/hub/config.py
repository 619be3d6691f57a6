"""The hub's jupyterhub_config.py, produced by one function from the parameters.

The file holds no secret: it reads them at start from the Swarm secrets mounted under
/run/secrets (fixed file names, whatever version of each secret the service points at), and
the userlist from a Swarm config. So a secret rotation never changes this file, and a
userlist change does not either: both change only the service's references.
"""
from __future__ import annotations

import json
from typing import Any

from hubops.core import api_token
from hubops.hub import hubdb
from hubops.core import labels as L
from hubops.core import monitoring
from hubops.core.params import Loaded
from hubops.hub import notices, spawn_limits

CONFIG_PATH = "/srv/jupyterhub/jupyterhub_config.py"
USERLIST_PATH = "/srv/jupyterhub/userlist"
DATA_DIR = "/srv/jupyterhub/data"
# Notices for users, shown on the hub's pages (day-2 runbooks write it: e.g. "your server moves").
ANNOUNCEMENTS = f"{DATA_DIR}/hubops-announcements.json"
HUB_PORT = 8081
# The hub's user in its container (images/hub/Dockerfile makes it): the hub is not root, and drives
# Docker only through the door (stages/apiproxy.py). Its data and secrets belong to this user.
HUB_UID = 990
HUB_GID = 990
PROXY_PORT = 8000
API_SERVICE = "hubops"
# hubops's spawner: a module of its own that the hub image installs (hubops/inhub/spawner.py).
SPAWNER_MODULE = "hubops.inhub.spawner"
# Filters credentials out of the URLs Tornado logs (hubops/inhub/logscrub.py, in the hub image too).
LOGSCRUB_MODULE = "hubops.inhub.logscrub"
SPAWNER_CLASS = "HubopsSpawner"

# Role -> file name under /run/secrets inside the hub container.
SECRET_FILES = {
    "tls-cert": "hubops-tls-cert",
    "tls-key": "hubops-tls-key",
    "cookie-secret": "hubops-cookie-secret",
    "proxy-token": "hubops-proxy-token",
    "crypt-key": "hubops-crypt-key",
    "api-token": "hubops-api-token",
    "user-password": "hubops-user-password",
    "admin-password": "hubops-admin-password",
    "github-client-secret": "hubops-github-client-secret",
    "oidc-client-secret": "hubops-oidc-client-secret",
    "ldap-bind-password": "hubops-ldap-bind-password",
    "db-password": "hubops-db-password",
    monitoring.TOKEN_ROLE: monitoring.SECRET_FILE,  # Prometheus's scrape token (monitoring.enabled)
}
# Role -> where the hub container finds a (public) Swarm config besides its jupyterhub_config.py.
CONFIG_FILES = {
    "hub-config": CONFIG_PATH,
    "userlist": USERLIST_PATH,
    "oidc-ca": "/srv/jupyterhub/oidc-ca.pem",
    "ldap-ca": "/srv/jupyterhub/ldap-ca.pem",
    "db-ca": "/srv/jupyterhub/db-ca.pem",
}

# What hubops's own service token may do: manage users and servers, reach them for checks.
# hubops's own role: api_token.scopes(p) (what hubops calls on the hub API, and no more).
# What the idle culler may do, and no more: find servers and their activity, stop idle ones.
# TLS 1.2 suites the proxy offers: AEAD only (GCM, ChaCha20-Poly1305) with forward secrecy, as
# Mozilla's "intermediate" profile minus DHE; no CBC, no SHA-1 MACs. TLS 1.3's suites are all
# AEAD; TLS 1.0 and 1.1 are off in Node's defaults. An ECDSA or RSA certificate both work.
TLS12_CIPHERS = ":".join([
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
])
# Browsers that saw the hub over HTTPS once refuse plain HTTP to it for a year (and no
# certificate-warning click-through): on the hub's pages and on users' servers.
HSTS = "max-age=31536000"

CULLER_SERVICE = "idle-culler"
CULLER_SCOPES = ["list:users", "read:users:activity", "read:servers", "delete:servers"]


def secret_roles(p: Loaded) -> list[str]:
    """The secret roles the hub service mounts for these parameters."""
    roles = ["tls-cert", "tls-key", "cookie-secret", "proxy-token", "crypt-key", "api-token"]
    if p.front.enabled:  # the TLS front (stages/front.py) holds the certificate; the proxy serves plain HTTP
        roles = roles[2:]
    if p.auth.mode == "shared-password":
        roles += ["user-password", "admin-password"]
    elif p.auth.mode == "oidc":
        roles += ["oidc-client-secret"]
    elif p.auth.mode == "ldap":
        roles += ["ldap-bind-password"]
    elif p.auth.mode == "native":
        roles += ["admin-password"]
    else:
        roles += ["github-client-secret"]
    if p.hub_db_postgres:  # storage.hub.mode postgres: the database password
        roles += ["db-password"]
    if monitoring.enabled(p):
        roles.append(monitoring.TOKEN_ROLE)
    return roles


def config_roles(p: Loaded) -> list[str]:
    """The Swarm configs the hub service mounts (at CONFIG_FILES[role]) for these parameters."""
    roles = ["hub-config", "userlist"]
    if p.auth.mode == "oidc" and p.auth.oidc.ca_bundle is not None:
        roles.append("oidc-ca")
    if p.auth.mode == "ldap" and p.auth.ldap.ca_bundle is not None:
        roles.append("ldap-ca")
    if p.hub_db_postgres and p.storage.hub.pg.external:
        roles.append("db-ca")
    return roles


def placement_constraints(p: Loaded) -> list[str]:
    """Where users' servers may run."""
    mode = p.spawner.placement
    if mode == "workers" or (mode == "auto" and p.hosts.workers):
        return ["node.role==worker"]
    return []


def render(p: Loaded, *, singleuser_image: str, discovery: Any = None, node_cpus: list[float] | None = None,
           profile_images: dict[str, str] | None = None) -> str:
    """The complete jupyterhub_config.py for these parameters. `discovery` (stages.auth_oidc.Discovery): the
    OpenID provider's endpoints, read by auth_oidc.discover; needed with auth.mode oidc. `node_cpus`: the
    CPUs of the nodes that run users' servers (spawn_limits.user_node_cpus), which size the spawn limit.
    `profile_images`: profile name -> the image 60-images built from its folder (stages.images.profile_refs)."""
    user_labels = L.labels(p.deployment, "user-server", role="user-server")
    lines = [
        f"# jupyterhub_config.py generated by hubops for deployment {p.deployment!r}.",
        "# Do not edit: change the parameter file and run 80-deploy again.",
        "import os",
        "from pathlib import Path",
        "",
        "c = get_config()  # noqa: F821",
        'SECRETS = Path(os.environ.get("HUBOPS_SECRETS_DIR", "/run/secrets"))',
        f'USERLIST = Path(os.environ.get("HUBOPS_USERLIST", {USERLIST_PATH!r}))',
        "",
        "def secret(name):",
        "    return (SECRETS / name).read_text().strip()",
        "",
        "# --- users: the userlist, one 'name', 'name admin', then '@group' words per line -------",
        "users = {}",
        "user_groups = {}",
        "for line in USERLIST.read_text().splitlines():",
        "    parts = line.split('#', 1)[0].split()",
        "    if parts:",
        "        users[parts[0]] = 'admin' in parts[1:]",
        "        user_groups[parts[0]] = sorted(w[1:] for w in parts[1:] if w.startswith('@'))",
        "c.Authenticator.allowed_users = set(users)",
        "c.Authenticator.admin_users = {u for u, admin in users.items() if admin}",
        # The userlist is the whole truth: a user taken off it cannot log in again, although
        # the hub's database still knows them (JupyterHub 5 would otherwise keep them allowed).
        "c.Authenticator.allow_existing_users = False",
        "",
        "# --- notices from hubops's day-2 runbooks, per user ('*' for everyone), on hub pages -----",
        "import json",
        f'ANNOUNCEMENTS = Path(os.environ.get("HUBOPS_ANNOUNCEMENTS", {ANNOUNCEMENTS!r}))',
        "import time",
        # storage.hub.mode postgres: read from the hub's database, which follows the hub (hubops/hub/notices.py).
        *(notices.config_lines(p, "ANNOUNCEMENTS") if notices.in_database(p) else []),
        "def announcement(user):",
        *(["    notes = read_notes()"] if notices.in_database(p) else [
        "    try:",
        "        notes = json.loads(ANNOUNCEMENTS.read_text())",
        "    except (OSError, ValueError):",
        "        return ''"]),
        "    def text(note):  # 'text', or {'text': ..., 'until': epoch} that expires",
        "        if isinstance(note, dict):",
        "            return note.get('text', '') if note.get('until', float('inf')) > time.time() else ''",
        "        return note or ''",
        "    return text(notes.get(getattr(user, 'name', None) or '', '')) or text(notes.get('*', ''))",
        "c.JupyterHub.template_vars = {'announcement': announcement}",
        "",
        *(proxy_front_lines() if p.front.enabled else [
        "# --- network: HTTPS at the proxy, the hub API on the overlay network -----------------",
        f'c.JupyterHub.bind_url = "https://:{PROXY_PORT}"',
        f'c.JupyterHub.ssl_cert = str(SECRETS / {SECRET_FILES["tls-cert"]!r})',
        f'c.JupyterHub.ssl_key = str(SECRETS / {SECRET_FILES["tls-key"]!r})',
        f"c.ConfigurableHTTPProxy.command = ['configurable-http-proxy', '--ssl-ciphers', {TLS12_CIPHERS!r}]",
        ]),
        f'c.JupyterHub.hub_bind_url = "http://0.0.0.0:{HUB_PORT}"',
        f"c.JupyterHub.tornado_settings = {{'headers': {{'Strict-Transport-Security': {HSTS!r}}}}}",
        # The proxy runs in the hub's container and reaches the hub on loopback. It must not use
        # the service name: Swarm publishes a task's name in DNS only once it is healthy, and the
        # healthcheck itself goes through the proxy.
        f'c.JupyterHub.hub_connect_url = "http://127.0.0.1:{HUB_PORT}"',
        # Users' servers reach the hub by its service name on the overlay network.
        f'c.Spawner.hub_connect_url = "http://{p.hub_service}:{HUB_PORT}"',
        *(hubdb.config_lines(p, SECRET_FILES["db-password"], CONFIG_FILES["db-ca"]) if p.hub_db_postgres
          else [f'c.JupyterHub.db_url = "sqlite:///{DATA_DIR}/jupyterhub.sqlite"']),
        f"c.JupyterHub.log_level = {p.hub.log_level!r}",
        # Tornado logs a request refused with an HTTP error with its URL unscrubbed (an OAuth callback's
        # code and state, a ?token=): hubops/inhub/logscrub.py scrubs it as JupyterHub scrubs its access log.
        f"from {LOGSCRUB_MODULE} import install as scrub_tornado_logs",
        "scrub_tornado_logs()",
        # Users' servers are Swarm services that outlive a hub restart (upgrade, renewal).
        "c.JupyterHub.cleanup_servers = False",
        # JupyterHub 6 (aiohttp): resolve a user's server afresh on every connection; Swarm gives it a
        # new address each time it starts (JupyterHub 5 ignores this section).
        "c.JupyterHubHTTPClient.connector_options = {'use_dns_cache': False}",
        "c.JupyterHub.cleanup_proxy = True",
        "",
        "# --- generated secrets (Swarm secrets, never in this file) --------------------------",
        f'c.JupyterHub.cookie_secret = bytes.fromhex(secret({SECRET_FILES["cookie-secret"]!r}))',
        f'c.ConfigurableHTTPProxy.auth_token = secret({SECRET_FILES["proxy-token"]!r})',
        f'c.CryptKeeper.keys = [secret({SECRET_FILES["crypt-key"]!r})]',
        f"c.JupyterHub.services = [{{'name': {API_SERVICE!r}, 'api_token': secret({SECRET_FILES['api-token']!r})}}]",
        "c.JupyterHub.load_roles = [",
        "    {'name': 'hubops-operator', 'description': 'hubops runbooks: deploy checks and day-2 operations',",
        f"     'scopes': {api_token.scopes(p)!r}, 'services': [{API_SERVICE!r}]}},",
        "]",
        *api_token.hub_lines(p, API_SERVICE, SECRET_FILES["api-token"]),
        "",
        "# --- spawner: each user's server is a Swarm service on the overlay network ----------",
        "# (SwarmSpawner's settings; hubops's subclass, set below, inherits them)",
        f"c.SwarmSpawner.image = {singleuser_image!r}",
        f"c.SwarmSpawner.network_name = {p.network_name!r}",
        "c.SwarmSpawner.use_internal_ip = True",
        f"c.SwarmSpawner.extra_endpoint_spec = {{'mode': {p.network.endpoint_mode!r}}}",
        f"c.SwarmSpawner.prefix = {p.prefix + '-user'!r}",
        "c.SwarmSpawner.cmd = ['jupyterhub-singleuser']",
        f"c.SwarmSpawner.extra_placement_spec = {{'constraints': {placement_constraints(p)!r}}}",
        f"c.SwarmSpawner.extra_create_kwargs = {{'labels': {json.dumps(user_labels, sort_keys=True)}}}",
        f"c.SwarmSpawner.extra_container_spec = {{'labels': {json.dumps(user_labels, sort_keys=True)}}}",
        f"c.Spawner.start_timeout = {p.spawner.start_timeout}",
        f"c.Spawner.http_timeout = {p.spawner.http_timeout}",
        f"c.Spawner.default_url = {p.spawner.default_url!r}",
    ]
    lines += user_storage_lines(p, user_labels)
    lines += spawn_limits.hub_lines(p, spawn_limits.concurrent_spawn_limit(p, node_cpus))
    lines += culler_lines(p)
    lines += monitoring.hub_lines(p)
    from hubops.hub import config_servers

    lines += config_servers.lines(p)
    # Users' servers locked down: every capability dropped (the server runs as the image's user and
    # needs none), no privilege gained through exec, a process limit, memory and CPU limits.
    lines += [
        "c.HubopsSpawner.cap_drop = ['ALL']",
        f"c.HubopsSpawner.cap_add = {sorted(set(p.spawner.cap_add))!r}",
        "c.HubopsSpawner.no_new_privileges = True",
        f"c.HubopsSpawner.pids_limit = {p.spawner.pids_limit}",
    ]
    if p.spawner.mem_limit:
        lines.append(f"c.Spawner.mem_limit = {p.spawner.mem_limit!r}")
    if p.spawner.cpu_limit:
        lines.append(f"c.Spawner.cpu_limit = {p.spawner.cpu_limit!r}")
    if p.spawner.mem_guarantee:
        lines.append(f"c.Spawner.mem_guarantee = {p.spawner.mem_guarantee!r}")
    if p.spawner.cpu_guarantee:
        lines.append(f"c.Spawner.cpu_guarantee = {p.spawner.cpu_guarantee!r}")
    lines += profile_lines(p, singleuser_image, profile_images or {})
    lines += ["", "# --- authentication ---------------------------------------------------------------"]
    lines += auth_lines(p, discovery=discovery)
    return "\n".join(lines) + "\n"


def proxy_front_lines() -> list[str]:
    """With front.enabled: the TLS front (HAProxy, stages/front.py) terminates TLS and forwards plain
    HTTP over the overlay network; the proxy's port is published nowhere."""
    return [
        "# --- network: TLS at the front (HAProxy), plain HTTP from it to the proxy on the overlay ---",
        f'c.JupyterHub.bind_url = "http://:{PROXY_PORT}"',
        "c.ConfigurableHTTPProxy.command = ['configurable-http-proxy']",
    ]


def auth_lines(p: Loaded, *, discovery: Any = None) -> list[str]:
    """The authenticator, and the groups and roles, for auth.mode and auth.roles."""
    lines: list[str] = []
    if p.auth.mode == "shared-password":
        lines += [
            'c.JupyterHub.authenticator_class = "shared-password"',
            f'c.SharedPasswordAuthenticator.user_password = secret({SECRET_FILES["user-password"]!r})',
            f'c.SharedPasswordAuthenticator.admin_password = secret({SECRET_FILES["admin-password"]!r})',
        ]
    elif p.auth.mode == "oidc":
        lines += oidc_lines(p, discovery)
    elif p.auth.mode == "ldap":
        lines += ldap_lines(p)
    elif p.auth.mode == "native":
        lines += native_lines(p)
    else:
        gh = p.auth.github
        callback = f"{p.hub_url}/hub/oauth_callback"
        lines += [
            'c.JupyterHub.authenticator_class = "github"',
            f"c.GitHubOAuthenticator.client_id = {gh.client_id!r}",
            f'c.GitHubOAuthenticator.client_secret = secret({SECRET_FILES["github-client-secret"]!r})',
            f"c.GitHubOAuthenticator.oauth_callback_url = {callback!r}",
            # No auth state: hubops hands users' GitHub tokens to nothing, so the hub does not keep
            # them; and with it OAuthenticator 17 refuses to start servers for users it has no
            # token for ("auth has expired"): those hubops's API creates, such as 90-verify's.
            "c.GitHubOAuthenticator.enable_auth_state = False",
            # OAuthenticator 16+: only the userlist (and the organizations below) let anyone in.
            "c.GitHubOAuthenticator.allow_all = False",
            "c.GitHubOAuthenticator.allow_existing_users = False",
        ]
        if gh.allowed_organizations:
            lines += [
                # sorted: the same parameters always render the same file (a set's order varies)
                f"c.GitHubOAuthenticator.allowed_organizations = set({sorted(gh.allowed_organizations)!r})",
                # Membership of organizations and teams is only visible with read:org.
                "c.GitHubOAuthenticator.scope = ['read:org']",
            ]
        if gh.enterprise_url:
            # OAuthenticator derives authorize, token and API URLs from it (API at BASE/api/v3).
            lines.append(f"c.GitHubOAuthenticator.github_url = {gh.enterprise_url.rstrip('/')!r}")
    return lines + group_lines(p)


def oidc_lines(p: Loaded, discovery: Any) -> list[str]:
    """GenericOAuthenticator against an OpenID Connect provider, with the endpoints of its discovery document."""
    o = p.auth.oidc
    if discovery is None:
        raise ValueError("auth.mode oidc: render needs the provider's discovery document (auth_oidc.discover)")
    A = "c.GenericOAuthenticator"
    lines = [
        'c.JupyterHub.authenticator_class = "generic-oauth"',
        # First: the group settings below are refused unless the authenticator manages groups.
        f"{A}.manage_groups = {bool(o.groups_claim or p.groups or p.auth.roles)!r}",
        f"{A}.login_service = {('OpenID Connect (' + o.issuer.split('//', 1)[1].split('/', 1)[0] + ')')!r}",
        f"{A}.client_id = {o.client_id!r}",
        f'{A}.client_secret = secret({SECRET_FILES["oidc-client-secret"]!r})',
        f"{A}.oauth_callback_url = {p.hub_url + '/hub/oauth_callback'!r}",
        f"# from {o.issuer}/.well-known/openid-configuration",
        f"{A}.authorize_url = {discovery.authorization_endpoint!r}",
        f"{A}.token_url = {discovery.token_endpoint!r}",
        f"{A}.userdata_url = {discovery.userinfo_endpoint!r}",
        f"{A}.scope = {list(o.scopes)!r}",
        f"{A}.username_claim = {o.username_claim!r}",
        # As with GitHub: no tokens kept (nothing uses them), and only the userlist and the groups let anyone in.
        f"{A}.enable_auth_state = False",
        f"{A}.allow_all = False",
        f"{A}.allow_existing_users = False",
    ]
    if o.groups_claim:
        lines.append(f"{A}.auth_state_groups_key = {'oauth_user.' + o.groups_claim!r}")
    elif p.groups or p.auth.roles:
        lines.append(f"{A}.auth_state_groups_key = lambda auth_state: []  # no groups from the provider")
    if o.allowed_groups:
        lines.append(f"{A}.allowed_groups = set({sorted(o.allowed_groups)!r})")
    if o.admin_groups:
        lines.append(f"{A}.admin_groups = set({sorted(o.admin_groups)!r})")
    if o.ca_bundle is not None:
        # The provider's certificate is verified against its CA alone (a private CA).
        lines.append(f"{A}.http_request_kwargs = {{'ca_certs': {CONFIG_FILES['oidc-ca']!r}}}")
    return lines


_LDAP_CLASS = '''
from ldapauthenticator import LDAPAuthenticator


class HubopsLDAPAuthenticator(LDAPAuthenticator):
    """LDAPAuthenticator that also makes admins of LDAP_ADMIN_GROUPS' members and, with groups managed,
    hands the user's LDAP groups (by their first RDN's value) to JupyterHub."""

    async def authenticate(self, handler, data):
        model = await super().authenticate(handler, data)
        if not model:
            return model
        dns = set((model.get("auth_state") or {}).get("ldap_groups") or [])
        model["admin"] = bool(dns & set(LDAP_ADMIN_GROUPS)) or model["name"] in self.admin_users
        if self.manage_groups:
            model["groups"] = sorted(LDAP_GROUP_NAMES[dn] for dn in dns if dn in LDAP_GROUP_NAMES)
        return model


c.JupyterHub.authenticator_class = HubopsLDAPAuthenticator
'''


def ldap_lines(p: Loaded) -> list[str]:
    """jupyterhub-ldapauthenticator: StartTLS or LDAPS verified against the CA, a service account that
    looks users up, users let in by the userlist or group membership, admins by a group."""
    from hubops.core.params import ldap_group_name

    lp = p.auth.ldap
    A = "c.LDAPAuthenticator"
    groups = sorted(set(lp.allowed_groups) | set(lp.admin_groups))
    ca = CONFIG_FILES["ldap-ca"] if lp.ca_bundle is not None else None
    return [
        f"LDAP_ADMIN_GROUPS = {sorted(lp.admin_groups)!r}",
        f"LDAP_GROUP_NAMES = {({dn: ldap_group_name(dn) for dn in groups})!r}",
        *_LDAP_CLASS.strip("\n").splitlines(),
        f"{A}.server_address = {lp.host!r}",
        f"{A}.server_port = {lp.port!r}",
        # before_bind: StartTLS on ldap://; on_connect: ldaps://. Never "insecure".
        f"{A}.tls_strategy = {'before_bind' if lp.starttls else 'on_connect'!r}",
        "import ssl",
        f"{A}.tls_kwargs = {{'validate': ssl.CERT_REQUIRED, 'version': ssl.PROTOCOL_TLS_CLIENT"
        + (f", 'ca_certs_file': {ca!r}" if ca else "") + "}",
        f"{A}.lookup_dn = True",
        f"{A}.lookup_dn_search_user = {lp.bind_dn!r}",
        f'{A}.lookup_dn_search_password = secret({SECRET_FILES["ldap-bind-password"]!r})',
        f"{A}.user_search_base = {lp.user_search_base!r}",
        f"{A}.user_attribute = {lp.user_attribute!r}",
        f"{A}.lookup_dn_user_dn_attribute = {lp.user_attribute!r}",
        # The name users type is their hub name (lower-cased by JupyterHub).
        f"{A}.use_lookup_dn_username = False",
        # Members of the admin groups are let in too (as OAuthenticator does for its admin_groups).
        f"{A}.allowed_groups = {groups!r}",
        f"{A}.allow_all = False",
        f"{A}.allow_existing_users = False",
    ]


_NATIVE_CLASS = '''
from nativeauthenticator import NativeAuthenticator
from nativeauthenticator import handlers as native_handlers
from nativeauthenticator.orm import UserInfo


class NoStatsd:
    """JupyterHub 6 removed its handlers' `statsd`; NativeAuthenticator 1.3.0's login still times itself
    with it (`self.statsd.timer(...).start()`), so every login was a 500 on JupyterHub 6."""

    def timer(self, *args, **kwargs):
        return self

    def start(self):
        return self

    def stop(self, *args, **kwargs):
        return None


if not hasattr(native_handlers.LoginHandler, "statsd"):
    native_handlers.LoginHandler.statsd = NoStatsd()


class HubopsNativeAuthenticator(NativeAuthenticator):
    """Every sign-up waits for an admin's approval, listed on the userlist or not (a listed name is not
    approved in advance: anyone could claim it first). The userlist's admins are created and approved
    when the hub starts, with hubops's generated admin password, so nobody can claim their names."""

    def get_authed_users(self):
        return {info.username for info in UserInfo.all_users(self.db) if info.is_authorized}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        password = secret(ADMIN_PASSWORD_FILE)
        signup, self.enable_signup = self.enable_signup, True
        try:
            for name in sorted(self.admin_users):
                info = self.get_user(name) or self.create_user(name, password)
                if info is not None and not info.is_authorized:
                    info.is_authorized = True
                    self.db.commit()
                    self.log.info("hubops: admin %s created and approved", name)
        finally:
            self.enable_signup = signup


c.JupyterHub.authenticator_class = HubopsNativeAuthenticator
'''


def native_lines(p: Loaded) -> list[str]:
    """jupyterhub-nativeauthenticator: each user's own password, sign-up approved by an admin."""
    n = p.auth.native
    A = "c.NativeAuthenticator"
    return [
        f"ADMIN_PASSWORD_FILE = {SECRET_FILES['admin-password']!r}",
        *_NATIVE_CLASS.strip("\n").splitlines(),
        f"{A}.enable_signup = {n.signup!r}",
        f"{A}.open_signup = False  # an admin approves each sign-up at /hub/authorize",
        f"{A}.minimum_password_length = {n.minimum_password_length!r}",
        f"{A}.check_common_password = {n.check_common_password!r}",
        f"{A}.allowed_failed_logins = {n.allowed_failed_logins!r}",
        f"{A}.seconds_before_next_try = {n.seconds_before_next_try!r}",
        # Users must also be on the userlist (allowed_users above): approval alone does not let anyone in.
        f"{A}.allow_all = False",
    ]


def group_lines(p: Loaded) -> list[str]:
    """Groups and roles. The userlist's '@group' words and the provider's groups are JupyterHub groups,
    set at each login (so taking someone out of a group takes effect at their next login); roles
    from auth.roles give groups scopes. JupyterHub refuses load_groups while the authenticator
    manages groups, so groups are synced at login and load_roles creates the groups it names."""
    if not (p.groups or p.auth.roles or p.auth.provider_groups):
        return []
    lines = [
        "",
        "# --- groups (userlist '@group' words, and the provider's groups) and roles (auth.roles) ---",
        "c.Authenticator.manage_groups = True",
        "def hubops_groups(authenticator, handler, auth_model):",
        "    provider = auth_model.get('groups') or []",
        "    auth_model['groups'] = sorted(set(provider) | set(user_groups.get(auth_model['name'], [])))",
        "    return auth_model",
        "c.Authenticator.post_auth_hook = hubops_groups",
    ]
    for role in p.auth.roles:
        spec = {"name": role.name, "description": role.description or f"hubops auth.roles {role.name}",
                "scopes": list(role.scopes), "groups": list(role.groups)}
        lines.append(f"c.JupyterHub.load_roles.append({spec!r})")
    return lines


def culler_lines(p: Loaded) -> list[str]:
    """jupyterhub-idle-culler as a hub-managed service, with only the scopes it needs."""
    if not p.culler.enabled:
        return ["", "# --- idle culler: disabled (culler.enabled: false) ---"]
    cmd = ["-m", "jupyterhub_idle_culler", f"--timeout={p.culler.timeout}", f"--cull-every={p.culler.every}"]
    return [
        "",
        f"# --- idle culler: servers idle for {p.culler.timeout} s are stopped (checked every {p.culler.every} s) ---",
        "import sys",
        f"c.JupyterHub.services.append({{'name': {CULLER_SERVICE!r}, "
        f"'command': [sys.executable, {', '.join(map(repr, cmd))}]}})",
        f"c.JupyterHub.load_roles.append({{'name': {CULLER_SERVICE!r}, 'description': 'stop idle servers',",
        f"                                 'scopes': {CULLER_SCOPES!r}, 'services': [{CULLER_SERVICE!r}]}})",
    ]


def user_storage_lines(p: Loaded, user_labels: dict[str, str]) -> list[str]:
    """hubops's spawner (hubops/inhub/spawner.py, installed in the hub image) and its settings for
    users' persistent homes (storage.users), as data."""
    us = p.storage.users
    settings = {
        "home_mode": us.mode,
        "home_target": us.target,
        "home_shared_path": us.shared_path or "",
        "home_uid": us.uid,
        "home_gid": us.gid,
        "home_driver": us.driver or "",
        "home_driver_opts": dict(sorted(us.driver_opts.items())),
        "home_volume_prefix": p.prefix,
        "home_labels": dict(sorted({**user_labels, L.ROLE: "user-home"}.items())),
    }
    return ["", f"# --- hubops's spawner; users' homes: storage.users.mode {us.mode} ---",
            f"from {SPAWNER_MODULE} import {SPAWNER_CLASS}",
            f"c.JupyterHub.spawner_class = {SPAWNER_CLASS}",
            *(f"c.{SPAWNER_CLASS}.{k} = {v!r}" for k, v in settings.items())]


def profile_lines(p: Loaded, singleuser_image: str, profile_images: dict[str, str]) -> list[str]:
    """Spawn profiles (parameter profiles:) for hubops's spawner, as data; none: nothing."""
    if not p.profiles:
        return []
    from hubops.core.profiles import spawner_profiles

    missing = [pr.name for pr in p.profiles if pr.image_folder and pr.name not in profile_images]
    if missing:
        raise ValueError(f"profiles {missing}: their images are not built; run 60-images first")
    profiles = spawner_profiles(p, profile_images, singleuser_image)
    return ["", f"# --- spawn profiles: {', '.join(pr['name'] for pr in profiles)} "
            f"({'a choice on the spawn page' if len(profiles) > 1 else 'one, no spawn page'}) ---",
            f"c.{SPAWNER_CLASS}.profiles = {profiles!r}"]
