"""Uploads in production, on a running standalone Airflow and Azurite: the inbox, the claim,
settings per upload, exactly one run per version at any volume, and what a poll costs.

One stack serves every test here. ``video_style_transfer`` stays paused, so the runs the
watcher starts only queue: what is checked is which runs exist and what they carry. The
processing of such a run is shown by ``airflow dags test`` with the very conf the watcher gave it.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from devstack import REPO, Stack, free_port

sys.path.insert(0, str(REPO / "plugins"))
from intake.inbox import processing_run_id  # noqa: E402

from .helpers import Api, wait_until  # noqa: E402

pytestmark = pytest.mark.skipif(not (REPO / "node_modules" / ".bin" / "azurite-blob").exists(),
                                reason="Azurite is not installed (make setup runs npm ci)")
BURST = 200  # the test's burst; bench/uploads.py measures 1,500 (see docs/uploads.md)
BATCH = 80  # uploads per watcher run here, so that the burst takes several runs
FIGURES: list[str] = []


def report(line: str) -> None:
    print(line, flush=True)
    FIGURES.append(line)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = Stack(tmp_path_factory.mktemp("uploads"), blob_port=free_port(), api_port=free_port())
    stack.extra_env = {"AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True", "VST_WATCH_POLL_SECONDS": "1",
                       "VST_INBOX_BATCH": str(BATCH)}
    stack.start_azurite()
    try:
        stack.create_containers()
        stack.prepare_airflow()
        stack.start_airflow()
        stack.api = Api(stack)
        wait_until(lambda: stack.api.has_dag("blob_watcher"), 180, "the DAGs")
        yield stack
    finally:
        stack.stop()


def runs(stack, dag_id: str = "video_style_transfer") -> dict[str, dict]:
    return stack.api.runs(dag_id)


def run_conf(stack, run_id: str) -> dict:
    from urllib.parse import quote

    status, run = stack.api.call("GET", f"/api/v2/dags/video_style_transfer/dagRuns/{quote(run_id, safe='')}")
    assert status == 200, status
    return run["conf"]


def choose_backend(conf: dict) -> str:
    """The branch ``choose_backend`` takes in a run with this conf: the params merged and checked
    as the task runner does, then the task's own callable."""
    from unittest import mock

    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk.definitions.param import process_params

    dag = DagBag(str(REPO / "dags")).dags["video_style_transfer"]
    task = dag.get_task("choose_backend")
    params = process_params(dag, task, conf, suppress_exception=False)
    module = sys.modules[task.python_callable.__module__]
    with mock.patch.object(module, "get_current_context", lambda: {"params": params}):
        return task.python_callable()


def stop_watcher(stack) -> None:
    """Pause the watcher and end its waiting run (a paused DAG's running run would wait on)."""
    from urllib.parse import quote

    stack.api.pause("blob_watcher")
    for run_id, run in runs(stack, "blob_watcher").items():
        if run["state"] in ("running", "queued"):
            status, _ = stack.api.call("PATCH", f"/api/v2/dags/blob_watcher/dagRuns/{quote(run_id, safe='')}",
                                       {"state": "success"})
            assert status == 200, status


def upload(stack, name: str, data: bytes, metadata: dict | None = None) -> str:
    props = stack.blob_client().get_blob_client("videos-in", name).upload_blob(data, overwrite=True,
                                                                              metadata=metadata)
    return str(props["etag"]).strip('"')


def names(stack, container: str) -> set[str]:
    return {b.name for b in stack.blob_client().get_container_client(container).list_blobs()}


