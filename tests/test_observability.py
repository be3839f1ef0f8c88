"""What operators see besides Airflow's own pages, piece by piece: progress from the done
markers (on a worker's disk and in a run's -out container on Azurite), the estimate before a
run, and the product's metrics reaching a real StatsD daemon. No Airflow stack (a few seconds);
tests/test_prod.py checks the same on the running production topology."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from devstack import DEV_KEY, REPO, SYSTEM_ACCOUNT, Stack, connection_string, free_port
from scoring.media.segments import Segment, mark_done

sys.path.insert(0, str(REPO / "plugins"))
from observability import estimate as estimates  # noqa: E402
from observability import progress  # noqa: E402


def plan(*frames: int) -> dict:
    starts = [sum(frames[:i]) for i in range(len(frames))]
    return {"segments": [{"index": i, "first_frame": s, "frames": f} for i, (s, f) in enumerate(zip(starts, frames))]}


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_progress_counts_the_frames_of_done_segments_and_times_only_this_attempt(monkeypatch):
    """A resumed run starts with segments done: they count toward frames done, not toward the
    rate its ETA comes from. Before any segment of this attempt is done, the ETA is what is left
    of probe's estimate."""
    clock = Clock()
    monkeypatch.setattr(progress.time, "monotonic", clock)
    tracker = progress.Tracker.from_plan(plan(10, 10, 10, 5), "local", estimate=60)
    first = tracker.update(["seg-00000.h264.done"])  # resumed: one segment done before this attempt
    assert (first["frames_done"], first["frames_total"], first["percent"], first["eta_seconds"]) == (10, 35, 28.6, 60)
    clock.now += 20
    later = tracker.update(["x/seg-00000.h264.done", "x/seg-00001.h264.done", "x/seg-00003.h264.done"])
    assert later["frames_done"] == 25 and later["eta_seconds"] == 13  # 15 frames in 20 s, 10 left
    assert later["text"] == "25 of 35 frames (71%), about 13 s left"
    clock.now += 10
    done = tracker.update([f"seg-0000{i}.h264.done" for i in range(4)])
    assert (done["frames_done"], done["percent"], done["eta_seconds"], done["text"]) == \
        (35, 100.0, 0, "35 of 35 frames (100%), done")


def test_a_reporter_publishes_at_its_pace_and_survives_a_failed_publish(monkeypatch):
    clock, sent = Clock(), []
    monkeypatch.setattr(progress.time, "monotonic", clock)
    reporter = progress.Reporter(progress.Tracker.from_plan(plan(4), "local"), list, sent.append, every=10)
    assert reporter.tick(force=True)["frames_done"] == 0
    clock.now += 5
    assert reporter.tick() is None  # not yet
    clock.now += 5
    assert reporter.tick() is not None and len(sent) == 2

    def refuse(value):
        raise ConnectionError("API server away")

    reporter.publish = refuse
    clock.now += 10
    assert reporter.tick() is None  # logged, not raised: the score step goes on


def test_local_progress_from_the_markers_the_score_step_writes(tmp_path):
    segments = [Segment(0, 0, 6), Segment(1, 6, 6), Segment(2, 12, 3)]
    for segment in segments[:2]:
        (tmp_path / segment.name).write_bytes(b"h264")
        mark_done(tmp_path, segment, "work", 1.0)
    (tmp_path / ".seg-00002.h264.partial").write_bytes(b"half")  # in flight: not done
    tracker = progress.Tracker.from_plan(plan(6, 6, 3), "local")
    assert tracker.update(progress.local_markers(tmp_path))["frames_done"] == 12


@pytest.fixture(scope="module")
def azurite(tmp_path_factory):
    stack = Stack(tmp_path_factory.mktemp("azurite"), blob_port=free_port(), api_port=free_port())
    if not (REPO / "node_modules" / ".bin" / "azurite-blob").exists():
        pytest.skip("Azurite is not installed (make setup runs npm ci)")
    stack.start_azurite()
    yield stack
    stack.stop()


