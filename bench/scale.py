#!/usr/bin/env python3
"""A hundred users' servers across a lab (1 manager, 2 workers), and what the deployment does with all of
them running. Prints every figure and writes bench/results/scale-*.json. Figures, no assertions.

    flock /tmp/hubops-lock-heavy .venv/bin/python bench/scale.py              # N=100 (~11-12 GB, lots of CPU)
    .venv/bin/python bench/scale.py -n 10 --keep                              # develop with few; leave it up

Brings up a lab of its own (per-run name and subnets, the users on its userlist), deploys, and starts N
users' servers through the REST API, never more at once than the hub's concurrent_spawn_limit (as
hubops sized it for the lab); each user, as a client would, asks for the server (a 429 is waited out)
and polls it through the proxy until it answers. Before each start it reads this machine's free memory,
and stops starting when less than --reserve-gb would remain: it then says how far it got. Each server's
cost is printed two ways: the drop of this machine's available memory per server, and the workers'
containers' memory (their cgroups) per server. Then, with every started server running:

- hub_api: GET /hub/api/users and /hub/api/users/NAME, --api-requests each (p50, p95; target p95 < 100 ms);
- spawn: --spawns more users' spawns one after another (start request until /user/NAME/api/status
  answers through the proxy), against the floor measured then: a bare Swarm service of the same image
  on a worker until its task runs, plus the image's server until it answers (target: p50 <= 1.5x);
- proxy: GET /user/NAME/api from inside the hub's container through the proxy (TLS, 127.0.0.1) and
  straight to the server's container address on the overlay, on one kept-alive connection and on new
  connections each; the difference is what the proxy adds; also through the public URL from here;
- culler: one pass of jupyterhub-idle-culler's own cull_idle over the N users, run in the hub's
  container with the culler's own token (read there from its process, never printed), culling nobody;
- ops status and ops diagnose: wall time of `hubops ops status` / `ops diagnose`, and their cells' time;
- teardown: `hubops ops teardown` of the deployment with the N servers running, then `lab down`.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from bench import common  # noqa: E402
from bench.burst import Watch, one_user  # noqa: E402
from bench.spawn import spawn_once, stop  # noqa: E402
from hubops.core.engine import Clients  # noqa: E402
from hubops.core.params import load_params  # noqa: E402
from hubops.hub import running, spawn_limits  # noqa: E402
from hubops.hub.config import PROXY_PORT  # noqa: E402
from hubops.lab import cluster as lab  # noqa: E402
from hubops.stages import images  # noqa: E402

CGROUP_MEMORY = Path("/sys/fs/cgroup/memory")

# Run with `python -c` in the hub's container: the proxy's added latency on a user's request.
PROXY_SCRIPT = r"""
import http.client, json, socket, ssl, statistics, sys, time
user, service, proxy_port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
ip = socket.gethostbyname(service)
path = "/user/%s/api" % user
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
def proxy(): return http.client.HTTPSConnection("127.0.0.1", proxy_port, context=ctx, timeout=10)
def direct(): return http.client.HTTPConnection(ip, 8888, timeout=10)
def kept(make):
    c, out = make(), []
    for _ in range(n):
        t0 = time.perf_counter(); c.request("GET", path); r = c.getresponse(); r.read()
        assert r.status == 200, (r.status, path)
        out.append(time.perf_counter() - t0)
    c.close()
    return out
def fresh(make):
    out = []
    for _ in range(n):
        t0 = time.perf_counter(); c = make(); c.request("GET", path); r = c.getresponse(); r.read(); c.close()
        assert r.status == 200, (r.status, path)
        out.append(time.perf_counter() - t0)
    return out
kept(proxy); kept(direct)  # warm: routes, DNS, the server's first answer
print(json.dumps({"server_ip": ip, "proxy_kept": kept(proxy), "direct_kept": kept(direct),
                  "proxy_new": fresh(proxy), "direct_new": fresh(direct)}))
