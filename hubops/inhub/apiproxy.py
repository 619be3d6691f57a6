"""The hub's door to the Docker API: a filtering proxy that lets through what spawning needs, and nothing else.

Runs as its own Swarm service (`hubops-DEPLOYMENT-apiproxy`, the hub's image, as root, with the
node's engine socket mounted), on every node the hub may run on; it listens on a unix socket in a
local volume that the hub's container mounts too (owned by the hub's user, mode 0600). The hub runs
as a non-root user and has no engine socket: everything it asks of Docker goes through here.

Let through (the calls of dockerspawner's SwarmSpawner and hubops's spawner, seen in the log of a
real spawn, stop and cull):
- `GET /_ping`, `GET /version` (docker-py's version negotiation);
- services: list and inspect; create and update of a *user's server* (checked below); remove of
  a service labelled as this deployment's user server; tasks and nodes: read only;
- the deployment's network: inspect; images: inspect (dockerspawner's pull policy looks);
- secrets and configs: list and inspect; create and remove of those labelled as this deployment's
  user servers';
- `POST /hubops/homes/NAME` (not Docker's): shared-path homes, made with the users' owner (the hub
  is not root and cannot chown).
Everything else is refused with HTTP 403 and a message that says what and why.

A service spec (create and update) must be a user's server of this deployment (its name and labels),
and may not: be privileged, keep Docker's default capabilities, or add any beyond the parameters'
spawner.cap_add; use the host's
network, PID or IPC namespace, devices, sysctls, another runtime or log driver; publish ports on the
nodes; bind-mount a path outside the allowed home and data paths, or the engine's socket; mount a
volume not named like a user's home, or through a driver with other options than the parameters';
join a network other than the deployment's; use secrets or configs not labelled for the deployment's
user servers; run more than one replica or in global mode.
Unknown keys anywhere in a spec are refused: what is not understood is not let through.

Imports the standard library only (it runs in the hub image; see hubops/inhub/__init__.py).
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import posixpath
import re
import signal
import stat
import sys
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("hubops.apiproxy")

UPSTREAM = "/run/docker.sock"
LISTEN = "/run/hubops-door/docker.sock"
POLICY_ENV = "HUBOPS_APIPROXY_POLICY"
MAX_BODY = 16 * 1024 * 1024       # a request's body (a service spec is a few KiB)
MAX_ANSWER = 256 * 1024 * 1024    # an answer of the engine's (lists of tasks or services)
MAX_HEAD = 64 * 1024
SOCKET_NAMES = ("docker.sock", "containerd.sock", "dockershim.sock", "crio.sock", "podman.sock")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class Refused(Exception):
    """A request the door does not let through; the message says what and why."""


@dataclass
class Policy:
    """What the hub may ask for. Built by hubops's 80-deploy from the parameters (stages/apiproxy.py)."""
    deployment: str
    service_prefix: str                      # users' services are named PREFIX-...
    networks: list[str]                      # names (or IDs) of the networks users' servers join
    bind_paths: list[str] = field(default_factory=list)       # allowed bind sources: PATH and PATH/NAME
    volume_prefixes: list[str] = field(default_factory=list)  # allowed volume names: PREFIX...
    volume_driver: str = ""                  # the one volume driver allowed (storage.users.driver)
    volume_driver_opts: dict[str, str] = field(default_factory=dict)  # its options; {username} a name
    cap_add: list[str] = field(default_factory=list)  # capabilities users' servers may get back
    cap_drop_all: bool = True                # users' servers must drop every capability (then get cap_add)
    roles: list[str] = field(default_factory=lambda: ["user-server"])  # hubops.role of users' objects
    home_root: str = ""                      # shared-path homes are made here (POST /hubops/homes/NAME)
    # shared data (parameters shared_data): bind sources allowed as they are (source -> read-only
    # required), and volumes by name with their one driver and options (name -> driver, opts, read_only)
    data_binds: dict[str, bool] = field(default_factory=dict)
    data_volumes: dict[str, dict] = field(default_factory=dict)
    home_uid: int = 1000
    home_gid: int = 100

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Policy":
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"apiproxy policy: unknown keys {unknown}")
        return cls(**d)


