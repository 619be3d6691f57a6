"""Diagnose: a troubleshooting report of the cluster and the hub. Changes nothing.

Node states and the managers' quorum; the hub service, its last update and its tasks with their
errors; users' servers that are not running and why; the hub's last log lines (the proxy logs
there too); the certificate the hub presents and its expiry; disk use per node; and known
failure signatures found in all of those, each with what it means and a named recovery.
"""
from __future__ import annotations

import datetime as dt
import logging
import re
import socket
import ssl
import threading
from dataclasses import dataclass
from typing import Any, Iterable
from urllib.parse import urlsplit


from hubops.core import labels as L
from hubops.hub import running
from hubops.ops.status import quorum_lost_text, running_containers, swarm_health
from hubops.stages import storage
from hubops.core.facts import node_name, tasks_by_service
from hubops.core.engine import Clients, docker_op
from hubops.core.errors import DockerOpError
from hubops.core.params import Loaded
from hubops.core.result import Result

log = logging.getLogger("hubops")


@dataclass(frozen=True)
class Signature:
    name: str           # the recovery's name, as the report and the docs call it
    pattern: str        # searched (case-insensitive) in task errors, node messages and the hub's log
    means: str
    recovery: str


SIGNATURES: tuple[Signature, ...] = (
    Signature("stale-vxlan",
              r"vxlan interface creation failed|error creating vxlan interface|failed to create vxlan|"
              r"create vxlan interface|vxlan.*file exists",
              "the overlay network's VXLAN interface could not be made on a node: an interface of an earlier "
              "network with the same VNI is still in the kernel (the 2016 guide's 'vxlan interface creation failed')",
              "restart the Docker engine on that node (the guide's workaround); if it comes back, list "
              "`ip -d link show type vxlan`, delete the stale `vx-…` interface, and run 30-network again"),
    Signature("overlapping-subnet", r"overlaps with|pool overlaps|no available network|non-overlapping",
              "the overlay subnet overlaps a network or route of a host",
              "choose a network.subnet that overlaps no route (`ip route` on every host), teardown and deploy"),
    Signature("shared-path-missing", r"bind source path does not exist",
              "a bind-mounted directory is missing on the node the task went to: storage.users.path (shared "
              "storage not mounted there) or the engine socket",
              "mount the shared filesystem at storage.users.path on every node (70-storage checks it), or change "
              "storage.users.mode"),
    Signature("home-not-writable", r"hubops: cannot prepare the home",
              "the hub could not create a user's home on the shared storage",
              "NFS with root_squash: export with no_root_squash, or create PATH/USER owned by storage.users.uid:gid"),
    Signature("door-refused", r"refused by hubops's Docker API door",
              "the hub asked Docker for something its door (the filtering proxy) does not let through",
              "read the reason in `docker service logs hubops-DEPLOYMENT-apiproxy` (lines starting `refuse`); a "
              "server's mounts, capabilities or networks must come from the parameters (storage.users, spawner.cap_add)"),
    Signature("door-missing", r"hubops-door/docker\.sock.*(no such file|connection refused|permission denied)|"
                              r"the Docker API door could not",
              "the hub cannot reach its Docker API door on its node",
              "check `docker service ps hubops-DEPLOYMENT-apiproxy` (a task on the hub's node, running), then run 80-deploy"),
    Signature("no-suitable-node", r"no suitable node",
              "Swarm finds no node that meets the task's constraints: the hub's node lost its label or is drained, "
              "or a node-local home's node is down, drained or gone",
              "bring the node back (`docker node update --availability active NODE`); for the hub, run 20-swarm "
              "(labels); a user pinned to a node that was removed from the swarm gets a new home elsewhere on the next "
              "start (the files were on that node)"),
    Signature("port-in-use", r"port is already allocated|address already in use",
              "the hub's host port is taken by another process or deployment",
              "free the port on the hub's node, or set hub.https_port to another port and deploy"),
    Signature("image-missing", r"no such image|pull access denied|manifest unknown|repository does not exist|"
                               r"image .* not found",
              "the node lacks the image (no registry is used: hubops delivers the single-user image to every "
              "node, the hub image to the managers)",
              "run 60-images (or add-node for a new node); for an upgrade image, load it on the hub's node"),
    Signature("swarm-object-missing", r"secret .* not found|config .* not found|network .* not found",
              "the service refers to a Swarm secret, config or network that was removed",
              "run `hubops deploy` again: it recreates them and points the hub at them"),
    Signature("db-schema", r"upgrade-db|database schema version|can't locate revision|alembic\.util\.exc",
              "the hub's database was written by another JupyterHub version than the one running",
              "a newer JupyterHub: `hubops ops upgrade` (it backs up, migrates with `jupyterhub upgrade-db` and "
              "puts everything back if the new hub fails); an older one: `hubops ops restore --set backup=FOLDER "
              "--set image=backup` with the backup taken before the upgrade (its manifest names the image)"),
    Signature("db-locked", r"database is locked",
              "two hubs write the same SQLite database, or its storage does not lock (NFS)",
              "run one hub only (80-deploy's stop-first update does); keep the database on a local volume"),
    Signature("spawn-timeout", r"failed to start in \d+ seconds|didn't start|did not start in|spawn failed",
              "a user's server did not start within spawner.start_timeout",
              "look at that user's service errors below; raise spawner.start_timeout for large images or slow nodes"),
    Signature("engine-socket", r"docker\.sock.*(permission denied|no such file)|cannot connect to the docker daemon|"
                               r"error while fetching server api version",
              "the hub cannot reach the engine it drives the swarm through",
              "check hosts[].engine_socket of the hub's node and that the engine runs there"),
    Signature("tls-verify", r"certificate verify failed|sslerror|wrong version number",
              "a TLS connection failed its check (CA, name, or plain HTTP on a TLS port)",
              "run 40-tls (renew-tls); clients verify against the deployment's CA (operator folder ca.pem)"),
    Signature("out-of-memory", r"oomkilled|out of memory|exit code 137|exit status 137",
              "a container was killed for memory",
              "raise spawner.mem_limit, or give the node more memory"),
    Signature("hub-exits", r"non-zero exit|task: non-zero exit|exit status [1-9]",
              "the container stopped with an error",
              "read the hub's log lines below; if it began after an upgrade, the upgrade runbook rolls back by "
              "itself, or restore the backup taken before it"),
)