"""

# Run with `python -c` in the hub's container: passes of the idle culler's own cull_idle, with the
# culler's token and API URL read from its process (they never leave the container), culling nobody.
CULLER_SCRIPT = r"""
import asyncio, glob, json, logging, sys, time
from jupyterhub_idle_culler import cull_idle
env = None
for d in glob.glob("/proc/[0-9]*"):
    try:
        if b"jupyterhub_idle_culler" in open(d + "/cmdline", "rb").read():
            env = dict(kv.split(b"=", 1) for kv in open(d + "/environ", "rb").read().split(b"\0") if b"=" in kv)
            break
    except OSError:
        pass
if env is None:
    print(json.dumps({"error": "no idle culler process in the hub's container"})); sys.exit()
seen = []
class Keep(logging.Handler):
    def emit(self, record): seen.append(record.getMessage())
log = logging.getLogger("scale-culler-pass"); log.setLevel(logging.DEBUG); log.addHandler(Keep())
times = []
for _ in range(int(sys.argv[1])):
    t0 = time.perf_counter()
    asyncio.run(cull_idle(env[b"JUPYTERHUB_API_URL"].decode(), env[b"JUPYTERHUB_API_TOKEN"].decode(),
                          inactive_limit=10**9, logger=log, concurrency=10))
    times.append(time.perf_counter() - t0)
print(json.dumps({"times": times, "log": [m for m in seen if m.startswith("Got ")][-1:]}))
"""


def r3(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def dist(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    return {"n": len(values), "p50_ms": round(statistics.median(values) * 1000, 1),
            "p95_ms": round(common.pct(values, 0.95) * 1000, 1), "max_ms": round(max(values) * 1000, 1)}


def cgroup_rss_gb(nodes: list[str]) -> float | None:
    """RSS of the lab nodes' containers (cgroup v1: each node's engine puts them under /hubops-lab/NODE)."""
    total, found = 0, False
    for node in nodes:
        stat = CGROUP_MEMORY / lab._cgroup_parent(node).lstrip("/") / "memory.stat"
        if not stat.exists():
            continue
        found = True
        for line in stat.read_text().splitlines():
            k, _, v = line.partition(" ")
            if k == "total_rss":
                total += int(v)
    return total / 1024 ** 3 if found else None


def start_all(p, clients: Clients, users: list[str], limit: int, reserve_gb: float, poll: float,
              deadline_s: float) -> dict:
    """Start the users' servers, at most `limit` starting at once, until all answer or memory runs short."""
    lock = threading.Lock()
    counts: dict = {}
    queue = iter(users)
    answered: dict[str, float] = {}
    failed: list[str] = []
    short: list[str] = []  # the memory reading that stopped the starts
    timeline: list[tuple] = []  # (user, seconds after the first start when asked, seconds until it answered)
    t0 = time.monotonic()

    def worker() -> None:
        while True:
            with lock:
                if short:
                    return
                free = common.free_gb()
                if free < reserve_gb:
                    short.append(f"{free:.1f} GB free, less than the {reserve_gb} GB reserve")
                    return
                user = next(queue, None)
            if user is None:
                return
            t_user = time.monotonic()
            took = one_user(p, user, t_user, t_user + deadline_s, poll, counts, lock)
            with lock:
                timeline.append((user, round(t_user - t0, 1), r3(took)))
                if took is None:
                    failed.append(user)
                else:
                    answered[user] = took
                    if len(answered) % 10 == 0:
                        print(f"  {len(answered)} servers answering after {time.monotonic() - t0:.0f} s; "
                              f"{common.free_gb():.1f} GB free, load {common.load()[0]}", flush=True)

    with Watch(p, clients.manager) as w:
        with cf.ThreadPoolExecutor(limit) as pool:
            for f in [pool.submit(worker) for _ in range(limit)]:
                f.result()
        total = time.monotonic() - t0
    ended = w.ended_tasks() - w.tasks_at_start
    times = list(answered.values())
    return {
        "asked": len(users), "answered": len(answered), "failed": failed,
        "stopped_for_memory": short[0] if short else None,
        "all_answered_s": round(total, 1),
        "user_p50_s": r3(statistics.median(times)) if times else None,
        "user_p95_s": r3(common.pct(times, 0.95)) if times else None,
        "user_max_s": r3(max(times)) if times else None,
        "throttled_429": counts.get("throttled_429", 0),
        "failed_requests": counts.get("failed_requests", 0) + w.health_fail,
        "health_max_s": round(w.health_max, 2),
        "hub_restarts": max(0, len(w.containers) - 1) + len(ended),
        "unexpected": counts.get("unexpected", [])[:5],
        "answered_users": sorted(answered),
        "timeline": timeline,
        "hub_spawn_s": hub_spawn_times(p, clients, users),
    }


