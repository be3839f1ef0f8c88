"""What the bench's rows share: the FLOPs of a frame, counted the same way for every row, the
random TransformerNet weights both sides of a row run, and how close two frames are."""

from __future__ import annotations

import numpy as np
import torch


def conv_flops(model: torch.nn.Module, height: int, width: int) -> int:
    """Multiply-adds x 2 of every convolution as the network defines it, counted from the
    layers' output shapes. (An upsampling layer computes its doubling folded into the
    convolution, with 16/36 of these multiplications, and a wide 9x9 layer runs rewritten by
    ``models.wide_conv``; the count is the network's, the same for the reference approach and
    ours.)"""
    from scoring.networks.models import ConvLayer, StyledConv, UpsampleConvLayer

    total = 0

    def hook(module, _inputs, output):
        nonlocal total
        weight = {torch.nn.Conv2d: lambda m: m.weight, UpsampleConvLayer: lambda m: m.conv2d.weight,
                  ConvLayer: lambda m: m.conv2d.weight, StyledConv: lambda m: m.w}[type(module)](module)
        cout, cin, kh, kw = weight.shape
        total += 2 * output.shape[0] * cout * output.shape[2] * output.shape[3] * cin * kh * kw

    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, StyledConv, UpsampleConvLayer, ConvLayer))]
    # layers that may compute without calling their Conv2d (folded or rewritten) count for it
    inner = {m.conv2d for m in layers if isinstance(m, (UpsampleConvLayer, ConvLayer))}
    handles = [m.register_forward_hook(hook) for m in layers if m not in inner]
    with torch.inference_mode():
        model(torch.zeros(1, 3, height + (-height % 4), width + (-width % 4)))
    for h in handles:
        h.remove()
    return total


def random_weights() -> dict[str, torch.Tensor]:
    """A TransformerNet state dict with random weights (seed 0), loadable by pytorch/examples'
    network (bench/reference.py) and ours.

    A freshly initialised net answers about 0 +- 0.3 on the 0..255 scale, so nearly every
    pixel would clamp to black and PSNR would measure nothing; the last layer is scaled so
    the output spans 0..255 like a trained network's (mean ~128, std ~50).
    """
    from scoring.networks.models import TransformerNet

    torch.manual_seed(0)
    net = TransformerNet()
    with torch.no_grad():
        net.deconv3.conv2d.weight.mul_(160.0)
        net.deconv3.conv2d.bias.fill_(127.5)
    return net.state_dict()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two uint8 frames, in dB (inf when they are equal)."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))
