"""stitch: join the styled segments in order at the source's frame times, map every other
stream of the source (tracks.py), check, and publish atomically."""

from __future__ import annotations

import json
from pathlib import Path

from . import ffmpeg, tracks
from .delivery import DEFAULT_DELIVERY, DELIVERIES, needs_encode
from .errors import UserError
from .files import atomic_path
from .segments import Plan, done_marker, scored_for


def stitch(segments_dir: Path | str, styled_dir: Path | str, output: Path | str,
           source: Path | str | None = None, delivery: str = DEFAULT_DELIVERY) -> dict:
    """``source``: the input the split was made from (default: where split read it), whose
    audio, subtitles, chapters and metadata the output takes; ``delivery``: the published
    video's encode (delivery.py)."""
    segments_dir, styled_dir, output = Path(segments_dir), Path(styled_dir), Path(output)
    check_output_path(output)
    check_delivery(delivery)
    plan = Plan.load(segments_dir)
    missing = [s for s in plan.segments
               if not (styled_dir / s.name).is_file() or not done_marker(styled_dir, s).is_file()]
    if missing:
        raise UserError(f"{len(missing)} of {len(plan.segments)} segments are not styled yet "
                        f"(first: {missing[0].name}): run `score` again, it resumes")
    if plan.media is None:
        raise UserError(f"{segments_dir} was split by an older version: run `split` again")
    source = Path(source or plan.source["path"])
    if not source.is_file():
        raise UserError(f"the source {source} is not there: give it with --source (stitch takes its audio, "
                        "subtitles and metadata from it)")
    if source.stat().st_size != plan.source["size_bytes"]:
        raise UserError(f"{source.name} is not the video {segments_dir} was split from (its size differs)")
    timing = json.loads((segments_dir / plan.timestamps).read_text()) if plan.timestamps else None
    output.parent.mkdir(parents=True, exist_ok=True)
    encode = needs_encode(delivery, {scored_for(styled_dir, s) for s in plan.segments})
    with atomic_path(output) as tmp:
        streams = tracks.mux([styled_dir / s.name for s in plan.segments], plan, timing, source, tmp,
                             ffmpeg.VIDEO_SUFFIXES[output.suffix.lower()], delivery, encode)
        frames = ffmpeg.count_frames(tmp)
        if frames != plan.frames:  # never publish a video with a frame lost or doubled
            raise RuntimeError(f"stitched video has {frames} frames, expected {plan.frames}")
    for stream in streams:
        if stream["action"] == "styled":  # where the published picture was encoded
            stream["encoded_by"] = "the stitch" if encode else "the ranks, as they styled"
    kept = [s for s in streams if s["action"] != "dropped" and s["type"] == "audio"]
    return {"output": str(output), "frames": frames, "frame_rate": plan.frame_rate,
            "audio": bool(kept), "size": f"{plan.width}x{plan.height}", "sar": plan.sar,
            "colour": plan.hdr_output or plan.colour, "frame_times": "source" if timing else "frame rate",
            "picture": plan.notes, "streams": streams}


def check_output_path(output: Path) -> None:
    if output.is_dir():
        raise UserError(f"output {output} is a folder; give a file name")
    if output.suffix.lower() not in ffmpeg.VIDEO_SUFFIXES:
        raise UserError(f"output {output.name} must end in one of {', '.join(sorted(ffmpeg.VIDEO_SUFFIXES))}")


def check_delivery(delivery: str) -> None:
    if delivery not in DELIVERIES:
        raise UserError(f"--delivery must be one of {', '.join(DELIVERIES)}, got {delivery}")