# -- routing: which calls exist at all ------------------------------------------------------------
_ID = r"([^/]+)"
ROUTES: list[tuple[str, re.Pattern, str]] = [(m, re.compile("^" + p + "$"), a) for m, p, a in [
    ("GET", r"/_ping", "pass"), ("HEAD", r"/_ping", "pass"), ("GET", r"/version", "pass"),
    ("GET", r"/services", "pass"), ("GET", rf"/services/{_ID}", "pass"),
    ("POST", r"/services/create", "service-create"),
    ("POST", rf"/services/{_ID}/update", "service-update"),
    ("DELETE", rf"/services/{_ID}", "service-delete"),
    ("GET", r"/tasks", "pass"), ("GET", rf"/tasks/{_ID}", "pass"),
    ("GET", r"/nodes", "pass"), ("GET", rf"/nodes/{_ID}", "pass"),
    ("GET", rf"/networks/{_ID}", "network-inspect"),
    ("GET", r"/images/(.+)/json", "pass"),
    ("GET", r"/secrets", "pass"), ("GET", rf"/secrets/{_ID}", "pass"),
    ("POST", r"/secrets/create", "secret-create"), ("DELETE", rf"/secrets/{_ID}", "secret-delete"),
    ("GET", r"/configs", "pass"), ("GET", rf"/configs/{_ID}", "pass"),
    ("POST", r"/configs/create", "config-create"), ("DELETE", rf"/configs/{_ID}", "config-delete"),
    ("POST", rf"/hubops/homes/{_ID}", "home"),
]]
_VERSION = re.compile(r"^/v\d+\.\d+(?=/)")


def route(method: str, path: str) -> tuple[str, str]:
    """(action, the object's name or ID) for a request; Refused when the call is not one spawning needs."""
    bare = _VERSION.sub("", urllib.parse.urlsplit(path).path, count=1)
    # No way around the routes: no dot segments, no encoded slashes, dots or backslashes.
    if any(seg in (".", "..") for seg in bare.split("/")) or "//" in bare or \
            any(x in bare.lower() for x in ("%2f", "%2e", "%5c", "\\")):
        raise Refused(f"{method} {bare}: not a plain path")
    for m, pattern, action in ROUTES:
        match = pattern.match(bare)
        if m == method and match:
            return action, urllib.parse.unquote(match.group(1)) if match.groups() else ""
    raise Refused(f"{method} {bare}: not a call the hub needs to spawn users' servers "
                  "(the door lets through services, tasks, nodes, the deployment's network, image inspect, "
                  "and users' secrets and configs)")


# -- service specs -----------------------------------------------------------------------------
SERVICE_KEYS = {"Name", "Labels", "TaskTemplate", "Mode", "UpdateConfig", "RollbackConfig", "Networks",
                "EndpointSpec"}
TASK_KEYS = {"ContainerSpec", "Resources", "RestartPolicy", "Placement", "Networks", "ForceUpdate", "Runtime",
             "LogDriver"}
CONTAINER_KEYS = {"Image", "Labels", "Command", "Args", "Hostname", "Env", "Dir", "User", "Groups", "Privileges",
                  "TTY", "OpenStdin", "ReadOnly", "Mounts", "StopSignal", "StopGracePeriod", "HealthCheck", "Hosts",
                  "DNSConfig", "Secrets", "Configs", "Isolation", "Init", "CapabilityAdd", "CapabilityDrop",
                  "Ulimits"}
