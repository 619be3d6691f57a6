"""Shared fixtures: parameter files for throwaway deployments on the local engine, and a guard that
puts back what a test changed in the process (environment, working directory, logging)."""
from __future__ import annotations

import logging
import os

import pytest

from tests.helpers import free_port, free_subnet, make_params, run_name


@pytest.fixture
def params_factory(tmp_path):
    """Parameter files for deployments of this run: `factory("itest")` is deployment `itest-RUN`
    (tests/helpers.RUN), with a free hub port and a free overlay subnet unless given."""
    def factory(deployment: str = "itest", **kw):
        if "port" not in kw:
            kw["port"] = free_port()
        if "subnet" not in kw:
            kw["subnet"] = free_subnet()
        return make_params(tmp_path, run_name(deployment), **kw)
    return factory


def _logging_state() -> dict:
    names = ["", "hubops", *[n for n in logging.root.manager.loggerDict if n.startswith("hubops.")]]
    state = {}
    for n in names:
        lg = logging.getLogger(n)
        state[n] = (list(lg.handlers), lg.level, lg.propagate, list(lg.filters), lg.disabled)
    return state


@pytest.fixture(autouse=True)
def restore_process_state():
    """Every test leaves the process as it found it: environment variables, the working directory,
    and the handlers, levels and filters of the root and hubops loggers (the CLI adds a handler each
    time it is invoked in-process)."""
    env = dict(os.environ)
    cwd = os.getcwd()
    logs = _logging_state()
    yield
    if os.getcwd() != cwd:
        os.chdir(cwd)
    if dict(os.environ) != env:
        os.environ.clear()
        os.environ.update(env)
    for n, (handlers, level, propagate, filters, disabled) in logs.items():
        lg = logging.getLogger(n)
        lg.handlers[:] = handlers
        lg.setLevel(level)
        lg.propagate = propagate
        lg.filters[:] = filters
        lg.disabled = disabled
    for n in [n for n in logging.root.manager.loggerDict if n.startswith("hubops.") and n not in logs]:
        lg = logging.getLogger(n)  # a logger a test made: no handler of its own left behind
        lg.handlers.clear()
        lg.propagate = True


def pytest_report_header(config):
    from tests.helpers import RUN

    return f"hubops test run {RUN}: this run's deployments and labs end in -{RUN} (HUBOPS_TEST_RUN sets it)"
