"""int8 on a CPU, tried and not kept (docs/performance.md#int8-on-a-cpu): the 26-style network
and TransformerNet with int8 weights and activations through oneDNN's quantized convolution
(``torch.ops.onednn.qconv_pointwise``: VNNI's int8 dot products), the instance norms in fp32.
Row 5 of bench/run.py times it beside OpenVINO and our default; run alone it prints how close
it comes to fp32 for a few styles, on the sample photos it was calibrated on and on frames
of a held-out clip:

    python bench/int8.py [--clip FILE] [--styles 0,7,19]

* Weights: int8, one scale per output channel (symmetric). A bias before an instance norm is
  dropped (the norm takes every per-channel constant out again).
* Activations: uint8 in channels-last order, one scale per tensor. The frames themselves are
  the first layer's input (``uint8`` is what the decoder gives), so nothing is lost there.
  Where the CPU has no VNNI (AVX2 alone), oneDNN multiplies by ``vpmaddubsw``, whose sums of
  two uint8 x int8 products saturate at int16's 32767: there the codes stop at ``TOP`` = 127
  (2 x 127 x 127 fits) and the frames lose their lowest bit; with 255, a layer was 10% off.
  Every other quantized tensor comes out of an instance norm (or a residual sum), and is
  rounded into uint8 by the norm itself: the next layer's scale is folded into the norm's
  weight and bias, a ReLU is the clamp at zero.
* Calibration: the fp32 network on the photos scikit-image ships (``media.samples``), at
  the frame size, with hooks on the layers whose inputs are quantized; the range of each is
  its observed minimum and maximum, widened by ``MARGIN``. The same photos on every rank
  and machine would give the same scales, so segments styled apart would match.

The layers keep the forms that ``layers.py`` uses for bf16: the first 9x9 layer over 3
channels as a dilated 3x3 over 27 shifted copies (oneDNN's int8 kernels want many input
channels), the doublings as one 3x3 convolution with four times the output channels (one per
phase) and a pixel shuffle, the 9x9 layers into 3 channels as a 9x1 convolution per column
offset and a shifted sum. tests/test_int8.py checks each against ``F.conv2d`` on the same
quantized numbers.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# how close to fp32 a precision must stay to be a default (tests/test_models.py holds bf16 to it)
FLOOR_DB = 35.0
CHANNELS_LAST = torch.channels_last
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


# --------------------------------------------------------------------------- the parts


# the largest code an activation takes: all of uint8 where VNNI's dot products are exact, seven
# bits where AVX2's pairs of products would saturate (module docstring)
TOP = 255 if torch.cpu._is_vnni_supported() else 127


class Quant:
    """How a tensor is stored in uint8: ``real = scale * (q - zero_point)``, q in 0..``TOP``."""

    def __init__(self, low: float, high: float):
        low, high = min(low, 0.0), max(high, 1e-6)
        self.scale = (high - low) / TOP
        self.zero_point = int(round(-low / self.scale))

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """fp32 -> uint8 (rounded, saturated at 0 and ``TOP``), in ``x``'s memory order."""
        y = torch.addcmul(torch.full((), self.zero_point + 0.5), x, torch.full((), 1.0 / self.scale))
        return y.clamp_(0.0, TOP).to(torch.uint8)


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 weights with one symmetric scale per output channel, and those scales."""
    scale = weight.abs().amax(dim=(1, 2, 3)).clamp_min(1e-12) / 127.0
    q = (weight / scale[:, None, None, None]).round_().clamp_(-127, 127).to(torch.int8)
    return q, scale


class QConv:
    """A convolution with int8 weights on a uint8 channels-last input of a given ``Quant``;
    answers fp32 channels-last. ``x`` comes already padded."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, quant: Quant, stride: int = 1,
                 dilation: int = 1):
        self.quant, self.stride, self.dilation = quant, [stride] * 2, [dilation] * 2
        q, self.w_scale = quantize_weight(weight.float())
        self.w_zero = torch.zeros(len(self.w_scale), dtype=torch.int64)
        self.bias = None if bias is None else bias.float()
        self.packed = torch.ops.onednn.qconv_prepack(q, self.w_scale, quant.scale, quant.zero_point, self.stride,
                                                     [0, 0], self.dilation, 1, None)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.onednn.qconv_pointwise(x, self.quant.scale, self.quant.zero_point, self.packed, self.w_scale,
                                                self.w_zero, self.bias, self.stride, [0, 0], self.dilation, 1,
                                                1.0, 0, torch.float32, "none", [], "")


