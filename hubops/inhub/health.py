"""The hub's healthcheck: tell a busy hub from a dead one (runs in the hub's container).

Before: the check fetched https://127.0.0.1:8000/hub/health through the proxy with a 4 s timeout
and Swarm replaced the hub after 3 failures. Under a burst of 20 spawns on a 2-core node the check
(a TLS handshake with the proxy, then the hub's event loop, on a CPU-starved machine) took longer
than that three times in a row: Swarm killed the hub, and with it the proxy, every request in
flight, and about 50 s of service.

Now the hub's event loop touches a heartbeat file every HEARTBEAT_EVERY seconds (started from
jupyterhub_config.py), and the check (`python3 -m hubops.inhub.health`, exit 0 healthy, 1 not):
- fails at once when nothing listens on the hub's or the proxy's port (connection refused);
- fails when the heartbeat is older than STALE_AFTER seconds: the loop has stopped (a hang);
- passes when /hub/health, asked on the hub's own port (no TLS, no proxy), answers 200;
- passes as "busy" when /hub/health is slow but the heartbeat is fresh (the loop runs, late);
- fails on any other answer, or a slow answer with no heartbeat to vouch for the loop.
Only the standard library: this runs in the hub image's python for every check (every 5 s).
"""
from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

HEARTBEAT = Path(os.environ.get("HUBOPS_HEARTBEAT", "/tmp/hubops-hub-heartbeat"))
HEARTBEAT_EVERY = 2.0
STALE_AFTER = 60.0
HUB_PORT = 8081
PROXY_PORT = 8000
HTTP_TIMEOUT = 3.0
CONNECT_TIMEOUT = 5.0
TEMPLATES = str(Path(__file__).resolve().parent / "templates")


def start_heartbeat(path: Path = HEARTBEAT, every: float = HEARTBEAT_EVERY) -> bool:
    """Touch `path` every `every` seconds from the running asyncio loop (the hub's: the config file is
    loaded inside it). Returns False, doing nothing, when no loop runs (the config read by a test)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return False

    def beat() -> None:
        try:
            path.touch()
        except OSError:
            pass  # a full /tmp: the check then sees a stale beat and says so
        loop.call_later(every, beat)

    beat()
    return True


def heartbeat_age(path: Path = HEARTBEAT) -> float | None:
    try:
        return max(0.0, time.time() - path.stat().st_mtime)
    except OSError:
        return None


def check(*, hub_port: int = HUB_PORT, proxy_port: int = PROXY_PORT, heartbeat: Path = HEARTBEAT,
          stale_after: float = STALE_AFTER, http_timeout: float = HTTP_TIMEOUT) -> tuple[bool, str]:
    """(healthy, why)."""
    slow = []
    for what, port in (("hub", hub_port), ("proxy", proxy_port)):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=CONNECT_TIMEOUT).close()
        except ConnectionRefusedError:
            return False, f"nothing listens on the {what}'s port {port}"
        except OSError as e:  # a full accept queue: busy, not dead
            slow.append(f"{what} port {port}: {e}")
    age = heartbeat_age(heartbeat)
    if age is not None and age > stale_after:
        return False, f"the hub's event loop has not run for {age:.0f} s (heartbeat {heartbeat})"
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{hub_port}/hub/health", timeout=http_timeout) as r:
            status = r.status
    except urllib.error.HTTPError as e:
        return False, f"/hub/health answered HTTP {e.code}"
    except (OSError, urllib.error.URLError) as e:
        if age is None:
            return False, f"/hub/health did not answer ({e}) and there is no heartbeat"
        return True, (f"busy: /hub/health did not answer within {http_timeout:.0f} s ({e}), but the hub's event "
                      f"loop ran {age:.1f} s ago" + (f"; slow to accept: {', '.join(slow)}" if slow else ""))
    if status != 200:
        return False, f"/hub/health answered HTTP {status}"
    return True, f"/hub/health answered in {time.monotonic() - t0:.2f} s" + (
        f" (heartbeat {age:.1f} s old)" if age is not None else "")


def main() -> int:
    ok, why = check()
    print(("healthy: " if ok else "unhealthy: ") + why)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
