"""How a scoring step is started: ``python -m scoring ...``, under ``mpiexec -n R`` for R ranks.

Kept free of heavy imports: Airflow workers use it to start the steps without loading torch.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping

from .media.errors import UserError

# What a scoring step may see of its parent's environment. It parses untrusted files, so it
# gets no credentials: no AIRFLOW_CONN_* (account keys), no Airflow config, no cloud logins.
CHILD_ENV = re.compile(r"PATH|HOME|USER|LOGNAME|SHELL|LANG|LANGUAGE|TZ|TERM|TMPDIR|TEMP|TMP|PYTHONPATH|"
                       r"PYTHONHASHSEED|PYTHONUNBUFFERED|VIRTUAL_ENV|LD_LIBRARY_PATH|XDG_CACHE_HOME|"
                       r"(LC|GLIBC|VST|OMP|MKL|KMP|OPENBLAS|TORCH|TORCHINDUCTOR|CUDA|NVIDIA|NCCL|HYDRA|MPIR|MPICH|PMI|"
                       r"FI|UCX)_\w*")


def child_env(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The environment a scoring step runs with: the names ``CHILD_ENV`` allows, nothing else."""
    return {name: value for name, value in environ.items() if CHILD_ENV.fullmatch(name)}


# glibc's malloc backs its heap with transparent huge pages when asked (glibc 2.35 and later;
# older ones ignore it), and the kernel's usual THP setting, "madvise", gives them only to
# memory that asks. A frame's activations are tens of MB, each read and written a few times,
# and with 4 KB pages a CPU's frame takes measurably longer
# (docs/performance.md#fewer-passes-over-the-full-size-activations-2026-12-04).
HUGE_PAGES = "glibc.malloc.hugetlb=1"


def huge_pages_environ(environ: Mapping[str, str] = os.environ) -> dict[str, str] | None:
    """``environ`` with ``HUGE_PAGES`` added to its glibc tunables; None where they already
    say how malloc should treat huge pages (a user's choice, or this process restarted)."""
    tunables = environ.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.hugetlb=" in tunables:
        return None
    return {**environ, "GLIBC_TUNABLES": ":".join(filter(None, [tunables, HUGE_PAGES]))}


def restart_with_huge_pages() -> None:
    """Start this Python again, same command line, with ``huge_pages_environ``: glibc reads its
    tunables only when a process starts. Call it first thing, before any import that counts.
    The PID stays (``exec``), so mpiexec keeps track of its rank. A no-op off Linux and where
    the tunables already decide."""
    environ = huge_pages_environ() if sys.platform.startswith("linux") and sys.executable else None
    if environ is not None:
        os.execve(sys.executable, sys.orig_argv, environ)


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


def run_ranks(score_args: list[str], ranks: int) -> None:
    """Run the score step as ``mpiexec -n ranks python -m scoring score ...``."""
    _check_ranks(subprocess.run(scoring_command(["score", *score_args], ranks), stdin=subprocess.DEVNULL).returncode)


class WaitingRanks:
    """The score step on ``ranks`` MPI ranks, started before the split it styles: the ranks
    import torch and load the network (seconds of CPU each) while the caller splits, then wait
    asleep (``score --await-go``) until ``go`` says how many of them style, or ``cancel``."""

    def __init__(self, score_args: list[str], ranks: int):
        self.process = subprocess.Popen(scoring_command(["score", "--await-go", *score_args], ranks),
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def go(self, workers: int) -> dict:
        """Let ``workers`` of the ranks style the split, wait for them, and return rank 0's
        summary, which says where the styled segments are (and is printed, as score prints it)."""
        printed, _ = self.process.communicate(f"{workers}\n")
        _check_ranks(self.process.returncode)
        print(printed, end="", flush=True)
        return json.loads(printed.splitlines()[-1])

    def cancel(self) -> None:
        """End the ranks at once, before they have written anything. mpiexec killed takes its
        ranks with it, silently (a SIGTERM would print a page about a bad termination)."""
        self.process.kill()
        self.process.wait()


def _check_ranks(code: int) -> None:
    if code != 0:
        raise UserError(f"scoring ranks failed (mpiexec exit code {code}); run again to resume from finished segments")
