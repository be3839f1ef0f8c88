"""``frame_conv.cpp``: a network's first layer (reflect pad, then a stride-1 convolution from the
colour channels to 16, 32 or 64) on the frames' uint8 codes, int8 weights, bf16 channels-last
out, on a CPU with AVX-512 VNNI and BF16 and without AMX
(docs/performance.md#the-first-layer-on-the-frames-codes-2026-12-08).

The codes are exact in 8 bits, so only the weights are rounded: to int8 with a scale per output
channel (``quantized``). Compiled on first use (``native.compiled``); where it cannot be, or the
CPU that built it lacks those instructions, ``takes`` says no and ``layers.first_conv`` converts
the codes and calls oneDNN as before.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch

from . import native

SOURCE = Path(__file__).with_name("frame_conv.cpp")


@functools.cache
def library() -> ctypes.CDLL | None:
    long, pointer = native.LONG, native.POINTER
    return native.compiled(SOURCE, "the first layer's int8 convolution", "the first layers run as oneDNN's", {
        "frame_conv_takes": [long, long, long],
        "frame_conv_bf16": [pointer, long, long, long, long, long, pointer, pointer, pointer, long, pointer,
                            ctypes.c_int]})


def available() -> bool:
    """Whether this machine built the kernel with its loops (a CPU with AVX-512 VNNI and BF16 and
    without AMX, whose tiles oneDNN uses for this layer)."""
    lib = library()
    return lib is not None and bool(lib.frame_conv_takes(3, 32, 9))


def takes(codes: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the kernel has a loop for the first layer ``weight`` on ``codes``: uint8 on a CPU,
    laid out channels-last (the frames' own order), 1 to 4 channels; a bf16 weight (the network
    run in bf16) with 16, 32 or 64 output channels and an odd square kernel whose reflect pad is
    narrower than the frame (as F.pad requires); no gradient wanted."""
    if (codes.device.type != "cpu" or codes.dtype != torch.uint8 or codes.dim() != 4 or weight.dim() != 4
            or weight.dtype != torch.bfloat16 or (torch.is_grad_enabled() and weight.requires_grad)
            or not codes.permute(0, 2, 3, 1).is_contiguous()):
        return False
    cout, cin, k, k_across = weight.shape
    if cin != codes.shape[1] or k != k_across or k // 2 >= min(codes.shape[2], codes.shape[3]):
        return False
    lib = library()
    return lib is not None and bool(lib.frame_conv_takes(cin, cout, k))


def quantized(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[cout, C, k, k]`` -> int8 weights in the kernel's order, ``[k, groups, cout / 16, 16, 4]``
    (each tap row's k * C weights, dx then c, padded with zeros to groups of four), and the scale
    per output channel that takes them back: the largest weight of a channel at 127."""
    cout, cin, k, _ = weight.shape
    w = weight.detach().float()
    scale = w.abs().amax(dim=(1, 2, 3)).clamp_min(torch.finfo(torch.float32).tiny) / 127
    q = torch.round(w / scale[:, None, None, None]).clamp_(-127, 127).to(torch.int8)
    groups = -(-k * cin // 4)  # ceil(k * C / 4)
    rows = q.permute(2, 3, 1, 0).reshape(k, k * cin, cout)  # dy, (dx, c), o
    rows = torch.cat([rows, rows.new_zeros(k, 4 * groups - k * cin, cout)], 1)
    return rows.reshape(k, groups, 4, cout // 16, 16).permute(0, 1, 3, 4, 2).contiguous(), scale


@native.entry_point  # raw pointers, which torch.compile must not trace
def conv(codes: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, unit: float) -> torch.Tensor:
    """``F.conv2d(F.pad(codes * unit, [k // 2] * 4, mode="reflect"), weight, bias)`` by the kernel,
    bf16 channels-last, the weights rounded to int8; ``takes`` must have said yes."""
    n, cin, height, width = codes.shape
    cout, _, k, _ = weight.shape
    packed, scale = quantized(weight)
    scale = (scale * unit).contiguous()
    bias = None if bias is None else bias.detach().float().contiguous()
    out = torch.empty((n, cout, height, width), dtype=torch.bfloat16, memory_format=torch.channels_last)
    status = library().frame_conv_bf16(codes.data_ptr(), n, cin, height, width, k, packed.data_ptr(),
                                       scale.data_ptr(), None if bias is None else bias.data_ptr(), cout,
                                       out.data_ptr(), torch.get_num_threads())
    if status == 2:
        raise MemoryError("frame_conv.cpp could not allocate the padded copy of the frames")
    if status != 0:
        raise RuntimeError(f"frame_conv.cpp has no loop for {tuple(weight.shape)}, though takes() said it had")
    return out
