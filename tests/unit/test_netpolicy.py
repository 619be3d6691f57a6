"""The network policy's pure parts: the parameters' defaults, and the rules the agent
(images/netpolicy/agent.py) writes for a set of users' servers. The rules' effect is tested on real
engines: tests/integration/test_netpolicy_engine.py and tests/e2e/test_lab_netpolicy.py."""
from __future__ import annotations

import importlib.util
import shlex
from pathlib import Path

from hubops.core.params import load_params
from hubops.stages import netpolicy
from tests.helpers import make_params

AGENT = Path(__file__).resolve().parents[2] / "images/netpolicy/agent.py"


def agent(monkeypatch, **env):
    for k, v in env.items():
        monkeypatch.setenv(f"HUBOPS_{k}", v)
    spec = importlib.util.spec_from_file_location("hubops_netpolicy_agent", AGENT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_defaults_block_metadata_and_allow_egress(tmp_path):
    p = load_params(make_params(tmp_path, "np", port=8443, subnet="10.231.0.0/24"))
    pol = p.network.policy
    assert pol.enabled and pol.metadata_addresses == ["169.254.169.254/32"] and pol.egress == "allow"
    env = netpolicy.agent_env(p, ["10.0.0.5/32"])
    assert env["HUBOPS_BLOCKED"] == "169.254.169.254/32" and env["HUBOPS_NODES"] == "10.0.0.5/32"
    assert env["HUBOPS_HUB_PORTS"] == "8443"
    assert pol.isolate_servers and env["HUBOPS_OVERLAY"] == "10.231.0.0/24" and env["HUBOPS_OVERLAY_PORTS"] == "8081,8000"


def _rules(text: str) -> list[list[str]]:
    return [shlex.split(ln) for ln in text.splitlines() if ln.startswith("-A ")]


def test_agent_rules_for_two_servers(monkeypatch):
    a = agent(monkeypatch, DEPLOYMENT="lab1", BLOCKED="169.254.169.254/32", NODES="10.77.0.11/32,10.77.0.12/32",
              HUB_PORTS="443", EGRESS="allow", EGRESS_ALLOW="")
    text = a.rules_text({"172.18.0.5": "alice-srv", "172.18.0.6": "bob-srv"})
    assert text.startswith("*filter\n:HUBOPS-I-lab1 - [0:0]\n:HUBOPS-F-lab1 - [0:0]\n") and text.endswith("COMMIT\n")
    rules = _rules(text)
    assert all("--comment" in r and r[r.index("--comment") + 1].startswith("hubops:lab1 ") for r in rules)
    ins = [r for r in rules if r[1] == "HUBOPS-I-lab1"]
    fwd = [r for r in rules if r[1] == "HUBOPS-F-lab1"]
    # Per server: the hub's public port returns, then everything else to the node is rejected.
    assert len(ins) == 4 and ins[0][-2:] == ["-j", "RETURN"] and "--dport" in ins[0] and ins[1][-3] == "REJECT"
    # Per server: metadata, then per node the hub's port (return) and the node (reject); nothing else.
    assert len(fwd) == 2 * (1 + 2 * 2) == a.expected_counts({"x": "a", "y": "b"})[1]
    assert sum(1 for r in fwd if "169.254.169.254/32" in r and "REJECT" in r) == 2
    assert not any(r[-1] == "REJECT" and "-d" not in r for r in fwd), "egress allow: no catch-all"


def test_agent_rules_with_egress_denied(monkeypatch):
    a = agent(monkeypatch, DEPLOYMENT="lab1", BLOCKED="169.254.169.254/32", NODES="", HUB_PORTS="443",
              EGRESS="deny", EGRESS_ALLOW="10.20.0.0/16")
    fwd = [r for r in _rules(a.rules_text({"172.18.0.5": "alice"})) if r[1] == "HUBOPS-F-lab1"]
    assert [("-d" in r and r[r.index("-d") + 1], r[-1] if r[-2] == "-j" else r[-3]) for r in fwd] == [
        ("169.254.169.254/32", "REJECT"), ("10.20.0.0/16", "RETURN"), (False, "REJECT")]


def test_chain_names_fit_iptables_and_agree_with_the_stage(tmp_path, monkeypatch):
    long = "a-very-long-deployment-name-x32"
    p = load_params(make_params(tmp_path, long, port=8443, subnet="10.231.0.0/24"))
    a = agent(monkeypatch, DEPLOYMENT=long)
    assert netpolicy.chains(p) == {"INPUT": a.IN_CHAIN, "DOCKER-USER": a.FWD_CHAIN}
    assert all(len(c) <= 28 for c in (a.IN_CHAIN, a.FWD_CHAIN))
