#!/usr/bin/env python3
"""A class starting at once: bursts of users through the REST API against one deployment, printing
hub restarts, failed requests and the time until every server answers. Figures, no assertions.

    flock /tmp/hubops-lock-heavy .venv/bin/python bench/burst.py --bursts 20,50,100
    ... --project /path/to/another/checkout     # deploy that checkout's hubops (a "before" figure)
    ... --params FILE --no-deploy               # an existing deployment (e.g. a lab's), left up

Without --params it deploys a deployment of its own on this machine's engine (the embedded default's
shape: one node, a free port and overlay subnet, its operator folder and records in a temporary
folder), and tears it down at the end. Each burst: every user asks for their server at the same
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
- unfinished: users whose server did not answer within --deadline seconds.
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

from hubops.core import operator  # noqa: E402
from hubops.core.params import load_params  # noqa: E402
from hubops.hub.running import hub_session  # noqa: E402


def cli(project: Path, outputs: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HUBOPS_OUTPUTS": str(outputs), "PYTHONPATH": str(project)}
    return subprocess.run([sys.executable, "-m", "hubops.cli.main", *args], cwd=project, capture_output=True,
                          text=True, env=env, timeout=3600)


def session(p) -> requests.Session:
    s = hub_session(p)
    s.headers["Authorization"] = f"token {operator.read(p, 'api-token').decode().strip()}"
    return s


def admin(p) -> requests.Session:
    s = hub_session(p)
    s.get(f"{p.hub_url}/hub/login", timeout=60)
    pw = (p.operator_path / "admin-password").read_text().strip()
    r = s.post(f"{p.hub_url}/hub/login", data={"username": p.admins[0], "password": pw,
                                               "_xsrf": s.cookies.get("_xsrf")}, allow_redirects=False, timeout=60)
    r.raise_for_status()
    s.headers["X-XSRFToken"] = s.cookies.get("_xsrf")
    return s


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
    while time.monotonic() < deadline:
        try:
            r = s.get(f"{p.hub_url}/user/{user}/api/status", timeout=60, allow_redirects=False)
            if r.status_code == 200:
                return time.monotonic() - t0
            if r.status_code >= 500 and r.status_code not in (503,):  # 503: "not running yet" is a wait
                bump("failed_requests")
        except requests.RequestException:
            bump("failed_requests")
        time.sleep(poll)
    return None


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


def free_gb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024 / 1024
    return 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bursts", default="20,50,100", help="users per burst, comma-separated")
    ap.add_argument("--project", type=Path, default=PROJECT, help="the checkout whose hubops deploys and tears down")
    ap.add_argument("--params", type=Path, help="an existing deployment's parameter file (its userlist must list "
                                                 "burst0 .. burstN-1)")
    ap.add_argument("--no-deploy", action="store_true", help="with --params: use the deployment as it is, leave it up")
    ap.add_argument("--keep", action="store_true", help="leave this script's own deployment up")
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
                 "machine": {"node": platform.node(), "cpus": os.cpu_count(), "mem_free_gb": round(free_gb(), 1)},
                 "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "bursts": []}
    own = args.params is None
    if own:
        from tests.helpers import free_port, free_subnet, make_params, run_name

        params = make_params(tmp, run_name("burst"), port=free_port(), subnet=free_subnet(),
                             users="operator admin\n" + "".join(f"{u}\n" for u in users))
    else:
        params = args.params
    p = load_params(params)
    client = docker.from_env(timeout=120)
    try:
        if not args.no_deploy:
            t0 = time.monotonic()
            r = cli(args.project, outputs, "deploy", "-p", str(params))
            res["deploy_s"] = round(time.monotonic() - t0, 1)
            print(f"deploy {p.deployment} ({args.project}): {res['deploy_s']} s, exit {r.returncode}", flush=True)
            if r.returncode:
                raise SystemExit(r.stderr[-3000:])
        svc = client.services.get(p.hub_service)
        hc = svc.attrs["Spec"]["TaskTemplate"]["ContainerSpec"].get("Healthcheck") or {}
        res["healthcheck"] = {k: v for k, v in hc.items() if k != "Test"}
        res["hub_limits"] = {}
        a = admin(p)
        for u in users:  # users on the userlist, made in the hub's database by its admin
            a.post(f"{p.hub_url}/hub/api/users/{u}", timeout=60)
        for n in sizes:
            if free_gb() < n * args.min_free_gb + 2:
                print(f"burst of {n}: skipped, only {free_gb():.1f} GB free", flush=True)
                res["bursts"].append({"users": n, "skipped": f"{free_gb():.1f} GB free"})
                continue
            print(f"burst of {n} users at once ...", flush=True)
            b = burst(p, client, users[:n], args.poll, args.deadline)
            print("  " + json.dumps(b), flush=True)
            res["bursts"].append(b)
            stop_all(p, users[:n])
    finally:
        if own and not args.keep:
            r = cli(args.project, outputs, "ops", "teardown", "-p", str(params), "--set", "confirm=true",
                    "--set", "remove_volumes=true", "--set", "remove_user_data=true")
            print(f"teardown: exit {r.returncode}", flush=True)
            if r.returncode:
                print(r.stderr[-2000:], file=sys.stderr)
    out = PROJECT / "bench" / "results" / f"burst-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(res, indent=2, default=str) + "\n")
    cols = ["users", "all_answered_s", "user_p50_s", "user_max_s", "unfinished", "throttled_429", "failed_requests",
            "health_fail", "health_max_s", "hub_restarts", "check_busy", "check_unhealthy"]
    print(f"{args.label or 'burst'}: {res['git']}  healthcheck {res.get('healthcheck')}")
    print("  ".join(cols))
    for b in res["bursts"]:
        print("  ".join(str(b.get(c, "-")) for c in cols))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
