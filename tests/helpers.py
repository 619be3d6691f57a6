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
    return subprocess.run([sys.executable, "-m", "hubops.cli.main", *args], cwd=PROJECT, env=env,
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


def screenshot_path(name: str) -> Path:
    """Where a browser test keeps a screenshot: a stable folder the closing note can name,
    `outputs/screenshots/` (ignored by git) unless HUBOPS_SCREENSHOTS says otherwise."""
    import os

    folder = Path(os.environ.get("HUBOPS_SCREENSHOTS", PROJECT / "outputs" / "screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


def deployment_secrets(p, client) -> dict[str, str]:
    """Every secret value of a deployment whose hub runs on `client`'s engine, by name: the operator
    folder's credentials and keys, every Swarm secret as the hub's container sees it in /run/secrets
    (cookie secret, proxy token, crypt key, passwords, API token, TLS key; the certificate is public),
    and the swarm's worker and manager join tokens."""
    values: dict[str, str] = {}
    for f in sorted(p.operator_path.glob("*")):
        if f.is_file() and (f.suffix != ".pem" or "key" in f.name):  # ca.pem and certificates are public
            values[f"operator/{f.name}"] = f.read_text().strip()
    hub = client.containers.list(filters={"label": f"com.docker.swarm.service.name={p.hub_service}"})
    assert hub, f"no running container of {p.hub_service}: the secrets inside it cannot be read"
    names = hub[0].exec_run(["ls", "/run/secrets"]).output.decode().split()
    for name in names:
        if not name.endswith("tls-cert"):
            values[f"swarm secret {name}"] = hub[0].exec_run(["cat", f"/run/secrets/{name}"]).output.decode().strip()
    client.swarm.reload()
    for role, token in (client.swarm.attrs.get("JoinTokens") or {}).items():
        values[f"join token {role.lower()}"] = token
    return {k: v for k, v in values.items() if v}


def secret_hits(values: dict[str, str], roots: list[Path], logs: dict[str, str]) -> list[str]:
    """Where any value appears, as text, base64 or one of its PEM body lines: in every file under
    `roots` (read as bytes) and in each captured log. Empty when clean."""
    import base64

    needles: dict[bytes, str] = {}
    for name, v in values.items():
        needles[v.encode()] = name
        needles[base64.b64encode(v.encode())] = f"{name} (base64)"
        if "-----BEGIN" in v:
            for line in v.splitlines():
                if line and not line.startswith("-----"):
                    needles[line.encode()] = f"{name} (PEM line)"
    hits = []
    for root in roots:
        for f in sorted(root.rglob("*")):
            if f.is_file():
                data = f.read_bytes()
                hits += [f"{f}: {what}" for n, what in needles.items() if n in data]
    for label, text in logs.items():
        data = text.encode()
        hits += [f"{label}: {what}" for n, what in needles.items() if n in data]
    return hits


def runs(outputs: Path) -> list[dict]:
    """The run.json of every run under `outputs`, oldest first (run IDs begin with their UTC time)."""
    import json

    return sorted((json.loads(f.read_text()) for f in outputs.glob("*/run.json")), key=lambda r: r["run_id"])


def stage_record(outputs: Path, run: dict, stage: str) -> dict:
    """The record a stage's notebook of `run` holds (what it changed and kept, its results)."""
    import json

    from hubops.core.record import read_record

    return read_record(json.loads((outputs / run["run_id"] / f"{stage}.ipynb").read_text()))


def served_fingerprint(host: str, port: int, cafile: Path) -> str:
    """sha256 of the certificate served at host:port, verified against `cafile` alone."""
    import hashlib
    import socket
    import ssl

    ctx = ssl.create_default_context(cafile=str(cafile))
    with socket.create_connection((host, port), timeout=10) as sock:
        with ctx.wrap_socket(sock, server_hostname=host) as s:
            return hashlib.sha256(s.getpeercert(binary_form=True)).hexdigest()
