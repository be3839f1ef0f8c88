"""blob_watcher: every new upload to videos-in starts exactly one video_style_transfer run.

    wait_for_uploads (deferred in the triggerer) ─► start_processing (one per version) ─► remember

Runs continuously, one run at a time: each run waits (deferred, no worker slot) until a blob
version it has not seen appears, starts the processing runs, moves the watermark, and ends;
the next run starts waiting at once. A run that sees nothing for an hour ends skipped, so
runs never pile up. The processing run id is derived from the blob's name and etag: the
same version can never be processed twice, and a re-upload with new content is processed
again.
"""

from __future__ import annotations

import os
from datetime import datetime

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import dag, task
from blob_watch import NewBlobVersionSensor

POLL_SECONDS = float(os.environ.get("VST_WATCH_POLL_SECONDS", "2"))
IDLE_SECONDS = float(os.environ.get("VST_WATCH_IDLE_SECONDS", "3600"))


def run_for_upload(blob: dict) -> dict:
    """One processing run per blob version; mapped without a task of its own (saves a launch)."""
    from blob_watch import processing_run_id

    return {"trigger_run_id": processing_run_id("videos-in", blob["name"], blob["etag"]),
            "conf": {"input_blob": blob["name"]}}


@dag(dag_id="blob_watcher", schedule="@continuous", start_date=datetime(2026, 1, 1), catchup=False,
     max_active_runs=1, tags=["video", "watcher"], doc_md=__doc__)
def blob_watcher():
    uploads = NewBlobVersionSensor(task_id="wait_for_uploads", container="videos-in", wasb_conn_id="wasb_data",
                                   poke_interval=POLL_SECONDS, timeout=IDLE_SECONDS)

    @task  # only after every run was started: a failed start is retried by the next watcher run
    def remember(blobs: list[dict]) -> dict | None:
        from airflow.sdk import Variable
        from blob_watch import STATE_VARIABLE, advance

        state = advance(Variable.get(STATE_VARIABLE, default=None, deserialize_json=True), blobs)
        Variable.set(STATE_VARIABLE, state, serialize_json=True)
        return state

    started = TriggerDagRunOperator.partial(
        task_id="start_processing", trigger_dag_id="video_style_transfer", skip_when_already_exists=True,
    ).expand_kwargs(uploads.output.map(run_for_upload))
    started >> remember(uploads.output)


blob_watcher()