def test_settings_come_from_metadata_then_the_variable_then_the_form(stack, clip_factory):
    stack.airflow("variables", "set", "video_style_transfer_defaults", json.dumps({"ranks": 1, "temporal": 0.3}))
    stack.api.pause("blob_watcher", False)
    clip = clip_factory(seconds=1, fps="25", size=(96, 64)).read_bytes()
    etag = upload(stack, "meta/seven.mp4", clip, {"style": "7", "temporal": "0.7"})
    aml = upload(stack, "meta/cloud.mp4", clip, {"backend": "azureml", "azureml_nodes": "3"})
    run_id = processing_run_id("videos-in", "meta/seven.mp4", etag)
    aml_run = processing_run_id("videos-in", "meta/cloud.mp4", aml)
    wait_until(lambda: {run_id, aml_run} <= set(runs(stack)), 120, "the watcher to start both runs")

    conf = run_conf(stack, run_id)
    assert (conf["style"], conf["temporal"], conf["ranks"], conf["backend"]) == ("7", 0.7, 1, "local")
    assert {k: conf["settings_from"][k] for k in ("style", "temporal", "ranks", "backend")} == {
        "style": "metadata", "temporal": "metadata", "ranks": "variable", "backend": "default"}
    # claimed: gone from the inbox, in accepted, the run pinned to a snapshot of exactly those bytes
    assert "meta/seven.mp4" not in names(stack, "videos-in") and "meta/seven.mp4" in names(stack, "accepted")
    pinned = stack.blob_client().get_blob_client("accepted", "meta/seven.mp4", snapshot=conf["input_version"])
    assert pinned.download_blob().readall() == clip

    cloud = run_conf(stack, aml_run)
    assert (cloud["backend"], cloud["azureml_nodes"], cloud["settings_from"]["backend"]) == ("azureml", 3, "metadata")
    assert choose_backend(cloud) == "score_azureml" and choose_backend(conf) == "score_local"
    stack.seven = (run_id, conf, clip)


def test_bad_metadata_is_quarantined_with_the_key_named(stack):
    etag = upload(stack, "meta/bad.mp4", b"not looked at", {"colour": "red"})
    wait_until(lambda: "meta/bad.mp4.reason.json" in names(stack, "quarantine"), 60, "the quarantine")
    reason = json.loads(stack.blob_client().get_blob_client("quarantine", "meta/bad.mp4.reason.json")
                        .download_blob().readall())
    assert "'colour' is not a setting" in reason["reason"] and "\n" not in reason["reason"]
    assert reason["input"] == "videos-in/meta/bad.mp4"
    etag_bad = upload(stack, "meta/worse.mp4", b"x", {"temporal": "lots"})
    wait_until(lambda: "meta/worse.mp4.reason.json" in names(stack, "quarantine"), 60, "the quarantine")
    reason = json.loads(stack.blob_client().get_blob_client("quarantine", "meta/worse.mp4.reason.json")
                        .download_blob().readall())
    assert reason["reason"].startswith('metadata: temporal="lots" is refused')
    assert {"meta/bad.mp4", "meta/worse.mp4"} & (names(stack, "videos-in") | names(stack, "accepted")) == set()
    started = set(runs(stack))
    assert not {processing_run_id("videos-in", "meta/bad.mp4", etag),
                processing_run_id("videos-in", "meta/worse.mp4", etag_bad)} & started


