"""Upgrade the hub to a new image, with a database backup first and Swarm's automatic rollback.

The new image is one of: an image reference (`image`), a build of images/hub with another
JupyterHub version pinned (`jupyterhub_version`), or, by default, the build of images/hub as it
is now (after you changed images/hub/requirements.txt). The hub service is updated with
stop-first order (one hub owns the SQLite database); Swarm watches the new task (healthcheck,
monitor period) and, when it fails, rolls the service back to the previous image by itself
(`update_config.failure_action=rollback`, set by 80-deploy). This waits for Swarm's verdict,
checks that the hub serves on whichever image it ended on, and says which it was.

An `image` must hold hubops's spawner (hubops/inhub, which the generated jupyterhub_config.py
imports): build it FROM a hubops-hub image, or from images/hub with hubops; a hub image built by
an older hubops, before the spawner was a module, is refused before anything changes.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from hubops.ops import backup as _backup
from hubops.hub import running, schema
from hubops.stages import deploy, images
from hubops.stages.pinned import pin_jupyterhub
from hubops.core import progress, secrets
from hubops.core.engine import Clients
from hubops.core.errors import DockerOpError, HubopsError, ImageNotBuilt, ParameterError, VerifyError
from hubops.core.params import Loaded
from hubops.core.result import Result

log = logging.getLogger("hubops")
def _build_variant(p: Loaded, clients: Clients, version: str, dry_run: bool) -> Result:
    """The hub image built from images/hub with jupyterhub==`version` (a temporary copy of the context)."""
    src = images.images_dir(p) / "hub"
    with tempfile.TemporaryDirectory(prefix="hubops-hub-variant-") as tmp:
        shutil.copytree(src, Path(tmp) / "hub")
        req = Path(tmp) / "hub" / "requirements.txt"
        req.write_text(pin_jupyterhub(req.read_text(), version))
        r = images.ensure_image_built(images.builder(p, clients), "hub", images_dir=tmp, base=p.images.base,
                                      extra_ca_bundle=images.extra_ca(p), deployment=p.deployment, dry_run=dry_run)
    r.step = f"hub image with JupyterHub {version}"
    return r


def _source_of(p: Loaded, clients: Clients, ref: str):
    """The engine that has image `ref`: the building engine, else the hub's node."""
    for c in (images.builder(p, clients), clients[p.hub_host.name]):
        if images.image_or_none(c, ref) is not None:
            return c
    raise HubopsError(f"image {ref} is on neither the building engine nor {p.hub_host.name}; build or load it "
                      "there first (no registry is used)")


def target_image(p: Loaded, clients: Clients, *, image: str = "", jupyterhub_version: str = "",
                 dry_run: bool = False) -> tuple[str, Result]:
    """The image to roll out, built and delivered to the nodes the hub may run on if needed (its
    node, or every manager when storage.hub is shared; workers never run the hub)."""
    if image and jupyterhub_version:
        raise ParameterError("give either `image` or `jupyterhub_version`, not both")
    if jupyterhub_version:
        r = _build_variant(p, clients, jupyterhub_version, dry_run)
        ref = r.facts["ref"]
    elif image:
        ref = image
        r = Result("new hub image", dry_run=dry_run).check(ref, "given as the runbook's `image`")
    else:
        r = images.ensure_built(p, clients, "hub", dry_run=dry_run)
        ref = r.facts.get("ref") or "hubops-hub:<to be built>"
    if dry_run and images.image_or_none(images.builder(p, clients), ref) is None:
        return ref, r
    # Where the hub may run: its node, or every manager when its database is on shared storage.
    nodes = [h.name for h in p.hosts.managers] if p.hub_can_move else [p.hub_host.name]
    delivered = images.ensure_images_on_nodes({n: clients[n] for n in nodes}, [ref], source=_source_of(p, clients, ref),
                                              dry_run=dry_run)
    r.items += delivered.items
    return ref, r


