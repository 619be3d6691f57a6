"""Spawn profiles (parameter `profiles:`): what users choose on the spawn page.

Each profile names an image (built from its own folder under images/, like the single-user image,
or an existing image reference), memory and CPU limits and reservations, placement (node labels),
optionally the groups that may use it and Swarm generic resources (GPUs: `{NVIDIA-GPU: 1}`).
With one profile or none there is no spawn page: everyone gets the one profile (or the spawner's
defaults), as before.

This module holds the parameter types and the checks that need no engine (check time); what needs
the nodes' resources (memory, CPUs, advertised generic resources) is checked by 00-preflight
(hubops.stages.profiles).
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

if TYPE_CHECKING:
    from .params import Loaded

PROFILE_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")
# A generic resource's kind as dockerd's --node-generic-resource KIND=VALUE takes it.
RESOURCE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
LABEL_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
IMAGE_FOLDER_PREFIX = "images/"
# The service label that records which profile a user's server runs (read by ops/status).
PROFILE_LABEL = "hubops.profile"


class Profile(BaseModel):
    """One choice on the spawn page."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="short name (lower-case letters, digits, '-'); recorded on the user's server")
    description: str = Field("", description="what users read on the spawn page")
    image: Optional[str] = Field(
        None, description="images/FOLDER: built by 60-images from that folder of images.dir (FROM the single-user "
        "image, given as build argument BASE); or an image reference the nodes already hold; default: the "
        "single-user image")
    mem_limit: Optional[str] = Field(None, description="memory limit, e.g. 4G (default: spawner.mem_limit)")
    cpu_limit: Optional[float] = Field(None, gt=0, description="CPUs (default: spawner.cpu_limit)")
    mem_guarantee: Optional[str] = Field(None, description="memory Swarm reserves (default: spawner.mem_guarantee)")
    cpu_guarantee: Optional[float] = Field(None, gt=0, description="CPUs Swarm reserves (default: spawner.cpu_guarantee)")
    placement: dict[str, str] = Field(
        default_factory=dict, description="node labels the server's node must carry (hosts[].labels), e.g. {gpu: 'yes'}")
    groups: list[str] = Field(default_factory=list, description="only members of these groups see it (default: everyone)")
    generic_resources: dict[str, int] = Field(
        default_factory=dict, description="Swarm generic resources reserved, e.g. {NVIDIA-GPU: 1}; only nodes that "
        "advertise a free one take the server")
    when_full: Literal["wait", "refuse"] = Field(
        "refuse", description="when no node has a free generic resource: refuse (the user is told at once; default) "
        "or wait (the server starts when one frees, within spawner.start_timeout)")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not PROFILE_NAME_RE.match(v):
            raise ValueError(f"{v!r}: a profile name is 1-32 lower-case letters, digits and '-', e.g. 'gpu-large'")
        return v

    @field_validator("image")
    @classmethod
    def _image(cls, v: Optional[str]) -> Optional[str]:
        if v is None:
            return v
        v = v.strip()
        if v.startswith(IMAGE_FOLDER_PREFIX):
            folder = v[len(IMAGE_FOLDER_PREFIX):].strip("/")
            if not re.match(r"^[a-z0-9][a-z0-9_.-]*$", folder) or folder in ("hub", "singleuser"):
                raise ValueError(f"{v!r}: give images/FOLDER with one folder name (lower-case letters, digits, "
                                 "'_', '.', '-'), not hub or singleuser (omit image for the single-user image)")
            return IMAGE_FOLDER_PREFIX + folder
        if not re.match(r"^[a-z0-9][a-z0-9._/:@-]*$", v) or len(v) > 255:
            raise ValueError(f"{v!r} is neither images/FOLDER nor an image reference such as "
                             "registry.example.org/lab/torch:2.3")
        return v

    @field_validator("placement")
    @classmethod
    def _placement(cls, v: dict[str, str]) -> dict[str, str]:
        for k, val in v.items():
            if not LABEL_KEY_RE.match(k):
                raise ValueError(f"{k!r} is not a node label name (letters, digits, '_', '.', '-')")
            if not isinstance(val, str) or not val or "\n" in val:
                raise ValueError(f"{k}: {val!r}: give the label's value as a string, e.g. {k}: 'yes'")
        return v

    @field_validator("generic_resources")
    @classmethod
    def _resources(cls, v: dict[str, int]) -> dict[str, int]:
        for k, n in v.items():
            if not RESOURCE_RE.match(k):
                raise ValueError(f"{k!r} is not a generic resource kind as dockerd advertises it "
                                 "(--node-generic-resource KIND=ID), e.g. NVIDIA-GPU")
            if n < 1:
                raise ValueError(f"{k}: {n}: ask for 1 or more")
        return v

    @field_validator("groups")
    @classmethod
    def _groups(cls, v: list[str]) -> list[str]:
        for g in v:
            if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", g):
                raise ValueError(f"{g!r} is not a group name (letters, digits, '.', '_', '-')")
        return v

    @property
    def image_folder(self) -> Optional[str]:
        """The folder under images.dir that 60-images builds this profile's image from, if any."""
        if self.image and self.image.startswith(IMAGE_FOLDER_PREFIX):
            return self.image[len(IMAGE_FOLDER_PREFIX):]
        return None

    @property
    def constraints(self) -> list[str]:
        return [f"node.labels.{k}=={v}" for k, v in sorted(self.placement.items())]


