"""The hub's configuration, produced by one function, loaded as JupyterHub loads it: into a
traitlets Config, with the real dockerspawner and hubops's spawner module it imports."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from dockerspawner import SwarmSpawner
from traitlets.config import Config

from hubops.core.params import load_params
from hubops.hub import config as hubconfig
from hubops.inhub.spawner import HubopsSpawner
from tests.helpers import hub_spawner

PROJECT = Path(__file__).resolve().parents[2]


def load(source: str, secrets_dir: Path, userlist: Path, monkeypatch) -> Config:
    monkeypatch.setenv("HUBOPS_SECRETS_DIR", str(secrets_dir))
    monkeypatch.setenv("HUBOPS_USERLIST", str(userlist))
    cfg = Config()
    exec(compile(source, "jupyterhub_config.py", "exec"), {"get_config": lambda: cfg})
    return cfg


@pytest.fixture
def secret_files(tmp_path):
    d = tmp_path / "secrets"
    d.mkdir()
    values = {
        "hubops-cookie-secret": "ab" * 32,
        "hubops-proxy-token": "proxy-token-value",
        "hubops-crypt-key": "cd" * 32,
        "hubops-api-token": "api-token-value",
        "hubops-user-password": "user-password-value",
        "hubops-admin-password": "admin-password-value-that-is-long-enough-32",
        "hubops-github-client-secret": "github-secret-value",
    }
    for k, v in values.items():
        (d / k).write_text(v + "\n")
    return d, values


def test_local_default_config(secret_files, tmp_path, monkeypatch):
    p = load_params(PROJECT / "parameters/local.yaml")
    src = hubconfig.render(p, singleuser_image="hubops-singleuser:abc")
    d, values = secret_files
    ul = tmp_path / "userlist"
    ul.write_text(p.userlist_text())
    c = load(src, d, ul, monkeypatch)
    # The spawner is hubops's module (as the hub image installs it), a real SwarmSpawner subclass.
    assert c.JupyterHub.spawner_class is HubopsSpawner and issubclass(HubopsSpawner, SwarmSpawner)
    assert "from hubops.inhub.spawner import HubopsSpawner\n" in src and "\nclass " not in src
    assert c.HubopsSpawner.home_mode == "node-local" and c.HubopsSpawner.home_volume_prefix == "hubops-local"
    assert c.SwarmSpawner.image == "hubops-singleuser:abc"
    assert c.SwarmSpawner.network_name == "hubops-local"
    assert c.SwarmSpawner.extra_endpoint_spec == {"mode": "dnsrr"}
    assert c.SwarmSpawner.use_internal_ip is True
    # Single node: no workers, so users' servers may run anywhere.
    assert c.SwarmSpawner.extra_placement_spec == {"constraints": []}
    assert c.SwarmSpawner.extra_create_kwargs["labels"]["hubops.deployment"] == "local"
    assert c.JupyterHub.hub_connect_url == "http://127.0.0.1:8081"  # the proxy, same container
    assert c.Spawner.hub_connect_url == "http://hubops-local-hub:8081"  # users' servers
    assert c.JupyterHub.bind_url == "https://:8000"
    assert c.JupyterHub.ssl_cert == str(d / "hubops-tls-cert")
    assert c.JupyterHub.cleanup_servers is False
    # JupyterHub 6's aiohttp client: no cached address for a user's server (a new one at each start on Swarm)
    assert c.JupyterHubHTTPClient.connector_options == {"use_dns_cache": False}
    assert c.JupyterHub.cookie_secret == bytes.fromhex(values["hubops-cookie-secret"])
    assert c.ConfigurableHTTPProxy.auth_token == values["hubops-proxy-token"]
    assert c.JupyterHub.authenticator_class == "shared-password"
    assert c.SharedPasswordAuthenticator.admin_password == values["hubops-admin-password"]
    assert c.Authenticator.allowed_users == {"operator", "alice"}
    assert c.Authenticator.admin_users == {"operator"}
    svc = next(s for s in c.JupyterHub.services if s["name"] == "hubops")  # the idle culler is the other
    assert svc == {"name": "hubops", "api_token": values["hubops-api-token"]}
    role = next(r for r in c.JupyterHub.load_roles if r["name"] == "hubops-operator")
    assert role["services"] == ["hubops"] and "servers" in role["scopes"] and "admin:servers" not in role["scopes"]
    assert "admin:users!user=hubopsverify" in role["scopes"] and "admin:users" not in role["scopes"]
    # The file itself carries no secret value.
    for v in values.values():
        assert v not in src


def test_github_multi_host_config(secret_files, tmp_path, monkeypatch):
    (tmp_path / "users").write_text("jtyberg admin\nalice\n")
    f = tmp_path / "p.yaml"
    f.write_text(textwrap.dedent("""
        deployment: prod
        hosts:
          managers: [{name: m, url: "ssh://a@m", advertise_addr: 10.0.0.1}]
          workers: [{name: w, url: "ssh://a@w", advertise_addr: 10.0.0.2}]
        hub: {public_name: hub.example.org}
        network: {endpoint_mode: vip}
        auth:
          mode: github
          userlist: users
          github:
            client_id: cid
            client_secret: {env: HUBOPS_T_SECRET}
            allowed_organizations: [my-org]
            enterprise_url: https://github.example.org/
        spawner: {mem_limit: 2G, cpu_limit: 1.5}
    """))
    monkeypatch.setenv("HUBOPS_T_SECRET", "x")
    p = load_params(f)
    d, values = secret_files
    ul = tmp_path / "userlist"
    ul.write_text(p.userlist_text())
    c = load(hubconfig.render(p, singleuser_image="su:1"), d, ul, monkeypatch)
    assert c.JupyterHub.authenticator_class == "github"
    assert c.GitHubOAuthenticator.oauth_callback_url == "https://hub.example.org/hub/oauth_callback"
    assert c.GitHubOAuthenticator.client_secret == values["hubops-github-client-secret"]
    assert c.GitHubOAuthenticator.allowed_organizations == {"my-org"}
    assert c.GitHubOAuthenticator.github_url == "https://github.example.org"
    assert c.SwarmSpawner.extra_placement_spec == {"constraints": ["node.role==worker"]}
    assert c.SwarmSpawner.extra_endpoint_spec == {"mode": "vip"}
    assert c.Spawner.mem_limit == "2G" and c.Spawner.cpu_limit == 1.5
    assert c.Authenticator.admin_users == {"jtyberg"}
    # What JupyterHub makes of it: SwarmSpawner's and hubops's settings on one spawner.
    s = hub_spawner(c, "alice")
    assert (s.image, s.network_name, s.extra_endpoint_spec, s.mem_limit) == ("su:1", "hubops-prod", {"mode": "vip"}, 2 * 1024**3)
    assert (s.home_mode, s.object_name, s.home_labels["hubops.role"]) == ("node-local", "hubops-prod-user-alice", "user-home")
    assert "github-client-secret" in hubconfig.secret_roles(p)
    assert "user-password" not in hubconfig.secret_roles(p)
