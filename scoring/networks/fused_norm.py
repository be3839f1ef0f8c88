"""``fused_norm.cpp``: an instance norm, a residual sum, a ReLU and a reflection pad in two passes
over channels-last bf16 activations, the step between two convolutions on a CPU with AMX.

The C++ is compiled on first use with the machine's C++ compiler, for its own instruction set
(``-march=native``), into a cache shared by every process of that user (one build per source,
compiler and CPU); a build elsewhere in progress is waited for. Where no compiler is found or
the build fails, ``library()`` is None and ``layers.norm_then_pad`` takes torch's steps, with
the same results up to rounding: a machine without a compiler is slower, never wrong.
"""

from __future__ import annotations

import ctypes
import fcntl
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("fused_norm.cpp")
FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-fno-math-errno"]
CHANNEL_STEPS = (16, 32, 64, 128)  # the loops the C++ has: the channels must divide one

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "video-style-transfer" / "kernels"


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return next((line for line in cpuinfo if line.startswith("flags")), "")
    except OSError:
        return ""


def _build(compiler: str, target: Path) -> None:
    """Compile ``SOURCE`` into ``target``: written beside it, then renamed, so that a process
    that finds ``target`` finds it whole."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another rank may be building the same file
        if target.exists():
            return
        with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
            built = Path(scratch) / target.name
            subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", str(built)], check=True, capture_output=True,
                           timeout=300)
            os.replace(built, target)


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled kernel, built first if this machine has none yet; None where it cannot be."""
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        log.info("no C++ compiler: the norms run as torch's steps (slower on a CPU with AMX)")
        return None
    key = hashlib.sha256("\0".join([SOURCE.read_text(), compiler, *FLAGS, _cpu_flags()]).encode()).hexdigest()[:16]
    target = cache_dir() / f"fused_norm-{key}.so"
    try:
        _build(compiler, target)
        lib = ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        log.warning("the fused norm did not build (%s%s): the norms run as torch's steps", type(exc).__name__,
                    f": {detail.decode(errors='replace').strip().splitlines()[-1]}" if detail.strip() else "")
        return None
    lib.norm_then_pad_bf16.restype = ctypes.c_int
    lib.norm_then_pad_bf16.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_long,
                                       ctypes.c_long, ctypes.c_long, ctypes.c_long, ctypes.c_long, ctypes.c_long,
                                       ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_float, ctypes.c_int,
                                       ctypes.c_int]
    return lib


def takes(y: torch.Tensor, weight: torch.Tensor | None, residual: torch.Tensor | None, pad: int) -> bool:
    """Whether the kernel has a loop for this step: bf16 on a CPU, ``y`` contiguous channels-last,
    one weight per channel, ``residual`` channels innermost (a padded tensor's interior is), the
    pad narrower than ``y``."""
    if y.device.type != "cpu" or y.dtype != torch.bfloat16 or y.dim() != 4 or y.requires_grad:
        return False
    n, channels, height, width = y.shape
    if weight is not None and weight.numel() != channels:
        return False
    if not (y.is_contiguous(memory_format=torch.channels_last) and pad < min(height, width)):
        return False
    if not any(step % channels == 0 and width * channels % step == 0 for step in CHANNEL_STEPS):
        return False
    if residual is not None and (residual.shape != y.shape or residual.dtype != y.dtype
                                 or residual.stride(1) != 1 or residual.stride(3) != channels):
        return False
    return library() is not None


def norm_then_pad(y: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, pad: int, relu: bool,
                  residual: torch.Tensor | None, eps: float) -> torch.Tensor:
    """``layers.norm_then_pad`` by the kernel; ``takes`` must have said yes."""
    n, channels, height, width = y.shape
    out = torch.empty((n, channels, height + 2 * pad, width + 2 * pad), dtype=y.dtype,
                      memory_format=torch.channels_last)
    weight = None if weight is None else weight.detach().float().contiguous()
    bias = None if bias is None else bias.detach().float().contiguous()
    status = library().norm_then_pad_bf16(
        y.data_ptr(), out.data_ptr(), None if residual is None else residual.data_ptr(),
        0 if residual is None else residual.stride(2), 0 if residual is None else residual.stride(0),
        n, height, width, channels, pad, None if weight is None else weight.data_ptr(),
        None if bias is None else bias.data_ptr(), eps, int(relu), torch.get_num_threads())
    if status != 0:
        raise RuntimeError(f"fused_norm.cpp has no loop for {tuple(y.shape)}, though takes() said it had")
    return out
