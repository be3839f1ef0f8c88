"""Sample clips made from real photos (the ones scikit-image ships), for the demo and tests.

The clip pans and zooms across the photos at any frame rate, with a tone track or without,
so that nothing has to be downloaded to try the pipeline.
"""

from __future__ import annotations

import subprocess
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

from . import ffmpeg
from .errors import UserError
from .files import atomic_path

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def photos() -> list[np.ndarray]:
    try:
        from skimage import data
    except ImportError:
        raise UserError("sample clips need scikit-image (pip install scikit-image)") from None
    return [getattr(data, name)() for name in PHOTOS]


def frames(count: int, size: tuple[int, int], fps: Fraction):
    """Each photo for two seconds, the view drifting and zooming so that every frame differs."""
    width, height = size
    images = [Image.fromarray(p) for p in photos()]
    per_photo = max(1, round(2 * fps))
    for n in range(count):
        image = images[(n // per_photo) % len(images)]
        t = (n % per_photo) / per_photo  # 0..1 within this photo
        zoom = 0.9 - 0.25 * t
        crop_w = min(image.width, image.height * width / height) * zoom
        crop_h = crop_w * height / width
        left = (image.width - crop_w) * t
        top = (image.height - crop_h) * (0.5 + 0.4 * np.sin(2 * np.pi * t))
        box = (left, top, left + crop_w, top + crop_h)
        yield np.asarray(image.resize(size, Image.BILINEAR, box=box))


def make_clip(output: Path | str, seconds: float = 4.0, fps: str = "25", size: tuple[int, int] = (320, 180),
              audio: bool = True) -> dict:
    output = Path(output)
    container = ffmpeg.VIDEO_SUFFIXES.get(output.suffix.lower())
    if not container:
        raise UserError(f"sample clip {output.name} must end in one of {', '.join(sorted(ffmpeg.VIDEO_SUFFIXES))}")
    rate = Fraction(fps)
    count = max(1, round(seconds * rate))
    duration = float(count / rate)
    cmd = [ffmpeg.ffmpeg_path(), "-v", "error", "-nostdin", "-y",
           "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{size[0]}x{size[1]}", "-framerate", fps, "-i", "pipe:0"]
    if audio:
        # a 440 Hz tone that beeps higher every second, so an audio shift would be audible
        tone = f"aevalsrc='0.3*sin(2*PI*(440+440*lt(mod(t,1),0.1))*t)':s=48000:d={duration:.6f}"
        cmd += ["-f", "lavfi", "-i", tone, "-c:a", "aac", "-b:a", "96k"]
    cmd += ["-c:v", "libx264", "-preset", "veryfast", "-crf", "20", "-pix_fmt", "yuv420p", "-f", container]
    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(output) as tmp:
        process = subprocess.Popen([*cmd, ffmpeg.file_arg(tmp)], stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        for frame in frames(count, size, rate):
            process.stdin.write(frame.tobytes())
        process.stdin.close()
        stderr = process.stderr.read().decode(errors="replace")
        if process.wait() != 0:
            raise RuntimeError(f"ffmpeg could not write the sample clip: {stderr.strip()[-300:]}")
    return {"output": str(output), "frames": count, "frame_rate": fps, "audio": audio}
