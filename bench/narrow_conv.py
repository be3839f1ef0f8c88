"""The last layer of each style network by ``narrow_conv`` against oneDNN, side by side in one run:
the layer alone, then the whole network a frame, on one thread, bf16, at 768x432
(docs/performance.md#the-last-layer-across-the-lanes-2026-12-08).

    python bench/narrow_conv.py [--repeats 3] [--size 768x432] [--threads 1]

Each pair runs in turn ``--repeats`` times; each figure is the best and worst of those runs.
Needs a CPU with AVX-512 BF16 (on another the kernel has no loops, and this says so).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from scoring.networks import narrow_conv  # noqa: E402
from scoring.networks.models import TransformerNet, UnitRange, load_model  # noqa: E402
from scoring.networks.stylizer import Stylizer  # noqa: E402

LAST_LAYERS = {"26-style": 4, "style picture": 8, "TransformerNet": 32}  # channels into the last 9x9, 3 out


def timed(run, repeats: int) -> float:
    run()  # warm
    start = time.perf_counter()
    for _ in range(repeats):
        run()
    return (time.perf_counter() - start) / repeats * 1e3


def in_turn(pair: dict, repeats: int, calls: int) -> dict[str, list[float]]:
    """Milliseconds a call of each of ``pair``'s runs, ``repeats`` rounds, one after the other."""
    times: dict[str, list[float]] = {name: [] for name in pair}
    for _ in range(repeats):
        for name, (setup, run) in pair.items():
            setup()
            times[name].append(timed(run, calls))
    return times


def span(values: list[float]) -> str:
    return f"{min(values):.2f}-{max(values):.2f} ms"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", default="768x432", help="WIDTHxHEIGHT of the frames")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    width, height = (int(side) for side in args.size.split("x"))
    torch.set_num_threads(args.threads)
    if not narrow_conv.available():
        print("narrow_conv: no loops on this CPU (it needs AVX-512 BF16, and g++): nothing to compare")
        return 1
    real_takes = narrow_conv.takes
    ours, theirs = (lambda: setattr(narrow_conv, "takes", real_takes)), \
        (lambda: setattr(narrow_conv, "takes", lambda *_: False))

    print(f"| layer or network ({width}x{height}, bf16, {args.threads} thread(s)) | oneDNN | narrow_conv | ratio |")
    print("| --- | --- | --- | --- |")
    torch.manual_seed(0)
    for name, cin in LAST_LAYERS.items():
        x = torch.randn(1, cin, height + 8, width + 8).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
        weight = (torch.randn(3, cin, 9, 9) / (cin * 9)).to(torch.bfloat16)
        times = in_turn({"oneDNN": (theirs, lambda: F.conv2d(x, weight)),
                         "narrow": (ours, lambda: narrow_conv.conv(x, weight))}, args.repeats, 40 if cin < 32 else 8)
        gflop = 2 * cin * 81 * 3 * width * height / 1e9
        rates = [f"{span(times[k])} ({gflop / min(times[k]) * 1e3:.0f} GFLOP/s)" for k in ("oneDNN", "narrow")]
        print(f"| {name}'s last 9x9, {cin} -> 3 | {rates[0]} | {rates[1]} | "
              f"{min(times['oneDNN']) / min(times['narrow']):.2f}x |")

    frame = np.random.default_rng(0).integers(0, 255, (1, height, width, 3), dtype=np.uint8)
    torch.manual_seed(0)
    for name, model, calls in (("26-style network, style 7", load_model("7"), 20),
                               ("TransformerNet (random weights)", UnitRange(TransformerNet()).eval(), 4)):
        stylizer = Stylizer(model, "cpu", "bf16")
        times = in_turn({"oneDNN": (theirs, lambda: stylizer(frame)), "narrow": (ours, lambda: stylizer(frame))},
                        args.repeats, calls)
        ours()
        print(f"| {name}, a frame | {span(times['oneDNN'])} | {span(times['narrow'])} | "
              f"{min(times['oneDNN']) / min(times['narrow']):.2f}x |")
    ours()
    return 0


if __name__ == "__main__":
    sys.exit(main())
