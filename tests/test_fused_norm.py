"""``fused_norm``: the norm, residual sum, ReLU and reflection pad in one compiled kernel, against
torch's steps, in the networks, and where it cannot be built."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from skimage import data

from scoring.networks import fused_norm, layers, narrow_conv, native
from scoring.networks.layers import instance_norm, norm_then_pad, then_pad, unpadded
from scoring.networks.stylizer import Stylizer

from .helpers import psnr, style_network

LAST = torch.channels_last


@pytest.fixture
def built():
    """The kernel, which ``make setup`` gives a compiler for: without it these tests fail."""
    assert fused_norm.library() is not None, "fused_norm.cpp did not build (is g++ installed?)"


def torchs_steps_exactly(y, weight, bias, pad, relu, residual):
    """What the kernel computes, in fp64 from the same bf16 values (NCHW: torch's channels-last
    group norm loses the variance of a large mean, even in fp32)."""
    residual = None if residual is None else residual.double()
    exact = then_pad(instance_norm(y.double().contiguous(), weight.double(), bias.double()), pad=pad, relu=relu,
                     residual=residual)
    return exact.float()


def activations(*shape, mean=0.0, spread=1.0, layout=LAST, dtype=torch.bfloat16):
    return (torch.randn(*shape) * spread + mean).to(dtype).contiguous(memory_format=layout)


LAYOUTS = {"channels-last bf16": (LAST, torch.bfloat16), "nchw bf16": (torch.contiguous_format, torch.bfloat16),
           "nchw fp32": (torch.contiguous_format, torch.float32)}


SHAPES = [(3, 10, 14), (4, 12, 20), (8, 10, 14), (16, 9, 7), (32, 11, 13), (64, 6, 10), (128, 5, 6)]


# channels-last has no loop for 3 channels (test_what_the_kernel_has_no_loop_for_takes_torchs_steps)
@pytest.mark.parametrize("layout, channels, height, width", [
    (layout, *shape) for layout in LAYOUTS for shape in SHAPES if not (LAYOUTS[layout][0] == LAST and shape[0] == 3)])
@pytest.mark.parametrize("pad, relu, residual", [(0, False, False), (1, True, False), (4, True, False),
                                                 (1, False, True), (0, False, True)])
@pytest.mark.parametrize("threads", [1, 2])
def test_the_kernel_is_torchs_steps_rounded_once(built, layout, channels, height, width, pad, relu, residual,
                                                 threads):
    memory, dtype = LAYOUTS[layout]
    torch.manual_seed(channels + pad)
    y = activations(2, channels, height, width, mean=0.5, spread=3.0, layout=memory, dtype=dtype)
    weight, bias = torch.rand(channels) + 0.5, torch.randn(channels)
    padded = activations(2, channels, height + 2, width + 2, layout=memory, dtype=dtype)
    skip = unpadded(padded, 1) if residual else None  # a padded tensor's inside
    assert fused_norm.takes(y, weight, skip, pad)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = fused_norm.norm_then_pad(y, weight, bias, pad, relu, skip, 1e-5)
    finally:
        torch.set_num_threads(previous)
    expected = torchs_steps_exactly(y, weight, bias, pad, relu, skip)
    assert got.shape == expected.shape and got.dtype == dtype and got.is_contiguous(memory_format=memory)
    # one rounding (to bf16: 8 significant bits, within half a step) from the exact result
    torch.testing.assert_close(got.float(), expected, rtol=2 ** -8 if dtype == torch.bfloat16 else 1e-5, atol=1e-5)
    if relu:
        assert got.min() >= 0


def test_a_large_mean_against_a_small_spread_keeps_its_variance(built):
    """Sums of squares would lose the variance to the mean's square; the kernel sums around a
    pivot. (torch's channels-last group norm is 1.5 off here, in fp32.)"""
    torch.manual_seed(1)
    y = activations(1, 32, 16, 768, mean=256.0, spread=2.0)
    weight, bias = torch.ones(32), torch.zeros(32)
    got = fused_norm.norm_then_pad(y, weight, bias, 1, False, None, 1e-5)
    torch.testing.assert_close(got.float(), torchs_steps_exactly(y, weight, bias, 1, False, None),
                               rtol=2 ** -8, atol=1e-5)


@pytest.mark.parametrize("case", ["3 channels, channels-last", "a row the channels-last loop does not divide",
                                  "fp32 channels-last", "fp16", "neither layout", "a residual in the other layout"])
def test_what_the_kernel_has_no_loop_for_takes_torchs_steps(built, case):
    y, skip = activations(1, 8, 6, 10), None
    if case == "3 channels, channels-last":
        y = activations(1, 3, 6, 10)
    elif case == "a row the channels-last loop does not divide":
        y = activations(1, 8, 6, 9)  # 72 values a row: not a multiple of 16
    elif case == "fp32 channels-last":
        y = y.float()
    elif case == "fp16":
        y = y.contiguous().half()
    elif case == "neither layout":
        y = torch.randn(1, 8, 10, 6).to(torch.bfloat16).transpose(2, 3)
    else:
        skip = torch.randn(1, 8, 6, 10).to(torch.bfloat16)  # NCHW beside a channels-last y
    weight, bias = torch.rand(y.shape[1]), torch.randn(y.shape[1])
    assert not fused_norm.takes(y, weight, skip, 1)
    expected = then_pad(instance_norm(y, weight, bias), pad=1, relu=True, residual=skip)
    assert torch.equal(norm_then_pad(y, weight, bias, pad=1, relu=True, residual=skip), expected)


def test_the_kernel_shares_torchs_openmp_runtime(built):
    """One OpenMP runtime in the process, torch's: a second one's threads would spin against it."""
    runtimes = {line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines() if "libgomp" in line}
    assert len(runtimes) == 1 and Path(torch.__file__).parent in Path(runtimes.pop()).parents


def network(name, tmp_path):
    """The network and how many norms it has, the last one (3 channels) counted apart."""
    norms = {"26-style": 17, "TransformerNet": 15, "style picture": 12}  # TransformerNet's last layer has none
    return style_network(name, tmp_path), norms[name]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", ["26-style", "TransformerNet", "style picture"])
def test_each_network_runs_its_norms_through_the_kernel_on_a_cpu(built, tmp_path, monkeypatch, name, layout):
    """In each layout ``Stylizer`` gives a CPU (channels-last native bf16, NCHW otherwise) the
    kernel takes each norm it has a loop for (NCHW all, channels-last all but a last one of 3
    channels, unless the narrow convolution before it answered in NCHW), and the frame is the
    one torch's steps give."""
    memory, dtype = LAYOUTS[layout]
    model, norms = network(name, tmp_path)
    frame = data.astronaut()[:250, :187][None]  # not a multiple of 4: padded, then cropped
    stylizer = Stylizer(model, "cpu", "bf16" if dtype == torch.bfloat16 else "fp32", layout=memory)
    calls = []
    kernel = fused_norm.norm_then_pad
    monkeypatch.setattr(fused_norm, "norm_then_pad", lambda *args: calls.append(args[0].shape) or kernel(*args))
    got = stylizer(frame)
    last_has_3 = name != "TransformerNet"
    # the last norm's 3 channels come NCHW from the narrow convolution, or in NCHW throughout
    assert len(calls) == norms + (last_has_3 and (memory != LAST or narrow_conv.available()))
    monkeypatch.setattr(fused_norm, "library", lambda: None)
    steps = stylizer(frame)
    floor = 45 if dtype == torch.bfloat16 else 60
    assert psnr(got[0], steps[0]) >= floor, f"{psnr(got[0], steps[0]):.1f} dB"


def test_without_a_compiler_the_norms_are_torchs_steps(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    fused_norm.library.cache_clear()
    try:
        with caplog.at_level("WARNING", logger=native.__name__):
            assert fused_norm.library() is None
        assert "did not build" in caplog.text
        y = activations(1, 32, 8, 12)
        assert not fused_norm.takes(y, None, None, 1)
        assert torch.equal(norm_then_pad(y, pad=1, relu=True), layers.relu_padded(instance_norm(y), 1))
    finally:
        fused_norm.library.cache_clear()


def test_ranks_starting_together_build_the_kernel_once(tmp_path):
    """Two processes on a machine without the kernel yet: one builds it while the other waits,
    and both load the same file; nothing half-written is left."""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    probe = "from scoring.networks import fused_norm; print(fused_norm.library() is not None)"
    ranks = [subprocess.Popen([sys.executable, "-c", probe], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    assert [rank.communicate(timeout=300)[0].strip() for rank in ranks] == ["True", "True"]
    kernels = tmp_path / "video-style-transfer" / "kernels"
    assert [p.suffix for p in sorted(kernels.iterdir())] == [".lock", ".so"]


def test_the_same_frame_gives_the_same_output_run_after_run(built):
    """Each thread adds up its own rows, then the threads' sums in their order: no race decides
    the last bits (the tests that compare a run with another rely on it)."""
    torch.manual_seed(2)
    y, weight, bias = activations(1, 32, 64, 96, spread=4.0), torch.rand(32), torch.randn(32)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        outputs = [fused_norm.norm_then_pad(y, weight, bias, 1, True, None, 1e-5) for _ in range(5)]
    finally:
        torch.set_num_threads(previous)
    assert all(torch.equal(outputs[0], other) for other in outputs[1:])
