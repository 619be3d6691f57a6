"""65-netpolicy: what users' servers may reach, enforced on every node.

A user's server is on the deployment's overlay network (30-network) and, like every Swarm
container on an overlay, on the node's `docker_gwbridge`, through which it reaches anything that
is not on the overlay. This stage keeps iptables rules on every node for those containers:

- to the node's own addresses (its engine's API, Swarm's 2377 and 7946, SSH, anything listening
  on docker0, docker_gwbridge or the node's other addresses): rejected (INPUT: traffic from a
  container to the node's own addresses is delivered locally, DOCKER-USER never sees it);
- to every node's address (from the swarm and the parameters; but the hub's public port, so that
  the hub's public URL works from a notebook) and to
  `network.policy.metadata_addresses` (169.254.169.254 by default): rejected (DOCKER-USER);
- to anything else: allowed with `network.policy.egress: allow` (the default), otherwise only
  `network.policy.egress_allow`.

What the node's rules cannot see: traffic on the overlay itself (users' servers to the hub, the
proxy and each other). Between nodes it leaves as VXLAN packets that the node's own stack sends, and
on one node it crosses the overlay's bridge inside the network's own namespace: neither passes the
node's FORWARD chain. So, with `network.policy.isolate_servers` (the default), the agent also puts
rules inside each user's server's own network namespace, where every packet starts before any VXLAN
wrapping: new connections to the overlay's subnet only to the hub's API (8081) and the proxy (8000).
The server's user holds no capability (the spawner drops them all) and cannot change them. Behind
that, another user's server still refuses every request without its user's credentials
(JupyterHub's own authentication; see the tests).

The rules are kept by an agent, a global Swarm service (`hubops-DEPLOYMENT-netpolicy`, one task
per node, on the node's network namespace, with NET_ADMIN and NET_RAW, SYS_ADMIN and SYS_PTRACE to
enter users' servers' namespaces through the node's /proc, the node's engine socket and its /run) that watches which users' servers run on its node and rebuilds the deployment's two chains
(`HUBOPS-I-<deployment>` from INPUT, `HUBOPS-F-<deployment>` from DOCKER-USER; every rule commented
`hubops:DEPLOYMENT`) when they change, and puts back a missing jump within seconds. A node or engine
restart starts the task again, which puts the rules back. Its image (`images/netpolicy/`, built on
the base image) is built here and delivered to every node.

Undo: teardown removes the service (each agent removes its rules as it stops) and then runs a
short-lived container on every node that removes any rule left with the deployment's comment.
"""
from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import docker
import docker.errors
import docker.types

from hubops.core import labels as L
from hubops.core.engine import Clients, docker_op
from hubops.core.errors import DockerOpError, ParameterError
from hubops.core.params import Loaded
from hubops.core.result import Result
from hubops.hub import config as hubconfig
from hubops.stages import images

log = logging.getLogger("hubops")

STAGE = "65-netpolicy"
KIND = "netpolicy"
ROLE = "netpolicy"
# Where the agent finds the engine's socket and the node's /run (iptables' lock, shared with dockerd).
AGENT_SOCKET = "/run/hubops-engine.sock"
AGENT_RUN = "/host/run"
CAPS = ["NET_ADMIN", "NET_RAW"]  # the short-lived containers that read or remove the node's rules
# With network.policy.isolate_servers, the agent also enters users' servers' network namespaces
# through the node's /proc: setns needs SYS_ADMIN, opening another user's /proc/PID/ns/net SYS_PTRACE.
AGENT_CAPS = [*CAPS, "SYS_ADMIN", "SYS_PTRACE"]
AGENT_PROC = "/host/proc"


def service_name(p: Loaded) -> str:
    return f"{p.prefix}-netpolicy"


def _chain_tag(deployment: str) -> str:
    # Same as images/netpolicy/agent.py's tag(): iptables chain names have at most 28 characters.
    if len(deployment) <= 19:
        return deployment
    return deployment[:12] + hashlib.sha256(deployment.encode()).hexdigest()[:7]


def chains(p: Loaded) -> dict[str, str]:
    t = _chain_tag(p.deployment)
    return {"INPUT": f"HUBOPS-I-{t}", "DOCKER-USER": f"HUBOPS-F-{t}"}


