"""The Azure ML backend, offline: real entities checked by azure-ai-ml's own loaders, and the
operator + trigger against a fake service that really runs the job under mpiexec."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from .helpers import REPO, run_scoring

os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="airflow-home-"))
sys.path.insert(0, str(REPO / "plugins"))

from aml_backend import entities, sas
from aml_backend.cluster import ClusterConfig
from aml_backend.hook import AzureMLHook
from azure.ai.ml import load_compute, load_environment, load_job

from .fake_mlclient import FakeAzureML

DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
ACCOUNT = "sysaccount1"
CLUSTER = {"name": "vst-gpu", "vm_size": "Standard_NC48ads_A100_v4", "max_nodes": 2}  # 2 GPUs a node: 2 ranks
WORKSPACE = {"subscription_id": "00000000-0000-0000-0000-000000000001", "resource_group": "rg-vst",
             "workspace_name": "ws-vst"}


# ---------------------------------------------------------------------- entities, offline


def test_the_cluster_is_configuration_from_the_connection(tmp_path, monkeypatch):
    _conn(monkeypatch, "aml_cluster", extra={**WORKSPACE, "cluster": {
        "name": "shared-gpu", "vm_size": "Standard_NC24ads_A100_v4", "tier": "dedicated", "max_nodes": "6",
        "idle_seconds": 300, "keep_warm": "true"}})
    config = AzureMLHook("aml_cluster").cluster_config()
    assert (config.name, config.vm_size, config.tier, config.min_nodes, config.max_nodes) == \
        ("shared-gpu", "Standard_NC24ads_A100_v4", "dedicated", 0, 6)
    assert config.gpus_per_node == 1 and config.scale_idle_seconds == 1800  # keep-warm: a longer idle time
    cluster = entities.build_compute(config)
    cluster.dump(tmp_path / "compute.yml")
    loaded = load_compute(tmp_path / "compute.yml")  # azure-ai-ml's own schema accepts it
    assert (loaded.name, loaded.size, loaded.min_instances, loaded.max_instances, loaded.tier,
            loaded.idle_time_before_scale_down) == ("shared-gpu", "Standard_NC24ads_A100_v4", 0, 6, "dedicated", 1800)

    _conn(monkeypatch, "aml_plain", extra=WORKSPACE)  # nothing configured: a T4 low-priority cluster, 0..4
    default = AzureMLHook("aml_plain").cluster_config()
    assert (default.vm_size, default.tier, default.min_nodes, default.max_nodes) == \
        ("Standard_NC4as_T4_v3", "low_priority", 0, 4)
    monkeypatch.setenv("AIRFLOW_VAR_VST_AZUREML_CLUSTER", json.dumps({"name": "from-variable", "max_nodes": 2}))
    assert AzureMLHook("aml_plain").cluster_config().name == "from-variable"  # a Variable wins when set
    for bad, message in (({"tier": "spot"}, "tier"), ({"max_nodes": 0}, "max_nodes"),
                         ({"vm_size": "Standard_D4s_v5"}, "unknown GPU VM size"), ({"size": "x"}, "unknown cluster")):
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

    job.dump(tmp_path / "job.yml")
    dumped = (tmp_path / "job.yml").read_text()
    assert "type: mpi" in dumped and "instance_count: 3" in dumped
    loaded = load_job(tmp_path / "job.yml")  # azure-ai-ml's own schema accepts it
    assert loaded.distribution.process_count_per_instance == 4 and loaded.resources.instance_count == 3
    assert loaded.inputs["segments"].path == "azureml://datastores/vst_in/paths/run1/segments"
    assert loaded.outputs["styled"].path == "azureml://datastores/vst_out/paths/run1/styled"
    assert loaded.environment_variables == {"VST_VM_SIZE": "Standard_NC64as_T4_v3"} and loaded.name == "vst-0123-0"

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
    segments, styled, model, picture = operator._data_paths({"ti": TaskInstance()})
    job = entities.build_score_job(segments_uri=segments, styled_uri=styled, model_uri=model, style_image_uri=picture,
                                   score_args=operator.score_args(), code=entities.stage_code(tmp_path / "code"),
                                   environment="e:1", compute="c")
    assert job.inputs["style_image"].type == "uri_file" and job.inputs["style_image"].mode == "download"
    args = build_parser().parse_args(job.command.split()[3:])
    assert str(args.style_image) == "${{inputs.style_image}}" and args.style_strength == 0.6
    assert args.style is None and args.model is None  # the picture replaces the style


# ---------------------------------------------------------------------- hook


def _conn(monkeypatch, conn_id: str, **fields) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({"conn_type": "azureml", **fields}))


def test_hook_builds_mlclient_from_the_connection(monkeypatch):
    made = []
    monkeypatch.setattr("aml_backend.hook.MLClient", lambda cred, **kw: made.append((cred, kw)) or "client")
    _conn(monkeypatch, "aml_sp", login="app-id", password="app-secret", extra={**WORKSPACE, "tenant_id": "tenant"})
    assert AzureMLHook("aml_sp").get_conn() == "client"
    credential, kwargs = made[-1]
    assert type(credential).__name__ == "ClientSecretCredential"
    assert kwargs == {"subscription_id": WORKSPACE["subscription_id"], "resource_group_name": "rg-vst",
                      "workspace_name": "ws-vst"}

    _conn(monkeypatch, "aml_default_cred", extra=WORKSPACE)
    AzureMLHook("aml_default_cred").get_conn()
    assert type(made[-1][0]).__name__ == "DefaultAzureCredential"

    _conn(monkeypatch, "aml_bad", extra={"subscription_id": "s"})
    with pytest.raises(ValueError, match="resource_group, workspace_name"):
        AzureMLHook("aml_bad").get_conn()


# ---------------------------------------------------------------------- SAS


def test_sas_tokens_grant_least_privilege_and_expire():
    signer = sas.Signer(ACCOUNT, account_key=DEV_KEY)
    assert DEV_KEY not in repr(signer)
    now = datetime.now(UTC)
    expiry = sas.expiry_for(timedelta(minutes=40), now)
    assert expiry == now + timedelta(minutes=70)

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


# ---------------------------------------------------------------------- the fake service, operator, trigger


@pytest.fixture(scope="module")
def azurite(tmp_path_factory):
    """Azurite with the system account: where the job's logs are copied."""
    binary = REPO / "node_modules" / ".bin" / "azurite-blob"
    if not binary.exists():
        pytest.skip("Azurite is not installed (npm install)")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, AZURITE_ACCOUNTS=f"{ACCOUNT}:{DEV_KEY}")
    proc = subprocess.Popen([str(binary), "--silent", "--location", str(tmp_path_factory.mktemp("azurite")),
                             "--blobHost", "127.0.0.1", "--blobPort", str(port), "--skipApiVersionCheck"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise RuntimeError("Azurite did not start")
        time.sleep(0.2)
    yield (f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={DEV_KEY};"
           f"BlobEndpoint=http://127.0.0.1:{port}/{ACCOUNT};")
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:  # Azurite may linger on SIGTERM; it holds nothing we need
        proc.kill()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def split_clip(clip_factory, tmp_path_factory):
    """A 2 s clip split into 4-frame segments: 13 segments, 50 frames."""
    folder = tmp_path_factory.mktemp("split") / "segments"
    source = clip_factory(seconds=2, fps="25", size=(96, 64))
    run_scoring("split", source, "--out", folder, "--segment-frames", "4", check=True)
    return source, folder


@pytest.fixture
def service(tmp_path, monkeypatch, azurite, split_clip):
    """The fake workspace, its storage (a folder per container) holding the run's segments,
    and the Airflow connections the operator uses."""
    import shutil

    fake = FakeAzureML(tmp_path / "storage", tmp_path / "service", step=0.02, preempt_after=3)
    shutil.copytree(split_clip[1], tmp_path / "storage" / "work" / "run1" / "segments")
    monkeypatch.setattr("aml_backend.hook.MLClient", fake.client)
    _conn(monkeypatch, "azureml_default", login="app-id", password="app-secret",
          extra={**WORKSPACE, "tenant_id": "tenant", "cluster": CLUSTER})
    monkeypatch.setenv("AIRFLOW_CONN_WASB_SYSTEM",
                       json.dumps({"conn_type": "wasb", "extra": {"connection_string": azurite}}))
    yield fake
    fake.shutdown()


class TaskInstance:
    """What the operator touches of a task instance: its ids and XCom."""

    def __init__(self):
        self.dag_id, self.run_id, self.task_id = "video_style_transfer", "manual__2025-01-01T00:00:00", "score_azureml"
        self.map_index = -1
        self.xcom: dict = {}

    def xcom_push(self, key, value):
        self.xcom[key] = value


def _operator(**kwargs):
    from aml_backend.operators import AzureMLScoreOperator

    defaults = {"task_id": "score_azureml", "segments": "work/run1/segments", "styled": "work/run1/styled",
                "style": "7", "precision": "fp32", "batch": 2, "nodes": 1, "poll_interval": 0.05}
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


def _summaries(service: FakeAzureML) -> list[dict]:
    return [a.summary() for run in service.runs.values() for a in run.attempts]


def _check_complete_output(tmp_path, source_segments: Path, styled: Path) -> None:
    from scoring.media import ffmpeg

    assert len(list(styled.glob("*.done"))) == 13 and not list(styled.glob(".*.partial"))
    out = tmp_path / "styled.mp4"
    run_scoring("stitch", "--segments", source_segments, "--styled", styled, out, check=True)
    assert ffmpeg.count_frames(out) == 50


def _deferred(operator, context):
    """What the worker does first: execute until the task defers; returns the trigger."""
    from airflow.providers.common.compat.sdk import TaskDeferred

    with pytest.raises(TaskDeferred) as deferred:
        operator.execute(context)
    return deferred.value


def _wait_for(condition, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def test_preempted_job_is_resubmitted_and_only_missing_segments_are_scored(service, tmp_path, azurite):
    service.script("preempt-fail", "complete")
    ti = TaskInstance()
    events = []
    result = _run_to_the_end(_operator(), {"ti": ti}, events)

    first, second = service.runs.values()
    assert first.history[-1] == "Failed" and first.attempts[0].signalled == "SIGTERM"
    assert [e["job_status"] for e in events] == ["Failed", "Completed"]
    assert first.name.endswith("-0") and second.name == first.name[:-1] + "1"  # derived from the run
    assert result["job_names"] == [first.name, second.name] and result["resubmits"] == 1
    assert ti.xcom["job_name"] == second.name and second.name in ti.xcom["studio_url"]

    # the rerun styled exactly what the preempted job had not finished
    preempted, rerun = _summaries(service)
    assert preempted is None  # the preempted ranks never got to print a summary
    styled = tmp_path / "storage" / "work" / "run1" / "styled"
    done_before = 13 - rerun["scored"]
    assert 3 <= done_before < 13
    assert rerun["skipped"] == done_before and rerun["segments"] == 13 and rerun["ranks"] == 2
    _check_complete_output(tmp_path, tmp_path / "storage" / "work" / "run1" / "segments", styled)

    # what the job got: datastore paths whose tokens read the input and write the output, no key;
    # the GPUs of the configured size, and the size itself for the scoring step's GPU check
    job = first.job
    assert job.inputs["segments"].path.startswith("azureml://datastores/vst_")
    assert job.distribution.process_count_per_instance == 2 and job.environment_variables["VST_VM_SIZE"] == \
        "Standard_NC48ads_A100_v4"
    assert DEV_KEY not in json.dumps(ti.xcom) and DEV_KEY not in job.command
    assert service.computes["vst-gpu"].tier == "low_priority" and service.computes["vst-gpu"].min_instances == 0
    # the run's datastores are gone once it ended
    assert service.datastores == {} and sorted(service.deleted_datastores) == \
        sorted({s for s in service.deleted_datastores if s.startswith("vst_")}) and len(service.deleted_datastores) == 2

    # cost: both jobs' node-seconds, under the tier and VM size they ran on
    cost = result["cost"]
    assert [j["job"] for j in cost["jobs"]] == [first.name, second.name]
    assert all(j["node_seconds"] > 0 and j["nodes"] == 1 for j in cost["jobs"])
    assert list(cost["node_seconds"]) == ["low_priority/Standard_NC48ads_A100_v4"]
    assert cost["node_seconds"]["low_priority/Standard_NC48ads_A100_v4"] == \
        pytest.approx(sum(j["node_seconds"] for j in cost["jobs"]), abs=0.01)

    # both jobs' logs are in the system account's logs container
    from azure.storage.blob import BlobServiceClient

    logs = BlobServiceClient.from_connection_string(azurite).get_container_client("logs")
    names = [b.name for b in logs.list_blobs()]
    assert any(first.name in n for n in names) and any(second.name in n for n in names)


def test_cluster_taken_away_cancels_the_job_and_the_node_state_confirms_preemption(service):
    service.script("preempt-cancel", "complete")
    result = _run_to_the_end(_operator(logs_container=""), {"ti": TaskInstance()})
    first, second = service.runs.values()
    assert first.status == "Canceled" and first.error is None  # no error code: only the nodes say why
    assert second.status == "Completed" and result["resubmits"] == 1


def test_service_restart_of_the_same_job_resumes_without_a_resubmission(service, tmp_path):
    service.script("preempt-requeue")
    service.queue_seconds = 1  # queued long enough for the trigger's polls to see it (real queues: minutes)
    result = _run_to_the_end(_operator(logs_container=""), {"ti": TaskInstance()})
    (run,) = service.runs.values()
    assert result["resubmits"] == 0 and result["cost"]["jobs"][0]["restarts"] == 1
    assert run.history.count("Queued") == 2 and run.history[-1] == "Completed"  # back to Queued, then on
    restarted = run.attempts[1].summary()
    assert 3 <= restarted["skipped"] < 13 and restarted["scored"] == 13 - restarted["skipped"]
    _check_complete_output(tmp_path, tmp_path / "storage" / "work" / "run1" / "segments",
                           tmp_path / "storage" / "work" / "run1" / "styled")


def test_retry_budget_exhausted_fails_clearly(service):
    from airflow.providers.common.compat.sdk import AirflowException

    service.script("preempt-kill", "preempt-fail")
    with pytest.raises(AirflowException) as failure:
        _run_to_the_end(_operator(max_resubmits=1, logs_container=""), {"ti": TaskInstance()})
    assert len(service.runs) == 2
    message = str(failure.value)
    assert "preempted again after 1 resubmission(s)" in message and "max_resubmits=1" in message
    assert "PreemptionError" in message
    assert service.datastores == {}


def test_non_retriable_failure_is_not_resubmitted(service):
    from airflow.providers.common.compat.sdk import AirflowException, AirflowFailException

    with pytest.raises(AirflowException) as failure:  # a style that does not exist: the command exits 2
        _run_to_the_end(_operator(style="99", logs_container=""), {"ti": TaskInstance()})
    assert not isinstance(failure.value, AirflowFailException)  # Airflow may retry it
    assert len(service.runs) == 1
    assert "ended Failed" in str(failure.value) and "exited with status code 2" in str(failure.value)
    assert "style" in str(failure.value)

    service.script("fail")  # a service-side failure before the command runs (another run)
    ti = TaskInstance()
    ti.run_id = "manual__2025-01-02T00:00:00"
    with pytest.raises(AirflowException, match="JobConfigurationError"):
        _run_to_the_end(_operator(logs_container=""), {"ti": ti})
    assert len(service.runs) == 2


def test_a_job_cancelled_in_the_studio_fails_the_task_without_retry(service):
    from airflow.providers.common.compat.sdk import AirflowFailException

    service.queue_seconds = 30
    operator, context = _operator(logs_container=""), {"ti": TaskInstance()}
    trigger = _deferred(operator, context).trigger
    service.studio_cancel(operator.job_name)
    (event,) = asyncio.run(_events(trigger))
    with pytest.raises(AirflowFailException, match="was cancelled .not by preemption.*not retried"):
        operator.execute_complete(context, event.payload)
    assert len(service.runs) == 1 and service.datastores == {}


def test_killing_the_deferred_task_cancels_the_job_through_the_trigger(service):
    """Airflow calls the trigger's on_kill (not the operator's) when a deferred task is killed."""
    service.queue_seconds = 30
    operator = _operator(logs_container="")
    trigger = _deferred(operator, {"ti": TaskInstance()}).trigger
    assert service.runs[operator.job_name].status in ("NotStarted", "Queued")
    assert len(service.datastores) == 2
    asyncio.run(trigger.on_kill())
    assert service.cancel_requests == [operator.job_name]
    assert service.wait(operator.job_name) == "Canceled" and service.datastores == {}


def test_housekeeping_cancels_a_queued_job_whose_task_no_longer_waits(service):
    """The window the triggerer's on_kill leaves (a task marked failed before any triggerer
    picked its trigger up): the job stays queued until housekeeping asks Airflow for its task's
    state and, finding none that leads back to it, cancels the job and removes the run's
    datastores. While the task may still come back to the job, nothing is touched."""
    from aml_backend.orphans import LIVE_TASK_STATES, cancel_orphaned_jobs

    service.queue_seconds = 30
    operator, ti = _operator(logs_container=""), TaskInstance()
    _deferred(operator, {"ti": ti})  # submitted and deferred; no trigger ever runs
    job = operator.job_name
    stores = sorted(service.datastores)
    assert len(stores) == 2
    asked = []

    def answering(state):
        return lambda *task: asked.append(task) or state

    for state in sorted(LIVE_TASK_STATES):
        assert cancel_orphaned_jobs(operator.hook, answering(state)) == []
    assert service.runs[job].status in ("NotStarted", "Queued") and sorted(service.datastores) == stores
    assert set(asked) == {(ti.dag_id, ti.run_id, ti.task_id)}

    cancelled = cancel_orphaned_jobs(operator.hook, answering("failed"))
    assert cancelled == [{"job": job, "task": f"{ti.dag_id}/{ti.run_id}/{ti.task_id}", "task_state": "failed",
                          "datastores": stores}]
    assert service.wait(job) == "Canceled" and service.datastores == {}
    assert cancel_orphaned_jobs(operator.hook, answering(None)) == []  # an ended job is not looked at again
    assert cancel_orphaned_jobs(operator.hook, answering(None), experiment="another") == []


def test_the_time_limit_cancels_the_job(service):
    from airflow.providers.common.compat.sdk import AirflowException

    service.queue_seconds = 30
    operator, context = _operator(logs_container="", execution_timeout=timedelta(seconds=1)), {"ti": TaskInstance()}
    deferred = _deferred(operator, context)
    assert deferred.timeout > timedelta(seconds=1)  # the deferral's own timeout is a backstop after the trigger's
    (event,) = asyncio.run(_events(deferred.trigger))
    assert event.payload["status"] == "timeout"
    assert service.wait(operator.job_name) == "Canceled"
    with pytest.raises(AirflowException, match="time limit: cancelled"):
        operator.execute_complete(context, event.payload)
    assert service.datastores == {}


def test_a_retried_task_re_attaches_to_the_running_job_instead_of_submitting_another(service):
    from airflow.providers.common.compat.sdk import AirflowException

    service.queue_seconds = 2
    first_try, context = _operator(logs_container=""), {"ti": TaskInstance()}
    trigger = _deferred(first_try, context).trigger
    trigger.max_poll_errors, service.outage = 1, 2  # the service unreachable for a while: the try fails
    (event,) = asyncio.run(_events(trigger))
    with pytest.raises(AirflowException, match="a retry re-attaches"):
        first_try.execute_complete(context, event.payload)
    assert service.runs[first_try.job_name].status not in ("Completed", "Failed", "Canceled")

    retry = _operator(logs_container="")  # Airflow's retry: a fresh operator, same task instance
    result = _run_to_the_end(retry, {"ti": TaskInstance()})
    assert list(service.runs) == [first_try.job_name] and result["job_name"] == first_try.job_name
    with pytest.raises(Exception, match="already exists"):  # the service refuses a second job of that name
        first_try.hook.submit(service.runs[first_try.job_name].job)


def test_tokens_outlive_the_queue_and_an_expired_mount_is_refused(service):
    from airflow.providers.common.compat.sdk import AirflowException

    service.queue_delay = timedelta(hours=7)  # the job waits 7 h for low-priority nodes
    short = _operator(logs_container="", max_queued=timedelta(hours=1), execution_timeout=timedelta(hours=2),
                      max_resubmits=0)
    with pytest.raises(AirflowException, match="StreamAccess.Authentication"):
        _run_to_the_end(short, {"ti": TaskInstance()})
    ti = TaskInstance()
    ti.run_id = "manual__2025-01-02T00:00:00"
    result = _run_to_the_end(_operator(logs_container=""), {"ti": ti})  # 6 h queue + 12 h limit + 30 min
    assert result["resubmits"] == 0
    expiry = datetime.fromisoformat(sas.describe(service.registered_tokens[-1])["expiry"])
    assert timedelta(hours=18) < expiry - datetime.now(UTC) <= timedelta(hours=18, minutes=30)


def test_a_run_asks_only_for_nodes_up_to_the_shared_clusters_max(service):
    from airflow.providers.common.compat.sdk import AirflowFailException
    from azure.ai.ml.entities import AmlCompute

    existing = AmlCompute(name="vst-gpu", size="Standard_NC48ads_A100_v4", min_instances=0, max_instances=3,
                          tier="low_priority", idle_time_before_scale_down=600)
    service.computes["vst-gpu"] = existing  # made by an administrator, not as configured (max 2)
    with pytest.raises(AirflowFailException) as failure:
        _operator(nodes=4, logs_container="").execute({"ti": TaskInstance()})
    assert str(failure.value) == ("this run asks for 4 nodes but cluster vst-gpu has at most 3: ask for 1 to 3, "
                                  "or raise the cluster's max_nodes")
    assert service.runs == {}
    _deferred(_operator(nodes=3, logs_container=""), {"ti": TaskInstance()})  # the cluster's own max counts
    assert service.computes["vst-gpu"] is existing and existing.max_instances == 3  # never resized


def test_trigger_yields_one_event_and_serializes(service):
    from aml_backend.trigger import AzureMLJobTrigger

    service.script("fail")
    operator = _operator(logs_container="")
    trigger = _deferred(operator, {"ti": TaskInstance()}).trigger
    (event,) = asyncio.run(_events(trigger))
    assert event.payload["status"] == "error" and event.payload["job_status"] == "Failed"
    assert event.payload["job_name"] == operator.job_name and event.payload["carry"]["resubmits"] == 0
    classpath, kwargs = trigger.serialize()
    assert classpath == "aml_backend.trigger.AzureMLJobTrigger" and kwargs["job_name"] == operator.job_name
    assert AzureMLJobTrigger(**kwargs).serialize() == (classpath, kwargs)

    # a status read that keeps failing ends in one error event, never a hang
    missing = AzureMLJobTrigger("no-such-job", "azureml_default", poll_interval=0.01, max_poll_errors=2)
    (event,) = asyncio.run(_events(missing))
    assert event.payload["status"] == "error" and "could not read the status" in event.payload["message"]