def reflect(x: torch.Tensor, pad: int) -> torch.Tensor:
    return F.pad(x, [pad] * 4, mode="reflect")


class Conv:
    """A layer's convolution on quantized input, in the form that is fastest in int8 for its
    shape (see the module's docstring); padding included (reflect, as the networks pad)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, quant: Quant, stride: int = 1):
        cout, cin, k, _ = weight.shape
        self.k, self.cout, self.stride = k, cout, stride
        self.form = "columns" if k == 9 and cout <= 4 else "shifts" if k == 9 and cin <= 4 else "plain"
        if self.form == "columns":  # one k x 1 kernel per column offset: k * cout output channels
            self.conv = QConv(weight.permute(3, 0, 1, 2).reshape(k * cout, cin, k, 1), None, quant)
            self.bias = None if bias is None else bias.float()[:, None, None]
        elif self.form == "shifts":  # tap (3a + i, 3b + j) reads shift (i, j) at (3a, 3b)
            coarse = weight.unflatten(2, (3, 3)).unflatten(4, (3, 3)).permute(0, 1, 3, 5, 2, 4)  # o, c, i, j, a, b
            self.conv = QConv(coarse.reshape(cout, 9 * cin, 3, 3), bias, quant, dilation=3)
        else:
            self.conv = QConv(weight, bias, quant, stride)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = reflect(x, self.k // 2)
        if self.form == "shifts":
            size = (x.shape[-2] - 2, x.shape[-1] - 2)
            x = torch.cat([x[:, c:c + 1, i:i + size[0], j:j + size[1]] for c in range(x.shape[1])
                           for i in range(3) for j in range(3)], 1).contiguous(memory_format=CHANNELS_LAST)
            return self.conv(x)
        if self.form == "plain":
            return self.conv(x)
        parts = self.conv(x)  # [n, k * cout, h, w + k - 1]
        width = parts.shape[-1] - self.k + 1
        y = parts[:, :self.cout, :, :width].contiguous()
        for offset in range(1, self.k):
            y += parts[:, offset * self.cout:(offset + 1) * self.cout, :, offset:offset + width]
        return y if self.bias is None else y.add_(self.bias)


class Doubling:
    """``conv3x3(reflect_pad1(nearest_upsample_x2(x)))`` on quantized input: the four phases
    of ``layers.double_then_conv3`` as one 3x3 convolution with 4 x cout output channels over
    the replicate-padded input (each phase's 2x2 kernel placed in a 3x3 one), then a pixel
    shuffle: one oneDNN call and one copy."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, quant: Quant):
        from scoring.networks.layers import _fold

        cout = weight.shape[0]
        kernels = []
        for r in (0, 1):
            for c in (0, 1):
                phase = _fold(_fold(weight.float(), 2, r), 3, c)  # [cout, cin, 2, 2], at rows r..r+1, cols c..c+1
                kernels.append(F.pad(phase, (c, 1 - c, r, 1 - r)))
        self.cout = cout
        self.conv = QConv(torch.cat(kernels), None if bias is None else bias.repeat(4), quant)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        phases = self.conv(F.pad(x, (1, 1, 1, 1), mode="replicate"))  # [n, 4 * cout, h, w], channels last
        nhwc = phases.permute(0, 2, 3, 1).view(n, h, w, 2, 2, self.cout)  # row phase, column phase, channel
        out = nhwc.permute(0, 1, 3, 2, 4, 5).reshape(n, 2 * h, 2 * w, self.cout)
        return out.permute(0, 3, 1, 2)  # NCHW view of channels-last memory


def norm_to_uint8(z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, quant: Quant,
                  relu: bool) -> torch.Tensor:
    """``quant.quantize(relu(instance_norm(z, weight, bias)))`` in one norm: the scale folded
    into the norm's weight and bias, the rounding's half step added to the bias, the ReLU the
    clamp at ``quant``'s zero (which is 0 for a ReLU's output: its range starts at 0)."""
    assert not relu or quant.zero_point == 0
    y = F.group_norm(z, z.shape[1], weight / quant.scale, bias / quant.scale + (quant.zero_point + 0.5), 1e-5)
    return y.clamp_(0.0, TOP).to(torch.uint8)


def norm(z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return F.group_norm(z, z.shape[1], weight, bias, 1e-5)


# --------------------------------------------------------------------------- calibration

# Each range is widened by this factor beyond what the photos showed: frames of a held-out clip
# go past the photos' extremes, and a saturated activation costs more than a coarser step
# (26-style network, style 7, frames of the bench clip: 35.6 dB with the photos' ranges as
# they are, 37.4 widened by 1.2, 35.3 by 1.5; docs/performance.md).
MARGIN = 1.25


class Ranges:
    """The minimum and maximum of what some modules take as their first input, over every
    frame run while it is open: the tensors an int8 network stores in uint8."""

    def __init__(self, modules: list[nn.Module]):
        self.low: dict[nn.Module, float] = {}
        self.high: dict[nn.Module, float] = {}
        self.handles = [m.register_forward_pre_hook(self._seen, with_kwargs=True) for m in modules]

    def _seen(self, module, args, kwargs):
        x = args[0].detach()  # through its ReLU and padding already (layers.norm_then_pad): the same range
        self.low[module] = min(self.low.get(module, np.inf), float(x.min()))
        self.high[module] = max(self.high.get(module, -np.inf), float(x.max()))

    def quant(self, module: nn.Module) -> Quant:
        """How ``module``'s input is stored: its range widened by ``MARGIN``."""
        return Quant(MARGIN * self.low[module], MARGIN * self.high[module])

    def __enter__(self):
        return self

    def __exit__(self, *_):
        for handle in self.handles:
            handle.remove()


def calibration_photos(height: int, width: int) -> torch.Tensor:
    """The shipped sample photos, each scaled to cover ``height`` x ``width`` and centre-cropped,
    as a float batch in 0..1 (what the networks take)."""
    from PIL import Image

    from scoring.media.samples import photos

    batch = []
    for photo in photos():
        image = Image.fromarray(photo).convert("RGB")
        scale = max(width / image.width, height / image.height)
        image = image.resize((max(width, round(image.width * scale)), max(height, round(image.height * scale))),
                             Image.BICUBIC)
        left, top = (image.width - width) // 2, (image.height - height) // 2
        batch.append(np.asarray(image.crop((left, top, left + width, top + height))))
    return torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).float().div_(255.0)


# --------------------------------------------------------------------------- the networks


class Int8Net(nn.Module):
    """A network's int8 form: ``uint8 [N, 3, H, W]`` frames (channels-last memory, H and W
    multiples of 4) -> fp32 in 0..1, like the network it was made from."""

    takes_uint8 = True
    psnr_db: float  # against the fp32 network on the calibration photos

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """Both networks' shape: three convs down, residual blocks, up to the last layer."""
        # seven bits: the frames' values halved, which the norm after the first layer undoes
        x = frames if TOP == 255 else frames >> 1
        for (conv, weight, bias), into in zip(self.contract, self.into):
            x = norm_to_uint8(conv(x), weight, bias, into, relu=True)
        conv, weight, bias = self.contract[2]
        stream = F.relu(norm(conv(x), weight, bias))
        for stream_q, (one, w1, b1), inner_q, (two, w2, b2) in self.blocks:
            inner = norm_to_uint8(one(stream_q.quantize(stream)), w1, b1, inner_q, relu=True)
            stream = stream + norm(two(inner), w2, b2)
        x = self.up_in.quantize(stream)
        for (conv, weight, bias), into in zip(self.expand, self.expand_into):
            x = norm_to_uint8(conv(x), weight, bias, into, relu=True)
        return self.last_layer(x)

    def last_layer(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class Int8MultiStyle(Int8Net):
    """``models.BuiltinStyle`` (the 26-style network at one style) in int8."""

    def __init__(self, builtin: nn.Module, ranges: Ranges):
        super().__init__()
        net, style = builtin.net, builtin.style.float()

        def layer(styled, quant=None, double=False):
            """A ``StyledConv``: its convolution on the input as ``ranges`` stores it, its norm's
            weight and bias at this style."""
            quant = quant or ranges.quant(styled)
            conv = Doubling(styled.w, None, quant) if double else Conv(styled.w, None, quant, styled.stride)
            return conv, (style @ styled.norm.gamma).float(), (style @ styled.norm.beta).float()

        first, down1, down2 = net.contract
        # the frames as x * TOP (near enough where halved: the norm after takes the scale out)
        self.contract = [layer(first, Quant(0.0, 1.0)), layer(down1), layer(down2)]
        self.into = [ranges.quant(down1), ranges.quant(down2)]  # what each layer's output is stored as
        self.blocks = [(ranges.quant(one), layer(one), ranges.quant(two), layer(two)) for one, two in
                       (block.layers for block in net.res)]
        up1, up2, last = net.expand
        self.up_in = ranges.quant(up1)
        self.expand = [layer(up1, double=True), layer(up2, double=True), layer(last)]
        self.expand_into = [ranges.quant(up2), ranges.quant(last)]

    def last_layer(self, x: torch.Tensor) -> torch.Tensor:
        conv, weight, bias = self.expand[2]
        return torch.sigmoid(norm(conv(x), weight, bias))


class Int8TransformerNet(Int8Net):
    """``models.UnitRange(TransformerNet)`` (a user's .pth) in int8; it works in 0..255, so the
    frames' uint8 values are its input as they are."""

    def __init__(self, unit: nn.Module, ranges: Ranges):
        super().__init__()
        net = unit.net

        def layer(conv_layer, norm_layer, quant=None):
            quant = quant or ranges.quant(conv_layer)
            w = conv_layer.conv2d.weight.detach()
            conv = Doubling(w, None, quant) if hasattr(conv_layer, "upsample") else \
                Conv(w, None, quant, conv_layer.conv2d.stride[0])  # the bias before a norm: taken out by it
            return conv, norm_layer.weight.detach().float(), norm_layer.bias.detach().float()

        self.contract = [layer(net.conv1, net.in1, Quant(0.0, 255.0)), layer(net.conv2, net.in2),
                         layer(net.conv3, net.in3)]
        self.into = [ranges.quant(net.conv2), ranges.quant(net.conv3)]
        blocks = (net.res1, net.res2, net.res3, net.res4, net.res5)
        self.blocks = [(ranges.quant(b.conv1), layer(b.conv1, b.in1), ranges.quant(b.conv2), layer(b.conv2, b.in2))
                       for b in blocks]
        self.up_in = ranges.quant(net.deconv1)
        self.expand = [layer(net.deconv1, net.in4), layer(net.deconv2, net.in5)]
        self.expand_into = [ranges.quant(net.deconv2), ranges.quant(net.deconv3)]
        self.last = Conv(net.deconv3.conv2d.weight.detach(), net.deconv3.conv2d.bias.detach(),
                         ranges.quant(net.deconv3))

    def last_layer(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(x).div_(255.0).clamp_(0.0, 1.0)


def quantize(model: nn.Module, height: int, width: int) -> Int8Net:
    """``model``'s int8 form, calibrated on the sample photos at ``height`` x ``width``, with
    its distance from the fp32 network on them (``psnr_db``)."""
    from scoring.networks.models import (
        BuiltinStyle,
        ConvLayer,
        StyledConv,
        TransformerNet,
        UnitRange,
        UpsampleConvLayer,
    )

    photos = calibration_photos(height, width)
    model = model.float().eval()
    if isinstance(model, BuiltinStyle):
        kind, convs = Int8MultiStyle, [m for m in model.modules() if isinstance(m, StyledConv)]
    elif isinstance(model, UnitRange) and isinstance(model.net, TransformerNet):
        kind, convs = Int8TransformerNet, [m for m in model.modules() if isinstance(m, (ConvLayer, UpsampleConvLayer))]
    else:
        raise ValueError(f"no int8 form for {type(model).__name__}")
    with torch.inference_mode():
        with Ranges(convs) as ranges:
            expected = torch.cat([model(photo[None]) for photo in photos])
        int8 = kind(model, ranges)
        frames = (photos * 255).round_().to(torch.uint8).contiguous(memory_format=CHANNELS_LAST)
        got = torch.cat([int8(frame[None]) for frame in frames])
    int8.psnr_db = psnr_db(got, expected)
    return int8


def psnr_db(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR of two batches in 0..1 as their uint8 frames would be, the worst frame's."""
    a, b = (t.clamp(0, 1).mul(255).round() for t in (a, b))
    mse = ((a - b) ** 2).flatten(1).mean(1)
    return float(10 * torch.log10(255.0**2 / mse.clamp_min(1e-10)).min())


def cpu_line() -> str:
    """The CPU's model name and the flags that decide these figures (bf16, VNNI, AMX, AVX-512)."""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return "CPU: unknown"
    name = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "?")
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model\t")), "?")
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    shown = [f for f in flags if f.startswith(("avx512", "amx")) or f in ("avx2", "avx_vnni", "fma")]
    return f"CPU: {name} (model {model}), {len(os.sched_getaffinity(0))} cores; {' '.join(shown) or 'no AVX2'}"


def clip_frames(clip: Path, height: int, width: int, every: int) -> np.ndarray:
    from scoring.media import ffmpeg

    with ffmpeg.FrameReader(clip, (width, height)) as reader:
        return np.concatenate(list(reader.batches(32)))[::every]


def main(argv: list[str] | None = None) -> int:
    import argparse

    from scoring.networks.models import load_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clip", type=Path, default=REPO.parent / "shared" / "media" / "car-detection.mp4",
                        help="held-out frames (default: the shared bench clip)")
    parser.add_argument("--size", default="768x432", help="WIDTHxHEIGHT (default: %(default)s)")
    parser.add_argument("--styles", default="0,7,19", help="built-in styles to try (default: %(default)s)")
    parser.add_argument("--every", type=int, default=47, help="every Nth frame of the clip (default: %(default)s)")
    args = parser.parse_args(argv)
    width, height = map(int, args.size.split("x"))
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    print(cpu_line())
    frames = torch.from_numpy(clip_frames(args.clip, height, width, args.every)).permute(0, 3, 1, 2)
    print(f"{args.clip.name}: {len(frames)} frames at {width}x{height} (every {args.every}th), worst frame's PSNR "
          f"against fp32; floor {FLOOR_DB} dB")
    print("| style | on the calibration photos | on the clip's frames |\n| --- | --- | --- |")
    for style in args.styles.split(","):
        model = load_model(style)
        int8 = quantize(model, height, width)
        with torch.inference_mode():
            expected = torch.cat([model(f[None].float() / 255.0) for f in frames])
            got = torch.cat([int8(f[None].contiguous(memory_format=CHANNELS_LAST)) for f in frames])
        print(f"| {style} | {int8.psnr_db:.1f} dB | {psnr_db(got, expected):.1f} dB |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
