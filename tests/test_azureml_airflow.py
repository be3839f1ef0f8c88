"""The Azure ML backend driven by a running ``airflow standalone``: kills, retries and studio
cancels reach the operator and trigger only the way Airflow delivers them (REST API, the
scheduler, the triggerer). Only the service is the fake, served to every Airflow process
from this test (``fake_mlclient.ServiceBridge``); its jobs wait in the queue throughout."""

from __future__ import annotations

import json
import secrets
import sys
import time
from urllib.parse import quote

import pytest

from devstack import REPO, Stack, free_port, wait_for_port

from .fake_mlclient import FakeAzureML, ServiceBridge
from .test_reliability import Api, upload, wait_for

pytestmark = pytest.mark.skipif(not (REPO / "node_modules" / ".bin" / "azurite-blob").exists(),
                                reason="Azurite is not installed (make setup runs npm ci)")


@pytest.fixture(scope="module")
def airflow_with_fake(tmp_path_factory):
    """A standalone whose Azure ML is the fake, jobs held Queued until cancelled."""
    root = tmp_path_factory.mktemp("aml-stack")
    service = FakeAzureML(root / "storage", root / "service", step=0.05, queue_seconds=3600)
    authkey = secrets.token_hex(16)
    bridge = ServiceBridge(service, authkey.encode())
    stack = Stack(root, blob_port=free_port(), api_port=free_port())
    stack.extra_env = {
        "VST_FAKE_AZUREML": json.dumps({"address": list(bridge.address), "authkey": authkey}),
        "PYTHONPATH": f"{REPO / 'tests' / 'azureml_site'}:{REPO / 'plugins'}:{REPO}",
        "VST_AZUREML_POLL_SECONDS": "1",
        # log servers on ports of their own: other stacks may run on this machine
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW_CONN_AZUREML_DEFAULT": json.dumps({
            "conn_type": "azureml", "login": "app-id", "password": "app-secret",
            "extra": {"subscription_id": "sub", "resource_group": "rg", "workspace_name": "ws", "tenant_id": "t",
                      "cluster": {"vm_size": "Standard_NC4as_T4_v3", "max_nodes": 2}}}),
    }
    api = Api(stack)
    try:
        stack.start_azurite()
        stack.create_containers()
        stack.prepare_airflow(scoring_slots=2)
        try:
            stack.start_airflow()
        except TimeoutError:  # a machine shared with other stacks can take longer than devstack waits
            wait_for_port(stack.api_port, timeout=420)
        wait_for(lambda: _answers(api.healthy), 300, what="a healthy scheduler")
        for watcher in ("blob_watcher", "blob_sweep"):  # runs come from this test only
            wait_for(lambda d=watcher: _answers(lambda: api.call("PATCH", f"/api/v2/dags/{d}",
                                                                 {"is_paused": True})[0] == 200), 180,
                     what=f"{watcher} paused")
        yield stack, api, service
    finally:
        stack.stop()
        bridge.close()
        service.shutdown()


def _answers(question):
    """The API's answer, or False while the (busy) API server does not answer in time."""
    try:
        return question()
    except OSError:
        return False


def _job_of(service: FakeAzureML, run_id: str):
    jobs = [run for run in service.runs.values() if run_id in run.job.tags.get("airflow_run", "")]
    return jobs[0] if len(jobs) == 1 else None


def _settle() -> None:
    """Let the scheduler take in the end of the worker's deferring run first. If the trigger
    fires before it does (a job ending a second after the task deferred, on a loaded machine),
    Airflow 3.3 sees "success" for a task that is queued again and puts it up for retry."""
    time.sleep(10)


def _score_task(api: Api, run_id: str) -> dict:
    return _answers(lambda: api.tasks(run_id).get("score_azureml")) or {}


