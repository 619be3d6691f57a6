"""Spawn profiles against the nodes (00-preflight): which nodes advertise which generic resources
(GPUs), and profiles no node can take refused before anything changes.

What needs no engine (an image folder that is missing, a placement no host's labels match, a group
without members) is refused at check time by hubops.core.profiles.check.
"""
from __future__ import annotations

from typing import Any

from hubops.core.errors import PreflightError
from hubops.core.params import Loaded
from hubops.core.profiles import eligible_hosts, limits, mem_bytes
from hubops.core.result import Result


def generic_resources(info: dict) -> dict[str, list[str]]:
    """What one engine advertises (docker info's GenericResources): kind -> its IDs (named ones) or
    ['N'] (a discrete count)."""
    out: dict[str, list[str]] = {}
    for gr in info.get("GenericResources") or []:
        named, discrete = gr.get("NamedResourceSpec"), gr.get("DiscreteResourceSpec")
        if named:
            out.setdefault(named["Kind"], []).append(str(named.get("Value")))
        elif discrete:
            out.setdefault(discrete["Kind"], []).append(str(discrete.get("Value")))
    return out


def count(ids: list[str]) -> int:
    """How many of a kind a node has: the number of named IDs, or a discrete count."""
    if len(ids) == 1 and ids[0].isdigit():
        return int(ids[0])
    return len(ids)


def check_nodes(p: Loaded, facts: dict[str, dict[str, Any]], r: Result) -> None:
    """Report each node's generic resources into `r`; raise PreflightError naming the profile and key when
    no node its placement allows has the memory, the CPUs or the generic resources it asks for.
    `facts`: host name -> preflight.probe's answer (with `mem_bytes` and `generic_resources`)."""
    r.facts["generic resources"] = [
        {"host": h, "advertises": ", ".join(f"{k}: {', '.join(v)}" for k, v in sorted(f["generic_resources"].items()))
         or "none"} for h, f in facts.items()]
    problems = []
    for i, prof in enumerate(p.profiles):
        key = f"{p.source}: profiles[{i}] ({prof.name})"
        hosts = [h.name for h in eligible_hosts(p, prof)]
        if not hosts:
            continue  # refused at check time (placement)
        lim = limits(p, prof)
        for k in ("mem_limit", "mem_guarantee"):
            want = lim[k] and mem_bytes(lim[k])
            if want and not any(facts[h]["mem_bytes"] >= want for h in hosts):
                problems.append(f"{key}.{k}: {lim[k]} is more than the memory of every node it may run on ("
                                + ", ".join(f"{h}: {facts[h]['memory_gib']} GiB" for h in hosts)
                                + "); lower it, or add a bigger host")
        for k in ("cpu_limit", "cpu_guarantee"):
            if lim[k] and not any((facts[h]["cpus"] or 0) >= lim[k] for h in hosts):
                problems.append(f"{key}.{k}: {lim[k]:g} CPUs is more than every node it may run on has ("
                                + ", ".join(f"{h}: {facts[h]['cpus']}" for h in hosts) + "); lower it")
        for kind, n in sorted(prof.generic_resources.items()):
            having = [h for h in hosts if count(facts[h]["generic_resources"].get(kind, [])) >= n]
            if not having:
                problems.append(
                    f"{key}.generic_resources.{kind}: no node it may run on ({', '.join(hosts)}) advertises {n} {kind}; "
                    f"a GPU host advertises it in /etc/docker/daemon.json (\"node-generic-resources\": "
                    f"[\"{kind}=GPU-UUID\"]) and runs the NVIDIA container toolkit (see README, GPUs)")
            else:
                r.keep(f"profile {prof.name}", f"{kind} x{n} on {', '.join(having)}")
        if not prof.generic_resources:
            r.keep(f"profile {prof.name}", f"may run on {', '.join(hosts)}")
    if problems:
        raise PreflightError("\n".join(problems))
