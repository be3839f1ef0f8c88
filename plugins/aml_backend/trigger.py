"""AzureMLJobTrigger: polls an Azure ML job in the triggerer and yields one event when it ends.

The SDK is synchronous, so each call runs in a thread (``asyncio.to_thread``): the triggerer's
event loop, shared with every other deferred task, never blocks on the network.
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
    """Waits for job ``job_name`` to end; the event is ``{"status": "success" | "error" | "timeout",
    "job_name", "job_status", "message", "running_seconds", "restarts", "carry"}``.

    ``running_seconds`` is how long this trigger saw the job Running (to the poll interval);
    ``restarts`` counts the times the service took the job from Running back to the queue (its
    restart in place after a preemption). The service's error text is read by the operator on
    the worker (``jobs.stream`` prints the job's log, which must not go to the triggerer's stdout).

    Killing the deferred task (marked failed or success, cleared) makes the triggerer call
    :meth:`on_kill`, which cancels the job and removes the run's datastores; a triggerer restart
    or redistribution does not call it, so the job runs on and the trigger re-attaches to it.

    :param poll_interval: seconds between status reads.
    :param end_time: epoch seconds after which it cancels the job and ends with a ``timeout``
        event (the task's own time limit; None: never).
    :param max_poll_errors: consecutive failed status reads (network blips) tolerated.
    :param carry: small state of the operator's (resubmission count, earlier jobs, datastores,
        usage), handed back in the event; the event is the one thing every runner of triggers
        (the triggerer, ``airflow dags test``) delivers to ``execute_complete`` intact.
    """

    def __init__(self, job_name: str, azureml_conn_id: str, poll_interval: float = 30.0,
                 end_time: float | None = None, max_poll_errors: int = 5, carry: dict | None = None):
        super().__init__()
        self.carry = carry or {}
        self.job_name = job_name
        self.azureml_conn_id = azureml_conn_id
        self.poll_interval = poll_interval
        self.end_time = end_time
        self.max_poll_errors = max_poll_errors

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return ("aml_backend.trigger.AzureMLJobTrigger",
                {"job_name": self.job_name, "azureml_conn_id": self.azureml_conn_id,
                 "poll_interval": self.poll_interval, "end_time": self.end_time,
                 "max_poll_errors": self.max_poll_errors, "carry": self.carry})

    def _hook(self):
        from .hook import AzureMLHook  # the SDK is imported in the triggerer, never at DAG parse time

        return AzureMLHook(self.azureml_conn_id)

    def _event(self, status: str, job_status: str, message: str, running: float = 0.0,
               restarts: int = 0) -> TriggerEvent:
        return TriggerEvent({"status": status, "job_name": self.job_name, "job_status": job_status,
                             "message": message, "running_seconds": round(running, 3), "restarts": restarts,
                             "carry": self.carry})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        hook = self._hook()
        errors, last, running, since, restarts = 0, None, 0.0, None, 0
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
            if status != last:
                self.log.info("job %s is %s", self.job_name, status)
                last = status
            if status in ("Running", "Completed"):  # issue 26: the task's XCom "progress", once a poll
                await asyncio.to_thread(progress.tick)
            if status == "Completed":
                yield self._event("success", status, f"job {self.job_name} completed", running, restarts)
                return
            if status in TERMINAL_STATES:
                yield self._event("error", status, f"job {self.job_name} ended {status}", running, restarts)
                return
            if self.end_time is not None and time.time() > self.end_time:
                await asyncio.to_thread(hook.cancel, self.job_name)
                if since is not None:
                    running += time.monotonic() - since
                yield self._event("timeout", status, f"job {self.job_name} still {status} at the task's time limit: "
                                  "cancelled", running, restarts)
                return
            await asyncio.sleep(self.poll_interval)

    async def on_kill(self) -> None:
        """The task was killed by a person: cancel the job, remove the run's datastores. One
        thread does both: the triggerer may cancel this coroutine again while it waits, and a
        thread, once started, runs to its end."""
        self.log.info("task killed: cancelling Azure ML job %s", self.job_name)
        await asyncio.to_thread(self._cancel_and_clean_up)

    def _cancel_and_clean_up(self) -> None:
        hook = self._hook()
        try:
            hook.cancel(self.job_name)
        finally:
            for store in self.carry.get("datastores", []):
                hook.delete_datastore(store)