# Keys of container (not service) specs, or Swarm keys that give a service the host: named in the refusal.
DANGEROUS = {
    "Privileged": "is privileged", "CapAdd": "adds capabilities", "Devices": "uses the host's devices",
    "DeviceRequests": "uses the host's devices", "NetworkMode": "chooses its network mode (host network)",
    "PidMode": "uses the host's PID namespace", "IpcMode": "uses the host's IPC namespace",
    "UsernsMode": "leaves the user namespace", "UTSMode": "uses the host's UTS namespace",
    "SecurityOpt": "sets security options", "Binds": "bind-mounts host paths", "Sysctls": "sets sysctls",
    "CgroupParent": "chooses its cgroup", "Cgroupns": "chooses its cgroup namespace",
    "OomScoreAdj": "changes its OOM score", "PluginSpec": "is a plugin", "NetworkAttachmentSpec":
    "is a network attachment", "CredentialSpec": "uses a credential spec",
}
MOUNT_KEYS = {"Type", "Source", "Target", "ReadOnly", "Consistency", "BindOptions", "VolumeOptions", "TmpfsOptions"}
HOST_NETWORKS = {"host", "bridge", "docker_gwbridge", "ingress", "none"}


def _check_keys(obj: Any, allowed: set[str], where: str) -> dict:
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise Refused(f"{where}: expected an object, got {type(obj).__name__}")
    for k in obj:
        if k not in allowed:
            if k in DANGEROUS:
                raise Refused(f"{where}.{k}: the service {DANGEROUS[k]}")
            raise Refused(f"{where}.{k}: not a setting a user's server needs (refused as unknown)")
    return obj


def _under(path: str, roots: list[str]) -> bool:
    """PATH is one of the roots or a direct child of one (PATH/NAME): deeper paths could pass through
    a symlink a user made in their own home."""
    for root in roots:
        root = posixpath.normpath(root)
        if root in ("/", "") or not root.startswith("/"):
            continue
        if path == root or posixpath.dirname(path) == root:
            return True
    return False


def _opts_match(opts: dict, template: dict) -> bool:
    if set(opts) != set(template):
        return False
    for k, want in template.items():
        pattern = "^" + re.escape(str(want)).replace(re.escape("{username}"), r"[A-Za-z0-9._-]+") + "$"
        if not re.match(pattern, str(opts[k])):
            return False
    return True