def hub_spawn_times(p, clients: Clients, users: list[str]) -> dict:
    """JupyterHub's own "User NAME took S seconds to start" lines of `users` (from the hub service's log;
    90-verify's test user is not one of them)."""
    import re

    try:
        raw = common.hub_log(p, clients, tail=5000)
    except Exception as e:  # noqa: BLE001 - a figure missing, not a failure
        return {"error": str(e)[:200]}
    mine = set(users)
    took = [float(m.group(2)) for m in re.finditer(r"User (\S+) took ([0-9.]+) seconds to start", raw)
            if m.group(1) in mine]
    if not took:
        return {"n": 0}
    return {"n": len(took), "p50_s": r3(statistics.median(took)), "p95_s": r3(common.pct(took, 0.95)),
            "max_s": r3(max(took))}


def hub_api(p, users: list[str], n: int) -> dict:
    s = common.token_session(p)
    out = {}
    for key, path in (("users", lambda: "/hub/api/users"), ("user", lambda: f"/hub/api/users/{random.choice(users)}")):
        times = []
        s.get(p.hub_url + path(), timeout=60).raise_for_status()  # the connection, warm
        for _ in range(n):
            t0 = time.perf_counter()
            s.get(p.hub_url + path(), timeout=60).raise_for_status()
            times.append(time.perf_counter() - t0)
        out[key] = dist(times)
    out["users_listed"] = len(s.get(p.hub_url + "/hub/api/users", timeout=60).json())
    return out


def in_hub(p, clients: Clients, script: str, *args: str) -> dict:
    ctr = running.hub_container(p, clients)
    code, out = ctr.exec_run(["python3", "-c", script, *args])
    text = out.decode(errors="replace").strip()
    if code:
        return {"error": text[-600:]}
    return json.loads(text.splitlines()[-1])


def proxy_latency(p, clients: Clients, user: str, n: int) -> dict:
    got = in_hub(p, clients, PROXY_SCRIPT, user, f"{p.prefix}-user-{user}", str(PROXY_PORT), str(n))
    if "error" in got:
        return got
    out = {k: dist(got[k]) for k in ("proxy_kept", "direct_kept", "proxy_new", "direct_new")}
    for mode in ("kept", "new"):
        out[f"added_p50_ms_{mode}"] = round(out[f"proxy_{mode}"]["p50_ms"] - out[f"direct_{mode}"]["p50_ms"], 1)
    # A user's view: through the public URL from this machine, one kept-alive TLS connection.
    s = common.token_session(p)
    s.get(f"{p.hub_url}/user/{user}/api", timeout=30)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        s.get(f"{p.hub_url}/user/{user}/api", timeout=30).raise_for_status()
        times.append(time.perf_counter() - t0)
    out["public_url_kept"] = dist(times)
    return out


def culler_pass(p, clients: Clients, passes: int) -> dict:
    got = in_hub(p, clients, CULLER_SCRIPT, str(passes))
    if "error" in got:
        return got
    t = got["times"]
    return {"passes": len(t), "p50_s": r3(statistics.median(t)), "max_s": r3(max(t)), "culler_log": got["log"]}


def task_reads(p, clients: Clients) -> dict:
    """What `ops status` and `diagnose` spend reading the servers' tasks: one request per service (before
    hubops.core.facts.tasks_by_service) against one request for all of them (after)."""
    from hubops.core import labels as L
    from hubops.core.facts import tasks_by_service

    c = clients.manager
    services = c.services.list(filters={"label": L.selector(p.deployment)})
    t0 = time.perf_counter()
    per_service = sum(len(s.tasks(filters={"desired-state": "running"})) for s in services)
    t1 = time.perf_counter()
    together = sum(len(v) for v in tasks_by_service(c, services, **{"desired-state": "running"}).values())
    t2 = time.perf_counter()
    return {"services": len(services), "per_service_s": r3(t1 - t0), "one_request_s": r3(t2 - t1),
            "tasks": [per_service, together]}


