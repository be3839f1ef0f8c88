"""video_style_transfer: one uploaded video in, the same video stylized out.

Wiring only: the task bodies live in plugins/pipeline/tasks.py and run the scoring
commands; nothing heavy is imported when this file is parsed.

    probe ─┬─► split ─► choose_backend ─┬─► score_local ────┬─► stitch_and_publish ─┬─► notify
           │                            └─► score_azureml ──┘                       └─► clean_up
           └─► preview ─► clean_up   (preview: a few frames before/after, in videos-out
                                      seconds after the upload is seen)

clean_up runs in every final state (trigger rule all_done): once the tasks before it are
done, retries included, it removes the run's work containers and scratch folder, whether
the run published, failed or was skipped.

Tasks go to two Celery queues (LocalExecutor ignores them): ``scoring`` for the two that run
the network (``score_local`` and ``preview``: torch, MPI; each removes its own files on that
worker when it ends, since clean_up runs on the other queue), ``default`` for the rest, whose
worker image (docker/airflow) has no torch. The pool ``scoring`` bounds the ``score_local``
runs at once (MPI jobs on the scoring workers), not Azure ML jobs.

Start it from the UI form, from the CLI
(``airflow dags trigger video_style_transfer -c '{"input_blob": "clip.mp4"}'``, for an upload in
``accepted``), or let ``blob_watcher`` start it for every upload to ``videos-in``, with the
settings of the upload's metadata (docs/uploads.md).
"""

from __future__ import annotations

import os
from datetime import timedelta

from airflow.sdk import dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException
from aml_backend.operators import AzureMLScoreOperator
from intake.settings import PARAMS
from observability.progress import XCOM_KEY as PROGRESS
from pipeline.notifications import RunNotifier
from pipeline.preview import PreviewOperator

WORK_IN = "{{ ti.xcom_pull(task_ids='probe')['work_in'] }}"
WORK_OUT = "{{ ti.xcom_pull(task_ids='probe')['work_out'] }}"
DEFAULT_QUEUE, SCORING_QUEUE = "default", "scoring"  # docker-compose.yaml runs a worker for each
AZUREML_POLL_SECONDS = float(os.environ.get("VST_AZUREML_POLL_SECONDS", "30"))
MODEL_IN = "{{ (ti.xcom_pull(task_ids='probe')['work_in'] ~ '/model.pth') if params.model_blob else '' }}"
ESTIMATE = "{{ ti.xcom_pull(task_ids='probe')['estimate']['score_seconds'] }}"  # probe's, for the live ETA
STYLE_IMAGE_IN = "{{ (ti.xcom_pull(task_ids='probe')['work_in'] ~ '/style-image') if params.style_image else '' }}"



def _run(step):
    """Call a pipeline step with the run's params; a bad input fails at once, without retries;
    an input version already published with the same settings skips the run, saying by whom."""
    from pipeline import tasks

    context = get_current_context()
    try:
        return step(tasks, dict(context["params"]), context["run_id"])
    except tasks.BadInput as exc:
        raise AirflowFailException(str(exc)) from None
    except tasks.AlreadyDone as exc:
        raise AirflowSkipException(str(exc)) from None


@dag(
    dag_id="video_style_transfer",
    schedule=None,
    params=PARAMS,
    max_active_runs=16,
    default_args={
        "queue": DEFAULT_QUEUE,
        "retries": 3,
        "retry_delay": timedelta(seconds=10),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=5),
        "on_failure_callback": [RunNotifier("failed")],
    },
    tags=["video", "style-transfer"],
    doc_md=__doc__,
)
def video_style_transfer():
    # each task's result is one XCom (return_value), not one per key as "-> dict" would make
    @task(multiple_outputs=False)
    def probe() -> dict:
        return _run(lambda p, params, run_id: p.probe(params, run_id))

    @task(multiple_outputs=False)
    def split(probed: dict) -> dict:
        return _run(lambda p, params, run_id: p.split(params, probed, run_id))

    @task.branch
    def choose_backend() -> str:
        return "score_azureml" if get_current_context()["params"]["backend"] == "azureml" else "score_local"

    # beside its result, the XCom "progress"
    @task(pool="scoring", queue=SCORING_QUEUE, execution_timeout=timedelta(hours=6), multiple_outputs=False)
    def score_local(probed: dict) -> dict:
        ti = get_current_context()["ti"]  # its XCom "progress": frames done and ETA while it runs
        return _run(lambda p, params, run_id: p.score_local(params, probed, lambda v: ti.xcom_push(PROGRESS, v)))

    @task(trigger_rule="none_failed_min_one_success", multiple_outputs=False)
    def stitch_and_publish(probed: dict, split_facts: dict, local: dict | None, azureml: dict | None) -> dict:
        scored = local or azureml or {}
        return _run(lambda p, params, run_id: p.stitch_and_publish(params, probed, split_facts, scored, run_id))

    @task(trigger_rule="all_done")
    def clean_up() -> int:
        return _run(lambda p, params, run_id: p.clean_up(run_id))

    @task
    def notify(published: dict) -> None:
        RunNotifier("succeeded", published).notify(get_current_context())

    probed = probe()
    previewed = PreviewOperator(probed=probed, retries=0, queue=SCORING_QUEUE)
    split_facts = split(probed)
    backend = choose_backend()
    local = score_local(probed)
    # No pool: deferred, it would free its slot anyway; the cluster's max_nodes bounds the
    # jobs (more wait in Azure ML's queue, up to the operator's max_queued), and a local pool
    # slot would only make a job's submission wait for local scoring (docs/deploying.md).
    azureml = AzureMLScoreOperator(
        task_id="score_azureml", execution_timeout=timedelta(hours=12),
        segments=f"{WORK_IN}/segments", styled=f"{WORK_OUT}/styled",
        style="{{ params.style }}", model=MODEL_IN, style_image=STYLE_IMAGE_IN,
        style_strength="{{ params.style_strength }}",
        precision="{{ params.precision }}", temporal="{{ params.temporal }}", delivery="{{ params.delivery }}",
        nodes="{{ params.azureml_nodes }}", max_resubmits=3, poll_interval=AZUREML_POLL_SECONDS,
        estimate_seconds=ESTIMATE,
    ).output
    split_facts >> backend >> [local, azureml]
    published = stitch_and_publish(probed, split_facts, local, azureml)
    [published, previewed] >> clean_up()
    notify(published)


video_style_transfer()
