"""Steadier video: plain per-frame styling against temporal smoothing, on one clip.

    python bench/flicker.py                         # ../shared/media/car-detection.mp4, all frames
    python bench/flicker.py --frames 96             # a quicker run on the first 96 frames
    python bench/flicker.py --clip my.mp4 --strength 0.8 --style 7

The clip is split into segments as the pipeline does (48 frames by default), then scored by
``scoring.networks.score.score`` in-process, plain and temporal in turn (``--repeats`` pairs,
interleaved, so that a busy machine slows both alike); the styled segments are decoded
(after x264, as a viewer sees them) and measured with ``scoring.networks.flicker``:

- flicker index (mean |change| between consecutive styled frames where the input stood
  still), plain and temporal, and the reduction;
- SSIM of the temporal output against the plain output where the input moved (1 = moving
  content exactly as per-frame styling draws it: no smear);
- throughput of both (median of the repeats) and the cost, end to end (decode, network,
  blend, encode); the output's size (a steadier picture is cheaper for x264 to encode); and
  the parts alone: the network's and the blend's time per frame;
- the seam: how far a segment's first frames are from a one-pass run over the whole clip,
  for several warm-up lengths (why ``temporal.WARMUP_FRAMES`` is what it is).

Without the shared clip a generated clip is used (``scoring.media.samples``); it pans all the
time, so it has few still pixels and says little about flicker.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scoring.media import ffmpeg  # noqa: E402
from scoring.media.samples import make_clip  # noqa: E402
from scoring.media.segments import DEFAULT_SEGMENT_FRAMES, Plan  # noqa: E402
from scoring.media.split import split  # noqa: E402
from scoring.networks import flicker, temporal  # noqa: E402
from scoring.networks.models import load_model, model_id  # noqa: E402
from scoring.networks.score import Encoding, score  # noqa: E402
from scoring.networks.stylizer import Stylizer  # noqa: E402

SHARED_CLIP = REPO.parent / "shared" / "media" / "car-detection.mp4"
WARMUP_CHOICES = (0, 1, 2, 3, 4, 6)


def prepare_clip(work: Path, clip: Path | None, frames: int | None) -> Path:
    """The clip to use, cut to its first ``frames`` frames when asked."""
    clip = clip or (SHARED_CLIP if SHARED_CLIP.is_file() else None)
    if clip is None:
        clip = work / "generated.mp4"
        make_clip(clip, (frames or 96) / 12.5, "25/2", (768, 432), audio=False)
        return clip
    if not frames:
        return clip
    cut = work / "cut.mp4"
    ffmpeg._run_ffmpeg(["-i", ffmpeg.file_arg(clip), "-frames:v", str(frames), "-an", "-c:v", "libx264",
                       "-crf", "12", "-preset", "veryfast", ffmpeg.file_arg(cut)], "cut the clip")
    return cut


def decode_segments(folder: Path, plan: Plan) -> np.ndarray:
    """All frames of a folder's segments, in plan order: uint8 [N, H, W, 3]."""
    frames = []
    for segment in plan.segments:
        with ffmpeg.FrameReader(folder / segment.name, (plan.width, plan.height), input_format="h264") as reader:
            frames.extend(reader.batches(64))
    return np.concatenate(frames)


def seam_gaps(source: np.ndarray, plain: np.ndarray, plan: Plan, strength: float) -> dict:
    """Mean |segmented - one pass| (0-255) over the first 4 frames of every segment but the
    first, for each warm-up length; the smoother is fed the plain styled frames."""
    whole = temporal.TemporalSmoother(strength)(source, plain).astype(np.int16)
    gaps = {}
    for warmup in WARMUP_CHOICES:
        diffs = []
        for segment in plan.segments[1:]:
            smoother = temporal.TemporalSmoother(strength)
            start, end = segment.first_frame, segment.first_frame + segment.frames
            lead = max(0, start - warmup)
            smoother(source[lead:start], plain[lead:start])
            out = smoother(source[start:end], plain[start:end]).astype(np.int16)
            diffs.append(np.abs(out[:4] - whole[start:start + 4]).mean())
        gaps[warmup] = round(float(np.mean(diffs)), 3) if diffs else 0.0
    return gaps


