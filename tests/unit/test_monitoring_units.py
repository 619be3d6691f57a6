"""Monitoring's pure parts (issue 17 item 4): the hub's configuration (a `prometheus` service whose
role has read:metrics and nothing else), the scrape token's rotation, Prometheus's configuration,
the services' specs, the runbooks' answer without monitoring, the plots as PNG outputs, and PNG
outputs surviving the record's redaction."""
from __future__ import annotations

import base64
import io
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from hubops.audit.redact import Redactor, known_secrets
from hubops.core import monitoring as M
from hubops.core.params import load_params
from hubops.hub import config as hubconfig
from hubops.ops import metrics
from hubops.stages import monitoring as S
from tests.helpers import hub_config, make_params

PNG = b"\x89PNG\r\n\x1a\n"


def params(tmp: Path, extra: str = "monitoring: {enabled: true}\n", name: str = "mon"):
    return load_params(make_params(tmp, name, port=8443, subnet="10.231.5.0/24", extra=extra))


def test_off_by_default_and_nothing_in_the_hub_config(tmp_path):
    p = params(tmp_path, extra="")
    assert not M.enabled(p) and p.monitoring.publish_port is None
    assert M.TOKEN_ROLE not in hubconfig.secret_roles(p)
    cfg = hub_config(p)
    assert [s["name"] for s in cfg.JupyterHub.services] == ["hubops", "idle-culler"]


def test_the_prometheus_service_may_only_read_metrics(tmp_path):
    p = params(tmp_path)
    M.ensure_token(p)
    assert M.TOKEN_ROLE in hubconfig.secret_roles(p)
    cfg = hub_config(p)
    [svc] = [s for s in cfg.JupyterHub.services if s["name"] == "prometheus"]
    assert "command" not in svc and svc["api_token"]
    [role] = [r for r in cfg.JupyterHub.load_roles if "prometheus" in r.get("services", [])]
    assert role["scopes"] == ["read:metrics"]
    assert cfg.JupyterHub.authenticate_prometheus is True
    # The hubops token's role is unchanged and does not get the metrics scope either.
    [own] = [r for r in cfg.JupyterHub.load_roles if r["name"] == "hubops-operator"]
    assert "read:metrics" not in own["scopes"]


def test_the_scrape_token_is_kept_then_rotated_near_its_expiry(tmp_path):
    p = params(tmp_path)
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    first, why = M.ensure_token(p, now=now)
    assert why == "generated"
    assert (p.operator_path / M.TOKEN_FILE).stat().st_mode & 0o077 == 0
    assert first in known_secrets(p)  # the redactor knows it
    assert M.ensure_token(p, now=now + timedelta(days=60)) == (first, None)
    second, why = M.ensure_token(p, now=now + timedelta(days=80))
    assert second != first and why.startswith("rotated")
    assert M.read_expiry(p) == now + timedelta(days=80 + M.LIFETIME_DAYS)
    lines = "\n".join(M.hub_lines(p))
    assert "token.expires_at = _HUBOPS_METRICS_TOKEN_EXPIRES" in lines and "self.db.delete(token)" in lines
    # A plan makes nothing.
    other = params(tmp_path / "x", name="mon2") if (tmp_path / "x").mkdir() is None else None
    value, why = M.ensure_token(other, dry_run=True)
    assert why == "generated" and not (other.operator_path / M.TOKEN_FILE).exists()


def test_prometheus_scrapes_the_hub_with_the_token_file_and_every_node(tmp_path):
    p = params(tmp_path, extra="monitoring: {enabled: true, scrape_interval: 30}\n")
    cfg = yaml.safe_load(M.prometheus_config(p, hub_port=hubconfig.HUB_PORT))
    assert cfg["global"]["scrape_interval"] == "30s"
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert set(jobs) == {"hub", "node", "prometheus"}
    hub = jobs["hub"]
    assert hub["metrics_path"] == "/hub/metrics"
    assert hub["static_configs"] == [{"targets": [f"{p.hub_service}:{hubconfig.HUB_PORT}"]}]
    assert hub["authorization"]["credentials_file"] == f"/run/secrets/{M.SECRET_FILE}"
    assert jobs["node"]["dns_sd_configs"][0]["names"] == [f"tasks.{M.node_exporter_service(p)}"]
    assert "token" not in json.dumps(cfg).replace("metrics-token", "")  # no value, only the file


class _Obj:
    def __init__(self, name):
        self.id, self.name = f"id-{name}", name


