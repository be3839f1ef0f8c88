"""Segments: the unit of work, how they are shared among ranks, and how they are stored.

A *segment* is a contiguous range of frames stored as its own raw H.264 stream. ``split``
writes the source's segments and a ``plan.json`` that lists them; ``score`` writes one
styled stream per segment plus a ``.done`` marker; ``stitch`` joins them in plan order.
Every file appears under its final name only once it is complete (``atomic_path``), so a
run killed at any moment leaves finished work and, at most, ignorable ``.partial`` files.
"""

from __future__ import annotations

import json
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import UserError
from .files import atomic_path

PLAN_FILE = "plan.json"
TIMES_FILE = "frame-times.json"
# The trade-off (docs/performance.md): 48 frames keep the per-segment start-up (two ffmpeg
# processes) small while a preempted node loses at most a few seconds of work per rank.
DEFAULT_SEGMENT_FRAMES = 48


@dataclass(frozen=True)
class Segment:
    index: int
    first_frame: int
    frames: int

    @property
    def name(self) -> str:
        return segment_name(self.index)


SEGMENT_PATTERN = "seg-%05d.h264"  # as ffmpeg numbers files


def segment_name(index: int) -> str:
    return SEGMENT_PATTERN % index


@dataclass
class Plan:
    """What split produced: enough for score and stitch to run anywhere, from the folder alone."""

    source: dict  # MediaInfo fields of the input
    width: int
    height: int
    frame_rate: str
    frames: int
    segment_frames: int
    segments: list[Segment]
    audio: str | None  # no longer written: stitch maps every stream from the source itself
    fingerprint: str  # identifies input + split parameters: a rerun reuses a matching split
    # tracks.describe's facts of the source: its streams, chapters, colour, shape
    media: dict | None = None
    colour: dict | None = None  # the colour of the segments (and of the output, unless hdr_output)
    hdr_output: dict | None = None  # --hdr keep: the HDR colour the styled frames are written back in
    mastering: dict | None = None  # --hdr keep: the source's HDR10 mastering display and light level, carried
    sar: str = "1:1"  # the output's sample aspect ratio (its display aspect is the source's)
    timestamps: str | None = None  # TIMES_FILE where the source has frame times
    notes: list[str] = field(default_factory=list)  # what was done to the picture (deinterlaced...)
    copied: bool = False  # the segments are the source's own H.264 packets, cut at its IDR pictures

    def save(self, folder: Path) -> None:
        with atomic_path(folder / PLAN_FILE) as tmp:
            tmp.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, folder: Path) -> Plan:
        path = Path(folder) / PLAN_FILE
        if not path.is_file():
            raise UserError(f"{folder} has no {PLAN_FILE}: run `python -m scoring split` first")
        data = json.loads(path.read_text())
        data["segments"] = [Segment(**s) for s in data["segments"]]
        return cls(**data)

    def share(self, ranks: int, rank: int) -> list[Segment]:
        """The segments rank ``rank`` of ``ranks`` styles: about an equal part of the frames."""
        return [self.segments[i] for i in share([s.frames for s in self.segments], ranks, rank)]

    def useful_ranks(self, ranks: int) -> int:
        """At most one rank per segment: a rank with no share would still start (torch, the
        network: seconds of CPU) and keep its half of the cores from the one that works."""
        return max(1, min(ranks, len(self.segments)))


def segment_lengths(total_frames: int, segment_frames: int) -> list[int]:
    """Cut ``total_frames`` into runs of ``segment_frames``; the last one takes the rest."""
    if segment_frames < 1:
        raise UserError(f"segment size must be at least 1 frame, got {segment_frames}")
    full, rest = divmod(total_frames, segment_frames)
    return [segment_frames] * full + ([rest] if rest else [])


def share(frames: Sequence[int], ranks: int, rank: int) -> range:
    """Rank ``rank``'s contiguous share of segments of these ``frames``: those whose middle
    frame falls in its equal part of all the frames. A share is within one segment of an equal
    part; segments of one length (a re-encoded split) share out by count, differing by at most one."""
    if not 0 <= rank < ranks:
        raise ValueError(f"rank {rank} outside 0..{ranks - 1}")
    total, start, owners = sum(frames), 0, []
    for length in frames:
        owners.append((2 * start + length) * ranks // (2 * total))  # the part that holds its middle frame
        start += length
    return range(bisect_left(owners, rank), bisect_left(owners, rank + 1))


def done_marker(folder: Path, segment: Segment) -> Path:
    return Path(folder) / f"{segment.name}.done"


def finished(folder: Path, segment: Segment, work_id: str) -> bool:
    """True if this styled segment is complete. ``work_id`` names the split and the model:
    finding another run's segments in the folder is an error, never a silent mix."""
    marker = done_marker(folder, segment)
    if not marker.is_file() or not (Path(folder) / segment.name).is_file():
        return False
    facts = json.loads(marker.read_text())
    if facts.get("work") != work_id:
        raise UserError(f"{folder} holds segments of another run ({facts.get('work')}): "
                        "use a new output folder for a new input or style")
    return facts.get("frames") == segment.frames


def mark_done(folder: Path, segment: Segment, work_id: str, seconds: float, delivery: str | None = None) -> None:
    """``delivery``: what the segment was encoded for (delivery.py), for the stitch to check."""
    facts = {"frames": segment.frames, "work": work_id, "seconds": round(seconds, 3)}
    with atomic_path(done_marker(folder, segment)) as tmp:
        tmp.write_text(json.dumps(facts | ({"delivery": delivery} if delivery else {})))


def scored_for(folder: Path, segment: Segment) -> str:
    """The delivery a styled segment was encoded for. A marker that does not say is from before
    the ranks encoded deliveries, when every segment was the intermediate: a mezzanine's."""
    return json.loads(done_marker(folder, segment).read_text()).get("delivery", "mezzanine")
