"""Still images: stylize a photo, and the sheet of all 26 built-in styles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError

from . import media
from .errors import UserError
from .files import atomic_path
from .models import NUM_STYLES, BuiltinStyle, MultiStyleNet, parse_style
from .stylizer import Stylizer


def load_image(path: Path | str, max_side: int | None = None, limits: media.Limits = media.Limits()) -> np.ndarray:
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
    size = media.output_size(image.width, image.height, max_side, even=False)
    if size != image.size:
        image = image.resize(size, Image.LANCZOS)
    return np.array(image)  # writable, for torch.from_numpy


def save_image(array: np.ndarray, output: Path) -> None:
    fmt = Image.registered_extensions().get(output.suffix.lower())
    if output.suffix.lower() not in media.IMAGE_SUFFIXES or not fmt:
        raise UserError(f"output {output.name} must end in one of {', '.join(sorted(media.IMAGE_SUFFIXES))}")
    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(output) as tmp:
        Image.fromarray(array).save(tmp, format=fmt)


def stylize_image(source: Path, output: Path, stylizer: Stylizer, max_side: int | None = None,
                  limits: media.Limits = media.Limits()) -> dict:
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


def _sample_photo(side: int) -> np.ndarray:
    from .samples import photos

    photo = Image.fromarray(photos()[0])
    photo.thumbnail((side, side), Image.LANCZOS)
    return np.asarray(photo)
