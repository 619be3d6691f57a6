"""The hub's narrow door (issue 13.3), on a whole deployment of the local default run the way a user
runs it (`hubops deploy`), with shared-path homes (which the door makes, the hub being no longer
root). One deployment, `door-RUN` (a free port and subnet), shared by the tests of this file:

1. the hub's processes (JupyterHub, the proxy) are not root, and no engine socket is in the hub's
   container; the door's socket is, owned by the hub's user, mode 0600;
2. a real spawn through the hub (its REST API): the user's server answers through the proxy, its
   home made by the door with the user's owner; stopped again; the door's log shows the calls;
3. from inside the hub's container, with the hub's own docker-py and environment: a service
   mounting `/`, a privileged one (every capability), one on the host network, one with the
   engine's socket, a container, are refused with a clear message, and nothing is created;
4. the upgrade path: a database written by a root hub (root-owned files in the hub's data) is given
   to the hub's user by the next deploy that changes the hub, and the hub serves on it.

Teardown at the end leaves no object labelled for the deployment. 1-3 in `make test` (one deploy,
about 2 minutes with the images built); 4 is `slow` (a second deploy, `make test-all`)."""
from __future__ import annotations

import collections
import json
import re
import textwrap
import time
from pathlib import Path

import docker
import pytest

from hubops.core.engine import Clients
from hubops.core.params import load_params
from hubops.hub import config as hubconfig
from hubops.hub.running import HubAPI, hub_container
from hubops.ops import teardown
from hubops.stages import apiproxy
from tests.helpers import ensure_swarm, free_port, free_subnet, hubops_cli, make_params, run_name

pytestmark = [pytest.mark.engine, pytest.mark.e2e]
DEPLOYMENT = run_name("door")


def labelled_objects() -> list[str]:
    client = docker.from_env()
    return [f"{kind} {o.name}" for kind, coll in (("service", client.services), ("secret", client.secrets),
                                                  ("config", client.configs), ("network", client.networks),
                                                  ("volume", client.volumes))
            for o in coll.list(filters={"label": f"hubops.deployment={DEPLOYMENT}"})]


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("door")
    users, outputs = tmp / "users", tmp / "outputs"
    users.mkdir()
    ensure_swarm()
    params = make_params(tmp, DEPLOYMENT, port=free_port(), subnet=free_subnet(),
                         extra=f"storage: {{users: {{mode: shared-path, path: {users}}}}}\n")
    # On a machine shared with other suites (load 20 to 35 on 2 cores seen), Swarm's healthcheck kills a
    # hub that starts slowly, and the next try serves: wait for it longer than the default 180 s.
    params.write_text(params.read_text().replace("hub: {public_name: localhost,",
                                                 "hub: {start_timeout: 600, public_name: localhost,"))
    assert "start_timeout: 600" in params.read_text()
    assert not labelled_objects(), f"deployment {DEPLOYMENT} exists already: {labelled_objects()}"
    t0 = time.monotonic()
    cold = hubops_cli("deploy", "-p", str(params), outputs=outputs)
    print(f"\ndeploy: {time.monotonic() - t0:.1f} s")
    p = load_params(params)
    state = {"params": params, "p": p, "users": users, "outputs": outputs, "tmp": tmp}
    try:
        assert cold.returncode == 0, cold.stderr[-4000:]
        yield state
    finally:
        down = hubops_cli("ops", "teardown", "-p", str(params), "--set", "confirm=true", "--set", "remove_volumes=true",
                          "--set", "remove_user_data=true", outputs=outputs)
        left = labelled_objects()
        if down.returncode != 0 or left:
            teardown.teardown(p, Clients(p), remove_volumes=True, remove_user_data=True)
        assert down.returncode == 0, down.stderr[-3000:]
        assert not left, f"teardown left {left}"


def in_hub(p, code: str) -> dict:
    """Run python code in the hub's container as the hub runs (its user, its environment); its last
    line of output, as JSON."""
    ctr = hub_container(p, Clients(p))
    rc, out = ctr.exec_run(["python3", "-c", textwrap.dedent(code)], demux=False)
    text = out.decode(errors="replace")
    if rc != 0:
        tasks = docker.from_env().api.tasks(filters={"service": apiproxy.service_name(p)})
        states = [(t["CreatedAt"][:19], t["Status"]["State"], t["Status"].get("Err", "")) for t in tasks]
        _, ls = ctr.exec_run(["ls", "-la", apiproxy.DOOR_DIR])
        raise AssertionError(f"{text[-2000:]}\ndoor tasks: {states}\n{ls.decode(errors='replace')}\n"
                             + "\n".join(door_log(p)[-30:]))
    return json.loads(text.strip().splitlines()[-1])


