"""stitch: join the styled segments in order, put the source's audio back, publish atomically."""

from __future__ import annotations

from pathlib import Path

from . import ffmpeg
from .errors import UserError
from .files import atomic_path
from .segments import Plan, done_marker


def stitch(segments_dir: Path | str, styled_dir: Path | str, output: Path | str) -> dict:
    segments_dir, styled_dir, output = Path(segments_dir), Path(styled_dir), Path(output)
    check_output_path(output)
    plan = Plan.load(segments_dir)
    missing = [s for s in plan.segments
               if not (styled_dir / s.name).is_file() or not done_marker(styled_dir, s).is_file()]
    if missing:
        raise UserError(f"{len(missing)} of {len(plan.segments)} segments are not styled yet "
                        f"(first: {missing[0].name}): run `score` again, it resumes")
    output.parent.mkdir(parents=True, exist_ok=True)
    audio = segments_dir / plan.audio if plan.audio else None
    with atomic_path(output) as tmp:
        ffmpeg.mux([styled_dir / s.name for s in plan.segments], plan.frame_rate, audio,
                  plan.source.get("audio_codec"), tmp, ffmpeg.VIDEO_SUFFIXES[output.suffix.lower()])
        frames = ffmpeg.count_frames(tmp)
        if frames != plan.frames:  # never publish a video with a frame lost or doubled
            raise RuntimeError(f"stitched video has {frames} frames, expected {plan.frames}")
    return {"output": str(output), "frames": frames, "frame_rate": plan.frame_rate,
            "audio": audio is not None, "size": f"{plan.width}x{plan.height}"}


def check_output_path(output: Path) -> None:
    if output.is_dir():
        raise UserError(f"output {output} is a folder; give a file name")
    if output.suffix.lower() not in ffmpeg.VIDEO_SUFFIXES:
        raise UserError(f"output {output.name} must end in one of {', '.join(sorted(ffmpeg.VIDEO_SUFFIXES))}")
