"""The Azure ML backend against an emulated workspace at the HTTP boundary (tests/aml_emulator):
the real MLClient, its credentials, models, pollers and retries; a service that really runs the
job's command under mpiexec, against the run's data in Azurite."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest

from .helpers import REPO, run_scoring
from .helpers import azurite as azurite_alone

os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="airflow-home-"))
sys.path.insert(0, str(REPO / "plugins"))

from aml_backend import entities, sas
from aml_backend.cluster import ClusterConfig
from aml_backend.hook import AzureMLHook
from azure.ai.ml import load_compute, load_environment

from .aml_emulator import WORKSPACE, AzureMLEmulator

for _noisy in ("azure.core.pipeline.policies.http_logging_policy", "azure.identity"):  # a line per request
    logging.getLogger(_noisy).setLevel(logging.WARNING)

DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
ACCOUNT = "sysaccount1"
CLUSTER = {"name": "vst-gpu", "vm_size": "Standard_NC48ads_A100_v4", "max_nodes": 2}  # 2 GPUs a node: 2 ranks
# the workspace as the Azure provider's hooks name its fields
EXTRA = {"subscriptionId": WORKSPACE["subscription_id"], "resource_group_name": WORKSPACE["resource_group"],
         "workspace_name": WORKSPACE["workspace_name"]}
PRINCIPAL = {"login": "app-id", "password": "app-secret", "extra": {**EXTRA, "tenantId": "tenant-vst"}}
TERMINAL = ("Completed", "Failed", "Canceled")


# ---------------------------------------------------------------------- entities, offline


def test_the_cluster_is_configuration_from_the_connection(tmp_path, monkeypatch):
    subnet = ("/subscriptions/s/resourceGroups/rg-net/providers/Microsoft.Network/virtualNetworks/vnet-vst/"
              "subnets/gpu")
    identity = "/subscriptions/s/resourceGroups/rg-id/providers/Microsoft.ManagedIdentity/userAssignedIdentities/vst"
    _conn(monkeypatch, "aml_cluster", extra={**EXTRA, "cluster": {
        "name": "shared-gpu", "vm_size": "standard_nc24ads_a100_v4", "tier": "dedicated", "max_nodes": "6",
        "idle_seconds": 300, "keep_warm": "true", "subnet": subnet, "node_public_ip": "false", "identity": identity}})
    config = AzureMLHook("aml_cluster").cluster_config()
    assert (config.name, config.vm_size, config.tier, config.min_nodes, config.max_nodes) == \
        ("shared-gpu", "Standard_NC24ads_A100_v4", "dedicated", 0, 6)  # the size in the form Azure documents
    assert config.gpus_per_node == 1 and config.scale_idle_seconds == 1800  # keep-warm: a longer idle time
    cluster = entities.build_compute(config)
    cluster.dump(tmp_path / "compute.yml")
    dumped = (tmp_path / "compute.yml").read_text()
    assert f"subnet: {subnet}" in dumped and "enable_node_public_ip: false" in dumped
    assert "ssh_public_access_enabled: false" in dumped and identity in dumped
    loaded = load_compute(tmp_path / "compute.yml")  # azure-ai-ml's own schema accepts it
    assert (loaded.name, loaded.size, loaded.min_instances, loaded.max_instances, loaded.tier,
            loaded.idle_time_before_scale_down) == ("shared-gpu", "Standard_NC24ads_A100_v4", 0, 6, "dedicated", 1800)
    assert loaded.network_settings.subnet == subnet and loaded.enable_node_public_ip is False
    assert loaded.ssh_public_access_enabled is False and loaded.identity.type == "user_assigned"
    assert loaded.identity.user_assigned_identities[0].resource_id == identity

    _conn(monkeypatch, "aml_plain", extra=EXTRA)  # nothing configured: a T4 low-priority cluster, 0..4, SSH off
    default = AzureMLHook("aml_plain").cluster_config()
    assert (default.vm_size, default.tier, default.min_nodes, default.max_nodes, default.ssh, default.identity) == \
        ("Standard_NC4as_T4_v3", "low_priority", 0, 4, False, "")
    assert entities.build_compute(ClusterConfig(identity="system")).identity.type == "system_assigned"
    monkeypatch.setenv("AIRFLOW_VAR_VST_AZUREML_CLUSTER", json.dumps({"name": "from-variable", "max_nodes": 2}))
    assert AzureMLHook("aml_plain").cluster_config().name == "from-variable"  # a Variable wins when set
    for bad, message in (({"tier": "spot"}, "tier"), ({"max_nodes": 0}, "max_nodes"),
                         ({"vm_size": "Standard_D4s_v5"}, "unknown GPU VM size"), ({"size": "x"}, "unknown cluster"),
                         ({"subnet": "gpu"}, "subnet's ARM id"), ({"identity": "mine"}, "cluster identity")):
        with pytest.raises(ValueError, match=message):
            ClusterConfig.from_settings(bad)


def test_environment_is_built_from_the_dockerfile(tmp_path):
    env = entities.build_environment()
    assert Path(env.build.path) == REPO / "docker" / "scoring"
    assert env.version == entities.build_environment().version  # same context, same version: no rebuild
    env.dump(tmp_path / "env.yml")
    assert load_environment(tmp_path / "env.yml").build.path.endswith("docker/scoring")

    context = tmp_path / "ctx"
    context.mkdir()
    (context / "Dockerfile").write_text("FROM scratch\n")
    before = entities.build_environment(context).version
    (context / "requirements.txt").write_text("numpy==2.4.6\n")
    assert entities.build_environment(context).version != before  # any change builds a new image


def test_job_runs_the_local_score_command_under_mpi(tmp_path):
    code = entities.stage_code(tmp_path / "code")
    assert (code / "scoring" / "networks" / "score.py").is_file() and not list(code.rglob("__pycache__"))
    job = entities.build_score_job(
        segments_uri="azureml://datastores/vst_in/paths/run1/segments",
        styled_uri="azureml://datastores/vst_out/paths/run1/styled",
        score_args=["--style", "7", "--precision", "fp16", "--batch", "8"], code=code,
        environment="video-style-transfer-scoring:1", compute="vst-gpu", nodes=3, gpus_per_node=4,
        vm_size="Standard_NC64as_T4_v3", name="vst-0123-0")
    assert job.command == ("python -m scoring score --segments ${{inputs.segments}} --out ${{outputs.styled}} "
                           "--style 7 --precision fp16 --batch 8")
    assert job.distribution.process_count_per_instance == 4 and job.resources.instance_count == 3
    assert job.inputs["segments"].mode == "ro_mount" and job.outputs["styled"].mode == "rw_mount"
    assert job.inputs["segments"].path == "azureml://datastores/vst_in/paths/run1/segments"
    assert job.environment_variables == {"VST_VM_SIZE": "Standard_NC64as_T4_v3"} and job.name == "vst-0123-0"

    # the command parses the way the local CLI does
    from scoring.cli import build_parser

    args = build_parser().parse_args(job.command.split()[3:])
    assert (args.style, args.precision, args.batch) == ("7", "fp16", 8)

    with_model = entities.build_score_job(segments_uri="azureml://datastores/a/paths/s",
                                          styled_uri="azureml://datastores/b/paths/o", score_args=["--batch", "2"],
                                          code=code, environment="e:1", compute="c",
                                          model_uri="azureml://datastores/m/paths/my.pth")
    assert "--model ${{inputs.model}}" in with_model.command and with_model.inputs["model"].type == "uri_file"


def test_a_style_picture_goes_to_the_job_like_the_model(tmp_path):
    from aml_backend.operators import AzureMLScoreOperator

    from scoring.cli import build_parser

    operator = AzureMLScoreOperator(task_id="score", segments="azureml://datastores/a/paths/s",
                                    styled="azureml://datastores/b/paths/o", style="19",
                                    style_image="azureml://datastores/a/paths/style-image", style_strength="0.6")
    segments, styled, model, picture = operator._data_paths({"ti": TaskInstance()}, time.time() + 3600)
    job = entities.build_score_job(segments_uri=segments, styled_uri=styled, model_uri=model, style_image_uri=picture,
                                   score_args=operator.score_args(), code=entities.stage_code(tmp_path / "code"),
                                   environment="e:1", compute="c")
    assert job.inputs["style_image"].type == "uri_file" and job.inputs["style_image"].mode == "download"
    args = build_parser().parse_args(job.command.split()[3:])
    assert str(args.style_image) == "${{inputs.style_image}}" and args.style_strength == 0.6
    assert args.style is None and args.model is None  # the picture replaces the style


def test_sas_tokens_grant_least_privilege_and_expire():
    signer = sas.Signer(ACCOUNT, account_key=DEV_KEY)
    assert DEV_KEY not in repr(signer)
    now = datetime.now(UTC)
    expiry = sas.expiry_for(timedelta(minutes=40), now)
    assert expiry == now + timedelta(minutes=70)
    assert sas.expiry_at(now.timestamp()) == now + sas.MARGIN

    read = sas.describe(sas.container_sas(signer, "work", sas.INPUT, expiry, "run1/segments"))
    assert (read["permission"], read["resource"], read["protocol"]) == ("rl", "c", "https")
    se = datetime.fromisoformat(read["expiry"])
    assert abs(se - expiry) < timedelta(seconds=1)
    assert datetime.fromisoformat(read["start"]) < now  # tolerates clock skew

    write_only = sas.describe(sas.container_sas(signer, "work", sas.OUTPUT_WRITE_ONLY, expiry))
    assert write_only["permission"] == "cw"  # no read, no list, no delete
    resumable = sas.describe(sas.container_sas(signer, "work", sas.OUTPUT_RESUMABLE, expiry))
    assert resumable["permission"] == "rcwdl"  # what a resumable read-write mount needs, no more
    for token in (read, write_only, resumable):
        assert "a" not in token["permission"] and "x" not in token["permission"]


# ---------------------------------------------------------------------- the emulated workspace


def _conn(monkeypatch, conn_id: str, **fields) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({"conn_type": "azureml", **fields}))


@pytest.fixture(scope="module")
def azurite(tmp_path_factory):
    """Azurite with the system account: the run's data, the workspace's storage, the logs."""
    if not (REPO / "node_modules" / ".bin" / "azurite-blob").exists():
        pytest.skip("Azurite is not installed (npm install)")
    with azurite_alone(tmp_path_factory.mktemp("azurite"), {ACCOUNT: DEV_KEY}) as port:
        url = f"http://127.0.0.1:{port}/{ACCOUNT}"
        yield SimpleNamespace(url=url, connection_string=(f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};"
                                                          f"AccountKey={DEV_KEY};BlobEndpoint={url};"))


@pytest.fixture(scope="module")
def split_clip(clip_factory, tmp_path_factory):
    """A 2 s clip split into 4-frame segments: 13 segments, 50 frames."""
    folder = tmp_path_factory.mktemp("split") / "segments"
    source = clip_factory(seconds=2, fps="25", size=(96, 64))
    run_scoring("split", source, "--out", folder, "--segment-frames", "4", check=True)
    return source, folder


@pytest.fixture
def service(tmp_path, monkeypatch, azurite, split_clip):
    """The emulated workspace (this process reaches it through its HTTPS proxy), a container of
    its own holding the run's segments, and the Airflow connections the operator uses."""
    from azure.storage.blob import BlobServiceClient

    emulator = AzureMLEmulator(tmp_path, {ACCOUNT: (azurite.url, DEV_KEY)}, ACCOUNT, step=0.02, preempt_after=3)
    for name, value in emulator.environment().items():
        monkeypatch.setenv(name, value)
    emulator.container = f"work-{uuid.uuid4().hex[:8]}"
    blobs = BlobServiceClient.from_connection_string(azurite.connection_string)
    container = blobs.create_container(emulator.container)
    for path in sorted(split_clip[1].iterdir()):
        container.upload_blob(f"run1/segments/{path.name}", path.read_bytes())
    emulator.workspace.client_secrets["app-id"] = "app-secret"
    _conn(monkeypatch, "azureml_default", **PRINCIPAL | {"extra": {**PRINCIPAL["extra"], "cluster": CLUSTER}})
    monkeypatch.setenv("AIRFLOW_CONN_WASB_SYSTEM",
                       json.dumps({"conn_type": "wasb", "extra": {"connection_string": azurite.connection_string}}))
    emulator.blobs = blobs
    yield emulator
    emulator.close()