def image_ref(p: Loaded, client: docker.DockerClient) -> str | None:
    """The agent image's tag for the current build context on the base image; None without a base image."""
    base = images.image_or_none(client, p.images.base)
    if base is None:
        return None
    return images.image_ref(KIND, images_dir=images.PROJECT_IMAGES, base_id=base.id, extra_ca_digest=None, extras={})


def node_addresses(p: Loaded, c: docker.DockerClient) -> list[str]:
    """Every node's address users' servers may not reach: the swarm's view and the parameters'."""
    found = set()
    with docker_op("list nodes", p.hub_host.name):
        nodes = c.nodes.list()
    for n in nodes:
        found.add((n.attrs.get("Status") or {}).get("Addr") or "")
        found.add(((n.attrs.get("ManagerStatus") or {}).get("Addr") or "").rsplit(":", 1)[0])
    found |= {h.advertise_addr or "" for h in p.hosts.all}
    out = []
    for a in found:
        try:
            ip = ipaddress.ip_address(a)
        except ValueError:
            continue
        # Loopback and 0.0.0.0 are no route from a container; the INPUT chain covers the node's own anyway.
        if ip.version == 4 and not ip.is_loopback and not ip.is_unspecified:
            out.append(f"{ip}/32")
    return sorted(out, key=lambda s: ipaddress.ip_network(s))


def agent_env(p: Loaded, nodes: list[str]) -> dict[str, str]:
    pol = p.network.policy
    return {
        "HUBOPS_DEPLOYMENT": p.deployment,
        "HUBOPS_ENGINE_SOCKET": AGENT_SOCKET,
        "HUBOPS_BLOCKED": ",".join(pol.metadata_addresses),
        "HUBOPS_NODES": ",".join(nodes),
        "HUBOPS_HUB_PORTS": str(p.hub.https_port),
        "HUBOPS_EGRESS": pol.egress,
        "HUBOPS_EGRESS_ALLOW": ",".join(pol.egress_allow),
        "HUBOPS_OVERLAY": p.network.subnet if pol.isolate_servers else "",
        "HUBOPS_OVERLAY_PORTS": f"{hubconfig.HUB_PORT},{hubconfig.PROXY_PORT}",
        "XTABLES_LOCKFILE": f"{AGENT_RUN}/xtables.lock",
    }


def _engine_socket(p: Loaded) -> str:
    sockets = {h.engine_socket for h in p.hosts.all}
    if len(sockets) > 1:
        raise ParameterError(
            f"{p.source}: hosts[].engine_socket: network.policy runs one agent per node as a global service, which "
            f"mounts the same socket path on every node, but the hosts give {', '.join(sorted(sockets))}; give every "
            "host the same engine_socket (real hosts have /var/run/docker.sock), or set network.policy.enabled: false")
    return sockets.pop()


def _mounts(p: Loaded) -> list[docker.types.Mount]:
    return [docker.types.Mount(AGENT_SOCKET, _engine_socket(p), type="bind", read_only=True),
            docker.types.Mount(AGENT_RUN, "/run", type="bind"),
            *([docker.types.Mount(AGENT_PROC, "/proc", type="bind", read_only=True)]
              if p.network.policy.isolate_servers else [])]


def _caps(p: Loaded) -> list[str]:
    return AGENT_CAPS if p.network.policy.isolate_servers else CAPS


def _spec_digest(ref: str, env: dict[str, str], mounts: list[docker.types.Mount], caps: list[str]) -> str:
    data = json.dumps({"image": ref, "env": env, "mounts": [dict(m) for m in mounts], "caps": caps}, sort_keys=True)
    return hashlib.sha256(data.encode()).hexdigest()[:16]


def find_service(p: Loaded, c: docker.DockerClient):
    name = service_name(p)
    with docker_op("list services", p.hub_host.name):
        return next((s for s in c.services.list(filters={"name": name}) if s.name == name), None)


