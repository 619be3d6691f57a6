"""The cluster's numbers as plots, for the status and diagnose runbooks (monitoring.enabled).

Prometheus (hubops/stages/monitoring.py) is not published outside the overlay network, so hubops
asks its HTTP API from inside Prometheus's own task: `docker exec` of `curl http://127.0.0.1:9090/…`
through the Docker API of the node that runs it, which works the same on the local socket, on
tcp+TLS and on ssh engines, and opens no port. Changes nothing on the cluster.

Plots (matplotlib, PNG in the executed notebook, hence in the HTML report):
- spawn durations over the last day (JupyterHub's jupyterhub_server_spawn_duration_seconds
  histogram): how many spawns took how long, and the median and 95th percentile over time;
- running servers: per node now (Swarm's tasks), and the hub's total over the day;
- memory in use and CPU busy per node over the day (node exporter);
- the days left on the certificate the hub presents, against the renewal threshold.
Without monitoring (or with Prometheus not running) it says so, and the tables stay today's state.
"""
from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import time
from typing import Any, Optional

from hubops.core import monitoring as M
from hubops.core.engine import Clients, docker_op
from hubops.core.errors import HubopsError
from hubops.core.facts import node_name
from hubops.core.params import Loaded
from hubops.core.result import Result
from hubops.stages.monitoring import prometheus_container

log = logging.getLogger("hubops")
SPAWN = "jupyterhub_server_spawn_duration_seconds"
GIB = 1024 ** 3


class Prometheus:
    """Prometheus's HTTP API, asked from inside its container (docker exec of curl)."""

    def __init__(self, node: str, container):
        self.node, self.container = node, container

    def get(self, path: str, **params: Any) -> Any:
        cmd = ["curl", "-sS", "--fail-with-body", "--max-time", "30", "--get"]
        for k, v in params.items():
            cmd += ["--data-urlencode", f"{k}={v}"]
        cmd.append(f"http://127.0.0.1:{M.PROMETHEUS_PORT}{path}")
        with docker_op(f"query Prometheus ({path}) in container {self.container.name}", self.node):
            code, out = self.container.exec_run(cmd, demux=False)
        text = (out or b"").decode("utf-8", "replace")
        try:
            body = json.loads(text)
        except ValueError:
            raise HubopsError(f"Prometheus on {self.node} answered {path} with exit status {code}: {text[:300]}") from None
        if body.get("status") != "success":
            raise HubopsError(f"Prometheus on {self.node}: {path} {params.get('query', '')}: "
                              f"{body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def instant(self, query: str) -> list[dict]:
        return self.get("/api/v1/query", query=query)["result"]

    def scalar(self, query: str) -> Optional[float]:
        res = self.instant(query)
        if not res:
            return None
        v = float(res[0]["value"][1])
        return None if math.isnan(v) else v

    def range(self, query: str, start: float, end: float, step: float) -> list[dict]:
        return self.get("/api/v1/query_range", query=query, start=f"{start:.3f}", end=f"{end:.3f}",
                        step=f"{max(step, 1):.0f}s")["result"]

    def targets(self) -> list[dict[str, Any]]:
        rows = []
        for t in self.get("/api/v1/targets", state="active")["activeTargets"]:
            rows.append({"job": t["labels"].get("job"), "target": t["labels"].get("instance"),
                         "health": t.get("health"), "last scrape": (t.get("lastScrape") or "")[:19],
                         "error": (t.get("lastError") or "")[:160]})
        return sorted(rows, key=lambda r: (r["job"], r["target"]))


class Plots:
    """What the runbook shows: a note, then each plot as a PNG output (the report keeps them)."""

    def __init__(self, title: str, note: str, figures: Optional[list[tuple[str, bytes]]] = None,
                 numbers: Optional[dict[str, Any]] = None):
        self.title, self.note = title, note
        self.figures = figures or []
        self.numbers = numbers or {}

    def __repr__(self) -> str:
        lines = [f"{self.title}: {self.note}"]
        lines += [f"  {k}: {v}" for k, v in self.numbers.items()]
        lines += [f"  plot: {caption}" for caption, _ in self.figures]
        return "\n".join(lines)

    def _ipython_display_(self) -> None:
        from IPython.display import display

        rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                       for k, v in self.numbers.items())
        display({"text/html": f"<h3>{html.escape(self.title)}</h3><p>{html.escape(self.note)}</p>"
                              + (f"<table>{rows}</table>" if rows else ""),
                 "text/plain": repr(self)}, raw=True)
        for caption, png in self.figures:
            display({"image/png": base64.b64encode(png).decode(), "text/plain": caption}, raw=True)


