"""bench/int8.py, the int8 form of the networks that row 5 of the bench times: each of its
convolution forms computes what ``F.conv2d`` computes on the same quantized numbers, and the
whole network stays near the fp32 one (its quality figures are the bench's, not a test's)."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F

from .helpers import REPO

sys.path.insert(0, str(REPO / "bench"))
import int8  # noqa: E402  (bench/int8.py)


def dequantized(q: torch.Tensor, quant: int8.Quant) -> torch.Tensor:
    return (q.float() - quant.zero_point) * quant.scale


def quantized_weight(weight: torch.Tensor) -> torch.Tensor:
    q, scale = int8.quantize_weight(weight)
    return q.float() * scale[:, None, None, None]


@pytest.mark.parametrize("cin, cout, kernel, stride, form", [
    (3, 32, 9, 1, "shifts"), (4, 3, 9, 1, "columns"), (32, 3, 9, 1, "columns"), (32, 32, 3, 2, "plain"),
    (32, 16, 3, 1, "plain")])
def test_each_convolution_form_is_the_convolution_of_the_quantized_numbers(cin, cout, kernel, stride, form):
    """int8 x int8 sums are exact (on codes up to ``TOP``, which cannot saturate AVX2's pairs
    of products), so each form (reflect padding, shifted copies, column sums, stride) must
    give F.conv2d of the dequantized input and weights to float rounding.
    A shifted copy one pixel off, a lost bias or padding of the wrong kind all fail here."""
    torch.manual_seed(0)
    quant = int8.Quant(-1.5, 4.0)
    q = torch.randint(0, int8.TOP + 1, (1, cin, 26, 38), dtype=torch.uint8)
    q = q.contiguous(memory_format=int8.CHANNELS_LAST)
    weight, bias = torch.randn(cout, cin, kernel, kernel), torch.randn(cout)
    conv = int8.Conv(weight, bias, quant, stride)
    assert conv.form == form
    if form == "columns":  # a scale per column offset and output channel: its kernels, back in place
        columns = quantized_weight(weight.permute(3, 0, 1, 2).reshape(kernel * cout, cin, kernel, 1))
        effective = columns.reshape(kernel, cout, cin, kernel).permute(1, 2, 3, 0)
    else:  # the shifted form's kernel holds the same weights per output channel: the same scales
        effective = quantized_weight(weight)
    expected = F.conv2d(F.pad(dequantized(q, quant), [kernel // 2] * 4, mode="reflect"), effective, bias, stride=stride)
    got = conv(q)
    assert got.shape == expected.shape
    assert (got - expected).abs().max() <= 1e-4 * expected.abs().max()


@pytest.mark.parametrize("size", [(5, 7), (12, 20)])
def test_the_doubling_is_upsampling_then_the_convolution(size):
    """One 3x3 convolution with a phase per group of output channels and a pixel shuffle: the
    same as doubling the (dequantized) input, reflect padding and the 3x3 convolution of the
    folded, quantized phase kernels, borders included."""
    torch.manual_seed(0)
    quant = int8.Quant(0.0, 3.0)
    q = torch.randint(0, int8.TOP + 1, (1, 16, *size), dtype=torch.uint8).contiguous(memory_format=int8.CHANNELS_LAST)
    weight = torch.randn(8, 16, 3, 3)
    doubling = int8.Doubling(weight, None, quant)
    got = doubling(q)
    x = F.interpolate(dequantized(q, quant), scale_factor=2, mode="nearest")
    expected = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), weight)
    assert got.shape == expected.shape == (1, 8, 2 * size[0], 2 * size[1])
    # the phase kernels are quantized, not the 3x3 one: close, not equal
    assert (got - expected).abs().max() < 0.02 * expected.abs().max()


def test_quantize_rounds_and_saturates():
    quant = int8.Quant(-1.0, 1.0)
    x = torch.tensor([-5.0, 0.0, 0.5 * quant.scale + 1e-6, 7.0])
    q = quant.quantize(x)
    assert q.dtype == torch.uint8
    assert q.tolist() == [0, quant.zero_point, quant.zero_point + 1, int8.TOP]
    assert (dequantized(quant.quantize(torch.linspace(-1, 1, 101)), quant) - torch.linspace(-1, 1, 101)).abs().max() \
        <= quant.scale / 2 + 1e-6


@pytest.mark.parametrize("network", ["26-style", "TransformerNet"])
def test_the_int8_network_stays_near_fp32_on_the_photos(network):
    """Calibrated on the sample photos, the int8 network answers their fp32 frames closely: a
    wrong pixel shuffle, zero point or folded scale puts it under 20 dB (a different style of
    the same network is at 15-25 dB). Where it stands against the 35 dB floor on a real clip
    is the bench's figure (docs/performance.md#int8-on-a-cpu)."""
    from scoring.networks.models import TransformerNet, UnitRange, load_model

    sys.path.insert(0, str(REPO / "bench"))
    from nets import random_weights

    if network == "26-style":
        model = load_model("7")
    else:
        net = TransformerNet()
        net.load_state_dict(random_weights())
        model = UnitRange(net.eval()).eval()
    quantized = int8.quantize(model, 72, 128)
    assert quantized.psnr_db >= 25, quantized.psnr_db
