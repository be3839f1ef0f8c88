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


def auto_ranks(device, plan: Plan) -> int:
    """``--ranks auto``: one rank per GPU on a CUDA device, never more than the segments; on a
    CPU one, whose lanes style a segment per core (score.Lanes). One rank where there is no
    mpiexec to start more."""
    if device.type != "cuda" or not mpiexec_path():
        return 1
    return plan.useful_ranks(torch.cuda.device_count())
