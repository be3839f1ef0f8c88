"""``narrow_conv``: the last layer of every style network (1 to 4 output channels) on a CPU with
AVX-512 BF16, against the exact convolution, in the networks, and where it has no loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data

from scoring.networks import layers, narrow_conv
from scoring.networks.stylizer import Stylizer, cpu_has_native_bf16

from .helpers import psnr, same_on_any_thread_count, style_network

LAST = torch.channels_last

# the kernel is built with -march=native; its loops need the CPU's bf16 dot products
needs_the_loops = pytest.mark.skipif(not narrow_conv.available(), reason="this CPU has no AVX-512 BF16")


def inputs(n, cin, cout, k, height, width, bias=True, seed=0):
    """A padded bf16 channels-last input for an output of ``height`` x ``width``, and weights."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cin, height + k - 1, width + k - 1, generator=generator)
    weight = torch.randn(cout, cin, k, k, generator=generator) / (cin * k)
    b = torch.randn(cout, generator=generator) if bias else None
    return (x.to(torch.bfloat16).contiguous(memory_format=LAST), weight.to(torch.bfloat16),
            None if b is None else b.to(torch.bfloat16))


def exactly(x, weight, bias):
    """The convolution in fp64 of the same bf16 values."""
    return F.conv2d(x.double(), weight.double(), None if bias is None else bias.double()).float()


@needs_the_loops
@pytest.mark.parametrize("cin", [2, 4, 8, 16, 32, 64, 128])
@pytest.mark.parametrize("cout", [1, 2, 3, 4])
@pytest.mark.parametrize("k, height, width", [(9, 13, 70), (3, 6, 9), (1, 4, 5), (9, 2, 131)])
def test_the_kernel_is_the_exact_convolution_rounded_once(cin, cout, k, height, width):
    """Every channel count it has a loop for, widths that end a row mid-block (70 and 131
    pixels: 64-pixel blocks at 4 channels, 6 at 32), two samples, a bias or none."""
    x, weight, bias = inputs(2, cin, cout, k, height, width, bias=cout != 2, seed=cin * 10 + cout)
    assert narrow_conv.takes(x, weight)
    got = narrow_conv.conv(x, weight, bias)
    expected = exactly(x, weight, bias)
    assert got.shape == expected.shape and got.dtype == torch.bfloat16 and got.is_contiguous()
    # fp32 sums of 81 * C products, then one rounding to bf16 (8 significant bits)
    torch.testing.assert_close(got.float(), expected, rtol=2 ** -8, atol=2e-3)


@needs_the_loops
def test_every_pixel_and_channel_is_written_and_the_input_is_left_as_it_was():
    """A wrong stride or a block past the row's end would leave the output's garbage or
    overwrite its neighbours: an output filled with NaN first shows either."""
    x, weight, bias = inputs(1, 4, 3, 9, 11, 77)
    before = x.clone()
    got = narrow_conv.conv(x, weight, bias)
    assert torch.isfinite(got.float()).all()
    assert torch.equal(x, before)
    torch.testing.assert_close(got.float(), exactly(x, weight, bias), rtol=2 ** -8, atol=2e-3)


@needs_the_loops
def test_the_same_input_gives_the_same_output_on_any_thread_count():
    x, weight, bias = inputs(1, 32, 3, 9, 40, 96)
    assert same_on_any_thread_count(lambda: narrow_conv.conv(x, weight, bias))


@pytest.mark.parametrize("case", ["fp32", "fp32 weights", "NCHW", "5 outputs", "3 inputs", "48 inputs",
                                  "a gradient wanted", "not square"])
def test_what_it_has_no_loop_for_takes_the_other_forms(case, monkeypatch):
    x, weight, _ = inputs(1, 4, 3, 9, 6, 10)
    if case == "fp32":
        x, weight = x.float(), weight.float()
    elif case == "fp32 weights":
        weight = weight.float()
    elif case == "NCHW":
        x = x.contiguous()
    elif case == "5 outputs":
        weight = torch.randn(5, 4, 9, 9).to(torch.bfloat16)
    elif case == "3 inputs":
        x, weight, _ = inputs(1, 3, 3, 9, 6, 10)
    elif case == "48 inputs":
        x, weight, _ = inputs(1, 48, 3, 9, 6, 10)
    elif case == "a gradient wanted":
        weight.requires_grad_(True)
    else:
        weight = torch.randn(3, 4, 9, 7).to(torch.bfloat16)
    assert not narrow_conv.takes(x, weight)
    monkeypatch.setattr(narrow_conv, "conv", lambda *args: pytest.fail("the kernel was called"))
    if case == "fp32 weights":  # refused as F.conv2d refuses it, not rounded to bf16 quietly
        with pytest.raises(RuntimeError, match="should be the same"):
            layers.wide_conv(x, weight)
    else:
        got = layers.wide_conv(x, weight)  # grad mode on, as a gradient needs
        torch.testing.assert_close(got.detach().float(), exactly(x, weight.detach(), None), rtol=2 ** -7, atol=2e-2)


def test_without_the_kernel_the_layer_is_onednns(monkeypatch):
    x, weight, bias = inputs(1, 4, 3, 9, 6, 10)
    monkeypatch.setattr(narrow_conv, "library", lambda: None)
    assert not narrow_conv.available() and not narrow_conv.takes(x, weight)
    assert torch.equal(layers.wide_conv(x, weight, bias), F.conv2d(x, weight, bias))


@needs_the_loops
@pytest.mark.parametrize("name", ["26-style", "TransformerNet", "style picture"])
def test_each_network_styles_its_last_layer_by_the_kernel(tmp_path, monkeypatch, name):
    """The last layer of each network (4, 32 and 8 channels to 3) goes through the kernel in bf16
    on this CPU, once a frame, and the frame is within bf16's reach of oneDNN's."""
    assert cpu_has_native_bf16()
    stylizer = Stylizer(style_network(name, tmp_path), "cpu", "bf16")
    frame = data.astronaut()[:250, :187][None]  # not a multiple of 4: padded, then cropped
    calls = []
    kernel = narrow_conv.conv
    monkeypatch.setattr(narrow_conv, "conv", lambda x, w, b=None: calls.append(w.shape[1]) or kernel(x, w, b))
    got = stylizer(frame)
    assert calls == [{"26-style": 4, "TransformerNet": 32, "style picture": 8}[name]]
    monkeypatch.setattr(narrow_conv, "library", lambda: None)
    onednn = stylizer(frame)
    assert got.shape == onednn.shape == frame.shape and got.dtype == np.uint8
    assert psnr(got[0], onednn[0]) >= 45, f"{psnr(got[0], onednn[0]):.1f} dB"
