"""A fake Azure ML service behind ``MLClient``: the one boundary we cannot reach from here.

It behaves like the service (FACTS.md, "How Azure ML behaves"): a job goes NotStarted ->
Queued -> Preparing -> Running -> Finalizing -> Completed, and while Running it REALLY runs
the job's command line under ``mpiexec`` (nodes x processes per node ranks), from a snapshot
of the job's code, with ``${{inputs.X}}`` / ``${{outputs.X}}`` replaced by the local folders
its datastores point at (``storage_root/<container>/<path>``: a mount). Before "mounting" it
checks each datastore's SAS token like storage would (permissions and expiry).

Each submission plays the next scripted outcome (default ``complete``):

* ``complete``: run the command; its exit code decides Completed or Failed (a non-zero exit
  is a non-retriable "Execution failed" error with the process's last stderr line);
* ``preempt-requeue``: once ``preempt_after`` segments are done, SIGTERM the ranks (the VM is
  taken); the service restarts the SAME job: Queued -> Preparing -> Running, from scratch;
* ``preempt-fail``: SIGTERM the ranks midway, then the job ends Failed with the service's
  ``PreemptionError``: only a resubmission finishes it;
* ``preempt-cancel``: SIGTERM the ranks midway, the whole cluster is taken away: the job ends
  Canceled with no error, and the cluster's nodes report ``preempted`` (``list_nodes``);
* ``preempt-kill``: like ``preempt-fail`` but SIGKILL (no warning: a half-written segment stays);
* ``fail``: a service-side, non-retriable failure before the command starts.

Like the service it refuses a job name already in use, mounts a datastore only while its
token is valid at the time the job starts (``queue_delay`` simulates the wait for nodes; a
real ``queue_seconds`` keeps jobs Queued that long), lets a person cancel a job
(:meth:`FakeAzureML.studio_cancel`), and can be unreachable for a number of status reads
(``outage``).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import parse_qs

import psutil
from azure.ai.ml.exceptions import JobException
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError, ServiceRequestError

PREEMPTION_ERROR = ("UserError", ("AzureMLCompute job failed. PreemptionError: Nodes of this job got pre-empted. "
                    "Check if the run has failed or restarted. Reason: Received pre-emption warning signal"))
SERVICE_ERROR = ("UserError", ("AzureMLCompute job failed. JobConfigurationError: the image for environment could "
                 "not be built: pip install returned non-zero exit status 1"))
TERMINAL = ("Completed", "Failed", "Canceled")
MPIEXEC = Path(sys.executable).with_name("mpiexec")


@dataclass
class Attempt:
    command: list[str]
    returncode: int | None = None
    stdout: str = ""
    stderr: str = ""
    signalled: str | None = None

    def summary(self) -> dict | None:
        """The score step's JSON summary (rank 0 prints it last), if the run got that far."""
        lines = [line for line in self.stdout.splitlines() if line.startswith("{")]
        return json.loads(lines[-1]) if lines else None


@dataclass
class FakeRun:
    name: str
    job: object
    outcome: str
    status: str = "NotStarted"
    history: list[str] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)
    error: tuple[str, str] | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    process: subprocess.Popen | None = None
    thread: threading.Thread | None = None


