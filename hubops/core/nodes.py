"""Changing a Swarm node's spec when others may change it too.

Every deployment on a swarm labels the same nodes (`hubops.DEPLOYMENT.hub`, ...), so two deploys or
teardowns at once update one node's spec together. Swarm refuses an update made from an outdated
version ("update out of sequence"); writing back a spec read before someone else's update would
instead erase their change. `update_node` reads the node, applies the change to what it read, writes
with that version, and on a refusal reads again and reapplies.
"""
from __future__ import annotations

import random
import time
from typing import Any, Callable

import docker.errors

ATTEMPTS = 10


def update_node(node: Any, change: Callable[[dict], None]) -> None:
    """Apply `change` (which edits a node spec in place) to the node's current spec and write it;
    retried on Swarm's "update out of sequence" with the spec read again each time."""
    for attempt in range(ATTEMPTS):
        node.reload()
        spec = dict(node.attrs["Spec"])
        spec["Labels"] = dict(spec.get("Labels") or {})
        change(spec)
        try:
            node.update(spec)  # with the version just read
            return
        except docker.errors.APIError as e:
            if "out of sequence" not in str(e) or attempt == ATTEMPTS - 1:
                raise
            time.sleep(0.05 + random.random() * 0.2)  # another update landed first: read it and reapply