def test_azureml_progress_from_the_done_markers_in_the_runs_out_container(azurite, monkeypatch):
    """What the trigger does at each poll while the job runs: one listing of the run's -out
    container; the plan is read once from its -in container. Markers appear as the job writes them."""
    from storage.blobs import BlobStore

    monkeypatch.setenv("AIRFLOW_CONN_WASB_SYSTEM", json.dumps(
        {"conn_type": "wasb", "extra": {"connection_string": connection_string(SYSTEM_ACCOUNT, azurite.blob_port)}}))
    system = azurite.blob_client(SYSTEM_ACCOUNT)
    for name in ("run-p-in", "run-p-out"):
        system.create_container(name)
    system.get_blob_client("run-p-in", "segments/plan.json").upload_blob(json.dumps(plan(4, 4, 4, 2)))
    where = progress.job_where("run-p-in/segments", "run-p-out/styled", "wasb_system", estimate="95.0")
    job = progress.JobProgress(where)
    first = job.tick()
    assert first["eta_seconds"] in (94, 95) and first["text"].endswith("left")  # probe's estimate, until a segment is done
    seen = [first["frames_done"]]
    for index in range(4):  # the job finishes a segment: styled stream (not done yet), then its marker
        system.get_blob_client("run-p-out", f"styled/seg-{index:05d}.h264").upload_blob(b"h264")
        seen.append(job.tick()["frames_done"])
        system.get_blob_client("run-p-out", f"styled/seg-{index:05d}.h264.done").upload_blob(b"{}")
        seen.append(job.tick()["frames_done"])
    assert seen == [0, 0, 4, 4, 8, 8, 12, 12, 14]
    assert job.reporter.tracker.backend == "azureml" and BlobStore("wasb_system").info("run-p-out", "x") is None


def test_the_trigger_gets_where_to_look_from_the_operator_and_keeps_it_when_serialized():
    from aml_backend.trigger import AzureMLJobTrigger

    where = progress.job_where("run-a-in/segments", "run-a-out/styled", "wasb_system")
    trigger = AzureMLJobTrigger("vst-x-0", "azureml_default", carry={"progress": where})
    classpath, kwargs = trigger.serialize()
    again = AzureMLJobTrigger(**kwargs)
    assert progress.JobProgress.for_trigger(again).where == where == {
        "conn_id": "wasb_system", "segments": "run-a-in/segments", "styled": "run-a-out/styled"}
    assert progress.job_where("azureml://datastores/d/paths/s", "run-a-out/styled", "wasb_system") is None
    assert progress.job_where("a/s", "a/o", "wasb_system", "None") == progress.job_where("a/s", "a/o", "wasb_system")

    from aml_backend.operators import AzureMLScoreOperator

    dag = _video_dag()  # the DAG hands the operator probe's estimate of the score step
    assert dag.get_task("score_azureml").estimate_seconds == \
        "{{ ti.xcom_pull(task_ids='probe')['estimate']['score_seconds'] }}"
    assert "estimate_seconds" in AzureMLScoreOperator.template_fields
    assert progress.JobProgress.for_trigger(AzureMLJobTrigger("vst-x-0", "azureml_default")).tick() is None


