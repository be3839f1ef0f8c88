"""housekeeping: once a day, remove work that outlived its run and say what went.

Each video_style_transfer run removes its own work containers and scratch folder when it
ends; this catches what a crash or a lost worker left: ``run-*`` containers in the system
account and scratch folders on the worker that runs it, last written more than
``max_age_hours`` ago (keep it above the longest a run can take, retries included). What it
removed is in the task log and its return value.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, dag, get_current_context, task


@dag(dag_id="housekeeping", schedule="@daily", start_date=datetime(2026, 1, 1), catchup=False, max_active_runs=1,
     params={"max_age_hours": Param(72, type="number", minimum=1, title="Remove work older than (hours)",
                                    description="Run containers and scratch folders last written longer ago "
                                    "than this are removed; keep it above the longest run")},
     tags=["video", "maintenance"], doc_md=__doc__)
def housekeeping():
    @task
    def remove_old_work() -> dict:
        import leftovers

        max_age = timedelta(hours=float(get_current_context()["params"]["max_age_hours"]))
        removed = leftovers.remove_old_work(max_age)
        for name in removed["containers"]:
            print(f"removed container {name}")
        for name in removed["scratch_folders"]:
            print(f"removed scratch folder {name}")
        print(leftovers.report(removed, max_age))
        return removed

    remove_old_work()


housekeeping()