@pytest.mark.timeout(1200)  # a 60-s idle watch and many `airflow` commands, each slow on a busy machine
def test_never_stuck_lost_state_existing_run_and_a_concurrent_sweep(stack, clip_factory):
    """A version that already has a run (here made by hand), another without one, the sweep
    started at the same moment: each version has one run, the inbox empties, and over the next
    60 s the watcher starts at most 2 runs."""
    stop_watcher(stack)
    stack.api.call("DELETE", "/api/v2/variables/blob_watcher_state")  # the old watermark: gone for good
    clip = clip_factory(seconds=1, fps="25", size=(96, 64)).read_bytes()
    has_run = upload(stack, "stuck/has-run.mp4", clip)
    fresh = upload(stack, "stuck/fresh.mp4", clip + b"\x00")
    made = processing_run_id("videos-in", "stuck/has-run.mp4", has_run)
    expected = {made, processing_run_id("videos-in", "stuck/fresh.mp4", fresh)}
    assert stack.api.trigger({"input_blob": "stuck/has-run.mp4"}, run_id=made)[0] == 200
    before = set(runs(stack))
    stack.api.pause("blob_sweep", False)
    assert stack.api.trigger({}, dag_id="blob_sweep")[0] == 200
    stack.api.pause("blob_watcher", False)
    wait_until(lambda: not names(stack, "videos-in"), 120, "the inbox to empty")
    assert set(runs(stack)) - before == expected - {made}
    watcher_before = set(runs(stack, "blob_watcher"))
    time.sleep(60)
    watcher_after = runs(stack, "blob_watcher")
    new = set(watcher_after) - watcher_before
    assert len(new) <= 2, sorted(new)
    assert set(runs(stack)) - before == expected - {made}  # nothing more: no second run, no loop
    assert {"stuck/has-run.mp4", "stuck/fresh.mp4"} <= names(stack, "accepted")
    sweeps = wait_until(lambda: (found := runs(stack, "blob_sweep")) and all(
        r["state"] in ("success", "failed") for r in found.values()) and found, 180, "the sweeps to finish")
    assert all(r["state"] == "success" for r in sweeps.values()), sweeps
    stack.api.pause("blob_sweep")
    report(f"never stuck: state deleted, a run made by hand, a sweep at the same moment -> one run per version, "
           f"inbox empty; {len(new)} watcher run(s) started in the following 60 s")


@pytest.mark.timeout(1200)  # a 60-s idle watch and many `airflow` commands, each slow on a busy machine
def test_a_burst_drains_one_run_per_version(stack):
    """More uploads at once than one watcher run takes in: all of them get exactly one run."""
    inbox = stack.blob_client().get_container_client("videos-in")
    with ThreadPoolExecutor(8) as pool:
        etags = dict(pool.map(lambda i: (f"burst/{i:04d}.mp4", str(inbox.get_blob_client(
            f"burst/{i:04d}.mp4").upload_blob(f"tiny {i}".encode())["etag"]).strip('"')), range(BURST)))
    uploaded = time.monotonic()
    expected = {processing_run_id("videos-in", name, etag) for name, etag in etags.items()}
    wait_until(lambda: not names(stack, "videos-in"), 600, "the inbox to drain", every=2)
    drained = time.monotonic() - uploaded
    started = {r: v for r, v in runs(stack).items() if r in expected}
    assert set(started) == expected
    assert {v["state"] for v in started.values()} == {"queued"}
    burst_runs = [r for r in runs(stack) if r.startswith("upload__burst-")]
    assert len(burst_runs) == BURST  # none twice
    watchers = runs(stack, "blob_watcher")
    assert not [r for r in watchers.values() if r["state"] == "failed"], watchers
    report(f"burst: {BURST} uploads at once (batches of {BATCH}) -> {len(started)} queued runs, one per version, "
           f"inbox drained in {drained:.0f} s ({BURST / drained:.1f} uploads/s)")


def test_an_upload_deleted_while_being_taken_in_is_passed_over(stack, monkeypatch):
    """Listed, then deleted by its owner before the claim: no run, no copy, and the watcher goes
    on with the rest instead of failing."""
    from intake.inbox import Upload, take_in_one
    from storage.blobs import DATA_CONN, SYSTEM_CONN, BlobStore

    class NoRuns:
        def start(self, run_id, conf):
            raise AssertionError(f"a run was started for a deleted upload: {run_id}")

    monkeypatch.setenv("AIRFLOW_CONN_WASB_DATA", stack.env()["AIRFLOW_CONN_WASB_DATA"])
    monkeypatch.setenv("AIRFLOW_CONN_WASB_SYSTEM", stack.env()["AIRFLOW_CONN_WASB_SYSTEM"])
    data, system = BlobStore(DATA_CONN), BlobStore(SYSTEM_CONN)
    gone = Upload("gone/deleted meanwhile.mp4", '0x8DE2A0000000000', 5, {})
    assert take_in_one(data, system, NoRuns(), gone, {}, has_run=False) == "changed_meanwhile"
    assert take_in_one(data, system, NoRuns(), gone, {}, has_run=True) == "changed_meanwhile"
    assert "gone/deleted meanwhile.mp4" not in names(stack, "accepted") | names(stack, "quarantine")


