"""One flat error tree. Messages say what failed, on which host or object, and what to do."""
from __future__ import annotations


class HubopsError(Exception):
    """Base of every error hubops raises on purpose."""


class ParameterError(HubopsError):
    """A parameter file is invalid. The message names the file and the key path."""


class PreflightError(HubopsError):
    """A host or engine is not fit for the deployment (unreachable, too old, ...)."""


class ConflictError(HubopsError):
    """An object exists with the name hubops wants but was not made by hubops for this deployment."""


class DockerOpError(HubopsError):
    """A Docker API call failed. The message names the host and the object."""


class ImageBuildError(DockerOpError):
    """An image build failed. The message carries the tail of the build log."""


class NotDeployed(HubopsError):
    """The deployment (or the part asked for, such as the hub service) does not exist on the cluster."""


class HubNotRunning(HubopsError):
    """The hub service exists but no hub container runs (stopped, restarting, its node down)."""


class ImageNotBuilt(HubopsError):
    """An image hubops needs is not on the engine that should hold it: run 60-images first."""


class TLSError(HubopsError):
    """A certificate or key is unusable (does not match, expired, wrong name, ...)."""


class VerifyError(HubopsError):
    """The deployed hub did not behave as it should."""


class BackupError(HubopsError):
    """A backup cannot be made, or is refused for a restore (corrupt, partial, not a hub database)."""


class ScheduleError(HubopsError):
    """A scheduled run (systemd timer, cron.d entry) cannot be written or installed as asked."""


class IdentityProviderError(HubopsError):
    """An identity provider (OpenID Connect issuer, LDAP server) cannot be used as the parameters say:
    it does not answer, its certificate does not verify, or what it sends is not what a login needs."""
