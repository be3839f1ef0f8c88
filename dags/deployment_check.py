"""deployment_check: prove this deployment from inside it, one line a finding.

What ``python -m deployment check`` prints (plugins/deployment/check.py), run by the workers
with their own connections and identities: the storage accounts, their containers and what the
pipeline may do there, the Variable, Azure ML, the webhook and the mail server. Trigger it after
a deployment or a change of credentials (docs/deploying.md#the-deployment-check); it changes
nothing for good.

A task reaches no metadata database, so the pool ``scoring`` is proven the way a run meets it:
``a_scoring_slot`` runs in that pool, on the scoring queue, before the check. A pool that is
missing or has no slot keeps it waiting, and the run fails at its timeout; the command reads
the pool itself.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, dag, get_current_context, task

SCORING_POOL, SCORING_QUEUE = "scoring", "scoring"  # as video_style_transfer's score_local


@dag(dag_id="deployment_check", schedule=None, start_date=datetime(2026, 1, 1), catchup=False, max_active_runs=1,
     dagrun_timeout=timedelta(minutes=30),
     params={"azureml": Param("auto", type="string", enum=["auto", "yes", "no"], title="Check Azure ML",
                              description="auto: where the azureml_default connection exists"),
             "allow_account_keys": Param(False, type="boolean", title="Accept account keys",
                                         description="Storage connections may hold the account key "
                                         "(Azurite and other local set-ups); in Azure, leave it off")},
     tags=["maintenance"], doc_md=__doc__)
def deployment_check():
    @task(pool=SCORING_POOL, queue=SCORING_QUEUE, retries=0)
    def a_scoring_slot() -> str:
        seen = f"a slot was free: this run's a_scoring_slot ran in it on queue {SCORING_QUEUE}"
        print(f"pool {SCORING_POOL}: {seen}")
        return seen

    @task(retries=0)
    def check(slot: str) -> list[str]:
        from deployment.check import in_a_task

        params = get_current_context()["params"]
        return in_a_task(params["azureml"], params["allow_account_keys"], slot)

    check(a_scoring_slot())


deployment_check()
