"""Integration tests run against a real Docker engine; none answering is a failure, not a skip."""
from __future__ import annotations

import os

import docker
import pytest


@pytest.fixture(scope="session")
def docker_client() -> docker.DockerClient:
    """A client for the local engine (DOCKER_HOST, else /var/run/docker.sock)."""
    where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except Exception as e:  # noqa: BLE001 - any failure to reach the engine ends the run loudly
        pytest.fail(
            f"no Docker engine answers at {where} ({e}); integration tests need one: "
            "start dockerd (see ENVIRONMENT.md) or set DOCKER_HOST",
            pytrace=False,
        )
    yield client
    client.close()
