"""Faults on a real lab: 3 managers and 2 workers, every engine reached over mutual TLS, users'
homes and the hub's database on storage every node mounts at the same path (shared-path). One lab
and one deployment are shared by the tests in this file, in order:

- (#7 item 11) the runner is killed with SIGKILL while 80-deploy runs: the record says the run
  stopped in 80-deploy, and `hubops deploy --resume` finishes it with one hub service and one
  version of every secret, config and network;
- (item 7) a worker loses power while alice's server runs on it: Swarm marks it down and starts her
  server again on the other worker under the same name, the hub reaches it at the same URL, her
  files are there; she can stop it and start a new one, which lands on the live worker;
- (item 8) the hub's manager loses power: Swarm starts the hub on another manager, it answers there
  with its users and their running servers; `status` still works (through another manager);
- (item 9) two of three managers lose power: `status` and `diagnose` say the quorum is lost and name
  the recovery (`docker swarm init --force-new-cluster` on the surviving manager); users' servers
  keep serving; the managers come back and the quorum with them;
- a backup and a restore with the hub's database on the shared path.

Recovery times are printed, never asserted (targets live in bench/README.md).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

from hubops.lab import cluster as lab
from hubops.core.engine import Clients
from hubops.core.params import load_params
from hubops.hub.running import HubAPI
from tests.helpers import LAB_SUBNETS, PROJECT, create_user, free_subnet, run_name
from tests.helpers import hubops_cli as cli

pytestmark = [pytest.mark.engine, pytest.mark.e2e, pytest.mark.slow]  # `make test-all` only (see README: Tests)
NAME = run_name("ftlab")  # the lab and the deployment: ftlab-RUN (tests/helpers)
OVERLAY = "10.246.0.0/24"  # inside the lab's own engines
_subnet: list[str] = []  # the lab's, chosen free once
TIMINGS: dict[str, float] = {}


def timing(what: str, seconds: float) -> None:
    TIMINGS[what] = round(seconds, 1)
    print(f"\n[timing] {what}: {seconds:.1f} s", flush=True)


def lab_up(params_out: Path) -> lab.LabInfo:
    """Start the lab, or mend it: engines that were killed start again, cut links come back up."""
    if not _subnet:
        _subnet.append(free_subnet(LAB_SUBNETS))
    return lab.lab_up(name=NAME, managers=3, workers=2, subnet=_subnet[0], overlay_subnet=OVERLAY,
                      params_out=params_out)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faults")
    t_suite = time.monotonic()
    t0 = time.monotonic()
    try:
        info = lab_up(tmp / "lab.yaml")
    except BaseException:
        lab.lab_down(name=NAME)  # what a failed start made
        raise
    timing("lab up (3 managers, 2 workers)", time.monotonic() - t0)
    try:
        # The deployment's own parameter file: the lab's, with homes and the hub's database on one
        # host directory all engines see at the same path (as NFS-mounted hosts see /mnt/nfs), and
        # the managers' addresses on the certificate, since the hub may answer on any of them.
        data = yaml.safe_load((tmp / "lab.yaml").read_text())
        for d in ("homes", "hubdata"):
            (tmp / d).mkdir(mode=0o755)
        data["auth"]["userlist"] = str(tmp / "lab.userlist")
        data["hub"]["extra_names"] = [m.address for m in info.managers[1:]]
        data["storage"] = {"users": {"mode": "shared-path", "path": str(tmp / "homes")},
                           "hub": {"mode": "shared-path", "path": str(tmp / "hubdata")}}
        params = tmp / "ftlab.yaml"
        params.write_text(yaml.safe_dump(data, sort_keys=False))
        p = load_params(params)
        yield {"params": params, "outputs": tmp / "outputs", "p": p, "tmp": tmp, "lab": info}
    finally:
        t0 = time.monotonic()
        # Power every node off first (seconds), so that `lab down` has no engine to wait for.
        for n in info.nodes:
            lab.kill_node(name=NAME, node=n.name)
        lab.lab_down(name=NAME)
        timing("lab down", time.monotonic() - t0)
        timing("whole suite", time.monotonic() - t_suite)
        print("\n[timings] " + json.dumps(TIMINGS, indent=2), flush=True)


# -- helpers ------------------------------------------------------------------------------------
def runs(outputs: Path) -> list[dict]:
    return [json.loads(f.read_text()) for f in sorted(outputs.glob("*/run.json"), key=lambda f: f.stat().st_mtime)]


def notebook_text(path: Path) -> str:
    """Everything a notebook's cells printed or displayed as text."""
    out = []
    for cell in json.loads(path.read_text())["cells"]:
        for o in cell.get("outputs", []):
            t = o.get("text") or (o.get("data") or {}).get("text/plain") or ""
            out.append("".join(t) if isinstance(t, list) else t)
    return "\n".join(out)