class TaskInstance:
    """What the operator touches of a task instance: its ids and XCom."""

    def __init__(self, run_id: str = "manual__2025-01-01T00:00:00"):
        self.dag_id, self.run_id, self.task_id = "video_style_transfer", run_id, "score_azureml"
        self.map_index = -1
        self.xcom: dict = {}

    def xcom_push(self, key, value):
        self.xcom[key] = value


def _operator(service, **kwargs):
    from aml_backend.operators import AzureMLScoreOperator

    defaults = {"task_id": "score_azureml", "segments": f"{service.container}/run1/segments",
                "styled": f"{service.container}/run1/styled", "style": "7", "precision": "fp32", "batch": 2,
                "nodes": 1, "poll_interval": 0.05, "logs_container": ""}
    return AzureMLScoreOperator(**{**defaults, **kwargs})


async def _events(trigger) -> list:
    return [event async for event in trigger.run()]


def _run_to_the_end(operator, context, events_seen: list | None = None):
    """What the scheduler and triggerer do: execute, run each trigger, resume the task."""
    from airflow.providers.common.compat.sdk import TaskDeferred

    try:
        operator.execute(context)
        return None
    except TaskDeferred as deferred:
        step = deferred
    while True:
        events = asyncio.run(_events(step.trigger))
        assert len(events) == 1  # the trigger yields exactly one event
        if events_seen is not None:
            events_seen.append(events[0].payload)
        try:
            return getattr(operator, step.method_name)(context, events[0].payload, **(step.kwargs or {}))
        except TaskDeferred as deferred:
            step = deferred


