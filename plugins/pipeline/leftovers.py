"""Work that outlived its run: ``run-*`` containers in the system account and scratch folders.

A run removes its own work when it ends (the ``clean_up`` task, and the ``scoring`` queue's
tasks their own files); what a crash, a killed worker or another worker's scratch leaves
behind is removed here once it is older than an age that no live run reaches, by a task on
each queue (a worker's scratch is its own). Only names the pipeline makes are touched:
``logs``, the ledger and any other container stay.
"""

from __future__ import annotations

import os
import re
import shutil
from datetime import UTC, datetime, timedelta

RUN_CONTAINER = re.compile(r"run-[0-9a-f]{24}-(in|out)")  # storage.run_containers' names
RUN_FOLDER = re.compile(r"[A-Za-z0-9._-]{0,60}-[0-9a-f]{10}")  # style_pipeline.run_key's names


def remove_old_work(max_age: timedelta, now: datetime | None = None, containers: bool = True) -> dict:
    """Remove run containers (unless ``containers`` is False: a task on a queue of its own
    removes only its worker's scratch) and this worker's scratch folders last written before
    ``now - max_age``. Returns what went: container names, scratch folder names, bytes freed."""
    cutoff = (now or datetime.now(UTC)) - max_age
    removed, freed = (remove_old_containers(cutoff) if containers else ([], 0))
    folders, freed_here = remove_old_scratch(cutoff)
    return {"containers": removed, "scratch_folders": folders, "bytes": freed + freed_here}


def remove_old_containers(cutoff: datetime) -> tuple[list[str], int]:
    from storage.blobs import SYSTEM_CONN, BlobStore

    system = BlobStore(SYSTEM_CONN)
    containers, freed = [], 0
    for container in system.client.list_containers(name_starts_with="run-"):
        if not RUN_CONTAINER.fullmatch(container.name):
            continue
        blobs = system.list(container.name)
        newest = max([container.last_modified] + [datetime.fromisoformat(b.last_modified) for b in blobs])
        if newest < cutoff and system.delete_container(container.name):
            containers.append(container.name)
            freed += sum(b.size for b in blobs)
    return containers, freed


def remove_old_scratch(cutoff: datetime) -> tuple[list[str], int]:
    from storage.scratch import scratch_root

    folders, freed = [], 0
    root = scratch_root()
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if not (folder.is_dir() and RUN_FOLDER.fullmatch(folder.name)):
            continue
        files = [folder, *folder.rglob("*")]
        newest = max(datetime.fromtimestamp(p.lstat().st_mtime, UTC) for p in files)
        if newest < cutoff:
            size = sum(p.lstat().st_size for p in files if p.is_file() and not p.is_symlink())
            shutil.rmtree(folder, ignore_errors=True)
            if not os.path.exists(folder):
                folders.append(folder.name)
                freed += size
    return folders, freed


def report(removed: dict, max_age: timedelta) -> str:
    """One line for the task log."""
    return (f"removed {len(removed['containers'])} run container(s) and {len(removed['scratch_folders'])} scratch "
            f"folder(s) older than {max_age}, {removed['bytes'] / 1024**2:.1f} MiB")

