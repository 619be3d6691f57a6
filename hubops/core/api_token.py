"""hubops's own token for the hub's REST API: scoped to what hubops does, with an expiry, rotated.

The token is a JupyterHub service token (service ``hubops``) loaded from the hub's configuration;
its value and its expiry are kept in the operator folder (``api-token``, ``api-token-expires``,
0600). JupyterHub gives configuration tokens no expiry of their own, so the configuration hubops
renders sets it at the hub's start (`hub_lines`): the current token gets ``expires_at``, and every
older configuration token of the service is deleted, so a rotated token stops working at the
restart that brings in the new one. `ensure` (80-deploy) makes a new token when there is none,
when the kept one has no expiry (made by an older hubops), or when fewer than `RENEW_DAYS` are
left; `HubAPI` refuses an expired token with what to do.

What hubops calls on the hub API, and so all its role allows (`scopes`): list users and read them
with their servers (status, backup, teardown, renew-tls, verify), start and stop servers (verify,
teardown), reach servers through the proxy (`/user/NAME/api/status`: verify, renew-tls), and create,
delete and read the server state (which Swarm service runs it) of one user, the verify stage's test
user (`admin:users!user=NAME`, `admin:server_state!user=NAME`), and delete users (`delete:users`:
80-deploy removes from the hub the users taken off the userlist). No other user can be created or
made admin with it.
"""
from __future__ import annotations

import secrets as _random
from datetime import datetime, timedelta, timezone
from typing import Optional

from . import operator
from .params import Loaded

TOKEN_FILE = "api-token"
EXPIRES_FILE = "api-token-expires"
LIFETIME_DAYS = 90
RENEW_DAYS = 14


def scopes(p: Loaded) -> list[str]:
    """The hubops service role's scopes: what hubops calls, and no more."""
    return ["list:users", "read:users", "read:servers", "servers", "access:servers", "delete:users",
            f"admin:users!user={p.verify.user}", f"admin:server_state!user={p.verify.user}"]


def _now() -> datetime:
    return datetime.now(timezone.utc)


def read_expiry(p: Loaded, expires_file: str = EXPIRES_FILE) -> Optional[datetime]:
    """When the kept token expires (UTC), or None when there is no token or no recorded expiry.
    `expires_file`: another kept token's (core/monitoring.py keeps Prometheus's the same way)."""
    raw = operator.read(p, expires_file)
    if not raw:
        return None
    try:
        when = datetime.fromisoformat(raw.decode().strip())
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def ensure(p: Loaded, *, dry_run: bool = False, now: Optional[datetime] = None, token_file: str = TOKEN_FILE,
           expires_file: str = EXPIRES_FILE) -> tuple[str, Optional[str]]:
    """The token to give the hub: (value, why it is new or None when kept). `token_file` and
    `expires_file`: another token kept and rotated the same way (Prometheus's, core/monitoring.py)."""
    now = now or _now()
    token = operator.read(p, token_file)
    expires = read_expiry(p, expires_file)
    if not token or not token.strip():
        why = "generated"
    elif expires is None:
        why = "rotated: the kept token had no expiry (made by an older hubops)"
    elif expires - now < timedelta(days=RENEW_DAYS):
        why = f"rotated: the kept token expires on {expires:%Y-%m-%d} (fewer than {RENEW_DAYS} days left)"
    else:
        return token.decode().strip(), None
    value = _random.token_urlsafe(32)
    if not dry_run:
        folder = operator.folder(p)
        operator.write_private(folder / token_file, value.encode() + b"\n")
        until = (now + timedelta(days=LIFETIME_DAYS)).replace(microsecond=0)
        operator.write_private(folder / expires_file, until.isoformat().encode() + b"\n")
    return value, why


def check_usable(p: Loaded, now: Optional[datetime] = None) -> Optional[str]:
    """A message when the kept token has expired (the hub refuses it), else None."""
    expires = read_expiry(p)
    if expires is not None and expires <= (now or _now()):
        return (f"hubops's hub API token in {p.operator_path}/{TOKEN_FILE} expired on {expires:%Y-%m-%d %H:%M} UTC; "
                "run `hubops deploy` (80-deploy makes a new one and restarts the hub with it)")
    return None


def hub_lines(p: Loaded, service: str, secret_file: str) -> list[str]:
    """jupyterhub_config.py lines that give the service's configuration token its expiry at the hub's
    start and delete the service's older configuration tokens (rotated ones)."""
    expires = read_expiry(p)
    if expires is None:
        return []
    naive = expires.astimezone(timezone.utc).replace(tzinfo=None)  # JupyterHub stores naive UTC
    return [
        "",
        "# --- hubops's API token: its expiry, and rotated tokens revoked (issue 13) --------------",
        "import datetime as _dt",
        "from jupyterhub import orm as _orm",
        "from jupyterhub.app import JupyterHub as _JupyterHub",
        f"_HUBOPS_TOKEN_EXPIRES = _dt.datetime.fromisoformat({naive.isoformat()!r})",
        "_hubops_init_api_tokens = _JupyterHub.init_api_tokens",
        "",
        "async def _init_api_tokens(self):",
        "    await _hubops_init_api_tokens(self)",
        f"    service = _orm.Service.find(self.db, {service!r})",
        f"    current = secret({secret_file!r})",
        "    for token in list(service.api_tokens if service is not None else []):",
        "        if token.note != 'from config':",
        "            continue",
        "        if token.match(current):",
        "            token.expires_at = _HUBOPS_TOKEN_EXPIRES",
        "        else:",
        "            self.log.info('hubops: revoking a rotated API token of service %s', service.name)",
        "            self.db.delete(token)",
        "    self.db.commit()",
        "",
        "_JupyterHub.init_api_tokens = _init_api_tokens",
    ]
