"""Helpers shared by the tests (importable as tests.helpers)."""
from __future__ import annotations

import textwrap
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent


def make_params(tmp: Path, deployment: str, *, port: int, subnet: str, extra: str = "",
                users: str = "operator admin\nalice\n") -> Path:
    """A parameter file like parameters/local.yaml, for its own deployment name, port and subnet,
    with its operator folder in `tmp`."""
    (tmp / "userlist").write_text(users)
    f = tmp / f"{deployment}.yaml"
    f.write_text(textwrap.dedent(f"""
        deployment: {deployment}
        operator_dir: {tmp / 'operator'}
        hosts:
          managers:
            - {{name: local, url: "unix:///var/run/docker.sock", advertise_addr: 127.0.0.1}}
        hub: {{public_name: localhost, https_port: {port}}}
        network: {{subnet: {subnet}}}
        auth: {{mode: shared-password, userlist: userlist}}
        images: {{dir: {PROJECT / 'images'}}}
    """) + textwrap.dedent(extra))
    return f


def fake_dockerspawner(monkeypatch) -> type:
    """Install a stand-in `dockerspawner` module (the real one lives in the hub image) so that a
    rendered jupyterhub_config.py, which subclasses SwarmSpawner, can be loaded here."""
    import sys
    import types

    from traitlets.config import LoggingConfigurable

    class SwarmSpawner(LoggingConfigurable):
        pass

    monkeypatch.setitem(sys.modules, "dockerspawner", types.SimpleNamespace(SwarmSpawner=SwarmSpawner))
    return SwarmSpawner


def hubops_cli(*args: str, outputs: Path):
    """Run the `hubops` command as a user does, with its records written under `outputs`."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "HUBOPS_OUTPUTS": str(outputs)}
    return subprocess.run([sys.executable, "-m", "hubops.cli", *args], cwd=PROJECT, env=env,
                          capture_output=True, text=True, timeout=3600)


def admin_session(p, user: str = "operator"):
    """A requests session logged in to the hub as the userlist's admin `user` with the generated
    admin password (cookie + XSRF header), for what only an admin may do (e.g. make another admin)."""
    import requests

    s = requests.Session()
    s.trust_env = False
    s.verify = str(p.operator_path / "ca.pem")
    s.get(f"{p.hub_url}/hub/login", timeout=10)
    pw = (p.operator_path / "admin-password").read_text().strip()
    r = s.post(f"{p.hub_url}/hub/login", data={"username": user, "password": pw, "_xsrf": s.cookies.get("_xsrf")},
               allow_redirects=False, timeout=10)
    assert r.status_code == 302, r.text[:300]
    s.headers["X-XSRFToken"] = s.cookies.get("_xsrf")
    return s
