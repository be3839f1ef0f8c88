"""A look before the long wait: a few frames of the input, each beside the same frame
stylized, as one image. It needs a handful of frames decoded and styled, so a run can publish
it seconds after an upload is seen, long before the whole video is done. (The contact strip of
a finished video needs no network: ``pictures.contact_strip``.)

Frames are taken at evenly spaced times (the middle of equal slices of the video), styled
at the size the run will use, then shrunk for display. A video shorter than the number of
frames asked for gives fewer (each frame once).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..media import ffmpeg, tracks
from ..media.errors import UserError
from ..media.pictures import labelled_grid, sample_times, save_image
from .stylizer import Stylizer


def before_after(source: Path | str, output: Path | str, stylizer: Stylizer, frames: int = 3,
                 max_side: int | None = None, tile_width: int = 480,
                 limits: ffmpeg.Limits = ffmpeg.Limits()) -> dict:
    """``frames`` rows of (original | stylized) at evenly spaced times of ``source``."""
    info = ffmpeg.probe(source, limits)
    if info.kind != "video":
        raise UserError(f"{Path(source).name} is a still image: stylize it with `stylize` instead")
    size = ffmpeg.output_size(info.width, info.height, max_side)
    times = sample_times(source, info, frames)
    # an HDR source tone-mapped, as split gives it to the network: the preview shows what the run makes
    originals = ffmpeg.grab_frames(source, times, size, tracks.video_colour(source))
    styled = np.concatenate([stylizer(frame[None]) for frame in originals])
    rows = [[(f"before  {t:.1f} s", before), ("after", after)] for t, before, after in zip(times, originals, styled)]
    save_image(labelled_grid(rows, tile_width), Path(output))
    return {"output": str(output), "frames": len(times), "times": [round(t, 3) for t in times],
            "size": f"{size[0]}x{size[1]}"}
