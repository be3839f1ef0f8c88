"""How the emulated service runs a command job: what the plugin submits really runs.

A job goes NotStarted -> Queued -> Preparing -> Running -> Finalizing -> Completed. Queued
lasts while the cluster's quota has no room for its nodes (``quota_nodes``) and at least
``queue_seconds``. Preparing fetches the code snapshot the SDK uploaded and "mounts" the job's
inputs and outputs: it downloads each datastore path from storage (Azurite) *with the
datastore's own SAS token*, so storage checks the token, after checking that the token grants
what the mount mode needs and is still valid when the job starts (``queue_delay`` stands for
hours spent waiting for nodes). Running runs the job's command line under ``mpiexec``
(instance count x processes per instance ranks), from the snapshot, with ``${{inputs.X}}`` /
``${{outputs.X}}`` replaced by the local folders; its output is written, as it comes, to the
job's ``user_logs/std_log.txt`` in the workspace's artifact store; a read-write output is
written back with its token as its files are finished (as blobfuse writes a file through when
it is closed: done markers reach storage while the job runs) and once more when the ranks
stop, finished or not.

Each submission plays the next scripted outcome (default ``complete``); ``a+b`` plays ``a`` on
the job's first attempt and ``b`` on its restart in place:

* ``complete``: its exit code decides Completed or Failed (non-zero: the service's
  "Execution failed" error with the process's last stderr line);
* ``preempt-requeue``: once ``preempt_after`` segments are done, the ranks get SIGTERM (the
  VMs are taken); the service restarts the SAME job: Queued -> Preparing -> Running;
* ``preempt-fail``: SIGTERM midway, then Failed with the service's ``PreemptionError``;
* ``preempt-kill``: like ``preempt-fail`` but SIGKILL (no warning: a half-written segment stays);
* ``preempt-cancel``: SIGTERM midway, the cluster taken away: Canceled with no error, the job's
  nodes listed ``preempted`` (``listNodes``, with the job's ``runId``);
* ``fail``: a service-side failure before the command starts (an image that does not build).

A cancel (the REST call, or :meth:`Runner.studio_cancel`) moves the job to CancelRequested at
once and to Canceled ``cancel_seconds`` later, when the ranks get SIGTERM.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import psutil
from azure.core.exceptions import HttpResponseError

PREEMPTION_ERROR = ("UserError", "AzureMLCompute job failed. PreemptionError: Nodes of this job got pre-empted. "
                    "Check if the run has failed or restarted. Reason: Received pre-emption warning signal")
SERVICE_ERROR = ("UserError", "AzureMLCompute job failed. JobConfigurationError: the image for environment could "
                 "not be built: pip install returned non-zero exit status 1")
MPIEXEC = Path(sys.executable).with_name("mpiexec")
NEEDED = {"ReadOnlyMount": "rl", "Download": "r", "ReadWriteMount": "rcwdl", "Upload": "cw"}  # SAS letters per mode
LOG_BLOB = "ExperimentRun/dcid.{name}/user_logs/std_log.txt"
HOLD_SECONDS = 120  # the longest hold_until_read waits for a read


@dataclass
class Attempt:
    command: list[str]
    returncode: int | None = None
    stdout: str = ""
    stderr: str = ""
    signalled: str | None = None

    def summary(self) -> dict | None:
        """The score step's JSON summary (rank 0 prints it last), if the run got that far."""
        import json

        lines = [line for line in self.stdout.splitlines() if line.startswith("{")]
        return json.loads(lines[-1]) if lines else None


@dataclass
class Run:
    name: str
    outcome: str
    status: str = "NotStarted"
    history: list[str] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)
    error: tuple[str, str] | None = None
    cancel_at: float | None = None  # when a requested cancel takes effect
    log: list[str] = field(default_factory=list)  # the job's std_log.txt, as written so far
    started: str | None = None
    ended: str | None = None
    thread: threading.Thread | None = None
    read_at: int = 0  # len(history) when the service last answered a read of the job's status

    def cancelled(self) -> bool:
        return self.cancel_at is not None and time.time() >= self.cancel_at

    def status_read(self) -> bool:
        """Whether the current status has been read by a client since the job entered it."""
        return self.read_at >= len(self.history)


