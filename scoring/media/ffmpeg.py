"""Everything that touches ffmpeg and ffprobe: probing, validation, frame pipes, muxing.

ffmpeg is always run with an argument list (never a shell string), so a file name can
never become a command; names that start with ``-`` are passed as ``file:NAME``. Every
ffmpeg and ffprobe that reads a file opens it through ``input_args``: local files and pipes
only (no network, no other protocol), and no demuxer that opens further files by itself
(playlists, concat lists, manifests), so an upload can only ever show its own bytes.
"""

from __future__ import annotations

import errno
import functools
import json
import math
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from .colour import Colour, hdr_from_sdr_filters, mastering_params, tone_map_filters
from .errors import UserError

IMAGE_FORMATS = {"image2", "png_pipe", "jpeg_pipe", "webp_pipe", "bmp_pipe", "tiff_pipe", "gif"}
VIDEO_SUFFIXES = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
# Demuxers that read other files or URLs named inside the input, or devices: never used on an input.
# The refusal names what the upload was (a playlist, a concat list...) in its one line.
REFUSED_DEMUXERS = {"hls": "a playlist (HLS .m3u8)", "concat": "a concat list (ffconcat)",
                    "dash": "a streaming manifest (DASH .mpd)", "imf": "a composition playlist (IMF)",
                    "webm_dash_manifest": "a streaming manifest (WebM DASH)", "lavfi": "a filter graph",
                    "sdp": "a session description (SDP)", "rtp": "a stream description (RTP)",
                    "rtsp": "a stream description (RTSP)"}
INPUT_PROTOCOLS = "file,pipe"


@dataclass(frozen=True)
class Limits:
    """Caps on what we accept, so one upload cannot take the cluster for a week."""

    max_pixels: int = 3840 * 2160
    max_duration: float = 3600.0
    max_frames: int = 200_000
    max_bytes: int = 20 * 1024**3


@dataclass(frozen=True)
class MediaInfo:
    """What probe learned about an input, as the JSON `probe` prints."""

    path: str
    kind: str  # "video" or "image"
    format: str
    width: int  # as displayed, after any rotation
    height: int
    frame_rate: str  # exact rational, e.g. "30000/1001"
    frames: int
    duration: float
    video_codec: str
    audio_codec: str | None
    size_bytes: int

    @property
    def has_audio(self) -> bool:
        return self.audio_codec is not None

    def to_json(self) -> str:
        return json.dumps(asdict(self) | {"has_audio": self.has_audio}, indent=2)


def ffmpeg_path(name: str = "ffmpeg") -> str:
    found = shutil.which(name)
    if not found:
        raise UserError(f"{name} is not installed (Debian: apt-get install ffmpeg)")
    return found


def file_arg(path: Path | str) -> str:
    """A path as an ffmpeg input/output argument that can never be read as an option."""
    return "file:" + os.fspath(path)


def input_args() -> list[str]:
    """Options that go before every ``-i`` (and ffprobe's input): local files and pipes only,
    and every demuxer but ``REFUSED_DEMUXERS``."""
    return ["-protocol_whitelist", INPUT_PROTOCOLS, "-format_whitelist", allowed_demuxers()]


@functools.lru_cache(maxsize=1)
def allowed_demuxers() -> str:
    """This ffmpeg's demuxers less the refused ones, as ``-format_whitelist`` takes them."""
    listing = subprocess.run([ffmpeg_path(), "-hide_banner", "-demuxers"], capture_output=True, text=True,
                             check=True, stdin=subprocess.DEVNULL).stdout
    names = []
    for line in listing.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] in ("D", "DE"):
            names += [name for name in fields[1].split(",") if name not in REFUSED_DEMUXERS]
    if not names:
        raise RuntimeError("ffmpeg -demuxers listed no demuxers")
    return ",".join(names)


def refused_input(path: Path, stderr: str) -> str | None:
    """The one line for an input that only a refused demuxer would open, else None."""
    found = re.search(r"\[(\w+) @ [^]]*\] Format not on whitelist", stderr)
    if not found:
        return None
    if found.group(1) == "hls" and _names_remote_urls(path):
        return f"{path.name} is a playlist of remote URLs (HLS .m3u8), not a video: URLs are never fetched; " \
               "upload the video file itself"
    what = REFUSED_DEMUXERS.get(found.group(1), f"a {found.group(1)} file")
    return f"{path.name} is {what}, not a video: upload the video file itself"


