"""Runs a style network on uint8 frames: device, precision, padding, layout.

Frames arrive as ``uint8 [N, H, W, 3]`` (what the ffmpeg pipe gives) and leave the same way,
contiguous for the encoder.

Precision: on CUDA, fp16/bf16 run under autocast. On a CPU, bf16 runs the whole network in
bf16 (a bf16 copy of the weights, activations in bf16, channels-last where the CPU has native
bf16: ``resolve_layout``): autocast there casts every instance norm's fp32 output back to
bf16 and keeps the reflection pads in fp32, which cost a large share of the run
(docs/performance.md; the bf16 test bounds its distance from fp32).
``auto`` picks fp16 on CUDA, bf16 on a CPU with native bf16 (AVX-512 BF16 or AMX), else fp32.
In bf16 on a CPU with AVX-512 VNNI (and no AMX), the 26-style network and TransformerNet get
the frames' uint8 codes instead of floats: their first layer multiplies them as integers by int8
weights (``frame_conv``; docs/performance.md#the-first-layer-on-the-frames-codes-2026-12-08).

Strength: below 1 each styled frame is blended back toward its original (in float, before the
one rounding to uint8), for any network.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import re

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..media.errors import UserError
from ..options import check_style_strength as check_strength
from . import frame_conv, native

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but this machine has no usable CUDA GPU")
    if name not in ("cpu", "cuda") and not re.fullmatch(r"cuda:\d+", name):
        raise UserError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N")
    return torch.device(name)


def cpu_has_native_bf16() -> bool:
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_layout(device: torch.device, precision: str) -> torch.memory_format:
    """The activations' layout: channels-last for bf16 on a CPU with native bf16 (AMX or AVX-512
    BF16), where oneDNN's bf16 convolutions take it directly instead of reordering NCHW at every
    call; plain NCHW for fp32 and for bf16 without native support, where the layers run fastest
    in it; on a GPU the layout the frames come in (docs/performance.md#on-a-cpu-with-amx,
    docs/performance.md#channels-last-without-amx-2026-12-07)."""
    if device.type != "cpu":
        return torch.preserve_format
    return torch.channels_last if precision == "bf16" and cpu_has_native_bf16() else torch.contiguous_format


def resolve_precision(precision: str, device: str = "auto") -> str:
    """``auto`` -> what is fastest at a tested quality on this device; other names pass through."""
    if precision != "auto":
        return precision
    if resolve_device(device).type == "cuda":
        return "fp16"
    return "bf16" if cpu_has_native_bf16() else "fp32"


# frames per forward pass for ``--batch auto``: on a CPU one frame keeps the activations in the
# caches; on a GPU a frame at a time leaves it waiting for Python to launch the next kernel
# (docs/performance.md#on-a-cuda-gpu)
AUTO_BATCH = {"cpu": 1, "cuda": 4}


def resolve_batch(batch: int | str, device: str = "auto") -> int:
    """``auto`` -> the batch for this device; a number passes through."""
    return AUTO_BATCH[resolve_device(device).type] if batch == "auto" else int(batch)


def keep_freed_memory() -> None:
    """Make this process reuse the memory it frees instead of handing it back to the kernel.

    Every forward pass allocates and frees activations of tens of MB. By default glibc serves
    blocks that large with ``mmap`` and unmaps them when freed (or trims the top of its heap),
    so the next frame faults the same pages in again, zeroed by the kernel: a large share of a
    rank's time (docs/performance.md). Here blocks come from the heap and stay
    there, so the process keeps its peak working set (a few hundred MB per rank). Process-wide
    and idempotent; a no-op where the C library is not glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_max = -1, -4  # from glibc's malloc.h
    mallopt(m_mmap_max, 0)
    mallopt(m_trim_threshold, 1 << 30)


class Stylizer:
    def __init__(self, model: nn.Module, device: str = "auto", precision: str = "fp32", compile: bool = False,
                 strength: float = 1.0, layout: torch.memory_format | None = None):
        """``layout``: the activations' memory format, ``resolve_layout``'s choice by default."""
        self.strength = check_strength(strength)
        keep_freed_memory()
        self.device = resolve_device(device)
        precision = resolve_precision(precision, self.device.type)
        if precision not in PRECISIONS:
            raise UserError(f"unknown precision {precision!r}: use auto, fp32, bf16 or fp16")
        if precision == "fp16" and self.device.type != "cuda":
            raise UserError("fp16 needs a CUDA device; on a CPU use bf16 or fp32")
        self.precision = precision
        # CPU bf16: the network itself in bf16
        self.cast = PRECISIONS[precision] if self.device.type == "cpu" else None
        self.layout = layout or resolve_layout(self.device, precision)
        if self.cast is not None or self.layout == torch.channels_last:
            model = copy.deepcopy(model)  # the caller's model stays as it was
        if self.cast is not None:
            model = model.to(self.cast)
        if self.layout == torch.channels_last:
            model = model.to(memory_format=torch.channels_last)  # the weights as oneDNN takes them
        self.model = model.to(self.device).eval()
        # bf16 channels-last on a CPU with VNNI (no AMX): the network's first layer reads the
        # frames' uint8 codes themselves (layers.first_conv), without their conversion to floats
        self.codes = (getattr(model, "reads_codes", False) and self.cast == torch.bfloat16
                      and self.layout == torch.channels_last and frame_conv.available())
        if compile:
            native.keep_out_of_compiled_graphs()
        self.forward = torch.compile(self.model, dynamic=False) if compile else self.model

    @property
    def compiled(self) -> bool:
        return self.forward is not self.model

    def _autocast(self):
        dtype = PRECISIONS[self.precision]
        if dtype is None or self.cast is not None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    @torch.inference_mode()
    def __call__(self, frames: np.ndarray) -> np.ndarray:
        codes = torch.from_numpy(np.asarray(frames)).to(self.device, non_blocking=True).permute(0, 3, 1, 2)
        height, width = codes.shape[-2:]
        pad_h, pad_w = -height % 4, -width % 4  # the networks downsample by 4
        if self.codes:  # channels-last, as frame_conv reads them (F.pad may answer NCHW)
            x = F.pad(codes, (0, pad_w, 0, pad_h), mode="reflect") if pad_h or pad_w else codes
            x = x.contiguous(memory_format=torch.channels_last)
        else:
            # fp32 on a CPU wants plain NCHW: left in the frames' channels-last order, every
            # convolution answers in it too and each instance norm first copies it back
            # (docs/performance.md#on-a-cpu-without-bf16); native bf16 runs fastest channels-last;
            # the GPU path is left as it was measured
            x = codes.to(torch.float32, memory_format=self.layout).div_(255.0)
            if pad_h or pad_w:
                x = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect")
            if self.cast is not None:
                x = x.to(self.cast)  # already in its layout: a CPU is where the cast applies
        with self._autocast():
            y = self.forward(x)
        y = y[..., :height, :width].float()
        if self.strength < 1.0:
            y = torch.lerp(codes.to(torch.float32).div_(255.0), y, self.strength)
        y = y.clamp_(0.0, 1.0).mul_(255.0).round_().to(torch.uint8)
        return y.permute(0, 2, 3, 1).contiguous().cpu().numpy()
