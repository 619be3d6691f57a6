"""Hosts reached over ssh, as most operators reach theirs (issue 12, item 5).

A mixed lab whose engines hubops reaches only through `ssh://root@NODE` (`hubops lab up --engine
node0=28 --ssh all`): the manager on this machine's Docker 20.10 runs this machine's sshd in its
namespaces; the worker on Docker 28 (the lab's cached Debian sid root file system, built on first
use) runs the sshd of its own root. Each takes only the lab's key, and its host key is pinned in the
parameters' `ssh.known_hosts`.

- `hubops check` accepts the file; each node's sshd is its own root's; a host key that is not the
  pinned one is refused by preflight with what to do, before anything changes;
- the whole deploy chain runs over ssh; preflight records how each node was reached and its
  engine; a user's server lands on the Docker 28 worker and answers through the hub;
- the ssh connection to the Docker 28 worker lost in the middle of 60-images (its sshd killed
  while the single-user image streams to it): the stage fails with the host named, the run's record says so,
  and `hubops deploy --resume` (sshd back) finishes the run;
- no ssh process of hubops outlives the commands; `lab down` leaves nothing.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import docker
import pytest

from hubops.core.engine import Clients
from hubops.core.params import load_params
from hubops.hub.running import HubAPI
from hubops.lab import cluster as lab
from hubops.lab.ssh import enable_ssh
from tests.helpers import LAB_SUBNETS, PROJECT, create_user, free_subnet, run_name, runs, stage_record

pytestmark = [pytest.mark.engine, pytest.mark.e2e]
NAME = run_name("lssh")
WORKER, MANAGER = f"{NAME}-node0", f"{NAME}-manager"


def cli(*args: str, outputs: Path, wait: bool = True):
    env = {**os.environ, "HUBOPS_OUTPUTS": str(outputs)}
    argv = [sys.executable, "-m", "hubops.cli.main", *args]
    if not wait:
        return subprocess.Popen(argv, cwd=PROJECT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(argv, cwd=PROJECT, env=env, capture_output=True, text=True, timeout=3600)


def sshd_pids(node: str) -> list[int]:
    """The sshd processes (listener and sessions) in a lab node's network namespace."""
    want = os.stat(f"/var/run/netns/hl-{node}")
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            st = os.stat(d / "ns" / "net")
            exe = os.readlink(d / "exe")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (want.st_dev, want.st_ino) and os.path.basename(exe).startswith("sshd"):
            out.append(int(d.name))
    return out


