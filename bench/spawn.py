#!/usr/bin/env python3
"""Spawn latency, burst and image delivery on a lab of one manager and two workers, measured
side by side with this machine's floor. Prints a table and writes JSON (bench/results/*.json).

    python bench/spawn.py [--lab bench] [--spawns 20] [--burst 20] [--keep]
    python bench/spawn.py --engines 20.10,28 [--spawns 10 --burst 10 --floor 5]

Brings the lab up (and the deployment, warm if it exists), measures, and takes both down unless
--keep. `--engines` does it on one lab per engine in turn (all nodes on that engine), in the
same run, and prints one table with a column per engine. The machine's load average is recorded
before and after each lab's measurements. Needs root (the lab). Figures, not assertions: see
bench/README.md.
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

from bench.common import (admin_create, cli, floor_server, floor_service, floor_singleuser, pct,  # noqa: E402
                          spawn_phases)


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


def burst(p, api: HubAPI, n: int) -> dict:
    """n users ask at the same moment; until all answer through the proxy, and how many failed."""
    users = [f"burst{i}" for i in range(n)]
    t0 = time.monotonic()
    with cf.ThreadPoolExecutor(len(users)) as pool:
        futs = {pool.submit(spawn_once, HubAPI(p, timeout=60), u): u for u in users}
        done = [f.exception() for f in cf.as_completed(futs)]
    out = {"users": len(users), "all_answered_s": round(time.monotonic() - t0, 1),
           "failures": sum(e is not None for e in done)}
    if out["failures"]:  # what failed, in the JSON only (the table has the count)
        out["errors"] = sorted({f"{e.__class__.__name__}: {e}"[:300] for e in done if e is not None})
    for u in users:
        try:
            stop(api, u)
        except Exception:  # noqa: BLE001 - the figures are taken; cleanup is best effort
            pass
    return out


def one_round(p, clients: Clients, api: HubAPI, image: str, args) -> dict:
    """One round: the floor (a bare service until its task runs; the image's `jupyter server` and its own
    `jupyterhub-singleuser` until they answer), then `--spawns` spawns one after another, each split into
    its phases from the hub's log."""
    svc = floor_service(p, clients, image, args.floor)
    srv = floor_server(p, clients, image, args.floor)
    sus = floor_singleuser(p, clients, image, args.floor)
    spawns, phases = [], []
    for _ in range(args.spawns):
        spawns.append(spawn_once(api, "benchuser"))
        phases.append(spawn_phases(p, clients, ["benchuser"]).get("benchuser") or {})
        stop(api, "benchuser")
    floor = statistics.median(svc) + statistics.median(srv)
    floor_su = statistics.median(svc) + statistics.median(sus)
    out = {"service_running_s": svc, "server_answers_s": srv, "singleuser_answers_s": sus, "spawns_s": spawns,
           "phases": phases, "ratio_to_floor": round(statistics.median(spawns) / floor, 3),
           "ratio_to_singleuser_floor": round(statistics.median(spawns) / floor_su, 3)}
    print(f"round: floor {floor:.2f} s (singleuser {floor_su:.2f} s), spawn p50 {statistics.median(spawns):.2f} s: "
          f"{out['ratio_to_floor']:.2f}x ({out['ratio_to_singleuser_floor']:.2f}x); phases p50 {phases_p50(phases)}",
          flush=True)
    return out


def phases_p50(phases: list[dict]) -> dict:
    keys = list(dict.fromkeys(k for ph in phases for k in ph))
    return {k: round(statistics.median(ph[k] for ph in phases if k in ph), 3) for k in keys}


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


def warm_deploys(res: dict, params: Path, lab_name: str) -> None:
    """Two no-change deploys: as hubops runs them, then with every stage starting its own kernel."""
    t0 = time.monotonic()
    cli("deploy", "-p", str(params))
    res["deploy_warm_s"] = round(time.monotonic() - t0, 1)
    runs = sorted((PROJECT / "outputs").glob(f"*-{lab_name}-deploy/run.json"))
    warm = json.loads(runs[-1].read_text())
    # Per stage: its wall time, the part its cells took, and the rest (kernel start, papermill).
    res["warm_stages"] = {s["name"]: {"total_s": s["duration_s"], "cells_s": s.get("cells_s"),
                                      "machinery_s": round(s["duration_s"] - (s.get("cells_s") or 0), 2)}
                          for s in warm["stages"]}
    res["deploy_warm_in_stages_s"] = warm["duration_s"]
    # The same no-change deploy with every stage starting its own kernel (hubops.audit.kernels off).
    t0 = time.monotonic()
    cli("deploy", "-p", str(params), env={"HUBOPS_KERNELS_AHEAD": "0"})
    res["deploy_warm_no_prestart_s"] = round(time.monotonic() - t0, 1)


def set_hub_log_level(params: Path, level: str) -> None:
    """hub.log_level in the lab's parameter file (its comment header kept)."""
    import yaml

    header = "".join(ln + "\n" for ln in params.read_text().splitlines() if ln.startswith("#"))
    data = yaml.safe_load(params.read_text())
    data["hub"]["log_level"] = level
    params.write_text(header + yaml.safe_dump(data, sort_keys=False))


