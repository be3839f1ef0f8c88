"""Azure ML jobs that no Airflow task waits for any more: cancelled, their datastores removed.

A try of the score task submits a job and defers to a trigger that polls it. When the task is
marked failed or success, or cleared, the triggerer cancels the job (the trigger's
``on_kill``), and a task killed while it submits cancels it itself (the operator's
``on_kill``). One window is left: a task that stops being deferred before any triggerer has
picked its trigger up. Nothing then cancels the job: it waits for nodes, runs and bills,
and nobody reads its result. The housekeeping DAG closes it: each job of the experiment that
has not ended names its task in the ``airflow_run`` tag (``dag/run/task``); a job whose task
is in none of the states that still lead to it (running, deferred, queued, waiting for a
retry...) is cancelled, and the datastores registered for that run go with it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from .trigger import TERMINAL_STATES  # the trigger's copy: this module is imported at DAG parse time, the SDK is not

# task states in which the task still runs, waits for its job, or will come back to it (a retry re-attaches)
LIVE_TASK_STATES = frozenset({"running", "deferred", "queued", "scheduled", "up_for_retry", "up_for_reschedule",
                              "restarting"})
RUN_TAG = "airflow_run"


def has_connection(conn_id: str) -> bool:
    from airflow.sdk import BaseHook

    try:
        BaseHook.get_connection(conn_id)
    except Exception:  # noqa: BLE001 -- AirflowNotFoundException, whose home moves between versions
        return False
    return True


def datastore_prefix(run_tag: str) -> str:
    """The start of the name of every datastore registered for a run (``dag/run/task``)."""
    return f"vst_{hashlib.sha256(run_tag.encode()).hexdigest()[:12]}_"


def cancel_orphaned_jobs(hook, task_state: Callable[[str, str, str], str | None],
                         experiment: str = "video-style-transfer") -> list[dict]:
    """Cancel the experiment's unfinished jobs whose task no longer waits for them.

    ``task_state(dag_id, run_id, task_id)`` answers the task's state (None: no such task, e.g.
    the run was deleted). Returns what was cancelled: ``{"job", "task", "task_state",
    "datastores"}`` each."""
    cancelled, store_names = [], None
    for job in hook.client.jobs.list(tag=RUN_TAG):  # the service filters: only jobs tagged airflow_run
        tag = (getattr(job, "tags", None) or {}).get(RUN_TAG)
        if getattr(job, "experiment_name", None) != experiment or job.status in TERMINAL_STATES or not tag:
            continue
        dag_id, run_id, task_id = _split_tag(tag)
        state = task_state(dag_id, run_id, task_id)
        if state in LIVE_TASK_STATES:
            continue
        hook.log.info("cancelling Azure ML job %s: its task %s is %s", job.name, tag, state or "gone")
        hook.cancel(job.name)
        if store_names is None:  # listed once, and only when a job is cancelled
            store_names = [store.name for store in hook.client.datastores.list()]
        stores = sorted(name for name in store_names if name.startswith(datastore_prefix(tag)))
        for store in stores:
            hook.delete_datastore(store)
        cancelled.append({"job": job.name, "task": tag, "task_state": state, "datastores": stores})
    return cancelled


def _split_tag(tag: str) -> tuple[str, str, str]:
    """``dag/run/task`` -> its parts; a run id may hold '/' itself, a DAG or task id may not."""
    dag_id, _, rest = tag.partition("/")
    run_id, _, task_id = rest.rpartition("/")
    return dag_id, run_id, task_id
