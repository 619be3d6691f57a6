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


def screenshot_path(name: str) -> Path:
    """Where a browser test keeps a screenshot: a stable folder the closing note can name,
    `outputs/screenshots/` (ignored by git) unless HUBOPS_SCREENSHOTS says otherwise."""
    import os

    folder = Path(os.environ.get("HUBOPS_SCREENSHOTS", PROJECT / "outputs" / "screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name
