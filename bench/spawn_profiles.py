#!/usr/bin/env python3
"""Spawns with two profiles on a lab of one manager and two workers: `standard` (the single-user
image, any worker) and `extras` (images/example-profile, built FROM the single-user image by
60-images, placed by a node label on node0 only, where 60-images delivered it). Prints a table and
writes JSON (bench/results/spawn-profiles-*.json).

    python bench/spawn_profiles.py [--lab bprof] [--spawns 5] [--keep]

Figures, not assertions:
- deploy_s: the cold deploy (the lab's engines get the images; the profile image is built once);
- profile images: what 60-images did for the profile (build, delivery to node0 only);
- per profile: the first spawn (for `extras`: on a node that already holds its image), then the p50
  and p95 of --spawns spawns one after another through the hub's REST API, each from the start
  request until /user/NAME/api/status answers through the proxy; the node each landed on.
Needs root (the lab).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from hubops.core.engine import Clients  # noqa: E402
from hubops.core.params import load_params  # noqa: E402
from hubops.hub.running import HubAPI  # noqa: E402
from hubops.lab import cluster as lab  # noqa: E402
from hubops.ops import teardown  # noqa: E402

PROFILES = [
    {"name": "standard", "description": "the single-user image"},
    {"name": "extras", "description": "images/example-profile on node0", "image": "images/example-profile",
     "placement": {"bench.extras": "yes"}},
]


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hubops.cli.main", *args], cwd=PROJECT, capture_output=True,
                          text=True)


def admin_session(p):
    import requests

    s = requests.Session()
    s.trust_env = False
    s.verify = str(p.operator_path / "ca.pem")
    s.get(f"{p.hub_url}/hub/login", timeout=10)
    pw = (p.operator_path / "admin-password").read_text().strip()
    s.post(f"{p.hub_url}/hub/login", data={"username": "operator", "password": pw, "_xsrf": s.cookies.get("_xsrf")},
           allow_redirects=False, timeout=10)
    s.headers["X-XSRFToken"] = s.cookies.get("_xsrf")
    return s


def node_of(p, clients: Clients, user: str) -> str:
    svc = clients.manager.services.get(f"{p.prefix}-user-{user}")
    for t in svc.tasks(filters={"desired-state": "running"}):
        if t["Status"]["State"] == "running":
            node = clients.manager.nodes.get(t["NodeID"])
            return (node.attrs["Spec"].get("Labels") or {}).get(f"hubops.{p.deployment}.host", "?")
    return "?"


def _has(client, ref: str) -> bool:
    import docker.errors

    try:
        client.images.get(ref)
        return True
    except docker.errors.ImageNotFound:
        return False


def spawn(api: HubAPI, user: str, profile: str) -> float:
    t0 = time.monotonic()
    api.request("POST", f"/hub/api/users/{user}/server", ok=(201, 202), json={"profile": profile})
    while True:
        r = api.s.get(f"{api.base}/user/{user}/api/status", timeout=10, allow_redirects=False)
        if r.status_code == 200:
            return time.monotonic() - t0
        if time.monotonic() - t0 > 300:
            raise RuntimeError(f"{user}'s {profile} server did not answer within 300 s")
        time.sleep(0.05)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    from tests.helpers import LAB_SUBNETS, free_subnet, run_name

    ap.add_argument("--lab", default=run_name("bprof"))
    ap.add_argument("--subnet", default=None, help="the lab's subnet (default: a free one)")
    ap.add_argument("--overlay-subnet", default=None, help="the overlay's subnet (default: a free one)")
    ap.add_argument("--spawns", type=int, default=5)
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    a.subnet = a.subnet or free_subnet(LAB_SUBNETS)
    a.overlay_subnet = a.overlay_subnet or free_subnet()
    out = PROJECT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    params = out / f"{a.lab}.yaml"
    figures: dict = {"machine": {"node": platform.node(), "cpus": os.cpu_count(), "load": os.getloadavg()}}
    lab.lab_up(name=a.lab, managers=1, workers=2, subnet=a.subnet, overlay_subnet=a.overlay_subnet, params_out=params)
    mine = out / f"{a.lab}-profiles.yaml"
    data = yaml.safe_load(params.read_text())
    data["hosts"]["workers"][0]["labels"] = {"bench.extras": "yes"}
    data["profiles"] = PROFILES
    data["auth"]["userlist"] = str(params.with_name(f"{params.stem}.userlist"))
    mine.write_text(yaml.safe_dump(data, sort_keys=False))
    p = load_params(mine)
    try:
        t0 = time.monotonic()
        d = cli("deploy", "-p", str(mine))
        figures["deploy_s"] = round(time.monotonic() - t0, 1)
        if d.returncode != 0:
            print(d.stderr[-3000:])
            raise SystemExit("deploy failed")
        run = sorted((PROJECT / "outputs").glob(f"*-{p.deployment}-deploy/60-images.ipynb"),
                     key=lambda f: f.stat().st_mtime)[-1]
        from hubops.core.record import read_record

        rec = read_record(json.loads(run.read_text()))
        prof = next(r for r in rec["results"] if r["step"] == "profile images")
        figures["profile images"] = {"facts": prof["facts"],
                                     "items": [f"{i['action']} {i['target']}: {i['detail']}" for i in prof["items"]]}
        api, clients = HubAPI(p), Clients(p)
        ref = prof["facts"]["profile extras"].split(" ")[0]
        figures["extras image on"] = sorted(h.name for h in p.hosts.all if _has(clients[h.name], ref))
        admin = admin_session(p)
        for prof in PROFILES:
            name = prof["name"]
            times, nodes = [], []
            for i in range(a.spawns):
                user = f"b{name[:3]}{i}"
                admin.post(f"{p.hub_url}/hub/api/users/{user}", timeout=30)
                times.append(spawn(api, user, name))
                nodes.append(node_of(p, clients, user))
            figures[name] = {"first_s": round(times[0], 2), "p50_s": round(statistics.median(times), 2),
                             "p95_s": round(pct(times, 0.95), 2), "nodes": sorted(set(nodes)), "n": len(times),
                             "times_s": [round(t, 2) for t in times], "on": nodes, "load_after": os.getloadavg()}
            for i in range(a.spawns):
                api.request("DELETE", f"/hub/api/users/b{name[:3]}{i}/server", ok=(202, 204))
            time.sleep(2)
    finally:
        if not a.keep:
            try:
                teardown.teardown(p, Clients(p), remove_volumes=True)
            finally:
                lab.lab_down(name=a.lab)
    print(f"{'figure':40} value")
    for k, v in figures.items():
        print(f"{k:40} {json.dumps(v)}")
    f = out / f"spawn-profiles-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    f.write_text(json.dumps(figures, indent=1))
    print(f"written: {f}")


if __name__ == "__main__":
    main()