def test_service_specs(tmp_path):
    p = params(tmp_path)
    spec = S.prometheus_spec(p, image="hubops-prometheus:x", token=_Obj("tok"), config=_Obj("cfg"))
    assert spec["name"] == f"hubops-{p.deployment}-prometheus"
    assert spec["labels"]["hubops.deployment"] == p.deployment and spec["labels"]["hubops.managed"] == "true"
    assert not spec["endpoint_spec"].get("Ports")  # not published outside the overlay network
    cs = spec["task_template"]["ContainerSpec"]
    [sec] = cs["Secrets"]
    assert sec["File"] == {"Name": M.SECRET_FILE, "UID": "990", "GID": "990", "Mode": 0o400}
    assert cs["Mounts"][0]["Source"] == M.data_volume(p)
    assert spec["task_template"]["Placement"]["Constraints"] == [f"node.labels.{p.hub_node_label}==true"]
    ne = S.node_exporter_spec(p, image="hubops-node-exporter:x")
    assert ne["mode"].mode == "global"  # one task per node
    assert all(m["ReadOnly"] for m in ne["task_template"]["ContainerSpec"]["Mounts"])
    p2 = params(tmp_path / "pub", extra="monitoring: {enabled: true, publish_port: 9091}\n") \
        if (tmp_path / "pub").mkdir() is None else None
    spec2 = S.prometheus_spec(p2, image="i", token=_Obj("t"), config=_Obj("c"))
    assert spec2["endpoint_spec"]["Ports"] == [{"PublishedPort": 9091, "TargetPort": 9090, "Protocol": "tcp",
                                                "PublishMode": "host"}]


def test_without_monitoring_the_runbooks_say_so(tmp_path):
    from hubops.core.result import Result

    p = params(tmp_path, extra="")
    r = Result("status")
    out = metrics.plots(p, clients=None, result=r)  # no engine is asked
    assert out.figures == [] and "monitoring is off" in out.note and "today's state" in out.note
    assert r.facts["monitoring"].startswith("off")


def test_plots_are_png_outputs_that_survive_redaction(tmp_path):
    import nbformat
    from nbclient import NotebookClient

    # Shown by a real kernel, as the runbook shows them: one image/png output per plot.
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(
        "from hubops.ops import metrics\n"
        "fig, (ax,) = metrics.new_figure(1)\n"
        "ax.plot([1, 2, 3], [3, 1, 2])\n"
        "metrics.Plots('Monitoring', 'a note', [('a plot', metrics.png_bytes(fig))], {'spawns': 3})")]
    NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    outs = nb.cells[0].outputs
    pngs = [o["data"]["image/png"] for o in outs if "image/png" in o.get("data", {})]
    assert len(pngs) == 1 and base64.b64decode(pngs[0]).startswith(PNG), outs
    assert any("spawns" in o.get("data", {}).get("text/html", "") for o in outs)
    # Through the redactor, with a deployment's real secrets known: unchanged.
    p = params(tmp_path)
    M.ensure_token(p)
    path = tmp_path / "status.ipynb"
    nbformat.write(nb, path)
    red = Redactor(known_secrets(p) + ["a-password-of-some-length"])
    assert len(red) >= 2
    assert red.redact_notebook(path) is False
    assert nbformat.read(path, as_version=4).cells[0].outputs[-1]["data"]["image/png"] == pngs[0]


def test_targets_down_are_diagnose_findings():
    targets = [{"job": "hub", "target": "h:8081", "health": "down", "error": "server returned HTTP status 403 Forbidden"},
               {"job": "node", "target": "10.0.0.5:9100", "health": "down", "error": "connection refused"},
               {"job": "prometheus", "target": "127.0.0.1:9090", "health": "up", "error": ""}]
    found = metrics.target_findings(targets)
    assert [f["recovery"] for f in found] == ["metrics-token-refused", "scrape-target-down"]
    assert "hubops deploy" in found[0]["do"]


def test_spawns_are_counted_exactly_across_a_hub_restart():
    def series(le, points):
        return {"metric": {"le": le}, "values": [[t, str(v)] for t, v in points]}

    since = 1000.0
    raw = [series("5", [(1000, 3), (1015, 3), (1030, 4)]),            # one spawn of at most 5 s
           series("+Inf", [(1000, 3), (1015, 3), (1030, 4), (1045, 0), (1060, 1)]),  # then a restart, and one more
           series("+Inf", [(1200, 1), (1215, 2)])]                   # a series born in the window: both count
    got = metrics.counts_in_window(raw, since=since)
    assert got == {5.0: 1.0, float("inf"): 2.0 + 2.0}