def test_every_bad_setting_is_quarantined_before_anything_runs(stack):
    """A value that the form's schema, the scoring command's rules or the styles container
    refuses: each upload goes to quarantine with its one-line reason, nothing reaches accepted,
    no run starts (a style that does not exist used to run up to score_local)."""
    stack.api.pause("blob_watcher", False)
    refused = {
        "bad/no-such-style.mp4": ({"style": "30"}, 'metadata: style="30" is refused'),
        "bad/zero-weight.mp4": ({"style": "3:0"}, "metadata: style=\"3:0\" is refused: style spec '3:0' has no "
                                "positive weight"),
        "bad/strong.mp4": ({"style_strength": "1.5"}, "metadata: style_strength=1.5 is refused"),
        "bad/no-picture.mp4": ({"style_image": "nope.jpg"}, "style_image styles/nope.jpg does not exist"),
        "bad/no-model.mp4": ({"model_blob": "nope.pth"}, "model_blob styles/nope.pth does not exist"),
        "bad/both.mp4": ({"style_image": "a.jpg", "model_blob": "b.pth"},
                         "settings: style_image and model_blob each replace the style: give only one"),
        "bad/escape.mp4": ({"output_name": "../up.mp4"}, 'metadata: output_name="../up.mp4" is refused'),
    }
    etags = {name: upload(stack, name, b"never looked at", metadata) for name, (metadata, _) in refused.items()}
    wait_until(lambda: {n + ".reason.json" for n in refused} <= names(stack, "quarantine"), 120, "the quarantine")
    for name, (_, words) in refused.items():
        reason = json.loads(stack.blob_client().get_blob_client("quarantine", name + ".reason.json")
                            .download_blob().readall())["reason"]
        assert reason.startswith(words) and "\n" not in reason, (name, reason)
    assert not set(refused) & (names(stack, "videos-in") | names(stack, "accepted"))
    assert not {processing_run_id("videos-in", n, e) for n, e in etags.items()} & set(runs(stack))


def test_an_upload_that_cannot_be_copied_is_quarantined_after_its_retries_and_the_rest_go_on(stack):
    """A batch of 21 whose claim copy fails for one (a lease on its name in accepted: the
    service refuses the copy with 412): that one is tried 3 times, then quarantined with the
    service's reason; the 20 others get their runs in the same watcher run, and the inbox empties."""
    from azure.storage.blob import BlobLeaseClient

    held = stack.blob_client().get_blob_client("accepted", "batch/leased.mp4")
    held.upload_blob(b"an older version, leased by some tool", overwrite=True)
    lease = BlobLeaseClient(held)
    lease.acquire(-1)
    try:
        stack.api.pause("blob_watcher", False)
        inbox = stack.blob_client().get_container_client("videos-in")
        names_ = [f"batch/{i:02d}.mp4" for i in range(20)] + ["batch/leased.mp4"]
        with ThreadPoolExecutor(8) as pool:
            etags = dict(pool.map(lambda n: (n, str(inbox.get_blob_client(n).upload_blob(
                f"upload {n}".encode(), overwrite=True)["etag"]).strip('"')), names_))
        wait_until(lambda: not names(stack, "videos-in") & set(names_), 180, "the batch to leave the inbox", every=2)
        started = set(runs(stack))
        assert {processing_run_id("videos-in", n, etags[n]) for n in names_[:20]} <= started
        assert processing_run_id("videos-in", "batch/leased.mp4", etags["batch/leased.mp4"]) not in started
        reason = json.loads(stack.blob_client().get_blob_client("quarantine", "batch/leased.mp4.reason.json")
                            .download_blob().readall())
        assert reason["reason"].startswith("not taken in after 3 tries: ") and "lease" in reason["reason"], reason
        assert reason["input"] == "videos-in/batch/leased.mp4" and "\n" not in reason["reason"]
        assert stack.blob_client().get_blob_client("quarantine", "batch/leased.mp4").download_blob().readall() == \
            b"upload batch/leased.mp4"  # the upload itself, byte for byte
        assert held.download_blob().readall() == b"an older version, leased by some tool"  # untouched
    finally:
        lease.release()
    report("isolation: one upload of 21 whose copy the service refuses: quarantined after 3 tries, 20 runs started")


