"""The delivery encode: size against quality of the published video, per encoder setting.

    python bench/delivery.py                              # ../shared/media/car-detection.mp4, 100 frames
    python bench/delivery.py --clip my.mp4 --frames 48 --max-side 320

The clip's first ``--frames`` frames are styled by ``python -m scoring stylize`` losslessly
(``--crf 0 --delivery mezzanine``: the network's own frames, in the yuv420p the output carries),
plain and with ``--temporal``. Two kinds of candidate encode them, as the pipeline can:

- **by the ranks**: the network's frames encoded once, as a rank does when it styles a segment
  (x264 without B-frames: tracks.write_ivf gives the pictures their frame times in order);
  the stitch copies them. ``--delivery web`` is this kind.
- **by the stitch**: the intermediate segments made first (x264 at ``delivery.STYLED_PRESET``
  / ``STYLED_CRF``, no B-frames: ``--delivery mezzanine`` as it is published), then encoded
  again, B-frames allowed, as the stitch does for ``--delivery hevc``.

Each row: the output's bytes per second of input, PSNR and SSIM against the network's own
frames (ffmpeg's psnr and ssim filters on yuv420p; VMAF where this ffmpeg has libvmaf), the
encoder's CPU seconds (for a stitch's encode, the decode of the segments included), and the
size against the intermediate segments.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scoring.media import ffmpeg  # noqa: E402
from scoring.media.delivery import DELIVERIES, STYLED_CRF, STYLED_PRESET, segment_encode  # noqa: E402

SHARED_CLIP = REPO.parent / "shared" / "media" / "car-detection.mp4"
TODAY = "intermediate segments (--delivery mezzanine)"


def x264(preset: str, crf: int, bframes: int = 0) -> list[str]:
    return ["-c:v", "libx264", "-preset", preset, "-crf", str(crf), "-bf", str(bframes)]


def x265(crf: int) -> list[str]:
    return ["-c:v", "libx265", "-preset", "medium", "-crf", str(crf), "-x265-params", "log-level=error"]


# name: encoder options applied to the network's frames (a rank's encode: never B-frames)
BY_THE_RANKS = {f"x264 {preset} crf {crf}, by the ranks": x264(preset, crf)
                for preset, crf in (("veryfast", 19), ("veryfast", 20), ("faster", 20), ("faster", 21), ("fast", 20),
                                    ("medium", 18), ("medium", 20), ("medium", 21), ("medium", 22), ("medium", 23),
                                    ("slow", 21))}
# name: encoder options applied to the intermediate segments (a stitch's encode)
BY_THE_STITCH = {
    "x264 medium crf 18 bf 3, by the stitch": x264("medium", 18, 3),
    "x264 medium crf 20 bf 3, by the stitch": x264("medium", 20, 3),
    "x265 medium crf 18, by the stitch": x265(18),
    "x265 medium crf 20, by the stitch": x265(20),
}
CANDIDATES = BY_THE_RANKS | BY_THE_STITCH


def deliveries() -> dict[str, tuple[bool, list[str]]]:
    """Each delivery that encodes: ``--delivery NAME``: (by the ranks, its encoder options)."""
    chosen = {}
    for name, delivery in DELIVERIES.items():
        if delivery.segments:
            chosen[f"--delivery {name}"] = (True, x264(*segment_encode(name)))
        elif delivery.codec:
            chosen[f"--delivery {name}"] = (False, list(delivery.options))
    return chosen


def run(cmd: list[str]) -> str:
    result = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise SystemExit(f"failed: {' '.join(map(str, cmd))}\n{result.stderr[-2000:]}")
    return result.stderr


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def encode(source: Path, target: Path, options: list[str]) -> float:
    """``source``'s video encoded with ``options``; the encoder's CPU seconds (decode included)."""
    before = cpu_seconds()
    run(["ffmpeg", "-v", "error", "-nostdin", "-y", "-i", str(source), "-map", "0:v:0", "-fps_mode", "passthrough",
         "-pix_fmt", "yuv420p", *options, "-threads", "1", "-f", "mp4", str(target)])
    return cpu_seconds() - before


def has_vmaf() -> bool:
    filters = subprocess.run(["ffmpeg", "-hide_banner", "-filters"], capture_output=True, text=True).stdout
    return " libvmaf " in filters


def quality(output: Path, reference: Path, vmaf: bool) -> dict:
    graph = "[0:v]split=3[a0][a1][a2];[1:v]split=3[b0][b1][b2];[a0][b0]psnr;[a1][b1]ssim"
    graph += ";[a2][b2]libvmaf" if vmaf else ";[a2]nullsink;[b2]nullsink"
    log = run(["ffmpeg", "-v", "info", "-nostdin", "-i", str(output), "-i", str(reference), "-lavfi", graph,
               "-f", "null", "-"])
    facts = {"psnr": float(re.search(r"PSNR .*average:([\d.]+|inf)", log).group(1)),
             "ssim": float(re.search(r"SSIM .*All:([\d.]+)", log).group(1))}
    if vmaf:
        facts["vmaf"] = float(re.search(r"VMAF score: ([\d.]+)", log).group(1))
    return facts


def video_bytes(path: Path) -> int:
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "packet=size",
                          "-of", "csv=p=0", str(path)], capture_output=True, text=True, check=True).stdout
    return sum(int(line) for line in out.split() if line.strip())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clip", type=Path, default=SHARED_CLIP, help="any video (default: %(default)s)")
    parser.add_argument("--frames", type=int, default=100, help="frames of the clip used (default: %(default)s)")
    parser.add_argument("--max-side", type=int, default=None, help="styled at this longer side at most")
    parser.add_argument("--style", default="3")
    parser.add_argument("--temporal", type=float, default=0.7, help="the temporal rows' strength (default: "
                        "%(default)s)")
    parser.add_argument("--only", nargs="*", help="candidates to run (default: all)")
    parser.add_argument("--json", type=Path, help="write the rows here too")
    args = parser.parse_args()
    if not args.clip.is_file():
        raise SystemExit(f"no clip at {args.clip}: give one with --clip")
    vmaf = has_vmaf()
    candidates = {name: (name in BY_THE_RANKS, opts) for name, opts in CANDIDATES.items()} | deliveries()
    candidates = {name: c for name, c in candidates.items() if not args.only or name in args.only}
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        cut = folder / "cut.mp4"
        run(["ffmpeg", "-v", "error", "-nostdin", "-y", "-i", str(args.clip), "-map", "0:v:0", "-frames:v",
             str(args.frames), "-c:v", "libx264", "-crf", "10", "-preset", "ultrafast", str(cut)])
        info = ffmpeg.probe(cut)
        seconds = info.frames / float(eval(info.frame_rate)) if info.frames else info.duration
        for temporal in (0.0, args.temporal):
            tag = f"temporal {temporal}" if temporal else "plain"
            reference = folder / f"reference-{tag}.mp4"
            extra = ["--max-side", str(args.max_side)] if args.max_side else []
            subprocess.run([sys.executable, "-m", "scoring", "stylize", str(cut), str(reference), "--style",
                            args.style, "--crf", "0", "--preset", "ultrafast", "--delivery", "mezzanine",
                            "--temporal", str(temporal), "--ranks", "1", *extra], check=True, cwd=REPO,
                           stdout=subprocess.DEVNULL, env=dict(os.environ, PYTHONPATH=str(REPO)))
            segments = folder / f"segments-{tag}.mp4"
            segment_cpu = encode(reference, segments, x264(STYLED_PRESET, STYLED_CRF))
            base = video_bytes(segments)
            rows.append({"video": tag, "encode": TODAY, "bytes_per_second": base / seconds, "ratio": 1.0,
                         "encode_cpu_s": segment_cpu, **quality(segments, reference, vmaf)})
            for name, (by_the_ranks, options) in candidates.items():
                out = folder / f"{tag}-{len(rows)}.mp4"
                cpu = encode(reference if by_the_ranks else segments, out, options)
                size = video_bytes(out)
                rows.append({"video": tag, "encode": name, "bytes_per_second": size / seconds, "ratio": size / base,
                             "encode_cpu_s": cpu, **quality(out, reference, vmaf)})
    print(f"clip: {args.clip.name}, first {info.frames} frames, {info.width}x{info.height} at {info.frame_rate} fps "
          f"({seconds:.2f} s); style {args.style}; quality against the network's own frames"
          + ("" if vmaf else "; VMAF: not in this ffmpeg"))
    print("| video | encode | kB per second of input | size vs intermediate | PSNR dB | SSIM |"
          + (" VMAF |" if vmaf else "") + " encoder CPU s |")
    print("| --- | --- | --- | --- | --- | --- |" + (" --- |" if vmaf else "") + " --- |")
    for r in rows:
        print(f"| {r['video']} | {r['encode']} | {r['bytes_per_second'] / 1000:.1f} | {r['ratio']:.2f} | "
              f"{r['psnr']:.2f} | {r['ssim']:.4f} |" + (f" {r['vmaf']:.1f} |" if vmaf else "")
              + f" {r['encode_cpu_s']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"clip": str(args.clip), "frames": info.frames, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