def children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d.name))
            except (OSError, IndexError, ValueError):
                continue
    return out


def alive(pid: int) -> bool:
    try:
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) not in ("Z", "X")
    except OSError:
        return False


def deployment_objects(p, c) -> dict[str, list[str]]:
    sel = {"label": [f"hubops.deployment={p.deployment}"]}
    return {
        "services": sorted(s.name for s in c.services.list(filters=sel)),
        "secrets": sorted(s.name for s in c.secrets.list(filters=sel)),
        "configs": sorted(x.name for x in c.configs.list(filters=sel)),
        "networks": sorted(n.name for n in c.networks.list(filters=sel)),
    }


def role_of(name: str, p) -> str:
    """hubops-DEPLOYMENT-ROLE-DIGEST -> ROLE"""
    return name[len(p.prefix) + 1:].rsplit("-", 1)[0]


def api_at(p, address: str | None = None) -> HubAPI:
    api = HubAPI(p)
    if address:
        port = "" if p.hub.https_port == 443 else f":{p.hub.https_port}"
        api.base = f"https://{address}{port}"
    return api


def spawn(api: HubAPI, user: str) -> None:
    if api.user(user) is None:
        create_user(api.p, user, base=api.base)  # where the hub answers now
    api.request("POST", f"/hub/api/users/{user}/server", ok=(201, 202))
    api.wait_server(user, ready=True, timeout=180)


def stop(api: HubAPI, user: str) -> None:
    api.request("DELETE", f"/hub/api/users/{user}/server", ok=(202, 204))
    api.wait_server(user, ready=False, timeout=120)


def status_code(api: HubAPI, path: str, timeout: float = 5) -> int | str:
    try:
        return api.s.get(api.base + path, timeout=timeout).status_code
    except requests.RequestException as e:
        return e.__class__.__name__


def wait_answers(api: HubAPI, user: str, timeout: float) -> float:
    """Seconds until /user/USER/api/status answers 200 through the hub; fails after `timeout`."""
    t0 = time.monotonic()
    last: int | str = ""
    while time.monotonic() - t0 < timeout:
        last = status_code(api, f"/user/{user}/api/status")
        if last == 200:
            return time.monotonic() - t0
        time.sleep(0.5)
    raise AssertionError(f"{user}'s server did not answer through the hub within {timeout:.0f} s (last: {last})")


def service_of(api: HubAPI, user: str) -> str:
    return f"{api.p.prefix}-user-{user}"  # the spawner's service name


def running_node(p, c, service: str, *, not_on: str | None = None, timeout: float = 120) -> str:
    """The hubops host name of the node running the service's task (other than `not_on`)."""
    nodes = {n.id: (n.attrs["Spec"].get("Labels") or {}).get(f"hubops.{p.deployment}.host",
                                                            n.attrs["Description"]["Hostname"])
             for n in c.nodes.list()}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tasks = c.api.tasks(filters={"service": service, "desired-state": "running"})
        where = [nodes.get(t.get("NodeID"), "?") for t in tasks if t["Status"]["State"] == "running"]
        where = [n for n in where if n != not_on]
        if where:
            return where[0]
        time.sleep(0.5)
    raise AssertionError(f"service {service} has no running task (other than on {not_on}) after {timeout:.0f} s")