def _deferred(operator, context):
    """What the worker does first: execute until the task defers; returns the deferral."""
    from airflow.providers.common.compat.sdk import TaskDeferred

    with pytest.raises(TaskDeferred) as deferred:
        operator.execute(context)
    return deferred.value


def _summaries(service) -> list[dict]:
    return [a.summary() for run in service.runs.values() for a in run.attempts]


def _run_stores(service) -> list[str]:
    return sorted(name for name in service.workspace.datastores if name.startswith("vst_"))


def _check_complete_output(service, tmp_path, source_segments: Path) -> None:
    from scoring.media import ffmpeg

    styled = tmp_path / "styled"
    container = service.blobs.get_container_client(service.container)
    for blob in container.list_blobs(name_starts_with="run1/styled/"):
        target = styled / blob.name.rsplit("/", 1)[1]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(container.download_blob(blob.name).readall())
    assert len(list(styled.glob("*.done"))) == 13 and not list(styled.glob(".*.partial"))
    out = tmp_path / "styled.mp4"
    run_scoring("stitch", "--segments", source_segments, "--styled", styled, out, check=True)
    assert ffmpeg.count_frames(out) == 50


def _requests(service, method: str, pattern: str) -> list[str]:
    return [path for _, _, m, path in service.workspace.requests if m == method and re.search(pattern, path)]