def test_the_processed_archive_is_not_listed(stack):
    """What a poll costs does not grow with what was processed: the sensor's trigger lists only
    the inbox, and processed uploads are in accepted. With 2,000 of them there, a poll of the
    empty inbox costs what listing any other empty container of the account costs (Azurite
    scans the whole account for every listing, so that floor itself grows: docs/uploads.md)."""
    import asyncio
    import os
    import statistics

    from airflow.providers.microsoft.azure.triggers.wasb import WasbPrefixSensorTrigger

    os.environ["AIRFLOW_CONN_WASB_DATA"] = stack.env()["AIRFLOW_CONN_WASB_DATA"]

    def poll_seconds(container: str, polls: int = 10) -> float:
        async def measure():
            from airflow.providers.microsoft.azure.hooks.wasb import WasbAsyncHook

            hook = WasbAsyncHook(wasb_conn_id="wasb_data")
            async with await hook.get_async_conn():
                started = time.perf_counter()
                for _ in range(polls):
                    assert not await hook.check_for_prefix_async(container_name=container, prefix="")
                return (time.perf_counter() - started) / polls

        return asyncio.run(measure())

    def inbox_and_floor() -> tuple[float, float]:
        """Median seconds per poll of the inbox and of another empty container, measured in turns."""
        rounds = [(poll_seconds("videos-in"), poll_seconds("nothing-here")) for _ in range(5)]
        return statistics.median(r[0] for r in rounds), statistics.median(r[1] for r in rounds)

    WasbPrefixSensorTrigger("videos-in", "", "wasb_data")  # the trigger the sensor defers to polls this call
    stop_watcher(stack)
    stack.blob_client().create_container("nothing-here")
    empty, _ = inbox_and_floor()
    accepted = stack.blob_client().get_container_client("accepted")
    before = len(names(stack, "accepted"))
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: accepted.upload_blob(f"archive/{i:05d}.mp4", b"x"), range(2000)))
    assert len(names(stack, "accepted")) == before + 2000
    full, floor = inbox_and_floor()
    report(f"poll cost: {empty * 1000:.1f} ms with nothing processed, {full * 1000:.1f} ms with "
           f"{before + 2000} processed uploads in accepted; another empty container then: {floor * 1000:.1f} ms")
    assert full <= 1.5 * floor + 0.002


def test_the_watchers_trigger_waits_quietly(stack, monkeypatch):
    """The provider's trigger logs a line at INFO on every empty poll (every second here, in the
    triggerer's log and the task's); the watcher's, otherwise the same, says nothing."""
    import asyncio

    import structlog.testing
    from airflow.providers.microsoft.azure.triggers.wasb import WasbPrefixSensorTrigger
    from intake.inbox import InboxTrigger

    monkeypatch.setenv("AIRFLOW_CONN_WASB_DATA", stack.env()["AIRFLOW_CONN_WASB_DATA"])
    stack.blob_client().get_container_client("quiet-here").create_container()

    def lines_logged(trigger) -> int:
        async def wait_a_while():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(anext(trigger.run()), 2.5)

        with structlog.testing.capture_logs() as logged:
            asyncio.run(wait_a_while())
        return len([e for e in logged if e.get("log_level") not in ("debug", None)])

    assert InboxTrigger("quiet-here", "", "wasb_data", poke_interval=0.5).serialize()[0] == "intake.inbox.InboxTrigger"
    assert lines_logged(WasbPrefixSensorTrigger("quiet-here", "", "wasb_data", poke_interval=0.5)) >= 3
    assert lines_logged(InboxTrigger("quiet-here", "", "wasb_data", poke_interval=0.5)) == 0


