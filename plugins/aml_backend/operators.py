"""AzureMLScoreOperator: the score step of ``video_style_transfer`` as an Azure ML job.

Written like the provider's Data Factory operator: ensure the compute, submit, defer to a
trigger that polls the job; ``execute_complete`` decides. What it adds is preemption: a job
that ended because its low-priority nodes were taken (or a node failure the service reports
as retriable) is submitted again, up to ``max_resubmits`` times, and since finished segments
sit in storage with their done markers, each new job styles only what is missing.

The Azure ML SDK is imported when the task runs, never when the DAG is parsed.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from collections.abc import Sequence
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import AirflowException, BaseOperator

from .links import JOB_NAME_KEY, STUDIO_URL_KEY, AzureMLJobLink, studio_url
from .trigger import AzureMLJobTrigger

if TYPE_CHECKING:
    from .hook import AzureMLHook

# What the service says when low-priority nodes are taken back, or a node dies under a job
# (e.g. "PreemptionError: Nodes of this job got pre-empted. Check if the run has failed or
# restarted. Reason: Received pre-emption warning signal").
RETRIABLE = re.compile(r"pre-?empt|node ?failure|nodes? (was|were|got) (lost|evicted|removed)|evict", re.IGNORECASE)


def is_retriable(event: dict) -> bool:
    """A job that ended Failed or Canceled because of preemption or a retriable node failure.
    A poll error is not: the job may still be running, and a second one would race it."""
    return event.get("job_status") in ("Failed", "Canceled") and bool(RETRIABLE.search(event.get("message") or ""))


class AzureMLScoreOperator(BaseOperator):
    """Style a run's segments on an Azure ML GPU cluster: ``python -m scoring score`` under MPI.

    :param segments: the run's segments folder (``split`` output), ``container/prefix`` in the
        storage account of ``storage_conn_id``, or an ``azureml://datastores/...`` path.
    :param styled: the folder for styled segments and their done markers, same forms.
    :param style: a built-in style or blend (``"7"``, ``"3:0.5,12:0.5"``); ignored with ``model``.
    :param model: a TransformerNet ``.pth`` blob (``container/path`` or ``azureml://``) instead.
    :param style_image: a picture blob (same forms) to use as the style instead.
    :param style_strength: 0..1, blend the styled frames toward the originals (default 1: fully styled).
    :param precision: ``fp16`` (default, GPUs), ``bf16`` or ``fp32``. :param batch: frames per pass.
    :param temporal: steadier video, ``--temporal STRENGTH`` (0, the default, is off; see scoring/temporal.py).
    :param extra_score_args: more ``python -m scoring score`` options (``--crf``, ``--preset``).
    :param compute_name, vm_size, nodes, gpus_per_node, tier, max_nodes, idle_seconds, keep_warm:
        the cluster (scale 0..max(max_nodes, nodes), ``low_priority`` or ``dedicated``) and the
        job's shape: ``nodes`` instances, one MPI rank per GPU.
    :param output_mode: ``rw_mount`` (resumable) or ``upload`` (write-only token; see ``sas``).
    :param expected_duration: how long a job should take; the SAS tokens expire after it plus 30 min.
    :param max_resubmits: new jobs after preemption before the task fails.
    """

    template_fields: Sequence[str] = ("segments", "styled", "style", "model", "style_image", "style_strength",
                                      "precision", "batch", "temporal", "compute_name", "vm_size", "nodes",
                                      "gpus_per_node", "tier", "max_resubmits")
    ui_color = "#0078d4"
    operator_extra_links = (AzureMLJobLink(),)

    def __init__(self, *, segments: str, styled: str, style: str | None = "0", model: str | None = None,
                 style_image: str | None = None, style_strength: float | str = 1.0, precision: str = "fp16",
                 batch: int | str = 8, temporal: float | str = 0, extra_score_args: Sequence[str] = (),
                 compute_name: str = "vst-gpu", vm_size: str = "Standard_NC6s_v3", nodes: int | str = 1,
                 gpus_per_node: int | str = 1, tier: str = "low_priority", max_nodes: int | None = None,
                 idle_seconds: int = 120, keep_warm: bool = False, output_mode: str = "rw_mount",
                 azureml_conn_id: str = "azureml_default", storage_conn_id: str = "wasb_system",
                 logs_container: str = "logs", expected_duration: timedelta = timedelta(hours=2),
                 max_resubmits: int | str = 3, poll_interval: float = 30.0,
                 experiment_name: str = "video-style-transfer", **kwargs) -> None:
        super().__init__(**kwargs)
        self.segments, self.styled, self.style, self.model = segments, styled, style, model
        self.style_image, self.style_strength = style_image, style_strength
        self.precision, self.batch, self.temporal = precision, batch, temporal
        self.extra_score_args = list(extra_score_args)
        self.compute_name, self.vm_size, self.nodes, self.gpus_per_node = compute_name, vm_size, nodes, gpus_per_node
        self.tier, self.max_nodes, self.idle_seconds, self.keep_warm = tier, max_nodes, idle_seconds, keep_warm
        self.output_mode = output_mode
        self.azureml_conn_id, self.storage_conn_id, self.logs_container = azureml_conn_id, storage_conn_id, logs_container
        self.expected_duration = expected_duration
        self.max_resubmits, self.poll_interval, self.experiment_name = max_resubmits, poll_interval, experiment_name
        self.job_name: str | None = None

    @cached_property
    def hook(self) -> AzureMLHook:
        from .hook import AzureMLHook

        return AzureMLHook(self.azureml_conn_id)

    # ------------------------------------------------------------------ the task

    def execute(self, context) -> None:
        from . import entities

        cluster = entities.build_compute(self.compute_name, self.vm_size, max(int(self.max_nodes or 0), int(self.nodes)),
                                         tier=self.tier, idle_seconds=self.idle_seconds)
        self.hook.ensure_compute(entities.keep_warm(cluster) if self.keep_warm else cluster)
        self._submit_and_defer(context, resubmits=0, job_names=[])

    def execute_complete(self, context, event: dict[str, Any]) -> dict:
        carry = event.get("carry") or {}
        resubmits, job_names = carry.get("resubmits", 0), carry.get("job_names") or [event.get("job_name")]
        self.job_name = event.get("job_name")
        self._copy_logs(context, self.job_name)
        if event.get("status") == "success":
            self.log.info("%s after %d resubmission(s)", event.get("message"), resubmits)
            return {"job_name": self.job_name, "job_names": job_names, "resubmits": resubmits}
        if is_retriable(event):
            if resubmits < int(self.max_resubmits):
                self.log.warning("job %s ended %s (%s); resubmitting (%d of %d): finished segments are kept",
                                 self.job_name, event.get("job_status"), event.get("message"), resubmits + 1,
                                 int(self.max_resubmits))
                self._submit_and_defer(context, resubmits=resubmits + 1, job_names=job_names)
            raise AirflowException(f"Azure ML job {self.job_name} was preempted again after {resubmits} resubmission(s) "
                                   f"(max_resubmits={self.max_resubmits}): {event.get('message')}. Finished segments "
                                   "are kept; clear the task to resume, or use tier 'dedicated'")
        raise AirflowException(f"Azure ML job {event.get('job_name')} ended {event.get('job_status')}: "
                               f"{event.get('message')}")

    def on_kill(self) -> None:
        if self.job_name:
            self.log.info("cancelling Azure ML job %s", self.job_name)
            self.hook.cancel(self.job_name)

    # ------------------------------------------------------------------ parts

    def score_args(self) -> list[str]:
        args = [] if self.model or self.style_image else ["--style", str(self.style)]
        if float(self.style_strength) != 1:
            args += ["--style-strength", str(float(self.style_strength))]
        args += ["--precision", str(self.precision), "--batch", str(self.batch)]
        if float(self.temporal or 0):
            args += ["--temporal", str(self.temporal)]
        return [*args, *self.extra_score_args]

    def _submit_and_defer(self, context, resubmits: int, job_names: list[str]) -> None:
        from . import entities

        segments, styled, model, style_image = self._data_paths(context)
        environment = self.hook.ensure_environment(entities.build_environment())
        run_tag = _run_tag(context)
        with tempfile.TemporaryDirectory(prefix="azureml-code-") as code:
            job = entities.build_score_job(
                segments_uri=segments, styled_uri=styled, model_uri=model, style_image_uri=style_image,
                score_args=self.score_args(),
                code=entities.stage_code(code), environment=environment, compute=self.compute_name,
                nodes=int(self.nodes), gpus_per_node=int(self.gpus_per_node), output_mode=self.output_mode,
                experiment_name=self.experiment_name, display_name=f"{self.task_id} {run_tag}",
                tags={"airflow_run": run_tag, "resubmission": str(resubmits)})
            submitted = self.hook.submit(job)  # uploads the code snapshot
        self.job_name = submitted.name
        url = getattr(submitted, "studio_url", None) or studio_url(submitted.name, **self.hook.workspace())
        context["ti"].xcom_push(key=JOB_NAME_KEY, value=submitted.name)
        context["ti"].xcom_push(key=STUDIO_URL_KEY, value=url)
        self.log.info("submitted Azure ML job %s (%s x %s GPUs, %s): %s", submitted.name, self.nodes,
                      self.gpus_per_node, self.tier, url)
        carry = {"resubmits": resubmits, "job_names": [*job_names, submitted.name]}
        self.defer(trigger=AzureMLJobTrigger(submitted.name, self.azureml_conn_id, self.poll_interval, carry=carry),
                   method_name="execute_complete", timeout=self.execution_timeout)

    def _data_paths(self, context) -> tuple[str, str, str | None, str | None]:
        """The job's inputs and output as ``azureml://`` paths, through datastores that hold
        fresh SAS tokens (re-issued on each submission)."""
        from . import sas

        locations = {"segments": (self.segments, "in"), "styled": (self.styled, "out"),
                     "model": (self.model, "in") if self.model else None,
                     "style_image": (self.style_image, "in") if self.style_image else None}
        if all(loc is None or loc[0].startswith("azureml://") for loc in locations.values()):
            return self.segments, self.styled, self.model, self.style_image
        from airflow.providers.microsoft.azure.hooks.wasb import WasbHook

        expiry = sas.expiry_for(self.expected_duration)
        service = WasbHook(wasb_conn_id=self.storage_conn_id).get_conn()
        signer = sas.Signer.from_service_client(service, expiry)
        endpoint = _endpoint_suffix(service.url, signer.account_name)
        permission = {"in": sas.INPUT,
                      "out": sas.OUTPUT_WRITE_ONLY if self.output_mode == "upload" else sas.OUTPUT_RESUMABLE}
        tag, stores, paths = hashlib.sha256(_run_tag(context).encode()).hexdigest()[:12], {}, {}
        for key, loc in locations.items():
            if loc is None or loc[0].startswith("azureml://"):
                paths[key] = loc and loc[0]
                continue
            container, _, prefix = loc[0].strip("/").partition("/")
            store = f"vst_{tag}_{re.sub(r'[^a-z0-9]', '_', container.lower())}_{loc[1]}"
            if store not in stores:
                token = sas.container_sas(signer, container, permission[loc[1]], expiry, prefix,
                                          protocol=sas.protocol_for(service.url))
                stores[store] = self.hook.register_sas_datastore(store, signer.account_name, container, token, endpoint)
            paths[key] = f"azureml://datastores/{store}/paths/{prefix}"
        return paths["segments"], paths["styled"], paths["model"], paths["style_image"]

    def _copy_logs(self, context, job_name: str | None) -> None:
        if not job_name or not self.logs_container:
            return
        from .logs import copy_job_logs

        copy_job_logs(self.hook, job_name, self.storage_conn_id, _run_tag(context), self.logs_container)


def _run_tag(context) -> str:
    ti = context["ti"]
    return f"{ti.dag_id}/{ti.run_id}/{ti.task_id}"


def _endpoint_suffix(url: str, account: str) -> str:
    """``core.windows.net`` from ``https://acct.blob.core.windows.net/``; sovereign clouds too."""
    host = re.sub(r"^\w+://", "", url).split("/")[0]
    prefix = f"{account}.blob."
    return host[len(prefix):] if host.startswith(prefix) else "core.windows.net"