def hubops_ssh_procs(lab_name: str) -> list[str]:
    """ssh client processes on this machine that talk to this lab's nodes (tunnels left behind)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                argv = (d / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and os.path.basename(argv[0]) == b"ssh" and any(lab_name.encode() in a for a in argv):
                out.append(b" ".join(argv).decode(errors="replace"))
    return out


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lssh")
    params = tmp / "lab.yaml"
    outputs = tmp / "outputs"
    try:
        t0 = time.monotonic()
        lab.lab_up(name=NAME, managers=1, workers=1, subnet=free_subnet(LAB_SUBNETS), overlay_subnet=free_subnet(),
                   params_out=params, engines={"node0": "28"})
        changes = enable_ssh(NAME, params)
        print(f"\nlab up with ssh: {time.monotonic() - t0:.1f} s; {changes}")
        t0 = time.monotonic()
        deploy = cli("deploy", "-p", str(params), outputs=outputs)
        print(f"deploy over ssh (cold): {time.monotonic() - t0:.1f} s\n{deploy.stderr[-2000:]}")
        yield {"params": params, "outputs": outputs, "deploy": deploy, "p": load_params(params), "tmp": tmp}
    finally:
        lab.lab_down(name=NAME)


def test_the_parameter_file_reaches_every_node_over_ssh_with_pinned_keys(cluster):
    p = cluster["p"]
    assert [h.url.split("@")[0] for h in p.hosts.all] == ["ssh://root", "ssh://root"]
    assert all(h.ssh and h.ssh.known_hosts and h.tls is None for h in p.hosts.all)
    out = cli("check", "-p", str(cluster["params"]), outputs=cluster["outputs"])
    assert out.returncode == 0, out.stderr[-2000:]


def test_each_nodes_sshd_is_its_own_roots(cluster):
    """The 20.10 manager's sshd is this machine's binary; the Docker 28 worker's is its Debian root's."""
    host = os.stat("/usr/sbin/sshd")
    seen = {}
    for node in (MANAGER, WORKER):
        pids = sshd_pids(node)
        assert pids, f"no sshd runs in {node}'s namespace"
        st = os.stat(f"/proc/{pids[0]}/root/usr/sbin/sshd")
        seen[node] = (st.st_dev, st.st_ino) == (host.st_dev, host.st_ino)
    assert seen == {MANAGER: True, WORKER: False}, seen
    engines = {n.name: n.engine for n in lab.lab_status(name=NAME).nodes}
    assert engines == {MANAGER: "20.10", WORKER: "28"}


def test_deploy_chain_over_ssh_and_a_server_on_the_worker(cluster):
    assert cluster["deploy"].returncode == 0, cluster["deploy"].stderr[-4000:]
    run = runs(cluster["outputs"])[-1]
    assert run["status"] == "ok" and len(run["stages"]) == 11
    pre = stage_record(cluster["outputs"], run, "00-preflight")["results"][0]["facts"]
    assert pre[MANAGER]["reached"] == pre[WORKER]["reached"] == "ssh, host key pinned"
    assert {h: e["engine"].split(".")[0] for h, e in run["engines"].items()} == {MANAGER: "20", WORKER: "28"}
    p = cluster["p"]
    api = HubAPI(p)
    if api.user("alice") is None:  # the lab's userlist has her; the hub knows her once she logged in
        create_user(p, "alice")
    api.request("POST", "/hub/api/users/alice/server", ok=(201, 202))
    api.wait_server("alice", ready=True, timeout=180)
    clients = Clients(p)
    svc = clients.manager.services.get(f"{p.prefix}-user-alice")
    task = next(t for t in svc.tasks(filters={"desired-state": "running"}) if t["Status"]["State"] == "running")
    node = clients.manager.nodes.get(task["NodeID"])
    assert (node.attrs["Spec"].get("Labels") or {}).get(f"hubops.{p.deployment}.host") == WORKER
    assert node.attrs["Description"]["Engine"]["EngineVersion"].startswith("28.")
    assert api.s.get(f"{p.hub_url}/user/alice/api/status", timeout=30).status_code == 200
    clients.close()


def test_an_unknown_host_key_is_refused_before_anything_changes(cluster):
    p = cluster["p"]
    pinned = Path(p.hosts.workers[0].ssh.known_hosts)
    wrong = cluster["tmp"] / "known_hosts.wrong"
    other = cluster["tmp"] / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    addr = p.hosts.workers[0].advertise_addr
    lines = [ln for ln in pinned.read_text().splitlines() if not ln.startswith(addr + " ")]
    wrong.write_text("\n".join(lines + [f"{addr} {' '.join(other.with_suffix('.pub').read_text().split()[:2])}"]) + "\n")
    bad = cluster["tmp"] / "lab-wrong-key.yaml"
    bad.write_text(cluster["params"].read_text().replace(f"known_hosts: {pinned}", f"known_hosts: {wrong}"))
    assert str(wrong) in bad.read_text()
    before = len(runs(cluster["outputs"]))
    out = cli("deploy", "-p", str(bad), "--only", "00-preflight", outputs=cluster["outputs"])
    assert out.returncode != 0
    err = " ".join(out.stderr.split())  # the console wraps long lines
    assert "ssh key is not the one pinned" in err or "ssh key is not known" in err, err[-2000:]
    assert WORKER in err and "never accepts an unknown or changed host key" in err, err[-2000:]
    print(f"\nrefused: {err[:600]}")
    assert len(runs(cluster["outputs"])) == before + 1 and runs(cluster["outputs"])[-1]["status"] != "ok"


def test_a_lost_connection_fails_the_stage_and_resume_finishes(cluster):
    p, outputs = cluster["p"], cluster["outputs"]
    # The worker loses the single-user image, so that 60-images streams it to it again over ssh.
    worker_engine = docker.DockerClient(base_url=f"unix://{lab.node_socket(lab.RUN_ROOT / NAME, WORKER)}")

    def singleuser_on_worker() -> list:
        return [i for i in worker_engine.images.list() if any(t.startswith("hubops-singleuser:") for t in i.tags)]

    api = HubAPI(p)  # alice's server (on the worker) uses the image: stop it first
    api.request("DELETE", "/hub/api/users/alice/server", ok=(202, 204))
    api.wait_server("alice", ready=False, timeout=120)
    # So does the attach service's task there (stages/attachments.py); 80-deploy makes it again on resume.
    for svc in Clients(p).manager.services.list(filters={"name": f"{p.prefix}-attach"}):
        svc.remove()
    deadline = time.monotonic() + 60
    while worker_engine.containers.list(filters={"label": "com.docker.swarm.service.name"}) and time.monotonic() < deadline:
        time.sleep(1)
    for img in singleuser_on_worker():
        worker_engine.images.remove(img.id, force=True)
    assert not singleuser_on_worker()
    proc = cli("deploy", "-p", str(cluster["params"]), "--only", "60-images", outputs=outputs, wait=False)
    # Once 60-images holds an ssh session to the worker (a tunnel open), and a moment later (the
    # image streaming): the worker's sshd and its sessions are killed, as a dropped link would.
    cut, deadline = False, time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if len(sshd_pids(WORKER)) > 1:
            time.sleep(1.0)
            for pid in sshd_pids(WORKER):
                os.kill(pid, signal.SIGKILL)
            cut = True
            break
        time.sleep(0.05)
    out, err = proc.communicate(timeout=600)
    assert cut, f"no ssh session to the worker was seen during 60-images: {err[-2000:]}"
    assert proc.returncode != 0, err[-3000:]
    run = runs(outputs)[-1]
    assert run["status"] != "ok"
    failed = [s for s in run["stages"] if s["status"] not in ("ok", "skipped")]
    assert failed and failed[0]["name"] == "60-images", run["stages"]
    assert WORKER in " ".join(err.split()), err[-3000:]
    print(f"\nthe stage's error: {' '.join(err.split())[:800]}")
    enable_ssh(NAME, cluster["params"])  # sshd back on the worker
    res = cli("deploy", "-p", str(cluster["params"]), "--resume", run["run_id"], outputs=outputs)
    assert res.returncode == 0, res.stderr[-3000:]
    assert runs(outputs)[-1]["status"] == "ok"
    assert singleuser_on_worker(), "the resumed 60-images delivered the image"
    worker_engine.close()


def test_no_ssh_tunnel_outlives_the_commands(cluster):
    from hubops.core import ssh

    ssh.stop_all()  # this test process's own tunnels (its Clients)
    time.sleep(1)
    assert hubops_ssh_procs(NAME) == []