def test_style_from_metadata_reaches_the_output_name_from_the_pinned_version(stack, clip_factory):
    """The watcher's conf for ``--metadata style=7``, run as it is after the same name was
    uploaded again and taken in over ``accepted/<name>``: videos-out/<name>.style-7.mp4 holds
    the version the run was started for."""

    from .test_dags import dags_test

    run_id, conf, clip = stack.seven
    stack.api.pause("blob_watcher", False)
    again = upload(stack, "meta/seven.mp4", clip_factory(seconds=2, fps="25", size=(96, 64)).read_bytes())
    wait_until(lambda: processing_run_id("videos-in", "meta/seven.mp4", again) in runs(stack), 120, "the re-upload")
    assert stack.blob_client().get_blob_client("accepted", "meta/seven.mp4").download_blob().readall() != clip
    assert dags_test(stack, "video_style_transfer", conf) == "success"
    out = stack.blob_client().get_blob_client("videos-out", "meta/seven.style-7.mp4")
    assert out.get_blob_properties().metadata["source_blob"] == "meta/seven.mp4"
    manifest = json.loads(stack.blob_client().get_blob_client("videos-out", "meta/seven.style-7.mp4.manifest.json")
                          .download_blob().readall())
    assert manifest["input"]["snapshot"] == conf["input_version"] and manifest["settings"]["temporal"] == 0.7
    assert manifest["input"]["frames"] == manifest["output"]["frames"] == 25  # the 1-s version, not the 2-s one



def test_a_viewer_sees_runs_but_changes_nothing(stack):
    """The API server's auth manager: a Viewer sees runs, cannot trigger or pause; an Admin can."""
    viewer, admin, nobody = Api(stack, "viewer"), Api(stack, "admin"), Api(stack, user=None)
    path, run = "/api/v2/dags/video_style_transfer/dagRuns", {"logical_date": None, "conf": {"input_blob": "x.mp4"}}
    assert viewer.call("GET", path)[0] == 200
    assert viewer.call("POST", path, run)[0] == 403
    assert viewer.call("PATCH", "/api/v2/dags/blob_sweep", {"is_paused": True})[0] == 403
    assert nobody.call("GET", path)[0] == 401  # no token, no access
    assert admin.call("POST", path, run)[0] == 200


def test_a_missing_container_fails_the_watcher_in_one_line_until_init_makes_it(stack):
    """Last here (it deletes accepted): a watcher run with an upload pending fails, its log
    naming the container in one line (it used to succeed, counting the upload "changed
    meanwhile"); `python -m deployment init` makes the container and the upload goes through."""
    stack.api.pause("blob_watcher", False)
    stack.blob_client().delete_container("accepted")
    before = {r for r, run in runs(stack, "blob_watcher").items() if run["state"] == "failed"}
    etag = upload(stack, "late/clip.mp4", b"waits for its container")
    failed = wait_until(lambda: {r for r, run in runs(stack, "blob_watcher").items() if run["state"] == "failed"}
                      - before, 180, "a failed watcher run")
    line = ("container accepted does not exist in storage account devstoreaccount1: `python -m deployment init` "
            "makes every container the pipeline needs")
    logs = [p.read_text(errors="replace") for run_id in failed
            for p in (stack.airflow_home / "logs").glob(f"dag_id=blob_watcher/run_id={run_id}/**/*") if p.is_file()]
    assert any(line in log for log in logs), logs[-1][-3000:] if logs else "no log"
    assert "late/clip.mp4" in names(stack, "videos-in")  # nothing lost: it waits
    made = stack.deployment_init().stdout
    assert "containers made: devstoreaccount1/accepted" in made, made
    wait_until(lambda: processing_run_id("videos-in", "late/clip.mp4", etag) in runs(stack), 180, "its run")
    assert "late/clip.mp4" in names(stack, "accepted") and "late/clip.mp4" not in names(stack, "videos-in")
    again = stack.deployment_init().stdout
    assert "containers kept" in again and "pool scoring kept with 1 slot(s)" in again, again
