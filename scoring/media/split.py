"""split: validate a video, cut it into segments of frames, keep its audio track once."""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
from dataclasses import asdict
from pathlib import Path

from . import ffmpeg
from .errors import UserError
from .files import atomic_path
from .segments import AUDIO_FILE, DEFAULT_SEGMENT_FRAMES, Plan, Segment, segment_lengths, segment_name

# Near-lossless: the segments are an intermediate, styled once and thrown away. ultrafast
# splits faster than veryfast for more bytes at the same fidelity (docs/performance.md).
SPLIT_CRF = 12
SPLIT_PRESET = "ultrafast"


def split(source: Path | str, folder: Path | str, max_side: int | None = None,
          segment_frames: int = DEFAULT_SEGMENT_FRAMES, limits: ffmpeg.Limits = ffmpeg.Limits()) -> Plan:
    source, folder = Path(source), Path(folder)
    info = ffmpeg.probe(source, limits)
    if info.kind != "video":
        raise UserError(f"{source.name} is a still image; `stylize` takes images, `split` takes videos")
    if segment_frames < 1:
        raise UserError(f"--segment-frames must be at least 1, got {segment_frames}")
    if max_side is not None and max_side < 16:
        raise UserError(f"--max-side must be at least 16 pixels, got {max_side}")
    width, height = ffmpeg.output_size(info.width, info.height, max_side)
    fingerprint = _fingerprint(source, width, height, segment_frames)

    try:
        plan = Plan.load(folder)
        if plan.fingerprint == fingerprint:
            return plan  # already split: a rerun after a crash does no work twice
    except (UserError, ValueError, TypeError, KeyError):
        pass
    if folder.exists():
        shutil.rmtree(folder)  # another input's split, or an unfinished one: never mix them
    folder.mkdir(parents=True)

    frames = _write_segments(source, folder, (width, height), info.frame_rate, segment_frames)
    if frames < info.frames * 0.98:
        raise UserError(f"{source.name} is damaged: only {frames} of its {info.frames} frames could be decoded")
    lengths = segment_lengths(frames, segment_frames)
    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    audio = None
    if info.has_audio:
        with atomic_path(folder / AUDIO_FILE) as tmp:
            ffmpeg.extract_audio(source, tmp)
        audio = AUDIO_FILE
    plan = Plan(source=asdict(info), width=width, height=height, frame_rate=info.frame_rate, frames=frames,
                segment_frames=segment_frames, audio=audio, fingerprint=fingerprint,
                segments=[Segment(i, start, n) for i, (start, n) in enumerate(zip(starts, lengths))])
    plan.save(folder)  # written last: its presence means the split is complete
    return plan


def _write_segments(source: Path, folder: Path, size: tuple[int, int], rate: str, segment_frames: int) -> int:
    """Decode once, streaming; start a new encoder every ``segment_frames`` frames."""
    step = max(d for d in range(1, 9) if segment_frames % d == 0)  # batches never straddle segments
    per_segment = segment_frames // step
    total = 0
    # yuv420p through the pipe, as the encoder stores it: no RGB round trip (faster, and the
    # chroma is not resampled twice)
    with ffmpeg.FrameReader(source, size, pix_fmt="yuv420p") as reader:
        batches = reader.batches(step)
        while (first := next(batches, None)) is not None:
            index = total // segment_frames
            with atomic_path(folder / segment_name(index)) as tmp:
                with ffmpeg.FrameWriter(tmp, size, rate, SPLIT_CRF, SPLIT_PRESET, pix_fmt="yuv420p") as writer:
                    for batch in itertools.chain([first], itertools.islice(batches, per_segment - 1)):
                        writer.write(batch)
            total += writer.frames
    if total == 0:
        raise UserError(f"{source.name}: no frames could be decoded")
    return total


def _fingerprint(source: Path, width: int, height: int, segment_frames: int) -> str:
    stat = source.stat()
    facts = {"name": source.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
             "width": width, "height": height, "segment_frames": segment_frames}
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]