def _names_remote_urls(path: Path) -> bool:
    """Whether a playlist names a URL of any scheme but ``file``."""
    with open(path, "rb") as f:
        text = f.read(1 << 16).decode(errors="replace")
    scheme = r"([A-Za-z][A-Za-z0-9+.-]*)://"
    urls = re.findall(r"(?m)^\s*" + scheme, text) + re.findall(r'URI="' + scheme, text)
    return any(scheme.lower() != "file" for scheme in urls)


# --------------------------------------------------------------------------- probe


def probe(path: Path | str, limits: Limits = Limits()) -> MediaInfo:
    """Validate an input and describe it; raises UserError with one clear line if unusable."""
    path = Path(path)
    name = path.name
    if not path.exists():
        raise UserError(f"input not found: {path}")
    if not path.is_file():
        raise UserError(f"input is not a file: {path}")
    size = path.stat().st_size
    if size == 0:
        raise UserError(f"{name} is empty (0 bytes): upload the file again")
    if size > limits.max_bytes:
        raise UserError(f"{name} is {size / 1024**3:.1f} GiB; the limit is {limits.max_bytes / 1024**3:.1f} GiB")

    cmd = [ffmpeg_path("ffprobe"), "-v", "error", "-print_format", "json", "-show_format", "-show_streams",
           "-count_packets", *input_args(), file_arg(path)]
    result = subprocess.run(cmd, capture_output=True, text=True, errors="replace", stdin=subprocess.DEVNULL)
    facts = json.loads(result.stdout or "{}")
    if result.returncode != 0 or "format" not in facts:
        if refused := refused_input(path, result.stderr):
            raise UserError(refused)
        if "moov atom not found" in result.stderr and _looks_like_mp4(path):
            raise UserError(f"{name} is truncated or incomplete (no moov atom): upload the whole file again")
        raise UserError(f"{name} is not a video or image we can read ({_ffprobe_reason(result.stderr)})")

    streams = facts.get("streams", [])
    video = next((s for s in streams if s.get("codec_type") == "video" and not _is_cover_art(s)), None)
    audio = next((s for s in streams if s.get("codec_type") == "audio"), None)
    if video is None:
        what = "only audio" if audio else "no video stream"
        raise UserError(f"{name} has {what}: send a video or an image")

    fmt = facts["format"]
    kind = "image" if fmt.get("format_name") in IMAGE_FORMATS and int(video.get("nb_read_packets", 1)) <= 1 else "video"
    width, height = _display_size(video)
    if width <= 0 or height <= 0:
        raise UserError(f"{name} has a video stream without a picture size")
    if width * height > limits.max_pixels:
        raise UserError(f"{name} is {width}x{height} ({width * height / 1e6:.1f} MP); the limit is "
                        f"{limits.max_pixels / 1e6:.1f} MP per frame")
    if min(width, height) < 16:
        raise UserError(f"{name} is {width}x{height}; both sides need at least 16 pixels")

    frames = int(video.get("nb_read_packets") or 0)
    rate = _frame_rate(video)
    duration = float(fmt.get("duration") or video.get("duration") or 0.0)
    if kind == "video":
        if frames == 0:
            raise UserError(f"{name} has a video stream with no frames")
        declared = int(video.get("nb_frames") or 0)
        # one frame of slack: ffmpeg's AVI muxer declares one frame more than it writes when
        # there is an audio stream, and that file is whole
        if declared and declared - frames > max(1, declared * 0.02):
            raise UserError(f"{name} is truncated: its header declares {declared} frames but only {frames} are there")
        if duration <= 0:  # a raw stream: no container to say
            duration = float(frames / rate)
        if duration > limits.max_duration:
            raise UserError(f"{name} lasts {duration:.0f} s; the limit is {limits.max_duration:.0f} s")
        if frames > limits.max_frames:
            raise UserError(f"{name} has {frames} frames; the limit is {limits.max_frames}")
    return MediaInfo(
        path=str(path), kind=kind, format=fmt.get("format_name", "?"), width=width, height=height,
        frame_rate=f"{rate.numerator}/{rate.denominator}", frames=max(frames, 1), duration=duration,
        video_codec=video.get("codec_name", "?"), audio_codec=audio.get("codec_name") if audio else None,
        size_bytes=size,
    )