def check_mount(m: Any, policy: Policy, where: str) -> None:
    """Refused unless the mount is a home or data path, a user's home volume, or a tmpfs."""
    m = _check_keys(m, MOUNT_KEYS, where)
    kind = (m.get("Type") or "volume").lower()
    source = m.get("Source") or ""
    target = m.get("Target") or ""
    for s in (source, target):
        if any(s.rstrip("/").endswith(n) for n in SOCKET_NAMES):
            raise Refused(f"{where}: mounts the engine's socket ({s}): a user's server never gets the engine")
    if kind == "bind":
        if not source.startswith("/"):
            raise Refused(f"{where}: bind source {source!r} is not an absolute path")
        norm = posixpath.normpath(source)
        if source not in (norm, norm + "/") or "/../" in source + "/" or "/./" in source + "/":
            raise Refused(f"{where}: bind source {source!r} is not a plain path (no '..', '.' or '//')")
        if norm in policy.data_binds:  # a data set or a group folder (shared_data), exactly that path
            if policy.data_binds[norm] and not m.get("ReadOnly"):
                raise Refused(f"{where}: data set {norm} must be mounted read-only (shared_data)")
        elif not _under(norm, policy.bind_paths):
            allowed = ", ".join(f"{r} or {r}/NAME" for r in policy.bind_paths) or "none (storage.users.mode is not shared-path)"
            raise Refused(f"{where}: bind-mounts {source}, outside the allowed home and data paths ({allowed})")
        propagation = (m.get("BindOptions") or {}).get("Propagation")
        if propagation not in (None, "", "rprivate", "private"):
            raise Refused(f"{where}: bind propagation {propagation!r} would share mounts with the host")
        _check_keys(m.get("BindOptions"), {"Propagation", "NonRecursive", "CreateMountpoint", "ReadOnlyNonRecursive",
                                           "ReadOnlyForceRecursive"}, where + ".BindOptions")
    elif kind == "volume" and source in policy.data_volumes:  # shared data through its volume driver
        want = policy.data_volumes[source]
        vo = _check_keys(m.get("VolumeOptions"), {"NoCopy", "Labels", "DriverConfig"}, where + ".VolumeOptions")
        dc = _check_keys(vo.get("DriverConfig"), {"Name", "Options"}, where + ".VolumeOptions.DriverConfig")
        if (dc.get("Name") or "local") != want.get("driver") or dict(dc.get("Options") or {}) != dict(want.get("opts") or {}):
            raise Refused(f"{where}: volume {source!r} with another driver or options than shared_data gives it")
        if want.get("read_only") and not m.get("ReadOnly"):
            raise Refused(f"{where}: data set volume {source!r} must be mounted read-only (shared_data)")
    elif kind == "volume":
        if not any(source.startswith(pfx) and len(source) > len(pfx) and "/" not in source
                   for pfx in policy.volume_prefixes):
            raise Refused(f"{where}: mounts volume {source!r}, not a user's home volume "
                          f"({' or '.join(p + 'NAME' for p in policy.volume_prefixes) or 'none allowed'})")
        vo = _check_keys(m.get("VolumeOptions"), {"NoCopy", "Labels", "DriverConfig", "Subpath"}, where + ".VolumeOptions")
        if vo.get("Subpath"):
            raise Refused(f"{where}: volume subpath {vo['Subpath']!r} is not used by users' homes")
        dc = _check_keys(vo.get("DriverConfig"), {"Name", "Options"}, where + ".VolumeOptions.DriverConfig")
        if dc:
            name, opts = dc.get("Name") or "local", dc.get("Options") or {}
            if not policy.volume_driver or name != policy.volume_driver or not _opts_match(opts, policy.volume_driver_opts):
                raise Refused(f"{where}: volume driver {name!r} with options {sorted(opts)} is not the deployment's "
                              f"(storage.users.driver {policy.volume_driver or 'none'} and its driver_opts): a driver's "
                              "options can mount any host path")
    elif kind == "tmpfs":
        _check_keys(m.get("TmpfsOptions"), {"SizeBytes", "Mode", "Options"}, where + ".TmpfsOptions")
    else:
        raise Refused(f"{where}: mount type {kind!r} is not used by users' servers")


def check_networks(nets: Any, allowed: set[str], where: str) -> None:
    for i, n in enumerate(nets or []):
        n = _check_keys(n, {"Target", "Aliases", "DriverOpts"}, f"{where}[{i}]")
        target = n.get("Target") or ""
        if target in HOST_NETWORKS:
            raise Refused(f"{where}[{i}]: joins the {target!r} network (the host's network) instead of the deployment's")
        if target not in allowed:
            raise Refused(f"{where}[{i}]: joins network {target!r}, which is not the deployment's "
                          f"({', '.join(sorted(x for x in allowed if len(x) < 40)) or 'none'})")


