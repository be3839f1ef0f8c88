"""Where a rank runs: the GPU a rank takes on a CUDA node, checked against this torch build,
and how many ranks ``--ranks auto`` starts on this machine."""

from __future__ import annotations

import os

import torch

from ..gpus import VM_SIZE_ENV, device_for, local_rank, unsupported_reason
from ..launch import mpiexec_path
from ..media.errors import UserError
from ..media.segments import Plan


def check_node(local: int | None = None) -> str | None:
    """At job start on a CUDA node: the device this rank uses (``cuda:N``), after checking that
    torch can run on it; raises ``UserError`` in one line otherwise. None without CUDA."""
    if not torch.cuda.is_available():
        return None
    device = device_for(local_rank() if local is None else local, torch.cuda.device_count())
    reason = unsupported_reason(os.environ.get(VM_SIZE_ENV), torch.cuda.get_device_capability(device),
                                torch.cuda.get_arch_list())
    if reason:
        raise UserError(reason)
    return device


# --ranks auto starts a rank per core only if no rank's share is more than this over the mean
EVEN_SHARES = 1.1


def auto_ranks(device, plan: Plan) -> int:
    """``--ranks auto``: one rank per GPU on a CUDA device. On a CPU, one rank per core when
    the segments share out evenly among them (ranks take contiguous shares: ``EVEN_SHARES``),
    else one rank whose threads take every core: two single-thread ranks were a little
    faster than one rank on two threads with even shares, and much slower where one rank got
    most of the frames and the other waited (docs/performance.md#ranks-and-threads)."""
    if not mpiexec_path():
        return 1
    if device.type == "cuda":
        return plan.useful_ranks(torch.cuda.device_count())
    for ranks in range(min(len(os.sched_getaffinity(0)), len(plan.segments)), 1, -1):
        frames = [sum(s.frames for s in plan.share(ranks, r)) for r in range(ranks)]
        if max(frames) <= EVEN_SHARES * plan.frames / ranks:
            return ranks
    return 1
