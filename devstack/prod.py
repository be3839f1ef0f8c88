"""The production topology on one machine, from the project's own files.

What ``docker-compose.yaml`` runs on real machines, as processes here: Postgres (Debian's
``postgresql``) as the metadata database, Redis (Debian's ``redis-server``) as the Celery
broker, the scheduler, dag-processor, triggerer (twice) and API server as separate processes,
and one Celery worker per queue. Every Airflow process runs from the venv of the image it
stands for (``.venv-airflow`` from docker/airflow/requirements.txt, ``.venv-scoring`` from
docker/airflow-scoring/requirements.txt, both built by ``make prod-setup``), so a task that
needs a package its image lacks fails here as it would there.

Used by ``make demo-prod`` (state in ``.demo-prod/``, ports 10001 and 8081 beside ``make
demo``'s) and by tests/test_prod.py (free ports, a temporary folder).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from . import REPO, Stack, airflow_json, free_port, running, shown, wait_for_port

PG_BIN = Path("/usr/lib/postgresql/15/bin")
AIRFLOW_VENV, SCORING_VENV = REPO / ".venv-airflow", REPO / ".venv-scoring"
# queue -> (venv of the image that serves it, that image's folder in docker/, Celery concurrency);
# docker/docker-compose.yaml runs the same workers (tests/test_compose.py)
QUEUES = {"default": (AIRFLOW_VENV, "airflow", 2), "scoring": (SCORING_VENV, "airflow-scoring", 2)}
TRIGGERERS = 2  # run twice for availability: either takes the other's triggers when it dies
SCORING_SLOTS = 1  # pool "scoring": runs that score at once on this machine
# How fast a lost worker's task is noticed and given back to the queue (defaults 300 s each).
RECOVERY_SETTINGS = {
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "60",
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "10",
    "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "30",
    "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "300",
}
# Who may do what: Airflow's production auth manager (FAB), one user per role, each with a
# password of its own in AIRFLOW_HOME/passwords.json (docs/deploying.md: Entra ID instead).
AUTH_MANAGER = "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"
USERS = {"admin": "Admin", "op": "Op", "user": "User", "viewer": "Viewer"}
# Task logs go to the system account's `logs` container (the Azure provider's wasb handler,
# under `tasks/`), are removed from the machine that wrote them once uploaded, and are read back
# from there by the API server (docs/deploying.md#task-logs).
REMOTE_LOGGING_SETTINGS = {
    "AIRFLOW__LOGGING__REMOTE_LOGGING": "True",
    "AIRFLOW__LOGGING__REMOTE_BASE_LOG_FOLDER": "wasb://tasks",
    "AIRFLOW__LOGGING__REMOTE_LOG_CONN_ID": "wasb_system",
    "AIRFLOW__AZURE_REMOTE_LOGGING__REMOTE_WASB_LOG_CONTAINER": "logs",
    "AIRFLOW__LOGGING__DELETE_LOCAL_LOGS": "True",
}
# Airflow's metrics and the product's (plugins/observability/metrics.py), as StatsD.
METRICS_PREFIX = "airflow"
# Shared by every Airflow process (a real deployment takes them from its secrets backend).
DEV_SECRETS = {
    "AIRFLOW__API_AUTH__JWT_SECRET": "devstack-prod-jwt-secret-not-for-real-use",
    "AIRFLOW__API__SECRET_KEY": "devstack-prod-secret-key-not-for-real-use",
}


def postgres_folder(root: Path) -> Path:
    """``ROOT/postgres``, or where root runs Postgres as user ``postgres`` and cannot reach ROOT
    (pytest's temporary folders are private), a folder in /tmp named after ROOT."""
    root = Path(root).resolve()
    if os.geteuid() != 0 or all(os.stat(p).st_mode & 0o001 for p in [root, *root.parents] if p.exists()):
        return root / "postgres"
    return Path(tempfile.gettempdir()) / f"vst-postgres-{hashlib.sha256(str(root).encode()).hexdigest()[:12]}"


class ProdStack(Stack):
    """Paths, ports and processes of the production topology on this machine."""

    def __init__(self, root: Path | str = REPO / ".demo-prod", blob_port: int = 10001, api_port: int = 8081,
                 pg_port: int = 5433, redis_port: int = 6380, statsd_port: int = 8135, statsd_admin_port: int = 8136):
        super().__init__(root, blob_port, api_port)
        self.pg_port, self.redis_port = pg_port, redis_port
        self.statsd_port, self.statsd_admin_port = statsd_port, statsd_admin_port
        self.pg_data = postgres_folder(self.root)

    @classmethod
    def on_free_ports(cls, root: Path | str) -> ProdStack:
        return cls(root, free_port(), free_port(), free_port(), free_port(), free_port(), free_port())

    @property
    def database_url(self) -> str:
        return f"postgresql+psycopg2://airflow@127.0.0.1:{self.pg_port}/airflow"

    def env(self, venv: Path = AIRFLOW_VENV) -> dict[str, str]:
        env = super().env() | {
            "PATH": str(venv / "bin") + os.pathsep + os.environ.get("PATH", ""),
            "VIRTUAL_ENV": str(venv),
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.database_url,
            "AIRFLOW__CELERY__BROKER_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql://airflow@127.0.0.1:{self.pg_port}/airflow",
            "AIRFLOW__OPERATORS__DEFAULT_QUEUE": "default",
            "AIRFLOW__CORE__AUTH_MANAGER": AUTH_MANAGER,
            "AIRFLOW__METRICS__STATSD_ON": "True",
            "AIRFLOW__METRICS__STATSD_HOST": "127.0.0.1",
            "AIRFLOW__METRICS__STATSD_PORT": str(self.statsd_port),
            "AIRFLOW__METRICS__STATSD_PREFIX": METRICS_PREFIX,
        } | RECOVERY_SETTINGS | REMOTE_LOGGING_SETTINGS | DEV_SECRETS
        return env | self.extra_env

    def airflow(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        """An `airflow` command from the Airflow image's venv, as an operator runs it."""
        result = subprocess.run([str(AIRFLOW_VENV / "bin" / "airflow"), *args], env=self.env(), capture_output=True,
                                text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if check and result.returncode != 0:
            raise RuntimeError(f"airflow {shown(args)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
        return result

    # ----------------------------------------------------------------------- the services

    def start_postgres(self) -> subprocess.Popen:
        """A cluster under the stack's folder, owned by ``postgres`` when we are root (it refuses
        to run as root), trusting local connections, with a database ``airflow``."""
        as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        fresh = not (self.pg_data / "PG_VERSION").exists()
        if fresh:
            self.pg_data.mkdir(parents=True, exist_ok=True)
            if as_postgres:
                shutil.chown(self.pg_data, "postgres", "postgres")
            made = subprocess.run([*as_postgres, str(PG_BIN / "initdb"), "-D", str(self.pg_data), "-U", "airflow",
                                   "--auth=trust", "-E", "UTF8", "--locale=C"], capture_output=True, text=True)
            if made.returncode != 0:
                raise RuntimeError(f"initdb failed: {made.stderr.strip()[-2000:]}")
        log = open(self.root / "postgres.log", "ab")
        process = subprocess.Popen(
            [*as_postgres, str(PG_BIN / "postgres"), "-D", str(self.pg_data), "-p", str(self.pg_port),
             "-h", "127.0.0.1", "-k", str(self.pg_data), "-c", "max_connections=200", "-c", "fsync=off"],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
        self._write_pid("postgres", process.pid)
        wait_for_port(self.pg_port, process=process)
        if fresh:
            for _ in range(50):  # listening comes a moment before accepting
                created = subprocess.run([str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(self.pg_port),
                                          "-U", "airflow", "airflow"], capture_output=True, text=True)
                if created.returncode == 0:
                    break
                time.sleep(0.2)
            else:
                raise RuntimeError(f"createdb failed: {created.stderr.strip()}")
        return process

    def start_redis(self) -> subprocess.Popen:
        folder = self.root / "redis"
        folder.mkdir(parents=True, exist_ok=True)
        log = open(self.root / "redis.log", "ab")
        process = subprocess.Popen(
            ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1", "--dir", str(folder),
             "--save", "", "--appendonly", "no"],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
        self._write_pid("redis", process.pid)
        wait_for_port(self.redis_port, process=process)
        return process

    def start_statsd(self) -> subprocess.Popen:
        """The metrics collector: Etsy's StatsD daemon (npm ``statsd``), which keeps what it
        received for an hour (its flush interval) and answers ``counters`` / ``timers`` on its
        admin port (:meth:`received`); in Azure the collector forwards to Azure Monitor instead
        (docs/deploying.md#metrics)."""
        binary = REPO / "node_modules" / ".bin" / "statsd"
        if not binary.exists():
            raise RuntimeError("StatsD is not installed: run `npm ci` in the repo (make does it)")
        config = self.root / "statsd.json"
        config.write_text(json.dumps({
            "address": "127.0.0.1", "port": self.statsd_port, "mgmt_address": "127.0.0.1",
            "mgmt_port": self.statsd_admin_port, "flushInterval": 3_600_000, "backends": ["./backends/console"],
            "automaticConfigReload": False}))
        log = open(self.root / "statsd.log", "ab")
        process = subprocess.Popen([str(binary), str(config)], stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
        self._write_pid("statsd", process.pid)
        wait_for_port(self.statsd_admin_port, process=process)
        return process

    def received(self, kind: str = "counters") -> dict[str, float]:
        """What StatsD has received since it last flushed: ``counters`` (summed), ``timers``
        (the last value it shows of each: it shows 100) or ``gauges``, by metric name."""
        with socket.create_connection(("127.0.0.1", self.statsd_admin_port), timeout=10) as admin:
            admin.sendall(f"{kind}\n".encode())
            answer = b""
            while b"END" not in answer:
                chunk = admin.recv(65536)
                if not chunk:
                    break
                answer += chunk
        # util.inspect of a flat object: 'name': 3  or  'name': [ 1.5, 2, ... 98 more items ]
        number = r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?"
        found = {}
        for name, value in re.findall(rf"'([^']+)': (\[[^\]]*\]|{number})", answer.decode()):
            values = re.findall(rf"(?<![\w.]){number}(?= *[,\]]|$)", value)
            if values:
                found[name] = float(values[-1])
        return found

    def prepare_airflow(self, scoring_slots: int = SCORING_SLOTS) -> subprocess.CompletedProcess:
        """What the compose file's ``airflow-init`` runs (``python -m deployment init``, from the
        Airflow image's venv: database, pool, first admin, containers), then a user per role."""
        import json
        import secrets

        self.airflow_home.mkdir(parents=True, exist_ok=True)
        path = self.airflow_home / "passwords.json"
        passwords = json.loads(path.read_text()) if path.exists() else {}
        fresh = "admin" not in passwords
        passwords.setdefault("admin", secrets.token_urlsafe(12))
        path.touch(mode=0o600)
        path.write_text(json.dumps(passwords))
        admin = {"AIRFLOW_ADMIN_USER": "admin", "AIRFLOW_ADMIN_PASSWORD": passwords["admin"],
                 "AIRFLOW_ADMIN_EMAIL": "admin@example.invalid"}
        result = self.deployment_init(scoring_slots, self.env() | admin, str(AIRFLOW_VENV / "bin" / "python"))
        if fresh and "user admin kept" in result.stdout:  # a database kept, its passwords file not
            self.airflow("users", "reset-password", "--username", "admin", f"--password={passwords['admin']}")
        self.create_users()
        return result

    def create_users(self) -> None:
        """A FAB user per role beside the first admin; a stack started again keeps its users
        and their passwords."""
        import json
        import secrets

        path = self.airflow_home / "passwords.json"
        passwords = json.loads(path.read_text()) if path.exists() else {}
        existing = {u["username"] for u in airflow_json(self.airflow("users", "list", "-o", "json"))}
        for name, role in USERS.items():
            if name in existing and name in passwords:
                continue
            passwords[name] = secrets.token_urlsafe(12)
            if name in existing:
                self.airflow("users", "reset-password", "--username", name, f"--password={passwords[name]}")
            else:
                self.airflow("users", "create", "--username", name, "--role", role, "--firstname", name,
                             "--lastname", role, "--email", f"{name}@example.invalid", f"--password={passwords[name]}")
        path.touch(mode=0o600)
        path.write_text(json.dumps(passwords))

    def start_part(self, name: str, *args: str, venv: Path = AIRFLOW_VENV, env: dict | None = None) -> subprocess.Popen:
        """One Airflow process (``airflow ARGS``) in its own process group, logging to NAME.log."""
        log = open(self.root / f"{name}.log", "ab")
        process = subprocess.Popen([str(venv / "bin" / "airflow"), *args], env=self.env(venv) | (env or {}),
                                   stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
        self._write_pid(name, process.pid)
        return process

    def start_worker(self, queue: str) -> subprocess.Popen:
        venv, _, concurrency = QUEUES[queue]
        return self.start_part(f"worker-{queue}", "celery", "worker", "--queues", queue, "--concurrency",
                               str(concurrency), "--celery-hostname", f"{queue}@%h", venv=venv,
                               env={"AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
                                    # a scratch folder and task logs of its own, as on its own
                                    # machine: tasks hand their files over through blob storage
                                    # only, and the API server reads their logs from there
                                    "VST_SCRATCH": str(self.root / f"scratch-{queue}"),
                                    "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.root / f"logs-{queue}")})

    def start_airflow(self, workers: bool = True) -> subprocess.Popen:
        """The API server first (workers run their tasks through its execution API), then the
        scheduler, dag-processor, the triggerers and (``workers``) a worker per queue."""
        api = self.start_part("api-server", "api-server", "--port", str(self.api_port))
        self.start_part("scheduler", "scheduler")
        self.start_part("dag-processor", "dag-processor")
        for index in range(TRIGGERERS):
            self.start_part(f"triggerer-{index + 1}", "triggerer",
                            env={"AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port())})
        wait_for_port(self.api_port, timeout=300, process=api)
        for queue in QUEUES if workers else ():
            self.start_worker(queue)
        for queue in QUEUES if workers else ():
            self.wait_for_log(f"worker-{queue}", "ready.", timeout=300)
        return api

    def wait_for_log(self, name: str, text: str, timeout: float = 120) -> None:
        path, deadline = self.root / f"{name}.log", time.monotonic() + timeout
        while time.monotonic() < deadline:
            if path.exists() and text in path.read_text(errors="replace"):
                return
            time.sleep(0.5)
        raise TimeoutError(f"{name} did not say {text!r} in {timeout:.0f} s (see {path})")

    def start(self, workers: bool = True) -> None:
        """Everything; without ``workers`` no Celery worker (tests/test_images.py runs them
        from the images)."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.stop()  # a previous run's processes, if any
        self.start_postgres()
        self.start_redis()
        self.start_statsd()
        self.start_azurite()
        self.prepare_airflow()
        self.start_airflow(workers)

    # ----------------------------------------------------------------------- stopping

    def stop(self) -> list[str]:
        """Airflow first (its connections end), then Postgres in fast mode, then the rest."""
        services = ("postgres", "redis", "azurite", "statsd")
        stopped = super().stop([p for p in sorted(self.root.glob("*.pid")) if p.stem not in services])
        postgres = self.root / "postgres.pid"
        if postgres.exists() and (pid := running(postgres)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGINT)  # fast shutdown: no waiting for clients
        return stopped + super().stop()