def check_service_spec(spec: Any, policy: Policy, networks: set[str]) -> dict[str, list[str]]:
    """Refused unless `spec` is a user's server of this deployment that stays in its container.
    `networks`: the names and IDs of the deployment's networks. Returns the secret and config IDs the
    spec uses (the caller checks their labels)."""
    spec = _check_keys(spec, SERVICE_KEYS, "spec")
    name = spec.get("Name") or ""
    if not name.startswith(policy.service_prefix + "-"):
        raise Refused(f"spec.Name: {name!r} is not a user's server of {policy.deployment} "
                      f"(named {policy.service_prefix}-...)")
    check_labels(spec.get("Labels"), policy, "spec.Labels")
    mode = spec.get("Mode") or {}
    if set(mode) - {"Replicated"} or ((mode.get("Replicated") or {}).get("Replicas", 1) or 0) > 1:
        raise Refused(f"spec.Mode: {json.dumps(mode)}: a user's server is one replicated task")
    ep = _check_keys(spec.get("EndpointSpec"), {"Mode", "Ports"}, "spec.EndpointSpec")
    if ep.get("Ports"):
        raise Refused("spec.EndpointSpec.Ports: publishes ports on the nodes; users' servers are reached over "
                      "the deployment's network")
    check_networks(spec.get("Networks"), networks, "spec.Networks")
    tt = _check_keys(spec.get("TaskTemplate"), TASK_KEYS, "spec.TaskTemplate")
    if tt.get("Runtime") not in (None, "", "container"):
        raise Refused(f"spec.TaskTemplate.Runtime: {tt['Runtime']!r} is not a container")
    if tt.get("LogDriver"):
        raise Refused("spec.TaskTemplate.LogDriver: users' servers log with the engine's default driver")
    check_networks(tt.get("Networks"), networks, "spec.TaskTemplate.Networks")
    cs = _check_keys(tt.get("ContainerSpec"), CONTAINER_KEYS, "spec.TaskTemplate.ContainerSpec")
    where = "spec.TaskTemplate.ContainerSpec"
    extra = sorted(set(cs.get("CapabilityAdd") or []) - set(policy.cap_add))
    if extra:
        raise Refused(f"{where}.CapabilityAdd: adds capabilities {extra} (spawner.cap_add allows "
                      f"{sorted(policy.cap_add) or 'none'})")
    priv = _check_keys(cs.get("Privileges"), {"NoNewPrivileges", "SELinuxContext", "Seccomp", "AppArmor",
                                              "CredentialSpec"}, where + ".Privileges")
    if priv.get("CredentialSpec") or priv.get("SELinuxContext"):
        raise Refused(f"{where}.Privileges: credential specs and SELinux contexts are not for users' servers")
    if (priv.get("Seccomp") or {}).get("Mode") not in (None, "", "default"):
        raise Refused(f"{where}.Privileges.Seccomp: only the engine's default seccomp profile")
    if (priv.get("AppArmor") or {}).get("Mode") not in (None, "", "default"):
        raise Refused(f"{where}.Privileges.AppArmor: only the engine's default AppArmor profile")
    if cs.get("Isolation") not in (None, "", "default"):
        raise Refused(f"{where}.Isolation: {cs['Isolation']!r}")
    for i, m in enumerate(cs.get("Mounts") or []):
        check_mount(m, policy, f"{where}.Mounts[{i}]")
    if policy.cap_drop_all and "ALL" not in [c.upper() for c in cs.get("CapabilityDrop") or []]:
        raise Refused(f"{where}.CapabilityDrop: keeps Docker's default capabilities; users' servers drop ALL "
                      "(and get back only spawner.cap_add)")
    used: dict[str, list[str]] = {"secrets": [], "configs": []}
    for kind, key, id_key in (("secrets", "Secrets", "SecretID"), ("configs", "Configs", "ConfigID")):
        for i, ref in enumerate(cs.get(key) or []):
            ref = _check_keys(ref, {"File", "Runtime", id_key, key[:-1] + "Name"}, f"{where}.{key}[{i}]")
            if not ref.get(id_key):
                raise Refused(f"{where}.{key}[{i}]: no {id_key}")
            used[kind].append(ref[id_key])
    return used


def check_labels(labels: Any, policy: Policy, where: str) -> None:
    labels = labels or {}
    if labels.get("hubops.deployment") != policy.deployment or labels.get("hubops.role") not in policy.roles:
        raise Refused(f"{where}: not labelled as a user's object of {policy.deployment} "
                      f"(hubops.deployment={policy.deployment}, hubops.role in {policy.roles})")


def check_secret_spec(spec: Any, policy: Policy, kind: str) -> None:
    spec = _check_keys(spec, {"Name", "Labels", "Data"}, kind)
    check_labels(spec.get("Labels"), policy, f"{kind}.Labels")


