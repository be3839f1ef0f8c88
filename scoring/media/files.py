"""Writing files so that they appear complete or not at all."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(final: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it into place only if the block succeeds.

    The temporary name is fixed (``.NAME.partial``) so that a rerun after a crash replaces
    the leftover instead of piling up new ones; readers never look at ``.partial`` files.
    """
    final = Path(final)
    tmp = final.with_name(f".{final.name}.partial")
    tmp.unlink(missing_ok=True)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