def test_preempted_job_is_resubmitted_and_only_missing_segments_are_scored(service, tmp_path, azurite, split_clip):
    service.runner.script("preempt-fail", "complete")
    ti = TaskInstance()
    events = []
    result = _run_to_the_end(_operator(service, logs_container="logs"), {"ti": ti}, events)

    first, second = service.runs.values()
    assert first.history[-1] == "Failed" and first.attempts[0].signalled == "SIGTERM"
    assert [e["job_status"] for e in events] == ["Failed", "Completed"]
    assert first.name.endswith("-0") and second.name == first.name[:-1] + "1"  # derived from the run
    assert result["job_names"] == [first.name, second.name] and result["resubmits"] == 1
    assert ti.xcom["job_name"] == second.name and second.name in ti.xcom["studio_url"]

    # the rerun styled exactly what the preempted job had not finished
    preempted, rerun = _summaries(service)
    assert preempted is None  # the preempted ranks never got to print a summary
    done_before = 13 - rerun["scored"]
    assert 3 <= done_before < 13
    assert rerun["skipped"] == done_before and rerun["segments"] == 13 and rerun["ranks"] == 2
    _check_complete_output(service, tmp_path, split_clip[1])

    # what the SDK sent: datastore paths whose tokens read the input and write the output, no key;
    # the GPUs of the configured size, and the size itself for the scoring step's GPU check
    job = service.workspace.jobs[first.name]["properties"]
    assert job["inputs"]["segments"]["uri"].startswith("azureml://datastores/vst_")
    assert job["inputs"]["segments"]["mode"] == "ReadOnlyMount" and job["outputs"]["styled"]["mode"] == "ReadWriteMount"
    assert job["distribution"] == {"distributionType": "Mpi", "processCountPerInstance": 2}
    assert job["resources"]["instanceCount"] == 1
    assert job["environmentVariables"]["VST_VM_SIZE"] == "Standard_NC48ads_A100_v4"
    assert job["tags"]["airflow_run"] == f"{ti.dag_id}/{ti.run_id}/{ti.task_id}"
    assert DEV_KEY not in json.dumps(ti.xcom) and DEV_KEY not in json.dumps(job)
    compute = service.workspace.computes["vst-gpu"]["properties"]["properties"]
    assert compute["vmPriority"] == "LowPriority" and compute["scaleSettings"]["minNodeCount"] == 0
    assert compute["remoteLoginPortPublicAccess"] == "Disabled"  # SSH off
    # the run's datastores are gone once it ended
    assert _run_stores(service) == [] and len(service.workspace.deleted_datastores) == 2

    # cost: both jobs' node-seconds, under the tier and VM size they ran on
    cost = result["cost"]
    assert [j["job"] for j in cost["jobs"]] == [first.name, second.name]
    assert all(j["node_seconds"] > 0 and j["nodes"] == 1 for j in cost["jobs"])
    assert list(cost["node_seconds"]) == ["low_priority/Standard_NC48ads_A100_v4"]
    assert cost["node_seconds"]["low_priority/Standard_NC48ads_A100_v4"] == \
        pytest.approx(sum(j["node_seconds"] for j in cost["jobs"]), abs=0.01)

    # both jobs' logs are in the system account's logs container
    logs = service.blobs.get_container_client("logs")
    names = [b.name for b in logs.list_blobs()]
    assert any(first.name in n for n in names) and any(second.name in n for n in names)


def test_the_jobs_log_reaches_the_task_log_while_it_runs(service, capfd):
    """The trigger's log is the task's log in the triggerer; each poll adds what the job printed."""
    operator, context = _operator(service), {"ti": TaskInstance()}
    trigger = _deferred(operator, context).trigger
    capfd.readouterr()
    (event,) = asyncio.run(_events(trigger))
    assert event.payload["status"] == "success"
    logged = capfd.readouterr().out
    job_log = "".join(service.runs[operator.job_name].log).splitlines()
    summary = next(line for line in reversed(job_log) if line.startswith("{"))
    assert json.loads(summary)["segments"] == 13  # the score step's own summary line, as the job printed it
    assert all(f"std_log.txt: {line.rstrip()}" in logged for line in job_log)
    assert logged.index("std_log.txt: [rank") < logged.index(f"job {operator.job_name} is Completed")


def test_progress_moves_while_the_job_runs_from_the_done_markers_in_storage(service, monkeypatch):
    """The trigger lists the run's output folder at each poll while the job runs (never its log)
    and publishes frames done of the total as the task's XCom ``progress``: recorded here where
    the triggerer would send it on (tests/test_azureml_airflow.py reads the real XCom), with
    whether the job's ranks were still running then."""
    from observability import progress

    operator, context, published = _operator(service), {"ti": TaskInstance()}, []

    def record(job_progress, value):
        attempts = service.runs[operator.job_name].attempts
        published.append((value, bool(attempts) and attempts[-1].returncode is None))

    monkeypatch.setattr(progress.JobProgress, "publish", record)
    trigger = _deferred(operator, context).trigger
    (event,) = asyncio.run(_events(trigger))
    assert event.payload["status"] == "success"
    done = [value["frames_done"] for value, _ in published]
    while_scoring = {value["frames_done"] for value, ranks_ran in published if ranks_ran}
    assert done == sorted(done) and len(while_scoring) >= 4, published  # it moved 3 times while the ranks ran
    assert all(value["frames_total"] == 50 and value["backend"] == "azureml" for value, _ in published)
    assert any(0 < value["frames_done"] < 50 and value["eta_seconds"] is not None for value, _ in published)
    assert published[-1][0]["text"] == "50 of 50 frames (100%), done" and published[-1][0]["eta_seconds"] == 0


def test_cluster_taken_away_cancels_the_job_and_its_nodes_confirm_preemption(service):
    service.runner.script("preempt-cancel", "complete")
    service.runner.preempt_after = 0  # taken as soon as its ranks start
    result = _run_to_the_end(_operator(service), {"ti": TaskInstance()})
    first, second = service.runs.values()
    assert first.status == "Canceled" and first.error is None  # no error code: only the nodes say why
    assert second.status == "Completed" and result["resubmits"] == 1
    listed = _requests(service, "POST", r"/computes/vst-gpu/listNodes")
    assert listed  # read from the cluster's node list, by the job's own run id


