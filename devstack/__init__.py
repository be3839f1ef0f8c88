"""The local stand-ins for the cloud: Azurite with two storage accounts, and Airflow.

Used by ``make demo`` / ``make stop`` (``python -m devstack ...``) and by the tests. All
state lives under one folder (default ``.demo/`` in the repo), so a stop and a start find it
again and ``rm -rf .demo`` forgets everything.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Azurite's published development key (not a secret); the second account uses it too.
DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
DATA_ACCOUNT, SYSTEM_ACCOUNT = "devstoreaccount1", "sysaccount1"
logging.getLogger("azure.core.pipeline.policies.http_logging_policy").setLevel(logging.WARNING)


def connection_string(account: str, port: int) -> str:
    return (f"DefaultEndpointsProtocol=http;AccountName={account};AccountKey={DEV_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{port}/{account};")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 60, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening on {port}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


class Stack:
    """Paths, ports and environment of one local stack."""

    def __init__(self, root: Path | str = REPO / ".demo", blob_port: int = 10000, api_port: int = 8080):
        self.root = Path(root).resolve()
        self.blob_port, self.api_port = blob_port, api_port
        self.airflow_home = self.root / "airflow"
        self.scratch = self.root / "scratch"
        self.extra_env: dict[str, str] = {}  # e.g. notification connections in tests
        # the scheduler's and the triggerer's log servers: Airflow's fixed defaults (8793, 8794)
        # would be taken by whichever of two stacks side by side starts first
        self.log_ports = (free_port(), free_port())

    def env(self) -> dict[str, str]:
        """Environment for every Airflow process (and the tests' `airflow` commands)."""
        conn = lambda account: json.dumps({"conn_type": "wasb", "extra": {  # noqa: E731
            "connection_string": connection_string(account, self.blob_port)}})
        venv_bin = os.path.dirname(sys.executable)
        return os.environ | {
            "PATH": venv_bin + os.pathsep + os.environ.get("PATH", ""),
            "AIRFLOW_HOME": str(self.airflow_home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,viewer:viewer",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.airflow_home / "passwords.json"),
            "AIRFLOW__CORE__PARALLELISM": "8",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
            "AIRFLOW__API__PORT": str(self.api_port),
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{self.api_port}",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{self.api_port}/execution/",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(self.log_ports[0]),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(self.log_ports[1]),
            "AIRFLOW_CONN_WASB_DATA": conn(DATA_ACCOUNT),
            "AIRFLOW_CONN_WASB_SYSTEM": conn(SYSTEM_ACCOUNT),
            "VST_SCRATCH": str(self.scratch),
            "PYTHONPATH": str(REPO),
        } | self.extra_env

    # ----------------------------------------------------------------------- Azurite

    def start_azurite(self) -> subprocess.Popen:
        binary = REPO / "node_modules" / ".bin" / "azurite-blob"
        if not binary.exists():
            raise RuntimeError("Azurite is not installed: run `npm ci` in the repo (make does it)")
        location = self.root / "azurite"
        location.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, AZURITE_ACCOUNTS=f"{DATA_ACCOUNT}:{DEV_KEY};{SYSTEM_ACCOUNT}:{DEV_KEY}")
        log = open(self.root / "azurite.log", "ab")
        process = subprocess.Popen(
            [str(binary), "--silent", "--location", str(location), "--blobHost", "127.0.0.1",
             "--blobPort", str(self.blob_port), "--skipApiVersionCheck", "--loose"],
            env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
        wait_for_port(self.blob_port, process=process)
        self._write_pid("azurite", process.pid)
        return process

    def create_containers(self) -> None:
        """The pipeline's containers, for a stack whose Airflow is not prepared
        (``prepare_airflow`` makes them with everything else, as a deployment does)."""
        from azure.core.exceptions import ResourceExistsError
        from azure.storage.blob import BlobServiceClient

        if str(REPO / "plugins") not in sys.path:
            sys.path.insert(0, str(REPO / "plugins"))
        from storage.blobs import DATA_CONTAINERS, SYSTEM_CONTAINERS

        for account, names in ((DATA_ACCOUNT, DATA_CONTAINERS), (SYSTEM_ACCOUNT, SYSTEM_CONTAINERS)):
            client = BlobServiceClient.from_connection_string(connection_string(account, self.blob_port))
            for name in names:
                try:
                    client.create_container(name)
                except ResourceExistsError:
                    pass

    def blob_client(self, account: str = DATA_ACCOUNT):
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient.from_connection_string(connection_string(account, self.blob_port))

    # ----------------------------------------------------------------------- Airflow

    def airflow(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        """Run an `airflow` command against this stack. With SQLite, a command can meet the
        running scheduler's write lock; it failed whole then, so it is simply run again."""
        for attempt in range(4):
            result = subprocess.run([shutil.which("airflow", path=self.env()["PATH"]) or "airflow", *args],
                                    env=self.env(), capture_output=True, text=True, timeout=timeout,
                                    stdin=subprocess.DEVNULL)
            if result.returncode == 0 or "database is locked" not in result.stdout + result.stderr:
                break
            time.sleep(2 + attempt)
        if check and result.returncode != 0:
            raise RuntimeError(f"airflow {shown(args)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
        return result

    def prepare_airflow(self, scoring_slots: int = 1) -> subprocess.CompletedProcess:
        """What a deployment's initialisation does (``python -m deployment init``: database, pool,
        containers; the same command docker-compose.yaml's airflow-init runs)."""
        self.airflow_home.mkdir(parents=True, exist_ok=True)
        return self.deployment_init(scoring_slots)

    def deployment_init(self, scoring_slots: int = 1, env: dict | None = None, python: str = sys.executable
                        ) -> subprocess.CompletedProcess:
        env = (env or self.env()) | {"PYTHONPATH": os.pathsep.join([str(REPO / "plugins"), str(REPO)])}
        result = subprocess.run([python, "-m", "deployment", "init", "--scoring-slots", str(scoring_slots)],
                                env=env, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            raise RuntimeError(f"python -m deployment init failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
        return result

    def start_airflow(self) -> subprocess.Popen:
        """`airflow standalone`: scheduler, dag-processor, triggerer and API server."""
        log = open(self.root / "airflow.log", "ab")
        process = subprocess.Popen(["airflow", "standalone"], env=self.env(), stdout=log, stderr=log,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
        self._write_pid("airflow", process.pid)
        wait_for_port(self.api_port, timeout=600, process=process)  # a busy machine can take minutes
        return process

    def password(self, user: str = "admin") -> str | None:
        path = self.airflow_home / "passwords.json"
        return json.loads(path.read_text()).get(user) if path.exists() else None

    # ----------------------------------------------------------------------- stopping

    def _write_pid(self, name: str, pid: int) -> None:
        """``<pid> <start time>``: the start time tells our process from a later one given its pid."""
        (self.root / f"{name}.pid").write_text(f"{pid} {_started(pid)}")

    def pid(self, name: str) -> int:
        """The pid of the stack's process ``name`` (as its pid file holds it)."""
        return int((self.root / f"{name}.pid").read_text().split()[0])

    def stop(self, pid_files: list[Path] | None = None) -> list[str]:
        """Stop the process group of each pid file (default: all of them), TERM then KILL. A
        process that has ended is passed over: its pid may lead another process group by now
        (tests run several stacks side by side, and a machine reuses pids within minutes)."""
        stopped = []
        for pid_file in sorted(self.root.glob("*.pid")) if pid_files is None else pid_files:
            pid = running(pid_file)
            try:
                if pid is None:
                    raise ProcessLookupError(pid_file)
                os.killpg(pid, signal.SIGTERM)
                for _ in range(50):
                    with contextlib.suppress(ChildProcessError):  # our own child: reap it, or it
                        os.waitpid(pid, os.WNOHANG)  # stays a zombie and seems alive for 10 s
                    os.killpg(pid, 0)
                    time.sleep(0.2)
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            pid_file.unlink()
            stopped.append(pid_file.stem)
        if stopped:  # who stopped what, for a stack found dead in the middle of its tests
            caller = sys._getframe(1)
            with open(self.root / "stops.log", "a") as log:
                log.write(f"{time.strftime('%H:%M:%S')} pid {os.getpid()} ({caller.f_code.co_filename}:"
                          f"{caller.f_lineno}) stopped {' '.join(stopped)}\n")
        return stopped


def running(pid_file: Path) -> int | None:
    """The pid in ``pid_file`` if that process still runs: None once it has ended, even where
    another process has been given its pid since."""
    pid, _, started = pid_file.read_text().partition(" ")
    return int(pid) if _started(int(pid)) == started.strip() or not started else None


def _started(pid: int) -> str:
    """When process ``pid`` started (clock ticks since boot, /proc/<pid>/stat), or "" if none runs."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]  # field 22; the name before ")" may hold spaces


def shown(args) -> str:
    """A command's arguments for an error message, a password among them masked."""
    return " ".join("--password=***" if arg.startswith("--password=") else arg for arg in args)


def airflow_json(result: subprocess.CompletedProcess):
    """The JSON an `airflow ... -o json` command printed (it may print warnings before it)."""
    for line in reversed(result.stdout.splitlines()):
        if line.startswith(("[", "{")):
            return json.loads(line)
    return []
