"""housekeeping: every hour, remove work that outlived its run and say what went.

Each video_style_transfer run removes its own work containers and scratch folders when it
ends; this catches what a crash or a lost worker left: ``run-*`` containers in the system
account and scratch folders, last written more than ``max_age_hours`` ago (keep it above the
longest a run can take, retries included), by a task on each queue, since every worker has a
scratch folder of its own (with several workers on a queue, each hourly run reaches one of
them). It applies the retention of ``accepted`` (``accepted_retention_days``): what was taken
in longer ago goes, snapshots included, as the acceptance ledger lists it (docs/uploads.md).
And, where an Azure ML connection is set up, the Azure ML jobs whose score task no longer
waits for them (marked failed or cleared before a triggerer picked its trigger up): cancelled,
so that they do not take nodes and bill (plugins/aml_backend/orphans.py). What went is in the
task logs and their return values.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, dag, get_current_context, task

AZUREML_CONN_ID = "azureml_default"  # the connection the score_azureml task uses
SCORING_QUEUE = "scoring"  # video_style_transfer's score_local and preview run there


@dag(dag_id="housekeeping", schedule="@hourly", start_date=datetime(2026, 1, 1), catchup=False, max_active_runs=1,
     params={"max_age_hours": Param(72, type="number", minimum=1, title="Remove work older than (hours)",
                                    description="Run containers and scratch folders last written longer ago "
                                    "than this are removed; keep it above the longest run"),
             "accepted_retention_days": Param(30, type="number", minimum=1, title="Keep accepted uploads (days)",
                                              description="Uploads taken in longer ago than this leave accepted "
                                              "with their snapshots; a backfill can reach back this far")},
     tags=["video", "maintenance"], doc_md=__doc__)
def housekeeping():
    def remove(containers: bool) -> dict:
        from pipeline import leftovers

        max_age = timedelta(hours=float(get_current_context()["params"]["max_age_hours"]))
        removed = leftovers.remove_old_work(max_age, containers=containers)
        for name in removed["containers"]:
            print(f"removed container {name}")
        for name in removed["scratch_folders"]:
            print(f"removed scratch folder {name}")
        print(leftovers.report(removed, max_age))
        return removed

    @task
    def remove_old_work() -> dict:
        return remove(containers=True)

    @task(queue=SCORING_QUEUE)
    def remove_old_scratch_of_scoring() -> dict:
        return remove(containers=False)

    @task
    def prune_accepted() -> dict:
        from datetime import UTC

        from intake import ledger
        from storage.blobs import DATA_CONN, SYSTEM_CONN, BlobStore

        days = float(get_current_context()["params"]["accepted_retention_days"])
        removed = ledger.prune(BlobStore(DATA_CONN), BlobStore(SYSTEM_CONN), datetime.now(UTC) - timedelta(days=days))
        print(f"accepted: {removed['blobs']} upload(s) and {removed['snapshots']} further snapshot(s) taken in over "
              f"{days:g} days ago removed, {removed['hours']} hour(s) of the ledger")
        return removed

    @task
    def cancel_orphaned_azureml_jobs() -> list:
        from aml_backend.hook import AzureMLHook
        from aml_backend.orphans import cancel_orphaned_jobs, has_connection

        if not has_connection(AZUREML_CONN_ID):
            print(f"no connection {AZUREML_CONN_ID}: no Azure ML jobs to look at")
            return []
        ti = get_current_context()["ti"]

        def task_state(dag_id: str, run_id: str, task_id: str) -> str | None:
            return ti.get_task_states(dag_id=dag_id, task_ids=[task_id], run_ids=[run_id]).get(run_id, {}).get(task_id)

        cancelled = cancel_orphaned_jobs(AzureMLHook(AZUREML_CONN_ID), task_state)
        for job in cancelled:
            print(f"cancelled Azure ML job {job['job']}: task {job['task']} is {job['task_state'] or 'gone'}")
        print(f"cancelled {len(cancelled)} Azure ML job(s) that no task waits for")
        return cancelled

    remove_old_work()
    remove_old_scratch_of_scoring()
    prune_accepted()
    cancel_orphaned_azureml_jobs()


housekeeping()
