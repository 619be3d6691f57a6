"""The operator folder: credentials hubops hands to the person running it, never under outputs/.

``~/.hubops/DEPLOYMENT/`` (parameter ``operator_dir``), mode 0700, files 0600: the generated
login passwords, hubops's own hub API token, the self-signed CA and its key. Back it up with the
deployment; losing it means those secrets are generated again and rotated on the next deploy.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path

from hubops.core.params import Loaded


def folder(p: Loaded) -> Path:
    """The deployment's operator folder, created 0700 if missing."""
    path = p.operator_path
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def write_private(path: Path, data: bytes) -> None:
    """Write a file readable only by its owner (created 0600 before any byte is written)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def read(p: Loaded, name: str) -> bytes | None:
    path = p.operator_path / name
    return path.read_bytes() if path.is_file() else None


def kept_secret(p: Loaded, name: str, *, nbytes: int = 32, dry_run: bool = False) -> tuple[str, bool]:
    """A generated secret kept in the operator folder: (value, created_now).

    Generated once and reused, so deploying twice changes nothing. In a dry run a missing
    secret is reported as to be created, and a throwaway value is returned.
    """
    existing = read(p, name)
    if existing:
        return existing.decode().strip(), False
    value = secrets.token_urlsafe(nbytes)
    if not dry_run:
        write_private(folder(p) / name, value.encode() + b"\n")
    return value, True
