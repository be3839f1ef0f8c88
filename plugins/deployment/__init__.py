"""Making a deployment ready for its first upload: ``python -m deployment init``.

Everything the product needs is made where it is missing and left as it is where present, so
the command is safe to run on every start: docker/docker-compose.yaml's ``airflow-init`` runs it
on every ``up``, devstack before every stack it starts.

* the metadata database, migrated (``airflow db migrate``);
* the pool ``scoring`` with ``--scoring-slots`` slots, only where there is none: a count an
  operator has set since (``airflow pools set scoring 3 ...``) stays;
* the first admin, from ``AIRFLOW_ADMIN_USER``, ``AIRFLOW_ADMIN_EMAIL`` and
  ``AIRFLOW_ADMIN_PASSWORD``, where those are set and the user does not exist (the FAB auth
  manager's users; other auth managers keep theirs elsewhere);
* every container of both storage accounts (``storage.blobs.DATA_CONTAINERS`` and
  ``SYSTEM_CONTAINERS``), through the connections the tasks use (``wasb_data``, ``wasb_system``).

Airflow is reached through its command line, storage through the provider's hook.
``python -m deployment check`` (``check.py``) then proves each piece of the deployment works.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

SCORING_POOL = "scoring"
SCORING_SLOTS = 1
POOL_DESCRIPTION = "score_local runs at once (MPI jobs on the scoring workers)"
FAB = "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"


def init(scoring_slots: int = SCORING_SLOTS, environ=os.environ) -> list[str]:
    """Make what is missing; returns a line for each thing, made or kept."""
    airflow("db", "migrate")
    return ["database migrated", ensure_pool(scoring_slots), *ensure_admin(environ), ensure_containers()]


def ensure_pool(slots: int) -> str:
    pools = {p["pool"]: p for p in cli_json(airflow("pools", "list", "-o", "json"))}
    if SCORING_POOL in pools:
        return f"pool {SCORING_POOL} kept with {pools[SCORING_POOL]['slots']} slot(s)"
    airflow("pools", "set", SCORING_POOL, str(slots), POOL_DESCRIPTION)
    return f"pool {SCORING_POOL} made with {slots} slot(s)"


def ensure_admin(environ) -> list[str]:
    from airflow.configuration import conf

    user, password = environ.get("AIRFLOW_ADMIN_USER"), environ.get("AIRFLOW_ADMIN_PASSWORD")
    if not (user and password) or conf.get("core", "auth_manager") != FAB:
        return []
    if user in {u["username"] for u in cli_json(airflow("users", "list", "-o", "json"))}:
        return [f"user {user} kept"]
    airflow("users", "create", "--role", "Admin", "--username", user, "--firstname", "Airflow", "--lastname", "Admin",
            "--email", environ.get("AIRFLOW_ADMIN_EMAIL") or f"{user}@example.invalid", f"--password={password}")
    return [f"user {user} made (role Admin)"]


def ensure_containers() -> str:
    from storage.blobs import DATA_CONN, DATA_CONTAINERS, SYSTEM_CONN, SYSTEM_CONTAINERS, BlobStore, create_containers

    made = create_containers(BlobStore(DATA_CONN), BlobStore(SYSTEM_CONN))
    return (f"containers made: {', '.join(made)}" if made else
            f"containers kept: {', '.join(DATA_CONTAINERS)} ({DATA_CONN}), {', '.join(SYSTEM_CONTAINERS)} ({SYSTEM_CONN})")


def airflow(*args: str) -> subprocess.CompletedProcess:
    """``airflow ARGS`` (this Python's, else the one on PATH); its error in a RuntimeError."""
    here = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    result = subprocess.run([shutil.which("airflow", path=here) or "airflow", *args], capture_output=True, text=True,
                            stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        shown = " ".join("--password=***" if a.startswith("--password=") else a for a in args)
        raise RuntimeError(f"airflow {shown} failed: {(result.stderr or result.stdout).strip()[-2000:]}")
    return result


def cli_json(result: subprocess.CompletedProcess) -> list[dict]:
    """What an ``airflow ... -o json`` printed (warnings may come before it)."""
    for line in reversed(result.stdout.splitlines()):
        if line.startswith(("[", "{")):
            return json.loads(line)
    return []