def runbook(params: Path, outputs: Path, name: str) -> dict:
    t0 = time.monotonic()
    r = common.cli("ops", name, "-p", str(params), outputs=outputs)
    wall = time.monotonic() - t0
    out = {"wall_s": round(wall, 1), "exit": r.returncode}
    runs = sorted(outputs.glob(f"*-{name}/run.json"), key=lambda f: f.stat().st_mtime)
    if runs:
        m = json.loads(runs[-1].read_text())
        out["in_stages_s"] = m.get("duration_s")
        out["cells_s"] = round(sum(s.get("cells_s") or 0 for s in m.get("stages", [])), 2)
    if r.returncode:
        out["stderr"] = r.stderr[-1500:]
    return out


def one_more_spawn(p, clients: Clients, extra: list[str], floor_n: int) -> dict:
    api = running.HubAPI(p, timeout=60)
    su = images.desired_refs(p, images.builder(p, clients))["singleuser"]
    prefix = f"{p.prefix}-floor"
    svc = common.floor_service(p, clients, su, floor_n, prefix=prefix + "-svc")
    srv = common.floor_server(p, clients, su, floor_n, prefix=prefix + "-srv")
    sus = common.floor_singleuser(p, clients, su, floor_n, prefix=prefix + "-su")
    spawns = []
    for u in extra:
        spawns.append(spawn_once(api, u))
        stop(api, u)
    floor = statistics.median(svc) + statistics.median(srv)
    return {"phases": common.spawn_phases(p, clients, extra), "floor_service_running_p50_s": r3(statistics.median(svc)), "floor_server_answers_p50_s": r3(statistics.median(srv)),
            "floor_s": r3(floor), "spawns_s": [r3(x) for x in spawns], "spawn_p50_s": r3(statistics.median(spawns)),
            "ratio_p50_to_floor": round(statistics.median(spawns) / floor, 2),
            # the image's own jupyterhub-singleuser (with a stub hub) in place of its bare `jupyter server`
            "floor_singleuser_answers_p50_s": r3(statistics.median(sus)),
            "ratio_p50_to_singleuser_floor": round(statistics.median(spawns) / (statistics.median(svc) + statistics.median(sus)), 2)}


