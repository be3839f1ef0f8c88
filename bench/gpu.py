"""Row 6 of the bench: the style networks at 1080p on a CUDA GPU, ours against plain torch.

    python bench/gpu.py                  # on a machine with a CUDA GPU (bench/run.py runs it there)
    python bench/gpu.py --explore        # also the variants the CUDA path was chosen from

Both sides get the same frames: the sample photos (scoring/media/samples.py) at 1920x1080 as uint8
in host memory, as the ffmpeg pipe hands them over, and give uint8 frames back in host
memory, after warm-up:

* plain: the network as published, computed the straightforward way (nearest upsampling, then
  the 3x3 convolution; a 9x9 convolution as it is; torch's instance norm) in fp32, the frame moved to the GPU and
  back, one frame per call: what a user of the torch module runs. For the 26-style network and for
  pytorch/examples' TransformerNet (bench/reference.py, random weights).
* ours: ``Stylizer`` at its defaults on CUDA (precision and batch ``auto``), the same frames.

Also printed: convolution FLOPs per frame (bench/nets.py), this GPU's fp16 matrix-multiply
rate measured here (8192^3), the share of it each run reaches, and the PSNR of each output
against plain fp32. ``--explore`` times the network-alone variants (precision, layout, our
layers or the published ones, batch, CUDA graphs) and lists the GPU kernels of one shipped
frame.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import reference  # noqa: E402  (bench/reference.py)
from nets import conv_flops, psnr, random_weights  # noqa: E402  (bench/nets.py)

from scoring.media import samples  # noqa: E402
from scoring.networks import layers, models  # noqa: E402
from scoring.networks.models import MultiStyleNet, load_model, parse_style  # noqa: E402
from scoring.networks.stylizer import Stylizer, resolve_batch  # noqa: E402

SIZE = (1920, 1080)


@contextlib.contextmanager
def as_published():
    """The networks' layers computed the straightforward way: our rewrites (the doubling + 3x3
    and the wide 9x9 convolutions, made for a CPU's oneDNN; the instance norm, made for CUDA)
    replaced by what torch users write."""

    def double_then_conv3(x, weight, bias=None):
        x = F.pad(F.interpolate(x, scale_factor=2, mode="nearest"), (1, 1, 1, 1), mode="reflect")
        return F.conv2d(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype))

    def wide_conv(x, weight, bias=None):
        return F.conv2d(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype))

    def norm_then_pad(y, weight=None, bias=None, *, pad=0, relu=False, residual=None, eps=1e-5):
        y = F.instance_norm(y, weight=weight, bias=bias, eps=eps)
        y = y if residual is None else residual + y
        y = F.relu(y) if relu else y
        return F.pad(y, [pad] * 4, mode="reflect") if pad else y

    plain = {(models, "double_then_conv3"): double_then_conv3, (models, "wide_conv"): wide_conv,
             (models, "norm_then_pad"): norm_then_pad,  # the 26-style network's norms
             (layers, "norm_then_pad"): norm_then_pad}  # TransformerNet's (layers.InstanceNorm)
    saved = {place: getattr(*place) for place in plain}
    for (module, name), form in plain.items():
        setattr(module, name, form)
    try:
        yield
    finally:
        for (module, name), ours in saved.items():
            setattr(module, name, ours)


def host_to_host(net: torch.nn.Module, device: torch.device):
    """Plain use of a 0..1 network: a uint8 frame to the GPU, fp32 NCHW, back as uint8."""

    @torch.inference_mode()
    def run(frames: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(frames).to(device).permute(0, 3, 1, 2).float().div(255)
        y = net(x).clamp(0, 1).mul(255).round().to(torch.uint8)
        return y.permute(0, 2, 3, 1).cpu().numpy()

    return run


def per_frame(run, frames: np.ndarray, batch: int = 1, repeats: int = 3) -> tuple[float, list[np.ndarray]]:
    """Seconds per frame, host to host (each call ends in a host copy, so the clock is honest):
    median of ``repeats`` passes over ``frames`` after one warm-up pass."""
    batches = [frames[i:i + batch] for i in range(0, len(frames) - batch + 1, batch)]
    out = [run(b) for b in batches]  # warm-up (cuDNN picks its algorithms, caches fill)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for b in batches:
            run(b)
        times.append((time.perf_counter() - start) / (len(batches) * batch))
    return statistics.median(times), [f for b in out for f in b]


def matmul_flops(device: torch.device, dtype=torch.float16, n: int = 8192, iters: int = 20) -> float:
    """FLOP/s of an n^3 matrix product on random data, median of ``iters`` after warm-up."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return 2 * n**3 / statistics.median(times)