def test_a_cancel_is_not_taken_for_preemption_because_another_runs_node_was_preempted(service):
    """On a shared cluster another job's lost node says nothing about this job."""
    from airflow.providers.common.compat.sdk import AirflowFailException

    service.runner.quota_nodes = 0
    operator, context = _operator(service), {"ti": TaskInstance()}
    trigger = _deferred(operator, context).trigger
    service.workspace.nodes["vst-gpu"] = [{"nodeId": "tvm-other_0", "nodeState": "preempted",
                                           "runId": "another-runs-job", "port": 50000}]
    service.runner.studio_cancel(operator.job_name)
    (event,) = asyncio.run(_events(trigger))
    assert event.payload["job_status"] == "Canceled" and event.payload["preempted_nodes"] == 0
    with pytest.raises(AirflowFailException, match="was cancelled .not by preemption"):
        operator.execute_complete(context, event.payload)
    assert len(service.runs) == 1


def test_service_restart_of_the_same_job_resumes_without_a_resubmission(service, tmp_path, split_clip):
    service.runner.script("preempt-requeue")
    service.runner.queue_seconds = 0.2
    # a trigger polling every 2 s sees both stretches: the job is preempted only once read Running (its
    # ranks stopped meanwhile) and requeued until read Queued, as real stretches outlast a poll
    service.runner.hold_until_read = True
    result = _run_to_the_end(_operator(service, poll_interval=2), {"ti": TaskInstance()})
    (run,) = service.runs.values()
    assert result["resubmits"] == 0 and result["cost"]["jobs"][0]["restarts"] == 1
    assert run.history.count("Queued") == 2 and run.history[-1] == "Completed"  # back to Queued, then on
    restarted = run.attempts[1].summary()
    assert 3 <= restarted["skipped"] < 13 and restarted["scored"] == 13 - restarted["skipped"]
    _check_complete_output(service, tmp_path, split_clip[1])


def test_retry_budget_exhausted_fails_clearly(service):
    from airflow.providers.common.compat.sdk import AirflowException

    service.runner.script("preempt-kill", "preempt-fail")
    with pytest.raises(AirflowException) as failure:
        _run_to_the_end(_operator(service, max_resubmits=1), {"ti": TaskInstance()})
    assert len(service.runs) == 2
    message = str(failure.value)
    assert "preempted again after 1 resubmission(s)" in message and "max_resubmits=1" in message
    assert "PreemptionError" in message
    assert _run_stores(service) == []


def test_non_retriable_failure_is_not_resubmitted(service):
    from airflow.providers.common.compat.sdk import AirflowException, AirflowFailException

    with pytest.raises(AirflowException) as failure:  # a style that does not exist: the command exits 2
        _run_to_the_end(_operator(service, style="99"), {"ti": TaskInstance()})
    assert not isinstance(failure.value, AirflowFailException)  # Airflow may retry it
    assert len(service.runs) == 1
    assert "ended Failed" in str(failure.value) and "exited with status code 2" in str(failure.value)
    assert "style" in str(failure.value)

    service.runner.script("fail")  # a service-side failure before the command runs (another run)
    with pytest.raises(AirflowException, match="JobConfigurationError"):
        _run_to_the_end(_operator(service), {"ti": TaskInstance("manual__2025-01-02T00:00:00")})
    assert len(service.runs) == 2


def test_a_job_cancelled_in_the_studio_fails_the_task_without_retry(service):
    from airflow.providers.common.compat.sdk import AirflowFailException

    service.runner.quota_nodes = 0
    operator, context = _operator(service), {"ti": TaskInstance()}
    trigger = _deferred(operator, context).trigger
    service.runner.studio_cancel(operator.job_name)
    (event,) = asyncio.run(_events(trigger))
    with pytest.raises(AirflowFailException, match="was cancelled .not by preemption.*not retried"):
        operator.execute_complete(context, event.payload)
    assert len(service.runs) == 1 and _run_stores(service) == []


def test_killing_the_deferred_task_cancels_the_job_within_airflows_budget(service):
    """Airflow calls the trigger's on_kill (not the operator's) when a deferred task is killed,
    and gives it 30 s; the service's cancel is a long-running operation the SDK polls every 30 s."""
    service.runner.quota_nodes = 0  # queued for want of quota
    operator = _operator(service)
    trigger = _deferred(operator, {"ti": TaskInstance()}).trigger
    assert service.runner.status(operator.job_name) in ("NotStarted", "Queued")
    assert len(_run_stores(service)) == 2
    asyncio.run(asyncio.wait_for(trigger.on_kill(), timeout=30))
    assert service.workspace.cancel_requests == [operator.job_name] and _run_stores(service) == []
    assert service.runner.status(operator.job_name) in ("CancelRequested", "Canceled")
    assert service.runner.wait(operator.job_name, timeout=30) == "Canceled"


