"""split: validate a video, cut it into segments of frames, note what the output must keep.

The segments hold the picture only, upright, progressive and (for HDR input, by default)
tone-mapped to SDR BT.709: re-encoded near-losslessly, or, where the source already is such
a picture in H.264 with IDR pictures close enough together, its own packets cut at them
(no generation lost, a fraction of the time and bytes). ``plan.json`` holds the source's streams, colour and shape, and
``frame-times.json`` the presentation time of every frame, for ``stitch``."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from fractions import Fraction
from pathlib import Path

from . import ffmpeg, tracks
from .colour import SDR_BT709, Colour, tone_map_filters
from .errors import UserError
from .files import atomic_path
from .segments import (DEFAULT_SEGMENT_FRAMES, SEGMENT_PATTERN, TIMES_FILE, Plan, Segment, segment_lengths,
                       segment_name)

# Near-lossless: the segments are an intermediate, styled once and thrown away. ultrafast
# splits faster than veryfast for more bytes at the same fidelity (docs/performance.md).
SPLIT_CRF = 12
SPLIT_PRESET = "ultrafast"
# What HDR input (PQ, HLG) becomes: "sdr" tone-maps it to SDR BT.709, tagged so; "keep" styles
# it tone-mapped too and writes the styled frames back as 10-bit HDR with the source's tags.
HDR_MODES = ("sdr", "keep")
DEFAULT_HDR = "sdr"


def split(source: Path | str, folder: Path | str, max_side: int | None = None,
          segment_frames: int = DEFAULT_SEGMENT_FRAMES, limits: ffmpeg.Limits = ffmpeg.Limits(),
          hdr: str = "sdr", info: ffmpeg.MediaInfo | None = None) -> Plan:
    """``info``: the source's probe under ``limits``, where the caller has it already."""
    source, folder = Path(source), Path(folder)
    info = info or ffmpeg.probe(source, limits)
    if info.kind != "video":
        raise UserError(f"{source.name} is a still image; `stylize` takes images, `split` takes videos")
    if segment_frames < 1:
        raise UserError(f"--segment-frames must be at least 1, got {segment_frames}")
    if max_side is not None and max_side < 16:
        raise UserError(f"--max-side must be at least 16 pixels, got {max_side}")
    if hdr not in HDR_MODES:
        raise UserError(f"--hdr must be one of {', '.join(HDR_MODES)}, got {hdr}")
    width, height = ffmpeg.output_size(info.width, info.height, max_side)
    fingerprint = _fingerprint(source, width, height, segment_frames, hdr)

    try:
        plan = Plan.load(folder)
        if plan.fingerprint in (fingerprint, _fingerprint(source, width, height, segment_frames, hdr, copied=True)):
            return plan  # already split: a rerun after a crash does no work twice
    except (UserError, ValueError, TypeError, KeyError):
        pass
    if folder.exists():
        shutil.rmtree(folder)  # another input's split, or an unfinished one: never mix them
    folder.mkdir(parents=True)

    media = tracks.describe(source)
    source_colour = Colour.from_dict(media["colour"])
    before, notes, colour = [], [], source_colour
    if media["interlaced"]:
        before.append("bwdif=mode=send_frame:deint=all")  # one frame per frame: the count and times stay
        notes.append(f"deinterlaced (bwdif; the source's fields were {media['field_order']})")
    hdr_output = mastering = None
    if source_colour.hdr:
        before += tone_map_filters(source_colour)
        colour = SDR_BT709
        if hdr == "keep":
            hdr_output, mastering = source_colour.to_dict(), media.get("mastering")
            named = {"display": "mastering display", "light": "content light level"}
            carried = (" and ".join(named[k] for k in mastering) + " carried as the source's" if mastering else
                       "the source declares no mastering display or content light level")
            notes.append(f"HDR ({source_colour.hdr}, {source_colour.primaries}) styled tone-mapped to SDR BT.709, "
                         f"written back as 10-bit HDR with the source's tags (SDR white at 203 cd/m²; {carried})")
        else:
            notes.append(f"HDR ({source_colour.hdr}, {source_colour.primaries}) tone-mapped to SDR BT.709")
    elif media["bits"] > 8:
        notes.append(f"{media['bits']}-bit picture styled and written in 8 bits")
    if media["rotation"]:
        notes.append(f"turned upright (rotation {media['rotation']}) in the pixels")
    # the display aspect stays the source's, whatever sizes the picture takes (odd sides made even)
    sar = tracks._ratio(media["sar"]) * Fraction(info.width, width) / Fraction(info.height, height)
    sar = sar.limit_denominator(10_000)
    if (width, height) != (info.width, info.height) and max_side is None:
        notes.append(f"{info.width}x{info.height} written as {width}x{height} (H.264 4:2:0 needs even sides), "
                     "display aspect kept")

    packets = tracks.video_packets(source, media["video_index"])
    shown = sum("D" not in flags for flags in packets.flags) or info.frames  # what an edit list discards is no frame
    lengths = (_copy_segments(source, folder, media["video_index"], packets.flags, segment_frames)
               if _copyable(info, media, (width, height), before) else None)
    copied = lengths is not None
    if copied:
        frames = sum(lengths)
        fingerprint = _fingerprint(source, width, height, segment_frames, hdr, copied=True)
    else:
        frames = _write_segments(source, folder, (width, height), info.frame_rate, segment_frames, colour, before)
        if frames < shown * 0.98:
            raise UserError(f"{source.name} is damaged: only {frames} of its {shown} frames could be decoded")
        lengths = segment_lengths(frames, segment_frames)
    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    timing = tracks.frame_times(source, media["video_index"], frames, packets)
    if timing:
        with atomic_path(folder / TIMES_FILE) as tmp:
            tmp.write_text(json.dumps(timing))
    else:
        notes.append("the source has no frame times: the output is timed at its frame rate")
    plan = Plan(source=asdict(info), width=width, height=height, frame_rate=info.frame_rate, frames=frames,
                segment_frames=segment_frames, audio=None, fingerprint=fingerprint,
                segments=[Segment(i, start, n) for i, (start, n) in enumerate(zip(starts, lengths))],
                media=media, colour=colour.to_dict(), hdr_output=hdr_output, mastering=mastering,
                sar=f"{sar.numerator}:{sar.denominator}",
                timestamps=TIMES_FILE if timing else None, notes=notes, copied=copied)
    plan.save(folder)  # written last: its presence means the split is complete
    return plan


