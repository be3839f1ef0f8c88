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

TERMINAL_STATES = ("Completed", "Failed", "Canceled")  # the same as hook.TERMINAL_STATES, without importing the SDK


class AzureMLJobTrigger(BaseTrigger):
    """Waits for job ``job_name`` to end; the event is ``{"status": "success" | "error",
    "job_name", "job_status", "message"}``, where ``message`` is the service's error text.

    :param poll_interval: seconds between status reads.
    :param end_time: epoch seconds after which it gives up with an error event (None: never).
    :param max_poll_errors: consecutive failed status reads (network blips) tolerated.
    :param carry: small state of the operator's (resubmission count, earlier jobs), handed back
        in the event under ``"carry"``; the event is the one thing every runner of triggers
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

    def _event(self, status: str, job_status: str, message: str) -> TriggerEvent:
        return TriggerEvent({"status": status, "job_name": self.job_name, "job_status": job_status,
                             "message": message, "carry": self.carry})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from .hook import AzureMLHook  # the SDK is imported in the triggerer, never at DAG parse time

        hook = AzureMLHook(self.azureml_conn_id)
        errors, last = 0, None
        while True:
            try:
                status = await asyncio.to_thread(hook.get_status, self.job_name)
                errors = 0
            except Exception as exc:  # noqa: BLE001 -- any failed read counts; the budget ends it
                errors += 1
                if errors > self.max_poll_errors:
                    yield self._event("error", last or "Unknown",
                                      f"could not read the status of job {self.job_name}: {exc}")
                    return
                self.log.warning("status of %s not read (%s), try %d of %d", self.job_name, exc, errors,
                                 self.max_poll_errors)
                await asyncio.sleep(self.poll_interval)
                continue
            if status != last:
                self.log.info("job %s is %s", self.job_name, status)
                last = status
            if status == "Completed":
                yield self._event("success", status, f"job {self.job_name} completed")
                return
            if status in TERMINAL_STATES:
                try:
                    detail = await asyncio.to_thread(hook.job_error, self.job_name)
                except Exception as exc:  # noqa: BLE001 -- the status is what matters; the detail is best effort
                    detail = f"(error details not available: {exc})"
                yield self._event("error", status, detail or f"job {self.job_name} ended {status}")
                return
            if self.end_time is not None and time.time() > self.end_time:
                yield self._event("error", status, f"job {self.job_name} still {status} at the time limit")
                return
            await asyncio.sleep(self.poll_interval)
