"""Parameters for shared data (`shared_data:`): read-only data sets mounted into users' servers, and
read-write folders shared by the members of a group.

Each comes from a shared path (a directory every node mounts at the same place: NFS, a cluster
filesystem) or from a volume driver (a named volume the driver makes on each node from the same
options). Checked with the rest of the parameters (`params.load_params`); whether a data set's path
exists on every node is checked at preflight (`stages/shared_data.py`), where the engines answer.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

if TYPE_CHECKING:
    from .params import Loaded

DATA_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")
# Group IDs below this are the system's (root, users, staff, ...); a shared folder needs a group of its own.
MIN_GID = 1000
MAX_GID = 2**31 - 2


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _abs_dir(v: Optional[Path], example: str) -> Optional[Path]:
    if v is not None and (not v.is_absolute() or v == Path("/") or ".." in v.parts):
        raise ValueError(f"{str(v)!r}: give an absolute directory other than /, e.g. {example}")
    return v


def _target(v: Optional[str], example: str) -> Optional[str]:
    if v is not None and (not v.startswith("/") or v == "/" or ".." in v.split("/")
                          or re.search(r"[\s:,]", v)):
        raise ValueError(f"{v!r}: give an absolute path in the container without spaces, ':' or ',', e.g. {example}")
    return v.rstrip("/") if v else v


class _Source(_Model):
    path: Optional[Path] = Field(None, description="a directory mounted at this same path on every node")
    driver: Optional[str] = Field(None, description="or: a volume driver (e.g. local with NFS options)")
    driver_opts: dict[str, str] = Field(default_factory=dict, description="the volume driver's options")

    @model_validator(mode="after")
    def _one_source(self):
        if (self.path is None) == (self.driver is None):
            raise ValueError("give exactly one source: path (a directory every node mounts at that path) or "
                             "driver (a volume driver, with driver_opts)")
        if self.driver_opts and not self.driver:
            raise ValueError("driver_opts need driver: NAME")
        return self


class Dataset(_Source):
    """A read-only data set."""

    name: str = Field(description="short name: the volume is PREFIX-data-NAME, the default target /data/NAME")
    target: Optional[str] = Field(None, description="where it appears in the server (default /data/NAME)")
    groups: list[str] = Field(default_factory=list,
                              description="only the servers of these groups' members (default: every server)")
    on_request: bool = Field(False, description="mounted only where a profile asks for it by name "
                             "(HubopsSpawner.requested_datasets), not by default")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not DATA_NAME_RE.match(v):
            raise ValueError(f"{v!r}: a data set's name is 1-32 lower-case letters, digits and '-'")
        return v

    @field_validator("path")
    @classmethod
    def _path(cls, v: Optional[Path]) -> Optional[Path]:
        return _abs_dir(v, "/srv/data/census")

    @field_validator("target")
    @classmethod
    def _target(cls, v: Optional[str]) -> Optional[str]:
        return _target(v, "/data/census")

    @property
    def mount_target(self) -> str:
        return self.target or f"/data/{self.name}"


class GroupFolder(_Source):
    """A folder the members of one group read and write, and nobody else: owned by root and the group
    `gid`, mode 2770 (setgid: what members make there belongs to the group); members' servers get
    `gid` as a supplementary group."""

    group: str = Field(description="the group (userlist '@group' word, or the identity provider's group)")
    gid: int = Field(description=f"the group's numeric ID on the storage ({MIN_GID} or more; the same on every node)")
    target: Optional[str] = Field(None, description="where it appears in members' servers (default /shared/GROUP)")

    @field_validator("group")
    @classmethod
    def _group(cls, v: str) -> str:
        from .params import GROUP_RE

        if not GROUP_RE.match(v):
            raise ValueError(f"{v!r} is not a valid group name (letters, digits, '.', '_', '-'; 64 at most)")
        return v

    @field_validator("gid")
    @classmethod
    def _gid(cls, v: int) -> int:
        if not MIN_GID <= v <= MAX_GID:
            raise ValueError(f"{v}: give a group ID of {MIN_GID} or more, used by no other group on the storage "
                             "(IDs below are the system's: root, users, staff, ...)")
        return v

    @field_validator("path")
    @classmethod
    def _path(cls, v: Optional[Path]) -> Optional[Path]:
        return _abs_dir(v, "/srv/hubops-shared/physics")

    @field_validator("target")
    @classmethod
    def _target(cls, v: Optional[str]) -> Optional[str]:
        return _target(v, "/shared/physics")

    @property
    def mount_target(self) -> str:
        return self.target or f"/shared/{self.group}"


class SharedData(_Model):
    datasets: list[Dataset] = Field(default_factory=list, description="read-only data sets")
    group_folders: list[GroupFolder] = Field(default_factory=list, description="read-write folders, one per group")

    @model_validator(mode="after")
    def _unique(self) -> "SharedData":
        names = [d.name for d in self.datasets]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"datasets: the name {twice[0]!r} is given twice; every data set needs its own")
        groups = [g.group for g in self.group_folders]
        twice = sorted({g for g in groups if groups.count(g) > 1})
        if twice:
            raise ValueError(f"group_folders: group {twice[0]!r} has two folders; give each group one")
        gids: dict[int, str] = {}
        for g in self.group_folders:
            if g.gid in gids:
                raise ValueError(f"group_folders: groups {gids[g.gid]!r} and {g.group!r} have the same gid {g.gid}: "
                                 "each would write into the other's folder; give each group its own gid")
            gids[g.gid] = g.group
        return self


def _inside(a: str, b: str) -> bool:
    """Whether path a is b or inside b."""
    a, b = a.rstrip("/") + "/", b.rstrip("/") + "/"
    return a.startswith(b)


def check(p: "Loaded") -> list[str]:
    """What the types cannot see: groups with no member, folders inside users' homes, targets that
    collide, a gid every server has. Each problem as 'key.path: what is wrong; what to do'."""
    sd = p.shared_data
    us = p.storage.users
    out: list[str] = []
    targets: list[tuple[str, str]] = [("storage.users.target", us.target)]
    homes = us.shared_path if us.mode == "shared-path" else None
    for kind, items in (("datasets", sd.datasets), ("group_folders", sd.group_folders)):
        for i, d in enumerate(items):
            key = f"shared_data.{kind}[{i}]"
            groups = d.groups if kind == "datasets" else [d.group]
            for g in groups:
                if not p.auth.provider_groups and g not in p.groups:
                    out.append(f"{key}: group {g!r} has no member in the userlist {p.path(p.auth.userlist)} and "
                               f"auth.mode {p.auth.mode!r} gets no groups from a provider: nobody would get it; "
                               f"add '@{g}' to its members' lines, or remove it")
            if d.path is not None and homes is not None and (_inside(str(d.path), homes) or _inside(homes, str(d.path))):
                out.append(f"{key}.path: {d.path} overlaps storage.users.path {homes}, where users' homes are: "
                           "every user could reach it through their own home (or it would expose their homes); "
                           "give it a directory outside the homes")
            if d.path is not None and p.storage.hub.path is not None and (
                    _inside(str(d.path), str(p.storage.hub.path)) or _inside(str(p.storage.hub.path), str(d.path))):
                out.append(f"{key}.path: {d.path} overlaps storage.hub.path {p.storage.hub.path}, the hub's database; "
                           "give it a directory of its own")
            if kind == "group_folders" and d.gid == us.gid:
                out.append(f"{key}.gid: {d.gid} is storage.users.gid, every server's own group: everyone could "
                           "write there; give the group its own gid")
            if any("{username}" in v for v in d.driver_opts.values()):
                out.append(f"{key}.driver_opts: {{username}} has no meaning here: shared data is the same for "
                           "every user who gets it; remove it")
            t = d.mount_target
            for other_key, other in targets:
                if _inside(t, other) or _inside(other, t):
                    out.append(f"{key}.target: {t} overlaps {other_key} {other}: one mount would hide the other; "
                               "give it a path of its own, e.g. under /data or /shared")
                    break
            targets.append((f"{key}.target", t))
    return out