def png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return buf.getvalue()


def new_figure(ncols: int = 1, height: float = 3.4):
    from matplotlib.figure import Figure  # not pyplot: no global state, no GUI backend

    fig = Figure(figsize=(5.5 * ncols, height))
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    for ax in axes:
        ax.grid(True, alpha=0.3)
    return fig, axes


def _times(ax, series: list[dict], label_of, scale: float = 1.0, span: tuple[float, float] | None = None) -> int:
    """Plot each range series against local clock time over `span`; returns how many had points."""
    import datetime as dt

    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

    drawn = 0
    for s in series:
        pts = [(dt.datetime.fromtimestamp(float(t)), float(v) / scale) for t, v in s["values"]
               if not math.isnan(float(v))]
        if not pts:
            continue
        xs, ys = zip(*pts)
        ax.plot(xs, ys, marker="." if len(pts) < 30 else None, label=label_of(s["metric"]))
        drawn += 1
    locator = AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    if span is not None:
        ax.set_xlim(dt.datetime.fromtimestamp(span[0]), dt.datetime.fromtimestamp(span[1]))
    return drawn


def how_long(seconds: float) -> str:
    """A window's length for people: '40 min', '5.5 h'."""
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _window(prom: Prometheus, p: Loaded, hours: float) -> tuple[float, float, float]:
    """(start, end, step): the last `hours`, or since Prometheus's oldest sample when younger."""
    end = time.time()
    start = end - hours * 3600
    lowest = prom.scalar("min(prometheus_tsdb_lowest_timestamp_seconds)")
    if lowest and lowest > start:
        start = lowest
    start = min(start, end - 120)
    step = max(float(p.monitoring.scrape_interval), (end - start) / 240)
    return start, end, step


def _nodes(p: Loaded, clients: Clients) -> dict[str, str]:
    """Node hostname -> the node's name in the parameters (exporters report the hostname)."""
    c = clients.manager
    with docker_op("list nodes"):
        return {n.attrs["Description"].get("Hostname", ""): node_name(p, n) for n in c.nodes.list()}


def _servers_per_node(p: Loaded, clients: Clients) -> dict[str, int]:
    from hubops.ops.status import placements

    c = clients.manager
    with docker_op("list nodes"):
        counts = {node_name(p, n): 0 for n in c.nodes.list()}
    for row in placements(p, c):
        if row["kind"] == "user server" and row["state"] == "running":
            counts[row["node"]] = counts.get(row["node"], 0) + 1
    return counts


def counts_in_window(series: list[dict], *, since: float) -> dict[float, float]:
    """How much each histogram bucket (by `le`) grew over a window, from the raw samples of a range
    selector, summed over series: exact, where PromQL's increase() extrapolates to the window's
    edges (two spawns could read 2.6). A counter that went down was reset (the hub restarted): its new
    value is growth. A series whose first sample comes well after the window's start appeared in the
    window (a hub started then), so its first value is growth too."""
    out: dict[float, float] = {}
    for s in series:
        values = [(float(t), float(v)) for t, v in s.get("values") or []]
        if not values:
            continue
        grew = values[0][1] if values[0][0] > since + 60 else 0.0
        for (_, prev), (_, cur) in zip(values, values[1:]):
            grew += cur - prev if cur >= prev else cur
        le = float(s["metric"].get("le", "inf"))
        out[le] = out.get(le, 0.0) + grew
    return out


