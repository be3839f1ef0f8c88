"""blob_sweep: process the uploads of a time window that have no run yet (for backfills).

Each run's data interval (the hour before it runs; ``VST_SWEEP_MINUTES`` changes the length)
selects the blobs in videos-in last modified inside it, and starts
one video_style_transfer run per blob version, with the same run id the watcher would use,
so versions already processed are skipped. Catch up on a period Airflow was down with:

    airflow backfill create --dag-id blob_sweep --from-date 2026-11-01 --to-date 2026-11-02
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import CronTriggerTimetable, dag, get_current_context, task

MINUTES = int(os.environ.get("VST_SWEEP_MINUTES", "60"))
# A trigger timetable whose runs cover the preceding interval (Airflow 3's default cron
# schedule gives a run no interval at all, and the sweep is all about its interval).
EVERY = CronTriggerTimetable("0 * * * *" if MINUTES == 60 else f"*/{MINUTES} * * * *", timezone="UTC",
                             interval=timedelta(minutes=MINUTES))


@dag(dag_id="blob_sweep", schedule=EVERY, start_date=datetime(2026, 1, 1), catchup=False,
     max_active_runs=4, tags=["video", "backfill"], doc_md=__doc__)
def blob_sweep():
    @task
    def uploads_in_window() -> list[dict]:
        from blob_watch import processing_run_id
        from storage import DATA_CONN, INPUTS, BlobStore

        context = get_current_context()
        start, end = context["data_interval_start"], context["data_interval_end"]
        found = [b for b in BlobStore(DATA_CONN).list(INPUTS)
                 if b.size and start <= datetime.fromisoformat(b.last_modified) < end]
        print(f"{len(found)} upload(s) in [{start}, {end})")
        return [{"trigger_run_id": processing_run_id(INPUTS, b.name, b.etag), "conf": {"input_blob": b.name}}
                for b in found]

    TriggerDagRunOperator.partial(
        task_id="start_processing", trigger_dag_id="video_style_transfer", skip_when_already_exists=True,
    ).expand_kwargs(uploads_in_window())


blob_sweep()
