#!/usr/bin/env python3
"""Spawn latency, burst and image delivery on a lab of one manager and two workers, measured
side by side with this machine's floor. Prints a table and writes JSON (bench/results/*.json).

    python bench/spawn.py [--lab bench] [--spawns 20] [--burst 20] [--keep]

Brings the lab up (and the deployment, warm if it exists), measures, and takes both down unless
--keep. Needs root (the lab). Figures, not assertions: see bench/README.md.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import docker
import docker.types

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from hubops.stages import images  # noqa: E402
from hubops.lab import cluster as lab
from hubops.ops import teardown
from hubops.core.engine import Clients  # noqa: E402
from hubops.core.params import load_params  # noqa: E402
from hubops.hub.running import HubAPI  # noqa: E402

from bench.common import admin_create, cli, floor_server, floor_service, pct  # noqa: E402


def spawn_once(api: HubAPI, user: str) -> float:
    if api.user(user) is None:
        admin_create(api.p, user)
    t0 = time.monotonic()
    api.request("POST", f"/hub/api/users/{user}/server", ok=(201, 202))
    while True:
        r = api.s.get(f"{api.base}/user/{user}/api/status", timeout=10, allow_redirects=False)
        if r.status_code == 200:
            return time.monotonic() - t0
        time.sleep(0.02)


def stop(api: HubAPI, user: str) -> None:
    api.request("DELETE", f"/hub/api/users/{user}/server", ok=(202, 204))
    api.wait_server(user, ready=False, timeout=120)


def delivery(p, clients: Clients) -> dict:
    """Both images to one node, then to all nodes, from the building engine (images removed first)."""
    src = images.builder(p, clients)
    refs = list(images.desired_refs(p, src).values())
    nodes = clients.all()

    def wipe(names):
        for n in names:
            for ref in refs:
                try:
                    nodes[n].images.remove(ref, force=True)
                except docker.errors.NotFound:
                    pass

    one = p.hosts.workers[0].name
    wipe([one])
    t0 = time.monotonic()
    images.ensure_images_on_nodes({one: nodes[one]}, refs, source=src)
    t_one = time.monotonic() - t0
    wipe(list(nodes))
    t0 = time.monotonic()
    images.ensure_images_on_nodes(nodes, refs, source=src)
    t_all = time.monotonic() - t0
    return {"one_node_s": round(t_one, 1), "all_nodes_s": round(t_all, 1), "nodes": len(nodes),
            "ratio_all_to_one": round(t_all / t_one, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lab", default="bench")
    ap.add_argument("--subnet", default="10.81.0.0/24")
    ap.add_argument("--spawns", type=int, default=20)
    ap.add_argument("--burst", type=int, default=20)
    ap.add_argument("--floor", type=int, default=10)
    ap.add_argument("--overlay-subnet", default="10.243.0.0/24")
    ap.add_argument("--engine", default=None,
                    help="the lab nodes' Docker engine (`hubops lab up --engine`): 20.10 (default), 26, 28 or per node")
    ap.add_argument("--keep", action="store_true", help="leave the lab and deployment up")
    ap.add_argument("--skip-delivery", action="store_true")
    args = ap.parse_args()
    params = PROJECT / "bench" / "results" / f"{args.lab}.yaml"
    params.parent.mkdir(exist_ok=True)
    res: dict = {"machine": {"node": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
                             "kernel": platform.release()}, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    up = lab.lab_up(name=args.lab, workers=2, subnet=args.subnet, params_out=params,
                    overlay_subnet=args.overlay_subnet, engines=args.engine)
    print("engines: " + ", ".join(f"{n.name} Docker {n.engine_version}" for n in up.nodes))
    res["engines"] = {n.name: n.engine_version for n in up.nodes}
    try:
        t0 = time.monotonic()
        r = cli("deploy", "-p", str(params))
        res["deploy_first_s"] = round(time.monotonic() - t0, 1)
        if r.returncode:
            sys.exit(r.stderr[-3000:])
        t0 = time.monotonic()
        r = cli("deploy", "-p", str(params))
        res["deploy_warm_s"] = round(time.monotonic() - t0, 1)
        runs = sorted((PROJECT / "outputs").glob(f"*-{args.lab}-deploy/run.json"))
        warm = json.loads(runs[-1].read_text())
        # Per stage: its wall time, the part its cells took, and the rest (kernel start, papermill).
        res["warm_stages"] = {s["name"]: {"total_s": s["duration_s"], "cells_s": s.get("cells_s"),
                                          "machinery_s": round(s["duration_s"] - (s.get("cells_s") or 0), 2)}
                              for s in warm["stages"]}
        res["deploy_warm_in_stages_s"] = warm["duration_s"]
        # The same no-change deploy with every stage starting its own kernel (hubops.audit.kernels off).
        t0 = time.monotonic()
        r = cli("deploy", "-p", str(params), env={"HUBOPS_KERNELS_AHEAD": "0"})
        res["deploy_warm_no_prestart_s"] = round(time.monotonic() - t0, 1)
        p = load_params(params)
        clients = Clients(p)
        api = HubAPI(p, timeout=30)
        su = images.desired_refs(p, images.builder(p, clients))["singleuser"]

        svc = floor_service(p, clients, su, args.floor)
        srv = floor_server(p, clients, su, args.floor)
        spawns = []
        for i in range(args.spawns):
            spawns.append(spawn_once(api, "benchuser"))
            stop(api, "benchuser")
        floor = statistics.median(svc) + statistics.median(srv)
        res["floor"] = {"service_running_p50_s": round(statistics.median(svc), 2),
                        "server_answers_p50_s": round(statistics.median(srv), 2), "sum_s": round(floor, 2)}
        res["spawn"] = {"n": len(spawns), "p50_s": round(statistics.median(spawns), 2), "p95_s": round(pct(spawns, 0.95), 2),
                        "ratio_p50_to_floor": round(statistics.median(spawns) / floor, 2)}

        users = [f"burst{i}" for i in range(args.burst)]
        t0 = time.monotonic()
        with cf.ThreadPoolExecutor(len(users)) as pool:
            futs = {pool.submit(spawn_once, HubAPI(p, timeout=60), u): u for u in users}
            done = [f.exception() for f in cf.as_completed(futs)]
        res["burst"] = {"users": len(users), "all_answered_s": round(time.monotonic() - t0, 1),
                        "failures": sum(e is not None for e in done)}
        for u in users:
            try:
                stop(api, u)
            except Exception:  # noqa: BLE001 - the figures are taken; cleanup is best effort
                pass
        if not args.skip_delivery:
            res["delivery"] = delivery(p, clients)
    finally:
        if not args.keep:
            try:
                p = load_params(params)
                teardown.teardown(p, Clients(p), remove_volumes=True)
            except Exception as e:  # noqa: BLE001
                print("teardown:", e, file=sys.stderr)
            lab.lab_down(name=args.lab)
    out = PROJECT / "bench" / "results" / f"spawn-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"{'figure':<40} value")
    for section in ("floor", "spawn", "burst", "delivery"):
        for k, v in (res.get(section) or {}).items():
            print(f"{section + '.' + k:<40} {v}")
    print(f"{'deploy_first_s':<40} {res.get('deploy_first_s')}")
    print(f"{'deploy_warm_s':<40} {res.get('deploy_warm_s')}")
    print(f"{'deploy_warm_no_prestart_s':<40} {res.get('deploy_warm_no_prestart_s')}  (HUBOPS_KERNELS_AHEAD=0)")
    print(f"{'deploy_warm_in_stages_s':<40} {res.get('deploy_warm_in_stages_s')}  (the rest: CLI start, report)")
    print(f"{'  warm stage':<40} total_s  cells_s  machinery_s")
    for k, v in res.get("warm_stages", {}).items():
        print(f"{'  ' + k:<40} {v['total_s']:>7}  {v['cells_s']:>7}  {v['machinery_s']:>11}")
    print(f"written: {out}")


if __name__ == "__main__":
    main()
