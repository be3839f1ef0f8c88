"""Layers the style networks share: the doublings, wide kernels and instance norms computed
the way that is fastest on the device at hand, with the arithmetic of the plain layers.

``models.py`` (the 26-style network, TransformerNet) and ``arbitrary.py`` both build on these;
neither imports the other's networks, so nothing imports in a circle.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import frame_conv, fused_norm, narrow_conv


def double_then_conv3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``conv3x3(reflect_pad1(nearest_upsample_x2(x)))``, computed without the upsampling.

    Each output pixel of a phase (even/odd row, even/odd column) sees only two distinct input
    rows and two columns, so the 3x3 kernel folds into a 2x2 one per phase: four 2x2
    convolutions at the input's resolution, interleaved, do the work of one 3x3 convolution
    at twice the resolution with 16/36 of the multiplications. At the border, reflecting the
    doubled image by one pixel repeats the input's edge, hence the replicate padding. The
    result equals the straightforward one up to float rounding (tests/test_models.py).

    Channels-last on a CPU (bf16 where it is native) the four phases run as one convolution with four
    times the output channels, 9/4 of the folded form's multiplications (as many as the
    straightforward one, without its doubled input), for oneDNN runs it several times faster.
    """
    n, _, h, w = x.shape
    padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
    folded = weight.float()
    offsets = [(r, c) for r in (0, 1) for c in (0, 1)]
    kernels = [_fold(_fold(folded, 2, r), 3, c) for r, c in offsets]  # [cout, cin, 2, 2] each
    channels = weight.shape[0]
    if _channels_last_on_a_cpu(x):  # bf16 on a CPU with native bf16; a GPU as it was measured
        # each 2x2 kernel at its offset in a 3x3 one: oneDNN's AMX kernels run one wide
        # convolution much faster than four narrow ones (docs/performance.md#on-a-cpu-with-amx);
        # its channels-last output is [n, row, column, (row phase, column phase, channels)],
        # interleaved by one copy
        spread = torch.cat([F.pad(kernel, (c, 1 - c, r, 1 - r)) for (r, c), kernel in zip(offsets, kernels)])
        phases = F.conv2d(padded, spread.to(x.dtype).contiguous(memory_format=torch.channels_last),
                          None if bias is None else bias.repeat(4))
        grid = phases.permute(0, 2, 3, 1).unflatten(3, (2, 2, channels))  # [n, row, column, r, c, channels]
        out = grid.permute(0, 1, 3, 2, 4, 5).reshape(n, 2 * h, 2 * w, channels)
        return out.permute(0, 3, 1, 2)
    phases = [F.conv2d(padded[..., r:r + h + 1, c:c + w + 1], kernel.to(x.dtype), bias)
              for (r, c), kernel in zip(offsets, kernels)]
    # interleaved by strided copies, faster than stack + pixel_shuffle on a CPU in bf16
    # (docs/performance.md), into the layout the input came in
    out = phases[0].new_empty(n, channels, 2 * h, 2 * w)
    grid = out.view(n, -1, h, 2, w, 2)  # [n, channels, row, row phase, column, column phase]
    for (r, c), phase in zip(offsets, phases):
        grid[:, :, :, r, :, c] = phase
    return out


def is_channels_last(x: torch.Tensor) -> bool:
    """Whether ``x`` is laid out channels-last (and not also plain NCHW, as one channel is)."""
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def _channels_last_on_a_cpu(x: torch.Tensor) -> bool:
    """The layout ``Stylizer`` gives bf16 on a CPU with native bf16 (``stylizer.resolve_layout``); a
    GPU gets channels-last frames too, and keeps the forms measured there."""
    return x.device.type == "cpu" and is_channels_last(x)


def _fold(weight: torch.Tensor, dim: int, phase: int) -> torch.Tensor:
    """Three taps along ``dim`` -> the two that an even (0) or odd (1) output position sees."""
    before, centre, after = weight.unbind(dim)
    return torch.stack((before, centre + after) if phase == 0 else (before + centre, after), dim)


