"""The settings of a processing run: the one schema, and where each value of a run comes from.

``PARAMS`` is the ``video_style_transfer`` DAG's Params: the trigger form shows them, and the
same definitions check the settings of automatic runs, which come, key by key, from the
upload's blob metadata, else from the Airflow Variable ``video_style_transfer_defaults`` (a JSON
object), else from the Param's default. Metadata values are text; each is read as the type its
Param wants (``style=7``, ``temporal=0.7``, ``max_side=none``) and then checked like a form entry.
"""

from __future__ import annotations

import copy
import json

from airflow.sdk import Param
from aml_backend.cluster import configured_cluster

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
    "style": Param("19", type="string", pattern=r"^\s*\d{1,2}(:[0-9.]+)?(\s*,\s*\d{1,2}(:[0-9.]+)?)*\s*$",
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
                         description="Name in videos-out; empty: <input>.style-<style>.mp4 "
                         "(with a style picture: <input>.image-<picture>.mp4)"),
    "segment_frames": Param(48, type="integer", minimum=1, maximum=10000, title="Frames per segment"),
    "precision": Param("auto", type="string", enum=["auto", "fp32", "bf16", "fp16"], title="Precision",
                       description="auto: fp16 on CUDA, bf16 on CPUs that have it, else fp32"),
    "temporal": Param(0, type="number", minimum=0, maximum=0.95, title="Steadier video (temporal smoothing)",
                      description="Less flicker where the picture stands still, for some more work per frame: "
                      "0 is off, 0.7 a good start (measured: docs/performance.md); moving parts stay sharp"),
    "max_duration": Param(3600, type="number", minimum=1, maximum=86400, title="Longest video accepted (s)"),
    "notify_email": Param(None, type=["null", "string"], title="E-mail to notify"),
    "azureml_nodes": Param(2, type="integer", minimum=1, maximum=100, title="Azure ML nodes",
                           description=f"Nodes of the shared cluster, one rank per GPU: {configured_cluster()}"),
}

SETTINGS = tuple(k for k in PARAMS if k not in INPUT_KEYS)


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
    return settings, sources


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
    """``value`` if ``PARAMS[key]`` accepts it, else InvalidSettings naming the key and ``where``."""
    from airflow.sdk.definitions.param import ParamValidationError

    try:
        return copy.deepcopy(PARAMS[key]).resolve(value)
    except (ParamValidationError, TypeError, ValueError) as exc:
        cause = exc.args[0] if exc.args else exc
        reason = getattr(cause, "message", str(cause)).splitlines()[0]
        raise InvalidSettings(f"{where}: {key}={json.dumps(value)} is refused: {reason}") from None


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
