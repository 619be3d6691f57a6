"""hubops: Jupyter runbooks that take Docker hosts to a TLS-secured, authenticated JupyterHub on
Docker Swarm, and keep it running. The stage notebooks in runbooks/ call this library."""
from __future__ import annotations

import logging

from . import auth, deploy, hosts, images, network, nodes, preflight, renew, storage, swarm, teardown, tls, verify  # noqa: F401
from . import backup, diagnose, upgrade  # noqa: F401  (day-2: backup and restore, diagnose, upgrade)
from .engine import Clients
from .errors import (  # noqa: F401
    ConflictError,
    DockerOpError,
    HubopsError,
    ParameterError,
    PreflightError,
    TLSError,
    VerifyError,
)
from . import progress  # noqa: F401  (progress widgets and confirmation)
from .params import load_params
from .progress import confirm
from .record import record
from .result import Result

__version__ = "0.1.0"
__all__ = ["Clients", "Result", "confirm", "load_params", "record", "log_to_notebook", "__version__"]


def log_to_notebook(level: int = logging.INFO) -> None:
    """Show hubops's log lines in the notebook (a choice the notebook makes, not the library)."""
    logger = logging.getLogger("hubops")
    if not any(getattr(h, "_hubops_notebook", False) for h in logger.handlers):
        h = logging.StreamHandler()
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        h._hubops_notebook = True  # type: ignore[attr-defined]
        logger.addHandler(h)
    logger.setLevel(level)
