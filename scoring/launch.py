"""How a scoring step is started: ``python -m scoring ...``, under ``mpiexec -n R`` for R ranks.

Kept free of heavy imports: Airflow workers use it to start the steps without loading torch.
"""

from __future__ import annotations

import os
import shutil
import sys

from .errors import UserError


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
