"""Optional monitoring (`monitoring.enabled`): names, Prometheus's scrape token, its configuration.

Pure pieces shared by the deploy stage (hubops/stages/monitoring.py), the hub's configuration
(hubops/hub/config.py) and the day-2 plots (hubops/ops/metrics.py).

Prometheus scrapes the hub's ``/hub/metrics`` with a token of its own: the JupyterHub service
``prometheus``, whose role has JupyterHub's ``read:metrics`` scope and nothing else. The token is
made like hubops's own (hubops.core.api_token): its value and expiry are kept in the operator folder
(``generated-metrics-token``, ``metrics-token-expires``; 0600, so the redactor knows the value), it
reaches the hub and Prometheus as a Swarm secret, the hub's configuration gives the current token
its expiry at the hub's start and deletes the service's older configuration tokens, and 80-deploy
makes a new one when fewer than `RENEW_DAYS` are left.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Optional

from . import api_token
from .params import Loaded

STAGE = "80-deploy"
TOKEN_ROLE = "metrics-token"
TOKEN_FILE = "generated-metrics-token"  # generated_file(TOKEN_ROLE): the redactor reads the operator folder
EXPIRES_FILE = "metrics-token-expires"
SECRET_FILE = "hubops-metrics-token"  # under /run/secrets in the hub's and Prometheus's containers
HUB_SERVICE_NAME = "prometheus"  # the JupyterHub service the token belongs to
ROLE_NAME = "hubops-metrics"
SCOPES = ["read:metrics"]  # what Prometheus may do on the hub, and no more
LIFETIME_DAYS = api_token.LIFETIME_DAYS
RENEW_DAYS = api_token.RENEW_DAYS

PROMETHEUS_PORT = 9090
NODE_EXPORTER_PORT = 9100
PROMETHEUS_UID = 990  # the prometheus user of images/prometheus (fixed there)
CONFIG_PATH = "/etc/prometheus/prometheus.yml"
DATA_DIR = "/prometheus"
# hubops.role of the monitoring services: not users' servers (status, diagnose tell them apart).
ROLES = ("prometheus", "node-exporter")


def prometheus_service(p: Loaded) -> str:
    return f"{p.prefix}-prometheus"


def node_exporter_service(p: Loaded) -> str:
    return f"{p.prefix}-node-exporter"


def data_volume(p: Loaded) -> str:
    return f"{p.prefix}-prometheus-data"


def enabled(p: Loaded) -> bool:
    mon = getattr(p, "monitoring", None)
    return bool(mon is not None and mon.enabled)


def read_expiry(p: Loaded) -> Optional[datetime]:
    """When the kept scrape token expires (UTC), or None."""
    return api_token.read_expiry(p, EXPIRES_FILE)


def ensure_token(p: Loaded, *, dry_run: bool = False, now: Optional[datetime] = None) -> tuple[str, Optional[str]]:
    """Prometheus's hub token: (value, why it is new, or None when the kept one is still good), kept
    and rotated as hubops's own (core/api_token.py), in files of its own."""
    return api_token.ensure(p, dry_run=dry_run, now=now, token_file=TOKEN_FILE, expires_file=EXPIRES_FILE)


def hub_lines(p: Loaded) -> list[str]:
    """jupyterhub_config.py lines: the `prometheus` service with its token (a Swarm secret), a role with
    `read:metrics` only, and at the hub's start the token's expiry set and rotated tokens deleted."""
    if not enabled(p):
        return []
    lines = [
        "",
        "# --- monitoring: Prometheus scrapes /hub/metrics with a token that may only read metrics ---",
        f"c.JupyterHub.services.append({{'name': {HUB_SERVICE_NAME!r}, 'api_token': secret({SECRET_FILE!r})}})",
        f"c.JupyterHub.load_roles.append({{'name': {ROLE_NAME!r}, 'description': 'Prometheus: read the hub metrics',",
        f"                                 'scopes': {SCOPES!r}, 'services': [{HUB_SERVICE_NAME!r}]}})",
        "c.JupyterHub.authenticate_prometheus = True",
    ]
    expires = read_expiry(p)
    if expires is None:
        return lines
    naive = expires.astimezone(timezone.utc).replace(tzinfo=None)  # JupyterHub stores naive UTC
    return lines + [
        "import datetime as _dt_metrics",
        "from jupyterhub import orm as _orm_metrics",
        "from jupyterhub.app import JupyterHub as _JupyterHub_metrics",
        f"_HUBOPS_METRICS_TOKEN_EXPIRES = _dt_metrics.datetime.fromisoformat({naive.isoformat()!r})",
        "_hubops_metrics_prev_init_api_tokens = _JupyterHub_metrics.init_api_tokens",
        "",
        "async def _hubops_metrics_init_api_tokens(self):",
        "    await _hubops_metrics_prev_init_api_tokens(self)",
        f"    service = _orm_metrics.Service.find(self.db, {HUB_SERVICE_NAME!r})",
        f"    current = secret({SECRET_FILE!r})",
        "    for token in list(service.api_tokens if service is not None else []):",
        "        if token.note != 'from config':",
        "            continue",
        "        if token.match(current):",
        "            token.expires_at = _HUBOPS_METRICS_TOKEN_EXPIRES",
        "        else:",
        "            self.log.info('hubops: revoking a rotated API token of service %s', service.name)",
        "            self.db.delete(token)",
        "    self.db.commit()",
        "",
        "_JupyterHub_metrics.init_api_tokens = _hubops_metrics_init_api_tokens",
    ]


def prometheus_config(p: Loaded, *, hub_port: int) -> str:
    """Prometheus's configuration (YAML; JSON is YAML): the hub, every node's exporter (found through
    Swarm's DNS, `tasks.SERVICE`, one address per task, whatever the endpoint mode), and itself."""
    every = f"{p.monitoring.scrape_interval}s"
    cfg = {
        "global": {"scrape_interval": every, "evaluation_interval": every,
                   "external_labels": {"hubops_deployment": p.deployment}},
        "scrape_configs": [
            {"job_name": "hub", "metrics_path": "/hub/metrics", "scheme": "http",
             "authorization": {"type": "Bearer", "credentials_file": f"/run/secrets/{SECRET_FILE}"},
             "static_configs": [{"targets": [f"{p.hub_service}:{hub_port}"]}]},
            {"job_name": "node",
             "dns_sd_configs": [{"names": [f"tasks.{node_exporter_service(p)}"], "type": "A",
                                 "port": NODE_EXPORTER_PORT, "refresh_interval": "30s"}]},
            {"job_name": "prometheus", "static_configs": [{"targets": [f"127.0.0.1:{PROMETHEUS_PORT}"]}]},
        ],
    }
    return "# Prometheus configuration generated by hubops; do not edit (run 80-deploy).\n" + \
        json.dumps(cfg, indent=2, sort_keys=True) + "\n"