def main() -> None:
    from tests.helpers import LAB_SUBNETS, free_subnet, run_name

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", "--users", type=int, default=100, help="users' servers to start")
    ap.add_argument("--reserve-gb", type=float, default=3.0,
                    help="stop starting servers when this machine's available memory falls below this")
    ap.add_argument("--per-server-gb", type=float, default=0.12, help="the estimate printed before starting")
    ap.add_argument("--spawns", type=int, default=3, help="spawns of one more user, with all running")
    ap.add_argument("--floor", type=int, default=3, help="floor measurements (each part)")
    ap.add_argument("--api-requests", type=int, default=50)
    ap.add_argument("--culler-passes", type=int, default=5)
    ap.add_argument("--poll", type=float, default=0.5, help="seconds between a user's looks at their server")
    ap.add_argument("--deadline", type=float, default=900, help="seconds one user's start may take")
    ap.add_argument("--engine", default=None, help="the lab nodes' engine (`hubops lab up --engine`)")
    ap.add_argument("--hub-log-level", default=None, help="the hub's log level (hub.log_level), e.g. DEBUG")
    ap.add_argument("--keep", action="store_true", help="leave the lab and deployment up (and skip teardown's figure)")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="hubops-scale-"))
    outputs = tmp / "outputs"
    name = run_name("scale")
    users = [f"u{i:03d}" for i in range(args.users)]
    extra = [f"extra{i}" for i in range(args.spawns)]
    params = tmp / "scale.yaml"
    # The lab's userlist, written before `lab up` (which keeps one it finds).
    params.with_name("scale.userlist").write_text("operator admin\n" + "".join(f"{u}\n" for u in users + extra))
    res: dict = {"users_asked": args.users, "lab": name, "machine": common.machine(), "when": common.now_stamp(),
                 "git": common.git_head()}
    need = args.users * args.per_server_gb + args.reserve_gb
    print(f"lab {name}: {args.users} users' servers; about {need:.1f} GB needed, {common.free_gb():.1f} GB free "
          f"(stops by itself below {args.reserve_gb} GB); load {common.load()}", flush=True)
    up = None
    try:
        t0 = time.monotonic()
        up = lab.lab_up(name=name, workers=2, subnet=free_subnet(LAB_SUBNETS), params_out=params,
                        overlay_subnet=free_subnet(), engines=args.engine)
        res["lab_up_s"] = round(time.monotonic() - t0, 1)
        res["engines"] = {n.name: n.engine_version for n in up.nodes}
        if args.hub_log_level:
            import yaml

            header = "".join(ln + "\n" for ln in params.read_text().splitlines() if ln.startswith("#"))
            data = yaml.safe_load(params.read_text())
            data["hub"]["log_level"] = args.hub_log_level
            params.write_text(header + yaml.safe_dump(data, sort_keys=False))
        t0 = time.monotonic()
        r = common.cli("deploy", "-p", str(params), outputs=outputs)
        res["deploy_s"] = round(time.monotonic() - t0, 1)
        print(f"lab up {res['lab_up_s']} s, deploy {res['deploy_s']} s (exit {r.returncode})", flush=True)
        if r.returncode:
            raise SystemExit(r.stderr[-3000:])
        p = load_params(params)
        clients = Clients(p)
        limit = spawn_limits.concurrent_spawn_limit(p, spawn_limits.user_node_cpus(clients.manager, p))
        res["concurrent_spawn_limit"] = limit
        common.create_users(p, users + extra)

        mem0, rss0 = common.free_gb(), cgroup_rss_gb([n.name for n in up.workers])
        res["before_start"] = {"mem_free_gb": round(mem0, 2), "load": common.load(),
                               "workers_rss_gb": r3(rss0)}
        print(f"starting {len(users)} servers, at most {limit} at once ...", flush=True)
        st = start_all(p, clients, users, limit, args.reserve_gb, args.poll, args.deadline)
        running_users = st.pop("answered_users")
        n = len(running_users)
        time.sleep(5)  # let the last servers settle before reading memory
        mem1, rss1 = common.free_gb(), cgroup_rss_gb([n_.name for n_ in up.workers])
        st["mem_free_gb_after"] = round(mem1, 2)
        st["load_after"] = common.load()
        if n:
            st["mem_per_server_gb"] = round((mem0 - mem1) / n, 3)
            if rss0 is not None and rss1 is not None:
                st["workers_rss_per_server_gb"] = round((rss1 - rss0) / n, 3)
        res["start"] = st
        how_far = f"{n} of {len(users)} servers answering"
        if st["stopped_for_memory"]:
            how_far += f"; stopped starting: {st['stopped_for_memory']}"
        print(f"{how_far}; {st['all_answered_s']} s; memory per server {st.get('mem_per_server_gb')} GB "
              f"(workers' containers' RSS {st.get('workers_rss_per_server_gb')} GB)", flush=True)
        res["running"] = n

        if n:
            print("hub API ...", flush=True)
            res["hub_api"] = hub_api(p, running_users, args.api_requests)
            print("proxy ...", flush=True)
            res["proxy"] = proxy_latency(p, clients, running_users[0], args.api_requests)
            print("culler ...", flush=True)
            res["culler"] = culler_pass(p, clients, args.culler_passes)
            print("one more spawn and the floor ...", flush=True)
            res["spawn"] = one_more_spawn(p, clients, extra, args.floor)
            print("ops status, ops diagnose ...", flush=True)
            res["task_reads"] = task_reads(p, clients)
            res["ops_status"] = runbook(params, outputs, "status")
            res["ops_diagnose"] = runbook(params, outputs, "diagnose")
            res["load_measuring"] = common.load()
        if not args.keep:
            t0 = time.monotonic()
            r = common.cli("ops", "teardown", "-p", str(params), "--set", "confirm=true", "--set", "remove_volumes=true",
                           "--set", "remove_user_data=true", outputs=outputs)
            res["teardown"] = {"servers": n, "wall_s": round(time.monotonic() - t0, 1), "exit": r.returncode}
            if r.returncode:
                res["teardown"]["stderr"] = r.stderr[-1500:]
    finally:
        if not args.keep:
            t0 = time.monotonic()
            lab.lab_down(name=name)
            res["lab_down_s"] = round(time.monotonic() - t0, 1)
        else:
            print(f"kept: lab {name}, parameters {params}, records {outputs}")
        out = PROJECT / "bench" / "results" / f"scale-{common.now_stamp()}.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps(res, indent=2, default=str) + "\n")
        report(res)
        print(f"written: {out}")


