"""AzureMLScoreOperator: the score step of ``video_style_transfer`` as an Azure ML job.

Written like the provider's Data Factory operator: submit, defer to a trigger that polls the
job; ``execute_complete`` decides. What it adds:

* **one job per run, never two**: job names derive from the task instance (``vst-<hash>-<n>``,
  ``n`` counting resubmissions), so a retried task finds the run's job and re-attaches to it
  while it is queued or running (or finished), and submits ``n + 1`` only after it ended; the
  run's deadline and resubmission count travel in the job's tags, so a re-attach keeps both;
* **preemption**: a job the service restarts in place is simply waited for; one that ended
  Failed with the service's ``PreemptionError``, or Failed/Canceled while the cluster lists
  the job's own nodes as preempted, is submitted again (up to ``max_resubmits``), with fresh
  tokens; finished segments sit in storage with their done markers, so each new job styles
  only what is missing;
* **cancel**: killing the deferred task cancels the job (the trigger's ``on_kill``); so does
  the task's time limit, and a wait for nodes longer than ``max_queued``; a job a person
  cancelled in the studio fails the task without retry;
* **the cluster is configuration** (``cluster.py``): a run asks only for nodes, up to its max;
* **cost**: the node-seconds of every job of the run, per tier and VM size, in the result
  (the manifest's ``cost``).

The Azure ML SDK is imported when the task runs, never when the DAG is parsed.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
import time
from collections.abc import Sequence
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import AirflowException, AirflowFailException, BaseOperator

from observability import metrics
from observability.progress import job_where
from scoring.media.delivery import DEFAULT_DELIVERY

from .links import JOB_NAME_KEY, STUDIO_URL_KEY, AzureMLJobLink, studio_url
from .orphans import RUN_TAG, datastore_prefix
from .trigger import AzureMLJobTrigger

if TYPE_CHECKING:
    from .hook import AzureMLHook

TERMINAL = ("Completed", "Failed", "Canceled")
PREEMPTION_CODE = "PreemptionError"  # in the service's error for a job whose low-priority nodes were taken
MOUNT_AUTH_FAILURE = "StreamAccess.Authentication"  # a mount's token refused: fresh tokens fix it
DEFAULT_TIME_LIMIT = timedelta(hours=12)
DEADLINE_TAG, RESUBMISSION_TAG = "vst_deadline", "resubmission"  # the run's clock, kept by its jobs
BACKSTOP = timedelta(minutes=10)  # the deferral's own timeout, after the trigger's (which cancels)


def job_name(context, n: int) -> str:
    """The ``n``-th job of this task instance: the same on every try, unique in the workspace."""
    ti = context["ti"]
    run = f"{ti.dag_id}/{ti.run_id}/{ti.task_id}/{getattr(ti, 'map_index', -1)}"
    return f"vst-{hashlib.sha256(run.encode()).hexdigest()[:20]}-{n}"


def node_seconds(usage: list[dict]) -> dict:
    """Node-seconds per ``tier/vm_size`` over every job of the run (resubmissions included)."""
    totals: dict[str, float] = {}
    for job in usage:
        key = f"{job['tier']}/{job['vm_size']}"
        totals[key] = round(totals.get(key, 0.0) + job["node_seconds"], 3)
    return totals


class AzureMLScoreOperator(BaseOperator):
    """Style a run's segments on the configured Azure ML GPU cluster: ``python -m scoring score``
    under MPI, one rank per GPU of each node.

    :param segments: the run's segments folder (``split`` output), ``container/prefix`` in the
        storage account of ``storage_conn_id``, or an ``azureml://datastores/...`` path.
    :param styled: the folder for styled segments and their done markers, same forms.
    :param style: a built-in style or blend (``"7"``, ``"3:0.5,12:0.5"``); ignored with ``model``.
    :param model: a TransformerNet ``.pth`` blob (``container/path`` or ``azureml://``) instead.
    :param style_image: a picture blob (same forms) to use as the style instead.
    :param style_strength: 0..1, blend the styled frames toward the originals (default 1: fully styled).
    :param precision: ``fp16`` (default, GPUs), ``bf16`` or ``fp32``.
    :param batch: frames per pass (``auto``, the default: what ``python -m scoring`` picks for the node).
    :param temporal: steadier video, ``--temporal STRENGTH`` (0, the default, is off; see scoring/networks/temporal.py).
    :param delivery: the published video's encode (``--delivery``, scoring/media/delivery.py): the
        nodes encode the segments for it as they style them.
    :param extra_score_args: more ``python -m scoring score`` options (``--crf``, ``--preset``).
    :param nodes: nodes of the configured cluster for this run (at most its ``max_nodes``).
    :param output_mode: ``rw_mount`` (resumable) or ``upload`` (write-only token; see ``sas``).
    :param max_queued: how long a job may wait in the queue for nodes (a cluster without quota
        waits for ever) before it is cancelled and the task fails.
    :param max_resubmits: new jobs after preemption before the task fails.
    :param estimate_seconds: probe's estimate of the score step, the live progress's ETA until
        the job's first segment is done (None: "time left not known yet" until then).
    """

    template_fields: Sequence[str] = ("segments", "styled", "style", "model", "style_image", "style_strength",
                                      "precision", "batch", "temporal", "delivery", "nodes", "max_resubmits",
                                      "estimate_seconds")
    ui_color = "#0078d4"
    operator_extra_links = (AzureMLJobLink(),)

    def __init__(self, *, segments: str, styled: str, style: str | None = "0", model: str | None = None,
                 style_image: str | None = None, style_strength: float | str = 1.0, precision: str = "fp16",
                 batch: int | str = "auto", temporal: float | str = 0, delivery: str = DEFAULT_DELIVERY,
                 extra_score_args: Sequence[str] = (),
                 nodes: int | str = 1, output_mode: str = "rw_mount",
                 azureml_conn_id: str = "azureml_default", storage_conn_id: str = "wasb_system",
                 logs_container: str = "logs", max_queued: timedelta = timedelta(hours=6),
                 max_resubmits: int | str = 3, poll_interval: float = 30.0,
                 experiment_name: str = "video-style-transfer", estimate_seconds: float | str | None = None,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.segments, self.styled, self.style, self.model = segments, styled, style, model
        self.style_image, self.style_strength = style_image, style_strength
        self.precision, self.batch, self.temporal, self.delivery = precision, batch, temporal, delivery
        self.extra_score_args = list(extra_score_args)
        self.nodes, self.output_mode = nodes, output_mode
        self.azureml_conn_id, self.storage_conn_id = azureml_conn_id, storage_conn_id
        self.logs_container = logs_container
        self.max_queued = max_queued
        self.max_resubmits, self.poll_interval, self.experiment_name = max_resubmits, poll_interval, experiment_name
        self.estimate_seconds = estimate_seconds
        self.job_name: str | None = None

    @cached_property
    def hook(self) -> AzureMLHook:
        from .hook import AzureMLHook

        return AzureMLHook(self.azureml_conn_id)

    @property
    def time_limit(self) -> timedelta:
        return self.execution_timeout or DEFAULT_TIME_LIMIT

    # ------------------------------------------------------------------ the task

    def execute(self, context) -> None:
        """Re-attach to the run's job if one is queued, running or completed; else submit the next."""
        cluster = self._cluster()
        carry = {"cluster": cluster, "resubmits": 0, "job_names": [], "usage": [],
                 "datastores": self._store_names(context), "deadline": time.time() + self.time_limit.total_seconds(),
                 "progress": job_where(self.segments, self.styled, self.storage_conn_id,  # issue 26
                                       self.estimate_seconds),
                 "started_at": time.time()}  # issue 26: the score step's time, for the manifest
        n, found = 0, None
        while (job := self.hook.find_job(job_name(context, n))) is not None:
            n, found = n + 1, job
        if found is not None and (found.status not in TERMINAL or found.status == "Completed"):
            self.log.info("re-attaching to job %s (%s) of this run instead of submitting another", found.name,
                          found.status)
            tags = found.tags or {}  # the try that submitted it set the run's clock and count: kept
            self._defer(context, found, {**carry, "next": n, "job_names": [found.name],
                                         "deadline": float(tags.get(DEADLINE_TAG, carry["deadline"])),
                                         "resubmits": int(tags.get(RESUBMISSION_TAG, 0))})
        self._submit_and_defer(context, {**carry, "next": n})

    def execute_complete(self, context, event: dict[str, Any]) -> dict:
        carry = dict(event.get("carry") or {})
        cluster, name = carry["cluster"], event.get("job_name")
        self.job_name = name
        carry["usage"] = [*carry.get("usage", []),
                          {"job": name, "vm_size": cluster["vm_size"], "tier": cluster["tier"],
                           "nodes": int(self.nodes), "running_seconds": event.get("running_seconds", 0),
                           "node_seconds": round(int(self.nodes) * float(event.get("running_seconds") or 0), 3),
                           "restarts": event.get("restarts", 0)}]
        status, job_status = event.get("status"), event.get("job_status")
        if status == "error" and job_status not in TERMINAL:  # status unreadable: the job may run on
            raise AirflowException(f"{event.get('message')}; a retry re-attaches to the job")
        job = carry["usage"][-1]  # issue 26: its metrics; the wait for nodes is the job's time not running
        queued = time.time() - carry["submitted_at"] - job["running_seconds"] if carry.get("submitted_at") else None
        metrics.azureml_job(job["vm_size"], job["tier"], queued, job["node_seconds"], job["restarts"])
        self._copy_logs(context, name)
        if status == "success":
            self._remove_datastores(carry)
            self.log.info("%s after %d resubmission(s)", event.get("message"), carry["resubmits"])
            return {"job_name": name, "job_names": carry["job_names"], "resubmits": carry["resubmits"],
                    "cost": {"node_seconds": node_seconds(carry["usage"]), "jobs": carry["usage"]},
                    "seconds": round(time.time() - carry["started_at"], 3) if carry.get("started_at") else None}
        if status == "timeout":
            self._remove_datastores(carry)
            raise AirflowException(f"Azure ML job {name} {event.get('message')}")
        if status == "queued":
            self._remove_datastores(carry)
            raise AirflowFailException(f"Azure ML job {name} got no nodes of cluster {cluster['name']} "
                                       f"({cluster['tier']} {cluster['vm_size']}): {event.get('message')}. Check the "
                                       "subscription's quota for that VM family, or raise max_queued")
        error = self.hook.job_error(name)
        preempted = PREEMPTION_CODE in error or int(event.get("preempted_nodes") or 0) > 0
        if preempted or MOUNT_AUTH_FAILURE in error:
            if carry["resubmits"] < int(self.max_resubmits):
                self.log.warning("job %s ended %s (%s); resubmitting (%d of %d) with fresh tokens: finished segments "
                                 "are kept", name, job_status, error or "the cluster's nodes were preempted",
                                 carry["resubmits"] + 1, int(self.max_resubmits))
                metrics.azureml_resubmitted(preempted)  # issue 26
                self._submit_and_defer(context, {**carry, "resubmits": carry["resubmits"] + 1})
            self._remove_datastores(carry)
            raise AirflowException(f"Azure ML job {name} was preempted again after {carry['resubmits']} "
                                   f"resubmission(s) (max_resubmits={self.max_resubmits}): {error or job_status}. "
                                   "Finished segments are kept; clear the task to resume, or use tier 'dedicated'")
        self._remove_datastores(carry)
        if job_status == "Canceled":
            raise AirflowFailException(f"Azure ML job {name} was cancelled (not by preemption), so the task is not "
                                       "retried; clear it to run the score step again")
        raise AirflowException(f"Azure ML job {name} ended {job_status}: {error or 'no error from the service'}")

    def on_kill(self) -> None:
        """Killed while running on the worker (submitting): ask for the cancel of the job it
        submitted. While the task is deferred, Airflow calls the trigger's ``on_kill`` instead."""
        if self.job_name:
            self.log.info("cancelling Azure ML job %s", self.job_name)
            self.hook.cancel(self.job_name)

    # ------------------------------------------------------------------ parts

    def score_args(self) -> list[str]:
        args = [] if self.model or self.style_image else ["--style", str(self.style)]
        if float(self.style_strength) != 1:
            args += ["--style-strength", str(float(self.style_strength))]
        args += ["--precision", str(self.precision), "--batch", str(self.batch), "--delivery",
                 str(self.delivery or DEFAULT_DELIVERY)]
        if float(self.temporal or 0):
            args += ["--temporal", str(self.temporal)]
        return [*args, *self.extra_score_args]

    def _cluster(self) -> dict:
        """The configured cluster, created if absent (never changed); a node count above its max
        fails the task at once, in one line."""
        from scoring.gpus import canonical_vm_size, gpus_per_node

        try:
            config = self.hook.cluster_config()
            cluster = self.hook.ensure_cluster(config)
            nodes, most = int(self.nodes), int(cluster.max_instances)
            if not 1 <= nodes <= most:
                raise ValueError(f"this run asks for {nodes} nodes but cluster {cluster.name} has at most {most}: "
                                 f"ask for 1 to {most}, or raise the cluster's max_nodes")
            size = canonical_vm_size(cluster.size)  # the service reports it upper-cased
            return {"name": cluster.name, "vm_size": size, "tier": cluster.tier, "gpus": gpus_per_node(size)}
        except ValueError as exc:
            raise AirflowFailException(str(exc)) from None

    def _submit_and_defer(self, context, carry: dict) -> None:
        from . import entities

        name, cluster = job_name(context, carry["next"]), carry["cluster"]
        segments, styled, model, style_image = self._data_paths(context, carry["deadline"])  # fresh tokens
        environment = self.hook.ensure_environment(entities.build_environment())
        run_tag = _run_tag(context)
        with tempfile.TemporaryDirectory(prefix="azureml-code-") as code:
            job = entities.build_score_job(
                segments_uri=segments, styled_uri=styled, model_uri=model, style_image_uri=style_image,
                score_args=self.score_args(), code=entities.stage_code(code), environment=environment,
                compute=cluster["name"], nodes=int(self.nodes), gpus_per_node=cluster["gpus"],
                vm_size=cluster["vm_size"], output_mode=self.output_mode, name=name,
                experiment_name=self.experiment_name, display_name=f"{self.task_id} {run_tag}",
                tags={RUN_TAG: run_tag, RESUBMISSION_TAG: str(carry["resubmits"]),
                      DEADLINE_TAG: str(carry["deadline"])})
            submitted = self.hook.submit(job)  # uploads the code snapshot
        self.job_name = submitted.name
        self.log.info("submitted Azure ML job %s (%s x %s GPUs, %s %s)", submitted.name, self.nodes, cluster["gpus"],
                      cluster["tier"], cluster["vm_size"])
        self._defer(context, submitted, {**carry, "next": carry["next"] + 1, "submitted_at": time.time(),  # issue 26
                                         "job_names": [*carry["job_names"], submitted.name]})

    def _defer(self, context, job, carry: dict) -> None:
        self.job_name = job.name
        url = getattr(job, "studio_url", None) or studio_url(job.name, **self.hook.workspace())
        context["ti"].xcom_push(key=JOB_NAME_KEY, value=job.name)
        context["ti"].xcom_push(key=STUDIO_URL_KEY, value=url)
        self.log.info("waiting for Azure ML job %s: %s", job.name, url)
        backstop = max(carry["deadline"] - time.time(), 0) + BACKSTOP.total_seconds()
        created = getattr(getattr(job, "creation_context", None), "created_at", None)
        self.defer(trigger=AzureMLJobTrigger(job.name, self.azureml_conn_id, self.poll_interval,
                                             end_time=carry["deadline"], carry=carry,
                                             max_queued=self.max_queued.total_seconds(),
                                             queued_since=created.timestamp() if created else time.time()),
                   method_name="execute_complete", timeout=timedelta(seconds=backstop))

    def _store_names(self, context) -> list[str]:
        """The datastores this run registers (derived from the run, so any try can remove them)."""
        return sorted({name for name, _ in self._stores(context).values() if name})

    def _stores(self, context) -> dict[str, tuple[str | None, tuple | None]]:
        """For each of the job's data locations: its datastore name (None for an ``azureml://``
        path given as is) and ``(container, prefix, direction)``."""
        locations = {"segments": (self.segments, "in"), "styled": (self.styled, "out"),
                     "model": (self.model, "in") if self.model else None,
                     "style_image": (self.style_image, "in") if self.style_image else None}
        run_stores, stores = datastore_prefix(_run_tag(context)), {}
        for key, loc in locations.items():
            if loc is None or loc[0].startswith("azureml://"):
                stores[key] = (None, loc and (loc[0], None, None))
                continue
            container, _, prefix = loc[0].strip("/").partition("/")
            stores[key] = (f"{run_stores}{re.sub(r'[^a-z0-9]', '_', container.lower())}_{loc[1]}",
                           (container, prefix, loc[1]))
        return stores

    def _data_paths(self, context, deadline: float) -> tuple[str, str, str | None, str | None]:
        """The job's inputs and output as ``azureml://`` paths, through the run's datastores,
        registered again with fresh SAS tokens on each submission. A token lives until the run's
        deadline (when the trigger cancels the job), plus a margin."""
        from . import sas

        stores = self._stores(context)
        if all(store is None for store, _ in stores.values()):
            return tuple(loc and loc[0] for _, loc in stores.values())
        from airflow.providers.microsoft.azure.hooks.wasb import WasbHook

        expiry = sas.expiry_at(deadline)
        service = WasbHook(wasb_conn_id=self.storage_conn_id).get_conn()
        signer = sas.Signer.from_service_client(service, expiry)
        endpoint = _endpoint_suffix(service.url, signer.account_name)
        permission = {"in": sas.INPUT,
                      "out": sas.OUTPUT_WRITE_ONLY if self.output_mode == "upload" else sas.OUTPUT_RESUMABLE}
        registered, paths = set(), {}
        for key, (store, loc) in stores.items():
            if store is None:
                paths[key] = loc and loc[0]
                continue
            container, prefix, direction = loc
            if store not in registered:
                token = sas.container_sas(signer, container, permission[direction], expiry, prefix,
                                          protocol=sas.protocol_for(service.url))
                registered.add(self.hook.register_sas_datastore(store, signer.account_name, container, token, endpoint))
            paths[key] = f"azureml://datastores/{store}/paths/{prefix}"
        return paths["segments"], paths["styled"], paths["model"], paths["style_image"]

    def _remove_datastores(self, carry: dict) -> None:
        for store in carry.get("datastores", []):
            self.hook.delete_datastore(store)

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
