"""Helpers shared by the tests (importable as tests.helpers)."""
from __future__ import annotations

import textwrap
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent


def make_params(tmp: Path, deployment: str, *, port: int, subnet: str, extra: str = "",
                users: str = "operator admin\nalice\n",
                auth: str = "{mode: shared-password, userlist: userlist}") -> Path:
    """A parameter file like parameters/local.yaml, for its own deployment name, port and subnet,
    with its operator folder in `tmp`. `auth` is its `auth:` block: YAML as it goes under `auth:`,
    a flow mapping on one line (the default's) or a block in any indentation."""
    (tmp / "userlist").write_text(users)
    body = textwrap.dedent(auth).strip()
    auth_yaml = f"auth: {body}\n" if body.startswith("{") else "auth:\n" + textwrap.indent(body + "\n", "  ")
    f = tmp / f"{deployment}.yaml"
    f.write_text(textwrap.dedent(f"""
        deployment: {deployment}
        operator_dir: {tmp / 'operator'}
        hosts:
          managers:
            - {{name: local, url: "unix:///var/run/docker.sock", advertise_addr: 127.0.0.1}}
        hub: {{public_name: localhost, https_port: {port}}}
        network: {{subnet: {subnet}}}
    """) + auth_yaml + textwrap.dedent(f"""\
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


def hub_config(p, singleuser_image: str = "hubops-singleuser:abc", profile_images: dict | None = None):
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
        exec(compile(hubconfig.render(p, singleuser_image=singleuser_image, profile_images=profile_images),
                     "jupyterhub_config.py", "exec"),
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


def admin_session(p, user: str = "operator", *, base: str | None = None):
    """A requests session logged in to the hub as the userlist's admin `user` with the generated
    admin password (cookie + XSRF header), for what only an admin may do (e.g. make another admin).
    `base`: the hub's URL when it is not p.hub_url (a hub Swarm moved to another manager)."""
    import requests

    base = base or p.hub_url
    s = requests.Session()
    s.trust_env = False
    s.verify = str(p.operator_path / "ca.pem")
    s.get(f"{base}/hub/login", timeout=10)
    pw = (p.operator_path / "admin-password").read_text().strip()
    r = s.post(f"{base}/hub/login", data={"username": user, "password": pw, "_xsrf": s.cookies.get("_xsrf")},
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


# -- sharing an engine: a per-run suffix, free ports and free subnets ------------------------------
# Several runs of the suite may share one machine and one Docker engine (two clones, CI beside a
# developer). Every deployment, lab, port and subnet a test makes carries RUN or is chosen free here,
# and is reserved by a file under RESERVATIONS until this process ends, so that two runs choosing at
# the same moment never pick the same one.

def _run_id() -> str:
    import os
    import secrets
    import string

    given = os.environ.get("HUBOPS_TEST_RUN", "")
    if given:
        import re

        if not re.fullmatch(r"[a-z0-9]{1,4}", given):
            raise ValueError(f"HUBOPS_TEST_RUN={given!r}: use 1-4 lower-case letters or digits (it ends deployment "
                             "and lab names, and lab interface names hold 15 characters)")
        return given
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(4))


RUN = _run_id()  # this run's suffix: 4 lower-case letters or digits (HUBOPS_TEST_RUN sets it)
RESERVATIONS = Path("/tmp/hubops-test-reservations")
# Where free things are looked for. Hub ports stay below the kernel's ephemeral range (32768-60999),
# so that an outgoing connection never holds one; lab bridges and overlay networks get pools of
# their own, apart from the subnets of `hubops lab`'s defaults (10.77-10.85, 10.240-10.250).
PORTS = range(20000, 30000)
LAB_SUBNETS = "10.160.0.0/12"      # host bridges of test labs: 10.160.0.0 - 10.175.255.255
OVERLAY_SUBNETS = "10.176.0.0/12"  # overlay networks on the shared engine: 10.176.0.0 - 10.191.255.255
_mine: list[Path] = []


def run_name(base: str) -> str:
    """`base` with this run's suffix: a deployment or lab name no other run uses (`e2e` -> `e2e-k3x9`).
    Lab names hold 10 characters (interface names hv-NAME-N), so a lab's base holds 5."""
    return f"{base}-{RUN}"


def _pid_alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _reserve(key: str) -> bool:
    """Take the reservation `key` for this process (False if a live process holds it). A reservation
    whose process is gone is stale and is taken over."""
    import atexit
    import os

    RESERVATIONS.mkdir(mode=0o1777, exist_ok=True)
    f = RESERVATIONS / key
    for _ in range(2):
        try:
            fd = os.open(f, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = int(f.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                holder = 0  # being written this instant, or garbage: leave it to its owner
                return False
            if _pid_alive(holder):
                return False
            f.unlink(missing_ok=True)  # stale: its run is gone
            continue
        with os.fdopen(fd, "w") as out:
            out.write(f"{os.getpid()} run {RUN}\n")
        if not _mine:
            atexit.register(release_reservations)
        _mine.append(f)
        return True
    return False


def release_reservations() -> None:
    """Give back every port and subnet this process reserved (also done when it exits)."""
    while _mine:
        _mine.pop().unlink(missing_ok=True)


def _published_ports() -> set[int]:
    """Ports the local engine's services publish (a host-mode port is bound only once a task runs)."""
    import docker

    try:
        client = docker.from_env(timeout=30)
        if client.info()["Swarm"]["LocalNodeState"] != "active":
            return set()
        return {p.get("PublishedPort") for s in client.services.list()
                for p in (s.attrs.get("Endpoint", {}).get("Spec", {}).get("Ports") or [])}
    except Exception:  # noqa: BLE001 - no engine: nothing is published
        return set()


def _bindable(port: int) -> bool:
    import socket

    for host in ("0.0.0.0", "127.0.0.1"):
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


def free_port(*, avoid: tuple[int, ...] = ()) -> int:
    """A TCP port nothing listens on, no service of the local engine publishes, and no other run has
    reserved; reserved for this process until it ends."""
    import random

    published = _published_ports() | set(avoid)
    candidates = list(PORTS)
    random.shuffle(candidates)
    for port in candidates:
        if port not in published and _bindable(port) and _reserve(f"port-{port}"):
            if _bindable(port):  # still free now that it is ours
                return port
    raise RuntimeError(f"no free TCP port in {PORTS.start}-{PORTS.stop - 1}")


def taken_subnets() -> list[str]:
    """Every IPv4 network this machine already uses or has promised: routes and addresses
    (`ip route`, `ip addr`, so every running lab's bridge), the resolvers, every `hubops lab`'s
    subnet (a lab being brought up has no route yet), and the local engine's networks."""
    import ipaddress
    import json
    import subprocess

    taken: list[str] = []
    for r in json.loads(subprocess.run(["ip", "-j", "-4", "route"], capture_output=True, text=True, check=True).stdout or "[]"):
        if r.get("dst", "default") != "default":
            taken.append(r["dst"])
    for link in json.loads(subprocess.run(["ip", "-j", "-4", "addr"], capture_output=True, text=True, check=True).stdout or "[]"):
        taken += [f"{a['local']}/{a.get('prefixlen', 32)}" for a in link.get("addr_info", []) if a.get("local")]
    try:
        taken += [ln.split()[1] for ln in Path("/etc/resolv.conf").read_text().splitlines()
                  if ln.startswith("nameserver") and len(ln.split()) > 1 and ":" not in ln.split()[1]]
    except OSError:
        pass
    for f in Path("/var/lib/hubops-lab").glob("*/lab.json"):
        try:
            taken.append(json.loads(f.read_text())["subnet"])
        except (OSError, ValueError, KeyError):
            pass
    try:
        import docker

        client = docker.from_env(timeout=30)
        for n in client.networks.list(greedy=False):
            n.reload()
            taken += [c["Subnet"] for c in (n.attrs.get("IPAM") or {}).get("Config") or [] if "Subnet" in c
                      and ":" not in c["Subnet"]]
    except Exception:  # noqa: BLE001 - no engine: no engine networks
        pass
    return [str(ipaddress.ip_network(t, strict=False)) for t in taken]


def free_subnet(pool: str = OVERLAY_SUBNETS, *, prefix: int = 24) -> str:
    """A /`prefix` of `pool` that overlaps nothing in taken_subnets() and no other run's reservation;
    reserved for this process until it ends. Lab bridges: free_subnet(LAB_SUBNETS)."""
    import ipaddress
    import random

    taken = [ipaddress.ip_network(t) for t in taken_subnets()]
    candidates = list(ipaddress.ip_network(pool).subnets(new_prefix=prefix))
    random.shuffle(candidates)
    for net in candidates:
        if not any(net.overlaps(t) for t in taken) and _reserve(f"subnet-{net.network_address}-{prefix}"):
            return str(net)
    raise RuntimeError(f"no free /{prefix} left in {pool} (taken: {', '.join(map(str, taken))})")


def ensure_swarm() -> None:
    """The local engine in a swarm, as the integration and local end-to-end tests need: a single-node
    swarm is made when the engine is in none (and kept: other runs may be using it by the time this
    run ends, as they use the engine's image cache)."""
    import docker

    client = docker.from_env(timeout=60)
    try:
        if client.info()["Swarm"]["LocalNodeState"] == "inactive":
            try:
                client.swarm.init(advertise_addr="127.0.0.1")
            except docker.errors.APIError as e:
                if "already part of a swarm" not in str(e):  # another run made it this instant
                    raise
        state = client.info()["Swarm"]["LocalNodeState"]
        assert state == "active", f"the local engine's swarm is {state!r}, not active"
    finally:
        client.close()


class machine_lock:
    """`with machine_lock("port-80") as waited:` holds /tmp/hubops-lock-NAME (flock, as the shell's
    `flock` command takes it) for what only one run on this machine may use at a time, such as
    port 80; `waited` is how long it took to get it, in seconds."""

    def __init__(self, name: str):
        self.path = Path(f"/tmp/hubops-lock-{name}")
        self._f = None

    def __enter__(self) -> float:
        import fcntl
        import time

        t0 = time.monotonic()
        self._f = open(self.path, "a")
        fcntl.flock(self._f, fcntl.LOCK_EX)
        return time.monotonic() - t0

    def __exit__(self, *exc) -> None:
        import fcntl

        fcntl.flock(self._f, fcntl.LOCK_UN)
        self._f.close()


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


def server_state(p, user: str, *, include_stopped: bool = False) -> dict:
    """The spawner state of `user`'s default server, as an admin of the hub reads it (hubops's own
    token may read only the verify user's state: tests read it with the admin's login)."""
    s = admin_session(p)
    q = "?include_stopped_servers=1" if include_stopped else ""
    r = s.get(f"{p.hub_url}/hub/api/users/{user}{q}", timeout=30)
    r.raise_for_status()
    return ((r.json().get("servers") or {}).get("") or {}).get("state") or {}


def create_user(p, name: str, *, base: str | None = None) -> None:
    """Make a hub user through the admin's login: hubops's own token may not create users (it is
    scoped to what hubops does). `base`: as for admin_session."""
    base = base or p.hub_url
    r = admin_session(p, base=base).post(f"{base}/hub/api/users/{name}", timeout=30)
    assert r.status_code == 201, f"creating user {name}: HTTP {r.status_code} {r.text[:300]}"