@pytest.mark.timeout(1200)  # the standalone's start included; about 3 minutes on a quiet machine
def test_kill_retry_and_studio_cancel_through_airflow(airflow_with_fake, clip_factory):
    stack, api, service = airflow_with_fake
    clip = clip_factory(seconds=1, fps="25", size=(96, 64))
    runs = {}
    for key in ("marked_failed", "retried"):
        upload(stack, "accepted", f"aml/{key}.mp4", clip.read_bytes())  # as the watcher leaves it
        status, answer = api.trigger({"input_blob": f"aml/{key}.mp4", "backend": "azureml", "azureml_nodes": 1,
                                      "segment_frames": 8})
        assert status in (200, 201), answer
        runs[key] = answer["dag_run_id"]
    for run_id in runs.values():
        wait_for(lambda r=run_id: _score_task(api, r).get("state") == "deferred" and _job_of(service, r), 420,
                 what=f"score_azureml of {run_id} deferred on a queued job")

    # 1. the run is marked failed while its job is queued: the triggerer's on_kill cancels the job
    killed = _job_of(service, runs["marked_failed"])
    assert killed.status == "Queued"
    # its trigger polling it in the triggerer: a run marked failed before the triggerer picks the
    # trigger up leaves no trigger to cancel the job (seen once on a loaded machine)
    polled = service.reads.get(killed.name, 0)
    wait_for(lambda: service.reads.get(killed.name, 0) > polled, 120, every=0.5, what="the trigger polling the job")
    status, answer = api.call("PATCH", f"/api/v2/dags/video_style_transfer/dagRuns/"
                              f"{quote(runs['marked_failed'], safe='')}", {"state": "failed"})
    assert status == 200, answer
    wait_for(lambda: killed.status == "Canceled", 60, every=0.5, what="the queued job cancelled")
    assert service.cancel_requests == [killed.name]

    # 2. the task fails while its job is queued (the service unreachable for the trigger's
    #    whole error budget): Airflow retries it, and the retry re-attaches to the same job
    job = _job_of(service, runs["retried"])
    _settle()
    service.outage = 6
    wait_for(lambda: _score_task(api, runs["retried"]).get("try_number") == 2
             and _score_task(api, runs["retried"]).get("state") == "deferred", 240, what="the retry deferred")
    assert _job_of(service, runs["retried"]) is job and job.status == "Queued"  # no second job

    # 3. a person cancels the job in the studio: the task fails, and is not retried
    _settle()
    service.studio_cancel(job.name)
    wait_for(lambda: _score_task(api, runs["retried"]).get("state") == "failed", 180, what="the task failed")
    task = _score_task(api, runs["retried"])
    assert task["try_number"] == 2 and task["max_tries"] > 2  # retries were left, none was used
    assert len([r for r in service.runs.values() if runs["retried"] in r.job.tags["airflow_run"]]) == 1
    assert service.cancel_requests == [killed.name]  # the studio's cancel went around Airflow
    assert not [name for name in service.datastores if name.startswith("vst_")]  # both runs cleaned up
    print(f"azureml via airflow: jobs {sorted(service.runs)}", file=sys.stderr)


@pytest.mark.timeout(900)
def test_housekeeping_cancels_only_the_jobs_no_task_waits_for(airflow_with_fake, clip_factory):
    """The window the trigger's on_kill leaves: a job whose task stopped waiting before any
    triggerer picked its trigger up stays queued. Housekeeping asks Airflow for each unfinished
    job's task (the Task SDK's task states): a job whose task is gone or done is cancelled, the
    job of a task deferred on it stays."""
    stack, api, service = airflow_with_fake
    clip = clip_factory(seconds=1, fps="25", size=(96, 64))
    upload(stack, "accepted", "aml/waited-for.mp4", clip.read_bytes())
    status, answer = api.trigger({"input_blob": "aml/waited-for.mp4", "backend": "azureml", "azureml_nodes": 1,
                                  "segment_frames": 8})
    assert status in (200, 201), answer
    run_id = answer["dag_run_id"]
    wait_for(lambda: _score_task(api, run_id).get("state") == "deferred" and _job_of(service, run_id), 420,
             what="score_azureml deferred on a queued job")
    waited_for = _job_of(service, run_id)
    probe_state = _answers(lambda: api.tasks(run_id)["probe"]["state"])
    assert probe_state == "success"
    done_task = service.left_queued("vst-left-by-a-done-task", {"airflow_run": f"video_style_transfer/{run_id}/probe"})
    no_task = service.left_queued("vst-left-by-a-deleted-run",
                                  {"airflow_run": "video_style_transfer/manual__deleted/score_azureml"})
    other = service.left_queued("not-ours", {"airflow_run": "video_style_transfer/manual__deleted/score_azureml"},
                                experiment_name="someone-else")

    status, answer = api.trigger({}, run_id="manual__housekeeping-orphans", dag_id="housekeeping")
    assert status in (200, 201), answer
    wait_for(lambda: _answers(lambda: api.runs("housekeeping")["manual__housekeeping-orphans"]["state"])
             in ("success", "failed"), 300, what="the housekeeping run")
    assert api.runs("housekeeping")["manual__housekeeping-orphans"]["state"] == "success"
    wait_for(lambda: done_task.status == no_task.status == "Canceled", 60, every=0.5, what="the two jobs cancelled")
    assert waited_for.status == "Queued" and other.status == "Queued"
    assert waited_for.name not in service.cancel_requests and other.name not in service.cancel_requests
    assert _score_task(api, run_id).get("state") == "deferred"

    status, answer = api.call("PATCH", f"/api/v2/dags/video_style_transfer/dagRuns/{quote(run_id, safe='')}",
                              {"state": "failed"})  # done with it: its trigger cancels the job
    assert status == 200, answer
    wait_for(lambda: waited_for.status == "Canceled", 120, every=0.5, what="the waited-for job cancelled")
    service.studio_cancel(other.name)