def spawn_plot(prom: Prometheus, start: float, end: float, step: float, numbers: dict) -> tuple[str, bytes]:
    span = max(int(end - start), 60)
    sel = f'{SPAWN}_bucket{{status="success"}}'
    counted = counts_in_window(prom.instant(f"{sel}[{span}s]"), since=end - span)
    cum = sorted(counted.items())
    spawns = round(cum[-1][1]) if cum else 0
    numbers["spawns (successful, in the window)"] = spawns
    p50 = prom.scalar(f"histogram_quantile(0.5, sum by (le) (increase({sel}[{span}s])))")
    p95 = prom.scalar(f"histogram_quantile(0.95, sum by (le) (increase({sel}[{span}s])))")
    if p50 is not None:
        numbers["spawn duration p50 / p95 (s, from the histogram)"] = f"{p50:.2f} / {p95:.2f}"
    fig, (a1, a2) = new_figure(2)
    labels, counts, prev = [], [], 0.0
    for le, c in cum:
        labels.append("≤" + (f"{le:g}" if le != math.inf else "∞"))
        counts.append(max(round(c - prev), 0))  # increase() extrapolates to the window's edges: whole spawns
        prev = c
    a1.bar(range(len(counts)), counts, color="#1976d2")
    a1.set_xticks(range(len(counts)), labels, rotation=45, fontsize=7)
    a1.set_xlabel("spawn duration (s)")
    a1.set_ylabel("spawns")
    a1.set_title(f"{spawns} successful spawn(s), last {how_long(span)}", fontsize=10)
    from matplotlib.ticker import MaxNLocator

    a1.yaxis.set_major_locator(MaxNLocator(integer=True))
    if not spawns:
        a1.set_ylim(0, 1)
    rate = max(int(step * 4), 300)
    series = []
    for q in (0.5, 0.95):
        for s in prom.range(f"histogram_quantile({q}, sum by (le) (rate({sel}[{rate}s])))", start, end, step):
            s["metric"] = {"q": f"p{int(q * 100)}"}
            series.append(s)
    if not _times(a2, series, lambda m: m["q"], span=(start, end)):
        a2.text(0.5, 0.5, "no spawn in the window", ha="center", va="center", transform=a2.transAxes)
    else:
        a2.legend(fontsize=8)
    a2.set_ylabel("seconds")
    a2.set_title("spawn duration over time", fontsize=10)
    return "spawn durations", png_bytes(fig)


def servers_plot(prom: Prometheus, per_node: dict[str, int], start: float, end: float, step: float,
                 numbers: dict) -> tuple[str, bytes]:
    fig, (a1, a2) = new_figure(2)
    names = sorted(per_node)
    a1.bar(names, [per_node[n] for n in names], color="#388e3c")
    a1.set_ylabel("users' servers")
    a1.set_title("running servers per node (now)", fontsize=10)
    a1.tick_params(axis="x", labelrotation=30)
    numbers["running servers per node (now)"] = ", ".join(f"{n}: {per_node[n]}" for n in names) or "no node"
    total = prom.range("sum(jupyterhub_running_servers)", start, end, step)
    if not _times(a2, total, lambda m: "running servers (hub)", span=(start, end)):
        a2.text(0.5, 0.5, "no data from the hub yet", ha="center", va="center", transform=a2.transAxes)
    a2.set_title("running servers, the hub's count", fontsize=10)
    return "running servers per node", png_bytes(fig)


def node_plot(prom: Prometheus, hosts: dict[str, str], start: float, end: float, step: float,
              numbers: dict) -> tuple[str, bytes]:
    by_node = " * on(instance) group_left(nodename) node_uname_info"
    mem = prom.range(f"(node_memory_MemTotal_bytes - node_memory_MemAvailable_bytes){by_node}", start, end, step)
    cpu = prom.range(f"(1 - avg by (instance) (rate(node_cpu_seconds_total{{mode=\"idle\"}}[{max(int(step * 4), 60)}s])))"
                     f" * 100{by_node}", start, end, step)
    fig, (a1, a2) = new_figure(2)

    def name(m: dict) -> str:
        return hosts.get(m.get("nodename", ""), m.get("nodename", m.get("instance", "?")))

    if not _times(a1, mem, name, scale=GIB, span=(start, end)):
        a1.text(0.5, 0.5, "no data from the node exporters yet", ha="center", va="center", transform=a1.transAxes)
    else:
        a1.legend(fontsize=8)
    a1.set_ylabel("GiB in use")
    a1.set_title("memory in use per node", fontsize=10)
    if _times(a2, cpu, name, span=(start, end)):
        a2.legend(fontsize=8)
    a2.set_ylabel("% busy")
    a2.set_ylim(0, 105)
    a2.set_title("CPU busy per node", fontsize=10)
    now_mem = prom.instant(f"(node_memory_MemTotal_bytes - node_memory_MemAvailable_bytes){by_node}")
    numbers["memory in use per node (now)"] = ", ".join(
        f"{name(s['metric'])}: {float(s['value'][1]) / GIB:.1f} GiB" for s in now_mem) or "no data"
    return "memory and CPU per node", png_bytes(fig)


