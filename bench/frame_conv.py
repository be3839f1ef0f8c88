"""The first layer of the 26-style network and TransformerNet by ``frame_conv`` (the frames' uint8
codes, int8 weights) against oneDNN's bf16 on the frames as floats, side by side in one run: the
layer alone, then the whole network a frame, on one thread, at 768x432
(docs/performance.md#the-first-layer-on-the-frames-codes-2026-12-08).

    python bench/frame_conv.py [--repeats 3] [--size 768x432] [--threads 1]

Each pair runs in turn ``--repeats`` times; each figure is the best and worst of those runs.
Needs a CPU with AVX-512 VNNI and BF16 and no AMX (on another the kernel has no loops, and this says so).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from narrow_conv import in_turn, span  # noqa: E402  (bench/narrow_conv.py, beside this file)
from nets import psnr  # noqa: E402  (bench/nets.py)
from PIL import Image  # noqa: E402

from scoring.media import ffmpeg  # noqa: E402
from scoring.media.samples import photos  # noqa: E402
from scoring.networks import frame_conv, layers  # noqa: E402
from scoring.networks.models import TransformerNet, UnitRange, load_model  # noqa: E402
from scoring.networks.stylizer import Stylizer  # noqa: E402


def real_frames(clip: str | None, width: int, height: int) -> list[np.ndarray]:
    """The four photos at the frame size, or six of ``clip``'s frames, 40 apart."""
    if clip is None:
        return [np.array(Image.fromarray(photo).resize((width, height), Image.BILINEAR)) for photo in photos()]
    with ffmpeg.FrameReader(clip, (width, height)) as reader:
        return [batch[0].copy() for batch, _ in zip(reader.batches(40), range(6))]


def distances(models: dict, frames: list[np.ndarray]) -> None:
    print("\n| network (PSNR vs its fp32 frames, worst / mean) | bf16 on floats | bf16 with frame_conv |")
    print("| --- | --- | --- |")
    for name, model in models.items():
        fp32, bf16 = Stylizer(model, "cpu", "fp32"), Stylizer(model, "cpu", "bf16")
        references = [fp32(frame[None])[0] for frame in frames]
        cells = []
        for codes in (False, True):
            bf16.codes = codes
            values = [psnr(reference, bf16(frame[None])[0]) for reference, frame in zip(references, frames)]
            cells.append(f"{min(values):.1f} / {np.mean(values):.1f} dB")
        print(f"| {name} | {cells[0]} | {cells[1]} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", default="768x432", help="WIDTHxHEIGHT of the frames")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clip", help="the distances on this video's frames instead of the photos")
    args = parser.parse_args(argv)
    width, height = (int(side) for side in args.size.split("x"))
    torch.set_num_threads(args.threads)
    if not frame_conv.available():
        print("frame_conv: no loops on this CPU (it needs AVX-512 VNNI and BF16 without AMX, and g++): "
              "nothing to compare")
        return 1

    print(f"| layer or network ({width}x{height}, {args.threads} thread(s)) | oneDNN bf16 on floats | "
          "frame_conv on the codes | ratio |")
    print("| --- | --- | --- | --- |")
    frame = np.random.default_rng(0).integers(0, 255, (1, height, width, 3), dtype=np.uint8)
    codes = torch.from_numpy(frame).permute(0, 3, 1, 2)
    floats = codes.float().div(255).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    torch.manual_seed(0)
    weight = (torch.randn(32, 3, 9, 9) / 27).to(torch.bfloat16)
    nothing = lambda: None  # noqa: E731
    times = in_turn({"oneDNN": (nothing, lambda: F.conv2d(layers.reflect_pad(floats, 4), weight)),
                     "codes": (nothing, lambda: frame_conv.conv(codes, weight, None, 1 / 255))}, args.repeats, 20)
    ops = 2 * 3 * 81 * 32 * width * height / 1e9
    rates = [f"{span(times[k])} ({ops / min(times[k]) * 1e3:.0f} GOP/s)" for k in ("oneDNN", "codes")]
    print(f"| the first 9x9 and its pad, 3 -> 32 | {rates[0]} | {rates[1]} | "
          f"{min(times['oneDNN']) / min(times['codes']):.2f}x |")

    torch.manual_seed(0)
    transformer = UnitRange(TransformerNet()).eval()
    for name, model, calls in (("26-style network, style 7", load_model("7"), 20),
                               ("TransformerNet (random weights)", transformer, 4)):
        stylizer = Stylizer(model, "cpu", "bf16")
        times = in_turn({"oneDNN": (lambda s=stylizer: setattr(s, "codes", False), lambda s=stylizer: s(frame)),
                         "codes": (lambda s=stylizer: setattr(s, "codes", True), lambda s=stylizer: s(frame))},
                        args.repeats, calls)
        print(f"| {name}, a frame | {span(times['oneDNN'])} | {span(times['codes'])} | "
              f"{min(times['oneDNN']) / min(times['codes']):.2f}x |")
    distances({**{f"26-style, style {style}": load_model(style) for style in ("0", "7", "19")},
               "TransformerNet (random weights)": transformer}, real_frames(args.clip, width, height))
    return 0


if __name__ == "__main__":
    sys.exit(main())