# -- the server ----------------------------------------------------------------------------------
@dataclass
class Request:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str:
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), "")


async def read_head(reader: asyncio.StreamReader) -> list[str] | None:
    lines, size = [], 0
    while True:
        line = await reader.readline()
        if not line:
            return None if not lines else lines
        size += len(line)
        if size > MAX_HEAD:
            raise Refused("request head too large")
        text = line.decode("latin-1").rstrip("\r\n")
        if not text:
            if not lines:
                continue  # stray CRLF between requests
            return lines
        lines.append(text)


def parse_headers(lines: list[str]) -> list[tuple[str, str]]:
    out = []
    for line in lines:
        k, _, v = line.partition(":")
        out.append((k.strip(), v.strip()))
    return out


async def read_body(reader: asyncio.StreamReader, headers: list[tuple[str, str]], *, until_eof: bool,
                    limit: int = MAX_BODY) -> bytes:
    h = {k.lower(): v for k, v in headers}
    if "chunked" in h.get("transfer-encoding", "").lower():
        out = bytearray()
        while True:
            size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while (await reader.readline()).strip():
                    pass
                return bytes(out)
            out += await reader.readexactly(size)
            await reader.readexactly(2)
            if len(out) > limit:
                raise Refused("body too large")
    if "content-length" in h:
        n = int(h["content-length"])
        if n > limit:
            raise Refused("body too large")
        return await reader.readexactly(n) if n else b""
    if until_eof:
        out = bytearray()
        while chunk := await reader.read(65536):
            out += chunk
            if len(out) > limit:
                raise Refused("body too large")
        return bytes(out)
    return b""


