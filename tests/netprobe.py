"""Reachability probes run from inside containers (users' servers), for the network-policy tests.

A probe is a TCP connect (or an HTTP GET) made by python3 inside the container with `exec`; its
outcome is one word: `open` (connected), `refused` (reached, nothing listens: RST), `blocked` (an
ICMP "administratively prohibited" or "host unreachable": a REJECT rule), `timeout`, or the errno's
name. Every target must be an address of this machine or of a lab namespace (ENVIRONMENT.md).
"""
from __future__ import annotations

import json

_SCRIPT = r'''
import errno, json, socket, sys, urllib.request, urllib.error
class _Keep(urllib.request.HTTPRedirectHandler):  # a 302 to the hub's login is the answer, not followed
    def redirect_request(self, *a, **k):
        return None
opener = urllib.request.build_opener(_Keep)
out = []
for kind, host, port, extra in json.loads(sys.argv[1]):
    if kind == "tcp":
        s = socket.socket(); s.settimeout(3)
        try:
            s.connect((host, port)); out.append("open")
        except socket.timeout:
            out.append("timeout")
        except OSError as e:
            out.append({errno.ECONNREFUSED: "refused", errno.EHOSTUNREACH: "blocked", errno.ENETUNREACH: "blocked",
                        errno.EACCES: "blocked", errno.EPERM: "blocked"}.get(e.errno, errno.errorcode.get(e.errno, str(e))))
        finally:
            s.close()
    else:  # http: GET with optional headers; the status code, or the error
        req = urllib.request.Request(f"http://{host}:{port}{extra.get('path', '/')}", headers=extra.get("headers", {}))
        try:
            with opener.open(req, timeout=5) as r:
                out.append(f"HTTP {r.status}")
        except urllib.error.HTTPError as e:
            out.append(f"HTTP {e.code}")
        except Exception as e:
            out.append(type(e).__name__ + ": " + str(getattr(e, "reason", e))[:60])
print(json.dumps(out))
'''


def probe(container, targets: list[tuple]) -> list[str]:
    """Outcomes of `targets` ((kind, host, port[, extra]) with kind tcp or http) from inside `container`."""
    norm = [[t[0], t[1], t[2], t[3] if len(t) > 3 else {}] for t in targets]
    code, out = container.exec_run(["python3", "-c", _SCRIPT, json.dumps(norm)], demux=False)
    text = out.decode(errors="replace").strip()
    assert code == 0, f"probe in {container.name} failed ({code}): {text[-800:]}"
    return json.loads(text.splitlines()[-1])


def table(title: str, rows: list[dict]) -> str:
    """A plain-text table of rows (dicts with the same keys), as printed by the tests."""
    if not rows:
        return title + ": (none)"
    cols = list(rows[0])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    lines = [title, "  " + "  ".join(c.ljust(widths[c]) for c in cols)]
    lines += ["  " + "  ".join(str(r[c]).ljust(widths[c]) for c in cols) for r in rows]
    return "\n".join(lines)
