"""The Azure ML backend driven by a running ``airflow standalone``: a run through a restart in
place and a preemption, kills, retries and studio cancels reach the operator and trigger only
the way Airflow delivers them (REST API, the scheduler, the triggerer). Azure ML is the emulator
(tests/aml_emulator), in this test's process; every Airflow process reaches it with the real
MLClient, through the HTTPS proxy and CA its environment names, nothing else changed."""

from __future__ import annotations

import json
import re
import sys
import time
from urllib.parse import quote

import pytest

from devstack import DATA_ACCOUNT, DEV_KEY, REPO, SYSTEM_ACCOUNT, Stack, free_port, wait_for_port
from scoring.media import ffmpeg

from .aml_emulator import WORKSPACE, AzureMLEmulator
from .helpers import Api, encoded_by_the_ranks, wait_until, xcom_value
from .test_reliability import upload

pytestmark = pytest.mark.skipif(not (REPO / "node_modules" / ".bin" / "azurite-blob").exists(),
                                reason="Azurite is not installed (make setup runs npm ci)")


@pytest.fixture(scope="module")
def airflow_with_emulator(tmp_path_factory):
    """A standalone whose Azure ML workspace is the emulator, on the stack's own Azurite, its
    metrics going to a StatsD daemon (``stack.collector``) as in the production topology."""
    from devstack.prod import METRICS_PREFIX, ProdStack

    root = tmp_path_factory.mktemp("aml-stack")
    stack = Stack(root, blob_port=free_port(), api_port=free_port())
    stack.collector = ProdStack.on_free_ports(root / "statsd")  # only its StatsD daemon is started
    stack.collector.root.mkdir(parents=True, exist_ok=True)
    api, emulator = Api(stack), None
    try:
        stack.collector.start_statsd()
        stack.start_azurite()
        stack.create_containers()
        accounts = {a: (f"http://127.0.0.1:{stack.blob_port}/{a}", DEV_KEY) for a in (DATA_ACCOUNT, SYSTEM_ACCOUNT)}
        emulator = AzureMLEmulator(root, accounts, SYSTEM_ACCOUNT, step=0.05, preempt_after=2)
        emulator.workspace.client_secrets["app-id"] = "app-secret"
        stack.extra_env = emulator.environment() | {
            "PYTHONPATH": f"{REPO / 'plugins'}:{REPO}",
            "VST_AZUREML_POLL_SECONDS": "1",
            "AIRFLOW__METRICS__STATSD_ON": "True", "AIRFLOW__METRICS__STATSD_HOST": "127.0.0.1",
            "AIRFLOW__METRICS__STATSD_PORT": str(stack.collector.statsd_port),
            "AIRFLOW__METRICS__STATSD_PREFIX": METRICS_PREFIX,
            "AIRFLOW_CONN_AZUREML_DEFAULT": json.dumps({  # the Azure provider's field names
                "conn_type": "azureml", "login": "app-id", "password": "app-secret",
                "extra": {"subscriptionId": WORKSPACE["subscription_id"],
                          "resource_group_name": WORKSPACE["resource_group"],
                          "workspace_name": WORKSPACE["workspace_name"], "tenantId": "tenant-vst",
                          "cluster": {"vm_size": "Standard_NC4as_T4_v3", "max_nodes": 2,
                                      "price_per_node_hour": 0.18}}}),
        }
        stack.prepare_airflow(scoring_slots=2)
        try:
            stack.start_airflow()
        except TimeoutError:  # a machine shared with other stacks can take longer than devstack waits
            wait_for_port(stack.api_port, timeout=420)
        wait_until(lambda: _answers(api.healthy), 300, what="a healthy scheduler")
        # the dag-processor parses the files one by one: a run can be triggered only once its DAG is in
        dag_ids = [path.stem for path in (REPO / "dags").glob("*.py")]  # each file is named after its DAG
        wait_until(lambda: all(_answers(lambda d=d: api.has_dag(d)) for d in dag_ids), 300, what="every DAG parsed")
        for watcher in ("blob_watcher", "blob_sweep"):  # runs come from this test only
            wait_until(lambda d=watcher: _answers(lambda: api.call("PATCH", f"/api/v2/dags/{d}",
                                                                 {"is_paused": True})[0] == 200), 180,
                     what=f"{watcher} paused")
        yield stack, api, emulator
    finally:
        stack.stop()
        stack.collector.stop()
        if emulator is not None:
            emulator.close()


