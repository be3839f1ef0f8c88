"""video_style_transfer: one uploaded video in, the same video stylized out.

Wiring only: the task bodies live in plugins/style_pipeline.py and run the scoring
commands; nothing heavy is imported when this file is parsed.

    probe ─┬─► split ─► choose_backend ─┬─► score_local ────┬─► stitch_and_publish ─► clean_up ─► notify
           │                            └─► score_azureml ──┘
           └─► preview   (a few frames before/after, in videos-out seconds after the upload is seen)

Tasks go to two Celery queues (LocalExecutor ignores them): ``scoring`` for the two that run
the network (``score_local`` and ``preview``: torch, MPI), ``default`` for the rest, whose
worker image (docker/airflow) has no torch.

Start it from the UI form, from the CLI
(``airflow dags trigger video_style_transfer -c '{"input_blob": "clip.mp4"}'``),
or let ``blob_watcher`` start it for every upload.
"""

from __future__ import annotations

import os
from datetime import timedelta

from airflow.sdk import Param, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException
from azureml.operators import AzureMLScoreOperator
from notifications import RunNotifier
from preview import PreviewOperator

WORK_IN = "{{ ti.xcom_pull(task_ids='probe')['work_in'] }}"
WORK_OUT = "{{ ti.xcom_pull(task_ids='probe')['work_out'] }}"
DEFAULT_QUEUE, SCORING_QUEUE = "default", "scoring"  # docker-compose.yaml runs a worker for each
AZUREML_POLL_SECONDS = float(os.environ.get("VST_AZUREML_POLL_SECONDS", "30"))
MODEL_IN = "{{ (ti.xcom_pull(task_ids='probe')['work_in'] ~ '/model.pth') if params.model_blob else '' }}"
STYLE_IMAGE_IN = "{{ (ti.xcom_pull(task_ids='probe')['work_in'] ~ '/style-image') if params.style_image else '' }}"

PARAMS = {
    "input_blob": Param("", type="string", minLength=1, maxLength=1024, title="Input video",
                        description="Blob name in the videos-in container, e.g. holiday/beach.mp4"),
    "style": Param("19", type="string", pattern=r"^\s*\d{1,2}(:[0-9.]+)?(\s*,\s*\d{1,2}(:[0-9.]+)?)*\s*$",
                   title="Style", description="Built-in style 0-25, or a blend such as 3:0.5,12:0.5"),
    "model_blob": Param(None, type=["null", "string"], title="Own model",
                        description="A TransformerNet .pth in the styles container; replaces the style"),
    "style_image": Param(None, type=["null", "string"], maxLength=1024, title="Any picture as the style",
                         description="A picture (JPEG, PNG, WebP) in the styles container, e.g. wave.jpg; "
                         "replaces the style; its center square is what counts"),
    "style_strength": Param(1.0, type="number", minimum=0, maximum=1, title="Style strength",
                            description="1: fully styled; lower blends each frame back toward the original"),
    "max_side": Param(None, type=["null", "integer"], minimum=16, maximum=7680, title="Longest side (px)",
                      description="Scale down so the longer side is at most this; empty keeps the size"),
    "ranks": Param(2, type="integer", minimum=1, maximum=64, title="MPI ranks"),
    "backend": Param("local", type="string", enum=["local", "azureml"], title="Where to score"),
    "output_name": Param(None, type=["null", "string"], maxLength=1024, title="Output blob",
                         description="Name in videos-out; empty: <input>.style-<style>.mp4 "
                         "(with a style picture: <input>.image-<picture>.mp4)"),
    "segment_frames": Param(48, type="integer", minimum=1, maximum=10000, title="Frames per segment"),
    "precision": Param("auto", type="string", enum=["auto", "fp32", "bf16", "fp16"], title="Precision",
                       description="auto: fp16 on CUDA, bf16 on CPUs that have it, else fp32"),
    "temporal": Param(0, type="number", minimum=0, maximum=0.95, title="Steadier video (temporal smoothing)",
                      description="Less flicker where the picture stands still: 0 is off, 0.7 a good start "
                      "(flicker -68% on the bench clip for about 12% more work per frame); moving parts stay sharp"),
    "max_duration": Param(3600, type="number", minimum=1, maximum=86400, title="Longest video accepted (s)"),
    "notify_email": Param(None, type=["null", "string"], title="E-mail to notify"),
    "azureml_nodes": Param(2, type="integer", minimum=1, maximum=100, title="Azure ML nodes"),
    "azureml_gpus_per_node": Param(1, type="integer", minimum=1, maximum=8, title="GPUs per node"),
    "azureml_vm_size": Param("Standard_NC6s_v3", type="string", title="Azure ML VM size"),
    "azureml_tier": Param("low_priority", type="string", enum=["low_priority", "dedicated"], title="Azure ML tier"),
}


def _run(step):
    """Call a pipeline step with the run's params; a bad input fails at once, without retries;
    an input version already published with the same settings skips the run, saying by whom."""
    import style_pipeline

    context = get_current_context()
    try:
        return step(style_pipeline, dict(context["params"]), context["run_id"])
    except style_pipeline.BadInput as exc:
        raise AirflowFailException(str(exc)) from None
    except style_pipeline.AlreadyDone as exc:
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
    @task
    def probe() -> dict:
        return _run(lambda p, params, run_id: p.probe(params, run_id))

    @task
    def split(probed: dict) -> dict:
        return _run(lambda p, params, run_id: p.split(params, probed, run_id))

    @task.branch
    def choose_backend() -> str:
        return "score_azureml" if get_current_context()["params"]["backend"] == "azureml" else "score_local"

    @task(pool="scoring", queue=SCORING_QUEUE, execution_timeout=timedelta(hours=6))
    def score_local(probed: dict) -> dict:
        return _run(lambda p, params, run_id: p.score_local(params, probed))


    @task(trigger_rule="none_failed_min_one_success")
    def stitch_and_publish(probed: dict, split_facts: dict, local: dict | None, azureml: dict | None) -> dict:
        scored = local or azureml or {}
        return _run(lambda p, params, run_id: p.stitch_and_publish(params, probed, split_facts, scored, run_id))

    @task
    def clean_up(probed: dict, published: dict) -> int:
        return _run(lambda p, params, run_id: p.clean_up(probed))

    @task
    def notify(published: dict) -> None:
        RunNotifier("succeeded", published).notify(get_current_context())

    probed = probe()
    PreviewOperator(probed=probed, retries=0, queue=SCORING_QUEUE)
    split_facts = split(probed)
    backend = choose_backend()
    local = score_local(probed)
    azureml = AzureMLScoreOperator(
        task_id="score_azureml", pool="scoring", execution_timeout=timedelta(hours=12),
        segments=f"{WORK_IN}/segments", styled=f"{WORK_OUT}/styled",
        style="{{ params.style }}", model=MODEL_IN, style_image=STYLE_IMAGE_IN,
        style_strength="{{ params.style_strength }}",
        precision="{{ params.precision }}", temporal="{{ params.temporal }}",
        nodes="{{ params.azureml_nodes }}",
        gpus_per_node="{{ params.azureml_gpus_per_node }}", vm_size="{{ params.azureml_vm_size }}",
        tier="{{ params.azureml_tier }}", max_resubmits=3, poll_interval=AZUREML_POLL_SECONDS,
    ).output
    split_facts >> backend >> [local, azureml]
    published = stitch_and_publish(probed, split_facts, local, azureml)
    clean_up(probed, published)
    notify(published)


video_style_transfer()
