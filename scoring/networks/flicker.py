"""Measuring flicker and smear in styled video (bench/flicker.py and the tests use these).

Both measures look at the *input* to decide where to look in the output, with thresholds of
their own (not the smoother's):

- ``flicker_index``: mean absolute change (0-255, all channels) between consecutive output
  frames, over the pixels where the input barely changed (grey-level change under
  ``STILL_LEVEL`` in a ``WIDEN``-pixel neighbourhood: only codec noise). A perfect result
  would be near 0 there; per-frame styling is not.
- ``moving_ssim``: SSIM (scikit-image; Gaussian window, sigma 1.5, as in Wang et al. 2004) of one
  output against another, averaged over the pixels where the input clearly moved (change
  above ``MOVING_LEVEL``). Smoothing that smeared moving content would lower it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

STILL_LEVEL = 3.0
MOVING_LEVEL = 24.0
WIDEN = 9


def motion(previous: np.ndarray, current: np.ndarray) -> torch.Tensor:
    """Per pixel, the largest grey-level change of the source in a WIDEN neighbourhood between
    two frames (uint8 [H, W, 3]): float [H, W]."""
    change = (_grey(current) - _grey(previous)).abs_()[None, None]
    return F.max_pool2d(change, WIDEN, stride=1, padding=WIDEN // 2)[0, 0]


def _grey(frame: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(frame)).float().mean(dim=2)


@torch.inference_mode()
def flicker_index(source: np.ndarray, styled: np.ndarray) -> float:
    """Mean |styled_t - styled_{t-1}| (0-255) where the source stood still (see the module doc)."""
    total, count = 0.0, 0
    for t in range(1, len(source)):
        still = motion(source[t - 1], source[t]) < STILL_LEVEL
        change = (torch.from_numpy(styled[t]).float() - torch.from_numpy(styled[t - 1]).float()).abs_().mean(dim=2)
        total += float(change[still].sum())
        count += int(still.sum())
    return total / count if count else float("nan")


@torch.inference_mode()
def still_share(source: np.ndarray) -> float:
    """The share of pixels (frames 1..N-1) where flicker_index looks."""
    still = [float((motion(source[t - 1], source[t]) < STILL_LEVEL).float().mean()) for t in range(1, len(source))]
    return float(np.mean(still)) if still else float("nan")


@torch.inference_mode()
def moving_ssim(source: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Mean SSIM of ``a`` against ``b`` over the pixels where the source moved (frames 1..N-1),
    and the share of pixels that moved."""
    total, count, pixels = 0.0, 0, 0
    for t in range(1, len(source)):
        moving = motion(source[t - 1], source[t]) > MOVING_LEVEL
        pixels += moving.numel()
        if moving.any():
            total += float(ssim_map(a[t], b[t])[moving].sum())
            count += int(moving.sum())
    return (total / count if count else float("nan")), count / max(pixels, 1)


def ssim_map(a: np.ndarray, b: np.ndarray) -> torch.Tensor:
    """SSIM per pixel of two uint8 [H, W, 3] pictures, averaged over the channels: [H, W]
    (scikit-image, with the Gaussian window of Wang et al.)."""
    from skimage.metrics import structural_similarity

    _, full = structural_similarity(a, b, channel_axis=2, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False, data_range=255, full=True)
    return torch.from_numpy(full.mean(axis=2))
