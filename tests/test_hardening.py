"""What an attacker or a careless operator could do to the pipeline, and what it does back:
untrusted uploads, blob names chosen by a token holder, secrets, two runs of one input,
leftovers. Against real Azurite and the real scoring commands; no Airflow run."""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile

import pytest

from devstack import REPO, SYSTEM_ACCOUNT, Stack, free_port

from .helpers import urlopen

os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="airflow-home-"))
sys.path.insert(0, str(REPO / "plugins"))
from pipeline import tasks  # noqa: E402
from storage import (
    blobs,  # noqa: E402
    scratch,  # noqa: E402
)
from storage.blobs import ACCEPTED, DATA_CONN, OUTPUTS, QUARANTINE, STYLES, SYSTEM_CONN, BlobStore  # noqa: E402

PARAMS = {"style": "19", "model_blob": None, "max_side": None, "segment_frames": 48, "precision": "auto",
          "ranks": 1, "backend": "local", "max_duration": 3600}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Azurite with both accounts, their connections and a scratch folder in this process."""
    if not (REPO / "node_modules" / ".bin" / "azurite-blob").exists():
        pytest.skip("Azurite is not installed (make setup runs npm ci)")
    stack = Stack(tmp_path_factory.mktemp("stack"), blob_port=free_port(), api_port=free_port())
    azurite = stack.start_azurite()
    stack.create_containers()
    env = stack.env()
    patch = pytest.MonkeyPatch()
    for name in ("AIRFLOW_CONN_WASB_DATA", "AIRFLOW_CONN_WASB_SYSTEM", "VST_SCRATCH"):
        patch.setenv(name, env[name])
    yield stack
    patch.undo()
    azurite.kill()  # nothing to keep: Stack.stop() would wait 10 s for it to ignore SIGTERM
    azurite.wait()
    stack.stop()


def _upload(stack, container: str, name: str, data: bytes, account=None) -> str:
    client = stack.blob_client(*([account] if account else []))
    return client.get_blob_client(container, name).upload_blob(data, overwrite=True)["etag"].strip('"')


# --------------------------------------------------------------------------- untrusted input


def test_a_playlist_upload_is_quarantined_in_one_line_input_kept(stack, clip_factory):
    clip = clip_factory(seconds=1, fps="25")
    playlist = f"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1.0,\nfile:{clip}\n#EXT-X-ENDLIST\n".encode()
    _upload(stack, ACCEPTED, "evil/list.m3u8", playlist)
    with pytest.raises(tasks.BadInput) as caught:
        tasks.probe(PARAMS | {"input_blob": "evil/list.m3u8"}, "manual__playlist")
    assert str(caught.value) == ("evil/list.m3u8: list.m3u8 is a playlist (HLS .m3u8), not a video: upload the "
                                 "video file itself (copied to quarantine/evil/list.m3u8)")
    data = BlobStore(DATA_CONN)
    assert data.read_text(QUARANTINE, "evil/list.m3u8") == playlist.decode()
    assert "is a playlist" in json.loads(data.read_text(QUARANTINE, "evil/list.m3u8.reason.json"))["reason"]
    assert data.read_text(ACCEPTED, "evil/list.m3u8") == playlist.decode()


def test_a_name_too_long_for_its_result_is_still_checked_and_quarantined(stack):
    """Looking for a published result first must not skip the checks of the upload itself:
    a not-a-video whose name leaves no room for the result's suffix is quarantined for what
    it is (a name near 1024 characters, as in the reliability suite)."""
    name = "long/" + "x" * 1010 + ".mp4"
    _upload(stack, ACCEPTED, name, b"not a video\n")
    with pytest.raises(tasks.BadInput, match="is not a video or image we can read"):
        tasks.probe(PARAMS | {"input_blob": name}, "manual__long-name")
    assert BlobStore(DATA_CONN).read_text(QUARANTINE, name) == "not a video\n"


def test_an_oversized_model_is_refused_before_download(stack, monkeypatch, tmp_path):
    monkeypatch.setattr(tasks, "MAX_MODEL_BYTES", 1024**2)
    _upload(stack, STYLES, "big.pth", b"\0" * (1024**2 + 1))
    params = PARAMS | {"model_blob": "big.pth", "input_blob": "not-there.mp4"}
    line = "model_blob styles/big.pth is 1 MiB; the limit is 1 MiB (a TransformerNet .pth is a few MB)"
    with pytest.raises(tasks.BadInput) as caught:
        tasks.probe(params, "manual__big-model")  # refused before the input is even looked at
    assert str(caught.value) == line
    with pytest.raises(tasks.BadInput) as caught:
        tasks.fetch_model(params, tmp_path)
    assert str(caught.value) == line and list(tmp_path.iterdir()) == []


def test_sync_down_refuses_blob_names_that_leave_the_folder(stack, tmp_path):
    work = "run-hardening-out"
    system = BlobStore(SYSTEM_CONN)
    system.ensure_container(work)
    outside = tmp_path / "outside" / "planted.txt"
    _upload(stack, work, "styled/0001.h264", b"fine", account=SYSTEM_ACCOUNT)
    _upload(stack, work, "styled/" + str(outside), b"planted", account=SYSTEM_ACCOUNT)  # styled//tmp/...
    with pytest.raises(blobs.InvalidBlobName, match=r"^run-hardening-out/styled//.* cannot be fetched: "):
        system.sync_down(work, "styled/", tmp_path / "styled")
    assert not outside.exists() and not (tmp_path / "styled").exists()


def test_probe_finds_the_published_output_before_downloading_the_input(stack, clip_factory):
    name = "again/clip.mp4"
    etag = _upload(stack, ACCEPTED, name, clip_factory(seconds=1, fps="25").read_bytes())
    params = PARAMS | {"input_blob": name}
    output = tasks.default_output_name(name, "19", None)
    _upload(stack, OUTPUTS, output, b"an earlier result")
    stack.blob_client().get_blob_client(OUTPUTS, output).set_blob_metadata(
        {"source_blob": name, "source_etag": etag, "settings": tasks.settings_digest(params),
         "run_id": "earlier-run"})
    run_id = "manual__again"
    with pytest.raises(tasks.AlreadyDone, match="published by run earlier-run: nothing to do"):
        tasks.probe(params, run_id)
    assert list(scratch.scratch(scratch.run_key(run_id)).iterdir()) == []


# --------------------------------------------------------------------------- secrets


def test_scoring_steps_see_none_of_the_workers_credentials(stack, clip_factory, tmp_path, monkeypatch):
    """A ``sitecustomize`` on the step's PYTHONPATH writes down the environment it started with."""
    seen = tmp_path / "environment.json"
    (tmp_path / "sitecustomize.py").write_text(
        f"import json, os\njson.dump(dict(os.environ), open({str(seen)!r}, 'w'))\n")
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}{REPO}")
    monkeypatch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "postgresql://airflow:db-password@db/airflow")
    monkeypatch.setenv("AZURE_CLIENT_SECRET", "client-secret")
    assert tasks.scoring("probe", str(clip_factory(seconds=1, fps="25")))["kind"] == "video"
    environment = json.loads(seen.read_text())
    assert environment["PATH"] == os.environ["PATH"] and environment["VST_SCRATCH"] == os.environ["VST_SCRATCH"]
    leaked = sorted(name for name in environment if name.startswith(("AIRFLOW", "AZURE")))
    assert leaked == [] and os.environ["AIRFLOW_CONN_WASB_DATA"] not in json.dumps(environment)