class Door:
    """The proxy: one upstream connection per request (the engine's socket is local and cheap)."""

    def __init__(self, policy: Policy, upstream: str = UPSTREAM):
        self.policy = policy
        self.upstream = upstream
        self.network_ids: set[str] = set()

    # -- upstream ------------------------------------------------------------------------------
    async def call(self, method: str, target: str, headers: list[tuple[str, str]] | None = None,
                   body: bytes = b"") -> tuple[str, list[tuple[str, str]], bytes]:
        """One request to the engine; (status line, headers, body) of its answer."""
        reader, writer = await asyncio.open_unix_connection(self.upstream)
        try:
            keep = [(k, v) for k, v in headers or [] if k.lower() not in
                    ("connection", "content-length", "transfer-encoding", "keep-alive", "upgrade", "host")]
            head = [f"{method} {target} HTTP/1.1", "Host: docker", *(f"{k}: {v}" for k, v in keep),
                    f"Content-Length: {len(body)}", "Connection: close", "", ""]
            writer.write("\r\n".join(head).encode("latin-1") + body)
            await writer.drain()
            lines = await read_head(reader)
            if not lines:
                raise ConnectionError("the engine closed the connection without an answer")
            status, resp_headers = lines[0], parse_headers(lines[1:])
            code = int(status.split()[1])
            data = b"" if method == "HEAD" or code in (204, 304) or 100 <= code < 200 else \
                await read_body(reader, resp_headers, until_eof=True, limit=MAX_ANSWER)
            return status, resp_headers, data
        finally:
            writer.close()

    async def inspect(self, kind: str, ident: str) -> dict | None:
        status, _, data = await self.call("GET", f"/{kind}/{urllib.parse.quote(ident, safe='')}")
        code = int(status.split()[1])
        if code == 404:
            return None
        if code != 200:
            raise Refused(f"could not inspect {kind[:-1]} {ident}: {status} {data[:200]!r}")
        return json.loads(data)

    async def allowed_networks(self, refresh: bool = False) -> set[str]:
        if refresh or not self.network_ids:
            ids = set()
            for name in self.policy.networks:
                net = await self.inspect("networks", name)
                if net:
                    ids.update({net["Id"], net.get("Name", name)})
            self.network_ids = ids
        return set(self.policy.networks) | self.network_ids

    async def owned(self, kind: str, ident: str) -> None:
        obj = await self.inspect(kind, ident)
        if obj is None:
            return  # the engine answers 404 itself
        check_labels((obj.get("Spec") or {}).get("Labels"), self.policy, f"{kind[:-1]} {ident}")

    async def check_spec(self, body: bytes) -> None:
        try:
            spec = json.loads(body or b"{}")
        except ValueError:
            raise Refused("the service spec is not JSON") from None
        try:
            used = check_service_spec(spec, self.policy, await self.allowed_networks())
        except Refused as e:
            if "network" not in str(e):
                raise
            # a network recreated since (a new ID): look once more
            used = check_service_spec(spec, self.policy, await self.allowed_networks(refresh=True))
        for kind, ids in used.items():
            for ident in ids:
                obj = await self.inspect(kind, ident)
                if obj is None:
                    raise Refused(f"{kind[:-1]} {ident} used by the spec does not exist")
                check_labels((obj.get("Spec") or {}).get("Labels"), self.policy, f"{kind[:-1]} {ident}")

    async def decide(self, req: Request) -> tuple[str, str]:
        """(action, arg) when the request may go on; Refused otherwise."""
        action, arg = route(req.method, req.target)
        if action == "service-create":
            await self.check_spec(req.body)
        elif action == "service-update":
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(req.target).query)
            if "rollback" in query:
                raise Refused("service rollback: only updates with a checked spec")
            await self.owned("services", arg)
            await self.check_spec(req.body)
        elif action == "service-delete":
            await self.owned("services", arg)
        elif action == "network-inspect":
            if arg not in await self.allowed_networks() and arg not in await self.allowed_networks(refresh=True):
                raise Refused(f"network {arg}: not the deployment's")
        elif action in ("secret-create", "config-create"):
            try:
                spec = json.loads(req.body or b"{}")
            except ValueError:
                raise Refused(f"the {action[:-7]} spec is not JSON") from None
            check_secret_spec(spec, self.policy, action[:-7])
        elif action in ("secret-delete", "config-delete"):
            await self.owned(action[:-7] + "s", arg)
        return action, arg

    def make_home(self, name: str) -> dict:
        """shared-path: ROOT/NAME exists, a directory (not a link) owned by the users' owner."""
        root = self.policy.home_root
        if not root:
            raise Refused("POST /hubops/homes: storage.users.mode is not shared-path")
        if not NAME_RE.match(name) or name in (".", ".."):
            raise Refused(f"home {name!r}: not a user's escaped name")
        path = posixpath.join(root, name)
        created = False
        if not os.path.lexists(path):
            os.mkdir(path, 0o700)
            os.chown(path, self.policy.home_uid, self.policy.home_gid)
            created = True
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode):
            raise Refused(f"home {path} exists and is not a directory")
        return {"path": path, "created": created, "uid": st.st_uid, "gid": st.st_gid}

    # -- serving -------------------------------------------------------------------------------
    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                lines = await read_head(reader)
                if not lines:
                    break
                method, target, version = (lines[0].split(" ") + ["", ""])[:3]
                headers = parse_headers(lines[1:])
                body = await read_body(reader, headers, until_eof=False)
                req = Request(method, target, version, headers, body)
                close = req.header("connection").lower() == "close" or version == "HTTP/1.0"
                await self.serve(req, writer)
                if close:
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception:  # noqa: BLE001 - one bad connection must not stop the door
            log.exception("apiproxy: connection failed")
        finally:
            writer.close()

    async def serve(self, req: Request, writer: asyncio.StreamWriter) -> None:
        what = f"{req.method} {_VERSION.sub('', req.target, count=1)}"
        try:
            action, arg = await self.decide(req)
            if action == "home":
                answer = json.dumps(self.make_home(arg)).encode()
                status, headers, data = "HTTP/1.1 200 OK", [("Content-Type", "application/json")], answer
            else:
                status, headers, data = await self.call(req.method, req.target, req.headers, req.body)
            # The healthcheck pings every 10 s: not worth a line each.
            log.log(logging.DEBUG if action == "pass" and what.endswith("/_ping") else logging.INFO,
                    "allow  %s -> %s", what, status.split(" ", 1)[1] if " " in status else status)
        except Refused as e:
            log.warning("refuse %s: %s", what, e)
            msg = f"refused by hubops's Docker API door: {e}"
            status, headers, data = "HTTP/1.1 403 Forbidden", [("Content-Type", "application/json")], \
                json.dumps({"message": msg}).encode()
        except (OSError, ValueError) as e:
            log.error("error  %s: %s", what, e)
            status, headers, data = "HTTP/1.1 502 Bad Gateway", [("Content-Type", "application/json")], \
                json.dumps({"message": f"hubops's Docker API door: the engine did not answer: {e}"}).encode()
        keep = [(k, v) for k, v in headers if k.lower() not in ("connection", "content-length", "transfer-encoding",
                                                                "keep-alive")]
        head = [status, *(f"{k}: {v}" for k, v in keep), f"Content-Length: {len(data)}", "", ""]
        writer.write("\r\n".join(head).encode("latin-1") + (b"" if req.method == "HEAD" else data))
        await writer.drain()