def part_timings(stylizer: Stylizer, source: np.ndarray, styled: np.ndarray, strength: float,
                 frames: int = 24) -> dict:
    """The parts alone, interleaved frame by frame: the network's time per frame and the
    smoother's (the blend, without the warm-up's extra frames or the encoder); and x264's own
    error (mean |decoded - network output|), the scale against which a seam is judged."""
    smoother = temporal.TemporalSmoother(strength)
    network, blend, codec = [], [], []
    for i in range(min(frames, len(source))):
        t0 = time.perf_counter()
        raw = stylizer(source[i:i + 1])
        t1 = time.perf_counter()
        codec.append(np.abs(raw.astype(np.int16) - styled[i:i + 1]).mean())
        smoother(source[i:i + 1], styled[i:i + 1])
        network.append(t1 - t0)
        blend.append(time.perf_counter() - t1)
    network_ms, blend_ms = 1000 * statistics.median(network), 1000 * statistics.median(blend[1:] or blend)
    return {"network_ms_per_frame": round(network_ms, 2), "blend_ms_per_frame": round(blend_ms, 2),
            "blend_share_of_network": round(blend_ms / network_ms, 4),
            "codec_error": round(float(np.mean(codec)), 3)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clip", type=Path, help=f"a video (default: {SHARED_CLIP} if present, else generated)")
    parser.add_argument("--frames", type=int, help="use only the first N frames (default: all)")
    parser.add_argument("--style", default="19", help="built-in style (default: %(default)s)")
    parser.add_argument("--strength", type=float, default=0.7, help="--temporal strength (default: %(default)s)")
    parser.add_argument("--segment-frames", type=int, default=DEFAULT_SEGMENT_FRAMES)
    parser.add_argument("--repeats", type=int, default=2, help="plain/temporal pairs timed (default: %(default)s)")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)

    torch.set_num_threads(torch.get_num_threads())
    with tempfile.TemporaryDirectory(prefix="flicker-") as tmp:
        work = Path(tmp)
        clip = prepare_clip(work, args.clip, args.frames)
        plan = split(clip, work / "segments", None, args.segment_frames)
        stylizer = Stylizer(load_model(args.style), args.device, args.precision)
        name = f"{model_id(args.style)}@{stylizer.precision}"
        stylizer(np.zeros((1, plan.height, plan.width, 3), np.uint8))  # first-call set-up out of the timings

        seconds = {"plain": [], "temporal": []}
        for repeat in range(args.repeats):  # plain first, then temporal first: a drifting load favours neither
            order = (("plain", 0.0), ("temporal", args.strength))
            for mode, strength in order if repeat % 2 == 0 else order[::-1]:
                started = time.perf_counter()
                score(work / "segments", work / f"{mode}-{repeat}", stylizer, name, Encoding(temporal=strength))
                seconds[mode].append(time.perf_counter() - started)
        fps = {mode: plan.frames / statistics.median(s) for mode, s in seconds.items()}
        costs = [1 - p / t for p, t in zip(seconds["plain"], seconds["temporal"])]  # per interleaved pair

        output_bytes = {mode: sum(p.stat().st_size for p in (work / f"{mode}-0").glob("seg-*.h264"))
                        for mode in seconds}
        source = decode_segments(work / "segments", plan)
        plain = decode_segments(work / "plain-0", plan)
        steady = decode_segments(work / "temporal-0", plan)
        flicker_plain, flicker_steady = flicker.flicker_index(source, plain), flicker.flicker_index(source, steady)
        ssim_moving, moving_share = flicker.moving_ssim(source, steady, plain)
        parts = part_timings(stylizer, source, plain, args.strength)
        result = {
            "clip": {"path": str(args.clip or (SHARED_CLIP if SHARED_CLIP.is_file() else "generated")),
                     "frames": plan.frames, "size": f"{plan.width}x{plan.height}", "segments": len(plan.segments),
                     "still_share": round(flicker.still_share(source), 3), "moving_share": round(moving_share, 3)},
            "style": args.style, "precision": stylizer.precision, "strength": args.strength,
            "flicker_plain": round(flicker_plain, 3), "flicker_temporal": round(flicker_steady, 3),
            "flicker_reduction": round(1 - flicker_steady / flicker_plain, 4),
            "ssim_moving": round(ssim_moving, 4),
            "fps_plain": round(fps["plain"], 3), "fps_temporal": round(fps["temporal"], 3),
            "cost": round(1 - fps["temporal"] / fps["plain"], 4), "cost_per_pair": [round(c, 4) for c in costs],
            "output_bytes": output_bytes, **parts,
            "seam_gap_by_warmup": seam_gaps(source, plain, plan, args.strength),
            "warmup_frames": temporal.WARMUP_FRAMES,
        }

    r = result
    print(f"\n{r['clip']['path']}: {r['clip']['frames']} frames {r['clip']['size']}, {r['clip']['segments']} segments, "
          f"style {r['style']} ({r['precision']}), --temporal {r['strength']}; still pixels "
          f"{r['clip']['still_share']:.0%}, moving {r['clip']['moving_share']:.0%}\n")
    print("| | plain | temporal | change |\n| --- | --- | --- | --- |")
    print(f"| flicker index (still regions, 0-255) | {r['flicker_plain']:.2f} | {r['flicker_temporal']:.2f} "
          f"| -{r['flicker_reduction']:.1%} |")
    print(f"| SSIM vs per-frame, moving regions | 1 | {r['ssim_moving']:.3f} | |")
    print(f"| throughput (median of {args.repeats}) | {r['fps_plain']:.2f} fps | {r['fps_temporal']:.2f} fps "
          f"| cost {r['cost']:.1%} (pairs: {', '.join(f'{c:.1%}' for c in r['cost_per_pair'])}) |")
    print(f"| output size (x264 {Encoding().preset}, crf {Encoding().crf}) | {r['output_bytes']['plain'] / 1e6:.2f} MB | "
          f"{r['output_bytes']['temporal'] / 1e6:.2f} MB | {r['output_bytes']['temporal'] / r['output_bytes']['plain'] - 1:+.0%} |")
    print(f"\nparts alone (median per frame): network {r['network_ms_per_frame']:.1f} ms, blend "
          f"{r['blend_ms_per_frame']:.1f} ms ({r['blend_share_of_network']:.1%} of the network); warm-up styles "
          f"{temporal.WARMUP_FRAMES} extra frames per segment after the first "
          f"({temporal.WARMUP_FRAMES / args.segment_frames:.1%} of a {args.segment_frames}-frame segment)")
    print("\nseam: mean |segmented - one pass| over a segment's first 4 frames, by warm-up frames "
          f"(WARMUP_FRAMES = {r['warmup_frames']}); x264's own error: {r['codec_error']:.2f}")
    print("  " + ", ".join(f"{k}: {v:.2f}" for k, v in r["seam_gap_by_warmup"].items()))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
