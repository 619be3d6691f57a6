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


def hub_spawner(cfg, name: str, db=None):
    """The spawner JupyterHub makes for user `name`'s default server from the config `cfg` (the real
    jupyterhub.user.User over a real ORM user, in `db` or a new in-memory database), as the hub does:
    its class is cfg.JupyterHub.spawner_class, its state loaded from the database's spawner row."""
    from jupyterhub import orm
    from jupyterhub.objects import Hub
    from jupyterhub.user import User

    if db is None:
        db = orm.new_session_factory("sqlite://")()
    orm_user = db.query(orm.User).filter_by(name=name).first()
    if orm_user is None:
        orm_user = orm.User(name=name)
        db.add(orm_user)
        db.commit()
    settings = {"spawner_class": cfg.JupyterHub.spawner_class, "config": cfg,
                "hub": Hub(ip="127.0.0.1", port=8081, base_url="/hub/")}
    return User(orm_user, settings=settings, db=db).spawners[""]


def hub_config(p, singleuser_image: str = "hubops-singleuser:abc"):
    """The generated jupyterhub_config.py, executed as JupyterHub executes it (secrets and userlist
    from files), into a traitlets Config."""
    import os

    from traitlets.config import Config

    from hubops.hub import config as hubconfig

    tmp = p.source.parent
    secrets = tmp / "secrets"
    secrets.mkdir(exist_ok=True)
    for name in hubconfig.SECRET_FILES.values():
        (secrets / name).write_text("ab" * 32 + "\n")
    (tmp / "userlist-in-hub").write_text(p.userlist_text())
    env = {"HUBOPS_SECRETS_DIR": str(secrets), "HUBOPS_USERLIST": str(tmp / "userlist-in-hub")}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        cfg = Config()
        exec(compile(hubconfig.render(p, singleuser_image=singleuser_image), "jupyterhub_config.py", "exec"),
             {"get_config": lambda: cfg})
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return cfg


def sleep_image_tar() -> bytes:
    """An image's root filesystem (for `import_image_from_data`) with /bin/sleep and the libraries it
    links, from this machine: a server that runs, and ignores SIGTERM as PID 1 (a container that
    lingers for its stop grace period), for spawner tests without a registry or a build."""
    import io
    import subprocess
    import tarfile

    libs = [line.split("=>")[-1].split("(")[0].strip()
            for line in subprocess.run(["ldd", "/bin/sleep"], capture_output=True, text=True, check=True).stdout.splitlines()]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path in ["/bin/sleep", *[lib for lib in libs if lib.startswith("/")]]:
            data = Path(path).read_bytes()  # through symlinks: the file itself, under the linked name
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


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


def write_cert_pair(cert: Path, key: Path, name: str = "stand-in") -> None:
    """A real self-signed certificate and its key (parameters are refused when a certificate
    does not parse or does not match its key)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    k = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    c = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(k.public_key())
         .serial_number(x509.random_serial_number()).not_valid_before(now)
         .not_valid_after(now + datetime.timedelta(days=30)).sign(k, hashes.SHA256()))
    cert.write_bytes(c.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
