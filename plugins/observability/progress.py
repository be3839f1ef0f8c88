"""How far a run's score step has got: frames done of the total, and when it will end.

Both backends answer from the same two facts: the plan (the frames of each segment) and which
segments have a done marker. ``score_local`` looks at the markers on the worker's disk while
mpiexec runs; on Azure ML the trigger lists them in the run's ``-out`` container, where the
job writes them (never from the job's logs). Either publishes the answer as the score task's
XCom ``progress``, which a Viewer reads in the UI (the task's XCom tab) and through the REST
API (``.../taskInstances/<task>/xcomEntries/progress``); docs/uploads.md says why there.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone

XCOM_KEY = "progress"
DONE_SUFFIX = ".done"
# How often it is published while the step runs (at most; the issue asks for at least every 30 s).
EVERY_SECONDS = float(os.environ.get("VST_PROGRESS_SECONDS", "10"))


@dataclass
class Tracker:
    """Frames done of ``total`` from the done markers seen, and an ETA from the rate of this
    attempt (frames already done when it started, a resumed run's, do not count toward the
    rate). Until a segment of this attempt is done, the ETA is what is left of ``estimate``."""

    frames: dict[str, int]  # done marker name -> the frames of its segment
    backend: str
    estimate: float | None = None  # seconds, from probe
    started: float = field(default_factory=lambda: time.monotonic())
    resumed: int | None = None

    @classmethod
    def from_plan(cls, plan: dict, backend: str, estimate: float | None = None) -> Tracker:
        """``plan``: plan.json's content (``Plan.load`` or the blob); segment names as split writes them."""
        from scoring.media.segments import segment_name

        return cls({segment_name(s["index"]) + DONE_SUFFIX: s["frames"] for s in plan["segments"]}, backend, estimate)

    @property
    def total(self) -> int:
        return sum(self.frames.values())

    def update(self, done_markers: Iterable[str]) -> dict:
        """The progress, given the names (base names or paths) of the done markers present."""
        names = {str(name).rsplit("/", 1)[-1] for name in done_markers}
        done = sum(frames for name, frames in self.frames.items() if name in names)
        if self.resumed is None:
            self.resumed = done
        elapsed = time.monotonic() - self.started
        rate = (done - self.resumed) / elapsed if elapsed > 0 else 0.0
        left = self.total - done
        if left <= 0:
            eta = 0.0
        elif rate > 0:
            eta = left / rate
        elif self.estimate is not None:
            eta = max(self.estimate - elapsed, 0.0)
        else:
            eta = None
        percent = 100.0 * done / self.total if self.total else 100.0
        return {"frames_done": done, "frames_total": self.total, "percent": round(percent, 1),
                "eta_seconds": None if eta is None else round(eta), "backend": self.backend,
                "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "text": describe(done, self.total, eta)}


def describe(done: int, total: int, eta: float | None) -> str:
    """``<done> of <total> frames (<percent>), about <time> left``: what the UI shows."""
    percent = 100 * done // total if total else 100
    if done >= total:
        return f"{done} of {total} frames (100%), done"
    return f"{done} of {total} frames ({percent}%), " + ("time left not known yet" if eta is None
                                                        else f"about {_duration(eta)} left")


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def local_markers(folder) -> list[str]:
    """The done markers in a local styled folder (score_local, while mpiexec runs)."""
    from pathlib import Path

    return [p.name for p in Path(folder).glob("*" + DONE_SUFFIX)]


def stored_markers(store, container: str, prefix: str) -> list[str]:
    """The done markers under ``container/prefix`` in storage (an Azure ML job's output): one
    listing, no blob read."""
    return [b.name for b in store.list(container, prefix.strip("/") + "/") if b.name.endswith(DONE_SUFFIX)]


class Reporter:
    """Publishes a tracker's progress through ``publish`` (an XCom push) once every ``every``
    seconds, changed or not (its ``updated`` says it is alive); a failed publish is logged,
    never raised."""

    def __init__(self, tracker: Tracker, markers: Callable[[], Iterable[str]], publish: Callable[[dict], None],
                 every: float = EVERY_SECONDS):
        self.tracker, self.markers, self.publish, self.every = tracker, markers, publish, every
        self.sent_at = 0.0

    def tick(self, force: bool = False) -> dict | None:
        import logging

        now = time.monotonic()
        if not force and now - self.sent_at < self.every:
            return None
        try:
            value = self.tracker.update(self.markers())
            self.publish(value)
        except Exception as exc:  # noqa: BLE001 -- progress is for people; the step goes on without it
            logging.getLogger(__name__).warning("progress not published: %s", exc)
            return None
        self.sent_at = now
        return value


def job_where(segments: str, styled: str, conn_id: str, estimate: float | str | None = None) -> dict | None:
    """What an Azure ML job's trigger needs to follow it: the run's segments and styled folders
    as ``container/prefix`` in the storage account of ``conn_id`` (None for ``azureml://``
    paths, whose storage the trigger cannot list), and probe's estimate of the score step in
    seconds (the ETA until a segment is done; left out when there is none)."""
    if any(str(path).startswith("azureml://") for path in (segments, styled)):
        return None
    where = {"conn_id": conn_id, "segments": str(segments).strip("/"), "styled": str(styled).strip("/")}
    try:
        where["estimate"] = float(estimate)
    except (TypeError, ValueError):  # none given, or a template that rendered to nothing
        pass
    return where


class JobProgress:
    """An Azure ML job's progress, for the trigger that polls it: the plan read once from the
    run's input container when the job is first seen running, then at each poll one listing of
    the done markers in its output container, published as the task's XCom. Synchronous
    (storage and XCom calls): the trigger runs :meth:`tick` in a thread."""

    def __init__(self, where: dict | None, task_instance=None):
        self.where, self.ti, self.reporter = where, task_instance, None

    @classmethod
    def for_trigger(cls, trigger) -> JobProgress:
        return cls((getattr(trigger, "carry", None) or {}).get("progress"), getattr(trigger, "task_instance", None))

    def tick(self) -> dict | None:
        """The progress now (None where there is none to tell); never raises: the trigger's
        job is the job, progress is for people."""
        if not self.where:
            return None
        if self.reporter is None:
            import json
            import logging

            from storage.blobs import BlobStore

            store = BlobStore(self.where["conn_id"])
            container, _, prefix = self.where["segments"].partition("/")
            try:
                plan = store.read_text(container, f"{prefix}/plan.json".lstrip("/"))
            except Exception as exc:  # noqa: BLE001 -- said, and tried again at the next poll
                logging.getLogger(__name__).warning("no progress: the plan was not read (%s)", exc)
                return None
            if plan is None:
                return None
            out_container, _, out_prefix = self.where["styled"].partition("/")
            self.reporter = Reporter(Tracker.from_plan(json.loads(plan), "azureml", self.where.get("estimate")),
                                     lambda: stored_markers(store, out_container, out_prefix), self.publish, every=0)
        return self.reporter.tick()

    def publish(self, value: dict) -> None:
        if self.ti is None:
            return
        from airflow.sdk.execution_time.xcom import XCom

        XCom.set(XCOM_KEY, value, dag_id=self.ti.dag_id, task_id=self.ti.task_id, run_id=self.ti.run_id,
                 map_index=getattr(self.ti, "map_index", -1))
