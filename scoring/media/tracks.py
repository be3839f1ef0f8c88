"""What an input carries besides the picture, and how the output keeps it.

``split`` describes the source (``describe``: every stream, its colour, shape and the
presentation time of every frame); ``stitch`` writes the styled picture with those times and
maps every other stream from the original file: audio copied where the container takes the
codec (else AAC at a matching bit rate), subtitles copied or converted (text to ``mov_text``
in MP4/MOV, ``mov_text`` to SubRip in Matroska), chapters, and the container's and streams'
metadata and disposition flags. What happened to each stream is reported (the manifest).
"""

from __future__ import annotations

import json
import math
import re
import shutil
import struct
import subprocess
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from . import ffmpeg
from .colour import Colour, mastering_from_side_data, mastering_params
from .delivery import DEFAULT_DELIVERY, DELIVERIES

TEXT_SUBTITLES = {"subrip", "srt", "ass", "ssa", "webvtt", "mov_text", "text"}
# Audio the mp4/mov muxers take as it is (FLAC in MP4 is experimental in ffmpeg 5.1: it becomes ALAC).
MOV_AUDIO = {"aac", "mp3", "mp2", "ac3", "eac3", "alac", "opus"}
LOSSLESS_AUDIO = {"flac", "truehd", "mlp", "wavpack", "tta", "ape"}
DISPOSITIONS = ("default", "dub", "original", "comment", "lyrics", "karaoke", "forced", "hearing_impaired",
                "visual_impaired", "clean_effects", "captions", "descriptions", "dependent", "metadata")
INTERLACED = {"tt", "bb", "tb", "bt"}