def measure(args, lab_name: str, engine: str | None, subnet: str, overlay: str) -> dict:
    """One lab on `engine`: up, deploy (cold, warm, warm without prestarted kernels), the floor,
    spawns, a burst and image delivery; down unless --keep. The figures as a dict."""
    params = PROJECT / "bench" / "results" / f"{lab_name}.yaml"
    params.parent.mkdir(exist_ok=True)
    res: dict = {"engine": engine or "20.10", "lab": lab_name, "load_before": [round(x, 2) for x in os.getloadavg()]}
    up = lab.lab_up(name=lab_name, workers=2, subnet=subnet, params_out=params, overlay_subnet=overlay, engines=engine)
    print("engines: " + ", ".join(f"{n.name} Docker {n.engine_version}" for n in up.nodes), flush=True)
    res["engines"] = {n.name: n.engine_version for n in up.nodes}
    try:
        if args.hub_log_level:
            set_hub_log_level(params, args.hub_log_level)
        t0 = time.monotonic()
        r = cli("deploy", "-p", str(params))
        res["deploy_first_s"] = round(time.monotonic() - t0, 1)
        if r.returncode:
            raise RuntimeError(f"deploy on {lab_name} failed: {r.stderr[-3000:]}")
        if not args.no_warm:
            warm_deploys(res, params, lab_name)
        p = load_params(params)
        clients = Clients(p)
        api = HubAPI(p, timeout=30)
        su = images.desired_refs(p, images.builder(p, clients))["singleuser"]

        if (api.user("benchuser") or {}).get("server"):  # left running by an interrupted run (--keep)
            stop(api, "benchuser")
        rounds = [one_round(p, clients, api, su, args) for _ in range(args.rounds)]
        res["rounds"] = rounds
        svc = [x for r in rounds for x in r["service_running_s"]]
        srv = [x for r in rounds for x in r["server_answers_s"]]
        sus = [x for r in rounds for x in r["singleuser_answers_s"]]
        spawns = [x for r in rounds for x in r["spawns_s"]]
        res["floor"] = {"service_running_p50_s": round(statistics.median(svc), 2),
                        "server_answers_p50_s": round(statistics.median(srv), 2),
                        "singleuser_answers_p50_s": round(statistics.median(sus), 2),
                        "sum_s": round(statistics.median(svc) + statistics.median(srv), 2),
                        "sum_singleuser_s": round(statistics.median(svc) + statistics.median(sus), 2)}
        res["spawn"] = {"n": len(spawns), "p50_s": round(statistics.median(spawns), 2), "p95_s": round(pct(spawns, 0.95), 2),
                        # the median of the rounds' ratios (each round: its spawns' median over its own floor)
                        "ratio_p50_to_floor": round(statistics.median(r["ratio_to_floor"] for r in rounds), 2),
                        "ratio_p50_to_singleuser_floor": round(statistics.median(r["ratio_to_singleuser_floor"]
                                                                                 for r in rounds), 2),
                        "rounds_ratio_to_floor": [r["ratio_to_floor"] for r in rounds],
                        "rounds_ratio_to_singleuser_floor": [r["ratio_to_singleuser_floor"] for r in rounds],
                        "phases_p50_s": phases_p50([ph for r in rounds for ph in r["phases"]])}

        if args.burst:
            res["burst"] = burst(p, api, args.burst)
        if not args.skip_delivery:
            res["delivery"] = delivery(p, clients)
        res["load_after"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        if not args.keep:
            try:
                p = load_params(params)
                teardown.teardown(p, Clients(p), remove_volumes=True)
            except Exception as e:  # noqa: BLE001
                print("teardown:", e, file=sys.stderr)
            lab.lab_down(name=lab_name)
    return res


SECTIONS = ("floor", "spawn", "burst", "delivery")
DEPLOY_ROWS = (("deploy_first_s", ""), ("deploy_warm_s", ""),
               ("deploy_warm_no_prestart_s", "  (HUBOPS_KERNELS_AHEAD=0)"),
               ("deploy_warm_in_stages_s", "  (the rest: CLI start, report)"))


def print_one(res: dict) -> None:
    print(f"{'figure':<40} value")
    for section in SECTIONS:
        for k, v in (res.get(section) or {}).items():
            print(f"{section + '.' + k:<40} {v}")
    for k, note in DEPLOY_ROWS:
        print(f"{k:<40} {res.get(k)}{note}")
    print(f"{'  warm stage':<40} total_s  cells_s  machinery_s")
    for k, v in res.get("warm_stages", {}).items():
        print(f"{'  ' + k:<40} {v['total_s']:>7}  {v['cells_s']:>7}  {v['machinery_s']:>11}")
    print(f"{'load average (1, 5, 15 min) before':<40} {res.get('load_before')}")
    print(f"{'load average (1, 5, 15 min) after':<40} {res.get('load_after')}")


def comparison_rows(runs: dict[str, dict]) -> list[tuple[str, list[str]]]:
    """(figure, one value per engine) for the table of `--engines` (pure)."""
    def cell(v) -> str:
        return "-" if v is None else (", ".join(str(x) for x in v) if isinstance(v, list) else str(v))

    keys = list(runs)
    rows: list[tuple[str, list[str]]] = [
        ("engine version", [cell(sorted(set((r.get("engines") or {}).values())) or None) for r in runs.values()])]
    for section in SECTIONS:
        names = list(dict.fromkeys(k for r in runs.values() for k in (r.get(section) or {})))
        rows += [(f"{section}.{k}", [cell((runs[e].get(section) or {}).get(k)) for e in keys]) for k in names]
    rows += [(k, [cell(runs[e].get(k)) for e in keys]) for k, _ in DEPLOY_ROWS]
    stages = list(dict.fromkeys(k for r in runs.values() for k in (r.get("warm_stages") or {})))
    rows += [(f"  warm {k} total_s", [cell(((runs[e].get("warm_stages") or {}).get(k) or {}).get("total_s"))
                                     for e in keys]) for k in stages]
    rows += [("load average before", [cell(runs[e].get("load_before")) for e in keys]),
             ("load average after", [cell(runs[e].get("load_after")) for e in keys]),
             ("error", [cell(runs[e].get("error")[:60] if runs[e].get("error") else None) for e in keys])]
    return [r for r in rows if r[0] != "error" or any(v != "-" for v in r[1])]


def _shift(subnet: str, i: int) -> str:
    import ipaddress

    net = ipaddress.ip_network(subnet)
    return str(ipaddress.ip_network((int(net.network_address) + i * net.num_addresses, net.prefixlen)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lab", default="bench")
    ap.add_argument("--subnet", default="10.81.0.0/24")
    ap.add_argument("--spawns", type=int, default=20)
    ap.add_argument("--burst", type=int, default=20)
    ap.add_argument("--floor", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=1,
                    help="rounds of the floor and the spawns (the ratio reported is the median of the rounds')")
    ap.add_argument("--no-warm", action="store_true", help="skip the two no-change deploys")
    ap.add_argument("--hub-log-level", default=None, help="the hub's log level (hub.log_level), e.g. DEBUG")
    ap.add_argument("--overlay-subnet", default="10.243.0.0/24")
    ap.add_argument("--engine", default=None,
                    help="the lab nodes' Docker engine (`hubops lab up --engine`): 20.10 (default), 26, 28 or per node")
    ap.add_argument("--engines", default=None, metavar="V1,V2,...",
                    help="one lab per engine (all its nodes on it), one after the other in this run, e.g. 20.10,28: "
                         "one table with a column per engine")
    ap.add_argument("--keep", action="store_true", help="leave the lab and deployment up")
    ap.add_argument("--skip-delivery", action="store_true")
    args = ap.parse_args()
    machine = {"node": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
               "kernel": platform.release()}
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    stamp = time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())
    (PROJECT / "bench" / "results").mkdir(exist_ok=True)
    if not args.engines:
        res = {"machine": machine, "when": when, **measure(args, args.lab, args.engine, args.subnet, args.overlay_subnet)}
        out = PROJECT / "bench" / "results" / f"spawn-{stamp}.json"
        out.write_text(json.dumps(res, indent=2) + "\n")
        print_one(res)
        print(f"written: {out}")
        return
    from hubops.lab import engines as lab_engines

    keys = [lab_engines.spec(v).key for v in args.engines.split(",") if v.strip()]  # unknown ones refused here
    if args.engine or len(set(keys)) != len(keys) or len(keys) < 2:
        sys.exit("--engines: give two or more different versions (e.g. 20.10,28), and no --engine")
    runs: dict[str, dict] = {}
    out = PROJECT / "bench" / "results" / f"spawn-engines-{stamp}.json"
    for i, key in enumerate(keys):
        name = f"{args.lab}-{key.replace('.', '')}"[:10]
        print(f"== Docker {key}: lab {name} ==", flush=True)
        t0 = time.monotonic()
        try:
            runs[key] = measure(args, name, key, _shift(args.subnet, i), _shift(args.overlay_subnet, i))
        except Exception as e:  # noqa: BLE001 - the other engines are still measured
            runs[key] = {"engine": key, "lab": name, "error": f"{e.__class__.__name__}: {e}"[:3000]}
            print(f"Docker {key}: {runs[key]['error']}", file=sys.stderr)
        runs[key]["wall_s"] = round(time.monotonic() - t0, 1)
        out.write_text(json.dumps({"machine": machine, "when": when, "engines": keys, "runs": runs}, indent=2) + "\n")
    rows = comparison_rows(runs)
    heads = [f"Docker {k}" for k in keys]
    widths = [max(len(h), *(len(r[1][j]) for r in rows)) for j, h in enumerate(heads)]
    print(f"{'figure':<40} " + "  ".join(f"{h:>{w}}" for h, w in zip(heads, widths)))
    for name, values in rows:
        print(f"{name:<40} " + "  ".join(f"{v:>{w}}" for v, w in zip(values, widths)))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
