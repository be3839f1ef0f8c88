"""``narrow_conv.cpp``: a stride-1 convolution with 1 to 4 output channels, bf16 channels-last
in, bf16 NCHW out, on a CPU with AVX-512 BF16: the last 9x9 layer of every style network, which
oneDNN runs at a fraction of its speed on wider layers (docs/performance.md#the-last-layer-across-the-lanes-2026-12-08).

Compiled on first use (``native.compiled``); where it cannot be, or the CPU that built it has
no AVX-512 BF16, ``takes`` says no and ``layers.wide_conv`` calls ``F.conv2d`` as before.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch

from . import native

SOURCE = Path(__file__).with_name("narrow_conv.cpp")


@functools.cache
def library() -> ctypes.CDLL | None:
    long, pointer = native.LONG, native.POINTER
    return native.compiled(SOURCE, "the narrow convolution", "the last layers run as oneDNN's", {
        "narrow_conv_takes": [long, long],
        "narrow_conv_bf16": [pointer, long, long, long, long, long, pointer, pointer, long, pointer, ctypes.c_int]})


def available() -> bool:
    """Whether this machine built the kernel with its loops (a CPU with AVX-512 BF16)."""
    lib = library()
    return lib is not None and bool(lib.narrow_conv_takes(2, 1))


def takes(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the kernel has a loop for ``F.conv2d(x, weight)`` (stride 1, no padding): ``x``
    and ``weight`` bf16 on a CPU, ``x`` contiguous channels-last, with 2, 4, 8, 16, 32, 64 or 128 channels; a
    square kernel with 1 to 4 output channels; no gradient wanted (the kernel has no
    backward)."""
    wants_gradient = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    if (x.device.type != "cpu" or x.dtype != torch.bfloat16 or weight.dtype != torch.bfloat16 or x.dim() != 4
            or weight.dim() != 4 or wants_gradient or not x.is_contiguous(memory_format=torch.channels_last)):
        return False
    cout, cin, k, k_across = weight.shape
    if cin != x.shape[1] or k != k_across or k > min(x.shape[2], x.shape[3]):
        return False
    lib = library()
    return lib is not None and bool(lib.narrow_conv_takes(cin, cout))


def weights_for_lanes(weight: torch.Tensor) -> torch.Tensor:
    """``[cout, C, k, k]`` -> ``[k, k, cout, C / 32 or 1, 32]`` bf16: each tap's C weights of an
    output channel repeated along a vector of 32 (C <= 32) or cut into C / 32 of them, as the
    kernel's lanes hold the input's channel pairs."""
    cout, cin, k, _ = weight.shape
    taps = weight.detach().permute(2, 3, 0, 1)  # k, k, cout, C
    if cin <= 32:
        taps = taps.repeat(1, 1, 1, 32 // cin)
    return taps.reshape(k, k, cout, -1, 32).to(torch.bfloat16).contiguous()


@native.entry_point  # raw pointers, which torch.compile must not trace
def conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.conv2d(x, weight, bias)`` by the kernel, in NCHW; ``takes`` must have said yes."""
    n, cin, padded_height, padded_width = x.shape
    cout, _, k, _ = weight.shape
    height, width = padded_height - k + 1, padded_width - k + 1
    out = torch.empty((n, cout, height, width), dtype=torch.bfloat16)
    lanes = weights_for_lanes(weight)
    bias = None if bias is None else bias.detach().float().contiguous()
    status = library().narrow_conv_bf16(x.data_ptr(), n, cin, height, width, k, lanes.data_ptr(),
                                        None if bias is None else bias.data_ptr(), cout, out.data_ptr(),
                                        torch.get_num_threads())
    if status != 0:
        raise RuntimeError(f"narrow_conv.cpp has no loop for {tuple(weight.shape)}, though takes() said it had")
    return out
