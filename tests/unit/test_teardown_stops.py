"""Teardown asks the hub to stop users' servers side by side (teardown.stop_servers), not one after another:
each stop waits for its old container to go, and a hundred servers stopped in turn took minutes
(bench/scale.py). The hub's API is played by a small object here; the real hub's figures are the bench's."""
from __future__ import annotations

import threading

from hubops.ops import teardown


class Hub:
    """Answers stops; each DELETE waits at a barrier that only opens once `parties` stops are in progress
    at the same moment (one after another, the barrier breaks after its timeout and the stop fails)."""

    def __init__(self, parties: int, refuse: tuple[str, ...] = ()):
        self.barrier = threading.Barrier(parties, timeout=20)
        self.refuse = refuse
        self.lock = threading.Lock()
        self.stopped: list[str] = []
        self.waited: list[str] = []
        self.broken = 0

    def request(self, method, path, *, ok, timeout=None):
        assert method == "DELETE"
        try:
            self.barrier.wait()
        except threading.BrokenBarrierError:
            with self.lock:
                self.broken += 1
        if any(f"/users/{u}/" in path for u in self.refuse):
            raise teardown.VerifyError(f"DELETE {path}: HTTP 500")
        with self.lock:
            self.stopped.append(path)

    def wait_server(self, name, *, ready, timeout, server_name=""):
        assert ready is False
        with self.lock:
            self.waited.append(f"{name}/{server_name}")
        return 0.0


def test_servers_are_stopped_side_by_side():
    servers = [(f"u{i:03d}", "") for i in range(2 * teardown.STOP_CONCURRENCY)]
    hub = Hub(teardown.STOP_CONCURRENCY)
    teardown.stop_servers(hub, servers, timeout=60)
    assert hub.broken == 0, "the stops ran one after another, not STOP_CONCURRENCY at a time"
    assert sorted(hub.stopped) == sorted(f"/hub/api/users/{u}/server" for u, _ in servers)
    assert sorted(hub.waited) == sorted(f"{u}/" for u, _ in servers)


def test_a_refused_stop_does_not_stop_the_others_and_is_not_waited_for(caplog):
    servers = [("alice", ""), ("bob", ""), ("bob", "busy"), ("carol", "")]
    hub = Hub(len(servers), refuse=("bob",))
    teardown.stop_servers(hub, servers, timeout=60, concurrency=len(servers))
    assert hub.broken == 0
    assert sorted(hub.stopped) == ["/hub/api/users/alice/server", "/hub/api/users/carol/server"]
    assert sorted(hub.waited) == ["alice/", "carol/"]
    assert "the hub did not stop server bob/busy" in caplog.text