def _answers(question):
    """The API's answer, or False while the (busy) API server does not answer in time."""
    try:
        return question()
    except OSError:
        return False


def _jobs_of(emulator: AzureMLEmulator, run_id: str) -> list[str]:
    return [name for name, job in emulator.workspace.jobs.items()
            if run_id in (job["properties"].get("tags") or {}).get("airflow_run", "")]


def _job_of(emulator: AzureMLEmulator, run_id: str) -> str | None:
    jobs = _jobs_of(emulator, run_id)
    return jobs[0] if len(jobs) == 1 else None


def _reads(emulator: AzureMLEmulator, job: str) -> int:
    return sum(1 for _, _, method, path in emulator.workspace.requests
               if method == "GET" and re.search(rf"/jobs/{job}\?", path))


def _run_stores(emulator: AzureMLEmulator) -> list[str]:
    return [name for name in emulator.workspace.datastores if name.startswith("vst_")]


def _settle() -> None:
    """Let the scheduler take in the end of the worker's deferring run first. If the trigger
    fires before it does (a job ending a second after the task deferred, on a loaded machine),
    Airflow 3.3 sees "success" for a task that is queued again and puts it up for retry."""
    time.sleep(10)


def _score_task(api: Api, run_id: str) -> dict:
    return _answers(lambda: api.tasks(run_id).get("score_azureml")) or {}


def _task_path(run_id: str, task: str = "score_azureml") -> str:
    return f"/api/v2/dags/video_style_transfer/dagRuns/{quote(run_id, safe='')}/taskInstances/{task}"


def _task_log(api: Api, run_id: str, try_number: int = 1) -> str:
    """The score task's log as the UI shows it (the worker's part and the triggerer's)."""
    status, answer = api.call("GET", f"/api/v2/dags/video_style_transfer/dagRuns/{quote(run_id, safe='')}/"
                                     f"taskInstances/score_azureml/logs/{try_number}?full_content=true")
    assert status == 200, answer
    return json.dumps(answer)