def ffprobe_json(path: Path | str, *entries: str) -> dict:
    cmd = [ffmpeg.ffmpeg_path("ffprobe"), "-v", "error", "-print_format", "json", *entries,
           *ffmpeg.input_args(), ffmpeg.file_arg(path)]
    result = subprocess.run(cmd, capture_output=True, text=True, errors="replace", stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise RuntimeError(f"ffprobe failed on {Path(path).name}: {result.stderr.strip()[-300:]}")
    return json.loads(result.stdout or "{}")


def describe(path: Path | str) -> dict:
    """Every stream of the source (compact), its chapters, the styled stream's index, colour,
    sample aspect ratio, rotation and whether it is interlaced."""
    facts = ffprobe_json(path, "-show_streams", "-show_chapters", "-show_format")
    streams = facts.get("streams", [])
    video = _styled_video(streams)
    rotation = next((int(float(d["rotation"])) for d in video.get("side_data_list", []) if "rotation" in d), 0)
    sar = _ratio(video.get("sample_aspect_ratio"))
    if rotation % 180:
        sar = 1 / sar  # ffmpeg turns the pictures upright when it decodes them
    colour = Colour.of_stream(video)
    return {
        "video_index": video["index"],
        "colour": colour.to_dict(),
        "mastering": mastering(path, video) if colour.hdr else None,
        "pix_fmt": video.get("pix_fmt"),
        "bits": int(video.get("bits_per_raw_sample") or (10 if "10" in str(video.get("pix_fmt")) else 8)),
        "sar": f"{sar.numerator}:{sar.denominator}",
        "rotation": rotation,
        "interlaced": video.get("field_order") in INTERLACED,
        "field_order": video.get("field_order"),
        "chapters": len(facts.get("chapters", [])),
        "start_time": float(facts.get("format", {}).get("start_time") or 0),
        "streams": [_compact(s) for s in streams],
    }


def video_colour(path: Path | str) -> Colour:
    """The colour of the stream ``describe`` styles, read alone (for pictures of a video)."""
    return Colour.of_stream(_styled_video(ffprobe_json(path, "-select_streams", "v", "-show_streams")["streams"]))


def _styled_video(streams: list[dict]) -> dict:
    """The first video stream that is not cover art: the one the pipeline styles."""
    return next(s for s in streams
                if s.get("codec_type") == "video" and not s.get("disposition", {}).get("attached_pic"))


def mastering(path: Path | str, video: dict) -> dict | None:
    """The HDR10 mastering display and content light level of the video stream: from the
    container (the stream's side data), else from its first frame (the bitstream's SEI, as far
    as this ffmpeg's decoder reads them)."""
    frames = ffprobe_json(path, "-select_streams", str(video["index"]), "-read_intervals", "%+#1",
                          "-show_frames", "-show_entries", "frame=side_data_list").get("frames") or [{}]
    return mastering_from_side_data(video.get("side_data_list", []) + frames[0].get("side_data_list", []))


def _compact(stream: dict) -> dict:
    tags = stream.get("tags", {})
    return {"index": stream["index"], "type": stream.get("codec_type"), "codec": stream.get("codec_name"),
            "tag": stream.get("codec_tag_string"),
            "language": tags.get("language"), "title": tags.get("title"),
            "channels": stream.get("channels"), "bit_rate": int(stream.get("bit_rate") or 0) or None,
            "attached_pic": bool(stream.get("disposition", {}).get("attached_pic")),
            "disposition": [k for k in DISPOSITIONS if stream.get("disposition", {}).get(k)]}


def _ratio(text) -> Fraction:
    num, _, den = str(text or "").replace("/", ":").partition(":")
    try:
        value = Fraction(int(num), int(den))
    except (ValueError, ZeroDivisionError):
        return Fraction(1)
    return value if value > 0 else Fraction(1)


# --------------------------------------------------------------------------- timing


@dataclass(frozen=True)
class Packets:
    """A stream's packets in decoding order, read without decoding: each one's flags (``K``: a
    keyframe, ``D``: one an edit list discards) and presentation time, in ``time_base``."""

    time_base: str | None
    flags: list[str]
    pts: list[int | None]


def video_packets(path: Path | str, index: int) -> Packets:
    """The packets of stream ``index``, in one read of the file."""
    facts = ffprobe_json(path, "-select_streams", str(index), "-show_entries", "packet=pts,flags:stream=time_base")
    packets = facts.get("packets", [])
    return Packets((facts.get("streams") or [{}])[0].get("time_base"), [str(p.get("flags", "")) for p in packets],
                   [p.get("pts") for p in packets])


def frame_times(path: Path | str, index: int, frames: int, packets: Packets | None = None) -> dict | None:
    """The presentation time of each of the ``frames`` frames the decoder gives for stream
    ``index``, in the stream's time base: from the packets (no decoding; ``packets`` where the
    caller has read them), in display order, less those an edit list discards; from the
    decoded frames where the packets do not add up. None where the input has no usable times
    (a raw stream)."""
    packets = packets or video_packets(path, index)
    pts = [pts for pts, flags in zip(packets.pts, packets.flags) if "D" not in flags]
    if len(pts) != frames or any(p is None for p in pts):
        decoded = ffprobe_json(path, "-select_streams", str(index), "-show_entries", "frame=best_effort_timestamp")
        pts = [f.get("best_effort_timestamp") for f in decoded.get("frames", [])]
    if len(pts) != frames or any(p is None for p in pts) or not packets.time_base:
        return None
    pts = sorted(int(p) for p in pts)
    if len(set(pts)) != len(pts):
        return None
    return {"time_base": packets.time_base, "pts": pts}


def shown_times(path: Path | str) -> list[float]:
    """When each picture of the first video stream is shown, in seconds from the file's start
    (the origin of ffmpeg's ``-ss``), in display order: from the packets, so nothing is decoded;
    empty packets and those an edit list discards are not pictures. Empty where the input has
    no times (a raw stream)."""
    facts = ffprobe_json(path, "-select_streams", "v:0", "-show_entries", "packet=pts_time,size,flags:format=start_time")
    start = _number(facts.get("format", {}).get("start_time")) or 0.0
    times = (_number(p.get("pts_time")) for p in facts.get("packets", [])
             if "D" not in str(p.get("flags", "")) and int(p.get("size") or 0) > 0)
    return sorted(max(0.0, t - start) for t in times if t is not None)


def _number(text) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def output_times(timing: dict, frame_rate: str) -> tuple[str, list[int]]:
    """The time base and times the output's frames get: the source's, exactly; or, where those
    are a constant rate rounded to the source's time base (Matroska's milliseconds), that rate
    exactly, in a time base that holds both it and the start: the output is then marked as
    constant rate as its source was, every time within half a tick of the source's."""
    base, pts = Fraction(timing["time_base"]), timing["pts"]
    rate = Fraction(frame_rate)
    start = pts[0] * base
    if all(abs((p - pts[0]) * base - i / rate) <= base / 2 for i, p in enumerate(pts)):
        ticks = math.lcm(rate.numerator, base.denominator)
        step, first = ticks / rate, start * ticks
        if step.denominator == 1 and first.denominator == 1:
            return f"1/{ticks}", [int(first + i * step) for i in range(len(pts))]
    return timing["time_base"], pts


def access_units(data: bytes) -> list[bytes]:
    """An H.264 Annex B stream cut into access units (one picture each): a unit starts at an
    access unit delimiter, SPS, PPS or SEI, or at a slice with first_mb_in_slice 0, once the
    unit before has had its picture. Every byte from the first start code on lands in exactly
    one unit, the stream's last NAL unit included; a unit without a picture (headers left at
    the end, a stream cut short) is an error, never a frame."""
    starts = [m.start() for m in re.finditer(b"\x00\x00\x01", data)]
    # each NAL unit from its start code (a 4-byte one's leading zero included) to the next's
    begins = [start - 1 if start and data[start - 1] == 0 else start for start in starts]
    units: list[list[int]] = []  # [first byte, end, whether it holds a picture]
    for n, start in enumerate(starts):
        end = begins[n + 1] if n + 1 < len(starts) else len(data)
        nal_type = data[start + 3] & 31 if start + 3 < len(data) else 0
        vcl = nal_type in (1, 5)
        first_slice = vcl and start + 4 < len(data) and data[start + 4] & 0x80
        picture = bool(units) and units[-1][2]
        if not units or (picture and (nal_type in (6, 7, 8, 9) or 14 <= nal_type <= 18 or first_slice)):
            units.append([begins[n], end, vcl])
        else:  # the unit goes on to this NAL unit's end
            units[-1][1], units[-1][2] = end, picture or vcl
    if units and not units[-1][2]:
        raise RuntimeError(f"the styled stream ends with {units[-1][1] - units[-1][0]} bytes that hold no picture")
    return [data[a:b] for a, b, _ in units]


def write_ivf(segments: list[Path], pts: list[int], time_base: str, size: tuple[int, int], out,
              frames: list[int] | None = None) -> int:
    """The styled H.264 pictures, each with its own presentation time, as an IVF stream (a
    32-byte header, then size, time and bytes per picture) that ffmpeg reads with the times.
    ``frames``: how many pictures each segment must hold (the plan's); a segment with more or
    fewer is an error, named, before anything is published."""
    num, den = (int(x) for x in time_base.split("/"))
    out.write(b"DKIF" + struct.pack("<HHIHHIIII", 0, 32, int.from_bytes(b"H264", "little"), size[0] & 0xFFFF,
                                    size[1] & 0xFFFF, den, num, len(pts), 0))
    written = 0
    for n, segment in enumerate(segments):
        units = access_units(Path(segment).read_bytes())
        if frames is not None and len(units) != frames[n]:
            raise RuntimeError(f"styled segment {Path(segment).name} holds {len(units)} pictures, "
                               f"its plan {frames[n]}")
        for unit in units:
            if written >= len(pts):
                raise RuntimeError("the styled segments hold more pictures than the source has frames")
            out.write(struct.pack("<Iq", len(unit), pts[written]))
            out.write(unit)
            written += 1
    if written != len(pts):
        raise RuntimeError(f"the styled segments hold {written} pictures, the source {len(pts)} frames")
    return written


# --------------------------------------------------------------------------- streams


def decide(stream: dict, video_index: int, container: str, chapters: int = 0) -> dict:
    """What the output does with one source stream: ``kept`` (copied), ``converted`` (to
    ``codec``) or ``dropped``, and why."""
    kind, codec = stream["type"], stream["codec"]
    mov = container in ("mp4", "mov")
    if stream["index"] == video_index:
        return {"action": "styled", "why": "the picture: styled frame by frame, at the source's frame times"}
    if kind == "video":
        if stream["attached_pic"]:
            return {"action": "dropped", "why": "cover art is not carried"}
        return {"action": "dropped", "why": "only the first video stream is styled"}
    if kind == "audio":
        if not mov or codec in MOV_AUDIO or (container == "mov" and str(codec).startswith("pcm_")):
            return {"action": "kept", "to": codec, "why": "copied as it is"}
        if codec in LOSSLESS_AUDIO or str(codec).startswith("pcm_"):
            return {"action": "converted", "to": "alac",
                    "why": f"{container.upper()} does not take {codec}: ALAC, lossless as the source"}
        rate = stream.get("bit_rate") or 64_000 * max(2, stream.get("channels") or 2)
        rate = min(max(rate, 128_000), 512_000)
        return {"action": "converted", "to": "aac", "bit_rate": rate,
                "why": f"{container.upper()} does not take {codec}: AAC at a matching bit rate"}
    if kind == "subtitle":
        if mov:
            if codec == "mov_text":
                return {"action": "kept", "to": codec, "why": "copied as it is"}
            if codec in TEXT_SUBTITLES:
                return {"action": "converted", "to": "mov_text", "why": f"{container.upper()} takes text "
                        "subtitles as mov_text"}
            return {"action": "dropped", "why": f"{container.upper()} takes no picture subtitles ({codec})"}
        if codec == "mov_text":
            return {"action": "converted", "to": "subrip", "why": "Matroska takes text subtitles as SubRip"}
        return {"action": "kept", "to": codec, "why": "copied as it is"}
    if kind == "data" and codec == "bin_data" and stream.get("tag") == "text" and chapters:
        return {"action": "converted", "to": "chapters", "why": "the chapter track: the chapters are written "
                "again from the source's chapter list"}
    if kind == "attachment" and not mov:
        return {"action": "kept", "to": codec, "why": "copied as it is"}
    return {"action": "dropped", "why": f"a {kind} stream ({codec}) has no place in the output"}


def _video_encode(chosen, plan, colour: Colour, container: str, encode: bool) -> list[str]:
    """The output options of the styled stream: copied, or (``encode``) encoded for delivery
    with the segments' own frame times (every frame once, in the source's time base), bit
    depth, colour tags and HDR10 metadata."""
    if not encode:
        return ["-c:v", "copy"]
    options = list(chosen.options)
    # the pixel format the segments decode to, 8 or 10 bits (full range: yuvj420p), never converted
    args = ["-fps_mode", "passthrough", "-enc_time_base", "-1", *colour.tag_args()]
    mastering = mastering_params(getattr(plan, "mastering", None), chosen.codec) if plan.hdr_output else ""
    if mastering:
        key = "-x264-params" if chosen.codec == "libx264" else "-x265-params"
        if key in options:
            at = options.index(key) + 1
            options[at] = f"{options[at]}:{mastering}"
        else:
            options += [key, mastering]
    if chosen.codec == "libx265" and container in ("mp4", "mov"):
        args += ["-tag:v", "hvc1"]  # the sample entry Apple's players take
    return [*options, *args]


def mux(segments: list[Path], plan, timing: dict | None, source: Path, target: Path, container: str,
        delivery: str = DEFAULT_DELIVERY, encode: bool = True) -> list[dict]:
    """Write ``target``: the styled segments with the source's frame times (``timing``, from
    ``frame_times``) and tags, encoded as ``delivery`` says (delivery.py) where ``encode``, else
    copied, and every other stream of ``source`` as ``decide`` says. Returns the report per
    source stream."""
    chosen = DELIVERIES[delivery]
    encoder = chosen.codec if encode and chosen.codec else None
    facts = plan.media
    colour = Colour.from_dict(plan.hdr_output or plan.colour)
    if timing:
        time_base, pts = output_times(timing, plan.frame_rate)
    report = []
    cmd = [ffmpeg.ffmpeg_path(), "-v", "error", "-nostdin", "-y", "-copyts"]
    if timing:
        cmd += ["-f", "ivf", *ffmpeg.input_args(), "-i", "pipe:0"]
    else:  # no frame times in the source (a raw stream): stamped at the frame rate
        cmd += ["-r", plan.frame_rate, "-f", "h264", *ffmpeg.input_args(), "-i", "pipe:0"]
    cmd += [*ffmpeg.input_args(), "-i", ffmpeg.file_arg(source), "-map", "0:v:0"]
    out_args: list[str] = []
    n = 0  # output stream index
    video_index = facts["video_index"]
    for stream in facts["streams"]:
        decision = decide(stream, video_index, container, facts["chapters"])
        if stream["index"] == video_index:
            decision = decision | {"delivery": delivery, "encoder": encoder or "copy", "delivery_why": chosen.why}
        report.append({k: stream[k] for k in ("index", "type", "codec", "language", "title")} | decision)
        if stream["index"] == video_index and plan.hdr_output:
            report[-1]["mastering"] = ({"action": "kept"} | plan.mastering if plan.mastering else
                                       {"action": "none", "why": "the source declares no HDR10 mastering metadata"})
        if stream["index"] == video_index or decision["action"] == "dropped" or decision["to"] == "chapters":
            continue
        n += 1
        # every mapped stream's tags named (language, title, ...): given one -map_metadata for a stream,
        # ffmpeg copies no other stream's by itself
        cmd += ["-map", f"1:{stream['index']}"]
        out_args += [f"-map_metadata:s:{n}", f"1:s:{stream['index']}"]
        if decision["action"] == "kept":
            out_args += [f"-c:{n}", "copy"]
        elif decision["to"] == "aac":
            out_args += [f"-c:{n}", "aac", f"-b:{n}", str(decision["bit_rate"])]
        else:
            out_args += [f"-c:{n}", decision["to"]]
    bsf = colour.h264_metadata()
    sar = Fraction(plan.sar.replace(":", "/")) if plan.sar else Fraction(1)
    if sar != 1:
        bsf.append(f"sample_aspect_ratio={sar.numerator}/{sar.denominator}")
    cmd += ["-map_metadata", "1", "-map_metadata:s:v:0", f"1:s:{video_index}", "-map_chapters", "1",
            *_video_encode(chosen, plan, colour, container, encoder is not None), *out_args]
    if bsf:
        cmd += ["-bsf:v", ("hevc" if encoder == "libx265" else "h264") + "_metadata=" + ":".join(bsf)]
    if sar != 1:
        cmd += ["-aspect:v:0", str(sar * plan.width / plan.height)]
    disposition = next(s["disposition"] for s in facts["streams"] if s["index"] == video_index)
    cmd += ["-disposition:v:0", "+".join(disposition) or "0"]
    if facts.get("start_time", 0) > 0:
        # times as players count them, from the source's start (MPEG-TS starts anywhere): every
        # stream moves by the same amount, so what starts later still starts later by as much
        cmd += ["-output_ts_offset", f"{-facts['start_time']:.6f}"]
    if container in ("mp4", "mov"):
        # a timescale of the time base's denominator makes every frame time a whole number of ticks
        timescale = Fraction(time_base).denominator if timing else Fraction(plan.frame_rate).numerator
        cmd += ["-movflags", "+faststart", "-video_track_timescale", str(timescale)]
    cmd += ["-f", container, ffmpeg.file_arg(target)]
    process = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        if timing:
            write_ivf(segments, pts, time_base, (plan.width, plan.height), process.stdin,
                      [s.frames for s in plan.segments])
        else:
            for segment in segments:
                with open(segment, "rb") as f:
                    shutil.copyfileobj(f, process.stdin, 1 << 20)
        process.stdin.close()
    except BrokenPipeError:
        pass
    except BaseException:
        ffmpeg._kill(process)
        raise
    stderr = process.stderr.read().decode(errors="replace")
    if process.wait() != 0:
        raise RuntimeError(f"ffmpeg could not join the segments: {stderr.strip()[-300:]}")
    return report
