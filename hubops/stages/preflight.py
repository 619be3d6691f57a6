"""00-preflight: parameters valid, every host's engine answers; versions and resources recorded.

Changes nothing on any host.
"""
from __future__ import annotations

import logging
import platform
import shutil
from concurrent.futures import ThreadPoolExecutor

from hubops.core.engine import MIN_ENGINE, TESTED, Clients, engine_release, mixed_versions  # noqa: F401
from hubops.core.errors import PreflightError
from hubops.core.params import Host, Loaded
from hubops.core.result import Result
from hubops.stages.profiles import check_nodes as check_profiles, generic_resources

log = logging.getLogger("hubops")

MIN_API = (1, 41)
def _api(v: str) -> tuple[int, int]:
    major, minor = v.split(".")[:2]
    return int(major), int(minor)


def refuse_old(host: str, version: dict) -> None:
    """Raise PreflightError naming `host` when its engine (`docker version`'s answer) is older than
    the oldest one hubops is tested on."""
    release = engine_release(version.get("Version", ""))
    if release is not None and release < MIN_ENGINE:
        raise PreflightError(
            f"host {host}: Docker {version['Version']} is older than {'.'.join(map(str, MIN_ENGINE))}, the "
            f"oldest engine hubops is tested on (tested: {', '.join(TESTED)}); upgrade Docker on that host"
        )
    if _api(version["ApiVersion"]) < MIN_API:
        raise PreflightError(
            f"host {host}: engine API {version['ApiVersion']} is older than "
            f"{'.'.join(map(str, MIN_API))} (Docker 20.10); upgrade Docker on that host"
        )


def probe(clients: Clients, host: Host) -> dict:
    """Ask one engine who it is. Raises PreflightError naming the host and what to do."""
    try:
        c = clients[host.name]
        c.ping()
        version = c.version()
        info = c.info()
    except PreflightError:
        raise
    except Exception as e:  # connection refused, TLS failure, timeout: all mean "not reachable"
        if host.url.startswith("ssh://"):
            raise PreflightError(
                f"host {host.name} ({host.url}): logged in over ssh, but the Docker engine does not answer through "
                f"the tunnel to {host.engine_socket}: {e}. On the host: the engine must run, the ssh user must be "
                "allowed to use its socket (root, or the docker group), and sshd must allow forwarding "
                "(AllowTcpForwarding and AllowStreamLocalForwarding, both on by default; its log says "
                "'request was denied' otherwise); or fix hosts[].engine_socket"
            ) from e
        raise PreflightError(
            f"host {host.name} ({host.url}): the Docker engine does not answer: {e}. "
            "Start the engine (for the local default: `dockerd`, or `bash .ci/ensure-docker`) "
            "or fix hosts[].url / tls in the parameter file."
        ) from e
    refuse_old(host.name, version)
    return {
        "engine": version["Version"],
        "api": version["ApiVersion"],
        "min_api": version.get("MinAPIVersion"),
        "containerd": next((c.get("Version") for c in version.get("Components") or []
                            if c.get("Name") == "containerd"), None),
        "storage_driver": info.get("Driver"),
        "cgroup": f"v{info.get('CgroupVersion', '1')} ({info.get('CgroupDriver')})",
        "os": info.get("OperatingSystem"),
        "kernel": info.get("KernelVersion"),
        "arch": info.get("Architecture"),
        "cpus": info.get("NCPU"),
        "memory_gib": round(info.get("MemTotal", 0) / 2**30, 1),
        "mem_bytes": info.get("MemTotal", 0),
        "generic_resources": generic_resources(info),  # spawn profiles' GPUs (stages/profiles.py)
        "swarm": info.get("Swarm", {}).get("LocalNodeState"),
        "node_name": info.get("Name"),
        "reached": ("ssh, host key pinned" if host.url.startswith("ssh://") else
                    "tcp+TLS, client certificate" if host.url.startswith("tcp://") else "unix socket"),
    }


def check(p: Loaded, clients: Clients) -> Result:
    """Probe every host in parallel and record what each runs. Fails on the first host that is unfit."""
    r = Result("preflight")
    hosts = p.hosts.all
    with ThreadPoolExecutor(max_workers=min(8, len(hosts))) as pool:
        facts = list(pool.map(lambda h: probe(clients, h), hosts))
    for h, f in zip(hosts, facts):
        r.keep(f"host {h.name}", f"Docker {f['engine']} (API {f['api']}), {f['cpus']} CPUs, {f['memory_gib']} GiB, "
                                 f"over {f['reached']}")
        r.facts[h.name] = f
    engines = {h.name: f for h, f in zip(hosts, facts)}
    r.facts["engines"] = [{"host": h, "engine": f["engine"], "api": f["api"], "containerd": f["containerd"],
                           "storage": f["storage_driver"], "cgroup": f["cgroup"]} for h, f in engines.items()]
    warning = mixed_versions(engines)
    if warning:
        log.warning("%s", warning)
        r.check("engine versions", f"WARNING: {warning}")
        r.facts["warning"] = warning
    else:
        release = engine_release(facts[0]["engine"])
        tested = release is not None and ".".join(map(str, release)) in TESTED
        r.keep("engine versions", f"every host runs Docker {facts[0]['engine']}"
               + ("" if tested else f" (not among the tested releases {', '.join(TESTED)})"))
    check_profiles(p, engines, r)  # generic resources per node; profiles no node can take are refused
    archs = {f["arch"] for f in facts}
    if len(archs) > 1:
        raise PreflightError(
            f"hosts run different architectures {sorted(archs)}; the hub and single-user images are built "
            "for one: use hosts of one architecture"
        )
    r.facts["operator_machine"] = f"{platform.node()} ({platform.system()} {platform.release()})"
    r.facts["parameters"] = f"{p.source} (sha256 {p.digest[:12]})"
    r.facts["users"] = f"{len(p.allowed)} allowed, admins: {', '.join(p.admins)}"
    from hubops.stages import shared_data

    r.items += shared_data.check_sources(p, clients).items  # shared_data: sources on every server node
    if shutil.which("debootstrap") is None:
        r.facts["debootstrap"] = "not installed (needed only when no registry answers for the base image)"
    if p.hub_db_postgres and p.storage.hub.pg.external:  # answers, TLS verifies: refused before any change
        from hubops.hub import hubdb

        r.check("hub database", hubdb.probe_tls(p))
    return r
