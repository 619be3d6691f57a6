"""ops/prune-images: the original guide's "Image cleanup" TODO. Every change of a build context
makes a new `hubops-KIND:DIGEST` on every node, and every build leaves its builder stage behind;
without pruning they fill the nodes' disks. Removes old versions and builder leftovers from every
node; keeps what services, rollbacks and containers need and every image hubops did not label.
"""
from __future__ import annotations

import collections
import logging

import docker
import docker.errors

from hubops.core.engine import docker_op
from hubops.core.errors import DockerOpError, ParameterError, ImageNotBuilt
from hubops.core.labels import MANAGED
from hubops.core.result import Result

log = logging.getLogger("hubops")


from hubops.stages.images import KINDS, builder, desired_refs


BUILD_STAGE = "hubops.build-stage"


KIND_LABEL = "hubops.image-kind"


def _images_in_use(p, clients) -> tuple[set[str], dict[str, set[str]]]:
    """(image references of every service in the swarm, current and previous spec, of any
    deployment), and per node the IDs of images any container there (running or not) was made from."""
    refs: set[str] = set()
    manager = clients.manager
    with docker_op("read the swarm", p.hub_host.name):
        in_swarm = (manager.info().get("Swarm") or {}).get("ControlAvailable")
        services = manager.services.list() if in_swarm else []
    for s in services:
        for spec in (s.attrs.get("Spec") or {}, s.attrs.get("PreviousSpec") or {}):
            ref = ((spec.get("TaskTemplate") or {}).get("ContainerSpec") or {}).get("Image")
            if ref:
                refs.add(ref.split("@", 1)[0])
    by_node: dict[str, set[str]] = {}
    for host in p.hosts.all:
        with docker_op("list containers", host.name):
            by_node[host.name] = {c.attrs.get("Image") for c in clients[host.name].containers.list(all=True)}
    return refs, by_node


def prune_images(p, clients, *, keep: int = 1, dry_run: bool = False) -> Result:
    """Remove old versions of the hub and single-user images from every node, and the builder
    stages builds leave behind, keeping what anything may still need.

    Kept on each node: the images the current build contexts give (this deployment's), any image
    a service in the swarm uses or used before its last update (rollback needs it, whatever its
    deployment), any image a container on the node was made from, and the `keep` newest other
    versions of each kind (for `upgrade`'s rollback by hand). Builder stages: the `keep` + 1 newest
    of each kind are kept as build cache. Images without hubops's labels are never touched."""
    if keep < 0:
        raise ParameterError(f"keep: {keep} is negative; give 0 (only what is in use) or more")
    r = Result("prune images", dry_run=dry_run)
    try:
        desired = set(desired_refs(p, builder(p, clients)).values())
    except ImageNotBuilt as e:  # no base image: no current build to protect beyond what is in use
        desired = set()
        r.keep("current build", f"not known ({e})")
    service_refs, containers = _images_in_use(p, clients)
    for host in p.hosts.all:
        hc = clients[host.name]
        with docker_op("list images", host.name):
            imgs = hc.images.list(all=True, filters={"label": [f"{MANAGED}=true"]})
        finals: dict[str, list] = collections.defaultdict(list)
        stages: dict[str, list] = collections.defaultdict(list)
        for img in imgs:
            labels_ = img.labels or {}
            kind = labels_.get(KIND_LABEL)
            if kind not in KINDS:
                continue
            (stages if labels_.get(BUILD_STAGE) == "builder" else finals)[kind].append(img)
        for kind in KINDS:
            spare = keep
            for img in sorted(finals[kind], key=lambda i: i.attrs.get("Created", ""), reverse=True):
                name = ", ".join(img.tags) or img.short_id
                why = ("the current build" if desired & set(img.tags) else
                       "a service uses it (or did before its last update)" if service_refs & set(img.tags) else
                       "a container on this node was made from it" if img.id in containers[host.name] else None)
                if why is None and spare > 0:
                    spare -= 1
                    why = f"one of the {keep} newest other versions kept (keep={keep})"
                if why:
                    r.keep(f"{name} on {host.name}", why)
                    continue
                r.change("remove", f"image {name} on {host.name}", _size(img))
                if not dry_run:
                    _remove_image(hc, img, host.name)
            ordered = sorted(stages[kind], key=lambda i: i.attrs.get("Created", ""), reverse=True)
            for n, img in enumerate(ordered):
                if n < keep + 1 or img.id in containers[host.name]:
                    r.keep(f"{kind} builder stage {img.short_id} on {host.name}", "kept as build cache")
                    continue
                r.change("remove", f"{kind} builder stage {img.short_id} on {host.name}", _size(img))
                if not dry_run:
                    _remove_image(hc, img, host.name)
    return r


def _size(img) -> str:
    return f"{(img.attrs.get('Size') or 0) / 1e6:.0f} MB"


def _remove_image(client: docker.DockerClient, img, node: str) -> None:
    """Remove an image (each of its tags, then it); one that became used meanwhile is left, with a warning."""
    try:
        with docker_op(f"remove image {', '.join(img.tags) or img.short_id}", node):
            for tag in img.tags or [img.id]:
                client.images.remove(tag, force=False, noprune=False)
    except DockerOpError as e:
        if "no such image" in str(e).lower():
            return
        if "conflict" in str(e).lower() or "being used" in str(e).lower():
            log.warning("image %s on %s is in use now; left in place", img.short_id, node)
        else:
            raise