class FakeAzureML:
    """The service's state for one workspace, shared by every ``MLClient`` made from it."""

    def __init__(self, storage_root: Path, work_root: Path, step: float = 0.05, preempt_after: int = 2,
                 queue_delay: timedelta = timedelta(0), queue_seconds: float = 0.0):
        self.storage_root, self.work_root = Path(storage_root), Path(work_root)
        self.step, self.preempt_after = step, preempt_after
        self.queue_delay, self.queue_seconds = queue_delay, queue_seconds
        self.nodes: dict[str, list] = {}  # cluster -> its nodes (node_state), as list_nodes reports them
        self.outage = 0  # status reads that fail (the service unreachable) before reads work again
        self.reads: dict[str, int] = {}  # status reads per job (a trigger polling it reads it)
        self.deleted_datastores: list[str] = []
        self.registered_tokens: list[str] = []
        self.outcomes: deque[str] = deque()
        self.computes: dict = {}
        self.environments: dict = {}
        self.datastores: dict = {}
        self.runs: dict[str, FakeRun] = {}
        self.cancel_requests: list[str] = []
        self.clients: list[dict] = []
        self.lock = threading.Lock()

    def script(self, *outcomes: str) -> None:
        self.outcomes.extend(outcomes)

    def client(self, credential, subscription_id=None, resource_group_name=None, workspace_name=None, **kwargs):
        """Stands in for ``azure.ai.ml.MLClient(...)``."""
        self.clients.append({"credential": type(credential).__name__, "subscription_id": subscription_id,
                             "resource_group_name": resource_group_name, "workspace_name": workspace_name})
        return SimpleNamespace(compute=_Computes(self), environments=_Environments(self),
                               datastores=_Datastores(self), jobs=_Jobs(self), subscription_id=subscription_id,
                               resource_group_name=resource_group_name, workspace_name=workspace_name)

    def studio_cancel(self, name: str) -> None:
        """A person cancels the job in the studio."""
        run = self.runs[name]
        if run.status not in TERMINAL:
            run.cancel.set()
            self._set(run, "CancelRequested")

    def wait(self, name: str, timeout: float = 240) -> str:
        deadline = time.monotonic() + timeout
        while self.runs[name].status not in TERMINAL:
            if time.monotonic() > deadline:
                raise AssertionError(f"fake job {name} still {self.runs[name].status}")
            time.sleep(0.02)
        return self.runs[name].status

    def shutdown(self) -> None:
        for run in self.runs.values():
            run.cancel.set()
        for run in self.runs.values():
            if run.thread:
                run.thread.join(timeout=60)

    # ------------------------------------------------------------------ the job's life

    def left_queued(self, name: str, tags: dict, experiment_name: str = "video-style-transfer") -> FakeRun:
        """A job submitted earlier whose submitter is gone: it waits in the queue (for
        ``queue_seconds``) like any other until someone cancels it."""
        job = SimpleNamespace(display_name=name, experiment_name=experiment_name, compute="gpu-cluster", tags=tags)
        run = FakeRun(name, job, "fail")  # should it ever leave the queue: failed, it has no command
        run.history.append("NotStarted")
        self.runs[name] = run
        run.thread = threading.Thread(target=self._drive, args=(run,), daemon=True)
        run.thread.start()
        return run

    def _set(self, run: FakeRun, status: str) -> None:
        with self.lock:
            run.status = status
            run.history.append(status)

    def _drive(self, run: FakeRun) -> None:
        try:
            self._life(run)
        except Exception as exc:  # noqa: BLE001 -- a bug in the fake must not hang the test
            run.error = ("SystemError", f"fake service: {exc!r}")
            self._set(run, "Failed")

    def _life(self, run: FakeRun) -> None:
        outcome = run.outcome
        while True:
            for status in ("Queued", "Preparing"):
                if self._cancelled(run):
                    return
                self._set(run, status)
                time.sleep(self.step)
                deadline = time.monotonic() + (self.queue_seconds if status == "Queued" else 0)
                while time.monotonic() < deadline and not run.cancel.is_set():
                    time.sleep(0.02)
            if outcome == "fail":
                run.error = SERVICE_ERROR
                self._set(run, "Failed")
                return
            try:
                command, out_local, upload_to = self._mount(run)
            except PermissionError as exc:
                run.error = ("UserError", str(exc))
                self._set(run, "Failed")
                return
            nodes = self.nodes.setdefault(run.job.compute, [])
            nodes[:] = [SimpleNamespace(node_id=f"node-{i}", node_state="running")
                        for i in range(run.job.resources.instance_count)]
            self._set(run, "Running")
            attempt = self._execute(run, command, outcome)
            if self._cancelled(run):
                nodes[:] = []
                return
            if attempt.signalled:
                if outcome == "preempt-requeue":  # the service restarts the same job on new nodes
                    outcome = "complete"
                    continue
                if outcome == "preempt-cancel":  # the whole cluster taken away: Canceled, no error
                    for node in nodes:
                        node.node_state = "preempted"
                    self._set(run, "Canceled")
                    return
                nodes[:] = []
                run.error = PREEMPTION_ERROR
                self._set(run, "Failed")
                return
            nodes[:] = []
            if attempt.returncode != 0:
                last = (attempt.stderr.strip().splitlines() or ["(no output)"])[-1]
                run.error = ("UserError", (f"Execution failed. User process 'python' exited with status code "
                                           f"{attempt.returncode}. Please check log file 'user_logs/std_log.txt' "
                                           f"for error details. Error: {last}"))
                self._set(run, "Failed")
                return
            self._set(run, "Finalizing")
            if upload_to is not None:  # upload mode: the output reaches storage only now
                shutil.copytree(out_local, upload_to, dirs_exist_ok=True)
            self._set(run, "Completed")
            return

    def _cancelled(self, run: FakeRun) -> bool:
        if run.cancel.is_set():
            self._set(run, "Canceled")
            return True
        return False

    def _mount(self, run: FakeRun) -> tuple[list[str], Path | None, Path | None]:
        """Resolve the job's inputs and outputs to local folders, checking each datastore's token."""
        job, folders, upload_to, out_local = run.job, {}, None, None
        for kind, items in (("inputs", job.inputs), ("outputs", job.outputs)):
            for key, item in items.items():
                mode = item.mode or ("ro_mount" if kind == "inputs" else "rw_mount")
                local = self._resolve(item.path, mode)
                if mode == "upload":
                    upload_to, out_local = local, self.work_root / run.name / "outputs" / key
                    out_local.mkdir(parents=True, exist_ok=True)
                    local = out_local
                folders[f"${{{{{kind}.{key}}}}}"] = str(local)
        argv = shlex.split(job.command)
        for i, arg in enumerate(argv):
            for placeholder, local in folders.items():
                arg = arg.replace(placeholder, local)
            argv[i] = arg
        if argv[0] == "python":
            argv[0] = sys.executable
        ranks = job.resources.instance_count * job.distribution.process_count_per_instance
        return [str(MPIEXEC), "-n", str(ranks), *argv], out_local, upload_to

    def _resolve(self, path: str, mode: str) -> Path:
        prefix = "azureml://datastores/"
        if not str(path).startswith(prefix):
            raise PermissionError(f"fake service: only datastore paths are supported, got {path}")
        store_name, _, rest = str(path)[len(prefix):].partition("/paths/")
        store = self.datastores.get(store_name)
        if store is None:
            raise PermissionError(f"ScriptExecution.StreamAccess.NotFound: datastore {store_name} not found")
        token = parse_qs(store.credentials.sas_token.lstrip("?"))
        granted, expiry = token["sp"][0], datetime.fromisoformat(token["se"][0])
        needed = {"ro_mount": "rl", "download": "r", "rw_mount": "rcwdl", "upload": "cw"}[mode]
        if expiry < datetime.now(UTC) + self.queue_delay or not set(needed) <= set(granted):
            raise PermissionError(f"ScriptExecution.StreamAccess.Authentication: AuthorizationPermissionMismatch for "
                                  f"{mode} of {path} (token grants '{granted}', until {token['se'][0]})")
        local = self.storage_root / store.container_name / rest.strip("/")
        if mode in ("rw_mount", "upload"):
            local.mkdir(parents=True, exist_ok=True)
        elif not local.exists():
            raise PermissionError(f"ScriptExecution.StreamAccess.NotFound: {path} does not exist")
        return local

    def _execute(self, run: FakeRun, command: list[str], outcome: str) -> Attempt:
        attempt = Attempt(command)
        run.attempts.append(attempt)
        workdir = self.work_root / run.name / "wd"
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the job sees only its snapshot
        run.process = subprocess.Popen(command, cwd=workdir, env=env, stdin=subprocess.DEVNULL,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        readers = [_Collector(run.process.stdout), _Collector(run.process.stderr)]
        styled = Path(command[command.index("--out") + 1]) if "--out" in command else None
        preempt = outcome.startswith("preempt")
        while run.process.poll() is None:
            if run.cancel.is_set():
                self._signal_ranks(run.process, signal.SIGTERM)
                break
            if preempt and styled and len(list(styled.glob("*.done"))) >= self.preempt_after:
                attempt.signalled = "SIGKILL" if outcome == "preempt-kill" else "SIGTERM"
                self._signal_ranks(run.process, getattr(signal, attempt.signalled))
                break
            time.sleep(0.01)
        try:
            run.process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            run.process.kill()
            run.process.wait()
        attempt.returncode = run.process.returncode
        attempt.stdout, attempt.stderr = (r.text() for r in readers)
        return attempt

    @staticmethod
    def _signal_ranks(process: subprocess.Popen, sig: int) -> None:
        """What a VM being taken does to the ranks on it (mpiexec then ends the others)."""
        try:
            children = psutil.Process(process.pid).children(recursive=True)
        except psutil.Error:
            return
        ranks = [c for c in children if _is_rank(c)]
        for rank in [r for r in ranks if r.ppid() not in {c.pid for c in ranks}]:
            try:
                rank.send_signal(sig)
            except psutil.Error:
                pass


def _is_rank(process: psutil.Process) -> bool:
    try:
        return process.cmdline()[1:4] == ["-m", "scoring", "score"]
    except psutil.Error:
        return False


class _Collector:
    def __init__(self, stream):
        self.chunks: list[str] = []
        self.thread = threading.Thread(target=lambda: self.chunks.extend(stream), daemon=True)
        self.thread.start()

    def text(self) -> str:
        self.thread.join(timeout=30)
        return "".join(self.chunks)


# ---------------------------------------------------------------------- the client's operation groups


class _Poller:
    def __init__(self, value=None):
        self.value = value

    def result(self, timeout=None):
        return self.value

    def done(self) -> bool:
        return True


class _Computes:
    def __init__(self, service: FakeAzureML):
        self.service = service

    def get(self, name):
        if name not in self.service.computes:
            raise ResourceNotFoundError(f"compute {name} not found")
        return self.service.computes[name]

    def list_nodes(self, name):
        self.get(name)
        return list(self.service.nodes.get(name, []))

    def begin_create_or_update(self, compute):
        current = self.service.computes.get(compute.name)
        if current is not None and (current.size.lower() != compute.size.lower() or current.tier != compute.tier):
            raise HttpResponseError("BadRequest: vmSize and vmPriority of an existing cluster cannot be updated")
        self.service.computes[compute.name] = compute
        return _Poller(compute)


class _Environments:
    def __init__(self, service: FakeAzureML):
        self.service = service

    def get(self, name, version=None, label=None):
        key = (name, version)
        if key not in self.service.environments:
            raise ResourceNotFoundError(f"environment {name}:{version} not found")
        return self.service.environments[key]

    def create_or_update(self, environment):
        if environment.build is None or not (Path(environment.build.path) / "Dockerfile").is_file():
            raise HttpResponseError("environment build context has no Dockerfile")
        self.service.environments[(environment.name, environment.version)] = environment
        return environment


class _Datastores:
    def __init__(self, service: FakeAzureML):
        self.service = service

    def get(self, name):
        if name not in self.service.datastores:
            raise ResourceNotFoundError(f"datastore {name} not found")
        return self.service.datastores[name]

    def create_or_update(self, datastore):
        self.service.datastores[datastore.name] = datastore
        self.service.registered_tokens.append(datastore.credentials.sas_token)
        return datastore

    def list(self, include_secrets=False):
        return list(self.service.datastores.values())

    def delete(self, name):
        if self.service.datastores.pop(name, None) is None:
            raise ResourceNotFoundError(f"datastore {name} not found")
        self.service.deleted_datastores.append(name)


class _Jobs:
    def __init__(self, service: FakeAzureML):
        self.service = service

    def create_or_update(self, job, **kwargs):
        service = self.service
        if job.compute not in service.computes:
            raise HttpResponseError(f"compute {job.compute} not found")
        env_name, _, env_version = str(job.environment).removeprefix("azureml:").partition(":")
        if (env_name, env_version) not in service.environments:
            raise HttpResponseError(f"environment {job.environment} not found")
        name = job.name or f"{uuid.uuid4().hex[:10]}"
        if name in service.runs:  # the service: a job name is used once in a workspace, for good
            raise ResourceExistsError(f"UserError: A job with name {name} already exists")
        snapshot = service.work_root / name / "wd"  # the code upload: a copy taken at submission
        shutil.copytree(job.code, snapshot)
        run = FakeRun(name, job, service.outcomes.popleft() if service.outcomes else "complete")
        run.history.append("NotStarted")
        service.runs[name] = run
        run.thread = threading.Thread(target=service._drive, args=(run,), daemon=True)
        run.thread.start()
        return self.get(name)

    def list(self, parent_job_name=None, **kwargs):
        """The workspace's jobs (the SDK pages through them; here one list)."""
        return [self._entity(name) for name in list(self.service.runs)]

    def get(self, name):
        self.service.reads[name] = self.service.reads.get(name, 0) + 1
        if self.service.outage > 0:
            self.service.outage -= 1
            raise ServiceRequestError("fake service: connection reset")
        if name not in self.service.runs:
            raise ResourceNotFoundError(f"job {name} not found")
        return self._entity(name)

    def _entity(self, name):
        run = self.service.runs[name]
        return SimpleNamespace(name=name, status=run.status, display_name=run.job.display_name,
                               experiment_name=run.job.experiment_name, compute=run.job.compute, tags=run.job.tags,
                               studio_url=f"https://ml.azure.com/runs/{name}?wsid=/fake")

    def begin_cancel(self, name):
        if name not in self.service.runs:
            raise ResourceNotFoundError(f"job {name} not found")
        self.service.cancel_requests.append(name)
        run = self.service.runs[name]
        if run.status not in TERMINAL:
            run.cancel.set()
            self.service._set(run, "CancelRequested")
        return _Poller()

    def stream(self, name):
        """Prints the logs until the job ends; raises the run's error if it Failed."""
        run = self.service.runs[name]
        self.service.wait(name)
        for attempt in run.attempts:
            print(attempt.stderr, end="")
        print(f"\nExecution Summary\n=================\nRunId: {name}\n")
        if run.status == "Failed":
            error = {"error": {"code": run.error[0], "message": run.error[1]}}
            raise JobException(message=f"Exception : \n {json.dumps(error, indent=4)} ",
                               no_personal_data_message="Exception raised on failed job.")

    def download(self, name, *, download_path=".", output_name=None, all=False):
        run = self.service.runs[name]
        logs = Path(download_path) / "artifacts" / "user_logs"
        logs.mkdir(parents=True, exist_ok=True)
        for i, attempt in enumerate(run.attempts):
            (logs / f"std_log_attempt_{i}.txt").write_text(attempt.stdout + attempt.stderr)
        if all:
            raise NotImplementedError("the fake downloads logs only")


class BlobMountedFakeAzureML(FakeAzureML):
    """The same service, with datastores mounted from real blob storage (Azurite).

    Before a run it downloads the job's inputs, and the outputs already there, *with the
    datastore's own SAS token*, so storage itself checks the token; after the run, finished
    or preempted, it uploads the output folder with that token (a read-write mount writes
    through; ``.partial`` files are the ones a mount would hold half-written, left out).
    ``account_urls`` maps an account name to its endpoint (Azurite's
    ``http://127.0.0.1:PORT/<account>``).
    """

    def __init__(self, account_urls: dict[str, str], work_root: Path, **kwargs):
        super().__init__(storage_root=Path(work_root) / "mounts", work_root=work_root, **kwargs)
        self.account_urls = account_urls
        self.writable: list[tuple[Path, object]] = []

    def _container(self, store):
        from azure.storage.blob import ContainerClient

        return ContainerClient(self.account_urls[store.account_name], store.container_name,
                               credential=store.credentials.sas_token)

    def _resolve(self, path: str, mode: str) -> Path:
        store_name, _, rest = str(path)[len("azureml://datastores/"):].partition("/paths/")
        store = self.datastores.get(store_name)
        if store is not None and mode in ("ro_mount", "download", "rw_mount"):
            container, root = self._container(store), self.storage_root / store.container_name
            for blob in container.list_blobs(name_starts_with=rest.strip("/")):
                target = root / blob.name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(container.download_blob(blob.name).readall())
            if mode == "rw_mount":
                self.writable.append((root, container))
        return super()._resolve(path, mode)

    def _execute(self, run: FakeRun, command: list[str], outcome: str) -> Attempt:
        try:
            return super()._execute(run, command, outcome)
        finally:
            for root, container in self.writable:
                for path in sorted(root.rglob("*"), key=lambda p: p.name.endswith(".done")):
                    if path.is_file() and not path.name.startswith("."):
                        with open(path, "rb") as f:
                            container.upload_blob(path.relative_to(root).as_posix(), f, overwrite=True)
            self.writable.clear()


# ---------------------------------------------------------------------- one service for several processes


class ServiceBridge:
    """Serves one fake service to the processes of a running Airflow (worker and triggerer are
    separate processes, and the service must be the same for both), over a local socket.

    Each call is ``(group, method, args, kwargs)`` on a client's operation group; what comes back
    is the value (a poller's result), or the exception's kind and text, raised again there."""

    def __init__(self, service: FakeAzureML, authkey: bytes):
        from multiprocessing.connection import Listener

        self.service, self.listener = service, Listener(("127.0.0.1", 0), authkey=authkey)
        self.address = self.listener.address
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, connection) -> None:
        client = self.service.client(None)
        with connection:
            while True:
                try:
                    group, method, args, kwargs = connection.recv()
                except (EOFError, OSError):
                    return
                try:
                    value = getattr(getattr(client, group), method)(*args, **kwargs)
                    answer = ("value", value.result() if isinstance(value, _Poller) else value)
                except Exception as exc:  # noqa: BLE001 -- handed to the caller, as the SDK would raise it
                    answer = ("error", type(exc).__name__, getattr(exc, "message", None) or str(exc))
                connection.send(answer)

    def close(self) -> None:
        self.listener.close()


