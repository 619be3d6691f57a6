"""Shared fixtures: parameter files for throwaway deployments on the local engine."""
from __future__ import annotations

import pytest

from tests.helpers import make_params


@pytest.fixture
def params_factory(tmp_path):
    def factory(deployment: str = "itest", **kw):
        kw.setdefault("port", 8445)
        kw.setdefault("subnet", "10.233.0.0/24")
        return make_params(tmp_path, deployment, **kw)
    return factory
