"""The published reference approach, rebuilt as the baseline the bench compares us against.

pytorch/examples ``fast_neural_style`` styles a video the way its README and most tutorials
built on it do: ffmpeg writes one JPEG per frame, ``neural_style.py eval`` loads each with
PIL, runs ``TransformerNet`` at batch size 1 in fp32, saves one JPEG per styled frame, and
ffmpeg stitches the JPEGs back at a fixed 30 fps (the source's frame rate and audio are lost).

The network below is pytorch/examples' ``transformer_net.py`` (BSD-3-Clause) as published,
so a ``.pth`` state dict loads in both it and ``scoring.networks.models.TransformerNet``.

    python bench/reference.py CLIP OUT.mp4 --model W.pth [--work DIR]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


class TransformerNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        # Initial convolution layers
        self.conv1 = ConvLayer(3, 32, kernel_size=9, stride=1)
        self.in1 = torch.nn.InstanceNorm2d(32, affine=True)
        self.conv2 = ConvLayer(32, 64, kernel_size=3, stride=2)
        self.in2 = torch.nn.InstanceNorm2d(64, affine=True)
        self.conv3 = ConvLayer(64, 128, kernel_size=3, stride=2)
        self.in3 = torch.nn.InstanceNorm2d(128, affine=True)
        # Residual layers
        self.res1 = ResidualBlock(128)
        self.res2 = ResidualBlock(128)
        self.res3 = ResidualBlock(128)
        self.res4 = ResidualBlock(128)
        self.res5 = ResidualBlock(128)
        # Upsampling Layers
        self.deconv1 = UpsampleConvLayer(128, 64, kernel_size=3, stride=1, upsample=2)
        self.in4 = torch.nn.InstanceNorm2d(64, affine=True)
        self.deconv2 = UpsampleConvLayer(64, 32, kernel_size=3, stride=1, upsample=2)
        self.in5 = torch.nn.InstanceNorm2d(32, affine=True)
        self.deconv3 = ConvLayer(32, 3, kernel_size=9, stride=1)
        # Non-linearities
        self.relu = torch.nn.ReLU()

    def forward(self, X):
        y = self.relu(self.in1(self.conv1(X)))
        y = self.relu(self.in2(self.conv2(y)))
        y = self.relu(self.in3(self.conv3(y)))
        y = self.res1(y)
        y = self.res2(y)
        y = self.res3(y)
        y = self.res4(y)
        y = self.res5(y)
        y = self.relu(self.in4(self.deconv1(y)))
        y = self.relu(self.in5(self.deconv2(y)))
        y = self.deconv3(y)
        return y


class ConvLayer(torch.nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size, stride):
        super().__init__()
        reflection_padding = kernel_size // 2
        self.reflection_pad = torch.nn.ReflectionPad2d(reflection_padding)
        self.conv2d = torch.nn.Conv2d(in_channels, out_channels, kernel_size, stride)

    def forward(self, x):
        out = self.reflection_pad(x)
        out = self.conv2d(out)
        return out


class ResidualBlock(torch.nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv1 = ConvLayer(channels, channels, kernel_size=3, stride=1)
        self.in1 = torch.nn.InstanceNorm2d(channels, affine=True)
        self.conv2 = ConvLayer(channels, channels, kernel_size=3, stride=1)
        self.in2 = torch.nn.InstanceNorm2d(channels, affine=True)
        self.relu = torch.nn.ReLU()

    def forward(self, x):
        residual = x
        out = self.relu(self.in1(self.conv1(x)))
        out = self.in2(self.conv2(out))
        out = out + residual
        return out


class UpsampleConvLayer(torch.nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size, stride, upsample=None):
        super().__init__()
        self.upsample = upsample
        reflection_padding = kernel_size // 2
        self.reflection_pad = torch.nn.ReflectionPad2d(reflection_padding)
        self.conv2d = torch.nn.Conv2d(in_channels, out_channels, kernel_size, stride)

    def forward(self, x):
        x_in = x
        if self.upsample:
            x_in = torch.nn.functional.interpolate(x_in, mode="nearest", scale_factor=self.upsample)
        out = self.reflection_pad(x_in)
        out = self.conv2d(out)
        return out


def load_net(model: Path | str) -> TransformerNet:
    """As ``neural_style.stylize`` does: drop legacy InstanceNorm running stats, load, eval."""
    state = torch.load(model, map_location="cpu", weights_only=True)
    for k in list(state.keys()):
        if re.search(r"in\d+\.running_(mean|var)$", k):
            del state[k]
    net = TransformerNet()
    net.load_state_dict(state)
    return net.eval()


def style_file(net: TransformerNet, source: Path, target: Path) -> None:
    """``neural_style.py eval`` for one image: PIL load, ToTensor()*255, batch 1, save_image."""
    image = Image.open(source).convert("RGB")
    x = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1).unsqueeze(0)  # ToTensor().mul(255)
    with torch.no_grad():
        output = net(x).cpu()
    img = output[0].clone().clamp(0, 255).numpy().transpose(1, 2, 0).astype("uint8")  # utils.save_image
    Image.fromarray(img).save(target)


def run(clip: Path | str, output: Path | str, model: Path | str, work: Path | str | None = None) -> dict:
    ffmpeg = shutil.which("ffmpeg")
    work_dir = Path(work) if work else Path(tempfile.mkdtemp(prefix="reference-"))
    frames_in, frames_out = work_dir / "in", work_dir / "out"
    frames_in.mkdir(parents=True, exist_ok=True)
    frames_out.mkdir(parents=True, exist_ok=True)
    subprocess.run([ffmpeg, "-v", "error", "-nostdin", "-y", "-i", str(clip), "-qscale:v", "2",
                    str(frames_in / "%06d.jpg")], check=True)
    net = load_net(model)
    names = sorted(p.name for p in frames_in.glob("*.jpg"))
    for name in names:
        style_file(net, frames_in / name, frames_out / name)
    subprocess.run([ffmpeg, "-v", "error", "-nostdin", "-y", "-framerate", "30", "-i", str(frames_out / "%06d.jpg"),
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", str(output)], check=True)
    if not work:
        shutil.rmtree(work_dir, ignore_errors=True)
    return {"frames": len(names)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("clip", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--model", type=Path, required=True, help="TransformerNet .pth state dict")
    parser.add_argument("--work", type=Path, help="folder for the JPEGs (default: a temporary one)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    result = run(args.clip, args.output, args.model, args.work)
    print(f"{result['frames']} frames in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