# --------------------------------------------------------------------------------------------
# check time (no engine): called by param_checks.check
# --------------------------------------------------------------------------------------------
def mem_bytes(v: str) -> Optional[float]:
    from .param_checks import MEM_RE, MEM_UNITS

    m = MEM_RE.match(str(v).strip())
    return float(m.group(1)) * MEM_UNITS[m.group(2)] if m else None


def limits(p: "Loaded", prof: Profile) -> dict:
    """The profile's limits and reservations, with the spawner's defaults where it gives none."""
    s = p.spawner
    return {"mem_limit": prof.mem_limit or s.mem_limit, "cpu_limit": prof.cpu_limit or s.cpu_limit,
            "mem_guarantee": prof.mem_guarantee or s.mem_guarantee,
            "cpu_guarantee": prof.cpu_guarantee or s.cpu_guarantee}


def eligible_hosts(p: "Loaded", prof: Profile) -> list:
    """The hosts whose labels (hosts[].labels) and role (spawner.placement) let them take the profile's servers."""
    hosts = p.hosts.workers if (p.spawner.placement == "workers" or (p.spawner.placement == "auto" and p.hosts.workers)) \
        else p.hosts.all
    return [h for h in hosts if all(h.labels.get(k) == v for k, v in prof.placement.items())]


def check(p: "Loaded") -> list[str]:
    """Profile mistakes found without an engine, each as 'profiles[i] (name).key: what; what to do'."""
    out: list[str] = []
    seen: set[str] = set()
    images_dir = p.path(p.images.dir) if p.images.dir else None
    if images_dir is None:
        from .paths import IMAGES as images_dir  # noqa: N811
    for i, prof in enumerate(p.profiles):
        key = f"profiles[{i}] ({prof.name})"
        if prof.name in seen:
            out.append(f"{key}.name: {prof.name!r} is given twice; every profile needs its own name")
        seen.add(prof.name)
        folder = prof.image_folder
        if folder is not None and not (images_dir / folder / "Dockerfile").is_file():
            out.append(f"{key}.image: {prof.image}: {images_dir / folder / 'Dockerfile'} does not exist; create the "
                       "folder with a Dockerfile (ARG BASE / FROM ${BASE}: the single-user image), or fix the name")
        lim = limits(p, prof)
        for k in ("mem_limit", "mem_guarantee"):
            if getattr(prof, k) is not None and mem_bytes(getattr(prof, k)) is None:
                out.append(f"{key}.{k}: {getattr(prof, k)!r} is not a size: a number and one of K, M, G, T, e.g. 4G")
        ml, mg = (mem_bytes(lim["mem_limit"]) if lim["mem_limit"] else None,
                  mem_bytes(lim["mem_guarantee"]) if lim["mem_guarantee"] else None)
        if ml is not None and mg is not None and mg > ml:
            out.append(f"{key}.mem_guarantee: {lim['mem_guarantee']} is more than its mem_limit {lim['mem_limit']}; "
                       "a reservation fits inside the limit")
        if lim["cpu_limit"] and lim["cpu_guarantee"] and lim["cpu_guarantee"] > lim["cpu_limit"]:
            out.append(f"{key}.cpu_guarantee: {lim['cpu_guarantee']} is more than its cpu_limit {lim['cpu_limit']}")
        if prof.placement and not eligible_hosts(p, prof):
            wanted = ", ".join(f"{k}={v}" for k, v in sorted(prof.placement.items()))
            have = "; ".join(f"{h.name}: {', '.join(f'{k}={v}' for k, v in sorted(h.labels.items())) or 'no labels'}"
                             for h in p.hosts.all)
            out.append(f"{key}.placement: no host carries {wanted} (hosts[].labels: {have}); add the label to the "
                       "host that should take these servers, or change the placement")
        if prof.groups and not p.auth.provider_groups:
            for g in prof.groups:
                if g not in p.groups:
                    out.append(f"{key}.groups: group {g!r} has no member in the userlist and auth.mode "
                               f"{p.auth.mode!r} gets no groups from a provider: nobody could choose this profile; "
                               f"add '@{g}' to its members' lines, or remove it")
    return out


def spawner_profiles(p: "Loaded", images: dict[str, str], singleuser_image: str) -> list[dict]:
    """The profiles as the spawner takes them (plain data for jupyterhub_config.py): `images` maps a
    profile's name to the image reference 60-images built for it."""
    out = []
    for prof in p.profiles:
        lim = limits(p, prof)
        image = images.get(prof.name) or (prof.image if prof.image and not prof.image_folder else singleuser_image)
        out.append({
            "name": prof.name, "description": prof.description, "image": image,
            **{k: v for k, v in lim.items() if v is not None},
            "constraints": prof.constraints, "groups": list(prof.groups),
            "generic_resources": dict(sorted(prof.generic_resources.items())), "when_full": prof.when_full,
        })
    return out
