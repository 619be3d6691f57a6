"""Where hubops's own files are: the project (runbooks, images, parameters) and the record."""
from __future__ import annotations

import os
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent.parent  # hubops/core/paths.py -> the project
RUNBOOKS = PROJECT / "runbooks"
IMAGES = PROJECT / "images"
# Executed runs; HUBOPS_OUTPUTS moves them (a scheduled run, a test's own folder).
OUTPUTS = Path(os.environ.get("HUBOPS_OUTPUTS", PROJECT / "outputs"))
