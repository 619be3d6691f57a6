#!/usr/bin/env python3
"""A class starting at once: bursts of users through the REST API against one deployment, printing
hub restarts, failed requests and the time until every server answers. Figures, no assertions.

    flock /tmp/hubops-lock-heavy .venv/bin/python bench/burst.py --bursts 20,50,100
    ... --project /path/to/another/checkout     # deploy that checkout's hubops (a "before" figure)
    ... --params FILE --no-deploy               # an existing deployment (e.g. a lab's), left up
    ... --lab                                   # a lab of its own (1 manager, 2 workers), torn down after

Without --params it deploys a deployment of its own on this machine's engine (the embedded default's
shape: one node, a free port and overlay subnet, its operator folder and records in a temporary
folder), and tears it down at the end. With --lab it brings up a lab of one manager and two workers
(free subnets from tests.helpers), writes the lab's userlist with the burst's users, deploys, and at
the end tears the deployment down and removes the lab (also after a failure). Each burst: every user asks for their server at the same
moment (POST /hub/api/users/NAME/server); a 429 is JupyterHub's "wait your turn", honoured as a client
would (Retry-After, then again); then each polls its server through the proxy every --poll s
(/user/NAME/api/status) until it answers. Meanwhile a watcher asks /hub/health through the proxy
every second and reads the hub service's tasks and container from the engine. Then every server
is stopped before the next burst. 100 servers need about 11 GB of memory: see --min-free-gb.

What each figure is:
- all_answered_s: from the burst's first request until the last user's server answers;
- user_p50_s / user_max_s: per user, from their first request until their server answers;
- throttled_429: answers "too many starting, try again in N s" (a normal wait, not a failure);
- failed_requests: requests that got no answer, a 5xx, or an unexpected status (users' and watcher's);
- health_fail / health_max_s: the watcher's /hub/health through the proxy: failures, slowest answer;
- hub_restarts: hub containers seen minus one, plus hub tasks that ended in the burst;
- check_busy: healthcheck runs that passed as "busy" (hubops/inhub/health.py);
- unfinished: users whose server did not answer within --deadline seconds, or whose spawn failed;
- spawn_failed: users whose spawn the hub accepted and then gave up on (no server, none pending).
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import docker
import requests

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from hubops.core.engine import Clients  # noqa: E402
from hubops.core.params import load_params  # noqa: E402
from hubops.hub.running import hub_session  # noqa: E402

from bench.common import admin, free_gb, token_session as session  # noqa: E402
from bench import common  # noqa: E402


class Watch:
    """The hub as its users and Swarm see it, every second, in a thread."""

    def __init__(self, p, client: docker.DockerClient):
        self.p, self.c = p, client
        self.stop = threading.Event()
        self.health_fail = 0
        self.health_max = 0.0
        self.containers: set[str] = set()
        self.tasks_at_start = self.ended_tasks()
        self.busy_logs: set[str] = set()
        self.unhealthy_logs: set[str] = set()
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self.run, daemon=True)

    def ended_tasks(self) -> set[str]:
        try:
            svc = self.c.services.get(self.p.hub_service)
            return {t["ID"] for t in svc.tasks() if t.get("DesiredState") != "running"}
        except docker.errors.APIError:
            return set()

    def run(self) -> None:
        s = hub_session(self.p)
        while not self.stop.is_set():
            t0 = time.monotonic()
            try:
                ok = s.get(f"{self.p.hub_url}/hub/health", timeout=30).status_code == 200
            except requests.RequestException as e:
                ok = False
                self.errors.append(f"health: {e.__class__.__name__}")
            self.health_max = max(self.health_max, time.monotonic() - t0)
            self.health_fail += not ok
            try:
                for ctr in self.c.containers.list(filters={"label": [f"hubops.deployment={self.p.deployment}",
                                                                     "hubops.role=hub"]}):
                    self.containers.add(ctr.id)
                    for entry in ((ctr.attrs.get("State") or {}).get("Health") or {}).get("Log") or []:
                        out = (entry.get("Output") or "").strip()
                        key = f"{entry.get('Start')} {out}"
                        if out.startswith("healthy: busy"):
                            self.busy_logs.add(key)
                        elif entry.get("ExitCode"):
                            self.unhealthy_logs.add(key)
            except docker.errors.APIError as e:
                self.errors.append(f"engine: {e}")
            self.stop.wait(max(0.0, 1.0 - (time.monotonic() - t0)))

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def one_user(p, user: str, t0: float, deadline: float, poll: float, counts: dict, lock: threading.Lock) -> float | None:
    s = session(p)

    def bump(k: str, n: int = 1) -> None:
        with lock:
            counts[k] = counts.get(k, 0) + n

    # Ask for the server until the hub takes the request (201/202), or says it is already there (400).
    while time.monotonic() < deadline:
        try:
            r = s.post(f"{p.hub_url}/hub/api/users/{user}/server", timeout=60)
        except requests.RequestException:
            bump("failed_requests")
            time.sleep(2)
            continue
        if r.status_code in (201, 202):
            break
        if r.status_code == 429:
            bump("throttled_429")
            with lock:
                counts.setdefault("messages_429", set()).add(r.json().get("message", r.text[:200]))
            time.sleep(float(r.headers.get("Retry-After") or 10))
            continue
        if r.status_code == 400 and "already" in r.text:
            break
        bump("failed_requests")
        with lock:
            counts.setdefault("unexpected", []).append(f"POST {user}: {r.status_code} {r.text[:120]}")
        time.sleep(2)
    # Then, as the user's browser would, reach the server through the proxy.
    last_look = time.monotonic()
    while time.monotonic() < deadline:
        try:
            r = s.get(f"{p.hub_url}/user/{user}/api/status", timeout=60, allow_redirects=False)
            if r.status_code == 200:
                return time.monotonic() - t0
            if r.status_code >= 500 and r.status_code not in (503,):  # 503: "not running yet" is a wait
                bump("failed_requests")
        except requests.RequestException:
            bump("failed_requests")
        if time.monotonic() - last_look > 10:  # did the hub give up on this spawn? (its page would say so)
            last_look = time.monotonic()
            if spawn_gave_up(s, p, user):
                bump("spawn_failed")
                with lock:
                    counts.setdefault("unexpected", []).append(f"{user}: the hub gave up on the spawn")
                return None
        time.sleep(poll)
    return None


def spawn_gave_up(s: requests.Session, p, user: str) -> bool:
    """Whether the hub has neither a pending nor a running default server for `user` (after it
    accepted the start): it gave up on the spawn, e.g. "server never showed up ... Giving up"."""
    try:
        r = s.get(f"{p.hub_url}/hub/api/users/{user}", timeout=60)
        if r.status_code != 200:
            return False
        server = (r.json().get("servers") or {}).get("")
    except (requests.RequestException, ValueError):
        return False
    return server is None


def stop_all(p, users: list[str], wait_s: float = 600) -> None:
    s = session(p)
    for u in users:
        try:
            s.delete(f"{p.hub_url}/hub/api/users/{u}/server", timeout=120)
        except requests.RequestException:
            pass
    t0 = time.monotonic()
    left = list(users)
    while left and time.monotonic() - t0 < wait_s:
        try:
            data = s.get(f"{p.hub_url}/hub/api/users", timeout=120).json()
            running = {u["name"] for u in data if (u.get("servers") or {})}
        except (requests.RequestException, ValueError):
            time.sleep(2)
            continue
        left = [u for u in users if u in running]
        if left:
            for u in left:  # a stop refused while the start was still pending
                try:
                    s.delete(f"{p.hub_url}/hub/api/users/{u}/server", timeout=120)
                except requests.RequestException:
                    pass
            time.sleep(3)


def burst(p, client, users: list[str], poll: float, deadline_s: float) -> dict:
    counts: dict = {}
    lock = threading.Lock()
    with Watch(p, client) as w:
        t0 = time.monotonic()
        with cf.ThreadPoolExecutor(len(users)) as pool:
            futs = [pool.submit(one_user, p, u, t0, t0 + deadline_s, poll, counts, lock) for u in users]
            times = [f.result() for f in futs]
        total = time.monotonic() - t0
        time.sleep(2)
    done = [t for t in times if t is not None]
    ended = w.ended_tasks() - w.tasks_at_start
    return {
        "users": len(users),
        "all_answered_s": round(total, 1) if len(done) == len(users) else None,
        "user_p50_s": round(statistics.median(done), 1) if done else None,
        "user_max_s": round(max(done), 1) if done else None,
        "unfinished": len(users) - len(done),
        "spawn_failed": counts.get("spawn_failed", 0),
        "throttled_429": counts.get("throttled_429", 0),
        "failed_requests": counts.get("failed_requests", 0) + w.health_fail,
        "health_fail": w.health_fail,
        "health_max_s": round(w.health_max, 2),
        "hub_restarts": max(0, len(w.containers) - 1) + len(ended),
        "check_busy": len(w.busy_logs),
        "check_unhealthy": len(w.unhealthy_logs),
        "messages_429": sorted(counts.get("messages_429", set()))[:3],
        "unexpected": counts.get("unexpected", [])[:5],
        "watch_errors": w.errors[:5],
        "load_after": os.getloadavg()[0],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bursts", default="20,50,100", help="users per burst, comma-separated")
    ap.add_argument("--project", type=Path, default=PROJECT, help="the checkout whose hubops deploys and tears down")
    ap.add_argument("--params", type=Path, help="an existing deployment's parameter file (its userlist must list "
                                                 "burst0 .. burstN-1)")
    ap.add_argument("--no-deploy", action="store_true", help="with --params: use the deployment as it is, leave it up")
    ap.add_argument("--keep", action="store_true", help="leave this script's own deployment (or lab) up")
    ap.add_argument("--lab", action="store_true", help="bring up a lab of 1 manager and 2 workers and burst there")
    ap.add_argument("--poll", type=float, default=1.0, help="seconds between a user's looks at their server")
    ap.add_argument("--deadline", type=float, default=900, help="seconds a burst may take")
    ap.add_argument("--min-free-gb", type=float, default=0.12, help="GB of free memory needed per server (stop if short)")
    ap.add_argument("--label", default="", help="a name for this run in the output (e.g. before, after)")
    args = ap.parse_args()
    sizes = [int(x) for x in args.bursts.split(",") if x.strip()]
    need = max(sizes) * args.min_free_gb + 2
    if free_gb() < need:
        sys.exit(f"only {free_gb():.1f} GB of memory free; {max(sizes)} servers need about {need:.0f} GB: "
                 "use smaller --bursts or wait")
    tmp = Path(tempfile.mkdtemp(prefix="hubops-burst-"))
    outputs = tmp / "outputs"
    users = [f"burst{i}" for i in range(max(sizes))]
    res: dict = {"label": args.label, "project": str(args.project),
                 "git": subprocess.run(["git", "-C", str(args.project), "log", "-1", "--format=%h %s"],
                                       capture_output=True, text=True).stdout.strip(),
                 "machine": {"node": platform.node(), "cpus": os.cpu_count(), "mem_free_gb": round(free_gb(), 1),
                             "load": os.getloadavg()},
                 "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "bursts": []}
    own = args.params is None
    userlist = "operator admin\n" + "".join(f"{u}\n" for u in users)
    lab_name = None
    if own and args.lab:
        from hubops.lab import cluster as lab
        from tests.helpers import LAB_SUBNETS, free_subnet, run_name

        lab_name = run_name("bbrst")
        params = tmp / f"{lab_name}.yaml"
        res["lab"] = {"name": lab_name, "managers": 1, "workers": 2, "subnet": free_subnet(LAB_SUBNETS),
                      "overlay_subnet": free_subnet()}
        t0 = time.monotonic()
        try:
            lab.lab_up(name=lab_name, managers=1, workers=2, subnet=res["lab"]["subnet"],
                       overlay_subnet=res["lab"]["overlay_subnet"], params_out=params)
        except BaseException:
            lab.lab_down(name=lab_name)
            raise
        res["lab"]["up_s"] = round(time.monotonic() - t0, 1)
        params.with_name(f"{params.stem}.userlist").write_text(userlist)
        print(f"lab {lab_name}: up in {res['lab']['up_s']} s", flush=True)
    elif own:
        from tests.helpers import free_port, free_subnet, make_params, run_name

        params = make_params(tmp, run_name("burst"), port=free_port(), subnet=free_subnet(), users=userlist)
    else:
        params = args.params
    p = load_params(params)
    # The engine that runs the hub: this machine's for a one-node deployment, the hub's manager on a lab.
    client = Clients(p, timeout=120).manager
    try:
        if not args.no_deploy:
            t0 = time.monotonic()
            r = common.cli("deploy", "-p", str(params), project=args.project, outputs=outputs)
            res["deploy_s"] = round(time.monotonic() - t0, 1)
            print(f"deploy {p.deployment} ({args.project}): {res['deploy_s']} s, exit {r.returncode}", flush=True)
            if r.returncode:
                raise SystemExit(r.stderr[-3000:])
        svc = client.services.get(p.hub_service)
        hc = svc.attrs["Spec"]["TaskTemplate"]["ContainerSpec"].get("Healthcheck") or {}
        res["healthcheck"] = {k: v for k, v in hc.items() if k != "Test"}
        from hubops.hub import spawn_limits

        cpus = spawn_limits.user_node_cpus(client, p)  # as the deploy sized the hub's limit
        res["hub_limits"] = {"user_node_cpus": cpus,
                             "concurrent_spawn_limit": spawn_limits.concurrent_spawn_limit(p, cpus)}
        print(f"hub limits: {res['hub_limits']}", flush=True)
        a = admin(p)
        for u in users:  # users on the userlist, made in the hub's database by its admin
            a.post(f"{p.hub_url}/hub/api/users/{u}", timeout=60)
        for n in sizes:
            if free_gb() < n * args.min_free_gb + 2:
                print(f"burst of {n}: skipped, only {free_gb():.1f} GB free", flush=True)
                res["bursts"].append({"users": n, "skipped": f"{free_gb():.1f} GB free"})
                continue
            print(f"burst of {n} users at once ...", flush=True)
            before = {"load_before": os.getloadavg()[0], "mem_free_gb_before": round(free_gb(), 1)}
            b = {**burst(p, client, users[:n], args.poll, args.deadline), **before}
            print("  " + json.dumps(b), flush=True)
            res["bursts"].append(b)
            stop_all(p, users[:n])
    finally:
        if own and not args.keep:
            try:
                r = common.cli("ops", "teardown", "-p", str(params), "--set", "confirm=true", "--set", "remove_volumes=true",
                               "--set", "remove_user_data=true", project=args.project, outputs=outputs)
                print(f"teardown: exit {r.returncode}", flush=True)
                if r.returncode:
                    print(r.stderr[-2000:], file=sys.stderr)
            finally:
                if lab_name:
                    lab.lab_down(name=lab_name)
                    print(f"lab {lab_name}: down", flush=True)
    out = PROJECT / "bench" / "results" / f"burst-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(res, indent=2, default=str) + "\n")
    cols = ["users", "all_answered_s", "user_p50_s", "user_max_s", "unfinished", "spawn_failed", "throttled_429",
            "failed_requests", "health_fail", "health_max_s", "hub_restarts", "check_busy", "check_unhealthy"]
    print(f"{args.label or 'burst'}: {res['git']}  healthcheck {res.get('healthcheck')}")
    print("  ".join(cols))
    for b in res["bursts"]:
        print("  ".join(str(b.get(c, "-")) for c in cols))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