def test_housekeeping_cancels_a_queued_job_whose_task_no_longer_waits(service):
    """The window the triggerer's on_kill leaves (a task marked failed before any triggerer
    picked its trigger up): the job stays queued until housekeeping asks Airflow for its task's
    state and, finding none that leads back to it, cancels the job and removes the run's
    datastores. It asks the service only for jobs tagged airflow_run."""
    from aml_backend.orphans import LIVE_TASK_STATES, cancel_orphaned_jobs

    service.runner.quota_nodes = 0
    operator, ti = _operator(service), TaskInstance()
    _deferred(operator, {"ti": ti})  # submitted and deferred; no trigger ever runs
    job = operator.job_name
    untagged = service.left_queued("someone-elses-job", tags={})
    stores = _run_stores(service)
    assert len(stores) == 2
    asked = []

    def answering(state):
        return lambda *task: asked.append(task) or state

    for state in sorted(LIVE_TASK_STATES):
        assert cancel_orphaned_jobs(operator.hook, answering(state)) == []
    assert service.runner.status(job) in ("NotStarted", "Queued") and _run_stores(service) == stores
    assert set(asked) == {(ti.dag_id, ti.run_id, ti.task_id)}

    cancelled = cancel_orphaned_jobs(operator.hook, answering("failed"))
    assert cancelled == [{"job": job, "task": f"{ti.dag_id}/{ti.run_id}/{ti.task_id}", "task_state": "failed",
                          "datastores": stores}]
    assert service.runner.wait(job) == "Canceled" and _run_stores(service) == []
    assert cancel_orphaned_jobs(operator.hook, answering(None)) == []  # an ended job is not looked at again
    assert cancel_orphaned_jobs(operator.hook, answering(None), experiment="another") == []
    listings = _requests(service, "GET", r"/jobs\?")
    assert listings and all("tag=airflow_run" in path for path in listings)  # the service filters, not we
    assert untagged.status == "Queued" and untagged.name not in service.workspace.cancel_requests


def test_the_time_limit_cancels_the_job(service):
    from airflow.providers.common.compat.sdk import AirflowException

    service.runner.quota_nodes = 0
    operator, context = _operator(service, execution_timeout=timedelta(seconds=1)), {"ti": TaskInstance()}
    deferred = _deferred(operator, context)
    assert deferred.timeout > timedelta(seconds=1)  # the deferral's own timeout is a backstop after the trigger's
    (event,) = asyncio.run(_events(deferred.trigger))
    assert event.payload["status"] == "timeout"
    assert service.runner.wait(operator.job_name) == "Canceled"
    with pytest.raises(AirflowException, match="time limit: cancelled"):
        operator.execute_complete(context, event.payload)
    assert _run_stores(service) == []


def test_a_job_queued_past_max_queued_is_cancelled_and_the_task_fails_in_one_line(service):
    from airflow.providers.common.compat.sdk import AirflowFailException

    service.runner.quota_nodes = 0  # no low-priority quota: the job would wait for ever
    operator, context = _operator(service, max_queued=timedelta(seconds=1)), {"ti": TaskInstance()}
    trigger = _deferred(operator, context).trigger
    (event,) = asyncio.run(asyncio.wait_for(_events(trigger), timeout=30))
    assert event.payload["status"] == "queued"
    with pytest.raises(AirflowFailException) as failure:
        operator.execute_complete(context, event.payload)
    message = str(failure.value)
    assert "\n" not in message and "got no nodes of cluster vst-gpu (low_priority Standard_NC48ads_A100_v4)" in message
    assert "max_queued" in message and "quota" in message
    assert service.runner.wait(operator.job_name) == "Canceled" and _run_stores(service) == []


def test_a_retry_re_attaches_and_keeps_the_runs_deadline_and_resubmissions(service):
    """A try whose status reads all fail (the service refuses its token for a while) fails; the
    retry re-attaches to the same job with the first try's deadline and resubmission count."""
    from airflow.providers.common.compat.sdk import AirflowException, TaskDeferred

    service.runner.script("preempt-fail", "fail")
    service.runner.preempt_after = 0  # job 0 preempted as soon as its ranks start
    first_try, context = _operator(service), {"ti": TaskInstance()}
    (event,) = asyncio.run(_events(_deferred(first_try, context).trigger))  # job 0: preempted
    service.runner.quota_nodes = 0  # job 1 waits for nodes
    with pytest.raises(TaskDeferred) as resubmitted:
        first_try.execute_complete(context, event.payload)
    trigger = resubmitted.value.trigger
    deadline, job = trigger.end_time, trigger.job_name
    assert job.endswith("-1") and trigger.carry["resubmits"] == 1
    service.workspace.fail(rf"GET .*/jobs/{job}$", 401, "ExpiredAuthenticationToken", "the access token expired",
                           count=2)
    trigger.max_poll_errors = 1
    (event,) = asyncio.run(_events(trigger))
    with pytest.raises(AirflowException, match="a retry re-attaches"):
        first_try.execute_complete(context, event.payload)
    assert service.runner.status(job) in ("NotStarted", "Queued")

    time.sleep(0.05)  # a fresh clock would differ from the first try's
    signed_in = len(service.workspace.sign_ins)
    retry = _operator(service)  # Airflow's retry: a fresh operator, same task instance
    again = _deferred(retry, {"ti": TaskInstance()}).trigger
    assert again.job_name == job and again.end_time == deadline and again.carry["resubmits"] == 1
    assert len(service.workspace.sign_ins) == signed_in + 1  # the retry's client signed in afresh
    service.runner.quota_nodes = None  # job 1 leaves the queue (and fails: it only had to be waited for)
    (event,) = asyncio.run(_events(again))
    assert event.payload["job_name"] == job and event.payload["carry"]["resubmits"] == 1 and len(service.runs) == 2
    with pytest.raises(Exception, match="already exists"):  # the service refuses a second job of that name (409)
        retry.hook.submit(entities.build_score_job(
            segments_uri="azureml://datastores/x/paths/s", styled_uri="azureml://datastores/x/paths/o",
            score_args=[], code=entities.stage_code(Path(tempfile.mkdtemp())), compute="vst-gpu", name=job,
            environment=retry.hook.ensure_environment(entities.build_environment())))