def report(res: dict) -> None:
    st, api, px, cu, sp = (res.get(k) or {} for k in ("start", "hub_api", "proxy", "culler", "spawn"))
    rows = [
        ("servers answering / asked", f"{res.get('running')} / {res.get('users_asked')}"
                                      + (f"  (stopped: {st['stopped_for_memory']})" if st.get("stopped_for_memory") else "")),
        ("concurrent_spawn_limit", res.get("concurrent_spawn_limit")),
        ("all answered (s), user p50 / p95 / max (s)", f"{st.get('all_answered_s')}, {st.get('user_p50_s')} / "
                                                      f"{st.get('user_p95_s')} / {st.get('user_max_s')}"),
        ("hub's own spawn times p50 / p95 / max (s)", f"{(st.get('hub_spawn_s') or {}).get('p50_s')} / "
                                                     f"{(st.get('hub_spawn_s') or {}).get('p95_s')} / "
                                                     f"{(st.get('hub_spawn_s') or {}).get('max_s')}"),
        ("429s, failed requests, hub restarts", f"{st.get('throttled_429')}, {st.get('failed_requests')}, {st.get('hub_restarts')}"),
        ("memory per server: machine / workers' RSS (GB)", f"{st.get('mem_per_server_gb')} / {st.get('workers_rss_per_server_gb')}"),
        ("free memory before / after (GB)", f"{(res.get('before_start') or {}).get('mem_free_gb')} / {st.get('mem_free_gb_after')}"),
        ("hub API /users p50 / p95 (ms)", f"{(api.get('users') or {}).get('p50_ms')} / {(api.get('users') or {}).get('p95_ms')}"),
        ("hub API /users/NAME p50 / p95 (ms)", f"{(api.get('user') or {}).get('p50_ms')} / {(api.get('user') or {}).get('p95_ms')}"),
        ("spawn p50 (s) / floor (s) = ratio", f"{sp.get('spawn_p50_s')} / {sp.get('floor_s')} = {sp.get('ratio_p50_to_floor')}"),
        ("  ratio to the singleuser floor", f"{sp.get('ratio_p50_to_singleuser_floor')} (singleuser answers "
                                            f"{sp.get('floor_singleuser_answers_p50_s')} s)"),
        ("proxy added p50, kept-alive / new conn (ms)", f"{px.get('added_p50_ms_kept')} / {px.get('added_p50_ms_new')}"),
        ("  through proxy / direct, kept p50 (ms)", f"{(px.get('proxy_kept') or {}).get('p50_ms')} / {(px.get('direct_kept') or {}).get('p50_ms')}"),
        ("  public URL from here, kept p50 (ms)", (px.get("public_url_kept") or {}).get("p50_ms")),
        ("culler pass p50 / max (s)", f"{cu.get('p50_s')} / {cu.get('max_s')}  {cu.get('culler_log') or cu.get('error') or ''}"),
        ("ops status wall / cells (s)", f"{(res.get('ops_status') or {}).get('wall_s')} / {(res.get('ops_status') or {}).get('cells_s')}"),
        ("ops diagnose wall / cells (s)", f"{(res.get('ops_diagnose') or {}).get('wall_s')} / {(res.get('ops_diagnose') or {}).get('cells_s')}"),
        ("servers' tasks: a request each / one request (s)", f"{(res.get('task_reads') or {}).get('per_service_s')} / "
                                                           f"{(res.get('task_reads') or {}).get('one_request_s')}"),
        ("teardown with the servers running (s)", (res.get("teardown") or {}).get("wall_s")),
        ("lab up / deploy / lab down (s)", f"{res.get('lab_up_s')} / {res.get('deploy_s')} / {res.get('lab_down_s')}"),
        ("load before / after starts / measuring", f"{(res.get('before_start') or {}).get('load')} / {st.get('load_after')} / "
                                                    f"{res.get('load_measuring')}"),
    ]
    for k, v in rows:
        print(f"{k:<50} {v}")


if __name__ == "__main__":
    main()
