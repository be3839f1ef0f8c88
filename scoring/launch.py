"""How a scoring step is started: ``python -m scoring ...``, under ``mpiexec -n R`` for R ranks.

Kept free of heavy imports: Airflow workers use it to start the steps without loading torch.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Mapping

from .media.errors import UserError

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


def scoring_command(args: list[str], ranks: int = 1) -> list[str]:
    """The command line that runs ``python -m scoring ARGS`` on ``ranks`` MPI ranks."""
    command = [sys.executable, "-m", "scoring", *args]
    if ranks <= 1:
        return command
    mpiexec = mpiexec_path()
    if not mpiexec:
        raise UserError(f"{ranks} ranks need mpiexec (pip install mpich)")
    return [mpiexec, "-n", str(ranks), *command]
