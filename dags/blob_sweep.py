"""blob_sweep: runs for the uploads accepted in a time window (for backfills, and as a safety net).

Each run's data interval (the hour before it runs; ``VST_SWEEP_MINUTES`` changes the length)
selects the blobs in ``accepted`` taken in inside it. A scheduled run starts the runs the
watcher would have started (same run ids), so it never starts a second one. A backfill
reprocesses them, with the settings each upload was taken in with, or with the settings
given in the backfill's run conf; uploads already published with the same settings are
skipped by the processing run itself:

    airflow backfill create --dag-id blob_sweep --from-date 2026-11-01 --to-date 2026-11-02 \\
        --dag-run-conf '{"style": "7"}'
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

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
    def start_processing() -> dict:
        from airflow.sdk import Variable
        from intake.inbox import RunStarter, sweep
        from intake.settings import DEFAULTS_VARIABLE, check_defaults

        context = get_current_context()
        run = context["dag_run"]
        defaults = check_defaults(Variable.get(DEFAULTS_VARIABLE, default=None, deserialize_json=True))
        backfill_of = run.run_id if run.run_type == "backfill" else None
        # a run triggered by hand has no data interval: it sweeps the MINUTES before it was asked for
        end = context.get("data_interval_end") or run.run_after
        start = context.get("data_interval_start") or end - timedelta(minutes=MINUTES)
        return sweep(RunStarter(context["ti"]), start, end, defaults, run.conf, backfill_of)

    start_processing()


blob_sweep()
