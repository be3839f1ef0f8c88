"""A look before the long wait, and a glance at the result.

* ``before_after``: a few frames of the input, each beside the same frame stylized, as one
  image. It needs a handful of frames decoded and styled, so a run can publish it seconds
  after an upload is seen, long before the whole video is done.
* ``contact_strip``: a row of frames spread over a finished video, for the manifest and
  the notification.

Frames are taken at evenly spaced times (the middle of equal slices of the video), styled
at the size the run will use, then shrunk for display. A video shorter than the number of
frames asked for gives fewer (each frame once).
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

from . import media
from .errors import UserError
from .images import labelled_grid, save_image
from .stylizer import Stylizer


def sample_times(info: media.MediaInfo, count: int) -> list[float]:
    """The times of ``count`` frames in the middle of equal slices of the video, each a
    quarter frame early so that seeking lands on that frame even after rounding."""
    rate = Fraction(info.frame_rate)
    frames = max(1, info.frames or round(info.duration * rate))
    indices = sorted({min(frames - 1, int(frames * (i + 0.5) / count)) for i in range(count)})
    return [max(0.0, float((index - Fraction(1, 4)) / rate)) for index in indices]


def before_after(source: Path | str, output: Path | str, stylizer: Stylizer, frames: int = 3,
                 max_side: int | None = None, tile_width: int = 480,
                 limits: media.Limits = media.Limits()) -> dict:
    """``frames`` rows of (original | stylized) at evenly spaced times of ``source``."""
    info = media.probe(source, limits)
    if info.kind != "video":
        raise UserError(f"{Path(source).name} is a still image: stylize it with `stylize` instead")
    size = media.output_size(info.width, info.height, max_side)
    times = sample_times(info, frames)
    originals = media.grab_frames(source, times, size)
    styled = np.concatenate([stylizer(frame[None]) for frame in originals])
    rows = [[(f"before  {t:.1f} s", before), ("after", after)] for t, before, after in zip(times, originals, styled)]
    save_image(labelled_grid(rows, tile_width), Path(output))
    return {"output": str(output), "frames": len(times), "times": [round(t, 3) for t in times],
            "size": f"{size[0]}x{size[1]}"}


def contact_strip(video: Path | str, output: Path | str, frames: int = 8, tile_width: int = 192) -> dict:
    """One row of ``frames`` frames spread over ``video``, each labelled with its time."""
    info = media.probe(video)
    size = (info.width, info.height)
    times = sample_times(info, frames)
    row = [(f"{t:.1f} s", frame) for t, frame in zip(times, media.grab_frames(video, times, size))]
    save_image(labelled_grid([row], tile_width), Path(output))
    return {"output": str(output), "frames": len(times), "times": [round(t, 3) for t in times]}