def test_the_estimate_from_frames_size_rate_and_price():
    from aml_backend.cluster import ClusterConfig

    local = estimates.estimate(180, 640, 360, {"backend": "local", "style": "19"})
    assert local["score_seconds"] == pytest.approx(180 * 0.2304 * estimates.RATES["local"].seconds_per_megapixel_frame,
                                                   abs=0.1)
    model = estimates.estimate(180, 640, 360, {"backend": "local", "model_blob": "mine.pth"})
    assert model["score_seconds"] > local["score_seconds"]

    cluster = ClusterConfig.from_settings({"vm_size": "Standard_NC48ads_A100_v4", "price_per_node_hour": "7.35"})
    assert cluster.price_per_node_hour == 7.35
    gpu = estimates.estimate(3600, 1920, 1080, {"backend": "azureml", "style": "7", "azureml_nodes": 2}, cluster)
    rate = estimates.RATES["Standard_NC24ads_A100_v4"].seconds_per_megapixel_frame  # the same GPU's rate
    seconds = 3600 * 2.0736 * rate / 4  # 2 nodes of 2 GPUs
    assert gpu["rate"]["machine"] == "Standard_NC24ads_A100_v4" and gpu["rate"]["when"] == "estimated"
    assert gpu["score_seconds"] == pytest.approx(seconds, abs=0.1)
    assert gpu["node_seconds"] == pytest.approx(2 * seconds, abs=0.1)
    assert gpu["cost"] == pytest.approx(2 * seconds / 3600 * 7.35, abs=1e-3)
    unpriced = estimates.estimate(10, 64, 64, {"backend": "azureml"}, ClusterConfig())
    assert unpriced["cost"] is None and unpriced["vm_size"] == "Standard_NC4as_T4_v3"

    scored = {"seconds": 812.5, "cost": {"node_seconds": {"low_priority/Standard_NC48ads_A100_v4": 1500.0}}}
    both = estimates.actual(gpu, scored)
    assert both["estimated"] is gpu
    assert both["actual"] == {"score_seconds": 812.5, "node_seconds": 1500.0, "cost": round(1500 / 3600 * 7.35, 4)}
    assert estimates.actual(local, {"seconds": 3.0})["actual"] == {"score_seconds": 3.0}


def test_the_rates_table_in_the_docs_is_the_code():
    """docs/azureml.md shows every rate the estimate uses, with its date or "estimated"."""
    text = (REPO / "docs" / "azureml.md").read_text().split("## Cost", 1)[1]
    rows = {m[0]: m[1] for m in re.findall(r"^\| `([^`]+)` \| ([^|]+) \|", text, re.MULTILINE)}
    for name, rate in estimates.RATES.items():
        assert name in rows, f"docs/azureml.md has no row for {name}"
        assert rows[name].strip() == f"{rate.seconds_per_megapixel_frame:g}", (name, rows[name])
        assert re.search(rf"^\| `{name}` \|[^\n]*{re.escape(rate.when)}[^\n]*{re.escape(rate.machine)}", text,
                         re.MULTILINE), name


def test_the_products_metrics_reach_a_statsd_daemon(tmp_path):
    """Through Airflow's metrics client as the task runner sets it up from [metrics], to the
    StatsD daemon the tested topology runs (npm statsd): every product metric, by name."""
    from devstack.prod import ProdStack

    stack = ProdStack.on_free_ports(tmp_path)
    stack.root.mkdir(parents=True, exist_ok=True)
    stack.start_statsd()
    code = (
        "from airflow.sdk.observability import stats\n"
        "from airflow.sdk.observability.metrics import stats_utils\n"
        "stats.initialize(factory=stats_utils.get_stats_factory(), export_legacy_names=True)\n"
        "from observability import metrics\n"
        "metrics.run_started('local'); metrics.run_started('azureml'); metrics.run_published()\n"
        "metrics.run_quarantined(); metrics.frames_styled('local', 60, 30.0)\n"
        "metrics.azureml_job('Standard_NC4as_T4_v3', 'low_priority', 95.5, 240.0, 1)\n"
        "metrics.azureml_job('Standard_NC4as_T4_v3', 'low_priority', None, 60.0, 0)\n"
        "metrics.azureml_resubmitted(preempted=True); metrics.azureml_resubmitted(preempted=False)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "plugins")]),
               AIRFLOW__METRICS__STATSD_ON="True", AIRFLOW__METRICS__STATSD_HOST="127.0.0.1",
               AIRFLOW__METRICS__STATSD_PORT=str(stack.statsd_port), AIRFLOW__METRICS__STATSD_PREFIX="airflow",
               AIRFLOW_HOME=str(tmp_path / "airflow"))
    try:
        subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120, stdin=subprocess.DEVNULL)
        counters, timers = {}, {}
        for _ in range(50):  # UDP: give the daemon a moment
            counters, timers = stack.received("counters"), stack.received("timers")
            if "airflow.vst.azureml.resubmissions" in counters:
                break
        vst = {k.removeprefix("airflow.vst."): v for k, v in counters.items() if k.startswith("airflow.vst.")}
        assert vst == {"runs.started.local": 1, "runs.started.azureml": 1, "runs.published": 1,
                       "runs.quarantined": 1, "frames.styled.local": 60,
                       "azureml.node_seconds.low_priority.Standard_NC4as_T4_v3": 300,
                       "azureml.preemptions": 2, "azureml.resubmissions": 2}
        assert timers["airflow.vst.score.frame_time.local"] == 500  # ms per frame
        assert timers["airflow.vst.azureml.queue_wait"] == 95500
        assert DEV_KEY not in (stack.root / "statsd.log").read_text()
    finally:
        stack.stop()