class Runner:
    TERMINAL = ("Completed", "Failed", "Canceled")

    def __init__(self, workspace, work_root: Path, step: float = 0.05, preempt_after: int = 2,
                 queue_seconds: float = 0.0, cancel_seconds: float = 2.0):
        self.workspace, self.work_root = workspace, Path(work_root)
        self.step, self.preempt_after = step, preempt_after
        self.queue_seconds, self.cancel_seconds = queue_seconds, cancel_seconds
        self.queue_delay = timedelta(0)
        self.write_through_seconds = 0.25  # how often a read-write mount's new files reach storage while it runs
        # True: a preemption waits until the job was read Running (its ranks stopped meanwhile), a
        # restart's queue until it was read Queued (up to HOLD_SECONDS): on a loaded machine a client
        # polling every second could miss either, where a real preemption comes minutes into a job
        # and a restart queues for minutes
        self.hold_until_read = False
        self.quota_nodes: int | None = None  # the nodes the subscription's quota allows (None: plenty)
        self.outcomes: deque[str] = deque()
        self.runs: dict[str, Run] = {}
        self.lock = threading.RLock()
        self.stopping = threading.Event()

    def script(self, *outcomes: str) -> None:
        self.outcomes.extend(outcomes)

    # ------------------------------------------------------------------ what the service's API asks

    def start(self, name: str) -> None:
        run = Run(name, self.outcomes.popleft() if self.outcomes else "complete")
        run.history.append("NotStarted")
        self.runs[name] = run
        run.thread = threading.Thread(target=self._drive, args=(run,), daemon=True, name=f"job-{name}")
        run.thread.start()

    def status(self, name: str) -> str:
        run = self.runs.get(name)
        return run.status if run else "NotStarted"

    def cancel(self, name: str) -> None:
        run = self.runs[name]
        if run.status not in self.TERMINAL and run.cancel_at is None:
            run.cancel_at = time.time() + self.cancel_seconds
            self._set(run, "CancelRequested")

    studio_cancel = cancel  # a person cancelling in the studio: the same, without the plugin asking

    def run_details(self, name: str, details: bool) -> dict:
        run = self.runs[name]
        body = {"runId": name, "runUuid": name, "status": run.status, "startTimeUtc": run.started,
                "endTimeUtc": run.ended, "target": self._job(name).get("computeId", "").rsplit("/", 1)[-1],
                "warnings": [], "logFiles": {}, "properties": {}}
        if run.error:
            body["error"] = {"error": {"code": run.error[0], "message": run.error[1]}}
        return body

    def wait(self, name: str, timeout: float = 240) -> str:
        deadline = time.monotonic() + timeout
        while self.status(name) not in self.TERMINAL:
            if time.monotonic() > deadline:
                raise AssertionError(f"emulated job {name} still {self.status(name)}")
            time.sleep(0.02)
        return self.status(name)

    def shutdown(self) -> None:
        self.stopping.set()
        for run in list(self.runs.values()):
            if run.status not in self.TERMINAL:
                run.cancel_at = time.time()
        for run in list(self.runs.values()):
            if run.thread:
                run.thread.join(timeout=60)

    # ------------------------------------------------------------------ storage, as the service reaches it

    def storage_client(self, account: str, credential: str | None = None):
        from azure.storage.blob import BlobServiceClient

        url, key = self.workspace.storage[account]
        return BlobServiceClient(url, credential=credential or {"account_name": account, "account_key": key})

    def account_sas(self, account: str) -> str:
        from azure.storage.blob import AccountSasPermissions, ResourceTypes, generate_account_sas

        return generate_account_sas(account, self.workspace.storage[account][1],
                                    ResourceTypes(service=True, container=True, object=True),
                                    AccountSasPermissions(read=True, write=True, delete=True, list=True, add=True,
                                                          create=True, update=True, tag=True),
                                    expiry=datetime.now(UTC) + timedelta(hours=1), protocol="https,http")

    def upload_sas(self, container: str) -> str:
        from azure.storage.blob import ContainerSasPermissions, generate_container_sas

        account = self.workspace.storage_account
        return generate_container_sas(account, container, self.workspace.storage[account][1],
                                      permission=ContainerSasPermissions(read=True, write=True, create=True,
                                                                         list=True, add=True),
                                      expiry=datetime.now(UTC) + timedelta(hours=1), protocol="https,http")

    # ------------------------------------------------------------------ the job's life

    def _job(self, name: str) -> dict:
        return self.workspace.jobs[name]["properties"]

    def _set(self, run: Run, status: str) -> None:
        with self.lock:
            run.status = status
            run.history.append(status)
            if status == "Running" and run.started is None:
                run.started = datetime.now(UTC).isoformat()
            if status in self.TERMINAL:
                run.ended = datetime.now(UTC).isoformat()

    def _drive(self, run: Run) -> None:
        try:
            self._life(run)
        except Exception as exc:  # noqa: BLE001 -- a bug in the emulator must not hang the test
            import traceback

            traceback.print_exc()
            run.error = ("SystemError", f"emulator: {exc!r}")
            self._nodes(run, [])
            self._set(run, "Failed")

    def _life(self, run: Run) -> None:
        job = self._job(run.name)
        outcomes = deque(run.outcome.split("+"))
        outcome = outcomes.popleft()
        compute = job["computeId"].rsplit("/", 1)[-1]
        instances = int((job.get("resources") or {}).get("instanceCount") or 1)
        while True:
            if self._wait_for_nodes(run, compute, instances) or self._step(run, "Preparing"):
                return
            if outcome == "fail":
                run.error = SERVICE_ERROR
                self._set(run, "Failed")
                return
            try:
                command, writable, uploads = self._prepare(run)
            except HttpResponseError as exc:  # storage refused the datastore's token
                run.error = ("UserError", f"ScriptExecution.StreamAccess.Authentication: {exc.message.splitlines()[0]}")
                self._set(run, "Failed")
                return
            except PermissionError as exc:
                run.error = ("UserError", str(exc))
                self._set(run, "Failed")
                return
            self._nodes(run, [{"nodeId": f"tvm-{abs(hash(run.name)) % 10**10}_{i}-{run.name[-6:]}",
                               "privateIpAddress": f"10.0.0.{4 + i}", "publicIpAddress": None,
                               "port": 50000 + i, "nodeState": "running", "runId": run.name}
                              for i in range(instances)])
            self._set(run, "Running")
            attempt = self._execute(run, command, outcome, writable)
            if run.cancelled():
                self._nodes(run, [])
                self._set(run, "Canceled")
                return
            if attempt.signalled:
                if outcome == "preempt-requeue":  # the service restarts the same job on new nodes
                    self._nodes(run, [])
                    outcome = outcomes.popleft() if outcomes else "complete"
                    continue
                if outcome == "preempt-cancel":  # the whole cluster taken away: Canceled, no error
                    self._nodes(run, [{**node, "nodeState": "preempted"} for node in self._own_nodes(run, compute)])
                    self._set(run, "Canceled")
                    return
                self._nodes(run, [])
                run.error = PREEMPTION_ERROR
                self._set(run, "Failed")
                return
            self._nodes(run, [])
            if attempt.returncode != 0:
                last = (attempt.stderr.strip().splitlines() or ["(no output)"])[-1]
                run.error = ("UserError", (f"Execution failed. User process 'python' exited with status code "
                                           f"{attempt.returncode}. Please check log file 'user_logs/std_log.txt' "
                                           f"for error details. Error: {last}"))
                self._set(run, "Failed")
                return
            self._set(run, "Finalizing")
            for local, container in uploads:  # upload mode: the output reaches storage only now
                _upload_folder(local, container)
            self._set(run, "Completed")
            return

    def _step(self, run: Run, status: str) -> bool:
        """Enter ``status`` for a step; True when the job was cancelled instead."""
        if run.cancelled():
            self._set(run, "Canceled")
            return True
        if run.cancel_at is None:
            self._set(run, status)
        time.sleep(self.step)
        return False

    def _wait_for_nodes(self, run: Run, compute: str, instances: int) -> bool:
        """Queued while the quota has no room for the job's nodes; True when cancelled meanwhile."""
        if self._step(run, "Queued"):
            return True
        until, held = time.monotonic() + self.queue_seconds, time.monotonic()
        while time.monotonic() < until or not self._room(compute, instances) \
                or (run.attempts and not self._read_or_held_long_enough(run, held)):
            if run.cancelled() or self.stopping.is_set():
                self._set(run, "Canceled")
                return True
            time.sleep(0.02)
        return False

    def _read_or_held_long_enough(self, run: Run, since: float | None = None) -> bool:
        if not self.hold_until_read or run.status_read():
            return True
        if since is None:
            run.__dict__.setdefault("held_since", time.monotonic())
            since = run.__dict__["held_since"]
        return time.monotonic() - since > HOLD_SECONDS

    def _room(self, compute: str, instances: int) -> bool:
        if self.quota_nodes is None:
            return True
        busy = sum(1 for nodes in self.workspace.nodes.values() for node in nodes if node["nodeState"] == "running")
        return busy + instances <= self.quota_nodes

    def _own_nodes(self, run: Run, compute: str) -> list[dict]:
        return [node for node in self.workspace.nodes.get(compute, []) if node.get("runId") == run.name]

    def _nodes(self, run: Run, nodes: list[dict]) -> None:
        """The job's nodes on its cluster become ``nodes`` (other jobs' nodes stay)."""
        compute = self._job(run.name).get("computeId", "").rsplit("/", 1)[-1]
        with self.lock:
            others = [n for n in self.workspace.nodes.get(compute, []) if n.get("runId") != run.name]
            self.workspace.nodes[compute] = others + nodes

    # ------------------------------------------------------------------ preparing: code and mounts

    def _prepare(self, run: Run) -> tuple[list[str], list, list]:
        job = self._job(run.name)
        workdir = self.work_root / run.name / "wd"
        if workdir.exists():
            shutil.rmtree(workdir)
        self._download_code(job["codeId"], workdir)
        folders, writable, uploads = {}, [], []
        for kind in ("inputs", "outputs"):
            for key, item in (job.get(kind) or {}).items():
                if key == "default" and kind == "outputs":
                    continue
                mode = item.get("mode") or ("ReadOnlyMount" if kind == "inputs" else "ReadWriteMount")
                local, container = self._mount(run, item["uri"], mode)
                if mode == "Upload":
                    uploads.append((local, container))
                elif mode == "ReadWriteMount":
                    writable.append((local, container))
                folders[f"${{{{{kind}.{key}}}}}"] = str(local)
        argv = shlex.split(job["command"])
        for i, arg in enumerate(argv):
            for placeholder, local in folders.items():
                arg = arg.replace(placeholder, local)
            argv[i] = arg
        if argv[0] == "python":
            argv[0] = sys.executable
        distribution = job.get("distribution") or {}
        per_node = int(distribution.get("processCountPerInstance") or 1)
        instances = int((job.get("resources") or {}).get("instanceCount") or 1)
        return [str(MPIEXEC), "-n", str(instances * per_node), *argv], writable, uploads

    def _download_code(self, code_id: str, target: Path) -> None:
        """The snapshot the SDK uploaded (the code version's ``codeUri``)."""
        from .service import _versioned

        code = self.workspace.codes[_versioned(code_id, "codes")]["properties"]
        url = urlsplit(code["codeUri"])
        account = url.hostname.split(".")[0]
        container, _, prefix = unquote(url.path).strip("/").partition("/")
        client = self.storage_client(account).get_container_client(container)
        for blob in client.list_blobs(name_starts_with=prefix):
            relative = blob.name[len(prefix):].strip("/")
            if not relative:
                continue
            path = target / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(client.download_blob(blob.name).readall())
        target.mkdir(parents=True, exist_ok=True)

    def _mount(self, run: Run, uri: str, mode: str) -> tuple[Path, object]:
        """The local folder (or file) standing for ``uri``, filled from storage with the datastore's token."""
        from azure.storage.blob import ContainerClient

        prefix = "azureml://datastores/"
        if not uri.startswith(prefix):
            raise PermissionError(f"emulator: only datastore paths are supported, got {uri}")
        store_name, _, path = uri[len(prefix):].partition("/paths/")
        store = self.workspace.datastores.get(store_name)
        if store is None:
            raise PermissionError(f"ScriptExecution.StreamAccess.NotFound: datastore {store_name} not found")
        props, secret = store["properties"], self.workspace.secrets.get(store_name, {})
        token = secret.get("sasToken") or ""
        fields = parse_qs(token.lstrip("?"))
        granted, expiry = fields.get("sp", [""])[0], fields.get("se", [""])[0]
        if (not expiry or datetime.fromisoformat(expiry) < datetime.now(UTC) + self.queue_delay
                or not set(NEEDED[mode]) <= set(granted)):
            raise PermissionError(f"ScriptExecution.StreamAccess.Authentication: AuthorizationPermissionMismatch for "
                                  f"{mode} of {uri} (token grants '{granted}', until {expiry})")
        account, container_name = props["accountName"], props["containerName"]
        container = ContainerClient(self.workspace.storage[account][0], container_name, credential=token)
        local = self.work_root / run.name / "mounts" / store_name
        path = path.strip("/")
        if mode != "Upload":
            found = False
            for blob in container.list_blobs(name_starts_with=path):
                found = True
                target = local / blob.name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(container.download_blob(blob.name).readall())
            if not found and mode in ("ReadOnlyMount", "Download"):
                raise PermissionError(f"ScriptExecution.StreamAccess.NotFound: {uri} does not exist")
        target = local / path
        if mode in ("ReadWriteMount", "Upload"):
            target.mkdir(parents=True, exist_ok=True)
        return target, (local, container)

    # ------------------------------------------------------------------ running

    def _execute(self, run: Run, command: list[str], outcome: str, writable: list) -> Attempt:
        attempt = Attempt(command)
        run.attempts.append(attempt)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and "PROXY" not in k.upper()}
        env.update(self._job(run.name).get("environmentVariables") or {})  # the job sees only its snapshot
        process = subprocess.Popen(command, cwd=self.work_root / run.name / "wd", env=env, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        readers = [_Collector(process.stdout, run.log), _Collector(process.stderr, run.log)]
        logger = threading.Thread(target=self._write_log, args=(run, process), daemon=True)
        logger.start()
        styled = Path(command[command.index("--out") + 1]) if "--out" in command else None
        preempt = outcome.startswith("preempt")
        sent: dict[Path, tuple] = {}  # a read-write mount writes a file through once it is closed
        frozen = False
        synced = 0.0
        while process.poll() is None:
            if time.monotonic() - synced >= self.write_through_seconds:
                for _, container in writable:
                    _upload_folder(*container, sent=sent)
                synced = time.monotonic()
            if run.cancelled():
                if not _signal_ranks(process, signal.SIGTERM):
                    process.terminate()  # no rank started yet
                if frozen:
                    _suspend_ranks(process, resume=True)
                break
            if preempt and styled and len(list(styled.glob("*.done"))) >= self.preempt_after:
                if not self._read_or_held_long_enough(run):  # hold_until_read: the ranks wait, stopped
                    frozen = frozen or _suspend_ranks(process)
                    time.sleep(0.01)
                    continue
                signalled = "SIGKILL" if outcome == "preempt-kill" else "SIGTERM"
                if _signal_ranks(process, getattr(signal, signalled)):
                    attempt.signalled = signalled
                    if frozen:
                        _suspend_ranks(process, resume=True)  # a stopped rank takes its signal once continued
                    break
            time.sleep(0.01)
        try:
            process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        attempt.returncode = process.returncode
        attempt.stdout, attempt.stderr = (r.text() for r in readers)
        logger.join(timeout=10)
        for local, container in writable:  # a read-write mount writes through: finished segments stay
            _upload_folder(*container, sent=sent)
        return attempt

    def _write_log(self, run: Run, process: subprocess.Popen) -> None:
        """The job's log in the artifact store, rewritten as it grows (what the studio shows)."""
        from .service import ARTIFACT_STORE

        store = self.workspace.datastores[ARTIFACT_STORE]["properties"]
        blob = self.storage_client(self.workspace.storage_account).get_blob_client(
            store["containerName"], LOG_BLOB.format(name=run.name))
        written = -1
        while True:
            running = process.poll() is None
            if len(run.log) != written:
                written = len(run.log)
                blob.upload_blob("".join(run.log[:written]).encode(), overwrite=True)
            if not running:
                return
            time.sleep(0.3)


def _upload_folder(local: Path, container, sent: dict | None = None) -> None:
    """Every finished file under ``local`` to its blob; ``.partial`` files (dot names) stay out,
    done markers go last, as a mount would show them. ``sent``: what was uploaded already (path ->
    size and mtime), left out while unchanged."""
    for path in sorted(Path(local).rglob("*"), key=lambda p: p.name.endswith(".done")):
        try:
            if not path.is_file() or path.name.startswith("."):
                continue
            stat = path.stat()
            if sent is not None and sent.get(path) == (stat.st_size, stat.st_mtime_ns):
                continue
            with open(path, "rb") as f:
                container.upload_blob(path.relative_to(local).as_posix(), f, overwrite=True)
        except FileNotFoundError:  # renamed away meanwhile (a rank's atomic rename): the next pass sees it
            continue
        if sent is not None:
            sent[path] = (stat.st_size, stat.st_mtime_ns)


def _signal_ranks(process: subprocess.Popen, sig: int) -> bool:
    """What a VM being taken does to the ranks on it (mpiexec then ends the others); False
    while mpiexec has started no rank yet."""
    try:
        children = psutil.Process(process.pid).children(recursive=True)
    except psutil.Error:
        return False
    ranks = [c for c in children if _is_rank(c)]
    for rank in [r for r in ranks if r.ppid() not in {c.pid for c in ranks}]:
        try:
            rank.send_signal(sig)
        except psutil.Error:
            pass
    return bool(ranks)


def _suspend_ranks(process: subprocess.Popen, resume: bool = False) -> bool:
    """Stop (or continue) every rank, so that no segment is finished while the emulator holds a
    preemption back; False while mpiexec has started no rank yet."""
    try:
        ranks = [c for c in psutil.Process(process.pid).children(recursive=True) if _is_rank(c)]
    except psutil.Error:
        return False
    for rank in ranks:
        try:
            rank.resume() if resume else rank.suspend()
        except psutil.Error:
            pass
    return bool(ranks)


def _is_rank(process: psutil.Process) -> bool:
    try:
        return process.cmdline()[1:4] == ["-m", "scoring", "score"]
    except psutil.Error:
        return False


class _Collector:
    """Reads a stream to its end, keeping it and adding each line to the job's log."""

    def __init__(self, stream, log: list[str]):
        self.chunks: list[str] = []
        self.thread = threading.Thread(target=self._read, args=(stream, log), daemon=True)
        self.thread.start()

    def _read(self, stream, log: list[str]) -> None:
        for line in stream:
            self.chunks.append(line)
            log.append(line)

    def text(self) -> str:
        self.thread.join(timeout=30)
        return "".join(self.chunks)
