"""The settings of a processing run: the one schema, and where each value of a run comes from.

``PARAMS`` is the ``video_style_transfer`` DAG's Params: the trigger form shows them, and the
same definitions check the settings of automatic runs, which come, key by key, from the
upload's blob metadata, else from the Airflow Variable ``video_style_transfer_defaults`` (a JSON
object), else from the Param's default. Metadata values are text; each is read as the type its
Param wants (``style=7``, ``temporal=0.7``, ``max_side=none``) and then checked like a form entry.

The form can check only what a JSON schema says. ``RULES`` holds the rest, the same functions
the scoring commands check their options with (``scoring.options``, torch-free) and the blob
name rule: ``check`` applies both, so an upload's metadata, the defaults Variable, a backfill's
conf and the run itself (``probe``) meet one definition of a valid setting.
"""

from __future__ import annotations

import copy
import json

from airflow.sdk import Param
from aml_backend.cluster import configured_cluster
from storage.blobs import check_blob_name

from scoring.media.delivery import DEFAULT_DELIVERY, DELIVERIES
from scoring.media.split import DEFAULT_HDR, HDR_MODES
from scoring.media.errors import UserError
from scoring.options import MAX_TEMPORAL, PRECISIONS, STYLE_PATTERN, check_style_strength, check_temporal, style_weights

DEFAULTS_VARIABLE = "video_style_transfer_defaults"
# Which input a run reads: the watcher sets them; an upload's metadata cannot.
INPUT_KEYS = ("input_blob", "input_version")

PARAMS = {
    "input_blob": Param("", type="string", minLength=1, maxLength=1024, title="Input video",
                        description="Blob name in the accepted container (an upload the watcher took in "
                        "from videos-in), e.g. holiday/beach.mp4"),
    "input_version": Param(None, type=["null", "string"], maxLength=64, title="Input version",
                           description="A snapshot of the accepted blob (the watcher pins the upload's); "
                           "empty: its current version"),
    "style": Param("19", type="string", pattern=STYLE_PATTERN,
                   title="Style", description="Built-in style 0-25, or a blend such as 3:0.5,12:0.5"),
    "model_blob": Param(None, type=["null", "string"], title="Own model",
                        description="A TransformerNet .pth in the styles container; replaces the style"),
    "style_image": Param(None, type=["null", "string"], maxLength=1024, title="Any picture as the style",
                         description="A picture (JPEG, PNG, WebP) in the styles container, e.g. wave.jpg; "
                         "replaces the style; its center square is what counts"),
    "style_strength": Param(1.0, type="number", minimum=0, maximum=1, title="Style strength",
                            description="1: fully styled; lower blends each frame back toward the original"),
    "max_side": Param(None, type=["null", "integer"], minimum=16, maximum=7680, title="Longest side (px)",
                      description="Scale down so the longer side is at most this; empty keeps the size"),
    "ranks": Param(2, type="integer", minimum=1, maximum=64, title="MPI ranks"),
    "backend": Param("local", type="string", enum=["local", "azureml"], title="Where to score"),
    "output_name": Param(None, type=["null", "string"], maxLength=1024, title="Output blob",
                         description="Name in videos-out; empty: <stem>.style-<style>.mp4, trip/beach.mp4 giving "
                         "trip/beach.style-19.mp4 (with a style picture: <stem>.image-<picture>.mp4)"),
    "segment_frames": Param(48, type="integer", minimum=1, maximum=10000, title="Frames per segment"),
    "precision": Param("auto", type="string", enum=list(PRECISIONS), title="Precision",
                       description="auto: fp16 on CUDA, bf16 on CPUs that have it, else fp32"),
    "temporal": Param(0, type="number", minimum=0, maximum=MAX_TEMPORAL, title="Steadier video (temporal smoothing)",
                      description="Less flicker where the picture stands still, for some more work per frame: "
                      "0 is off, 0.7 a good start (measured: docs/performance.md); moving parts stay sharp"),
    "delivery": Param(DEFAULT_DELIVERY, type="string", enum=list(DELIVERIES), title="Delivery encode",
                      description="The published video's encode: " + "; ".join(f"{name}: {d.why}" for name, d in
                                                                               DELIVERIES.items())
                      + " (measured: docs/performance.md)"),
    "hdr": Param(DEFAULT_HDR, type="string", enum=list(HDR_MODES), title="HDR input becomes",
                 description="For PQ or HLG input only: sdr tone-maps it to SDR BT.709 and tags it so; keep "
                 "writes the styled video back as 10-bit HDR with the source's tags and mastering metadata"),
    "max_duration": Param(3600, type="number", minimum=1, maximum=86400, title="Longest video accepted (s)"),
    "notify_email": Param(None, type=["null", "string"], title="E-mail to notify"),
    "azureml_nodes": Param(2, type="integer", minimum=1, maximum=100, title="Azure ML nodes",
                           description=f"Nodes of the shared cluster, one rank per GPU: {configured_cluster()}"),
}