def match(texts: Iterable[tuple[str, str]]) -> list[dict[str, str]]:
    """Known signatures found in (where, text) pairs: one row per signature, first place seen (pure)."""
    found: dict[str, dict[str, str]] = {}
    for where, text in texts:
        for sig in SIGNATURES:
            if sig.name in found or not text:
                continue
            m = re.search(sig.pattern, text, re.IGNORECASE)
            if m:
                found[sig.name] = {"recovery": sig.name, "seen in": where, "evidence": _around(text, m),
                                   "means": sig.means, "do": sig.recovery}
    return list(found.values())


def _around(text: str, m: re.Match, width: int = 90) -> str:
    start = max(0, m.start() - width // 2)
    return ("…" if start else "") + text[start:start + width].replace("\n", " ") + ("…" if start + width < len(text) else "")


def _when(ts: str | None) -> str:
    return (ts or "")[:19].replace("T", " ")


def _task_row(t: dict, nodes: dict[str, str]) -> dict[str, Any]:
    st = t["Status"]
    return {"when": _when(st.get("Timestamp")), "node": nodes.get(t.get("NodeID", ""), t.get("NodeID", "")[:12] or "-"),
            "image": t["Spec"]["ContainerSpec"]["Image"].split("@")[0], "desired": t.get("DesiredState"),
            "state": st.get("State"), "exit": (st.get("ContainerStatus") or {}).get("ExitCode"),
            "error": st.get("Err") or ("" if st.get("State") == "running" else st.get("Message", ""))}


def certificate(p: Loaded, timeout: float = 5) -> dict[str, Any]:
    """The certificate the hub presents (not verified here: this reads it, 40-tls checks it), at the
    first of its addresses that answers (a hub that can move may answer on another manager)."""
    from cryptography import x509

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    errors = []
    der = None
    for url in p.hub_urls:
        u = urlsplit(url)
        host, port = u.hostname or "localhost", u.port or 443
        try:
            with socket.create_connection((host, port), timeout=timeout) as sock:
                with ctx.wrap_socket(sock, server_hostname=urlsplit(p.hub_url).hostname or host) as tls:
                    der = tls.getpeercert(binary_form=True)
            break
        except OSError as e:
            errors.append(f"{host}:{port}: {e.__class__.__name__}: {e}")
    if der is None:
        return {"error": "; ".join(errors)}
    cert = x509.load_der_x509_certificate(der)
    not_after = cert.not_valid_after_utc
    days = (not_after - dt.datetime.now(dt.timezone.utc)).total_seconds() / 86400
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = []
    return {"names": ", ".join(names), "issuer": cert.issuer.rfc4514_string(), "expires": not_after.isoformat(),
            "days_left": round(days, 1)}


def _gib(n: int | None) -> float:
    return round((n or 0) / 2**30, 2)


def disk(p: Loaded, clients: Clients) -> list[dict[str, Any]]:
    rows = []
    for host in p.hosts.all:
        try:
            with docker_op("disk usage", host.name):
                df = clients[host.name].df()
        except DockerOpError as e:
            rows.append({"node": host.name, "error": str(e)})
            continue
        vols = df.get("Volumes") or []
        ours = [v for v in vols if L.owned_by(v.get("Labels"), p.deployment)]
        rows.append({
            "node": host.name,
            "images GiB": _gib(df.get("LayersSize")),
            "containers GiB": _gib(sum((c.get("SizeRw") or 0) for c in df.get("Containers") or [])),
            "volumes GiB": _gib(sum(((v.get("UsageData") or {}).get("Size") or 0) for v in vols if (v.get("UsageData") or {}).get("Size", -1) > 0)),
            "deployment volumes": len(ours),
            "build cache GiB": _gib(sum((b.get("Size") or 0) for b in df.get("BuildCache") or [])),
        })
    return rows


def diagnose(p: Loaded, clients: Clients, *, log_lines: int = 50, dry_run: bool = False) -> Result:
    """The troubleshooting report. Reads only."""
    r = Result("diagnose", dry_run=dry_run)
    texts: list[tuple[str, str]] = []
    findings: list[dict[str, str]] = []

    health = swarm_health(p, clients)
    r.facts["manager engines"] = health["rows"]
    if health["quorum"]:
        _swarm_report(p, clients[health["via"]], r, texts, findings, log_lines)
    else:
        # Without a leader the swarm answers nothing (nodes, services, tasks, logs): say so, and
        # what each node's own engine still runs.
        r.facts["managers"] = f"{health['reachable']} of {health['total']} reachable: quorum LOST"
        r.check("managers' quorum", r.facts["managers"])
        findings.append(_finding("quorum-lost", "managers", r.facts["managers"] + (f" ({health['error']})" if health["error"] else ""),
                                 "the swarm cannot change anything (no service update, no restart elsewhere); "
                                 "running servers keep serving",
                                 quorum_lost_text(p, health)))
        r.facts["running containers (each node's engine asked)"] = running_containers(p, clients)

    # -- certificate, storage, disk ---------------------------------------------------------------
    cert = certificate(p)
    r.facts["certificate"] = cert
    if "error" in cert:
        texts.append(("certificate", cert["error"]))
        r.check("certificate", f"PROBLEM: not read: {cert['error']}")
    else:
        r.check("certificate", f"{cert['names']}: {cert['days_left']} days left")
        if cert["days_left"] < 14:
            findings.append(_finding("certificate-expiring", "certificate", f"{cert['days_left']} days left",
                                     "browsers refuse the hub once it expires", "run runbooks/ops/renew-tls (or 40-tls)"))
    r.facts["users' storage"] = storage.describe_users(p)
    r.facts["hub can move"] = storage.describe_hub(p)
    r.facts["disk per node"] = disk(p, clients)

    findings += match(texts)
    r.facts["findings"] = findings or "no known failure signature found"
    r.facts["recoveries"] = [{"recovery": s.name, "when": s.means, "do": s.recovery} for s in SIGNATURES]
    return r


def _swarm_report(p: Loaded, c, r: Result, texts: list, findings: list, log_lines: int) -> None:
    """Nodes, the hub service and users' servers as the swarm's managers see them."""
    # -- nodes and quorum ---------------------------------------------------------------------
    with docker_op("list nodes", p.hub_host.name):
        node_list = c.nodes.list()
    names = {n.id: node_name(p, n) for n in node_list}
    rows, managers, reachable = [], 0, 0
    for n in sorted(node_list, key=lambda n: (n.attrs["Spec"].get("Role") != "manager", node_name(p, n))):
        spec, st, ms = n.attrs["Spec"], n.attrs["Status"], n.attrs.get("ManagerStatus") or {}
        if spec.get("Role") == "manager":
            managers += 1
            reachable += ms.get("Reachability") == "reachable"
        rows.append({"node": names[n.id], "role": spec.get("Role") + (" (leader)" if ms.get("Leader") else ""),
                     "availability": spec.get("Availability"), "state": st.get("State"),
                     "reachability": ms.get("Reachability", ""), "message": st.get("Message", ""),
                     "engine": n.attrs["Description"].get("Engine", {}).get("EngineVersion")})
        texts.append((f"node {names[n.id]}", st.get("Message", "")))
        if st.get("State") != "ready":
            findings.append(_finding("node-down", f"node {names[n.id]}", f"state {st.get('State')}: {st.get('Message', '')}",
                                     "the node's engine does not talk to the managers",
                                     "check the host and its engine; if it is gone for good, remove it "
                                     "(runbooks/ops/remove-node) and add another"))
    quorum = reachable > managers // 2
    r.facts["nodes"] = rows
    r.facts["managers"] = f"{reachable} of {managers} reachable: quorum {'kept' if quorum else 'LOST'}"
    r.check("managers' quorum", r.facts["managers"])
    if not quorum:
        findings.append(_finding("quorum-lost", "managers", r.facts["managers"],
                                 "the swarm cannot change anything (no service update, no restart elsewhere)",
                                 "bring managers back; if they are lost, on a surviving manager: "
                                 "`docker swarm init --force-new-cluster --advertise-addr ADDR`, then join new managers"))

    # -- the hub service --------------------------------------------------------------------------
    with docker_op("list services"):
        services = c.services.list(filters={"label": L.selector(p.deployment)})
    hub = running.find_service(c, p)
    if hub is None:
        r.check(f"service {p.hub_service}", "PROBLEM: missing")
        findings.append(_finding("hub-missing", f"service {p.hub_service}", "no such service",
                                 "the hub is not deployed (or was torn down)", "run `hubops deploy`"))
    else:
        us = hub.attrs.get("UpdateStatus") or {}
        tasks = sorted(hub.tasks(), key=lambda t: t["Status"].get("Timestamp", ""), reverse=True)
        up = [t for t in tasks if t["Status"]["State"] == "running"]
        r.facts["hub service"] = {
            "image": running.service_image(hub),
            "replicas": (hub.attrs["Spec"].get("Mode", {}).get("Replicated") or {}).get("Replicas"),
            "running tasks": len(up),
            "last update": f"{us.get('State', 'none')} {us.get('Message', '')}".strip(),
        }
        r.facts["hub tasks"] = [_task_row(t, names) for t in tasks[:10]]
        for t in tasks[:10]:
            texts.append((f"hub task {t['ID'][:12]}", f"{t['Status'].get('Err', '')} {t['Status'].get('Message', '')}"))
        r.check(f"service {p.hub_service}", f"{len(up)} running task(s)" if up else "PROBLEM: no running task")
        if not up:
            findings.append(_finding("hub-down", f"service {p.hub_service}", "no running task",
                                     "the hub is not serving", "see the hub's tasks and log lines; the signatures "
                                     "below name the cause when it is a known one"))
        if us.get("State") in ("rollback_completed", "rollback_paused", "paused"):
            findings.append(_finding("update-rolled-back", f"service {p.hub_service}",
                                     f"{us.get('State')}: {us.get('Message', '')}",
                                     "the last update failed its healthcheck and Swarm went back to the previous spec",
                                     "read the failed tasks' errors above; fix the image or configuration, then run "
                                     "upgrade or deploy again"))
        lines = hub_log(hub, log_lines)
        r.facts["hub log (last lines)"] = [{"line": ln[:300]} for ln in lines] or "(empty)"
        texts += [("hub log", ln) for ln in lines]

    # -- users' servers ----------------------------------------------------------------------------
    user_rows = []
    # Only users' servers (and the hub, skipped below): not Prometheus, the policy agent, the door, the front.
    services = [s for s in services
                if (s.attrs["Spec"].get("Labels") or {}).get(L.ROLE) in (None, "", "user-server", "hub")]
    with docker_op("list users' servers' tasks"):
        all_tasks = tasks_by_service(c, [s for s in services if s.name != p.hub_service])
    for s in services:
        if s.name == p.hub_service:
            continue
        tasks = sorted(all_tasks[s.id], key=lambda t: t["Status"].get("Timestamp", ""), reverse=True)
        latest = tasks[0] if tasks else None
        if latest is None or latest["Status"]["State"] != "running":
            row = _task_row(latest, names) if latest else {"state": "no task"}
            user_rows.append({"service": s.name, **row})
            if latest:
                texts.append((f"service {s.name}", f"{latest['Status'].get('Err', '')} {latest['Status'].get('Message', '')}"))
    r.facts["users' servers not running"] = user_rows or "none"
    r.check("users' servers", f"{len(services) - (hub is not None)} service(s), {len(user_rows)} not running")


# How long the hub's log may take to come. Docker 20.10's service log stream sometimes never ends
# (measured on a lab: the same request with --tail 1250 and 1350 ended in 0.02 s, with 1300 it hung).
HUB_LOG_TIMEOUT = 15.0


def hub_log(service, n: int, timeout: float = HUB_LOG_TIMEOUT) -> list[str]:
    """The service's last `n` log lines across its tasks, in time order (each task's lines come
    separately from the engine, so they are sorted by their timestamps, which are then dropped).
    Read for at most `timeout` seconds: what came by then, and a line saying the stream did not end."""
    chunks: list[bytes] = []
    failed: list[BaseException] = []

    def read() -> None:
        try:
            for chunk in service.logs(stdout=True, stderr=True, tail=n, timestamps=True):
                chunks.append(chunk)
        except Exception as e:  # noqa: BLE001 - said in the output, below
            failed.append(e)

    reader = threading.Thread(target=read, name="hub-log", daemon=True)
    reader.start()
    reader.join(timeout)
    if failed:
        e = failed[0]
        return [f"(no logs: {getattr(e, 'explanation', None) or e})"]
    raw = b"".join(list(chunks)).decode(errors="replace")
    stamped = []
    for ln in raw.splitlines():
        stamp, _, text = ln.partition(" ")
        if text.strip():
            stamped.append((stamp, text.rstrip()))
    lines = [text for _, text in sorted(stamped, key=lambda x: x[0])][-n:]
    if reader.is_alive():
        lines.append(f"(the engine's log stream had not ended after {timeout:g} s, a known Docker 20.10 "
                     "behaviour; these are the lines that came by then: `docker service logs` shows the rest)")
    return lines


def _finding(name: str, where: str, evidence: str, means: str, do: str) -> dict[str, str]:
    return {"recovery": name, "seen in": where, "evidence": evidence, "means": means, "do": do}
