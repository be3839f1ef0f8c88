"""The networks' C++ kernels (``fused_norm.cpp``, ``frame_conv.cpp``, ``narrow_conv.cpp``), compiled on
first use.

Each is built with the machine's C++ compiler for its own instruction set (``-march=native``)
into a cache shared by every process of that user (one build per source, compiler and CPU); a
build elsewhere in progress is waited for. Where no compiler is found or a build fails,
``compiled`` says so once in the log and returns None, and the layer it serves takes torch's
steps: a machine without a compiler is slower, never wrong.

The kernels read and write tensors through raw pointers, which ``torch.compile`` cannot see:
traced, the norm's call was specialised on its pointers' values and the frames came out wrong
(tests/test_models.py). So each kernel's entry point says so (``entry_point``), and before a
network is compiled ``keep_out_of_compiled_graphs`` wraps them in ``torch.compiler.disable``:
the compiled network runs the kernels as they are, between its compiled parts. Only then, since
``torch.compiler.disable`` imports torch's compiler, a second of start-up an eager run would pay
for nothing (docs/performance.md#the-first-layer-on-the-frames-codes-2026-12-08).
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-fno-math-errno"]

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


def _build(compiler: str, source: Path, target: Path) -> None:
    """Compile ``source`` into ``target``: written beside it, then renamed, so that a process
    that finds ``target`` finds it whole."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another rank may be building the same file
        if target.exists():
            return
        with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
            built = Path(scratch) / target.name
            subprocess.run([compiler, *FLAGS, str(source), "-o", str(built)], check=True, capture_output=True,
                           timeout=300)
            os.replace(built, target)


LONG, POINTER = ctypes.c_long, ctypes.c_void_p


def compiled(source: Path, what: str, otherwise: str, functions: dict[str, list]) -> ctypes.CDLL | None:
    """``source`` compiled and loaded, built first if this machine has no build of it yet, its
    ``functions`` (name: argument types) declared, each returning an int status; None where it
    cannot be, logged as ``what`` did not build and ``otherwise`` (what runs instead). Not
    cached here: each kernel's module keeps its own library."""
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        log.info("no C++ compiler: %s (slower)", otherwise)
        return None
    key = hashlib.sha256("\0".join([source.read_text(), compiler, *FLAGS, _cpu_flags()]).encode()).hexdigest()[:16]
    target = cache_dir() / f"{source.stem}-{key}.so"
    try:
        _build(compiler, source, target)
        lib = ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        log.warning("%s did not build (%s%s): %s", what, type(exc).__name__,
                    f": {detail.decode(errors='replace').strip().splitlines()[-1]}" if detail.strip() else "",
                    otherwise)
        return None
    for name, arguments in functions.items():
        function = getattr(lib, name)
        function.restype, function.argtypes = ctypes.c_int, arguments
    return lib


_ENTRY_POINTS: list[tuple[str, str]] = []  # (module, function) of each kernel's entry point


def entry_point(function):
    """Marks ``function``, which hands tensors' raw pointers to a kernel, as one that
    ``torch.compile`` must call as it is (``keep_out_of_compiled_graphs``)."""
    _ENTRY_POINTS.append((function.__module__, function.__name__))
    return function


def keep_out_of_compiled_graphs() -> None:
    """Replace each entry point in its module by itself wrapped in ``torch.compiler.disable``,
    once; the callers look the entry points up in their modules at every call."""
    import torch

    for module, name in _ENTRY_POINTS:
        function = getattr(sys.modules[module], name)
        if not getattr(function, "_kept_out_of_compiled_graphs", False):
            kept = torch.compiler.disable(function)
            kept._kept_out_of_compiled_graphs = True
            setattr(sys.modules[module], name, kept)