SETTINGS = tuple(k for k in PARAMS if k not in INPUT_KEYS)


def _blob_name(name):
    return check_blob_name(name) if name else name


# What a setting must also be, beyond its Param's schema; each raises ValueError in one line.
RULES = {
    "style": style_weights,
    "style_strength": check_style_strength,
    "temporal": check_temporal,
    "model_blob": _blob_name,
    "style_image": _blob_name,
    "output_name": _blob_name,
}


class InvalidSettings(ValueError):
    """A setting that the schema refuses; the message names the key, in one line."""


def resolve(metadata: dict[str, str], defaults: dict | None) -> tuple[dict, dict[str, str]]:
    """(settings, where each came from: "metadata", "variable" or "default") for one upload;
    ``defaults`` is what ``check_defaults`` returned."""
    unknown = sorted(set(metadata) - set(SETTINGS), key=str.lower)
    if unknown:
        raise InvalidSettings(f"metadata key {unknown[0]!r} is not a setting (known: {', '.join(SETTINGS)})")
    settings, sources = {}, {}
    for key in SETTINGS:
        if key in metadata:
            settings[key], sources[key] = check(key, from_text(key, metadata[key]), "metadata"), "metadata"
        elif defaults and key in defaults:  # checked once by check_defaults
            settings[key], sources[key] = defaults[key], "variable"
        else:
            settings[key], sources[key] = PARAMS[key].value, "default"
    return check_together(settings, "settings"), sources


def check_defaults(defaults) -> dict:
    """The Variable's JSON object, each key a setting its schema accepts."""
    if defaults is None:
        return {}
    if not isinstance(defaults, dict):
        raise InvalidSettings(f"variable {DEFAULTS_VARIABLE} must be a JSON object of settings")
    unknown = sorted(set(defaults) - set(SETTINGS))
    if unknown:
        raise InvalidSettings(f"variable {DEFAULTS_VARIABLE}: {unknown[0]!r} is not a setting")
    return {key: check(key, value, f"variable {DEFAULTS_VARIABLE}") for key, value in defaults.items()}


def check(key: str, value, where: str):
    """``value`` if ``PARAMS[key]`` and ``RULES[key]`` accept it, else InvalidSettings naming
    the key and ``where``."""
    from airflow.sdk.definitions.param import ParamValidationError

    try:
        checked = copy.deepcopy(PARAMS[key]).resolve(value)
        if key in RULES and checked is not None:
            RULES[key](checked)
        return checked
    except (ParamValidationError, UserError, TypeError, ValueError) as exc:
        cause = exc.args[0] if exc.args else exc
        reason = getattr(cause, "message", str(cause)).splitlines()[0]
        raise InvalidSettings(f"{where}: {key}={json.dumps(value)} is refused: {rule_says(key, value) or reason}"
                              ) from None


def rule_says(key: str, value) -> str | None:
    """What the rule says of a value the schema refused: the scoring command's words (``unknown
    style 30: the built-in styles are 0-25``) say more than the schema's pattern does."""
    try:
        RULES[key](value) if key in RULES and value is not None else None
    except (UserError, TypeError, ValueError) as exc:
        return str(exc).splitlines()[0] if str(exc) else None
    return None


def check_together(settings: dict, where: str) -> dict:
    """``settings`` if no two of them contradict each other (what one key alone cannot say)."""
    if settings.get("model_blob") and settings.get("style_image"):
        raise InvalidSettings(f"{where}: style_image and model_blob each replace the style: give only one")
    return settings


def check_run(params: dict) -> None:
    """A run's settings (its Params as Airflow resolved them), by the same rules as an upload's:
    what the form's schema lets through (a style of weight 0, both a model and a picture)."""
    for key in SETTINGS:
        if key in params:
            check(key, params[key], "the run's settings")
    check_together(params, "the run's settings")


def from_text(key: str, text: str):
    """A metadata value as the type its Param wants; text that is not one is kept for the check to refuse."""
    types = PARAMS[key].schema.get("type")
    types = types if isinstance(types, list) else [types]
    if "null" in types and text.strip().lower() in ("", "none", "null"):
        return None
    for kind, parse in (("integer", int), ("number", float)):
        if kind in types:
            try:
                return parse(text)
            except ValueError:
                return text
    return text