def door_log(p) -> list[str]:
    client = docker.from_env()
    lines = []
    for ctr in client.containers.list(filters={"label": f"com.docker.swarm.service.name={apiproxy.service_name(p)}"}):
        lines += ctr.logs(tail=400).decode(errors="replace").splitlines()
    return lines


def test_the_hub_is_not_root_and_has_no_engine_socket(deployed):
    p = deployed["p"]
    seen = in_hub(p, """
        import json, os, stat
        procs = {}
        for pid in filter(str.isdigit, os.listdir('/proc')):
            try:
                status = open(f'/proc/{pid}/status').read()
                cmd = open(f'/proc/{pid}/cmdline', 'rb').read().replace(b'\\0', b' ').decode()
            except OSError:
                continue
            uid = next(l.split()[1:] for l in status.splitlines() if l.startswith('Uid:'))
            procs[pid] = {'cmd': cmd[:80], 'uids': sorted(set(map(int, uid)))}
        socks = [s for s in ('/run/docker.sock', '/var/run/docker.sock', '/docker.sock') if os.path.exists(s)]
        door = os.stat('/run/hubops-door/docker.sock')
        print(json.dumps({'me': [os.getuid(), os.geteuid(), os.getgid()], 'procs': procs, 'engine_sockets': socks,
                          'door': [door.st_uid, oct(door.st_mode & 0o777), stat.S_ISSOCK(door.st_mode)],
                          'docker_host': os.environ.get('DOCKER_HOST'),
                          'db': list(os.stat('/srv/jupyterhub/data/jupyterhub.sqlite')[4:6])}))
    """)
    print(f"\nin the hub's container: {json.dumps(seen, indent=1)}")
    uid = hubconfig.HUB_UID
    assert seen["me"] == [uid, uid, hubconfig.HUB_GID]
    hub_procs = [v for v in seen["procs"].values() if "jupyterhub" in v["cmd"] or "configurable-http-proxy" in v["cmd"]]
    assert any("configurable-http-proxy" in v["cmd"] for v in hub_procs), seen["procs"]
    assert hub_procs and all(v["uids"] == [uid] for v in hub_procs), hub_procs
    assert all(0 not in v["uids"] for v in seen["procs"].values()), seen["procs"]  # no root process at all
    assert seen["engine_sockets"] == []
    assert seen["door"] == [uid, "0o600", True]
    assert seen["docker_host"] == f"unix://{apiproxy.DOOR_SOCKET}"
    assert seen["db"] == [uid, hubconfig.HUB_GID]


def test_a_real_spawn_through_the_hub_passes_the_door(deployed):
    p = deployed["p"]
    api = HubAPI(p, timeout=30)  # alice is on the userlist
    t0 = time.monotonic()
    api.request("POST", "/hub/api/users/alice/server", ok=(201, 202))
    api.wait_server("alice", ready=True, timeout=180)
    took = time.monotonic() - t0
    r = api.request("GET", "/user/alice/api/status")
    assert r.status_code == 200
    home = deployed["users"] / "alice"
    st = home.stat()
    assert (st.st_uid, st.st_gid) == (p.storage.users.uid, p.storage.users.gid)
    api.request("DELETE", "/hub/api/users/alice/server", ok=(202, 204))
    api.wait_server("alice", ready=False, timeout=90)
    assert not docker.from_env().services.list(filters={"name": f"{p.prefix}-user-alice"})
    calls = [line for line in door_log(p) if " allow " in line or " refuse " in line]
    seen = collections.Counter(re.sub(r"/(services|nodes|tasks|homes)/[^/? ]+", r"/\1/{id}",
                                      re.sub(r"\?\S*", "", c.split(" allow  ", 1)[-1].split(" refuse ", 1)[-1]))
                               for c in calls)
    print(f"\nspawn to ready through the hub: {took:.1f} s; the door saw (what a spawn, a poll and a stop send):\n  "
          + "\n  ".join(f"{n:4d} x {what}" for what, n in sorted(seen.items())))
    assert any("allow  POST /services/create -> 201" in c for c in calls), calls
    assert any("allow  POST /hubops/homes/alice -> 200" in c for c in calls), calls
    assert any("allow  DELETE /services/" in c for c in calls), calls
    assert not [c for c in calls if " refuse " in c], calls


