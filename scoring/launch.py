"""How a scoring step is started: ``python -m scoring ...``, under ``mpiexec -n R`` for R ranks.

Kept free of heavy imports: Airflow workers use it to start the steps without loading torch.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Mapping

from .errors import UserError
from .segments import Plan, share


# What a scoring step may see of its parent's environment. It parses untrusted files, so it
# gets no credentials: no AIRFLOW_CONN_* (account keys), no Airflow config, no cloud logins.
CHILD_ENV = re.compile(r"PATH|HOME|USER|LOGNAME|SHELL|LANG|LANGUAGE|TZ|TERM|TMPDIR|TEMP|TMP|PYTHONPATH|"
                       r"PYTHONHASHSEED|PYTHONUNBUFFERED|VIRTUAL_ENV|LD_LIBRARY_PATH|XDG_CACHE_HOME|"
                       r"(LC|VST|OMP|MKL|KMP|OPENBLAS|TORCH|TORCHINDUCTOR|CUDA|NVIDIA|NCCL|HYDRA|MPIR|MPICH|PMI|"
                       r"FI|UCX)_\w*")


def child_env(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The environment a scoring step runs with: the names ``CHILD_ENV`` allows, nothing else."""
    return {name: value for name, value in environ.items() if CHILD_ENV.fullmatch(name)}


def mpiexec_path() -> str | None:
    """MPICH's ``mpiexec`` from this Python's environment (pip install mpich), else from PATH."""
    return shutil.which("mpiexec", path=os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]))


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
        import torch

        return plan.useful_ranks(torch.cuda.device_count())
    for ranks in range(min(len(os.sched_getaffinity(0)), len(plan.segments)), 1, -1):
        frames = [sum(plan.segments[i].frames for i in share(len(plan.segments), ranks, r)) for r in range(ranks)]
        if max(frames) <= EVEN_SHARES * plan.frames / ranks:
            return ranks
    return 1


def scoring_command(args: list[str], ranks: int = 1) -> list[str]:
    """The command line that runs ``python -m scoring ARGS`` on ``ranks`` MPI ranks."""
    command = [sys.executable, "-m", "scoring", *args]
    if ranks <= 1:
        return command
    mpiexec = mpiexec_path()
    if not mpiexec:
        raise UserError(f"{ranks} ranks need mpiexec (pip install mpich)")
    return [mpiexec, "-n", str(ranks), *command]
