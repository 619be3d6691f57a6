"""Swarm secrets and configs with versioned names.

Swarm secrets and configs are immutable. Each gets a name ``PREFIX-ROLE-DIGEST`` (a digest of
its content) and a ``hubops.role`` label. A stage creates the version it needs; deploy points
the hub service at the newest version of each role, then removes versions no service uses.
The same pattern serves rotation, renewal and userlist changes.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import secrets as _random
from typing import Literal

import docker
import docker.errors

from hubops.core import labels as L
from hubops.core.engine import docker_op
from hubops.core.errors import ConflictError, DockerOpError
from hubops.core.params import Loaded
from hubops.core.result import Result

log = logging.getLogger("hubops")
Kind = Literal["secret", "config"]


def _coll(client: docker.DockerClient, kind: Kind):
    return client.secrets if kind == "secret" else client.configs


VERSION_KEY = "version-key"  # operator-folder file: the deployment's random key for version names


def version_key(p: Loaded, *, create: bool = True) -> bytes:
    """The deployment's random key for version names, kept in the operator folder (0600).

    Made on first use. Without it (a plan before the first deploy, `create=False`), a throwaway key:
    every version then counts as new, as it will be once the key exists."""
    from . import operator

    kept = operator.read(p, VERSION_KEY)
    if kept and kept.strip():
        return kept.strip()
    if not create:
        return _random.token_hex(32).encode()
    value, _ = operator.kept_secret(p, VERSION_KEY)
    return value.encode()


def versioned_name(p: Loaded, role: str, value: bytes, *, create_key: bool = True) -> str:
    """`PREFIX-ROLE-DIGEST`, the digest an HMAC of the value under the deployment's random key
    (operator folder): names tell versions apart, but someone who sees `docker secret ls` cannot
    check a guess of a value offline (a bare hash would let them, for operator-chosen secrets).
    Deployments whose names were bare hashes (hubops before this key) get new names once, on the
    next deploy, and the old versions are pruned as unused."""
    digest = hmac.new(version_key(p, create=create_key), role.encode() + b"\0" + value,
                      hashlib.sha256).hexdigest()[:12]
    return f"{p.prefix}-{role}-{digest}"


def versions(client: docker.DockerClient, p: Loaded, role: str, kind: Kind = "secret") -> list:
    """Every version of a role hubops made for this deployment, newest first."""
    try:
        with docker_op(f"list {kind}s of role {role}"):
            objs = _coll(client, kind).list(filters={"label": [*L.selector(p.deployment), f"{L.ROLE}={role}"]})
    except DockerOpError as e:
        if _not_in_swarm(e):  # a plan before 20-swarm has run: nothing exists yet
            return []
        raise
    return sorted(objs, key=lambda o: o.attrs.get("CreatedAt", ""), reverse=True)


def current(client: docker.DockerClient, p: Loaded, role: str, kind: Kind = "secret"):
    """The newest version of a role, or None."""
    found = versions(client, p, role, kind)
    return found[0] if found else None


def _not_in_swarm(e: Exception) -> bool:
    cause = e.__cause__
    return isinstance(cause, docker.errors.APIError) and cause.status_code == 503


def _exact(client: docker.DockerClient, kind: Kind, name: str):
    try:
        with docker_op(f"look up {kind} {name}"):
            return next((o for o in _coll(client, kind).list(filters={"name": name}) if o.name == name), None)
    except DockerOpError as e:
        if _not_in_swarm(e):
            return None
        raise


def ensure_versioned(
    client: docker.DockerClient,
    p: Loaded,
    result: Result,
    *,
    role: str,
    value: bytes,
    stage: str,
    kind: Kind = "secret",
    what: str = "",
) -> str:
    """Make sure the version of `role` holding `value` exists and is the newest; return its name.

    The value itself never reaches the result, the log or the labels.
    """
    name = versioned_name(p, role, value, create_key=not result.dry_run)
    found = _exact(client, kind, name)
    newest = current(client, p, role, kind)
    label = what or role
    if found is not None:
        if not L.owned_by(found.attrs["Spec"].get("Labels"), p.deployment):
            raise ConflictError(
                f"{kind} {name} exists but was not created by hubops for deployment {p.deployment}; "
                f"remove or rename it, then run the stage again"
            )
        if newest is not None and newest.id != found.id:
            # An older version came back (e.g. a rollback of a file): make it the newest again.
            result.change("update", f"{kind} {name}", f"{label}: re-created as the newest version")
            if not result.dry_run:
                with docker_op(f"replace {kind} {name}"):
                    found.remove()
                    _create(client, kind, name, value, L.labels(p.deployment, stage, role=role))
            return name
        result.keep(f"{kind} {name}", f"{label}: current version unchanged")
        return name
    detail = f"{label}: new version" + (f" (replaces {newest.name})" if newest is not None else "")
    result.change("create", f"{kind} {name}", detail)
    if not result.dry_run:
        _create(client, kind, name, value, L.labels(p.deployment, stage, role=role))
    return name


def _create(client: docker.DockerClient, kind: Kind, name: str, value: bytes, lbls: dict) -> None:
    with docker_op(f"create {kind} {name}"):
        _coll(client, kind).create(name=name, data=value, labels=lbls)
    log.info("created %s %s", kind, name)


def ensure_generated(
    client: docker.DockerClient, p: Loaded, result: Result, *, role: str, stage: str, nbytes: int = 32,
    hex_value: bool = False,
) -> str:
    """A secret hubops generates and nobody needs to read back (cookie secret, proxy token, ...).

    Kept as long as a version exists; generated straight into Swarm otherwise.
    """
    from . import operator

    found = current(client, p, role)
    known = operator.read(p, generated_file(role))
    if found is not None and known:
        result.keep(f"secret {found.name}", f"{role}: generated earlier, kept")
        return found.name
    # A copy goes into the operator folder (0600) before the Swarm secret exists, so the redactor
    # always knows the value (known_secrets reads that folder). A version made by an older hubops,
    # whose value was never kept, is replaced once: a value nobody here knows cannot be redacted.
    value = (_random.token_hex(nbytes) if hex_value else _random.token_urlsafe(nbytes)).encode()
    why = f"{role} (generated)" if found is None else f"{role} (generated again: the earlier value was not known to the redactor)"
    if not result.dry_run:
        operator.write_private(operator.folder(p) / generated_file(role), value + b"\n")
    return ensure_versioned(client, p, result, role=role, value=value, stage=stage, what=why)


def generated_file(role: str) -> str:
    """The operator-folder file that keeps a generated secret's value, for redaction."""
    return f"generated-{role}"


# Roles kept in Swarm although no service mounts them (only their newest version is kept):
# the ACME account key is read by hubops itself when it renews.
UNMOUNTED_ROLES = ("acme-account-key",)


def prune_unused(client: docker.DockerClient, p: Loaded, result: Result, *, keep: set[str]) -> None:
    """Remove this deployment's old secret and config versions that no service references."""
    with docker_op("list services"):
        services = client.services.list()
    used: set[str] = set(keep)
    for role in UNMOUNTED_ROLES:
        newest = current(client, p, role)
        if newest is not None:
            used.add(newest.name)
    for s in services:
        cs = s.attrs["Spec"]["TaskTemplate"].get("ContainerSpec", {})
        used |= {r["SecretName"] for r in cs.get("Secrets") or []}
        used |= {r["ConfigName"] for r in cs.get("Configs") or []}
    for kind in ("secret", "config"):
        with docker_op(f"list {kind}s"):
            objs = _coll(client, kind).list(filters={"label": L.selector(p.deployment)})
        for o in objs:
            if o.name in used:
                continue
            result.change("remove", f"{kind} {o.name}", "old version, no longer used")
            if not result.dry_run:
                with docker_op(f"remove {kind} {o.name}"):
                    o.remove()