def test_the_door_refuses_from_inside_the_hub(deployed):
    p = deployed["p"]
    seen = in_hub(p, f"""
        import json, docker
        from docker.types import ContainerSpec, TaskTemplate
        api = docker.APIClient(version="auto", **docker.utils.kwargs_from_env())  # DOCKER_HOST, as the spawner
        labels = {{"hubops.deployment": {p.deployment!r}, "hubops.role": "user-server", "hubops.managed": "true"}}
        image = {docker.from_env().services.get(p.hub_service).attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"]!r}
        def attempt(name, cs=None, **task):
            spec = ContainerSpec(image=image, command=["sleep", "infinity"], **(cs or {{}}))
            try:
                api.create_service(TaskTemplate(container_spec=spec, **task), name={p.prefix + "-user-"!r} + name,
                                   labels=labels)
                return "CREATED"
            except docker.errors.APIError as e:
                return f"{{e.response.status_code}} {{e.explanation}}"
        out = {{
            "root": attempt("root", {{"mounts": ["/:/host:rw"]}}, networks=[{p.network_name!r}]),
            "privileged": attempt("priv", {{"cap_add": ["ALL"]}}, networks=[{p.network_name!r}]),
            "host-network": attempt("hostnet", networks=["host"]),
            "socket": attempt("sock", {{"mounts": ["/var/run/docker.sock:/var/run/docker.sock:rw"]}},
                              networks=[{p.network_name!r}]),
        }}
        try:
            api.containers()
            out["containers"] = "LISTED"
        except docker.errors.APIError as e:
            out["containers"] = f"{{e.response.status_code}} {{e.explanation}}"
        print(json.dumps(out))
    """)
    print("\nfrom inside the hub, through the door:\n  " + "\n  ".join(f"{k}: {v}" for k, v in seen.items()))
    assert seen["root"].startswith("403 refused by hubops's Docker API door") and "bind-mounts /, outside" in seen["root"]
    assert "adds capabilities ['ALL']" in seen["privileged"]
    assert "joins the 'host' network" in seen["host-network"]
    assert "mounts the engine's socket" in seen["socket"]
    assert seen["containers"].startswith("403") and "not a call the hub needs" in seen["containers"]
    assert not [s.name for s in docker.from_env().services.list(filters={"label": f"hubops.deployment={p.deployment}"})
                if s.name.startswith(p.prefix + "-user-")]


@pytest.mark.slow  # a second deploy (1.5 to 3 minutes): make test-all
def test_a_database_a_root_hub_wrote_is_given_to_the_hubs_user(deployed):
    """The upgrade path: a deployment whose hub ran as root has root-owned files in its data; the
    deploy that changes the hub (here: its log level; an upgrade changes its image) gives them to the
    hub's user before the hub starts, and the hub serves on the same database."""
    p = deployed["p"]
    client = docker.from_env()
    image = client.services.get(p.hub_service).attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"]
    client.containers.run(image, ["chown", "-R", "0:0", "/data"], user="0:0", network_mode="none", remove=True,
                          mounts=[docker.types.Mount("/data", p.hub_volume, type="volume")])
    owner = client.containers.run(image, ["stat", "-c", "%u:%g", "/data/jupyterhub.sqlite"], user="0:0",
                                  network_mode="none", remove=True,
                                  mounts=[docker.types.Mount("/data", p.hub_volume, type="volume")])
    assert owner.decode().strip() == "0:0"
    params = deployed["params"]
    params.write_text(params.read_text().replace("hub: {", "hub: {log_level: DEBUG, ", 1))
    assert "log_level: DEBUG" in params.read_text()
    again = hubops_cli("deploy", "-p", str(params), outputs=deployed["outputs"])
    assert again.returncode == 0, again.stderr[-4000:]
    assert "given to the hub's user" in again.stdout + again.stderr or _recorded(deployed["outputs"]), again.stderr[-3000:]
    seen = in_hub(p, """
        import json, os
        print(json.dumps(list(os.stat('/srv/jupyterhub/data/jupyterhub.sqlite')[4:6])))
    """)
    assert seen == [hubconfig.HUB_UID, hubconfig.HUB_GID]
    # The users the database holds are still there.
    assert HubAPI(p, timeout=30).user("alice") is not None


def _recorded(outputs: Path) -> bool:
    run = sorted(outputs.glob(f"*-{DEPLOYMENT}-deploy*"), key=lambda d: d.stat().st_mtime)[-1]
    text = (run / "80-deploy.ipynb").read_text()
    return "given to the hub's user" in text
