"""A worker's local scratch: one folder per DAG run under ``VST_SCRATCH``. Only a cache: what
a task needs from an earlier task it fetches from blob storage, so any task may run on any
worker."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path


def run_key(run_id: str) -> str:
    """A storage-safe, unique folder name for one DAG run (run ids may hold any character)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", run_id).strip("-.")[:60]
    return f"{slug}-{hashlib.sha256(run_id.encode()).hexdigest()[:10]}"


def scratch_root() -> Path:
    """Where every run's scratch folder lives on this worker (``VST_SCRATCH``)."""
    return Path(os.environ.get("VST_SCRATCH", Path(tempfile.gettempdir()) / "video-style-transfer"))


def scratch(key: str) -> Path:
    path = scratch_root() / key
    path.mkdir(parents=True, exist_ok=True)
    return path
