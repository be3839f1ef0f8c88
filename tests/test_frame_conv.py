"""``frame_conv``: a network's first layer on the frames' uint8 codes with int8 weights, on a CPU
with AVX-512 VNNI and BF16, against the exact convolution of the same numbers, in the networks,
and where it has no loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data

from scoring.networks import frame_conv, layers
from scoring.networks.stylizer import Stylizer

from .helpers import psnr, same_on_any_thread_count, style_network

LAST = torch.channels_last

# the kernel is built with -march=native; its loops need the CPU's int8 dot products
needs_the_loops = pytest.mark.skipif(not frame_conv.available(),
                                     reason="this CPU has no AVX-512 VNNI and BF16, or has AMX")


def inputs(n, cin, cout, k, height, width, bias=True, seed=0):
    """Frames' codes as the pipe gives them (N, H, W, C in memory) seen as NCHW, and bf16 weights."""
    generator = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 256, (n, height, width, cin), dtype=torch.uint8, generator=generator)
    weight = torch.randn(cout, cin, k, k, generator=generator) / (cin * k)
    b = torch.randn(cout, generator=generator) if bias else None
    return codes.permute(0, 3, 1, 2), weight.to(torch.bfloat16), None if b is None else b.to(torch.bfloat16)


def exactly(codes, weight, bias, unit):
    """The layer in fp64 on the codes and the int8 weights the kernel multiplies."""
    packed, scale = frame_conv.quantized(weight)
    cout, cin, k, _ = weight.shape
    q = packed.permute(0, 1, 4, 2, 3).reshape(k, -1, cout)[:, :k * cin].reshape(k, k, cin, cout)
    w = q.permute(3, 2, 0, 1).double() * scale.double()[:, None, None, None]
    x = F.pad(codes.double() * unit, [k // 2] * 4, mode="reflect")
    return F.conv2d(x, w, None if bias is None else bias.double()).float()


def test_the_weights_round_to_int8_with_a_scale_per_output_channel():
    """Each channel's largest weight at 127, every weight within half a step, the zeros that fill
    each tap row's last group of four really zero."""
    _, weight, _ = inputs(1, 3, 32, 9, 9, 9)
    packed, scale = frame_conv.quantized(weight)
    assert packed.dtype == torch.int8 and packed.shape == (9, 7, 2, 16, 4)  # 27 weights a row -> 7 fours
    rows = packed.permute(0, 1, 4, 2, 3).reshape(9, 28, 32)  # dy, (dx, c) + 1 zero, o
    assert torch.equal(rows[:, 27], torch.zeros(9, 32, dtype=torch.int8))
    q = rows[:, :27].reshape(9, 9, 3, 32).permute(3, 2, 0, 1)  # o, c, dy, dx
    assert torch.equal(q.abs().amax(dim=(1, 2, 3)), torch.full((32,), 127, dtype=torch.int8))
    error = (q.float() * scale[:, None, None, None] - weight.float()).abs()
    assert (error <= scale[:, None, None, None] * (0.5 + 1e-5)).all()


@needs_the_loops
@pytest.mark.parametrize("cin", [1, 3, 4])
@pytest.mark.parametrize("cout", [16, 32, 64])
@pytest.mark.parametrize("k, height, width", [(9, 13, 70), (3, 4, 9), (1, 3, 5), (9, 5, 131)])
def test_the_kernel_is_the_exact_convolution_rounded_once(cin, cout, k, height, width):
    """Every channel count it has a loop for, widths that end a row mid-block (6 pixels a block
    at 32 and 64 outputs, 16 at 16), pads as wide as rows allow, two samples, a bias or none,
    the units of both networks."""
    codes, weight, bias = inputs(2, cin, cout, k, height, width, bias=cout != 32, seed=cin * 100 + cout)
    unit = 1 / 255 if cout != 64 else 1.0
    assert frame_conv.takes(codes, weight)
    got = frame_conv.conv(codes, weight, bias, unit)
    expected = exactly(codes, weight, bias, unit)
    assert got.shape == expected.shape and got.dtype == torch.bfloat16 and got.is_contiguous(memory_format=LAST)
    # integer sums, exact; one fp32 scale and bias, then one rounding to bf16 (8 significant bits)
    torch.testing.assert_close(got.float(), expected, rtol=2 ** -8, atol=1e-5)


@needs_the_loops
def test_every_pixel_and_channel_is_written_and_the_codes_are_left_as_they_were():
    codes, weight, bias = inputs(1, 3, 32, 9, 11, 77)
    before = codes.clone()
    got = frame_conv.conv(codes, weight, bias, 1 / 255)
    assert torch.isfinite(got.float()).all()
    assert torch.equal(codes, before)
    torch.testing.assert_close(got.float(), exactly(codes, weight, bias, 1 / 255), rtol=2 ** -8, atol=1e-5)


@needs_the_loops
def test_the_same_codes_give_the_same_output_on_any_thread_count():
    codes, weight, bias = inputs(1, 3, 32, 9, 40, 96)
    assert same_on_any_thread_count(lambda: frame_conv.conv(codes, weight, bias, 1 / 255))


@pytest.mark.parametrize("case", ["float input", "NCHW codes", "fp32 weights", "8 outputs", "5 channels",
                                  "even kernel", "pad as wide as the frame", "a gradient wanted"])
def test_what_it_has_no_loop_for_takes_the_float_path(case, monkeypatch):
    """``first_conv`` then converts the codes as ``Stylizer`` would and calls ``wide_conv``."""
    codes, weight, bias = inputs(1, 3, 32, 9, 6, 10)
    if case == "float input":
        codes = (codes.float() / 255).to(torch.bfloat16)
    elif case == "NCHW codes":
        codes = codes.contiguous()
    elif case == "fp32 weights":
        weight, bias = weight.float(), bias.float()
    elif case == "8 outputs":
        weight, bias = weight[:8], bias[:8]
    elif case == "5 channels":
        codes, weight, bias = inputs(1, 5, 32, 9, 6, 10)
    elif case == "even kernel":
        weight = weight[..., :8, :8]
    elif case == "pad as wide as the frame":
        codes, weight, bias = inputs(1, 3, 32, 9, 4, 10)
    else:
        weight.requires_grad_(True)
    assert not frame_conv.takes(codes, weight)
    monkeypatch.setattr(frame_conv, "conv", lambda *args: pytest.fail("the kernel was called"))
    if case == "pad as wide as the frame":  # refused as F.pad refuses it
        with pytest.raises(RuntimeError, match="Padding size should be less than"):
            layers.first_conv(codes, weight, bias, unit=1 / 255)
        return
    got = layers.first_conv(codes, weight, bias, unit=1 / 255)
    x = codes.float() / 255 if codes.dtype == torch.uint8 else codes
    expected = layers.wide_conv(layers.reflect_pad(x.to(weight.dtype), weight.shape[-1] // 2), weight, bias)
    torch.testing.assert_close(got.detach().float(), expected.detach().float())


def test_without_the_kernel_the_frames_arrive_as_floats(monkeypatch):
    monkeypatch.setattr(frame_conv, "library", lambda: None)
    codes, weight, _ = inputs(1, 3, 32, 9, 6, 10)
    assert not frame_conv.available() and not frame_conv.takes(codes, weight)
    assert not Stylizer(style_network("26-style", None), "cpu", "bf16", layout=LAST).codes


@needs_the_loops
@pytest.mark.parametrize("name", ["26-style", "TransformerNet", "style picture"])
def test_each_network_reads_the_codes_where_its_first_layer_has_a_loop(tmp_path, monkeypatch, name):
    """The 26-style network and TransformerNet (3 -> 32, 9x9) take the frames' codes in bf16 on
    this CPU, their first layer through the kernel once a frame; the style picture network
    (3 -> 8) gets floats as before. The frame is within bf16's reach of the float path's, and
    as far from fp32's."""
    network = style_network(name, tmp_path)
    stylizer = Stylizer(network, "cpu", "bf16")
    assert stylizer.codes == (name != "style picture")
    frame = data.astronaut()[:250, :187][None]  # not a multiple of 4 and not contiguous: padded, cropped
    calls = []
    kernel = frame_conv.conv
    monkeypatch.setattr(frame_conv, "conv", lambda *args: calls.append(args[0].shape) or kernel(*args))
    got = stylizer(frame)
    assert calls == ([] if name == "style picture" else [(1, 3, 252, 188)])
    stylizer.codes = False
    floats = stylizer(frame)
    fp32 = Stylizer(network, "cpu", "fp32")(frame)
    assert got.shape == floats.shape == frame.shape and got.dtype == np.uint8
    assert psnr(got[0], floats[0]) >= 42, f"{psnr(got[0], floats[0]):.1f} dB"
    assert psnr(got[0], fp32[0]) >= min(psnr(floats[0], fp32[0]) - 1.5, 45)
