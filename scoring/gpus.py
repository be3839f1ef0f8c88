"""The GPU side of a scoring node: which VM sizes exist, whether torch can run on the node's
GPU, and which GPU a rank uses.

Plain data and pure functions, no torch, so the Airflow side can read the VM table and tests
can exercise every decision on a CPU; ``networks/devices.py`` applies them on the node.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class VmSize:
    gpus: int
    gpu: str
    capability: tuple[int, int]  # CUDA compute capability of that GPU


# Azure GPU sizes for the score job. NCv3 (V100, sm_70) was retired on 30 September 2025 and
# torch's CUDA 12.8 wheels carry no sm_70 kernels: it stays listed so the check names the fix.
VM_SIZES = {
    "Standard_NC4as_T4_v3": VmSize(1, "T4", (7, 5)),
    "Standard_NC8as_T4_v3": VmSize(1, "T4", (7, 5)),
    "Standard_NC16as_T4_v3": VmSize(1, "T4", (7, 5)),
    "Standard_NC64as_T4_v3": VmSize(4, "T4", (7, 5)),
    "Standard_NC24ads_A100_v4": VmSize(1, "A100", (8, 0)),
    "Standard_NC48ads_A100_v4": VmSize(2, "A100", (8, 0)),
    "Standard_NC96ads_A100_v4": VmSize(4, "A100", (8, 0)),
    "Standard_NC40ads_H100_v5": VmSize(1, "H100 NVL", (9, 0)),
    "Standard_NC80adis_H100_v5": VmSize(2, "H100 NVL", (9, 0)),
    "Standard_NC6s_v3": VmSize(1, "V100", (7, 0)),
    "Standard_NC12s_v3": VmSize(2, "V100", (7, 0)),
    "Standard_NC24s_v3": VmSize(4, "V100", (7, 0)),
}
_BY_LOWER = {name.lower(): name for name in VM_SIZES}
DEFAULT_VM_SIZE = "Standard_NC4as_T4_v3"
SUGGESTED = ("Standard_NC4as_T4_v3", "Standard_NC24ads_A100_v4")
VM_SIZE_ENV = "VST_VM_SIZE"  # the job's environment names the node's VM size
# Where MPI launchers put a process's rank among those on its node.
LOCAL_RANK_ENV = ("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "PMI_LOCAL_RANK", "PMIX_LOCAL_RANK")


def canonical_vm_size(vm_size: str) -> str:
    """``vm_size`` as Azure documents it (``Standard_NC4as_T4_v3``), whatever its letter case:
    the service reports sizes upper-cased (``STANDARD_NC4AS_T4_V3``). One-line error for a size
    not in the table."""
    found = _BY_LOWER.get(str(vm_size).lower())
    if found is None:
        raise ValueError(f"unknown GPU VM size {vm_size!r}: use one of {', '.join(sorted(VM_SIZES))}")
    return found


def gpus_per_node(vm_size: str) -> int:
    """The GPUs of one node of ``vm_size`` (any letter case); one-line error for a size not in the table."""
    return VM_SIZES[canonical_vm_size(vm_size)].gpus


def unsupported_reason(vm_size: str | None, capability: tuple[int, int], arch_list: list[str]) -> str | None:
    """Why torch cannot run on a GPU of ``capability`` (None: it can).

    ``arch_list`` is ``torch.cuda.get_arch_list()``: ``sm_XY`` entries run on exactly that
    capability's major version with minor >= Y; ``compute_XY`` (PTX) is compiled by the driver
    for any capability at or above XY."""
    major, minor = capability
    for arch in arch_list:
        kind, _, digits = arch.partition("_")
        if not digits.isdigit():
            continue
        a_major, a_minor = int(digits[:-1]), int(digits[-1])
        if kind == "sm" and a_major == major and a_minor <= minor:
            return None
        if kind == "compute" and (a_major, a_minor) <= (major, minor):
            return None
    size = vm_size or "this node's VM size"
    built = ", ".join(arch_list) or "no CUDA architectures"
    return (f"{size} has a GPU of compute capability {major}.{minor} (sm_{major}{minor}), which this torch build "
            f"cannot run (it has {built}): configure the cluster with {' or '.join(SUGGESTED)}")


def local_rank(environ: dict | None = None) -> int | None:
    """This process's rank among the ranks on its node, from what Open MPI, MPICH/Hydra or PMIx
    set (None when no launcher set one)."""
    environ = os.environ if environ is None else environ
    for name in LOCAL_RANK_ENV:
        if str(environ.get(name, "")).isdigit():
            return int(environ[name])
    return None


def device_for(local: int | None, device_count: int) -> str:
    """``cuda:N`` for the rank that is ``local``-th on its node: one rank per GPU."""
    if device_count < 1:
        raise ValueError("no CUDA device")
    return f"cuda:{(local or 0) % device_count}"