def remote_client(address, authkey: bytes):
    """Stands in for ``MLClient`` in another process: the same operation groups, calling the
    service that a :class:`ServiceBridge` serves."""
    from multiprocessing.connection import Client

    lock, connections = threading.Lock(), []

    def call(group: str, method: str, *args, **kwargs):
        with lock:  # one connection per client, one call at a time (the trigger calls from threads)
            if not connections:
                connections.append(Client(tuple(address), authkey=authkey))
            connections[0].send((group, method, args, kwargs))
            answer = connections[0].recv()
        if answer[0] == "value":
            return _Poller(answer[1]) if method.startswith("begin_") else answer[1]
        raise _exception(answer[1], answer[2])

    class Group:
        def __init__(self, name: str):
            self.name = name

        def __getattr__(self, method: str):
            return lambda *args, **kwargs: call(self.name, method, *args, **kwargs)

    def client(credential, subscription_id=None, resource_group_name=None, workspace_name=None, **kwargs):
        return SimpleNamespace(compute=Group("compute"), environments=Group("environments"),
                               datastores=Group("datastores"), jobs=Group("jobs"), subscription_id=subscription_id,
                               resource_group_name=resource_group_name, workspace_name=workspace_name)

    return client


def _exception(kind: str, message: str) -> Exception:
    import azure.core.exceptions as core

    if kind == "JobException":
        return JobException(message=message, no_personal_data_message="Exception raised on failed job.")
    return getattr(core, kind, RuntimeError)(message)
