"""AzureMLJobTrigger: polls an Azure ML job in the triggerer and yields one event when it ends.

The SDK is synchronous, so each call runs in a thread (``asyncio.to_thread``), and so does
making the client (importing azure.ai.ml takes seconds): the triggerer's event loop, shared with
every other deferred task, never blocks on the SDK or the network.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent
from observability.progress import JobProgress  # issue 26: live progress

TERMINAL_STATES = ("Completed", "Failed", "Canceled")  # the same as hook.TERMINAL_STATES, without importing the SDK
QUEUED_STATES = ("Queued", "Preparing", "Starting", "Provisioning", "NotStarted")


class AzureMLJobTrigger(BaseTrigger):
    """Waits for job ``job_name`` to end; the event is ``{"status": "success" | "error" | "timeout"
    | "queued", "job_name", "job_status", "message", "running_seconds", "restarts",
    "preempted_nodes", "carry"}``.

    ``running_seconds`` is how long this trigger saw the job Running (to the poll interval);
    ``restarts`` counts the times the service took the job from Running back to the queue (its
    restart in place after a preemption); ``preempted_nodes``, for a job that ended Failed or
    Canceled, how many of its own nodes the cluster listed as preempted right then. The job's log
    goes to the task log as it grows (:class:`logs.LogTail`); the service's error text is read by
    the operator on the worker.

    Killing the deferred task (marked failed or success, cleared) makes the triggerer call
    :meth:`on_kill`, which asks for the job's cancel and removes the run's datastores; a
    triggerer restart or redistribution does not call it, so the job runs on and the trigger
    re-attaches to it.

    :param poll_interval: seconds between status reads.
    :param end_time: epoch seconds after which it cancels the job and ends with a ``timeout``
        event (the task's own time limit; None: never).
    :param max_queued: seconds a job may wait for nodes (each stretch in the queue) before it is
        cancelled with a ``queued`` event (None: no limit).
    :param queued_since: epoch seconds since which the job has waited (its submission).
    :param max_poll_errors: consecutive failed status reads (network blips) tolerated.
    :param carry: small state of the operator's (resubmission count, earlier jobs, datastores,
        usage), handed back in the event; the event is the one thing every runner of triggers
        (the triggerer, ``airflow dags test``) delivers to ``execute_complete`` intact.
    """

    def __init__(self, job_name: str, azureml_conn_id: str, poll_interval: float = 30.0,
                 end_time: float | None = None, max_poll_errors: int = 5, carry: dict | None = None,
                 max_queued: float | None = None, queued_since: float | None = None):
        super().__init__()
        self.carry = carry or {}
        self.job_name = job_name
        self.azureml_conn_id = azureml_conn_id
        self.poll_interval = poll_interval
        self.end_time = end_time
        self.max_poll_errors = max_poll_errors
        self.max_queued, self.queued_since = max_queued, queued_since

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return ("aml_backend.trigger.AzureMLJobTrigger",
                {"job_name": self.job_name, "azureml_conn_id": self.azureml_conn_id,
                 "poll_interval": self.poll_interval, "end_time": self.end_time,
                 "max_poll_errors": self.max_poll_errors, "carry": self.carry, "max_queued": self.max_queued,
                 "queued_since": self.queued_since})

    def _hook(self):
        """The hook with its client made (in a thread: importing azure.ai.ml takes seconds)."""
        from .hook import AzureMLHook  # the SDK is imported in the triggerer, never at DAG parse time

        hook = AzureMLHook(self.azureml_conn_id)
        hook.client  # noqa: B018 -- made here, off the event loop
        return hook

    def _event(self, status: str, job_status: str, message: str, running: float = 0.0,
               restarts: int = 0, preempted: int = 0) -> TriggerEvent:
        return TriggerEvent({"status": status, "job_name": self.job_name, "job_status": job_status,
                             "message": message, "running_seconds": round(running, 3), "restarts": restarts,
                             "preempted_nodes": preempted, "carry": self.carry})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from .logs import LogTail

        hook = await asyncio.to_thread(self._hook)
        tail = LogTail(hook, self.job_name)
        errors, last, running, since, restarts = 0, None, 0.0, None, 0
        queued_since = self.queued_since
        progress = JobProgress.for_trigger(self)  # issue 26: frames done from the done markers in storage
        while True:
            try:
                status = await asyncio.to_thread(hook.get_status, self.job_name)
                errors = 0
            except Exception as exc:  # noqa: BLE001 -- any failed read counts; the budget ends it
                errors += 1
                if errors > self.max_poll_errors:
                    yield self._event("error", last or "Unknown",
                                      f"could not read the status of job {self.job_name}: {exc}", running, restarts)
                    return
                self.log.warning("status of %s not read (%s), try %d of %d", self.job_name, exc, errors,
                                 self.max_poll_errors)
                await asyncio.sleep(self.poll_interval)
                continue
            now = time.monotonic()
            if since is not None and status != "Running":  # the job left Running: count that stretch
                running, since = running + now - since, None
                if status in QUEUED_STATES:
                    restarts += 1
            elif since is None and status == "Running":
                since = now
            if status == "Running":
                queued_since = None
            elif status in QUEUED_STATES and queued_since is None:  # back in the queue: a restart in place
                queued_since = time.time()
            if status != last:
                self.log.info("job %s is %s", self.job_name, status)
                last = status
            if status not in QUEUED_STATES:  # a queued job has printed nothing yet
                for line in await asyncio.to_thread(tail.new_lines):
                    self.log.info("%s", line)
            if status in ("Running", "Completed"):  # issue 26: the task's XCom "progress", once a poll
                await asyncio.to_thread(progress.tick)
            if status == "Completed":
                yield self._event("success", status, f"job {self.job_name} completed", running, restarts)
                return
            if status in TERMINAL_STATES:
                preempted = await asyncio.to_thread(self._preempted_nodes, hook)
                yield self._event("error", status, f"job {self.job_name} ended {status}", running, restarts, preempted)
                return
            if self.end_time is not None and time.time() > self.end_time:
                await asyncio.to_thread(hook.cancel, self.job_name)
                if since is not None:
                    running += time.monotonic() - since
                yield self._event("timeout", status, f"job {self.job_name} still {status} at the task's time limit: "
                                  "cancelled", running, restarts)
                return
            waited = time.time() - queued_since if queued_since is not None else 0
            if self.max_queued is not None and status in QUEUED_STATES and waited > self.max_queued:
                await asyncio.to_thread(hook.cancel, self.job_name)
                yield self._event("queued", status, f"job {self.job_name} waited {_hours(waited)} in the queue "
                                  f"for nodes (max_queued {_hours(self.max_queued)}): cancelled", running, restarts)
                return
            await asyncio.sleep(self.poll_interval)

    def _preempted_nodes(self, hook) -> int:
        cluster = (self.carry.get("cluster") or {}).get("name")
        try:
            return hook.preempted_nodes(cluster, self.job_name) if cluster else 0
        except Exception as exc:  # noqa: BLE001 -- unknown is read as none: the job is not resubmitted
            self.log.warning("could not list the nodes of cluster %s: %s", cluster, exc)
            return 0

    async def on_kill(self) -> None:
        """The task was killed by a person: ask for the job's cancel (without waiting for it: Airflow
        gives ``on_kill`` 30 s, and the cancel is a long-running operation of its own), remove the
        run's datastores. One thread does both: the triggerer may cancel this coroutine again
        while it waits, and a thread, once started, runs to its end."""
        self.log.info("task killed: cancelling Azure ML job %s", self.job_name)
        await asyncio.to_thread(self._cancel_and_clean_up)

    def _cancel_and_clean_up(self) -> None:
        hook = self._hook()
        try:
            hook.cancel(self.job_name)
        finally:
            for store in self.carry.get("datastores", []):
                hook.delete_datastore(store)


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 360 else f"{seconds:.0f} s"
