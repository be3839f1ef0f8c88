"""``fused_norm.cpp``: an instance norm, a residual sum, a ReLU and a reflection pad in two passes
over a CPU's activations (channels-last bf16, as a CPU with native bf16 runs them; NCHW fp32 or
bf16, as other CPUs do), the step between two convolutions.

The C++ is compiled on first use (``native.compiled``). Where it cannot be, ``library()`` is
None and ``layers.norm_then_pad`` takes torch's steps, with the same results up to rounding.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch

from . import native

SOURCE = Path(__file__).with_name("fused_norm.cpp")
CHANNEL_STEPS = (16, 32, 64, 128)  # the loops the C++ has: the channels must divide one


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled kernel, built first if this machine has none yet; None where it cannot be."""
    long, pointer, flag = native.LONG, native.POINTER, ctypes.c_int
    return native.compiled(SOURCE, "the fused norm", "the norms run as torch's steps", {
        "norm_then_pad_bf16": [pointer, pointer, pointer, long, long, long, long, long, long, long, pointer, pointer,
                               ctypes.c_float, flag, flag],
        "norm_then_pad_planes": [pointer, long, long, long, pointer, pointer, long, long, long, long, long, long,
                                 long, long, pointer, pointer, ctypes.c_float, flag, flag, flag]})


def _layout(y: torch.Tensor) -> str | None:
    """"channels-last" (contiguous, and not also NCHW, as one channel is), "nchw" (each row's
    values next to each other: a slice of an NCHW tensor is), or None."""
    if y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous():
        return "channels-last"
    return "nchw" if y.stride(3) == 1 else None


def takes(y: torch.Tensor, weight: torch.Tensor | None, residual: torch.Tensor | None, pad: int) -> bool:
    """Whether the kernel has a loop for this step, on a CPU: NCHW in fp32 or bf16 (each row's
    values next to each other), or contiguous channels-last bf16 whose channels divide one of
    ``CHANNEL_STEPS`` (and a row's values are a multiple of it); one weight per channel;
    ``residual`` in ``y``'s layout, its innermost values next to each other (a padded tensor's
    interior is); the pad narrower than ``y``."""
    if (y.device.type != "cpu" or y.dtype not in (torch.float32, torch.bfloat16) or y.dim() != 4
            or y.requires_grad):
        return False
    n, channels, height, width = y.shape
    layout = _layout(y)
    if pad >= min(height, width) or (weight is not None and weight.numel() != channels) or layout is None:
        return False
    if layout == "channels-last" and not (y.dtype == torch.bfloat16 and any(
            step % channels == 0 and width * channels % step == 0 for step in CHANNEL_STEPS)):
        return False
    innermost = 3 if layout == "nchw" else 1
    if residual is not None and (residual.shape != y.shape or residual.dtype != y.dtype
                                 or residual.stride(innermost) != 1
                                 or (layout == "channels-last" and residual.stride(3) != channels)):
        return False
    return library() is not None


@native.entry_point  # raw pointers, which torch.compile must not trace
def norm_then_pad(y: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, pad: int, relu: bool,
                  residual: torch.Tensor | None, eps: float) -> torch.Tensor:
    """``layers.norm_then_pad`` by the kernel; ``takes`` must have said yes."""
    n, channels, height, width = y.shape
    nchw = _layout(y) == "nchw"
    out = torch.empty((n, channels, height + 2 * pad, width + 2 * pad), dtype=y.dtype,
                      memory_format=torch.contiguous_format if nchw else torch.channels_last)
    weight = None if weight is None else weight.detach().float().contiguous()
    bias = None if bias is None else bias.detach().float().contiguous()
    skip = None if residual is None else residual.data_ptr()
    row, plane, sample = (0, 0, 0) if residual is None else (residual.stride(2), residual.stride(1), residual.stride(0))
    shape_and_parameters = (n, height, width, channels, pad, None if weight is None else weight.data_ptr(),
                            None if bias is None else bias.data_ptr(), eps, int(relu), torch.get_num_threads())
    if nchw:
        status = library().norm_then_pad_planes(y.data_ptr(), y.stride(2), y.stride(1), y.stride(0), out.data_ptr(),
                                                skip, row, plane, sample, *shape_and_parameters,
                                                int(y.dtype == torch.bfloat16))
    else:
        status = library().norm_then_pad_bf16(y.data_ptr(), out.data_ptr(), skip, row, sample, *shape_and_parameters)
    if status != 0:
        raise RuntimeError(f"fused_norm.cpp has no loop for {tuple(y.shape)}, though takes() said it had")
    return out
