"""Still images through the network: stylize a photo, and the sheet of all 26 built-in styles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..media import ffmpeg
from ..media.pictures import labelled_grid, load_image, save_image
from .models import NUM_STYLES, BuiltinStyle, MultiStyleNet, parse_style
from .stylizer import Stylizer


def stylize_image(source: Path, output: Path, stylizer: Stylizer, max_side: int | None = None,
                  limits: ffmpeg.Limits = ffmpeg.Limits()) -> dict:
    image = load_image(source, max_side, limits)
    save_image(stylizer(image[None])[0], output)
    return {"output": str(output), "size": f"{image.shape[1]}x{image.shape[0]}"}


def style_sheet(image_path: Path | str | None, output: Path, device: str = "auto", tile: int = 192,
                columns: int = 7) -> dict:
    """The photo and its 26 built-in styles in a labelled grid, to choose a style by eye."""
    if image_path:
        photo = load_image(image_path, max_side=tile)
    else:
        photo = _sample_photo(tile)
    net = MultiStyleNet.from_onnx()
    tiles = [("original", photo)]
    for index in range(NUM_STYLES):
        stylizer = Stylizer(BuiltinStyle(net, parse_style(str(index))), device=device)
        tiles.append((f"style {index}", stylizer(photo[None])[0]))

    rows = [tiles[i:i + columns] for i in range(0, len(tiles), columns)]
    save_image(labelled_grid(rows, tile_width=photo.shape[1]), output)
    return {"output": str(output), "styles": NUM_STYLES}


def _sample_photo(side: int) -> np.ndarray:
    from ..media.samples import photos

    photo = Image.fromarray(photos()[0])
    photo.thumbnail((side, side), Image.LANCZOS)
    return np.asarray(photo)