class Receiver:
    """A local HTTP server that keeps every request it gets."""

    def __init__(self):
        import threading
        from http.server import BaseHTTPRequestHandler, HTTPServer

        self.received: list[tuple[dict, bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.received.append((dict(self.headers), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", free_port()), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"


@pytest.fixture
def receiver():
    receiver = Receiver()
    yield receiver
    receiver.server.shutdown()


@pytest.fixture
def notification_log(monkeypatch):
    """What the notifications module logs, as a list of lines (Airflow's own logging may
    write to a stream an earlier test captured)."""
    import logging

    from pipeline import notifications

    lines = []

    class Keep(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())

    logger = logging.getLogger("tests.notifications")
    logger.handlers, logger.propagate = [Keep()], False
    logger.setLevel(logging.DEBUG)
    monkeypatch.setattr(notifications, "log", logger)
    return lines


def test_webhook_without_a_key_is_not_sent(receiver, monkeypatch, notification_log):
    from pipeline import notifications

    monkeypatch.setenv("AIRFLOW_CONN_VIDEO_WEBHOOK", json.dumps({"conn_type": "http", "host": receiver.url}))
    assert notifications.send_webhook({"status": "succeeded"}) is False
    assert receiver.received == []
    assert notification_log == ["connection video_webhook has no password (the signing key): webhook not sent"]


def test_a_non_ascii_signature_header_is_just_wrong():
    import time

    from pipeline.notifications import verify_signature

    assert verify_signature("key", b"{}", f"t={int(time.time())},sha256=\u00e9t\u00e9") is False


@pytest.fixture
def mailbox():
    from aiosmtpd.controller import Controller

    messages = []

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            messages.append(envelope)
            return "250 OK"

    controller = Controller(Handler(), hostname="127.0.0.1", port=free_port())
    controller.start()
    yield controller.port, messages
    controller.stop()


def _smtp(port: int, **extra) -> str:
    return json.dumps({"conn_type": "smtp", "host": "127.0.0.1", "port": port,
                       "extra": {"disable_tls": True, "disable_ssl": True, **extra}})


def _context(**params) -> dict:
    return {"params": {"input_blob": "a/clip.mp4", "style": "19", **params}, "run_id": "manual__mail", "ti": None}


def test_email_comes_from_the_configured_sender(stack, mailbox, monkeypatch):
    from pipeline import notifications

    port, messages = mailbox
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", _smtp(port, from_email="styles@example.org"))
    notifications.RunNotifier("failed").notify(_context(notify_email="ops@example.com"))
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", _smtp(port))
    monkeypatch.setenv("AIRFLOW__SMTP__SMTP_MAIL_FROM", "relay-ok@example.org")
    notifications.RunNotifier("failed").notify(_context(notify_email="ops@example.com"))
    assert [m.mail_from for m in messages] == ["styles@example.org", "relay-ok@example.org"]


def test_the_result_link_reads_that_blob_only_and_is_never_logged(stack, receiver, monkeypatch, capfd,
                                                                 notification_log):
    import time
    import urllib.error
    import urllib.parse
    import urllib.request

    from pipeline import notifications

    _upload(stack, OUTPUTS, "linked/clip ü.style-19.mp4", b"the result")
    _upload(stack, OUTPUTS, "linked/other.mp4", b"another result")
    monkeypatch.setenv("AIRFLOW_CONN_VIDEO_WEBHOOK",
                       json.dumps({"conn_type": "http", "host": receiver.url, "password": "k"}))
    details = {"output_blob": "linked/clip ü.style-19.mp4", "published": True}
    notifications.RunNotifier("succeeded", details).notify(_context())
    link = json.loads(receiver.received[-1][1])["result_url"]
    with urlopen(link) as answer:
        assert answer.read() == b"the result"
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(link).query)
    assert query["sp"] == ["r"] and query["sr"] == ["b"]
    expiry = time.mktime(time.strptime(query["se"][0], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    assert abs(expiry - time.time() - 24 * 3600) < 300
    for other in (link.replace("clip%20%C3%BC.style-19.mp4", "other.mp4"),):  # the same token, another blob
        with pytest.raises(urllib.error.HTTPError) as refused:
            urlopen(other)
        assert refused.value.code == 403
    put = urllib.request.Request(link, data=b"replaced", method="PUT", headers={"x-ms-blob-type": "BlockBlob"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urlopen(put)
    assert refused.value.code == 403
    logged = "".join(capfd.readouterr()) + "\n".join(notification_log)
    assert any("webhook answered" in line for line in notification_log)
    assert query["sig"][0] not in logged and urllib.parse.quote(query["sig"][0]) not in logged

    # configurable, and off where the connection cannot sign (a SAS-only connection)
    monkeypatch.setenv("AIRFLOW__VIDEO_STYLE_TRANSFER__RESULT_LINK_HOURS", "0")
    notifications.RunNotifier("succeeded", details).notify(_context())
    assert "result_url" not in json.loads(receiver.received[-1][1])
    monkeypatch.setenv("AIRFLOW__VIDEO_STYLE_TRANSFER__RESULT_LINK_HOURS", "2")
    monkeypatch.setenv("AIRFLOW_CONN_WASB_DATA", json.dumps({"conn_type": "wasb", "extra": {
        "sas_token": f"http://127.0.0.1:{stack.blob_port}/devstoreaccount1?{_account_sas()}"}}))
    notifications.RunNotifier("succeeded", details).notify(_context())
    assert "result_url" not in json.loads(receiver.received[-1][1])


def _account_sas(account: str = "devstoreaccount1", **permissions) -> str:
    from datetime import UTC, datetime, timedelta

    from azure.storage.blob import AccountSasPermissions, ResourceTypes, generate_account_sas

    from devstack import DEV_KEY

    return generate_account_sas(account, DEV_KEY, ResourceTypes(service=True, container=True, object=True),
                                AccountSasPermissions(**(permissions or {"read": True, "write": True, "list": True,
                                                                         "create": True, "delete": True})),
                                datetime.now(UTC) + timedelta(hours=1), protocol="https,http")


# --------------------------------------------------------------------------- two runs, one output


def test_two_runs_of_one_input_publish_once_and_the_other_says_by_whom(stack, clip_factory, monkeypatch):
    """Both runs pass every check before either uploads (a barrier holds each after stitching),
    as two triggers of the same upload do; the storage precondition decides."""
    import threading

    name = "race/clip.mp4"
    _upload(stack, ACCEPTED, name, clip_factory(seconds=0.4, fps="25", size=(96, 54)).read_bytes())
    params = PARAMS | {"input_blob": name, "segment_frames": 5}
    probed = tasks.probe(params, "race-a")
    split_facts = tasks.split(params, probed, "race-a")
    scored = tasks.score_local(params, probed)
    both_stitched = threading.Barrier(2, timeout=300)
    real_scoring = tasks.scoring

    def scoring(*args, **kwargs):
        answer = real_scoring(*args, **kwargs)
        if args[0] == "strip":
            both_stitched.wait()
        return answer

    monkeypatch.setattr(tasks, "scoring", scoring)
    results, errors = {}, []

    def publish(run_id):
        try:
            own = probed | {"run_key": scratch.run_key(run_id)}  # each run its own scratch folder
            results[run_id] = tasks.stitch_and_publish(params, own, split_facts, scored, run_id)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=publish, args=(run_id,)) for run_id in ("race-a", "race-b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert errors == []
    winners = [run for run, result in results.items() if result["published"]]
    assert len(winners) == 1, results
    loser = ({"race-a", "race-b"} - set(winners)).pop()
    assert results[loser] == {"output_blob": probed["output_blob"], "published": False, "by_run": winners[0]}

    data = BlobStore(DATA_CONN)
    video = data.info(OUTPUTS, probed["output_blob"])
    manifest = json.loads(data.read_text(OUTPUTS, probed["output_blob"] + ".manifest.json"))
    assert video.metadata["run_id"] == manifest["run_id"] == winners[0]
    assert manifest["output"]["etag"] == video.etag
    assert data.info(OUTPUTS, probed["output_blob"] + ".strip.jpg").metadata["describes_etag"] == video.etag

    # a manifest is never written beside a video it does not describe
    replaced = _upload(stack, OUTPUTS, probed["output_blob"], b"a later run's video")
    assert not data.publish_beside(b"{}", OUTPUTS, probed["output_blob"] + ".manifest.json", probed["output_blob"],
                                   video.etag, "application/json")
    assert json.loads(data.read_text(OUTPUTS, probed["output_blob"] + ".manifest.json")) == manifest
    assert data.publish_beside(b"{}", OUTPUTS, probed["output_blob"] + ".manifest.json", probed["output_blob"],
                               replaced, "application/json")


# --------------------------------------------------------------------------- leftovers


def _dag(file: str, dag_id: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"dag_{dag_id}", REPO / "dags" / file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, dag_id)()


def test_clean_up_waits_for_every_task_and_runs_in_every_final_state():
    dag = _dag("video_style_transfer.py", "video_style_transfer")
    clean_up = dag.get_task("clean_up")
    assert clean_up.trigger_rule == "all_done"
    # everything that reads or writes the run's work is before it, directly or through stitch
    assert {"stitch_and_publish", "preview"} <= clean_up.upstream_task_ids
    assert {"probe", "split", "score_local", "score_azureml", "stitch_and_publish", "preview"} <= {
        task.task_id for task in clean_up.get_flat_relatives(upstream=True)}
    assert not clean_up.downstream_task_ids


def test_a_failed_run_leaves_no_work_behind(stack, clip_factory):
    name, run_id = "fails/clip.mp4", "manual__fails-after-probe"
    _upload(stack, ACCEPTED, name, clip_factory(seconds=1, fps="25").read_bytes())
    params = PARAMS | {"input_blob": name, "model_blob": "fails/missing.pth"}
    probed = tasks.probe(params, run_id)
    system = BlobStore(SYSTEM_CONN)
    assert all(system.client.get_container_client(c).exists() for c in (probed["work_in"], probed["work_out"]))
    with pytest.raises(tasks.BadInput, match="model_blob styles/fails/missing.pth does not exist"):
        tasks.split(params, probed, run_id)
    assert tasks.clean_up(run_id) == 2
    assert not any(system.client.get_container_client(c).exists() for c in (probed["work_in"], probed["work_out"]))
    assert not (scratch.scratch_root() / probed["run_key"]).exists()
    assert tasks.clean_up(run_id) == 0  # again: nothing left, no error


def test_housekeeping_removes_only_old_run_work_and_says_what(stack, tmp_path):
    from datetime import UTC, datetime, timedelta

    from pipeline import leftovers

    system = BlobStore(SYSTEM_CONN)
    work_in, work_out = blobs.run_containers("manual__left-behind")
    for container in (work_in, work_out, "run-not-ours"):
        system.ensure_container(container)
    _upload(stack, work_out, "styled/seg-00000.h264", b"x" * 1000, account=SYSTEM_ACCOUNT)
    root = scratch.scratch_root()
    old, fresh = scratch.scratch("old-run-0123456789"), scratch.scratch("live-run-0123456789")
    (old / "input.mp4").write_bytes(b"y" * 500)
    (fresh / "input.mp4").write_bytes(b"z")
    (root / "not-a-run-folder").mkdir(exist_ok=True)
    hours_ago = (datetime.now(UTC) - timedelta(hours=3)).timestamp()
    for path in (old / "input.mp4", old, root / "not-a-run-folder"):
        os.utime(path, (hours_ago, hours_ago))

    removed = leftovers.remove_old_work(timedelta(hours=1))  # the containers are new: they stay
    assert removed == {"containers": [], "scratch_folders": ["old-run-0123456789"], "bytes": 500}
    assert not old.exists() and fresh.exists() and (root / "not-a-run-folder").exists()

    later = datetime.now(UTC) + timedelta(hours=2)
    removed = leftovers.remove_old_work(timedelta(hours=1), now=later)
    assert {work_in, work_out} <= set(removed["containers"]) and removed["bytes"] >= 1000
    assert all(leftovers.RUN_CONTAINER.fullmatch(name) for name in removed["containers"])
    names = {c.name for c in system.client.list_containers()}
    assert "run-not-ours" in names and "logs" in names and not {work_in, work_out} & names
    line = leftovers.report(removed, timedelta(hours=1))
    assert line.startswith(f"removed {len(removed['containers'])} run container(s) and ")


def test_the_housekeeping_dag_runs_hourly_with_a_configurable_age():
    """Hourly: a queued Azure ML job that no task waits for any more is cancelled within the
    hour rather than waiting a day for nodes (and billing once it gets them)."""
    dag = _dag("housekeeping.py", "housekeeping")
    assert dag.params["max_age_hours"] == 72 and dag.params["accepted_retention_days"] == 30
    assert {"remove_old_work", "remove_old_scratch_of_scoring", "prune_accepted",
            "cancel_orphaned_azureml_jobs"} <= set(dag.task_ids)
    assert dag.schedule == "@hourly"
    # a worker's scratch is its own: one task on each queue the pipeline's tasks write scratch on
    processing = _dag("video_style_transfer.py", "video_style_transfer")
    queues = {t.queue for t in processing.tasks if t.task_id in ("probe", "split", "score_local", "preview")}
    assert {t.queue for t in dag.tasks if t.task_id.startswith("remove_old_")} == queues == {"default", "scoring"}


def test_the_retention_prunes_accepted_by_the_ledger_and_keeps_what_is_newer(stack):
    """Versions taken in 40 days ago leave accepted with their snapshots, except a name taken
    in again since, whose newer version stays (only the old snapshot goes); the hour's line
    file goes, a recent hour stays; nothing is listed but the ledger."""
    from datetime import UTC, datetime, timedelta

    from intake import ledger
    from storage.blobs import LEDGER

    data, system = BlobStore(DATA_CONN), BlobStore(SYSTEM_CONN)
    now = datetime.now(UTC)
    old, recent = now - timedelta(days=40), now - timedelta(days=2)

    def take_in(name: str, at: datetime) -> tuple[str, str]:
        etag = _upload(stack, ACCEPTED, name, f"{name} at {at}".encode())
        snapshot = data.snapshot(ACCEPTED, name, etag=etag)
        ledger.record(system, ledger.Entry(name, etag, snapshot, "0x1", at, {}, {}))
        return etag, snapshot

    _, gone = take_in("retention/old.mp4", old)
    _, replaced = take_in("retention/again.mp4", old)
    etag_again, kept_again = take_in("retention/again.mp4", recent)  # the same name, taken in since
    etag_new, kept = take_in("retention/new.mp4", recent)

    removed = ledger.prune(data, system, now - timedelta(days=30))
    assert removed == {"hours": 1, "snapshots": 1, "blobs": 1}
    assert data.info(ACCEPTED, "retention/old.mp4") is None and data.info(ACCEPTED, "retention/old.mp4", gone) is None
    assert data.info(ACCEPTED, "retention/again.mp4", replaced) is None
    assert data.info(ACCEPTED, "retention/again.mp4").etag == etag_again
    assert data.info(ACCEPTED, "retention/again.mp4", kept_again) and data.info(ACCEPTED, "retention/new.mp4", kept)
    assert system.read_text(LEDGER, ledger.hour_blob(old)) is None
    assert [e.name for e in ledger.entries(system, recent, now)] == ["retention/again.mp4", "retention/new.mp4"]
    assert ledger.prune(data, system, now - timedelta(days=30)) == {"hours": 0, "snapshots": 0, "blobs": 0}


def test_the_watchers_trouble_fails_its_run_and_only_an_idle_hour_skips_it(stack, monkeypatch):
    """The watcher's sensor resumed the way Airflow's task runner resumes it: with the event
    its own trigger yields (run here against Azurite) as ``next_kwargs``, or with the
    ``__fail__`` the scheduler sets. A missing inbox fails the run in one line naming the
    container, with no retry; any other trigger error (here a wrong account key) fails it in
    one line; a trigger that failed in the triggerer fails it; only the idle timeout skips it
    (``soft_fail`` would have made every one of these a skipped run)."""
    import asyncio
    import base64
    import copy
    from unittest import mock

    from airflow.models.trigger import TriggerFailureReason
    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException, TaskDeferralError, TaskDeferred
    from intake.inbox import InboxSensor

    from devstack import DATA_ACCOUNT, DEV_KEY, connection_string

    watcher = _dag("blob_watcher.py", "blob_watcher").get_task("wait_for_uploads")
    assert (watcher.soft_fail, watcher.never_fail, watcher.deferrable) == (False, False, True)

    def resumed_with_its_triggers_event(sensor):
        with mock.patch.object(InboxSensor, "poke", return_value=False), pytest.raises(TaskDeferred) as deferred:
            sensor.execute({})  # an empty inbox at the start: deferred to the trigger
        event = asyncio.run(asyncio.wait_for(anext(deferred.value.trigger.run()), 60))
        assert event.payload["status"] == "error", event.payload
        return sensor.resume_execution(deferred.value.method_name, {"event": event.payload}, {})

    gone = copy.copy(watcher)
    gone.container_name = "no-such-inbox"
    with pytest.raises(AirflowFailException) as failed:
        resumed_with_its_triggers_event(gone)
    assert str(failed.value) == ("container no-such-inbox does not exist in storage account devstoreaccount1: "
                                 "`python -m deployment init` makes every container the pipeline needs "
                                 "(docs/deploying.md)")

    wrong_key = base64.b64encode(b"not the account's key").decode()
    broken = connection_string(DATA_ACCOUNT, stack.blob_port).replace(DEV_KEY, wrong_key)
    monkeypatch.setenv("AIRFLOW_CONN_WASB_BROKEN", json.dumps({"conn_type": "wasb", "extra": {
        "connection_string": broken}}))
    refused = copy.copy(watcher)
    refused.wasb_conn_id = "wasb_broken"
    with pytest.raises(RuntimeError) as failed:
        resumed_with_its_triggers_event(refused)
    assert str(failed.value).startswith("waiting for uploads failed: ") and "\n" not in str(failed.value), failed.value
    assert not isinstance(failed.value, AirflowSkipException)

    with pytest.raises(TaskDeferralError):
        watcher.resume_execution("__fail__", {"error": TriggerFailureReason.TRIGGER_FAILURE}, {})
    with pytest.raises(AirflowSkipException, match="nothing uploaded for 3600 s"):
        watcher.resume_execution("__fail__", {"error": TriggerFailureReason.TRIGGER_TIMEOUT}, {})


# --------------------------------------------------------------------------- truth in the text

# A measured figure: a number with a unit of speed, share or quality (limits such as "20 GiB"
# or "1024 characters" describe behaviour and stay).
FIGURE = re.compile(r"\d+(\.\d+)?\s*(%|dB\b|fps\b|ms\b|x faster|x slower)|\d(\.\d+)?x (the|faster|more)")


def _texts_of_code():
    """Every docstring and comment in scoring/, plugins/ and dags/, as (where, text)."""
    import ast
    import io
    import tokenize

    for path in sorted([*(REPO / "scoring").rglob("*.py"), *(REPO / "plugins").rglob("*.py"),
                        *(REPO / "dags").glob("*.py")]):
        source = path.read_text()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                if doc := ast.get_docstring(node):
                    yield f"{path.name} docstring of {getattr(node, 'name', 'the module')}", doc
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            if token.type == tokenize.COMMENT:
                yield f"{path.name}:{token.start[0]}", token.string


def test_help_params_and_docstrings_quote_no_measured_figures():
    from scoring.cli import build_parser

    parser = build_parser()
    helps = [("python -m scoring --help", parser.format_help())]
    for action in parser._subparsers._group_actions:
        helps += [(f"python -m scoring {name} --help", sub.format_help()) for name, sub in action.choices.items()]
    params = _dag("video_style_transfer.py", "video_style_transfer").params
    helps += [(f"Param {name}", str(params.get_param(name).description or "")) for name in params]
    found = [(where, FIGURE.search(text).group(0)) for where, text in [*helps, *_texts_of_code()]
             if FIGURE.search(text.replace("%%", "%"))]
    assert found == [], "measured figures belong in docs/performance.md"


def test_sas_only_connections_run_every_storage_step_of_the_local_backend(stack, monkeypatch):
    """What docs/security.md promises for a connection that holds only an account SAS: the
    local backend's storage steps work (here a quarantine copy, a run's work containers and
    their clean-up); what needs signing (Azure ML tokens, result links) is off or refused."""
    for conn, account in (("AIRFLOW_CONN_WASB_DATA", "devstoreaccount1"),
                          ("AIRFLOW_CONN_WASB_SYSTEM", SYSTEM_ACCOUNT)):
        monkeypatch.setenv(conn, json.dumps({"conn_type": "wasb",
                                             "host": f"http://127.0.0.1:{stack.blob_port}/{account}",
                                             "extra": {"sas_token": _account_sas(account=account)}}))
    data, system = BlobStore(DATA_CONN), BlobStore(SYSTEM_CONN)
    assert type(data.client.credential).__name__ == "AzureSasCredential"
    _upload(stack, ACCEPTED, "sas/notes.mp4", b"not a video\n")
    with pytest.raises(tasks.BadInput, match=r"\(copied to quarantine/sas/notes.mp4\)$"):
        tasks.probe(PARAMS | {"input_blob": "sas/notes.mp4"}, "manual__sas-only")
    assert data.read_text(QUARANTINE, "sas/notes.mp4") == "not a video\n"
    work_in, work_out = blobs.run_containers("manual__sas-only-work")
    system.ensure_container(work_in)
    system.upload_text("{}", work_in, "segments/plan.json")
    assert [b.name for b in system.list(work_in)] == ["segments/plan.json"]
    assert tasks.clean_up("manual__sas-only-work") == 1
    assert data.read_link(OUTPUTS, "any.mp4", 24) is None
