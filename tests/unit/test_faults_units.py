"""The pure parts of hubops's fault handling: where the hub's data lives (storage.hub) and what that
means for its placement, its addresses and what `status` says; the lab's engine socket path; the
record of a run whose runner was killed. The faults themselves are in tests/e2e/test_lab_faults.py."""
from __future__ import annotations

import platform
import re
import textwrap
from pathlib import Path

import pytest

from hubops.stages import deploy
from hubops.lab import cluster as lab
from hubops.core.errors import ParameterError
from hubops.core.params import load_params
from hubops.core.record import stopped_stage
from hubops.stages.storage import describe_hub
from tests.helpers import make_params, write_cert_pair

THREE_MANAGERS = """
hosts:
  managers:
    - {name: m1, url: "tcp://10.0.0.1:2376", advertise_addr: 10.0.0.1, tls: {ca: ca.pem, cert: c.pem, key: k.pem}}
    - {name: m2, url: "tcp://10.0.0.2:2376", advertise_addr: 10.0.0.2, tls: {ca: ca.pem, cert: c.pem, key: k.pem}}
    - {name: m3, url: "tcp://10.0.0.3:2376", advertise_addr: 10.0.0.3, tls: {ca: ca.pem, cert: c.pem, key: k.pem}}
"""


def three(tmp_path: Path, extra: str):
    base = make_params(tmp_path, "faults", port=8490, subnet="10.246.0.0/24")
    (tmp_path / "ca.pem").write_text("not read by these tests\n")
    write_cert_pair(tmp_path / "c.pem", tmp_path / "k.pem")
    text = base.read_text()
    head, _, rest = text.partition("hosts:")
    rest = rest.split("hub:", 1)[1]
    extra = textwrap.dedent(extra)
    hub = "hub:"
    if re.search(r"^hub:", extra, re.M):  # the extra's hub replaces the base's (a key given twice is refused)
        rest, hub = rest.split("\n", 1)[1], ""
    base.write_text(head + textwrap.dedent(THREE_MANAGERS).lstrip() + hub + rest + extra)
    return base


def test_volume_hub_data_is_pinned_and_status_says_it_cannot_move(tmp_path):
    p = load_params(three(tmp_path, ""))
    assert p.storage.hub.mode == "volume" and not p.hub_can_move
    assert deploy.hub_constraints(p) == [f"node.labels.{p.hub_node_label}==true"]
    mount = deploy.hub_data_mount(p)
    assert mount["Type"] == "volume" and mount["Source"] == p.hub_volume
    said = describe_hub(p)
    assert said.startswith("no:") and "m1" in said and p.hub_volume in said and "restore" in said
    assert p.hub_urls == [p.hub_url]


def test_shared_path_hub_data_lets_the_hub_run_on_any_manager(tmp_path):
    f = three(tmp_path, """
        hub: {public_name: 10.0.0.1, https_port: 8490, extra_names: [10.0.0.3]}
        storage:
          hub: {mode: shared-path, path: /mnt/nfs/hub}
    """)
    p = load_params(f)
    assert p.hub_can_move
    assert deploy.hub_constraints(p) == ["node.role==manager"]
    mount = deploy.hub_data_mount(p)
    assert mount["Type"] == "bind" and mount["Source"] == "/mnt/nfs/hub"
    assert describe_hub(p).startswith("yes:") and "/mnt/nfs/hub" in describe_hub(p)
    # hubops looks for the hub at its name, then at the managers the certificate names (not m2).
    assert p.hub_urls == ["https://10.0.0.1:8490", "https://10.0.0.3:8490"]


@pytest.mark.parametrize("extra, key, fix", [
    ("storage:\n  hub: {mode: shared-path}\n", "storage.hub", "needs path"),
    ("storage:\n  hub: {mode: volume, path: /mnt/x}\n", "storage.hub", "shared-path"),
    ("storage:\n  hub: {mode: nfs}\n", "storage.hub.mode", "volume"),
    ("storage:\n  hub: {mode: shared-path, path: relative/dir}\n", "storage.hub.path", "absolute"),
    ("storage:\n  users: {mode: shared-path, path: /mnt/nfs}\n  hub: {mode: shared-path, path: /mnt/nfs/hub}\n",
     "storage", "a directory of its own"),
])
def test_bad_hub_storage_is_refused_with_the_key_and_a_fix(tmp_path, extra, key, fix):
    with pytest.raises(ParameterError) as e:
        load_params(three(tmp_path, extra))
    assert key in str(e.value) and fix in str(e.value) and "faults.yaml" in str(e.value)


