"""Runs a style network on uint8 frames: device, precision, padding, layout.

Frames arrive as ``uint8 [N, H, W, 3]`` (what the ffmpeg pipe gives). Permuting that to
``[N, 3, H, W]`` is already a channels-last tensor, so the network runs channels-last
without a copy, and the result permutes back to contiguous HWC for the encoder.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import UserError

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but this machine has no usable CUDA GPU")
    if name not in ("cpu", "cuda"):
        raise UserError(f"unknown device {name!r}: use auto, cpu or cuda")
    return torch.device(name)


class Stylizer:
    def __init__(self, model: nn.Module, device: str = "auto", precision: str = "fp32"):
        if precision not in PRECISIONS:
            raise UserError(f"unknown precision {precision!r}: use fp32, bf16 or fp16")
        self.device = resolve_device(device)
        if precision == "fp16" and self.device.type != "cuda":
            raise UserError("fp16 needs a CUDA device; on a CPU use bf16 or fp32")
        self.precision = precision
        self.model = model.to(self.device).eval()

    def _autocast(self):
        dtype = PRECISIONS[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    @torch.inference_mode()
    def __call__(self, frames: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.asarray(frames)).to(self.device, non_blocking=True)
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        height, width = x.shape[-2:]
        pad_h, pad_w = -height % 4, -width % 4  # the networks downsample by 4
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect")
        with self._autocast():
            y = self.model(x)
        y = y[..., :height, :width].float().clamp_(0.0, 1.0).mul_(255.0).round_().to(torch.uint8)
        return y.permute(0, 2, 3, 1).contiguous().cpu().numpy()
