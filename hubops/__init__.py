"""hubops: Jupyter runbooks that take Docker hosts to a TLS-secured, authenticated JupyterHub on
Docker Swarm, and keep it running. The stage notebooks in runbooks/ call this library.

The package shows the architecture (the import rules are checked by tests/unit/test_layout.py):

    core/    parameters, engine clients, labels, results, errors, progress, operator folder,
             paths, versioned Swarm objects, certificates, the notebook record cell
    hub/     the running hub (find it, wait for it, its API) and its configuration
    inhub/   code that runs inside the hub's container (the spawner)
    stages/  one module per deploy runbook (runbooks/NN-NAME.ipynb -> stages/NAME.py)
    ops/     one module per day-2 runbook (runbooks/ops/NAME.ipynb -> ops/NAME.py)
    audit/   the record: runner, kernels, ledger, redaction, report
    lab/     several engines on one machine, for rehearsal and tests
    cli/     the `hubops` command

Importing hubops is cheap: the names notebooks use (load_params, Clients, record, confirm,
Result, log_to_notebook) are loaded on first use, so `hubops check` never loads the Docker SDK.
"""
from __future__ import annotations

import logging
from importlib import import_module
from importlib.metadata import PackageNotFoundError, version as _dist_version
from typing import Any

try:
    __version__ = _dist_version("hubops")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

# name -> module that defines it; resolved on first access (PEP 562)
_LAZY = {
    "load_params": "hubops.core.params",
    "Clients": "hubops.core.engine",
    "record": "hubops.core.record",
    "confirm": "hubops.core.progress",
    "Result": "hubops.core.result",
    "HubopsError": "hubops.core.errors",
    "ParameterError": "hubops.core.errors",
}

__all__ = [*_LAZY, "log_to_notebook", "__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hubops' has no attribute {name!r}")


def log_to_notebook(level: int = logging.INFO) -> None:
    """Show hubops's log lines in the notebook (a choice the notebook makes, not the library)."""
    logger = logging.getLogger("hubops")
    if not any(getattr(h, "_hubops_notebook", False) for h in logger.handlers):
        h = logging.StreamHandler()
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        h._hubops_notebook = True  # type: ignore[attr-defined]
        logger.addHandler(h)
    logger.setLevel(level)