def wide_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.conv2d(x, weight, bias)`` (stride 1, ``x`` already padded) in a faster form for the
    wide-kernel layers at the ends of a style network: a 9x9 kernel with 3 or 4 channels on
    one side, a shape for which oneDNN's direct convolution runs at a fraction of its speed on
    32 channels. Same multiplications, summed in another order.

    * few output channels: one convolution with a k x 1 kernel gives, for each of the k
      column offsets, that column's contribution (``k * cout`` channels); the k shifted
      slices are then summed (in fp32) into the output.
    * few input channels, k divisible by 3: the input is stacked with its 9 shifts by 0..2
      rows and columns (``9 * cin`` channels) and convolved with a (k/3) x (k/3) kernel
      dilated by 3, so that tap ``(3a + i, 3b + j)`` reads shift ``(i, j)`` at ``(3a, 3b)``.

    On a CPU with AVX-512 BF16, bf16 channels-last with at most 4 output channels (the last
    layer) goes to ``narrow_conv``, whose lanes run along the input instead of the 3 outputs.
    Other shapes go to ``F.conv2d`` unchanged, and so, in fp32 on a CPU, do few input
    channels: oneDNN's fp32 convolution runs those well (docs/performance.md#on-a-cpu-without-bf16),
    and so does a channels-last ``x`` on a CPU (bf16 where it is native): oneDNN's channels-last kernels
    run the direct form fastest (docs/performance.md#on-a-cpu-with-amx). On a GPU the frames
    come channels-last too and take the forms above, as measured there.
    """
    cout, cin, k, _ = weight.shape
    if narrow_conv.takes(x, weight):
        return narrow_conv.conv(x, weight, bias)
    if k < 5 or weight.shape[3] != k or _channels_last_on_a_cpu(x):
        return F.conv2d(x, weight, bias)
    height, width = x.shape[-2] - k + 1, x.shape[-1] - k + 1
    if cout <= 4:
        columns = weight.permute(3, 0, 1, 2).reshape(k * cout, cin, k, 1)
        parts = F.conv2d(x, columns).unflatten(1, (k, cout))
        y = parts[:, 0, ..., :width].float()
        for offset in range(1, k):
            y += parts[:, offset, ..., offset:offset + width]
        y = y if bias is None else y + bias.float()[:, None, None]
        return y.to(x.dtype)
    if cin <= 4 and k % 3 == 0 and not (x.dtype == torch.float32 and x.device.type == "cpu"):
        shifts = torch.cat([x[:, c:c + 1, i:i + height + k - 3, j:j + width + k - 3]
                            for c in range(cin) for i in range(3) for j in range(3)], 1)
        coarse = weight.unflatten(2, (k // 3, 3)).unflatten(4, (k // 3, 3))  # o, c, a, i, b, j
        return F.conv2d(shifts, coarse.permute(0, 1, 3, 5, 2, 4).reshape(cout, 9 * cin, k // 3, k // 3),
                        bias, dilation=3)
    return F.conv2d(x, weight, bias)


def first_conv(image: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
               unit: float) -> torch.Tensor:
    """A network's first layer, ``wide_conv(reflect_pad(image, k // 2), weight, bias)``, on its
    input: floats, or the frames' uint8 codes standing for ``codes * unit`` (``Stylizer`` hands
    those over where ``frame_conv`` takes them). Codes go to ``frame_conv``'s int8 kernel, exact
    in the input, the weights rounded to int8 (docs/performance.md#the-first-layer-on-the-frames-codes-2026-12-08);
    where it has no loop they become floats in the weight's dtype, as ``Stylizer`` makes them."""
    if image.dtype == torch.uint8:
        if frame_conv.takes(image, weight):
            return frame_conv.conv(image, weight, bias, unit)
        image = image.to(torch.float32).mul_(unit).to(weight.dtype)
    return wide_conv(reflect_pad(image, weight.shape[-1] // 2), weight, bias)


def relu_padded(x: torch.Tensor, pad: int) -> torch.Tensor:
    """``F.pad(F.relu(x), [pad] * 4, mode="reflect")``, the input of the next convolution.

    On a CPU the ReLU writes straight into the padded tensor's interior and the border is
    reflected from there, a few rows and columns: one pass over ``x`` instead of two, which
    counts after the first layer, 32 channels at full size and memory-bound
    (docs/performance.md#fewer-passes-over-the-full-size-activations-2026-12-04).
    The same values, in ``x``'s layout. Elsewhere, and where the padding is as wide as ``x``
    (``F.pad`` says why not), the two steps.
    """
    if x.device.type != "cpu" or pad >= min(x.shape[-2:]):
        return F.pad(F.relu(x), [pad] * 4, mode="reflect")
    return _padded(x, pad, relu=True)


def reflect_pad(x: torch.Tensor, pad: int) -> torch.Tensor:
    """``F.pad(x, [pad] * 4, mode="reflect")``; channels-last on a CPU as ``relu_padded`` writes
    it, one copy of ``x`` and its border reflected from there: F.pad's own loop runs a
    channels-last frame of 3 channels (the networks' input) at a fraction of a copy's speed,
    and NCHW faster than this (docs/performance.md#the-last-layer-across-the-lanes-2026-12-08)."""
    if not _channels_last_on_a_cpu(x) or pad >= min(x.shape[-2:]):
        return F.pad(x, [pad] * 4, mode="reflect")
    return _padded(x, pad, relu=False)


def _padded(x: torch.Tensor, pad: int, relu: bool) -> torch.Tensor:
    n, channels, height, width = x.shape
    layout = torch.channels_last if is_channels_last(x) else torch.contiguous_format
    out = torch.empty((n, channels, height + 2 * pad, width + 2 * pad), dtype=x.dtype, memory_format=layout)
    columns = slice(pad, pad + width)
    inside = out[..., pad:pad + height, columns]
    if relu:
        torch.clamp_min(x, 0, out=inside)
    else:
        inside.copy_(x)
    # row -i mirrors row i, row h-1+i row h-1-i (in x's numbering); then the columns the same
    # way over the full height, which reflects the corners both ways as F.pad does
    out[..., :pad, columns] = out[..., pad + 1:2 * pad + 1, columns].flip(-2)
    out[..., pad + height:, columns] = out[..., height - 1:height + pad - 1, columns].flip(-2)
    out[..., :pad] = out[..., pad + 1:2 * pad + 1].flip(-1)
    out[..., pad + width:] = out[..., width - 1:width + pad - 1].flip(-1)
    return out


FEW_CHANNELS = 8


def instance_norm(x: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                  eps: float = 1e-5) -> torch.Tensor:
    """``F.instance_norm`` without running statistics, as every norm of these networks is.

    On CUDA it is computed as one reduction (``var_mean``, accumulated in fp32) and one
    multiply-add: torch runs an instance norm there as a batch norm over ``N * C`` channels,
    with one thread block per channel for the statistics, so at 32 channels most of a GPU
    waits and the norms took most of a frame's time (docs/performance.md#on-a-cuda-gpu).

    On a CPU it is a group norm with one group per channel, the same statistics per sample
    and channel: torch's CPU instance norm, run as a batch norm over ``N * C`` channels, takes
    several times as long over the same activations (docs/performance.md#on-a-cpu-without-bf16).
    Channels-last with a few channels (the last layers of a style network in bf16 on a CPU),
    torch's group norm runs several times slower than over the same values in NCHW, so those
    go through NCHW and back (docs/performance.md#on-a-cpu-with-amx). Elsewhere
    ``F.instance_norm`` as it is.
    """
    if x.device.type == "cuda":
        return instance_norm_by_moments(x, weight, bias, eps)
    if x.device.type == "cpu":
        if x.shape[1] <= FEW_CHANNELS and _channels_last_on_a_cpu(x):
            y = F.group_norm(x.contiguous(), x.shape[1], weight, bias, eps)
            return y.contiguous(memory_format=torch.channels_last)
        return F.group_norm(x, x.shape[1], weight, bias, eps)
    return F.instance_norm(x, weight=weight, bias=bias, eps=eps)


def instance_norm_by_moments(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                             eps: float) -> torch.Tensor:
    var, mean = torch.var_mean(x, dim=(2, 3), correction=0, keepdim=True)
    scale = torch.rsqrt(var.float() + eps)
    if weight is not None:
        scale = scale * weight.float()[:, None, None]
    shift = -mean.float() * scale
    if bias is not None:
        shift = shift + bias.float()[:, None, None]
    return torch.addcmul(shift.to(x.dtype), x, scale.to(x.dtype))


def norm_then_pad(y: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None, *,
                  pad: int = 0, relu: bool = False, residual: torch.Tensor | None = None,
                  eps: float = 1e-5) -> torch.Tensor:
    """The step from one convolution's output to the next one's input: ``instance_norm(y,
    weight, bias)``, plus ``residual``, its ReLU where ``relu``, reflect-padded by ``pad``.

    On a CPU this is ``fused_norm``'s kernel, two passes over ``y`` instead of torch's five,
    which at full size are memory-bound and took the largest share of a frame
    (docs/performance.md#the-norm-and-what-follows-it-in-two-passes-2026-12-05). On a GPU, and
    where the kernel has no loop for the shape or could not be built, torch's steps.
    """
    if fused_norm.takes(y, weight, residual, pad):
        return fused_norm.norm_then_pad(y, weight, bias, pad, relu, residual, eps)
    return then_pad(instance_norm(y, weight, bias, eps), pad=pad, relu=relu, residual=residual)


def then_pad(y: torch.Tensor, *, pad: int = 0, relu: bool = False, residual: torch.Tensor | None = None) -> torch.Tensor:
    """``norm_then_pad``'s steps after the norm, in torch."""
    if residual is not None:
        y = residual + y
    if relu and pad:
        return relu_padded(y, pad)
    y = F.relu(y) if relu else y
    return F.pad(y, [pad] * 4, mode="reflect") if pad else y


def unpadded(x: torch.Tensor, pad: int) -> torch.Tensor:
    """The interior of ``x`` padded by ``pad`` on each side: a view, no copy."""
    return x[..., pad:x.shape[-2] - pad, pad:x.shape[-1] - pad] if pad else x


class InstanceNorm(nn.InstanceNorm2d):
    """``nn.InstanceNorm2d`` (same parameters, same state dict) computed by ``norm_then_pad``,
    which also takes what follows the norm up to the next convolution."""

    def forward(self, x: torch.Tensor, *, pad: int = 0, relu: bool = False,
                residual: torch.Tensor | None = None) -> torch.Tensor:
        return norm_then_pad(x, self.weight, self.bias, pad=pad, relu=relu, residual=residual, eps=self.eps)
