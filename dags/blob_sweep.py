"""blob_sweep: runs for the uploads taken in during a time window (backfills, and a safety net).

Each run covers the hour that starts at its logical date (``VST_SWEEP_MINUTES`` changes the
length) and reads the versions taken in during it from the acceptance ledger, never listing
``accepted``. A scheduled run, right after its hour, starts the runs the watcher would have
started (same run ids), so it never starts a second one. A backfill reprocesses its hours'
uploads, each from the snapshot taken when it was taken in, with the settings it was taken in
with under those given in the backfill's conf; a version already published with the same
settings is skipped by the processing run itself. Its hours are those whose start lies
between ``--from-date`` and ``--to-date``, both included; ``--reprocess-behavior completed``
makes it take the hours that the schedule swept already (all of them, while it runs):

    airflow backfill create --dag-id blob_sweep --from-date 2026-11-01T00:00 --to-date 2026-11-01T23:00 \\
        --reprocess-behavior completed --dag-run-conf '{"style": "7"}'

Each backfill starts runs of its own (their ids name the sweep run, how often Airflow cleared
it to reuse it, and the settings), so a second one with other settings reprocesses again.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow.sdk import CronDataIntervalTimetable, dag, get_current_context, task

MINUTES = int(os.environ.get("VST_SWEEP_MINUTES", "60"))
# A data-interval timetable: a run's logical date is the start of the hour it covers, and a
# backfill picks its runs by logical date, so --from-date 2026-11-01 starts at 00:00 of that
# day. (A trigger timetable runs at the hour too but dates a run by the hour before it: the
# same backfill would begin with 10-31 23:00.)
EVERY = CronDataIntervalTimetable("0 * * * *" if MINUTES == 60 else f"*/{MINUTES} * * * *", timezone="UTC")


@dag(dag_id="blob_sweep", schedule=EVERY, start_date=datetime(2026, 1, 1), catchup=False,
     max_active_runs=4, tags=["video", "backfill"], doc_md=__doc__)
def blob_sweep():
    @task
    def start_processing() -> dict:
        from intake.inbox import RunStarter, sweep

        context = get_current_context()
        run = context["dag_run"]
        # Reprocessing a logical date, Airflow clears its run and reuses the run id: the clear
        # count tells one backfill of that hour from the next.
        backfill = f"{run.run_id}#{run.clear_number}" if run.run_type == "backfill" else None
        # a run triggered by hand has no data interval: it sweeps the MINUTES before it was asked for
        end = context.get("data_interval_end") or run.run_after
        start = context.get("data_interval_start") or end - timedelta(minutes=MINUTES)
        return sweep(RunStarter(context["ti"]), start, end, run.conf, backfill)

    start_processing()


blob_sweep()