def test_the_estimate_reads_the_cluster_as_the_score_task_does(monkeypatch):
    """probe prices a run on the cluster the score task will use: one reading of the connection
    and the Variable (``aml_backend.cluster.from_airflow``), which the hook calls too."""
    from aml_backend.cluster import ClusterConfig, configured_cluster
    from aml_backend.hook import AzureMLHook

    monkeypatch.setenv("AIRFLOW_CONN_AZUREML_DEFAULT", json.dumps({"conn_type": "azureml", "extra": {
        "cluster": {"vm_size": "standard_nc24ads_a100_v4", "max_nodes": 3, "price_per_node_hour": 3.1}}}))
    monkeypatch.delenv("AIRFLOW_VAR_VST_AZUREML_CLUSTER", raising=False)
    from_connection = estimates.azureml_cluster()
    assert from_connection == AzureMLHook().cluster_config() == ClusterConfig(
        vm_size="Standard_NC24ads_A100_v4", max_nodes=3, price_per_node_hour=3.1)
    monkeypatch.setenv("AIRFLOW_VAR_VST_AZUREML_CLUSTER", json.dumps({"name": "from-variable", "tier": "dedicated"}))
    assert estimates.azureml_cluster() == AzureMLHook().cluster_config() == ClusterConfig(name="from-variable",
                                                                                          tier="dedicated")
    # the form's words for the node count name that cluster too (they read only the connection)
    assert configured_cluster().startswith(ClusterConfig(name="from-variable", tier="dedicated").describe() +
                                           " (Variable vst_azureml_cluster)"), configured_cluster()
    monkeypatch.delenv("AIRFLOW_VAR_VST_AZUREML_CLUSTER")
    assert configured_cluster().startswith(from_connection.describe() + " (connection azureml_default)")
    monkeypatch.setenv("AIRFLOW_VAR_VST_AZUREML_CLUSTER", json.dumps({"tier": "spot"}))
    assert "cluster tier must be one of" in configured_cluster()
    assert estimates.azureml_cluster() is None  # said in a warning; the score task fails on it in one line
    with pytest.raises(ValueError, match="cluster tier must be one of"):
        AzureMLHook().cluster_config()


def _video_dag():
    import importlib.util

    spec = importlib.util.spec_from_file_location("dag_video_style_transfer", REPO / "dags" / "video_style_transfer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.video_style_transfer()


def test_each_tasks_xcom_tab_shows_its_result_once_and_the_score_tasks_their_progress():
    """A Viewer reads the progress on the score task's XCom tab: beside it only the task's result
    (``return_value``), not a row per key of the result (what ``@task`` does for a ``-> dict``);
    the same one row for every task whose result is a dict."""
    import typing

    dag = _video_dag()
    assert dag.get_task("score_local").multiple_outputs is False
    assert dag.get_task("score_azureml").multiple_outputs is False
    returning_dicts = [t for t in dag.tasks if getattr(t, "python_callable", None) is not None
                       and typing.get_type_hints(t.python_callable).get("return") is dict]
    assert {t.task_id for t in returning_dicts} >= {"probe", "split", "score_local", "stitch_and_publish"}
    assert [t.task_id for t in returning_dicts if t.multiple_outputs] == []