def wait_for_verdict(p: Loaded, clients: Clients, *, before: Any, timeout: float) -> tuple[str, dict, float]:
    """Wait until Swarm has judged the update that started after `before` (the service's
    UpdateStatus.StartedAt before it): "completed", "rolled back", or a paused state."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        svc = running.find_service(clients.manager, p)
        status = (svc.attrs.get("UpdateStatus") or {}) if svc else {}
        if status.get("StartedAt") and status.get("StartedAt") != before:
            state = status.get("State", "")
            if state == "completed":
                return "completed", status, time.monotonic() - t0
            if state == "rollback_completed":
                return "rolled back", status, time.monotonic() - t0
            if state in ("paused", "rollback_paused"):
                return state.replace("_", " "), status, time.monotonic() - t0
        time.sleep(1)
    raise DockerOpError(f"service {p.hub_service}: Swarm gave no verdict on the update within {timeout:.0f} s; "
                        f"see `docker service inspect {p.hub_service} --format '{{{{json .UpdateStatus}}}}'` and "
                        f"`docker service ps {p.hub_service} --no-trunc`")


def _failed_tasks(svc, image: str) -> list[dict[str, Any]]:
    """The tasks of `image` that did not stay up, with what Swarm says about them."""
    rows = []
    for t in sorted(svc.tasks(), key=lambda t: t.get("CreatedAt", "")):
        if t["Spec"]["ContainerSpec"]["Image"].split("@")[0] != image:
            continue
        st = t["Status"]
        exit_code = (st.get("ContainerStatus") or {}).get("ExitCode")
        if st.get("State") in ("shutdown", "complete") and not st.get("Err") and not exit_code:
            continue  # stopped by Swarm (the rollback), not failed
        rows.append({"task": t["ID"][:12], "state": st.get("State"), "exit": exit_code,
                     "error": st.get("Err") or st.get("Message") or ""})
    return rows


def _hub_version(p: Loaded) -> str:
    return running.HubAPI(p).request("GET", "/hub/api/").json().get("version", "?")


def upgrade(p: Loaded, clients: Clients, *, image: str = "", jupyterhub_version: str = "",
            backup_first: bool = True, dry_run: bool = False) -> list[Result]:
    """Roll the hub service to a new image: backup, update, Swarm's verdict, health, record.

    Changes on the cluster: the new image on the nodes the hub may run on (never workers); the
    hub restarts on it (stop-first: the hub is down for the restart; users' servers keep running);
    if it fails its healthcheck, Swarm puts the previous image back. Users' data and the database
    are untouched. The verdict is in the facts: "upgraded" or "rolled back" (`hubops ops upgrade`
    exits 3 for the latter)."""
    c = clients.manager
    svc = running.hub_service(p, clients)
    current = running.service_image(svc)
    target, built = target_image(p, clients, image=image, jupyterhub_version=jupyterhub_version, dry_run=dry_run)
    results = [built]
    up = Result("upgrade", dry_run=dry_run)
    up.facts.update({"from_image": current, "to_image": target})
    if target == current:
        up.keep(f"service {p.hub_service}", f"already runs {target}")
        up.facts["verdict"] = "unchanged"
        return results + [up]
    # The database's schema against the new image's JupyterHub, before anything changes: a downgrade
    # across a migration is refused here; a migration takes its own path (hub stopped, upgrade-db).
    sch = None if dry_run and images.image_or_none(clients[schema.data_node(p, clients)], target) is None \
        else schema.read(p, clients, target)
    if sch is not None:
        up.facts.update({"schema_from": sch.db, "schema_to": sch.head, "to_jupyterhub": sch.jupyterhub,
                         "schema_plan": sch.plan})
        schema.require_spawner(p, sch)
        if sch.plan == "downgrade":
            raise schema.DowngradeRefused(schema.downgrade_message(p, sch, running_image=current))
        if sch.plan == "migrate":
            from hubops.ops.upgrade_migrate import upgrade_with_migration

            return results + upgrade_with_migration(p, clients, svc, current=current, target=target, sch=sch, up=up,
                                                    backup_first=backup_first, dry_run=dry_run)
    if backup_first:
        results.append(_backup.backup(p, clients, reason=f"before upgrading {current} to {target}", dry_run=dry_run))
    try:
        up.facts["from_version"] = _hub_version(p)
    except VerifyError as e:
        up.facts["from_version"] = f"unknown (hub not answering: {e.__class__.__name__})"
    results.append(up)
    if dry_run:
        up.change("update", f"service {p.hub_service}", f"image {current} -> {target}; Swarm rolls back if it fails")
        return results
    before = (svc.attrs.get("UpdateStatus") or {}).get("StartedAt")
    t0 = time.monotonic()
    applied = deploy.ensure_hub(p, clients, hub_image=target, wait=False)
    up.items += [i for i in applied.items if i.target == f"service {p.hub_service}"]
    timeout = p.hub.start_timeout + 180
    with progress.step(f"wait for Swarm's verdict on {p.hub_service}", total=timeout, unit="s"):
        verdict, status, waited = wait_for_verdict(p, clients, before=before, timeout=timeout)
    svc = running.find_service(c, p)
    now = running.service_image(svc)
    up.facts.update({"verdict": "upgraded" if verdict == "completed" else verdict, "swarm_said": status.get("Message", ""), "verdict_after_s": round(waited, 1)})
    if verdict not in ("completed", "rolled back"):
        raise DockerOpError(f"service {p.hub_service}: the update is {verdict} ({status.get('Message', '')}); "
                            f"resume it with `docker service update --rollback {p.hub_service}` or run upgrade again")
    answered = running.wait_until_serving(p, clients, changed=False)
    version = _hub_version(p)
    up.facts.update({"serving_image": now, "serving_version": version,
                     "hub_back_after_s": round(time.monotonic() - t0, 1)})
    if verdict == "completed":
        if now != target:
            raise DockerOpError(f"Swarm says the update completed but {p.hub_service} runs {now}, not {target}")
        up.check(f"{p.hub_url}/hub/health", f"JupyterHub {version} serves on {target} ({answered} s after it was ready)")
        secrets.prune_unused(c, p, up, keep=set())
        desired = _desired_hub(p, clients)
        if desired and desired != target:
            up.facts["note"] = (f"the next `hubops deploy` puts back {desired} (the build of images/hub); to keep "
                                f"{target}, change images/hub (e.g. pin jupyterhub==VERSION) and upgrade without parameters")
            if jupyterhub_version:
                up.facts["note"] = (f"the next `hubops deploy` builds images/hub with "
                                    f"{p.images.jupyterhub_version or 'its own jupyterhub pin'}; to keep JupyterHub "
                                    f"{jupyterhub_version}, set images.jupyterhub_version: {jupyterhub_version} in "
                                    f"{p.source}")
        return results
    failed = _failed_tasks(svc, target)
    up.facts["failed_tasks"] = failed
    why = "; ".join(sorted({f"{t['state']}" + (f" (exit {t['exit']})" if t["exit"] not in (None, 0) else "")
                            + (f": {t['error']}" if t["error"] else "") for t in failed})) or status.get("Message", "")
    if now != current:
        raise DockerOpError(f"Swarm rolled {p.hub_service} back, but it runs {now}, not the previous {current}")
    up.change("rollback", f"service {p.hub_service}",
              f"rolled back: {target} failed ({why}); Swarm put back {current}, which serves again (JupyterHub {version})")
    log.warning("upgrade of %s to %s rolled back: %s", p.hub_service, target, why)
    return results


def _desired_hub(p: Loaded, clients: Clients) -> str | None:
    try:
        return images.desired_refs(p, images.builder(p, clients))["hub"]
    except ImageNotBuilt:
        return None


def rolled_back(results: list[Result]) -> bool:
    """True when the upgrade ended on the previous image (for callers that want to stop there)."""
    return any(r.facts.get("verdict") == "rolled back" for r in results)

