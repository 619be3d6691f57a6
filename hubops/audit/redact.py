"""Redaction: secret values never reach outputs/ (notebooks, run.json, the report) or the log.

A `Redactor` is told the secret values (`add`) and replaces every occurrence of them in text
(`redact`) with ``[redacted]``: the value itself, its standard and URL-safe base64 forms
(at any byte alignment, so a secret inside a base64 blob such as an HTTP Basic header is found
too), its HTML-escaped and URL-quoted forms, and, for a PEM private key, each line of its body.

`known_secrets(p)` says which values a deployment has: the files of its operator folder, the
secrets its parameters reference, and secret-looking environment variables.
"""
from __future__ import annotations

import base64
import html
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Iterable, Optional
from urllib.parse import quote, quote_plus

log = logging.getLogger("hubops")

MASK = "[redacted]"
MIN_LEN = 8  # shorter values would redact ordinary words; no secret hubops makes is that short
ENV_PATTERN = re.compile(r"SECRET|TOKEN|PASSWORD|PASSWD", re.IGNORECASE)
_ENV_LOCATION = re.compile(r"_(FILE|PATH|DIR)$", re.IGNORECASE)
_PEM_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----", re.DOTALL)


def _b64_forms(raw: bytes) -> set[str]:
    """base64 and URL-safe base64 of `raw`, whole (padded and not) and, for each of the three
    byte alignments it can have inside a longer encoded blob, the part of the encoding that
    depends on `raw` alone."""
    forms: set[str] = set()
    for enc in (base64.b64encode, base64.urlsafe_b64encode):
        whole = enc(raw).decode()
        forms.update({whole, whole.rstrip("=")})
        for shift in range(3):
            data = b"\0" * shift + raw
            text = enc(data).decode()
            start = 4 if shift else 0          # the first group mixes in bytes before the secret
            end = (len(data) // 3) * 4         # the last partial group mixes in bytes after it
            core = text[start:end]
            if len(core) >= MIN_LEN + 4:       # long enough never to match by chance
                forms.add(core)
    return forms


class Redactor:
    """Replaces known secret values, in their usual encodings, with ``[redacted]``."""

    def __init__(self, secrets: Iterable[str] = ()):
        self._secrets: set[str] = set()
        self._forms: set[str] = set()
        self._pattern: Optional[re.Pattern[str]] = None
        self.add_all(secrets)

    def __len__(self) -> int:
        return len(self._secrets)

    def __bool__(self) -> bool:  # an empty redactor is still a redactor
        return True

    def add(self, value: str | bytes | None) -> None:
        """Know one secret value (surrounding white space ignored; short values refused)."""
        if value is None:
            return
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:  # a binary secret: it can only show up encoded
                self._add_forms(_b64_forms(value))
                return
        value = value.strip()
        if "-----BEGIN" in value:
            self._add_pem(value)
            return
        if len(value) < MIN_LEN or value in self._secrets:
            if 0 < len(value) < MIN_LEN:
                log.debug("a secret shorter than %d characters cannot be redacted safely", MIN_LEN)
            return
        self._secrets.add(value)
        forms = {value, html.escape(value), html.escape(value, quote=False), quote(value, safe=""),
                 quote_plus(value), json.dumps(value)[1:-1]}
        forms |= _b64_forms(value.encode())
        self._add_forms(forms)

    def add_all(self, values: Iterable[str | bytes | None]) -> None:
        for v in values:
            self.add(v)

    def merge(self, other: "Redactor") -> None:
        """Know every secret `other` knows."""
        self._secrets |= other._secrets
        self._add_forms(other._forms)

    def _add_pem(self, text: str) -> None:
        for kind, body in _PEM_BLOCK.findall(text):
            if "PRIVATE KEY" not in kind:
                continue  # certificates and public keys are public
            self._secrets.add(body.strip())
            lines = [ln.strip() for ln in body.strip().splitlines() if ln.strip() and ":" not in ln]
            # Each body line alone (a key printed or logged is usually cut at line ends), and the
            # body as one string (as in a JSON or repr with the new lines escaped).
            self._add_forms({ln for ln in lines if len(ln) >= MIN_LEN} | {"".join(lines)})

    def _add_forms(self, forms: Iterable[str]) -> None:
        new = {f for f in forms if len(f) >= MIN_LEN} - self._forms
        if new:
            self._forms |= new
            self._pattern = None

    @property
    def pattern(self) -> Optional[re.Pattern[str]]:
        if self._pattern is None and self._forms:
            # Longest first, so a form that contains another is replaced whole.
            self._pattern = re.compile("|".join(re.escape(f) for f in sorted(self._forms, key=len, reverse=True)))
        return self._pattern

    def redact(self, text: str) -> str:
        """`text` with every known secret form replaced by ``[redacted]``."""
        pat = self.pattern
        if pat is None or not isinstance(text, str) or not text:
            return text
        return pat.sub(MASK, text)

    def redact_obj(self, obj: Any) -> Any:
        """A copy of a JSON-like structure (dicts, lists, strings) with every string redacted."""
        if isinstance(obj, str):
            return self.redact(obj)
        if isinstance(obj, dict):
            return type(obj)((k, self.redact_obj(v)) for k, v in obj.items())
        if isinstance(obj, list):
            return [self.redact_obj(v) for v in obj]
        return obj

    def redact_notebook(self, path: Path) -> bool:
        """Redact an .ipynb in place: every string in it (cell outputs, tracebacks, text/plain,
        text/html and JSON data, metadata such as papermill's exception). Written back only if
        something was redacted; returns whether it was."""
        if self.pattern is None or not path.exists():
            return False
        raw = path.read_text(encoding="utf-8", errors="replace")
        try:
            nb = json.loads(raw)
        except ValueError:  # a notebook cut short (a crash mid-write): redact it as text
            return self.redact_file(path)
        clean = self.redact_obj(nb)
        if clean == nb:
            return False
        tmp = path.with_name(path.name + ".redacting")
        # The layout nbformat writes (indent 1, keys sorted), so the file reads as before.
        tmp.write_text(json.dumps(clean, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
        tmp.replace(path)
        return True

    def redact_file(self, path: Path) -> bool:
        """Redact a text file in place; returns whether anything was redacted."""
        if self.pattern is None or not path.exists():
            return False
        text = path.read_text(encoding="utf-8", errors="replace")
        clean = self.redact(text)
        if clean != text:
            path.write_text(clean, encoding="utf-8")
            return True
        return False


class RedactingFilter(logging.Filter):
    """A logging filter that redacts a record's message, arguments and exception text.

    Attach it to a handler (the CLI does): the library itself adds no handlers."""

    def __init__(self, redactor: Redactor):
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string is the logger's problem, not ours
            message = str(record.msg)
        record.msg, record.args = self.redactor.redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redactor.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redactor.redact(record.stack_info)
        return True


_SESSION = Redactor()


def session_redactor() -> Redactor:
    """The process's redactor: every secret the runner learns is added to it, so a logging
    handler filtered by it (the CLI's) redacts what the run finds out later."""
    return _SESSION


def env_secrets(environ: Optional[dict[str, str]] = None) -> list[str]:
    """Values of environment variables named like *SECRET*, *TOKEN*, *PASSWORD* (≥ 8 characters)."""
    env = os.environ if environ is None else environ
    # NAME_FILE, NAME_PATH, NAME_DIR say where a secret is, not what it is.
    return [v for k, v in env.items()
            if ENV_PATTERN.search(k) and not _ENV_LOCATION.search(k) and len(v.strip()) >= MIN_LEN]


def _read_secret_file(path: Path) -> list[str]:
    try:
        data = path.read_bytes()
    except OSError as e:
        log.debug("cannot read %s for redaction: %s", path, e.strerror)
        return []
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return [base64.b64encode(data).decode()] if data else []
    if "-----BEGIN" in text:
        return [text]  # Redactor.add keeps private-key blocks, skips certificates
    values = [text.strip()]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if len(lines) > 1:  # a file of several values: each on its own
        values += lines
    return values


def known_secrets(p: Any) -> list[str]:
    """Every secret value this deployment has, to redact from the record: the files in its
    operator folder (passwords, API token, CA and TLS keys: whatever is there), the secrets its
    parameters reference (GitHub client secret, TLS key file), and env vars that look secret."""
    found: list[str] = []
    try:
        folder = Path(p.operator_path)
        if folder.is_dir():
            for f in sorted(folder.rglob("*")):
                # backups/ (hubops.ops.backup) holds the hub database and plain configuration, no secret.
                if f.is_file() and f.relative_to(folder).parts[0] != "backups":
                    found += _read_secret_file(f)
    except Exception as e:  # noqa: BLE001 - redaction must not stop a run; say why it is partial
        log.warning("could not read the operator folder for redaction: %s", e)
    # Every secret the parameters reference (OAuth client secrets, TSIG keys, bind passwords, ...).
    try:
        refs = p.secret_refs()
    except Exception:  # noqa: BLE001 - parameters of another shape (tests' stand-ins): nothing referenced
        refs = []
    for key, ref in refs:
        try:
            found.append(p.resolve_secret(ref, key))
        except Exception:  # noqa: BLE001 - not set or not readable: then it cannot be in any output either
            pass
    try:
        if p.tls.mode == "files" and p.tls.files is not None:
            found += _read_secret_file(p.path(p.tls.files.key))
    except Exception:  # noqa: BLE001
        pass
    found += env_secrets()
    return [v for v in dict.fromkeys(found) if v]


def redactor_for(p: Any = None, *, params_file: Optional[str | os.PathLike] = None) -> Redactor:
    """A redactor for one deployment (its loaded parameters, or a parameter file to load; a file
    that no longer loads leaves the env and session secrets), plus what this process learnt."""
    r = Redactor(env_secrets())
    r.merge(session_redactor())
    if p is None and params_file is not None:
        try:
            from hubops.core.params import load_params

            p = load_params(params_file)
        except Exception as e:  # noqa: BLE001
            log.debug("cannot load %s to find secrets to redact: %s", params_file, e)
    if p is not None:
        r.add_all(known_secrets(p))
    return r
