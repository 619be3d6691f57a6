"""10-hosts: facts per host (engine, kernel, storage driver, clock skew, free disk) and the
labels each node will carry. Changes nothing; node labels are applied by 20-swarm, once the
nodes are in the swarm.
"""
from __future__ import annotations

import re
import shutil
from datetime import datetime, timezone

from hubops.core.engine import Clients, docker_op
from hubops.core.errors import PreflightError
from hubops.core.params import Loaded
from hubops.core.result import Result

MAX_SKEW_S = 10.0  # Swarm's TLS and Raft tolerate little clock skew; certificates even less


def node_labels(p: Loaded, host_name: str) -> dict[str, str]:
    """The labels hubops puts on a host's swarm node."""
    host = next(h for h in p.hosts.all if h.name == host_name)
    out = dict(host.labels)
    out["hubops.managed"] = "true"
    out[f"hubops.{p.deployment}.host"] = host.name
    if host.name == p.hub_host.name:
        out[p.hub_node_label] = "true"
    return out


def _parse_time(s: str) -> datetime:
    """Docker's RFC 3339 time (nanoseconds, Z or an offset) as an aware datetime."""
    m = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?$", s)
    if not m:
        raise ValueError(f"unexpected time format {s!r}")
    frac = (m.group(2) or "0")[:6]
    tz = (m.group(3) or "Z").replace("Z", "+00:00")
    return datetime.fromisoformat(f"{m.group(1)}.{frac}{tz}")


def facts(p: Loaded, clients: Clients, *, min_free_gib: float = 5.0) -> Result:
    """Read each host's facts; refuse hosts whose clock is off or whose engine runs out of disk."""
    r = Result("hosts")
    for h in p.hosts.all:
        c = clients[h.name]
        with docker_op("read engine info", h.name):
            info = c.info()
        skew = (_parse_time(info["SystemTime"]) - datetime.now(timezone.utc)).total_seconds()
        if abs(skew) > MAX_SKEW_S:
            raise PreflightError(
                f"host {h.name}: its clock is {skew:+.1f} s off this machine's; run NTP (chrony or "
                "systemd-timesyncd) on it, Swarm and TLS need clocks within a few seconds"
            )
        f = {
            "node_name": info.get("Name"),
            "storage_driver": info.get("Driver"),
            "docker_root": info.get("DockerRootDir"),
            "cgroup": f"v{info.get('CgroupVersion', '?')} ({info.get('CgroupDriver')})",
            "clock_skew_s": round(skew, 2),
            "labels": node_labels(p, h.name),
        }
        if h.url.startswith("unix://"):
            # A local engine: its data root is on this machine's disk, so its free space can be read.
            try:
                free = shutil.disk_usage(info.get("DockerRootDir", "/")).free / 2**30
            except OSError:
                free = None
            if free is not None:
                f["free_disk_gib"] = round(free, 1)
                if free < min_free_gib:
                    raise PreflightError(
                        f"host {h.name}: only {free:.1f} GiB free under {info.get('DockerRootDir')}; "
                        f"the images need about 2 GiB and users' servers more: free at least {min_free_gib} GiB"
                    )
        r.keep(f"host {h.name}", f"node name {f['node_name']}, clock skew {skew:+.2f} s")
        r.facts[h.name] = f
    return r
