"""The product's metrics, every one of them here: what an operator graphs and sets alerts on.

They go out through Airflow's own metrics client, so they reach the collector that Airflow's
metrics reach (``[metrics]``: StatsD in the tested topology, OpenTelemetry where configured),
under Airflow's prefix: ``airflow.vst.runs.published``. StatsD names carry no tags, so the one
dimension a metric has is the last part of its name (``vst.frames.styled.local``). Without a
configured collector every call does nothing, and a metric never fails a task.
"""

from __future__ import annotations

import logging
import re

log = logging.getLogger(__name__)
PREFIX = "vst"


def _stats():
    from airflow.sdk.observability.stats import Stats  # the client the task runner set up from [metrics]

    return Stats


def _name(*parts: str) -> str:
    return ".".join([PREFIX, *(re.sub(r"[^A-Za-z0-9_-]", "_", str(p)) for p in parts)])


def _send(kind: str, name: str, value: float) -> None:
    try:
        stats = _stats()
        if kind == "incr":
            stats.incr(name, count=int(round(value)))
        else:  # StatsD timers are milliseconds
            stats.timing(name, float(value) * 1000)
    except Exception as exc:  # noqa: BLE001 -- a metric is never worth a failed task
        log.warning("metric %s not sent: %s", name, exc)


def run_started(backend: str) -> None:
    """A run accepted by probe (its upload read and valid)."""
    _send("incr", _name("runs", "started", backend), 1)


def run_published() -> None:
    _send("incr", _name("runs", "published"), 1)


def run_quarantined() -> None:
    _send("incr", _name("runs", "quarantined"), 1)


def frames_styled(backend: str, frames: int, seconds: float | None) -> None:
    """A published video's frames, and its score step's time per frame
    (``vst.score.frame_time.<backend>``; None: not measured)."""
    if frames <= 0:
        return
    _send("incr", _name("frames", "styled", backend), frames)
    if seconds is not None:
        _send("timing", _name("score", "frame_time", backend), seconds / frames)


def azureml_job(vm_size: str, tier: str, queued_seconds: float | None, node_seconds: float, restarts: int) -> None:
    """One Azure ML job ended: its wait for nodes (its time not running; None for a job this
    task re-attached to, whose submission it did not see), the node-seconds it ran (billed),
    and the service's restarts in place after a preemption."""
    if queued_seconds is not None:
        _send("timing", _name("azureml", "queue_wait"), max(queued_seconds, 0.0))
    _send("incr", _name("azureml", "node_seconds", tier, vm_size), node_seconds)
    if restarts:
        _send("incr", _name("azureml", "preemptions"), restarts)


def azureml_resubmitted(preempted: bool) -> None:
    """A job submitted again: its nodes were taken (one preemption more), or its mount's token refused."""
    if preempted:
        _send("incr", _name("azureml", "preemptions"), 1)
    _send("incr", _name("azureml", "resubmissions"), 1)