@pytest.mark.timeout(1200)  # the standalone's start included
def test_a_run_through_a_restart_in_place_and_a_preemption_publishes_its_video(airflow_with_emulator,
                                                                               clip_factory, tmp_path):
    """backend=azureml end to end: the real operator, trigger, SAS tokens and MLClient; the
    service restarts the first job in place once its nodes are taken, then fails it with
    PreemptionError; the resubmitted job styles what is missing and the video is published."""
    stack, api, emulator = airflow_with_emulator
    emulator.runner.quota_nodes, emulator.runner.queue_seconds = None, 2  # queued long enough to be seen
    # preempted only once the trigger read the job Running, requeued until it read it Queued: on a
    # loaded machine a trigger polling every second (its first poll seconds after the submission) can
    # miss a stretch of a few seconds, where real ones last minutes
    emulator.runner.hold_until_read = True
    emulator.runner.script("preempt-requeue+preempt-fail", "complete")
    clip = clip_factory(seconds=2, fps="25", size=(96, 64))
    upload(stack, "accepted", "aml/clip.mp4", clip.read_bytes())  # as the watcher leaves it
    status, answer = api.trigger({"input_blob": "aml/clip.mp4", "backend": "azureml", "azureml_nodes": 1,
                                  "segment_frames": 8, "output_name": "aml/clip-styled.mp4",
                                  "delivery": "mezzanine"})  # the job must encode for it, or the stitch refuses
    assert status in (200, 201), answer
    run_id = answer["dag_run_id"]
    viewer, progress, deadline = Api(stack, user="viewer"), [], time.monotonic() + 900
    while _answers(lambda: api.runs()[run_id]["state"]) not in ("success", "failed"):  # a Viewer watching it
        assert time.monotonic() < deadline, f"run {run_id} did not end: {api.tasks(run_id)}"
        status, entry = _answers(lambda: viewer.call("GET", _task_path(run_id) + "/xcomEntries/progress")) or (0, None)
        if status == 200 and (not progress or entry["value"] != progress[-1]):
            progress.append(entry["value"])
        time.sleep(2)  # the API server (on SQLite here) serves the scheduler and triggerer too
    assert api.runs()[run_id]["state"] == "success", api.tasks(run_id)

    first, second = sorted(_jobs_of(emulator, run_id))
    assert emulator.runs[first].history.count("Queued") == 2 and emulator.runs[first].history[-1] == "Failed"
    assert emulator.runs[second].history[-1] == "Completed" and len(_jobs_of(emulator, run_id)) == 2
    out = stack.blob_client().get_container_client("videos-out")
    (tmp_path / "out.mp4").write_bytes(out.download_blob("aml/clip-styled.mp4").readall())
    assert ffmpeg.probe(tmp_path / "out.mp4").frames == ffmpeg.probe(clip).frames == 50
    manifest = json.loads(out.download_blob("aml/clip-styled.mp4.manifest.json").readall())
    scoring, cost = manifest["scoring"], manifest["cost"]
    encoded_by_the_ranks(tmp_path / "out.mp4", manifest, segments=-(-50 // 8), delivery="mezzanine")
    assert scoring["resubmits"] == 1 and scoring["job_names"] == [first, second]
    assert [job["job"] for job in cost["jobs"]] == scoring["job_names"] and cost["jobs"][0]["restarts"] == 1
    assert set(cost["node_seconds"]) == {"low_priority/Standard_NC4as_T4_v3"}
    rerun = emulator.runs[second].attempts[0].summary()
    assert rerun["skipped"] >= 2 and rerun["skipped"] + rerun["scored"] == rerun["segments"]  # only what was missing

    task_log = _task_log(api, run_id)
    assert "std_log.txt: [rank 0/1]" in task_log  # the job's own log, followed while it ran
    assert "sig=" not in task_log and DEV_KEY not in task_log  # no SAS, no key
    assert all(s["grant"] == "client_secret" and s["tenant"] == "tenant-vst" for s in emulator.workspace.sign_ins)
    logs = stack.blob_client(SYSTEM_ACCOUNT).get_container_client("logs")
    copied = [blob.name for blob in logs.list_blobs() if "/user_logs/" in blob.name]
    assert {first, second} <= {name.split("/")[-3] for name in copied}
    copies = [logs.download_blob(name).readall().decode(errors="replace") for name in copied]
    assert not [text for text in copies if "sig=" in text or DEV_KEY in text]  # the jobs' logs: no SAS, no key
    assert _run_stores(emulator) == []

    # issue 26: live progress from the done markers in the run's -out container, read as a Viewer
    values = [xcom_value(value) for value in progress]
    assert values and all(v["backend"] == "azureml" and v["frames_total"] == 50 for v in values), values
    assert [v["frames_done"] for v in values] == sorted(v["frames_done"] for v in values)
    assert any(0 < v["frames_done"] < 50 for v in values), values  # seen on its way, not only at the end
    assert values[-1]["text"] == "50 of 50 frames (100%), done"
    # the price before the wait beside what the run took: node-seconds of both jobs, at the configured price
    estimated, took = manifest["estimate"]["estimated"], manifest["estimate"]["actual"]
    assert (estimated["backend"], estimated["vm_size"], estimated["nodes"], estimated["price_per_node_hour"]) == \
        ("azureml", "Standard_NC4as_T4_v3", 1, 0.18), estimated
    assert estimated["node_seconds"] == estimated["score_seconds"] and estimated["cost"] is not None  # 1 node, priced
    assert took["node_seconds"] == round(sum(cost["node_seconds"].values()), 1) > 0
    assert took["cost"] == round(took["node_seconds"] / 3600 * 0.18, 4) and took["score_seconds"] > 0
    # the run's metrics, read back from the collector: the jobs' wait, node-seconds, the restart in place
    # and the preemption that resubmitted, and the published run
    received = {}
    for _ in range(30):  # UDP: the last ones may be a moment behind the run's end
        received = stack.collector.received("counters")
        if received.get("airflow.vst.runs.published"):
            break
        time.sleep(1)
    counters = {k.removeprefix("airflow.vst."): v for k, v in received.items() if k.startswith("airflow.vst.")}
    assert counters.get("runs.started.azureml") == counters.get("runs.published") == 1, counters
    assert counters.get("frames.styled.azureml") == 50, counters
    assert counters.get("azureml.preemptions") == 2 and counters.get("azureml.resubmissions") == 1, counters
    assert counters.get("azureml.node_seconds.low_priority.Standard_NC4as_T4_v3", 0) > 0, counters
    assert "airflow.vst.azureml.queue_wait" in stack.collector.received("timers")


@pytest.mark.timeout(1200)
def test_kill_retry_and_studio_cancel_through_airflow(airflow_with_emulator, clip_factory):
    stack, api, emulator = airflow_with_emulator
    emulator.runner.quota_nodes = 0  # no quota: the jobs wait in the queue throughout
    clip = clip_factory(seconds=1, fps="25", size=(96, 64))
    runs = {}
    for key in ("marked_failed", "retried"):
        upload(stack, "accepted", f"aml/{key}.mp4", clip.read_bytes())  # as the watcher leaves it
        status, answer = api.trigger({"input_blob": f"aml/{key}.mp4", "backend": "azureml", "azureml_nodes": 1,
                                      "segment_frames": 8})
        assert status in (200, 201), answer
        runs[key] = answer["dag_run_id"]
    for run_id in runs.values():
        wait_until(lambda r=run_id: _score_task(api, r).get("state") == "deferred" and _job_of(emulator, r), 420,
                 what=f"score_azureml of {run_id} deferred on a queued job")

    # 1. the run is marked failed while its job is queued: the triggerer's on_kill asks for the
    #    cancel and removes the run's datastores within Airflow's 30 s budget
    killed = _job_of(emulator, runs["marked_failed"])
    assert emulator.runner.status(killed) == "Queued"
    # its trigger polling it in the triggerer: a run marked failed before the triggerer picks the
    # trigger up leaves no trigger to cancel the job (seen once on a loaded machine)
    polled = _reads(emulator, killed)
    wait_until(lambda: _reads(emulator, killed) > polled, 120, every=0.5, what="the trigger polling the job")
    stores = {name for name in _run_stores(emulator)}
    status, answer = api.call("PATCH", f"/api/v2/dags/video_style_transfer/dagRuns/"
                              f"{quote(runs['marked_failed'], safe='')}", {"state": "failed"})
    assert status == 200, answer
    wait_until(lambda: emulator.workspace.cancel_requests, 60, every=0.2, what="the cancel asked for")
    asked = time.monotonic()
    wait_until(lambda: len(stores - set(_run_stores(emulator))) == 2, 30, every=0.2, what="its datastores removed")
    assert time.monotonic() - asked < 25  # not after the SDK's first 30 s poll of the cancel
    wait_until(lambda: emulator.runner.status(killed) == "Canceled", max(30 - (time.monotonic() - asked), 1), every=0.2,
             what="the queued job cancelled within on_kill's 30 s")
    assert emulator.workspace.cancel_requests == [killed]

    # 2. the task fails while its job is queued (the service refuses the trigger's token for its
    #    whole error budget): Airflow retries it, and the retry re-attaches to the same job
    job = _job_of(emulator, runs["retried"])
    _settle()
    emulator.workspace.fail(rf"GET .*/jobs/{job}$", 401, "ExpiredAuthenticationToken", "the access token expired",
                            count=6)
    wait_until(lambda: _score_task(api, runs["retried"]).get("try_number") == 2
             and _score_task(api, runs["retried"]).get("state") == "deferred", 240, what="the retry deferred")
    assert _job_of(emulator, runs["retried"]) == job and emulator.runner.status(job) == "Queued"  # no second job

    # 3. a person cancels the job in the studio: the task fails, and is not retried
    _settle()
    emulator.runner.studio_cancel(job)
    wait_until(lambda: _score_task(api, runs["retried"]).get("state") == "failed", 180, what="the task failed")
    task = _score_task(api, runs["retried"])
    assert task["try_number"] == 2 and task["max_tries"] > 2  # retries were left, none was used
    assert len(_jobs_of(emulator, runs["retried"])) == 1
    assert emulator.workspace.cancel_requests == [killed]  # the studio's cancel went around Airflow
    assert _run_stores(emulator) == []  # both runs cleaned up
    print(f"azureml via airflow: jobs {sorted(emulator.runs)}", file=sys.stderr)


@pytest.mark.timeout(900)
def test_housekeeping_cancels_only_the_jobs_no_task_waits_for(airflow_with_emulator, clip_factory):
    """The window the trigger's on_kill leaves: a job whose task stopped waiting before any
    triggerer picked its trigger up stays queued. Housekeeping asks Airflow for each unfinished
    job's task (the Task SDK's task states): a job whose task is gone or done is cancelled, the
    job of a task deferred on it stays."""
    stack, api, emulator = airflow_with_emulator
    emulator.runner.quota_nodes = 0
    clip = clip_factory(seconds=1, fps="25", size=(96, 64))
    upload(stack, "accepted", "aml/waited-for.mp4", clip.read_bytes())
    status, answer = api.trigger({"input_blob": "aml/waited-for.mp4", "backend": "azureml", "azureml_nodes": 1,
                                  "segment_frames": 8})
    assert status in (200, 201), answer
    run_id = answer["dag_run_id"]
    wait_until(lambda: _score_task(api, run_id).get("state") == "deferred" and _job_of(emulator, run_id), 420,
             what="score_azureml deferred on a queued job")
    waited_for = _job_of(emulator, run_id)
    probe_state = _answers(lambda: api.tasks(run_id)["probe"]["state"])
    assert probe_state == "success"
    done_task = emulator.left_queued("vst-left-by-a-done-task",
                                     {"airflow_run": f"video_style_transfer/{run_id}/probe"})
    no_task = emulator.left_queued("vst-left-by-a-deleted-run",
                                   {"airflow_run": "video_style_transfer/manual__deleted/score_azureml"})
    other = emulator.left_queued("not-ours", {"airflow_run": "video_style_transfer/manual__deleted/score_azureml"},
                                 experiment_name="someone-else")

    status, answer = api.trigger({}, run_id="manual__housekeeping-orphans", dag_id="housekeeping")
    assert status in (200, 201), answer
    wait_until(lambda: _answers(lambda: api.runs("housekeeping")["manual__housekeeping-orphans"]["state"])
             in ("success", "failed"), 300, what="the housekeeping run")
    assert api.runs("housekeeping")["manual__housekeeping-orphans"]["state"] == "success"
    wait_until(lambda: done_task.status == no_task.status == "Canceled", 60, every=0.5, what="the two jobs cancelled")
    assert emulator.runner.status(waited_for) == "Queued" and other.status == "Queued"
    assert waited_for not in emulator.workspace.cancel_requests and other.name not in emulator.workspace.cancel_requests
    assert _score_task(api, run_id).get("state") == "deferred"

    status, answer = api.call("PATCH", f"/api/v2/dags/video_style_transfer/dagRuns/{quote(run_id, safe='')}",
                              {"state": "failed"})  # done with it: its trigger cancels the job
    assert status == 200, answer
    wait_until(lambda: emulator.runner.status(waited_for) == "Canceled", 120, every=0.5,
             what="the waited-for job cancelled")
    emulator.runner.studio_cancel(other.name)