def write_file(api: HubAPI, user: str, name: str, text: str) -> None:
    api.request("PUT", f"/user/{user}/api/contents/{name}", ok=(200, 201),
                json={"type": "file", "format": "text", "content": text})


def read_file(api: HubAPI, user: str, name: str) -> str:
    return api.request("GET", f"/user/{user}/api/contents/{name}?content=1").json()["content"]


def node_state(c, name: str) -> str:
    for n in c.nodes.list():
        if n.attrs["Description"]["Hostname"] == name:
            return n.attrs["Status"]["State"]
    return "absent"


def wait_node(c, name: str, state: str, timeout: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if node_state(c, name) == state:
            return time.monotonic() - t0
        time.sleep(0.5)
    raise AssertionError(f"node {name} is not {state} after {timeout:.0f} s (it is {node_state(c, name)})")


def hub_node(p, c) -> str:
    return running_node(p, c, p.hub_service)


def hub_address(cluster) -> str:
    """The address of the manager whose hub answers now (Swarm may have moved it: a failover test)."""
    p = cluster["p"]
    return cluster["lab"].node(hub_node(p, Clients(p).manager)).address


def ensure_deployed(cluster) -> None:
    """The later tests need a deployed hub, also when the first test failed before it finished."""
    if cluster.get("deployed"):
        return
    r = cli("deploy", "-p", str(cluster["params"]), outputs=cluster["outputs"])
    assert r.returncode == 0, r.stderr[-4000:]
    cluster["deployed"] = True


# -- the tests ----------------------------------------------------------------------------------
def test_runner_killed_in_80_deploy_then_resume_finishes_without_duplicates(cluster):
    p, outputs = cluster["p"], cluster["outputs"]
    env = {**os.environ, "HUBOPS_OUTPUTS": str(outputs)}
    t0 = time.monotonic()
    log = open(cluster["tmp"] / "deploy-killed.log", "w")
    runner = subprocess.Popen([sys.executable, "-m", "hubops.cli.main", "deploy", "-p", str(cluster["params"])],
                              cwd=PROJECT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    clients = Clients(p)
    kernels: list[int] = []
    try:
        # Kill the runner once 80-deploy has made its first Swarm object (a secret): midway.
        while True:
            assert runner.poll() is None, f"the deploy ended (exit {runner.returncode}) before 80-deploy could be " \
                                          f"interrupted: {(cluster['tmp'] / 'deploy-killed.log').read_text()[-3000:]}"
            recs = runs(outputs)
            stages = {s["name"]: s["status"] for s in recs[-1]["stages"]} if recs else {}
            if stages.get("80-deploy") == "running" and clients.manager.secrets.list(
                    filters={"label": ["hubops.stage=80-deploy", f"hubops.deployment={p.deployment}"]}):
                kernels = children(runner.pid)
                runner.send_signal(signal.SIGKILL)
                break
            time.sleep(0.2)
        runner.wait()
        timing("deploy until the runner was killed in 80-deploy", time.monotonic() - t0)
    finally:
        if runner.poll() is None:
            runner.kill()
        log.close()
    assert runner.returncode == -signal.SIGKILL
    # Its kernel notices its parent is gone and exits (ipykernel's parent poller): nothing goes on
    # changing the cluster behind the operator's back.
    t1 = time.monotonic()
    while any(alive(k) for k in kernels) and time.monotonic() - t1 < 30:
        time.sleep(0.2)
    assert kernels and not any(alive(k) for k in kernels), f"the stage's kernel {kernels} outlived its runner"
    timing("the killed runner's kernel exited after", time.monotonic() - t1)

    run = runs(outputs)[-1]
    by_name = {s["name"]: s for s in run["stages"]}
    assert run["status"] == "running" and by_name["80-deploy"]["status"] == "running"
    assert all(by_name[s]["status"] == "ok" for s in list(by_name)[:8]), [(s["name"], s["status"]) for s in run["stages"]]
    assert by_name["90-verify"]["status"] == "pending"
    show = cli("record", "show", run["run_id"], outputs=outputs)
    flat = " ".join(show.stdout.split())
    assert "STOPPED in 80-deploy" in flat and f"--resume {run['run_id']}" in flat, show.stdout
    assert "intact" in flat, show.stdout

    t1 = time.monotonic()
    resumed = cli("deploy", "-p", str(cluster["params"]), "--resume", run["run_id"], outputs=outputs)
    timing("deploy --resume (80-deploy and 90-verify)", time.monotonic() - t1)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    run = json.loads((outputs / run["run_id"] / "run.json").read_text())
    assert run["status"] == "ok" and all(s["status"] == "ok" for s in run["stages"]) and len(run["resumed"]) == 1
    assert cli("record", "verify", run["run_id"], outputs=outputs).returncode == 0

    objs = deployment_objects(p, clients.manager)
    # One of each: the hub, its Docker API door, the network policy's agent and the overlay's attach service
    # (more than one host); no duplicate from the resume.
    assert objs["services"] == sorted([p.hub_service, f"{p.prefix}-apiproxy", f"{p.prefix}-netpolicy",
                                       f"{p.prefix}-attach"]), objs
    assert objs["networks"] == [p.network_name], objs
    for kind in ("secrets", "configs"):
        roles = [role_of(n, p) for n in objs[kind]]
        assert len(roles) == len(set(roles)), f"duplicate {kind} after resume: {objs[kind]}"
    used = {s["SecretName"] for s in clients.manager.services.get(p.hub_service).attrs["Spec"]["TaskTemplate"]
            ["ContainerSpec"]["Secrets"]}
    assert used == set(objs["secrets"]), (used, objs["secrets"])
    assert len(clients.manager.services.get(p.hub_service).tasks(filters={"desired-state": "running"})) == 1
    cluster["deployed"] = True


def test_a_worker_dies_and_its_user_server_restarts_on_the_other_worker(cluster):
    ensure_deployed(cluster)
    p = cluster["p"]
    clients, api = Clients(p), api_at(p)
    c = clients.manager
    for user in ("alice", "bob"):
        spawn(api, user)
    svc = service_of(api, "alice")
    victim = running_node(p, c, svc)
    assert victim.startswith(f"{NAME}-node"), victim
    survivor = next(w.name for w in cluster["lab"].workers if w.name != victim)
    bob_node = running_node(p, c, service_of(api, "bob"))
    write_file(api, "alice", "notes.txt", "written on " + victim)

    t0 = time.monotonic()
    lab.kill_node(name=NAME, node=victim)
    down = wait_node(c, victim, "down", 120)
    timing(f"worker {victim} killed -> Swarm marks it down", down)
    moved_to = running_node(p, c, svc, not_on=victim, timeout=180)
    timing("worker killed -> alice's server runs on the other worker", time.monotonic() - t0)
    assert moved_to == survivor
    wait_answers(api, "alice", 180)
    timing("worker killed -> alice's server answers through the hub again (recovery)", time.monotonic() - t0)
    # The same server, as the hub knows it: same service, still ready, same URL; her files are there.
    assert service_of(api, "alice") == svc
    assert ((api.user("alice") or {}).get("servers") or {}).get("", {}).get("ready") is True
    assert read_file(api, "alice", "notes.txt") == "written on " + victim
    # She can also stop it and start a new one: it lands on the live worker.
    t1 = time.monotonic()
    stop(api, "alice")
    spawn(api, "alice")
    assert running_node(p, c, service_of(api, "alice")) == survivor
    wait_answers(api, "alice", 60)
    assert read_file(api, "alice", "notes.txt") == "written on " + victim
    timing("alice stops and starts a new server on the live worker", time.monotonic() - t1)
    if bob_node != victim:
        assert status_code(api, "/user/bob/api/status") == 200

    # The worker comes back (power on): it rejoins as ready, and its old task is not started again.
    t1 = time.monotonic()
    lab_up(cluster["tmp"] / "lab.yaml")
    timing(f"worker {victim} back and ready", wait_node(c, victim, "ready", 120) + (time.monotonic() - t1))
    assert running_node(p, c, service_of(api, "alice")) == survivor


def test_the_hubs_manager_dies_and_the_hub_answers_on_another_manager(cluster):
    ensure_deployed(cluster)
    p = cluster["p"]
    clients = Clients(p)
    first = hub_node(p, clients.manager)
    api = api_at(p, cluster["lab"].node(first).address)
    assert status_code(api, "/hub/health") == 200
    for user in ("alice", "bob"):
        if not ((api.user(user) or {}).get("servers") or {}).get(""):
            spawn(api, user)
    write_file(api, "bob", "bob.txt", "before the hub moved")
    others = [m for m in cluster["lab"].managers if m.name != first]

    t0 = time.monotonic()
    lab.kill_node(name=NAME, node=first)
    answered = None
    while time.monotonic() - t0 < 240:
        for m in others:
            if status_code(api_at(p, m.address), "/hub/health", timeout=3) == 200:
                answered = m
                break
        if answered:
            break
        time.sleep(0.5)
    assert answered is not None, f"the hub did not answer on {[m.name for m in others]} within 240 s of {first}'s death"
    timing(f"hub's manager {first} killed -> hub answers on {answered.name} (target 60 s)", time.monotonic() - t0)

    # A client that still only knows the dead manager: Clients falls back to one that answers.
    after = Clients(p)
    assert after.manager_name != first
    assert hub_node(p, after.manager) == answered.name
    api = api_at(p, answered.address)
    users = {u["name"]: u for u in api.request("GET", "/hub/api/users").json()}
    assert {"alice", "bob"} <= set(users)
    for user in ("alice", "bob"):
        assert (users[user].get("servers") or {}).get("", {}).get("ready") is True, users[user]
        t1 = time.monotonic()
        wait_answers(api, user, 60)
        timing(f"{user}'s server reachable through the moved hub after", time.monotonic() - t1)
    assert read_file(api, "bob", "bob.txt") == "before the hub moved"

    status = cli("ops", "status", "-p", str(cluster["params"]), outputs=cluster["outputs"])
    assert status.returncode == 0, status.stderr[-3000:]
    text = notebook_text(cluster["outputs"] / runs(cluster["outputs"])[-1]["run_id"] / "status.ipynb")
    assert "hub can move: yes" in text and "quorum kept" in text and "down" in text, text[:3000]

    t1 = time.monotonic()
    lab_up(cluster["tmp"] / "lab.yaml")
    timing(f"manager {first} back and ready", wait_node(after.manager, first, "ready", 180) + (time.monotonic() - t1))
    cluster["hub_node"] = answered.name


def test_quorum_lost_status_and_diagnose_say_so_and_servers_keep_serving(cluster):
    ensure_deployed(cluster)
    p = cluster["p"]
    clients = Clients(p)
    keep = cluster.get("hub_node") or hub_node(p, clients.manager)
    kept = cluster["lab"].node(keep)
    api = api_at(p, kept.address)
    for user in ("alice", "bob"):
        wait_answers(api, user, 60)
    victims = [m.name for m in cluster["lab"].managers if m.name != keep]

    t0 = time.monotonic()
    for v in victims:
        lab.kill_node(name=NAME, node=v)
    timing(f"managers {', '.join(victims)} killed", time.monotonic() - t0)

    for runbook in ("status", "diagnose"):
        t1 = time.monotonic()
        r = cli("ops", runbook, "-p", str(cluster["params"]), outputs=cluster["outputs"])
        timing(f"ops {runbook} with quorum lost", time.monotonic() - t1)
        assert r.returncode == 0, r.stderr[-3000:]
        run = runs(cluster["outputs"])[-1]
        text = notebook_text(cluster["outputs"] / run["run_id"] / f"{runbook}.ipynb")
        print(text[:2500])
        assert "quorum LOST" in text, text[:3000]
        assert f"docker swarm init --force-new-cluster --advertise-addr {kept.address}" in text, text[:3000]
        assert f"surviving manager {keep}" in text, text[:3000]
        for v in victims:
            assert v in text
        if runbook == "diagnose":
            assert "quorum-lost" in text

    # Running servers keep serving through the hub, and a user's files can still be written.
    for user in ("alice", "bob"):
        assert status_code(api, f"/user/{user}/api/status") == 200
    write_file(api, "bob", "during.txt", "quorum lost")
    assert read_file(api, "bob", "during.txt") == "quorum lost"
    timing("quorum lost: servers checked serving after", time.monotonic() - t0)

    # The managers come back: the quorum returns by itself.
    t1 = time.monotonic()
    lab_up(cluster["tmp"] / "lab.yaml")
    c = clients[keep]
    while time.monotonic() - t1 < 180:
        try:
            ms = [n.get("ManagerStatus") or {} for n in c.api.nodes()]
            if sum(m.get("Reachability") == "reachable" for m in ms) == 3:
                break
        except Exception:  # noqa: BLE001 - no leader yet
            pass
        time.sleep(1)
    else:
        raise AssertionError("the quorum did not come back within 180 s of the managers' return")
    timing("managers back -> quorum again", time.monotonic() - t1)
    status = cli("ops", "status", "-p", str(cluster["params"]), outputs=cluster["outputs"])
    assert status.returncode == 0
    text = notebook_text(cluster["outputs"] / runs(cluster["outputs"])[-1]["run_id"] / "status.ipynb")
    assert "3 of 3 reachable: quorum kept" in text, text[:3000]


def test_backup_and_restore_with_the_hubs_data_on_shared_storage(cluster):
    """With storage.hub shared-path the database is in storage.hub.path, not in a volume: a backup is
    taken from the hub's container wherever it runs, and a restore puts the database back there."""
    ensure_deployed(cluster)
    p, outputs = cluster["p"], cluster["outputs"]
    t0 = time.monotonic()
    r = cli("ops", "backup", "-p", str(cluster["params"]), "--set", "reason=faults", outputs=outputs)
    assert r.returncode == 0, r.stderr[-3000:]
    api = api_at(p, hub_address(cluster))  # the hub may run on another manager since the failover test
    create_user(api.p, "dave", base=api.base)  # made after the backup: the restore drops it
    r = cli("ops", "restore", "-p", str(cluster["params"]), "--set", "backup=latest", "--set", "confirm=true",
            outputs=outputs)
    assert r.returncode == 0, r.stderr[-3000:]
    timing("backup, then restore onto the shared path (hub down and up again)", time.monotonic() - t0)
    text = notebook_text(outputs / runs(outputs)[-1]["run_id"] / "restore.ipynb")
    assert f"{p.storage.hub.path} (storage.hub.path)" in text, text[:3000]
    api = api_at(p, hub_address(cluster))
    users = {u["name"]: u for u in api.request("GET", "/hub/api/users").json()}
    assert "dave" not in users and {"alice", "bob"} <= set(users)
    for user in ("alice", "bob"):
        assert (users[user].get("servers") or {}).get("", {}).get("ready") is True, users[user]
        wait_answers(api, user, 60)
    assert (Path(p.storage.hub.path) / "jupyterhub.sqlite").is_file()