def test_tokens_last_until_the_runs_deadline_and_an_expired_mount_is_refused(service):
    from airflow.providers.common.compat.sdk import AirflowException

    service.runner.queue_delay = timedelta(hours=7)  # the job waits 7 h for low-priority nodes
    short = _operator(service, execution_timeout=timedelta(hours=2), max_resubmits=0)
    with pytest.raises(AirflowException, match="StreamAccess.Authentication"):
        _run_to_the_end(short, {"ti": TaskInstance()})
    trigger = _deferred(_operator(service), {"ti": TaskInstance("manual__2025-01-02T00:00:00")}).trigger
    expiry = datetime.fromisoformat(sas.describe(service.workspace.registered_tokens[-1])["expiry"])
    assert expiry == datetime.fromtimestamp(trigger.end_time, UTC).replace(microsecond=0) + sas.MARGIN
    assert timedelta(hours=12) < expiry - datetime.now(UTC) <= timedelta(hours=12, minutes=30)  # deadline + margin


def test_upper_case_size_of_an_existing_cluster_and_the_node_count_up_to_its_max(service):
    """The service reports sizes upper-cased: a cluster an administrator made is used as it is."""
    from airflow.providers.common.compat.sdk import AirflowFailException
    from azure.ai.ml.entities import AmlCompute

    hook = AzureMLHook()
    existing = AmlCompute(name="vst-gpu", size="Standard_NC48ads_A100_v4", min_instances=0, max_instances=3,
                          tier="low_priority", idle_time_before_scale_down=600)
    hook.client.compute.begin_create_or_update(existing).result()  # made by an administrator, max 3 (configured 2)
    assert hook.client.compute.get("vst-gpu").size == "STANDARD_NC48ADS_A100_V4"
    with pytest.raises(AirflowFailException) as failure:
        _operator(service, nodes=4).execute({"ti": TaskInstance()})
    assert str(failure.value) == ("this run asks for 4 nodes but cluster vst-gpu has at most 3: ask for 1 to 3, "
                                  "or raise the cluster's max_nodes")
    assert service.runs == {}
    operator = _operator(service, nodes=3)
    trigger = _deferred(operator, {"ti": TaskInstance()}).trigger  # the cluster's own max counts
    assert trigger.carry["cluster"]["vm_size"] == "Standard_NC48ads_A100_v4" and trigger.carry["cluster"]["gpus"] == 2
    job = service.workspace.jobs[operator.job_name]["properties"]
    assert job["environmentVariables"]["VST_VM_SIZE"] == "Standard_NC48ads_A100_v4"
    assert job["distribution"]["processCountPerInstance"] == 2 and job["resources"]["instanceCount"] == 3
    assert len(_requests(service, "PUT", r"/computes/vst-gpu\?")) == 1  # never resized


def test_throttling_and_a_server_error_are_retried_by_the_sdk(service):
    """Two 503s on the submission and a 429 with Retry-After on the status reads: the SDK's own
    retries absorb them, one job is made, and the trigger sees the job's end, not a failed read."""
    service.runner.script("fail")  # the job ends at once: what matters is the reads before
    service.workspace.fail(r"PUT .*/jobs/vst-", 503, count=2)
    operator = _operator(service)
    trigger = _deferred(operator, {"ti": TaskInstance()}).trigger
    assert len(_requests(service, "PUT", rf"/jobs/{operator.job_name}\?")) == 3  # two refused, one created
    throttled = service.workspace.fail(rf"GET .*/jobs/{operator.job_name}$", 429, "TooManyRequests", "throttled",
                                       count=2, headers={"Retry-After": "1"})
    started = time.monotonic()
    (event,) = asyncio.run(_events(trigger))
    assert (event.payload["status"], event.payload["job_status"]) == ("error", "Failed") and len(service.runs) == 1
    assert throttled.seen == 2 and time.monotonic() - started >= 2  # waited Retry-After twice, then read it


def test_trigger_yields_one_event_and_serializes(service):
    from aml_backend.trigger import AzureMLJobTrigger

    service.runner.script("fail")
    operator = _operator(service)
    trigger = _deferred(operator, {"ti": TaskInstance()}).trigger
    (event,) = asyncio.run(_events(trigger))
    assert event.payload["status"] == "error" and event.payload["job_status"] == "Failed"
    assert event.payload["job_name"] == operator.job_name and event.payload["carry"]["resubmits"] == 0
    classpath, kwargs = trigger.serialize()
    assert classpath == "aml_backend.trigger.AzureMLJobTrigger" and kwargs["job_name"] == operator.job_name
    assert kwargs["max_queued"] == 6 * 3600 and kwargs["queued_since"] <= time.time()
    assert AzureMLJobTrigger(**kwargs).serialize() == (classpath, kwargs)

    # a status read that keeps failing ends in one error event, never a hang
    missing = AzureMLJobTrigger("no-such-job", "azureml_default", poll_interval=0.01, max_poll_errors=2)
    (event,) = asyncio.run(_events(missing))
    assert event.payload["status"] == "error" and "could not read the status" in event.payload["message"]


