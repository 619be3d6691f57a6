"""How many requests fail while `hubops ops renew-tls` runs: a client sends a request every 0.1 s
(a new TLS connection each time, verified against the deployment's CA) through the whole renewal,
and an open websocket to a user's kernel is used once before and once after it.

Deploys its own deployment on this machine's engine (a free port and subnet, its own operator
folder), with the TLS front (`front.enabled: true`) or without it (the hub's proxy terminates TLS
and restarts), starts a user's server, runs `hubops ops renew-tls --set force=true` `--runs` times
with the probe going, prints the figures, tears the deployment down.

    flock /tmp/hubops-lock-heavy .venv/bin/python bench/renew_probe.py --front both --runs 2

Prints, per renewal: requests sent, failed, slowest (target: 0 failed, none slower than 1 s), what the
failures were, whether the websocket opened before the renewal still worked after it, and the renewal's
own figures from its record (downtime_s, swap_s). No assertion: figures only.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

INTERVAL = 0.1


class Probe:
    """GET `url` every `interval` s on a new connection each time, in a thread, until stopped.
    Counts sent and failed requests (an exception or a status other than 200) and keeps the slowest."""

    def __init__(self, url: str, verify, interval: float = INTERVAL, timeout: float = 10):
        import requests

        self.url, self.verify, self.interval, self.timeout = url, verify, interval, timeout
        self.sent = self.failed = 0
        self.times: list[float] = []
        self.failures: list[str] = []
        self._requests = requests
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, name="renew-probe", daemon=True)

    def _one(self) -> None:
        s = self._requests.Session()
        s.trust_env = False
        t = time.monotonic()
        try:
            r = s.get(self.url, verify=self.verify, timeout=self.timeout, headers={"Connection": "close"})
            ok, why = r.status_code == 200, f"HTTP {r.status_code}"
        except Exception as e:  # noqa: BLE001 - every failure counts
            ok, why = False, f"{e.__class__.__name__}: {str(e)[:120]}"
        finally:
            s.close()
        dt = time.monotonic() - t
        self.sent += 1
        self.times.append(dt)
        if not ok:
            self.failed += 1
            self.failures.append(f"{time.strftime('%H:%M:%S')} {why}")

    def _run(self) -> None:
        nxt = time.monotonic()
        while not self._stop.is_set():
            self._one()
            nxt += self.interval
            self._stop.wait(max(0.0, nxt - time.monotonic()))

    def __enter__(self) -> "Probe":
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join(timeout=30)

    @property
    def slowest(self) -> float:
        return round(max(self.times), 3) if self.times else 0.0

    def figures(self) -> dict:
        return {"sent": self.sent, "failed": self.failed, "slowest_s": self.slowest,
                "median_s": round(statistics.median(self.times), 3) if self.times else 0.0,
                "over_1s": sum(t > 1 for t in self.times), "failures": self.failures[:10]}


class Kernel:
    """A kernel of `user`'s server, and a websocket to it through the hub's URL (the front or the proxy)."""

    def __init__(self, p, user: str):
        from hubops.hub.running import HubAPI

        self.p, self.user, self.api = p, user, HubAPI(p)
        self.id = self.api.request("POST", f"/user/{user}/api/kernels", ok=(201,), json={}).json()["id"]
        self.ws = None

    def connect(self) -> None:
        import ssl

        import websocket

        token = (self.p.operator_path / "api-token").read_text().strip()
        url = self.p.hub_url.replace("https://", "wss://") + f"/user/{self.user}/api/kernels/{self.id}/channels"
        self.ws = websocket.create_connection(url, header=[f"Authorization: token {token}"], timeout=30,
                                              sslopt={"cert_reqs": ssl.CERT_REQUIRED,
                                                      "ca_certs": str(self.p.operator_path / "ca.pem")})

    def execute(self, code: str, timeout: float = 60) -> str:
        """Run `code` over the open websocket; the text/plain of its result."""
        msg_id = uuid.uuid4().hex
        self.ws.send(json.dumps({
            "header": {"msg_id": msg_id, "username": self.user, "session": uuid.uuid4().hex,
                       "msg_type": "execute_request", "version": "5.3"},
            "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
            "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                        "allow_stdin": False, "stop_on_error": True},
        }))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = json.loads(self.ws.recv())
            if msg.get("parent_header", {}).get("msg_id") == msg_id and msg.get("msg_type") == "execute_result":
                return msg["content"]["data"]["text/plain"]
        raise TimeoutError(f"no result for {code!r} within {timeout} s")

    def close(self) -> None:
        try:
            if self.ws is not None:
                self.ws.close()
            self.api.request("DELETE", f"/user/{self.user}/api/kernels/{self.id}", ok=(204, 404))
        except Exception:  # noqa: BLE001 - best effort
            pass


def renew_with_probe(p, params: Path, outputs: Path, *, user: str | None = "alice") -> dict:
    """One forced renewal with the probe (and, with `user`, a kernel's websocket) going; the figures."""
    from hubops.hub import running
    from tests.helpers import hubops_cli, runs, stage_record

    kernel = None
    if user:
        kernel = Kernel(p, user)
        kernel.connect()
        assert kernel.execute("6*7") == "42"
    t0 = time.monotonic()
    with Probe(f"{p.hub_url}/hub/health", running.trust_path(p)) as probe:
        time.sleep(1)
        out = hubops_cli("ops", "renew-tls", "-p", str(params), "--set", "force=true", outputs=outputs)
        time.sleep(1)
    figures = {"renew_s": round(time.monotonic() - t0 - 2, 1), "returncode": out.returncode, **probe.figures()}
    if out.returncode != 0:
        figures["stderr"] = out.stderr[-1500:]
        return figures
    facts = stage_record(outputs, runs(outputs)[-1], "renew-tls")["results"][0]["facts"]
    figures.update({k: facts.get(k) for k in ("downtime_s", "health_failures", "health_probes")})
    figures["swap_s"] = (facts.get("front") or {}).get("swap_s")
    if kernel is not None:
        try:
            figures["websocket_kept"] = kernel.execute("6*7", timeout=20) == "42"
        except Exception as e:  # noqa: BLE001 - the connection dropped: that is the figure
            figures["websocket_kept"] = False
            figures["websocket_error"] = f"{e.__class__.__name__}: {str(e)[:120]}"
        kernel.close()
    return figures


def bench(front: bool, n_runs: int, *, on_lab: bool = False) -> list[dict]:
    from hubops.core.engine import Clients
    from hubops.core.params import load_params
    from hubops.hub.running import HubAPI
    from hubops.lab import cluster as lab
    from hubops.ops import teardown
    from tests.helpers import LAB_SUBNETS, ensure_swarm, free_port, free_subnet, hubops_cli, make_params, run_name

    tmp = Path(tempfile.mkdtemp(prefix="hubops-renew-bench-"))
    extra = "front: {enabled: true}\n" if front else ""
    if on_lab:  # one manager (hub, front) and two workers (users' servers), engines over mutual TLS
        name = run_name("rnf" if front else "rnp")
        params = tmp / "lab.yaml"
        t0 = time.monotonic()
        lab.lab_up(name=name, managers=1, workers=2, subnet=free_subnet(LAB_SUBNETS), params_out=params)
        params.write_text(params.read_text() + "\n" + extra)
        print(f"lab {name} up in {time.monotonic() - t0:.1f} s", flush=True)
    else:
        ensure_swarm()
        name = run_name("rnfront" if front else "rnproxy")
        params = make_params(tmp, name, port=free_port(), subnet=free_subnet(), extra=extra)
    outputs = tmp / "outputs"
    p = load_params(params)
    results = []
    try:
        t0 = time.monotonic()
        out = hubops_cli("deploy", "-p", str(params), outputs=outputs)
        if out.returncode != 0:
            raise SystemExit(f"deploy failed:\n{out.stderr[-3000:]}")
        print(f"[{'front' if front else 'proxy'}] deployed {name} in {time.monotonic() - t0:.1f} s", flush=True)
        api = HubAPI(p)
        api.request("POST", "/hub/api/users/alice/server", ok=(201, 202), timeout=40)
        api.wait_server("alice", ready=True, timeout=180)
        for i in range(n_runs):
            fig = renew_with_probe(p, params, outputs)
            results.append(fig)
            print(f"[{'front' if front else 'proxy'}] renewal {i + 1}: " + json.dumps(fig), flush=True)
    finally:
        if on_lab:
            lab.lab_down(name=name)
        else:
            down = hubops_cli("ops", "teardown", "-p", str(params), "--set", "confirm=true", "--set",
                              "remove_volumes=true", "--set", "remove_user_data=true", outputs=outputs)
            if down.returncode != 0:
                teardown.teardown(p, Clients(p), remove_volumes=True, remove_user_data=True)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--front", choices=["on", "off", "both"], default="both")
    ap.add_argument("--runs", type=int, default=2, help="renewals per deployment")
    ap.add_argument("--lab", action="store_true", help="on a lab of one manager and two workers (hubops lab)")
    a = ap.parse_args()
    table = []
    for front in {"on": [True], "off": [False], "both": [False, True]}[a.front]:
        for fig in bench(front, a.runs, on_lab=a.lab):
            table.append(("TLS front (HAProxy)" if front else "proxy terminates TLS", fig))
    print(f"\nrenew-tls with a request every 0.1 s (new TLS connection each){' on a lab' if a.lab else ''}:")
    print(f"  {'setup':24} {'sent':>5} {'failed':>6} {'slowest s':>9} {'>1 s':>4} {'renew s':>7} {'websocket kept':>14}")
    for setup, f in table:
        print(f"  {setup:24} {f['sent']:>5} {f['failed']:>6} {f['slowest_s']:>9} {f['over_1s']:>4} "
              f"{f['renew_s']:>7} {str(f.get('websocket_kept')):>14}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
