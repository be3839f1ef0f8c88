"""Helpers the tests share: running the CLI for real, reading frames, comparing pictures."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from scoring import media

REPO = Path(__file__).resolve().parents[1]
SHARED_MEDIA = REPO.parent / "shared" / "media"


def run_scoring(*args, cwd=None, check=False, timeout=300) -> subprocess.CompletedProcess:
    """``python -m scoring ARGS`` in a fresh process, as a user would run it."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-m", "scoring", *map(str, args)], capture_output=True, text=True,
                            cwd=cwd, env=env, timeout=timeout, stdin=subprocess.DEVNULL)
    if check and result.returncode != 0:
        raise AssertionError(f"scoring {args} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_frames(path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """All frames of a video as uint8 [N, H, W, 3]."""
    info = media.probe(path)
    size = size or (info.width, info.height)
    with media.FrameReader(path, size) as reader:
        return np.concatenate(list(reader.batches(64)))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)