async def serve_forever(policy: Policy, listen: str = LISTEN, upstream: str = UPSTREAM,
                        owner: tuple[int, int] | None = None) -> None:
    door = Door(policy, upstream)
    os.makedirs(posixpath.dirname(listen), exist_ok=True)
    # Made beside and renamed over the socket a previous task left: the path never goes missing
    # (the hub sees "connection refused" for a moment, never "no such file").
    fresh = f"{listen}.{os.getpid()}.new"
    try:
        os.unlink(fresh)
    except FileNotFoundError:
        pass
    old = os.umask(0o177)
    try:
        server = await asyncio.start_unix_server(door.handle, path=fresh)
    finally:
        os.umask(old)
    if owner is not None:
        os.chown(fresh, *owner)
    os.chmod(fresh, 0o600)
    os.rename(fresh, listen)
    log.info("apiproxy: %s -> %s for deployment %s (owner %s)", listen, upstream, policy.deployment, owner)
    loop = asyncio.get_running_loop()
    stopping = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):  # PID 1 ignores them unless handled: stop at once
        try:
            loop.add_signal_handler(sig, lambda: stopping.done() or stopping.set_result(None))
        except (RuntimeError, ValueError):  # not the main thread (a test runs the door in one)
            pass
    async with server:
        serving = asyncio.ensure_future(server.serve_forever())
        await asyncio.wait([serving, stopping], return_when=asyncio.FIRST_COMPLETED)
        serving.cancel()
        log.info("apiproxy: stopped")


def ping(listen: str = LISTEN) -> int:
    """The healthcheck: the door answers /_ping through to the engine."""
    import socket

    s = socket.socket(socket.AF_UNIX)
    s.settimeout(4)
    s.connect(listen)
    s.sendall(b"GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n")
    answer = s.recv(64)
    return 0 if answer.startswith(b"HTTP/1.1 200") else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["ping"]:
        return ping(argv[1] if len(argv) > 1 else LISTEN)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(message)s")
    policy = Policy.from_dict(json.loads(os.environ[POLICY_ENV]))
    owner = os.environ.get("HUBOPS_APIPROXY_OWNER")
    uid_gid = tuple(int(x) for x in owner.split(":")) if owner else None
    asyncio.run(serve_forever(policy, os.environ.get("HUBOPS_APIPROXY_LISTEN", LISTEN),
                              os.environ.get("HUBOPS_APIPROXY_UPSTREAM", UPSTREAM), uid_gid))  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    sys.exit(main())
