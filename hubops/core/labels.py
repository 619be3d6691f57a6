"""Labels on every object hubops creates: hubops owns only what carries them."""
from __future__ import annotations

MANAGED = "hubops.managed"
STAGE = "hubops.stage"
DEPLOYMENT = "hubops.deployment"
ROLE = "hubops.role"


def labels(deployment: str, stage: str, **extra: str) -> dict[str, str]:
    """The label set for an object made by `stage` for `deployment`."""
    out = {MANAGED: "true", STAGE: stage, DEPLOYMENT: deployment}
    out.update({f"hubops.{k.replace('_', '-')}": str(v) for k, v in extra.items()})
    return out


def owned_by(obj_labels: dict | None, deployment: str) -> bool:
    """True when an object's labels say hubops made it for this deployment."""
    obj_labels = obj_labels or {}
    return obj_labels.get(MANAGED) == "true" and obj_labels.get(DEPLOYMENT) == deployment


def selector(deployment: str) -> list[str]:
    """Docker API label filters matching every object of a deployment."""
    return [f"{MANAGED}=true", f"{DEPLOYMENT}={deployment}"]