def ensure_netpolicy(p: Loaded, clients: Clients, *, dry_run: bool = False) -> Result:
    """The agent image on every node and the agent service running with the parameters' policy;
    with network.policy.enabled false, the service and every rule removed."""
    r = Result("network policy", dry_run=dry_run)
    c = clients.manager
    name = service_name(p)
    svc = find_service(p, c)
    if svc is not None and not L.owned_by(svc.attrs["Spec"].get("Labels"), p.deployment):
        raise DockerOpError(f"service {name} exists but was not created by hubops for deployment {p.deployment}; "
                            "remove it yourself or choose another deployment name")
    if not p.network.policy.enabled:
        if svc is None:
            r.keep(f"service {name}", "network.policy.enabled is false: no rules on the nodes")
        else:
            r.change("remove", f"service {name}", "network.policy.enabled is false (each agent removes its rules)")
            if not dry_run:
                with docker_op(f"remove service {name}"):
                    svc.remove()
        r.facts["policy"] = "off: users' servers reach whatever the nodes route"
        return r

    _engine_socket(p)  # refused before anything is built
    source = images.builder(p, clients)
    if images.image_or_none(source, p.images.base) is None:
        if dry_run:
            return r.change("create", f"service {name}", "after 60-images has made the base image")
        raise DockerOpError(f"base image {p.images.base} is missing on the building engine: run 60-images first")
    built = images.ensure_image_built(source, KIND, images_dir=images.PROJECT_IMAGES, base=p.images.base,
                                      deployment=p.deployment, dry_run=dry_run)
    r.items += built.items
    ref = built.facts["ref"]
    if dry_run and built.changed:
        r.change("create", "agent image on every node", f"{ref} once built")
    else:
        delivered = images.ensure_images_on_nodes(clients.all(), [ref], source=source, dry_run=dry_run)
        r.items += delivered.items

    nodes = node_addresses(p, c)
    env = agent_env(p, nodes)
    mounts = _mounts(p)
    digest = _spec_digest(ref, env, mounts, _caps(p))
    r.facts.update({
        "service": name, "image": ref, "chains": chains(p),
        "blocked": ", ".join(p.network.policy.metadata_addresses) or "none",
        "nodes' addresses blocked": ", ".join(nodes) or "none",
        "overlay": (f"users' servers open connections only to the hub ({hubconfig.HUB_PORT}) and the proxy "
                    f"({hubconfig.PROXY_PORT})" if p.network.policy.isolate_servers else "not filtered"),
        "egress": p.network.policy.egress + (f" (allowed: {', '.join(p.network.policy.egress_allow)})"
                                              if p.network.policy.egress == "deny" else ""),
    })
    have = (svc.attrs["Spec"].get("Labels") or {}).get("hubops.spec-digest") if svc is not None else None
    if have == digest:
        r.keep(f"service {name}", "global, one agent per node, same image and policy")
        return r
    r.change("create" if svc is None else "update", f"service {name}",
             f"global, host network, {'+'.join(_caps(p))}: " + ("starts an agent on every node" if svc is None
                                                           else "the policy or image changed"))
    if dry_run:
        return r
    kwargs: dict[str, Any] = dict(
        image=ref, args=["run"], name=name, mode=docker.types.ServiceMode("global"),
        env=[f"{k}={v}" for k, v in env.items()], mounts=mounts, networks=["host"],
        cap_add=_caps(p), cap_drop=["ALL"],
        labels={**L.labels(p.deployment, STAGE, role=ROLE), "hubops.spec-digest": digest},
        container_labels=L.labels(p.deployment, STAGE, role=ROLE),
        restart_policy=docker.types.RestartPolicy(condition="any", delay=2_000_000_000),
        stop_grace_period=10_000_000_000,
        log_driver="json-file", log_driver_options={"max-size": "1m", "max-file": "2"},
    )
    with docker_op(f"{'create' if svc is None else 'update'} service {name}", p.hub_host.name):
        if svc is None:
            c.services.create(**kwargs)
        else:
            svc.reload()
            kwargs.pop("mode")
            svc.update(**kwargs)
    return r