def certificate_plot(p: Loaded, numbers: dict) -> Optional[tuple[str, bytes]]:
    from hubops.ops.diagnose import certificate

    cert = certificate(p)
    if "days_left" not in cert:
        numbers["certificate"] = f"not read: {cert.get('error')}"
        return None
    days = cert["days_left"]
    renew = p.tls.acme.renew_days if p.tls.mode == "acme" and p.tls.acme else 14
    numbers["certificate days left"] = days
    fig, (ax,) = new_figure(1, height=1.6)
    ax.barh([cert["names"] or p.hub.public_name], [days],
            color="#c62828" if days < renew else "#ef6c00" if days < 2 * renew else "#2e7d32")
    ax.axvline(renew, color="#555", linestyle="--", label=f"renewal threshold ({renew} days)")
    ax.set_xlabel("days left")
    ax.set_title(f"certificate: {days} days left (expires {cert['expires'][:10]})", fontsize=10)
    ax.legend(fontsize=7, loc="lower left")
    return "certificate days left", png_bytes(fig)


def plots(p: Loaded, clients: Clients, result: Optional[Result] = None, *, hours: float = 24) -> Plots:
    """The plots (see the module), and their numbers in `result`'s facts (so the text view and the
    record carry them too)."""
    title = "Monitoring"
    if not M.enabled(p):
        note = (f"monitoring is off (monitoring.enabled: false in {p.source}): no plots; the tables above are "
                "today's state. To see spawn durations, servers, memory and CPU per node over time, set "
                "`monitoring: {enabled: true}` and run `hubops deploy`.")
        if result is not None:
            result.facts["monitoring"] = "off (monitoring.enabled: false): no plots"
        return Plots(title, note)
    node, ctr = prometheus_container(p, clients)
    if node is None:
        if result is not None:
            result.facts["monitoring"] = f"on, but no plots: {ctr}"
        return Plots(title, f"monitoring is on, but Prometheus cannot be asked: {ctr}. The tables above are today's state.")
    prom = Prometheus(node, ctr)
    numbers: dict[str, Any] = {}
    start, end, step = _window(prom, p, hours)
    figures = []
    for make in (lambda: spawn_plot(prom, start, end, step, numbers),
                 lambda: servers_plot(prom, _servers_per_node(p, clients), start, end, step, numbers),
                 lambda: node_plot(prom, _nodes(p, clients), start, end, step, numbers),
                 lambda: certificate_plot(p, numbers)):
        fig = make()
        if fig is not None:
            figures.append(fig)
    targets = prom.targets()
    shown = end - start
    note = (f"from Prometheus on {node} (asked inside its task, not published), the last {how_long(shown)}"
            + (" (all it has)" if shown < hours * 3600 - 60 else "")
            + f"; {sum(t['health'] == 'up' for t in targets)} of {len(targets)} scrape targets up")
    if result is not None:
        result.facts["monitoring"] = note
        result.facts["monitoring numbers"] = [{"what": k, "value": v} for k, v in numbers.items()]
        result.facts["scrape targets"] = targets
        if "findings" in result.facts:  # diagnose: a target Prometheus cannot scrape is a finding
            found = target_findings(targets)
            if found:
                known = result.facts["findings"]
                result.facts["findings"] = (known if isinstance(known, list) else []) + found
    return Plots(title, note, figures, numbers)


def target_findings(targets: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Diagnose's findings (same shape as its own) for the scrape targets that are down."""
    out = []
    for t in targets:
        if t["health"] == "up":
            continue
        refused = t["job"] == "hub" and any(code in t["error"] for code in ("401", "403"))
        out.append({
            "recovery": "metrics-token-refused" if refused else "scrape-target-down",
            "seen in": f"Prometheus's target {t['job']} {t['target']}",
            "evidence": t["error"] or t["health"],
            "means": ("the hub refuses Prometheus's token (expired, or rotated without the hub restarting)"
                      if refused else "Prometheus cannot reach this target: its service is down or restarting"),
            "do": ("run `hubops deploy` (80-deploy renews the token and restarts the hub with it)" if refused
                   else "see `docker service ps` of the target's service; `hubops deploy` starts what is missing"),
        })
    return out