def row_cuda(style: str = "7", count: int = 24, device: str = "cuda") -> dict:
    device = torch.device(device)
    frames = np.stack(list(samples.frames(count, SIZE, Fraction(25))))
    truth_picks = [0, count // 2, count - 1]
    peak = matmul_flops(device)
    out = {"gpu": torch.cuda.get_device_name(device), "torch": torch.__version__, "size": f"{SIZE[0]}x{SIZE[1]}",
           "frames": count, "style": style, "matmul_fp16_flops": peak}

    def compare(name: str, plain_net: torch.nn.Module, ours_model: torch.nn.Module, flops: int) -> dict:
        with as_published():
            plain_s, plain = per_frame(host_to_host(plain_net.to(device).eval(), device), frames)
        stylizer = Stylizer(ours_model, str(device), "auto")
        batch = resolve_batch("auto", str(device))
        ours_s, ours = per_frame(stylizer, frames, batch)
        return {"network": name, "precision": stylizer.precision, "batch": batch, "gflop_per_frame": flops / 1e9,
                "plain_s_per_frame": plain_s, "ours_s_per_frame": ours_s, "ratio": plain_s / ours_s,
                "ours_batch1_s_per_frame": per_frame(stylizer, frames)[0],
                "plain_peak_share": flops / plain_s / peak, "ours_peak_share": flops / ours_s / peak,
                "psnr_ours_db": min(psnr(plain[i], ours[i]) for i in truth_picks)}

    multistyle = models.BuiltinStyle(MultiStyleNet.from_onnx(), parse_style(style)).eval()
    out["multistyle"] = compare("26-style", multistyle, load_model(style), conv_flops(multistyle, SIZE[1], SIZE[0]))
    state = random_weights()
    published, ours = reference.TransformerNet(), models.TransformerNet()
    published.load_state_dict(state)
    ours.load_state_dict(state)
    tn_flops = conv_flops(published.eval(), SIZE[1], SIZE[0])
    out["transformer_net"] = compare("TransformerNet", models.UnitRange(published), models.UnitRange(ours).eval(),
                                     tn_flops)
    return out


def table(r: dict) -> list[str]:
    lines = []
    for key in ("multistyle", "transformer_net"):
        n = r[key]
        ms = {side: n[f"{side}_s_per_frame"] * 1e3 for side in ("plain", "ours", "ours_batch1")}
        lines.append(
            f"| 6 CUDA {r['size']} {n['network']} ({r['gpu']}, torch {r['torch']}) "
            f"| plain torch fp32 {ms['plain']:.2f} ms/frame ({1e3 / ms['plain']:.0f} fps) "
            f"| {ms['ours']:.2f} ms/frame ({1e3 / ms['ours']:.0f} fps, {n['precision']}, batch {n['batch']}; "
            f"batch 1: {ms['ours_batch1']:.2f}) | {n['ratio']:.2f}x "
            f"| {n['gflop_per_frame']:.0f} GFLOP/frame; share of the fp16 matmul rate measured here "
            f"({r['matmul_fp16_flops'] / 1e12:.0f} TFLOP/s): plain {100 * n['plain_peak_share']:.1f}%, "
            f"ours {100 * n['ours_peak_share']:.1f}%; PSNR vs fp32 {n['psnr_ours_db']:.1f} dB |")
    return lines


# --------------------------------------------------------------------------- --explore


def device_seconds(fn, x: torch.Tensor, iters: int = 10) -> float:
    """Seconds per call of ``fn(x)`` on the GPU alone (CUDA events), after three warm-up calls."""
    for _ in range(3):
        fn(x)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn(x)
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / iters


def variant(net: torch.nn.Module, precision: str, channels_last: bool):
    """``net`` prepared one way: fp32, fp16 under autocast, or fp16 weights and activations."""
    net = copy.deepcopy(net)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    if precision == "fp16-weights":
        net = net.half()
    net = net.to(memory_format=layout)

    @torch.inference_mode()
    def run(x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float16 if precision == "fp16-weights" else torch.float32, memory_format=layout)
        with torch.autocast("cuda", torch.float16, enabled=precision == "fp16-autocast"):
            return net(x).float()

    return run


def graphed(run, x: torch.Tensor):
    """``run`` replayed from a CUDA graph captured on ``x``'s shape (one launch per frame)."""
    static_x = x.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            run(static_x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_y = run(static_x)

    def replay(x: torch.Tensor) -> torch.Tensor:
        static_x.copy_(x)
        graph.replay()
        return static_y

    return replay


def as_uint8(y: torch.Tensor) -> np.ndarray:
    return y[0].clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()


def explore(style: str = "7", device: str = "cuda") -> list[dict]:
    """Network-alone milliseconds per frame and PSNR against published fp32 for each way of
    running the two networks: our layers or the published ones, fp32 (convolutions in TF32,
    torch's default) or fp16, NCHW or channels-last, batch 1 or 4 (batch 1 also replayed from a
    CUDA graph)."""
    device = torch.device(device)
    frames = np.stack(list(samples.frames(4, SIZE, Fraction(25))))
    x4 = torch.from_numpy(frames).to(device).permute(0, 3, 1, 2).float().div(255).contiguous()
    tn = models.TransformerNet()
    tn.load_state_dict(random_weights())
    nets = {"26-style": models.BuiltinStyle(MultiStyleNet.from_onnx(), parse_style(style)).eval(),
            "TransformerNet": models.UnitRange(tn).eval()}
    rows = []
    for name, net in nets.items():
        net = net.to(device)
        with as_published():
            truth = as_uint8(variant(net, "fp32", False)(x4[:1]))
        for form in ("ours", "published"):
            for precision in ("fp32", "fp16-autocast", "fp16-weights"):
                for channels_last in (False, True):
                    for batch in (1, 4):
                        run = variant(net, precision, channels_last)
                        with as_published() if form == "published" else contextlib.nullcontext():
                            row = {"network": name, "layers": form, "precision": precision,
                                   "channels_last": channels_last, "batch": batch,
                                   "ms_per_frame": device_seconds(run, x4[:batch]) / batch * 1e3,
                                   "psnr_db": psnr(as_uint8(run(x4[:1])), truth)}
                            if batch == 1:
                                row["graphed_ms_per_frame"] = device_seconds(graphed(run, x4[:1]), x4[:1]) * 1e3
                        rows.append(row)
                        print(json.dumps(row), flush=True)
    return rows


def compiled(style: str = "7", device: str = "cuda") -> dict:
    """What ``--compile`` gives on this GPU: the shipped Stylizer with torch.compile, host to host."""
    frames = np.stack(list(samples.frames(8, SIZE, Fraction(25))))
    start = time.perf_counter()
    stylizer = Stylizer(load_model(style), device, "auto", compile=True)
    stylizer(frames[:1])
    first = time.perf_counter() - start
    return {"first_frame_s": first, "s_per_frame": per_frame(stylizer, frames)[0]}


def kernels(style: str = "7", device: str = "cuda") -> str:
    """The GPU kernels of one frame through the shipped path, by their GPU time."""
    from torch.profiler import ProfilerActivity, profile

    frames = np.stack(list(samples.frames(1, SIZE, Fraction(25))))
    stylizer = Stylizer(load_model(style), device, "auto")
    stylizer(frames)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        stylizer(frames)
    averages = prof.key_averages()
    try:
        return averages.table(sort_by="self_device_time_total", row_limit=25, max_name_column_width=70)
    except (AttributeError, KeyError):  # torch before the "device" names
        return averages.table(sort_by="self_cuda_time_total", row_limit=25, max_name_column_width=70)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--style", default="7", help="built-in style (default: %(default)s)")
    parser.add_argument("--frames", type=int, default=24, help="frames per side (default: %(default)s)")
    parser.add_argument("--explore", action="store_true", help="also time the network-alone variants")
    parser.add_argument("--compile", action="store_true", help="also time our path with --compile")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench/gpu.py: error: no CUDA GPU on this machine (the row is unmeasured)", file=sys.stderr)
        return 2
    results = {"row": row_cuda(args.style, args.frames)}
    print("\n".join(table(results["row"])), flush=True)
    if args.explore:
        results["kernels"] = kernels(args.style)
        print(results["kernels"], flush=True)
        results["variants"] = explore(args.style)
    if args.compile:
        results["compiled"] = compiled(args.style)
        print(json.dumps(results["compiled"]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