def test_a_hub_that_can_move_needs_one_engine_socket_path_on_every_manager(tmp_path):
    f = three(tmp_path, "storage:\n  hub: {mode: shared-path, path: /mnt/nfs/hub}\n")
    f.write_text(f.read_text().replace('advertise_addr: 10.0.0.2,', 'advertise_addr: 10.0.0.2, engine_socket: /run/d.sock,'))
    with pytest.raises(ParameterError, match="the same hosts.managers\\[\\].engine_socket"):
        load_params(f)


def test_lab_engines_share_one_socket_path_in_their_own_views(tmp_path):
    net = lab._subnet("10.84.0.0/24")
    nodes = lab._plan("ftlab", 3, 2, net)
    text = lab.params_text("ftlab", nodes, state=tmp_path / "s", run=tmp_path / "r",
                           overlay_subnet="10.246.0.0/24", userlist="u")
    (tmp_path / "u").write_text("operator admin\n")
    (tmp_path / "s" / "certs").mkdir(parents=True)
    (tmp_path / "s" / "certs" / "ca.pem").write_text("not read by this test\n")
    write_cert_pair(tmp_path / "s" / "certs" / "cert.pem", tmp_path / "s" / "certs" / "key.pem")
    (tmp_path / "lab.yaml").write_text(text.replace("hub: {", "storage: {hub: {mode: shared-path, path: /x}}\nhub: {"))
    p = load_params(tmp_path / "lab.yaml")
    assert {h.engine_socket for h in p.hosts.all} == {str(tmp_path / "r" / "engine" / "docker.sock")}
    argv = lab._engine_argv(nodes[1], tmp_path / "s", tmp_path / "r", {"ca": Path("ca")})
    assert argv[argv.index("unshare"):][:5] == ["unshare", "--uts", "--mount", "--propagation", "slave"]
    # RUN/NODE/engine is mounted at RUN/engine in the engine's own view, and the engine listens there.
    assert str(tmp_path / "r" / "ftlab-manager1" / "engine") in argv and f"unix://{p.hosts.all[0].engine_socket}" in argv
    assert lab.node_socket(tmp_path / "r", "ftlab-manager1") == tmp_path / "r" / "ftlab-manager1" / "engine" / "docker.sock"


def test_a_run_whose_runner_is_gone_is_reported_stopped_in_its_stage():
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    m = {"status": "running", "machine": platform.node(), "runner_pid": int(gone.stdout),
         "stages": [{"name": "70-storage", "status": "ok"}, {"name": "80-deploy", "status": "running"},
                    {"name": "90-verify", "status": "pending"}]}
    assert stopped_stage(m) == "80-deploy"
    import os

    assert stopped_stage({**m, "runner_pid": os.getpid()}) is None  # its runner still runs
    assert stopped_stage({**m, "status": "ok"}) is None
    assert stopped_stage({**m, "machine": "elsewhere"}) is None  # cannot tell from here
    assert stopped_stage({k: v for k, v in m.items() if k != "runner_pid"}) is None  # older record


def test_quorum_lost_names_the_surviving_manager_and_the_recovery(tmp_path):
    from hubops.ops.status import quorum_lost_text

    p = load_params(three(tmp_path, ""))
    rows = [{"manager": "m1", "address": "10.0.0.1", "engine": "NO ANSWER (down or unreachable)", "swarm": ""},
            {"manager": "m2", "address": "10.0.0.2", "engine": "answers (Docker 26.1)", "swarm": "active"},
            {"manager": "m3", "address": "10.0.0.3", "engine": "NO ANSWER (down or unreachable)", "swarm": ""}]
    text = quorum_lost_text(p, {"rows": rows, "reachable": 1, "total": 3})
    assert text.startswith("QUORUM LOST: 1 of 3 managers reachable (down: m1, m3)")
    assert "surviving manager m2 (10.0.0.2): `docker swarm init --force-new-cluster --advertise-addr 10.0.0.2`" in text
    assert "keep serving" in text and "start the managers that are down again" in text
    idle = [dict(r, engine="answers (Docker 26.1)", swarm="inactive") for r in rows]
    assert quorum_lost_text(p, {"rows": idle, "reachable": 0, "total": 3}).startswith("NO SWARM")