# -- reading and removing the rules on each node (short-lived containers) ---------------------
def _on_node(p: Loaded, hc: docker.DockerClient, node: str, ref: str, command: str) -> dict:
    """Run the agent image once on `node`'s network namespace with `command` (show, remove)."""
    with docker_op(f"{command} network-policy rules", node):
        out = hc.containers.run(
            ref, [command], network_mode="host", cap_drop=["ALL"], cap_add=CAPS, remove=True,
            environment={"HUBOPS_DEPLOYMENT": p.deployment, "XTABLES_LOCKFILE": f"{AGENT_RUN}/xtables.lock"},
            mounts=[docker.types.Mount(AGENT_RUN, "/run", type="bind")],
            labels=L.labels(p.deployment, STAGE, role="netpolicy-probe"), stdout=True, stderr=False)
    return json.loads(out.decode().strip().splitlines()[-1])


def _each_node(p: Loaded, clients: Clients, command: str) -> dict[str, dict]:
    ref = image_ref(p, images.builder(p, clients))

    def one(host) -> tuple[str, dict]:
        if not clients.answers(host.name):
            return host.name, {"error": "engine does not answer"}
        hc = clients[host.name]
        if ref is None or images.image_or_none(hc, ref) is None:
            return host.name, {"error": "no agent image on the node (65-netpolicy not run)"}
        try:
            return host.name, _on_node(p, hc, host.name, ref, command)
        except (DockerOpError, ValueError, IndexError) as e:
            return host.name, {"error": str(e)[:300]}

    with ThreadPoolExecutor(max_workers=max(1, min(4, len(p.hosts.all))), thread_name_prefix="hubops-netpolicy") as pool:
        return dict(pool.map(one, p.hosts.all))


def node_rules(p: Loaded, clients: Clients) -> dict[str, dict]:
    """{node: {"backends": {"nft"|"legacy": [rule lines]}, "docker_user": [...]}} or {"error": ...}:
    the deployment's rules as each node's iptables lists them."""
    return _each_node(p, clients, "show")


def describe(p: Loaded, clients: Clients) -> list[dict[str, Any]]:
    """One row per node for `ops status`: the agent's task and the rules found on the node."""
    rows = []
    svc = find_service(p, clients.manager)
    tasks: dict[str, str] = {}
    if svc is not None:
        # The newest task on each node (an updated service has a shut-down one beside it for a while).
        for t in sorted(svc.tasks(), key=lambda t: t.get("CreatedAt", "")):
            tasks[t.get("NodeID", "")] = t["Status"]["State"]
    node_ids = _node_ids(p, clients)
    for node, got in node_rules(p, clients).items():
        state = tasks.get(node_ids.get(node, ""), "no task") if svc is not None else "no service"
        if "error" in got:
            rows.append({"node": node, "agent": state, "rules": got["error"], "users' servers covered": ""})
            continue
        lines = [ln for b in got.get("backends", {}).values() for ln in b]
        users = sorted({ln.split("user-server ", 1)[1].split(" ", 1)[0] for ln in lines if "user-server " in ln})
        rows.append({"node": node, "agent": state,
                     "rules": f"{len(lines)} ({', '.join(got.get('backends', {})) or 'none'})",
                     "users' servers covered": str(len(users))})
    return rows


def _node_ids(p: Loaded, clients: Clients) -> dict[str, str]:
    """hubops's host name -> swarm node ID, through the engines' own info."""
    out = {}
    for h in p.hosts.all:
        try:
            if clients.answers(h.name):
                out[h.name] = clients[h.name].info()["Swarm"].get("NodeID", "")
        except Exception:  # noqa: BLE001 - shown as "no task"
            pass
    return out


def remove_rules(p: Loaded, clients: Clients, *, dry_run: bool = False) -> Result:
    """Any rule or chain of the deployment left on a node (an agent killed before it could clean up).
    Nodes with nothing left (or without the agent's image: the policy never ran there) add no line."""
    r = Result("network policy rules", dry_run=dry_run)
    command = "show" if dry_run else "remove"
    for node, got in _each_node(p, clients, command).items():
        if "error" in got:
            if not got["error"].startswith("no agent image"):
                r.keep(f"network-policy rules on {node}", f"not checked: {got['error']}")
        elif dry_run:
            n = sum(len(v) for v in got.get("backends", {}).values())
            if n:
                r.change("remove", f"{n} iptables rule(s) on {node}", "hubops:" + p.deployment)
        elif got.get("removed"):
            r.change("remove", f"{len(got['removed'])} iptables rule(s) or chain(s) on {node}",
                     "left behind by an agent that did not stop cleanly")
    return r
