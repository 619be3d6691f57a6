"""Build contexts with another JupyterHub release pinned (parameter images.jupyterhub_version).

The copy lives in a folder named by a digest of the source contexts and the version, under the
system's temporary folder: the same inputs give the same folder and the same contents, hence the
same image tags (images.image_ref digests the contexts), so nothing is rebuilt without cause.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path

from hubops.core.errors import HubopsError, ParameterError

KINDS = ("hub", "singleuser")
VERSION_RE = re.compile(r"^\d+\.\d+\.\d+([a-z]+\d*)?$")


def pin_jupyterhub(requirements: str, version: str) -> str:
    """requirements.txt text with the jupyterhub pin set to `version` (pure)."""
    if not VERSION_RE.match(version):
        raise ParameterError(f"jupyterhub_version {version!r}: give a release such as 6.1.1")
    out, found = [], False
    for line in requirements.splitlines():
        if re.match(r"^jupyterhub\s*==", line.split("#")[0].strip(), re.IGNORECASE):
            out.append(f"jupyterhub=={version}")
            found = True
        else:
            out.append(line)
    if not found:
        raise HubopsError("requirements.txt pins no jupyterhub==VERSION line to replace")
    return "\n".join(out) + "\n"


def _digest(src: Path, version: str, kinds: tuple[str, ...]) -> str:
    h = hashlib.sha256(f"jupyterhub\0{version}\0".encode())
    for kind in kinds:
        for path in sorted(q for q in (src / kind).rglob("*") if q.is_file()):
            data = path.read_bytes()
            h.update(f"{kind}/{path.relative_to(src / kind).as_posix()}\0{os.access(path, os.X_OK):d}\0{len(data)}\0".encode())
            h.update(data)
    return h.hexdigest()[:16]


def pinned_images_dir(src: Path, version: str, kinds: tuple[str, ...] = KINDS) -> Path:
    """A folder with `kinds` copied from `src`, jupyterhub pinned to `version` in each requirements.txt."""
    kinds = tuple(k for k in kinds if (src / k).is_dir())
    dest = Path(tempfile.gettempdir()) / f"hubops-images-jupyterhub-{version}-{_digest(src, version, kinds)}"
    if dest.is_dir():
        return dest
    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".", dir=dest.parent))
    try:
        for kind in kinds:
            shutil.copytree(src / kind, tmp / kind, symlinks=False)
            req = tmp / kind / "requirements.txt"
            if req.is_file():
                req.write_text(pin_jupyterhub(req.read_text(), version))
        os.chmod(tmp, 0o755)
        try:
            tmp.rename(dest)
        except OSError:  # made meanwhile by another process, with the same contents
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest
