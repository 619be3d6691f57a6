"""Keep credentials in a request's URL out of the hub's log (runs in the hub's container).

JupyterHub scrubs its own access log (jupyterhub.log: query parameters whose name holds token, auth,
key, code, state or _xsrf become '[secret]'), but Tornado logs a request that ends in an HTTP error
with a message by itself, on `tornado.general`, with the URL as it came: a login refused at the OAuth
callback wrote `403 GET /hub/oauth_callback?code=...&state=...` with the provider's authorization
code in it (seen on a lab: tests/e2e/test_lab_oidc_login.py), and so would a refused
`/hub/api/...?token=...`. Uncaught exceptions on `tornado.application` name the URL too.

`install()` (called from the generated jupyterhub_config.py) puts a filter on Tornado's loggers that
rewrites each record's message with such parameters' values replaced by '[secret]', as JupyterHub
does for its access log. Only the standard library: nothing of hubops is imported here.
"""
from __future__ import annotations

import logging
import re

# JupyterHub's list (jupyterhub.log.SCRUB_PARAM_KEYS) and a few more names credentials go by.
SCRUB_KEYS = ("token", "auth", "key", "code", "state", "_xsrf", "secret", "password", "session")
_PARAM = re.compile(r"([?&;][^=&;\s#?]*(?:%s)[^=&;\s#?]*=)[^&;\s#'\"<>)]+" % "|".join(map(re.escape, SCRUB_KEYS)),
                    re.IGNORECASE)
LOGGERS = ("tornado.general", "tornado.application", "tornado.access")


def scrub(text: str) -> str:
    """`text` with the value of every URL query parameter named like a credential replaced by '[secret]'."""
    return _PARAM.sub(r"\1[secret]", text)


class ScrubQuery(logging.Filter):
    """Rewrites a record's message (formatted with its arguments) through `scrub`."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001 - a record that does not format: leave it to logging's own handling
            return True
        clean = scrub(msg)
        if clean != msg:
            record.msg, record.args = clean, ()
        return True


def install(loggers: tuple[str, ...] = LOGGERS) -> None:
    """Put a ScrubQuery filter on each of `loggers` (once: calling again adds nothing)."""
    for name in loggers:
        lg = logging.getLogger(name)
        if not any(isinstance(f, ScrubQuery) for f in lg.filters):
            lg.addFilter(ScrubQuery())