def _write_segments(source: Path, folder: Path, size: tuple[int, int], rate: str, segment_frames: int,
                    colour: Colour, before: list[str]) -> int:
    """Decode once and encode the segments in the same ffmpeg (yuv420p throughout, as the
    encoder stores it: no RGB round trip, the chroma not resampled twice). The files are
    written in place: the plan, written after them, is what says the split is complete."""
    total = ffmpeg.encode_segments(source, folder, size, rate, segment_frames, SPLIT_CRF, SPLIT_PRESET,
                                   SEGMENT_PATTERN, colour, before)
    if total == 0:
        raise UserError(f"{source.name}: no frames could be decoded")
    written = sorted(path.name for path in folder.glob("seg-*.h264"))
    expected = [segment_name(i) for i in range(len(segment_lengths(total, segment_frames)))]
    if written != expected:
        raise RuntimeError(f"split wrote {len(written)} segments for {total} frames, expected {len(expected)}")
    return total


def _copyable(info: ffmpeg.MediaInfo, media: dict, size: tuple[int, int], before: list[str]) -> bool:
    """Whether the source's pictures already are what the ranks decode from a re-encoded split:
    8-bit 4:2:0 H.264 at the output size, upright, with no filter to apply (deinterlacing,
    tone mapping)."""
    return (info.video_codec == "h264" and media["pix_fmt"] == "yuv420p" and media["bits"] == 8 and not before
            and not media["rotation"] and size == (info.width, info.height))


def _copy_segments(source: Path, folder: Path, index: int, packets: list[str],
                   segment_frames: int) -> list[int] | None:
    """Cut stream ``index``'s own packets (``packets``: their flags, in decoding order) at its
    keyframes into segments of at least ``segment_frames`` frames (the last takes the rest)
    and return the frames of each. None,
    with no segment left in ``folder``, where that would make a segment over twice as long
    (keyframes far apart: the shares and a preempted node's loss would grow), an edit list
    hides packets, or a segment does not start at an IDR picture and decode alone to its
    frames: the split then re-encodes, as for any other source."""
    if not packets or "K" not in packets[0] or any("D" in flags for flags in packets):
        return None
    cuts: list[int] = []
    for number, flags in enumerate(packets):
        if "K" in flags and number - (cuts[-1] if cuts else 0) >= segment_frames:
            cuts.append(number)
    lengths = [end - start for start, end in zip([0, *cuts], [*cuts, len(packets)])]
    if max(lengths) > 2 * segment_frames:
        return None
    paths = [folder / segment_name(i) for i in range(len(lengths))]
    if ffmpeg.copy_segments(source, folder, index, cuts, SEGMENT_PATTERN) and sorted(folder.glob("seg-*")) == paths:
        with ThreadPoolExecutor(len(os.sched_getaffinity(0))) as pool:  # each decoder on one core
            decoded = list(pool.map(_decodes_alone, paths))
        if decoded == lengths:
            return lengths
    for path in folder.glob("seg-*"):
        path.unlink()
    return None


def _decodes_alone(segment: Path) -> int:
    """The frames a raw H.264 segment decodes to on its own; -1 where it does not start at an IDR picture."""
    return ffmpeg.decoded_frames(segment, "h264") if ffmpeg.starts_with_idr(segment) else -1


def _fingerprint(source: Path, width: int, height: int, segment_frames: int, hdr: str = "sdr",
                 copied: bool = False) -> str:
    stat = source.stat()
    facts = {"name": source.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
             "width": width, "height": height, "segment_frames": segment_frames, "layout": 2}
    if copied:  # cut elsewhere than a re-encoded split: never taken for one (nor its styled segments)
        facts["cut"] = "copy"
    if hdr != "sdr":
        facts["hdr"] = hdr
        facts["hdr_layout"] = 2  # the mastering metadata in the plan
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]
