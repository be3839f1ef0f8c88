"""Steadier video: motion-masked smoothing of styled frames over time.

A style network styles each frame on its own, so texture that should stay put shimmers from
one frame to the next (flicker). ``TemporalSmoother`` blends the previous *output* frame into
the new styled frame, pixel by pixel, but only where the *input* barely changed between the
two frames: a still background settles, while anything that moves is taken fresh from the
network, so moving content is not smeared.

    keep  = strength * clamp(1 - (motion - MOTION_NOISE) / (MOTION_LEVEL - MOTION_NOISE), 0, 1)
    out_t = keep * out_{t-1} + (1 - keep) * styled_t

``motion`` is the mean absolute change of the input between frames t-1 and t over a small
block, widened by a max filter (so that the edge of a moving object counts as moving too)
and then softened (so that the mask has no hard seams). ``strength`` 0 turns the
smoothing off; values near 1 hold still regions longer (less flicker, slower to follow
light changes). No motion compensation: a panning camera moves every pixel, and then the
output is simply the per-frame output.

The state is one frame. A segment is styled independently of the others: with smoothing on,
it starts by styling the last ``WARMUP_FRAMES`` frames of the previous segment's source
(not written), so the first frames of a segment look as if the video had been styled in
one pass.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..options import check_temporal as check_strength  # the one rule (scoring/options.py), as score.py names it

# Mean input change in a block (0-255 levels) up to which it counts as fully still (camera and
# codec noise: about 2 levels), and from which on as fully moving (an edge that moves by a
# pixel changes a 4x4 block by a quarter of its contrast). Chosen on bench/flicker.py's clip:
# against the largest change in a block, or without a noise floor, flicker fell less.
MOTION_NOISE = 2.0
MOTION_LEVEL = 8.0
# The motion mask is worked out on blocks of this many pixels square; a moving region grows
# by one to two blocks on every side (see TemporalSmoother._stillness).
MOTION_BLOCK = 4
# Frames of the previous segment styled to prime a segment's state (not written). The weight
# of an unprimed start decays as strength**n. Measured with bench/flicker.py: without a
# warm-up a segment's first frames differ from a one-pass run by about x264's own error; 3
# frames remove most of that, and each frame more costs a little network time for less seam.
WARMUP_FRAMES = 3


def work_tag(strength: float) -> str:
    """What the setting adds to a run's identity (done markers, work folders); empty when off,
    so that markers written without the option stay valid."""
    return f" +temporal {strength:g}/{MOTION_NOISE:g}-{MOTION_LEVEL:g}/{WARMUP_FRAMES}" if strength else ""


class TemporalSmoother:
    """Feeds styled frames through in order; remembers the last input and output frame."""

    def __init__(self, strength: float):
        self.strength = check_strength(strength)
        self.last_input: torch.Tensor | None = None  # uint8 [H, W, 3]
        self.last_output: torch.Tensor | None = None  # float32 [H, W * 3], 0-255, not rounded

    def __call__(self, inputs: np.ndarray, styled: np.ndarray) -> np.ndarray:
        """``inputs`` and ``styled``: uint8 [N, H, W, 3], the source frames and the network's
        output for them, in display order. Returns the smoothed frames, uint8 [N, H, W, 3]."""
        out = np.empty_like(styled)
        for i in range(len(styled)):
            out[i] = self._step(torch.from_numpy(inputs[i]), torch.from_numpy(styled[i]))
        return out

    @torch.inference_mode()
    def _step(self, source: torch.Tensor, styled: torch.Tensor) -> np.ndarray:
        height, width = styled.shape[:2]
        new = styled.reshape(height, width * 3).float()  # a frame's rows with their channels in line
        if self.last_output is not None:
            new = torch.lerp(new, self.last_output, self._stillness(source).mul_(self.strength))
        self.last_input, self.last_output = source, new
        return new.round().to(torch.uint8).reshape(height, width, 3).numpy()

    def _stillness(self, source: torch.Tensor) -> torch.Tensor:
        """1 where the input stood still since the last frame, 0 where it moved: float [H, W * 3].

        Worked out on blocks of MOTION_BLOCK pixels (a pooling filter over every pixel of a
        768x432 frame costs more than the network's own frame on a CPU): the mean change of a
        block (noise averages out, motion does not), the largest of the 3x3 blocks around it
        (widening), a 3x3 mean (softening), and bilinear up to the frame's rows with their channels in line
        (a pixel's three channels get weights a third of a pixel apart: the same to the eye,
        and the blend runs over contiguous memory, several times faster on a CPU)."""
        height, width = source.shape[:2]
        change = torch.maximum(source, self.last_input) - torch.minimum(source, self.last_input)  # uint8
        pad_h, pad_w = -height % MOTION_BLOCK, -width % MOTION_BLOCK
        if pad_h or pad_w:  # edge blocks: a few pixels that never change (a little stiller)
            change = F.pad(change.permute(2, 0, 1), (0, pad_w, 0, pad_h)).permute(1, 2, 0)
        rows, cols = (height + pad_h) // MOTION_BLOCK, (width + pad_w) // MOTION_BLOCK
        blocks = change.reshape(rows, MOTION_BLOCK, cols, MOTION_BLOCK, 3).sum(dim=(1, 3, 4), dtype=torch.int32)
        blocks = blocks.float().div_(MOTION_BLOCK * MOTION_BLOCK * 3)[None, None]
        blocks = F.max_pool2d(blocks, 3, stride=1, padding=1)
        blocks = F.avg_pool2d(blocks, 3, stride=1, padding=1, count_include_pad=False)
        still = (1.0 - (blocks - MOTION_NOISE) / (MOTION_LEVEL - MOTION_NOISE)).clamp_(0.0, 1.0)
        still = F.interpolate(still, size=(rows * MOTION_BLOCK, cols * MOTION_BLOCK * 3), mode="bilinear",
                              align_corners=False)
        return still[0, 0, :height, :width * 3]
