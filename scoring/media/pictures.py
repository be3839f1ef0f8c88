"""Pictures without the network (numpy and Pillow only): read, write and lay out still images,
check a style picture, and the contact strip of a finished video.

This is the media side: the light Airflow worker (no torch) runs it for ``split`` (a style
picture's check) and ``stitch_and_publish`` (the contact strip).
"""

from __future__ import annotations

import itertools
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError

from . import ffmpeg, tracks
from .errors import UserError
from .files import atomic_path

STYLE_SIZE = 256  # the arbitrary-style predictor's input side
MIN_STYLE_SIDE = 16
MAX_STYLE_PIXELS = 40_000_000  # declared width x height; a 36 MP camera photo passes


def load_image(path: Path | str, max_side: int | None = None, limits: ffmpeg.Limits = ffmpeg.Limits()) -> np.ndarray:
    """An RGB ``uint8 [H, W, 3]`` array, upright (EXIF), transparency flattened on white."""
    path = Path(path)
    try:
        image = Image.open(path)
    except FileNotFoundError:
        raise UserError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise UserError(f"{path.name} is not an image we can read ({exc.__class__.__name__})") from None
    with image:
        if image.width * image.height > limits.max_pixels:
            raise UserError(f"{path.name} is {image.width}x{image.height}; the limit is "
                            f"{limits.max_pixels / 1e6:.1f} MP")
        try:
            image = ImageOps.exif_transpose(image)
            if image.mode in ("RGBA", "LA", "P", "PA"):
                image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image.convert("RGBA"))
            image = image.convert("RGB")
        except OSError as exc:
            raise UserError(f"{path.name} is damaged ({exc})") from None
    size = ffmpeg.output_size(image.width, image.height, max_side, even=False)
    if size != image.size:
        image = image.resize(size, Image.LANCZOS)
    return np.array(image)  # writable, for torch.from_numpy


def save_image(array: np.ndarray, output: Path) -> None:
    fmt = Image.registered_extensions().get(output.suffix.lower())
    if output.suffix.lower() not in ffmpeg.IMAGE_SUFFIXES or not fmt:
        raise UserError(f"output {output.name} must end in one of {', '.join(sorted(ffmpeg.IMAGE_SUFFIXES))}")
    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(output) as tmp:
        Image.fromarray(array).save(tmp, format=fmt)


def labelled_grid(rows: list[list[tuple[str, np.ndarray]]], tile_width: int) -> np.ndarray:
    """Tiles ``(label, image)`` in rows on a white sheet, each scaled to ``tile_width`` (never
    up), all to the size of the first, with its label above it."""
    pad, label = 6, 18
    first = rows[0][0][1]
    scale = min(1.0, tile_width / first.shape[1])
    width, height = max(1, round(first.shape[1] * scale)), max(1, round(first.shape[0] * scale))
    columns = max(len(row) for row in rows)
    sheet = Image.new("RGB", (pad + columns * (width + pad), pad + len(rows) * (height + label + pad)), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=13)
    for r, row in enumerate(rows):
        for c, (text, tile) in enumerate(row):
            x, y = pad + c * (width + pad), pad + r * (height + label + pad)
            draw.text((x + 2, y + 1), text, fill="black", font=font)
            image = Image.fromarray(tile)
            if image.size != (width, height):
                image = image.resize((width, height), Image.LANCZOS)
            sheet.paste(image, (x, y + label))
    return np.asarray(sheet)


# --------------------------------------------------------------------------- the style picture


def load_style_image(path: Path | str) -> np.ndarray:
    """The style picture as the predictor takes it: upright (EXIF), transparency on white, the
    center square resized to 256x256 (Lanczos), ``uint8 [256, 256, 3]``: what the package does.

    Its size is checked from the header, before anything is decoded."""
    path = Path(path)
    name = f"style image {path.name}"
    if not path.is_file():
        raise UserError(f"{name} not found" if not path.exists() else f"{name} is not a file")
    if path.stat().st_size == 0:
        raise UserError(f"{name} is empty (0 bytes); upload the picture again")
    try:
        with warnings.catch_warnings():  # PIL warns above ~89 MP; our own cap is lower and says so
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except Image.DecompressionBombError:
        raise UserError(f"{name} is too large: over {MAX_STYLE_PIXELS / 1e6:.0f} MP; "
                        "scale it down (a style picture needs no more than about 1000 px)") from None
    except PermissionError:
        raise UserError(f"{name} cannot be read: permission denied") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise UserError(f"{name} is not an image we can read ({exc.__class__.__name__}); "
                        "use a JPEG, PNG or WebP picture") from None
    with image:
        width, height = image.size
        if width * height > MAX_STYLE_PIXELS:
            raise UserError(f"{name} is {width}x{height}, over {MAX_STYLE_PIXELS / 1e6:.0f} MP; scale it down "
                            "(a style picture needs no more than about 1000 px)")
        if min(width, height) < MIN_STYLE_SIDE:
            raise UserError(f"{name} is {width}x{height}; both sides need at least {MIN_STYLE_SIDE} px")
        try:
            image = ImageOps.exif_transpose(image)
            if image.mode in ("RGBA", "LA", "P", "PA"):
                image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image.convert("RGBA"))
            image = image.convert("RGB")
        except (OSError, ValueError, SyntaxError) as exc:
            raise UserError(f"{name} is damaged and cannot be decoded ({exc}); upload it again") from None
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    image = image.crop((left, top, left + side, top + side)).resize((STYLE_SIZE, STYLE_SIZE), Image.LANCZOS)
    return np.asarray(image)


# --------------------------------------------------------------------------- the contact strip


def sample_times(video: Path | str, info: ffmpeg.MediaInfo, count: int) -> list[float]:
    """The times of ``count`` pictures in the middle of equal slices of the video, each a
    quarter of its gap to the one before early, so that seeking lands on that picture even
    after rounding. The pictures' own times where the container has them (variable rates,
    start offsets and empty packets, which a container's frame count and average rate miss),
    else the frame rate's."""
    shown = tracks.shown_times(video)
    if not shown:
        rate = Fraction(info.frame_rate)
        shown = [float(i / rate) for i in range(max(1, info.frames or round(info.duration * rate)))]
    indices = sorted({min(len(shown) - 1, int(len(shown) * (i + 0.5) / count)) for i in range(count)})
    gaps = [b - a for a, b in itertools.pairwise(shown)] or [0.0]
    return [max(0.0, shown[i] - gaps[max(0, i - 1)] / 4) for i in indices]


def contact_strip(video: Path | str, output: Path | str, frames: int = 8, tile_width: int = 192) -> dict:
    """One row of ``frames`` frames spread over ``video``, each labelled with its time."""
    info = ffmpeg.probe(video)
    size = (info.width, info.height)
    times = sample_times(video, info, frames)
    frames = ffmpeg.grab_frames(video, times, size, tracks.video_colour(video))  # an HDR video shown tone-mapped
    row = [(f"{t:.1f} s", frame) for t, frame in zip(times, frames)]
    save_image(labelled_grid([row], tile_width), Path(output))
    return {"output": str(output), "frames": len(times), "times": [round(t, 3) for t in times]}