def test_the_trigger_makes_its_client_off_the_event_loop(service):
    """Importing azure.ai.ml takes seconds; on the triggerer's loop it would stall every other
    deferred task. A fresh interpreter records the thread that imports it."""
    script = f"""
import asyncio, importlib.abc, json, sys, threading
sys.path[:0] = [{str(REPO / 'plugins')!r}, {str(REPO)!r}]
seen = []
class Watch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "azure.ai.ml":
            seen.append(threading.current_thread() is threading.main_thread())
sys.meta_path.insert(0, Watch())
from aml_backend.trigger import AzureMLJobTrigger
async def first():
    async for event in AzureMLJobTrigger("no-such-job", "azureml_default", 0.01, max_poll_errors=0).run():
        return event.payload
print(json.dumps({{"on_the_loop": seen, "event": asyncio.run(first())["status"]}}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer == {"on_the_loop": [False], "event": "error"}


# ---------------------------------------------------------------------- credentials, the provider's way


def _signed_in(service, conn_id: str) -> dict:
    assert AzureMLHook(conn_id).find_job("nothing-here") is None  # a real call through the real client
    return service.workspace.sign_ins[-1]


@pytest.mark.parametrize("tenant_field", ["tenantId", "tenant_id"])
def test_a_service_principal_in_the_providers_fields(service, monkeypatch, tenant_field):
    _conn(monkeypatch, "aml_sp", login="app-id", password="app-secret", extra={**EXTRA, tenant_field: "tenant-vst"})
    assert _signed_in(service, "aml_sp") == {"tenant": "tenant-vst", "client_id": "app-id", "grant": "client_secret",
                                             "authority": "login.microsoftonline.com",
                                             "audience": "https://management.azure.com"}


def test_a_managed_identity_and_workload_identity(service, monkeypatch, tmp_path):
    _conn(monkeypatch, "aml_mi", extra={**EXTRA, "managed_identity_client_id": "mi-client"})
    signed = _signed_in(service, "aml_mi")
    assert (signed["grant"], signed["client_id"]) == ("managed_identity", "mi-client")
    _conn(monkeypatch, "aml_plain_default", extra=EXTRA)  # nothing given: DefaultAzureCredential finds the VM's identity
    signed = _signed_in(service, "aml_plain_default")
    assert (signed["grant"], signed["client_id"], signed["audience"]) == \
        ("managed_identity", None, "https://management.azure.com")

    token_file = tmp_path / "federated-token"  # what AKS projects into a pod with workload identity
    token_file.write_text("eyJhbGciOiJub25lIn0.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQifQ.")
    monkeypatch.setenv("AZURE_FEDERATED_TOKEN_FILE", str(token_file))
    monkeypatch.setenv("AZURE_CLIENT_ID", "wi-client")
    monkeypatch.setenv("AZURE_TENANT_ID", "wi-tenant")
    _conn(monkeypatch, "aml_wi", extra={**EXTRA, "managed_identity_client_id": "wi-client",
                                        "workload_identity_tenant_id": "wi-tenant"})
    signed = _signed_in(service, "aml_wi")
    assert (signed["grant"], signed["client_id"], signed["tenant"]) == ("workload_identity", "wi-client", "wi-tenant")


def test_a_sovereign_cloud_is_reached_at_its_own_hosts(service, monkeypatch):
    _conn(monkeypatch, "aml_china", **PRINCIPAL | {"extra": {**PRINCIPAL["extra"], "cloud_environment":
                                                             "AzureChinaCloud"}})
    signed = _signed_in(service, "aml_china")
    assert (signed["authority"], signed["audience"]) == \
        ("login.chinacloudapi.cn", "https://management.chinacloudapi.cn")
    assert any(host == "management.chinacloudapi.cn" for _, host, _, _ in service.workspace.requests)


def test_a_half_configured_principal_or_workspace_fails_in_one_line(monkeypatch):
    _conn(monkeypatch, "aml_half", login="app-id", extra={**EXTRA, "tenantId": "t"})
    with pytest.raises(ValueError) as failure:
        AzureMLHook("aml_half").get_conn()
    assert str(failure.value) == ("connection 'aml_half' holds half a service principal: it lacks password (client "
                                  "secret). Give tenantId, login and password, or none of them to use "
                                  "DefaultAzureCredential (managed identity, workload identity)")
    _conn(monkeypatch, "aml_no_tenant", login="app-id", password="s", extra=EXTRA)
    with pytest.raises(ValueError, match="lacks tenantId\\. Give"):
        AzureMLHook("aml_no_tenant").get_conn()
    _conn(monkeypatch, "aml_bad", extra={"subscriptionId": "s"})
    with pytest.raises(ValueError, match="lacks resource_group_name, workspace_name in its extra"):
        AzureMLHook("aml_bad").get_conn()
    _conn(monkeypatch, "aml_cloud", extra={**EXTRA, "cloud_environment": "Mars"})
    with pytest.raises(ValueError, match="unknown cloud_environment 'Mars'"):
        AzureMLHook("aml_cloud").get_conn()
    widgets = AzureMLHook.get_connection_form_widgets()  # the provider's managed identity fields too
    assert {"tenantId", "managed_identity_client_id", "workload_identity_tenant_id"} <= set(widgets)