def _looks_like_mp4(path: Path) -> bool:
    """An ISO media file starts with a box such as ftyp; random bytes or text do not."""
    with open(path, "rb") as f:
        return f.read(8)[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip")


def _ffprobe_reason(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    reason = lines[-1] if lines else "ffprobe found no streams"
    # ffprobe prefixes the file name; the user knows which file it was.
    return reason.split(": ", 1)[-1][:160]


def _is_cover_art(stream: dict) -> bool:
    return bool(stream.get("disposition", {}).get("attached_pic"))


def _display_size(video: dict) -> tuple[int, int]:
    width, height = int(video.get("width") or 0), int(video.get("height") or 0)
    rotation = next((int(float(d.get("rotation", 0))) for d in video.get("side_data_list", []) if "rotation" in d), 0)
    if rotation % 180:
        width, height = height, width  # ffmpeg auto-rotates when decoding
    return width, height


def _frame_rate(video: dict) -> Fraction:
    for key in ("avg_frame_rate", "r_frame_rate"):
        num, _, den = str(video.get(key, "0/0")).partition("/")
        if int(num or 0) > 0 and int(den or 0) > 0:
            rate = Fraction(int(num), int(den))
            if 0.1 <= rate <= 1000:
                return rate.limit_denominator(100_000)
    return Fraction(25)


# --------------------------------------------------------------------------- sizes


def output_size(width: int, height: int, max_side: int | None, even: bool = True) -> tuple[int, int]:
    """Frame size after capping the longer side, aspect kept; even sides for yuv420p video."""
    scale = min(1.0, max_side / max(width, height)) if max_side else 1.0
    step = 2 if even else 1
    return tuple(max(step, int(side * scale / step + 1e-9) * step) for side in (width, height))  # never above the cap


# --------------------------------------------------------------------------- frame pipes


class _FfmpegPipe:
    """An ffmpeg process fed or drained through a pipe: closed (and checked) when the block
    ends normally, killed when it ends with an exception."""

    process: subprocess.Popen

    def close(self) -> None:
        raise NotImplementedError

    def kill(self) -> None:
        _kill(self.process)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type:
            self.kill()
        else:
            self.close()


# How a frame of each raw pixel format lies in memory: rgb24 as [H, W, 3]; yuv420p as its three
# planes one after the other, W x H of luma and two of chroma at half size, seen as [H * 3/2, W].
FRAME_SHAPES = {"rgb24": lambda w, h: (h, w, 3), "yuv420p": lambda w, h: (h * 3 // 2, w)}


def decode_args(source: Path | str, size: tuple[int, int], input_format: str | None = None, threads: int = 0,
                pix_fmt: str = "rgb24", colour: Colour | None = None, before: list[str] = (),
                after: list[str] = ()) -> list[str]:
    """The input and filters that decode ``source``'s first video stream at ``size``: the
    ``before`` filters, a bicubic scale that converts from ``colour``'s matrix and range (and
    keeps them where ``pix_fmt`` stays YUV), then the ``after`` filters."""
    width, height = size
    scale = f"scale={width}:{height}:flags=bicubic"
    if colour:
        scale += f":in_color_matrix={colour.sws_matrix}:in_range={colour.sws_range}"
        if pix_fmt != "rgb24":
            scale += f":out_color_matrix={colour.sws_matrix}:out_range={colour.sws_range}"
    return ["-threads", str(threads), *(["-f", input_format] if input_format else []), *input_args(),
            "-i", file_arg(source), "-map", "0:v:0", "-an", "-sn", "-dn", "-vf", ",".join([*before, scale, *after])]


def x264_args(crf: int, preset: str, pix_fmt: str = "yuv420p", colour: Colour | None = None,
              threads: int = 0) -> list[str]:
    """libx264 at ``preset`` and ``crf`` with no B-frames (every picture in display order, so
    a joined stream takes its frame times from the order alone), tagged with ``colour``."""
    return ["-c:v", "libx264", "-preset", preset, "-crf", str(crf), "-bf", "0", "-pix_fmt", pix_fmt,
            *(colour.tag_args() if colour else []), "-threads", str(threads)]


# How ffmpeg reports a failure to write its output (the first such line names the cause, e.g.
# "av_interleaved_write_frame(): No space left on device"), and the errno of each cause.
_WRITE_FAILURE = re.compile(r"^(?:av_interleaved_write_frame\(\)|Error writing trailer of .*?|Error closing file .*?)"
                            r": (.+)$", re.MULTILINE)
_ERRNO = {os.strerror(code): code for code in errno.errorcode}


def encode_segments(source: Path | str, folder: Path | str, size: tuple[int, int], rate: str, segment_frames: int,
                    crf: int, preset: str, pattern: str, colour: Colour | None = None,
                    before: list[str] = ()) -> int:
    """Decode ``source`` and encode it as raw H.264 segments of ``segment_frames`` frames each
    (the last one takes the rest), named by ``pattern`` from 0, in one ffmpeg: the decoder,
    the filters and x264 run in ffmpeg's own threads and no frame passes through Python.

    Every segment starts with an IDR picture carrying its parameter sets, so it decodes alone.
    The frames are retimed one after another at ``rate`` (as the raw segments are read back),
    and the segment muxer cuts at the IDR pictures, forced on every ``segment_frames``-th
    frame. Returns the frames encoded."""
    num, _, den = rate.partition("/")
    den = den or "1"
    # one tick per frame, frames one after another: the encoder's time base is a frame (-r)
    after = [f"settb={den}/{num}", "setpts=N"]
    seconds = Fraction(segment_frames * int(den), int(num))
    # The muxer cuts at the first IDR picture at or after k x segment_time (in µs, rounded down
    # here so that it never passes frame k x segment_frames); half a frame of slack keeps the
    # IDR picture a frame before out of reach, and anything a rounding can do within reach.
    cut_every = math.floor(seconds * 1_000_000) / 1_000_000
    slack = float(Fraction(int(den), int(num)) / 2)
    cmd = [ffmpeg_path(), "-v", "error", "-nostdin", "-y",
           *decode_args(source, size, pix_fmt="yuv420p", colour=colour, before=before, after=after),
           "-fps_mode", "passthrough", "-r", rate, *x264_args(crf, preset, "yuv420p", colour),
           "-force_key_frames", f"expr:eq(mod(n,{segment_frames}),0)", "-forced-idr", "1",
           "-g", str(segment_frames), "-sc_threshold", "0", "-bsf:v", "dump_extra=freq=keyframe",
           "-f", "segment", "-segment_format", "h264", "-segment_time", f"{cut_every:.6f}",
           "-segment_time_delta", f"{slack:.6f}", "-progress", "pipe:1", "-nostats", str(Path(folder) / pattern)]
    result = subprocess.run(cmd, capture_output=True, text=True, errors="replace", stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        if written := _WRITE_FAILURE.search(result.stderr):  # our disk, not the input
            reason = written.group(1).strip()
            raise OSError(_ERRNO.get(reason, errno.EIO), f"cannot write the segments: {reason}", str(folder))
        raise UserError(f"cannot decode video: {_ffprobe_reason(result.stderr)}")
    counts = re.findall(r"^frame=(\d+)$", result.stdout, re.MULTILINE)
    return int(counts[-1]) if counts else 0


def copy_segments(source: Path | str, folder: Path | str, index: int, cuts: list[int], pattern: str) -> bool:
    """Stream ``index`` of ``source`` (H.264) as raw H.264 segments named by ``pattern`` from 0,
    its packets copied as they are: a new segment starts at each packet numbered in ``cuts``
    (in decoding order; keyframes), and the parameter sets go before every keyframe, so that a
    segment that starts at an IDR picture decodes alone. False where ffmpeg fails."""
    output = ["-f", "segment", "-segment_format", "h264", "-segment_frames", ",".join(map(str, cuts)),
              str(Path(folder) / pattern)] if cuts else ["-f", "h264", str(Path(folder) / (pattern % 0))]
    cmd = [ffmpeg_path(), "-v", "error", "-nostdin", "-y", *input_args(), "-i", file_arg(source),
           "-map", f"0:{index}", "-c:v", "copy", "-bsf:v", "h264_mp4toannexb,dump_extra=freq=keyframe", *output]
    return subprocess.run(cmd, capture_output=True, stdin=subprocess.DEVNULL).returncode == 0


# H.264 NAL unit types: the slices of a picture, and of an IDR picture (after which no picture
# refers to one before it)
_SLICE, _IDR_SLICE = 1, 5


def starts_with_idr(path: Path | str, window: int = 1 << 20) -> bool:
    """Whether the first picture of a raw H.264 stream is an IDR picture: from the type of its
    first slice's NAL unit, past the parameter sets and SEI before it."""
    with open(path, "rb") as f:
        data = f.read(window)
    at = data.find(b"\x00\x00\x01")
    while 0 <= at < len(data) - 3:
        kind = data[at + 3] & 0x1F
        if _SLICE <= kind <= _IDR_SLICE:
            return kind == _IDR_SLICE
        at = data.find(b"\x00\x00\x01", at + 3)
    return False


class FrameReader(_FfmpegPipe):
    """Decodes a video into batches of frames through a pipe: RGB ``uint8 [N, H, W, 3]``, or
    ``yuv420p`` (``[N, H * 3/2, W]``) where the frames only pass through to an encoder."""

    def __init__(self, source: Path | str, size: tuple[int, int], input_format: str | None = None, threads: int = 0,
                 pix_fmt: str = "rgb24", colour: Colour | None = None, before: list[str] = ()):
        """``colour``: the matrix and range of the decoded YUV (for the conversion to RGB, and
        kept as they are when ``pix_fmt`` is yuv420p); ``before``: filters applied first
        (deinterlacing, tone mapping)."""
        self.width, self.height = size
        self.frame_shape = FRAME_SHAPES[pix_fmt](self.width, self.height)
        cmd = [ffmpeg_path(), "-v", "error", "-nostdin",
               *decode_args(source, size, input_format, threads, pix_fmt, colour, before),
               "-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", pix_fmt, "pipe:1"]
        self.process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.drained = False

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """Read straight into fresh numpy buffers (writable, no extra copy)."""
        frame_bytes = math.prod(self.frame_shape)
        while True:
            buffer = np.empty((batch_size, *self.frame_shape), np.uint8)
            filled = _read_into(self.process.stdout, memoryview(buffer).cast("B"))
            frames, torn = divmod(filled, frame_bytes)
            if torn:
                raise RuntimeError("ffmpeg decoder stopped in the middle of a frame")
            if frames:
                yield buffer[:frames]
            if frames < batch_size:
                self.drained = True
                return

    def close(self) -> None:
        """Wait for the decoder; raise if it failed (a broken input must not pass silently).
        Left before the end, the decoder is stopped instead: it would fail on the closed pipe."""
        if not self.drained:
            self.kill()
            return
        self.process.stdout.close()
        stderr = self.process.stderr.read().decode(errors="replace")
        if self.process.wait() != 0:
            raise UserError(f"cannot decode video: {_ffprobe_reason(stderr)}")


class FrameWriter(_FfmpegPipe):
    """Encodes frames (RGB, or ``pix_fmt`` as ``FrameReader`` gives them) to raw H.264 (an
    elementary stream joins another by concatenation).

    B-frames are off so that every segment's pictures are in display order and a joined
    stream can be given its frame times from the order alone.
    """

    def __init__(self, target: Path | str, size: tuple[int, int], frame_rate: str, crf: int, preset: str,
                 threads: int = 0, pix_fmt: str = "rgb24", colour: Colour | None = None,
                 hdr: Colour | None = None, mastering: dict | None = None):
        """``colour``: the matrix and range RGB frames are converted with, and the tags the
        stream carries (none where ``colour`` is None or unknown). ``hdr``: RGB frames in SDR
        BT.709 are written as this HDR signal instead, in 10 bits (High 10), with ``mastering``
        (colour.mastering_from_side_data) as its SEI."""
        self.width, self.height = size
        cmd = [ffmpeg_path(), "-v", "error", "-nostdin", "-y", "-f", "rawvideo", "-pix_fmt", pix_fmt,
               "-s", f"{self.width}x{self.height}", "-framerate", frame_rate, "-i", "pipe:0"]
        out_pix_fmt = "yuv420p"
        if hdr and pix_fmt == "rgb24":
            cmd += ["-vf", ",".join(hdr_from_sdr_filters(hdr))]
            colour, out_pix_fmt = hdr, "yuv420p10le"
        elif colour and pix_fmt == "rgb24":
            cmd += ["-vf", f"scale=out_color_matrix={colour.sws_matrix}:out_range={colour.sws_range}"]
        if hdr and mastering:
            cmd += ["-x264-params", mastering_params(mastering, "libx264")]
        cmd += [*x264_args(crf, preset, out_pix_fmt, colour, threads), "-f", "h264", file_arg(target)]
        self.process = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.frames = 0

    def write(self, frames: np.ndarray) -> None:
        self.process.stdin.write(np.ascontiguousarray(frames, dtype=np.uint8).data)
        self.frames += len(frames)

    def close(self) -> None:
        self.process.stdin.close()
        stderr = self.process.stderr.read().decode(errors="replace")
        if self.process.wait() != 0:
            raise RuntimeError(f"ffmpeg encoder failed: {stderr.strip()[-300:]}")



def grab_frames(source: Path | str, times: list[float], size: tuple[int, int], colour: Colour | None = None
                ) -> np.ndarray:
    """The frames shown at ``times`` (seconds) as ``uint8 [N, H, W, 3]``: one short ffmpeg
    per frame, seeking in the input, so a long video is never decoded whole. An HDR source
    (``colour``, the source's) is tone-mapped to SDR as split does it: what the network sees,
    and what an SDR picture can show."""
    width, height = size
    filters = [*(tone_map_filters(colour) if colour and colour.hdr else []), f"scale={width}:{height}:flags=bicubic"]
    frames = np.empty((len(times), height, width, 3), np.uint8)
    for n, time in enumerate(times):
        cmd = [ffmpeg_path(), "-v", "error", "-nostdin", "-ss", f"{max(0.0, time):.3f}", *input_args(),
               "-i", file_arg(source), "-map", "0:v:0", "-frames:v", "1", "-vf", ",".join(filters),
               "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"]
        result = subprocess.run(cmd, capture_output=True, stdin=subprocess.DEVNULL)
        if result.returncode != 0 or len(result.stdout) != frames[n].nbytes:
            reason = _ffprobe_reason(result.stderr.decode(errors="replace")) if result.returncode else "no frame there"
            raise UserError(f"cannot decode the frame at {time:.2f} s: {reason}")
        frames[n] = np.frombuffer(result.stdout, np.uint8).reshape(height, width, 3)
    return frames


def _read_into(stream, view: memoryview) -> int:
    filled = 0
    while filled < len(view):
        n = stream.readinto(view[filled:])
        if not n:
            break
        filled += n
    return filled


def _kill(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
    process.wait()
    for stream in (process.stdin, process.stdout, process.stderr):
        if stream:
            stream.close()


# --------------------------------------------------------------------------- counting


def count_frames(path: Path | str) -> int:
    """Video frames in a file, counted from its packets (no decoding)."""
    cmd = [ffmpeg_path("ffprobe"), "-v", "error", "-select_streams", "v:0", "-count_packets",
           "-show_entries", "stream=nb_read_packets", "-of", "csv=p=0", *input_args(), file_arg(path)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, stdin=subprocess.DEVNULL).stdout
    return int(out.strip().split(",")[0] or 0)


def decoded_frames(path: Path | str, input_format: str | None = None) -> int:
    """Video frames a file decodes to, every picture decoded on one thread (run several at once)."""
    cmd = [ffmpeg_path("ffprobe"), "-v", "error", "-threads", "1", *(["-f", input_format] if input_format else []),
           "-select_streams", "v:0", "-count_frames", "-show_entries", "stream=nb_read_frames", "-of", "csv=p=0",
           *input_args(), file_arg(path)]
    first = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL).stdout.strip().split(",")[0]
    return int(first) if first.isdigit() else 0


def _run_ffmpeg(args: list[str], what: str) -> None:
    cmd = [ffmpeg_path(), "-v", "error", "-nostdin", "-y", *args]
    result = subprocess.run(cmd, capture_output=True, text=True, errors="replace", stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise RuntimeError(f"ffmpeg could not {what}: {result.stderr.strip()[-300:]}")
