"""The Airflow side against real Azurite and real Airflow (`airflow dags test`), with a local
webhook receiver and a local SMTP server."""

from __future__ import annotations

import email
import io
import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
from PIL import Image

from devstack import DEV_KEY, REPO, SYSTEM_ACCOUNT, Stack, airflow_json, free_port
from scoring.media import ffmpeg

sys.path.insert(0, str(REPO / "plugins"))
from intake.inbox import processing_run_id  # noqa: E402
from pipeline.notifications import SIGNATURE_HEADER, verify_signature  # noqa: E402

from .helpers import encoded_by_the_ranks  # noqa: E402

pytestmark = pytest.mark.skipif(not (REPO / "node_modules" / ".bin" / "azurite-blob").exists(),
                                reason="Azurite is not installed (make setup runs npm ci)")
SECRET = "test-webhook-secret"


class Webhooks:
    """A local HTTP receiver that keeps what it was sent and whether the signature held."""

    def __init__(self):
        self.received: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                valid = verify_signature(SECRET, body, self.headers.get(SIGNATURE_HEADER, ""))
                outer.received.append({"body": json.loads(body), "raw": body, "valid": valid,
                                       "signature": self.headers.get(SIGNATURE_HEADER)})
                self.send_response(204 if valid else 401)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", free_port()), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"


class Mailbox:
    def __init__(self):
        from aiosmtpd.controller import Controller

        self.messages: list = []
        outer = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):
                outer.messages.append(envelope)
                return "250 OK"

        self.port = free_port()
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)
        self.controller.start()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = Stack(tmp_path_factory.mktemp("stack"), blob_port=free_port(), api_port=free_port())
    hooks, mail = Webhooks(), Mailbox()
    stack.extra_env = {
        "AIRFLOW_CONN_VIDEO_WEBHOOK": json.dumps({"conn_type": "http", "host": hooks.url, "password": SECRET}),
        "AIRFLOW_CONN_SMTP_DEFAULT": json.dumps({"conn_type": "smtp", "host": "127.0.0.1", "port": mail.port,
                                                 "extra": {"disable_tls": True, "disable_ssl": True,
                                                           "from_email": "video-style-transfer@example.org"}}),
        "VST_WATCH_POLL_SECONDS": "1", "VST_WATCH_IDLE_SECONDS": "6",
    }
    stack.start_azurite()
    stack.create_containers()
    stack.prepare_airflow()
    stack.hooks, stack.mail = hooks, mail
    yield stack
    stack.stop()
    mail.controller.stop()
    hooks.server.shutdown()


def upload(stack, name: str, path: Path, container: str = "accepted") -> str:
    """An accepted upload, where the watcher leaves what it took in (or, with ``container``, elsewhere)."""
    props = stack.blob_client().get_blob_client(container, name).upload_blob(path.read_bytes(), overwrite=True)
    return str(props["etag"]).strip('"')


def dags_test(stack, dag_id: str, conf: dict | None = None) -> str:
    args = ["dags", "test", dag_id] + (["-c", json.dumps(conf)] if conf else [])
    result = stack.airflow(*args, check=False, timeout=600)
    output = result.stdout + result.stderr
    log = stack.root / f"dags-test-{dag_id}-{time.strftime('%H%M%S')}.log"
    log.write_text(output)  # the whole run's task logs, for when a test fails
    stack.last_output = output
    for state in ("success", "failed"):
        if f"state={state}, run_type=" in output:
            return state
    raise AssertionError(f"no final run state in `airflow {' '.join(args)}`:\n{output[-4000:]}")


def blobs(stack, container: str, account=None) -> dict[str, bytes]:
    client = stack.blob_client(account) if account else stack.blob_client()
    container_client = client.get_container_client(container)
    return {b.name: container_client.download_blob(b.name).readall() for b in container_client.list_blobs()}


def test_dag_files_import_fast_without_heavy_modules(tmp_path):
    code = (
        "import json, sys, time; t = time.perf_counter()\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        f"bag = DagBag({str(REPO / 'dags')!r})\n"
        "print(json.dumps({'seconds': time.perf_counter() - t, 'dags': sorted(bag.dag_ids),\n"
        "                  'errors': {k: str(v) for k, v in bag.import_errors.items()},\n"
        "                  'heavy': [m for m in ('torch', 'azure.ai.ml', 'scoring.networks.models') if m in sys.modules]}))\n"
    )
    env = Stack(tmp_path).env()
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    facts = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"DAG folder parsed in {facts['seconds']:.2f} s (Airflow's own import included)")
    assert facts["dags"] == ["blob_sweep", "blob_watcher", "deployment_check", "housekeeping", "video_style_transfer"]
    assert facts["errors"] == {} and facts["heavy"] == []
    assert facts["seconds"] < 30


def test_upload_to_stylized_video_with_notifications(stack, clip_factory, tmp_path):
    clip = clip_factory(seconds=2, fps="179/6", size=(160, 90))
    name = "holiday films/clip ü 1.mp4"
    etag = upload(stack, name, clip)
    # one rank, whose lanes (one per core) share the 3 segments; 2 ranks run in test_prod and
    # test_reliability
    state = dags_test(stack, "video_style_transfer",
                      {"input_blob": name, "style": "3:0.5,12:0.5", "ranks": 1, "segment_frames": 20,
                       "notify_email": "ops@example.com"})
    assert state == "success"

    out = blobs(stack, "videos-out")
    video_name = "holiday films/clip ü 1.style-3_0.5_12_0.5.mp4"
    assert set(out) == {video_name, *(video_name + suffix for suffix in (".manifest.json", ".preview.jpg",
                                                                         ".strip.jpg"))}
    (tmp_path / "out.mp4").write_bytes(out[video_name])
    before, after = ffmpeg.probe(clip), ffmpeg.probe(tmp_path / "out.mp4")
    assert after.frames == before.frames == 60 and after.has_audio and after.frame_rate == "179/6"
    manifest = json.loads(out[video_name + ".manifest.json"])
    assert manifest["input"]["etag"] == etag and manifest["output"]["frames"] == 60
    assert manifest["segments"] == 3 and manifest["scoring"]["scored"] == 3 and manifest["scoring"]["ranks"] == 1
    assert set(manifest["seconds"]) == {"probe", "split", "score", "stitch", "publish"}
    encoded_by_the_ranks(tmp_path / "out.mp4", manifest, segments=3)  # the default: no second encode

    # the preview: three rows of (before | after) frames; the contact strip: one row of eight
    assert manifest["pictures"] == {"preview": video_name + ".preview.jpg", "contact_strip": video_name + ".strip.jpg"}
    preview = Image.open(io.BytesIO(out[video_name + ".preview.jpg"]))
    strip = Image.open(io.BytesIO(out[video_name + ".strip.jpg"]))
    assert preview.format == strip.format == "JPEG"
    assert preview.size == (6 + 2 * (160 + 6), 6 + 3 * (90 + 18 + 6)) and strip.size == (6 + 8 * (160 + 6), 6 + 90 + 24)
    before_tile, after_tile = (np.asarray(preview.crop((x, 24, x + 160, 24 + 90)), float) for x in (6, 172))
    assert np.abs(before_tile - after_tile).mean() > 20  # the right half is styled, the left is not

    # the input is untouched, the system account holds nothing of the finished run
    client = stack.blob_client().get_blob_client("accepted", name)
    assert client.get_blob_properties().etag.strip('"') == etag
    assert client.download_blob().readall() == clip.read_bytes()
    system_containers = [c.name for c in stack.blob_client(SYSTEM_ACCOUNT).list_containers()]
    assert system_containers == ["intake-ledger", "logs"]  # the run's own work containers are gone
    data_containers = [c.name for c in stack.blob_client().list_containers()]
    assert data_containers == ["accepted", "quarantine", "styles", "videos-in", "videos-out"]  # no work files there, ever

    # no credential in the task logs of the whole run
    assert DEV_KEY not in stack.last_output and SECRET not in stack.last_output

    # the same version again (say, the watcher and a manual trigger): nothing redone, and why
    published = stack.blob_client().get_blob_client("videos-out", video_name).get_blob_properties().etag
    assert dags_test(stack, "video_style_transfer", {"input_blob": name, "style": "3:0.5,12:0.5",
                                                     "segment_frames": 20}) == "success"
    assert "already holds holiday films/clip ü 1.mp4 (this version, these settings)" in stack.last_output
    assert stack.blob_client().get_blob_client("videos-out", video_name).get_blob_properties().etag == published

    # notifications: a signed webhook and an e-mail, both saying it worked, no secret inside
    done = [m for m in stack.hooks.received if m["body"]["status"] == "succeeded"]
    assert len(done) == 1 and done[0]["valid"] and done[0]["body"]["output_blob"] == video_name
    assert SECRET not in done[0]["raw"].decode()
    assert not verify_signature("wrong secret", done[0]["raw"], done[0]["signature"])
    assert not verify_signature(SECRET, done[0]["raw"].replace(b"succeeded", b"failed"), done[0]["signature"])
    assert (done[0]["body"]["preview_blob"], done[0]["body"]["strip_blob"]) == tuple(manifest["pictures"].values())
    mails = [m for m in stack.mail.messages if b"succeeded" in m.content]
    assert len(mails) == 1 and mails[0].rcpt_tos == ["ops@example.com"]
    assert mails[0].mail_from == "video-style-transfer@example.org"  # smtp_default's from_email
    # a read-only link to the result, in both notifications
    link = done[0]["body"]["result_url"]
    assert link.startswith(f"http://127.0.0.1:{stack.blob_port}/") and "sp=r&" in link and "sr=b&" in link
    html = next(part.get_payload(decode=True).decode() for part in email.message_from_bytes(mails[0].content).walk()
                if part.get_content_type() == "text/html")
    assert link in html
    attached = [part.get_filename() for part in email.message_from_bytes(mails[0].content).walk()
                if part.get_filename()]
    assert sorted(attached) == sorted(PurePosixPath(name).name for name in manifest["pictures"].values())


def test_an_upload_with_two_audio_tracks_and_subtitles_publishes_them(stack, tmp_path):
    subtitles = tmp_path / "subs.srt"
    subtitles.write_text("1\n00:00:00,100 --> 00:00:00,900\nola\n")
    clip = tmp_path / "dubbed.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-f", "lavfi", "-i", "testsrc2=s=96x64:r=20:d=1",
                    "-f", "lavfi", "-i", "sine=f=440:d=1", "-f", "lavfi", "-i", "sine=f=660:d=1", "-i", str(subtitles),
                    "-map", "0", "-map", "1", "-map", "2", "-map", "3", "-c:v", "libx264", "-pix_fmt", "yuv420p",
                    "-c:a", "aac", "-c:s", "mov_text", "-metadata:s:a:0", "language=eng", "-metadata:s:a:1",
                    "language=por", "-metadata:s:s:0", "language=por", str(clip)], check=True)
    upload(stack, "dubbed.mp4", clip)
    # a mezzanine, as a team that edits the video asks: score_local must encode for it, or the stitch refuses
    assert dags_test(stack, "video_style_transfer", {"input_blob": "dubbed.mp4", "style": "3",
                                                     "delivery": "mezzanine"}) == "success"
    out = blobs(stack, "videos-out")
    (tmp_path / "out.mp4").write_bytes(out["dubbed.style-3.mp4"])
    probed = json.loads(subprocess.run(["ffprobe", "-v", "error", "-print_format", "json", "-show_streams",
                                        str(tmp_path / "out.mp4")], capture_output=True, text=True,
                                       check=True).stdout)["streams"]
    assert [(s["codec_type"], s.get("tags", {}).get("language")) for s in probed if s["codec_type"] != "video"] == [
        ("audio", "eng"), ("audio", "por"), ("subtitle", "por")]
    text = subprocess.run(["ffmpeg", "-v", "error", "-i", str(tmp_path / "out.mp4"), "-map", "0:s:0", "-f", "srt", "-"],
                          capture_output=True, text=True, check=True).stdout
    assert "ola" in text
    manifest = json.loads(out["dubbed.style-3.mp4.manifest.json"])
    encoded_by_the_ranks(tmp_path / "out.mp4", manifest, segments=1, delivery="mezzanine")
    assert [(s["type"], s["action"]) for s in manifest["streams"]] == [
        ("video", "styled"), ("audio", "kept"), ("audio", "kept"), ("subtitle", "kept")]


def test_an_hdr10_upload_is_published_as_hdr10_when_the_run_asks(stack, tmp_path):
    clip = tmp_path / "hdr10.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-f", "lavfi", "-i", "testsrc2=s=96x64:r=24:d=0.5", "-vf",
                    "format=yuv420p10le", "-c:v", "libx265", "-x265-params", "log-level=error:colorprim=bt2020:"
                    "transfer=smpte2084:colormatrix=bt2020nc:range=limited:hdr10=1:master-display=G(13250,34500)"
                    "B(7500,3000)R(34000,16000)WP(15635,16450)L(10000000,1):max-cll=1000,400", "-color_primaries",
                    "bt2020", "-color_trc", "smpte2084", "-colorspace", "bt2020nc", str(clip)], check=True)
    upload(stack, "grade/hdr10.mp4", clip)
    assert dags_test(stack, "video_style_transfer", {"input_blob": "grade/hdr10.mp4", "style": "3",
                                                     "hdr": "keep"}) == "success"
    out = blobs(stack, "videos-out")
    (tmp_path / "out.mp4").write_bytes(out["grade/hdr10.style-3.mp4"])
    video = json.loads(subprocess.run(["ffprobe", "-v", "error", "-print_format", "json", "-select_streams", "v:0",
                                       "-show_streams", str(tmp_path / "out.mp4")], capture_output=True, text=True,
                                      check=True).stdout)["streams"][0]
    assert (video["color_primaries"], video["color_transfer"], video["pix_fmt"]) == ("bt2020", "smpte2084",
                                                                                     "yuv420p10le")
    styled = json.loads(out["grade/hdr10.style-3.mp4.manifest.json"])["streams"][0]
    assert styled["action"] == "styled" and styled["mastering"]["light"] == "1000,400"


def test_bad_upload_is_quarantined_and_input_kept(stack):
    name = "bad/notes.mp4"
    text = b"this is a shopping list, not a video\n"
    stack.blob_client().get_blob_client("accepted", name).upload_blob(text, overwrite=True)
    outputs_before = set(blobs(stack, "videos-out"))
    assert dags_test(stack, "video_style_transfer", {"input_blob": name}) == "failed"

    quarantined = blobs(stack, "quarantine")
    assert quarantined[name] == text
    reason = json.loads(quarantined[name + ".reason.json"])
    assert "not a video or image we can read" in reason["reason"] and reason["input"] == f"accepted/{name}"
    assert blobs(stack, "accepted")[name] == text
    assert set(blobs(stack, "videos-out")) == outputs_before
    failed = [m for m in stack.hooks.received if m["body"]["status"] == "failed"]
    assert failed and failed[-1]["valid"] and "not a video" in failed[-1]["body"]["error"]


def test_a_run_that_fails_after_probe_leaves_no_work_behind(stack, clip_factory):
    """probe made the run's work containers and scratch folder; split fails (no such model):
    the run fails and clean_up, which runs in every final state, still removes them."""
    upload(stack, "fails/clip.mp4", clip_factory(seconds=1, fps="25", size=(96, 64)))
    conf = {"input_blob": "fails/clip.mp4", "model_blob": "fails/missing.pth"}
    assert dags_test(stack, "video_style_transfer", conf) == "failed"
    assert "model_blob styles/fails/missing.pth does not exist" in stack.last_output
    assert [c.name for c in stack.blob_client(SYSTEM_ACCOUNT).list_containers()] == ["intake-ledger", "logs"]
    assert not stack.scratch.exists() or list(stack.scratch.iterdir()) == []  # every run so far cleaned up


def test_missing_input_blob_fails_with_a_clear_message(stack):
    result = stack.airflow("dags", "test", "video_style_transfer", "-c", json.dumps({"input_blob": "nope.mp4"}),
                           check=False)
    assert "accepted/nope.mp4 does not exist; an upload to videos-in gets there when the watcher takes it in" \
        in result.stdout + result.stderr


def test_own_model_is_a_new_result_when_uploaded_again(stack, clip_factory):
    """A user's .pth styles the run; the same name uploaded again with other weights is a new
    version, so the next run makes the video again instead of saying it is already done."""
    import torch
    from pipeline.tasks import default_output_name

    from scoring.networks.models import TransformerNet

    upload(stack, "own/clip.mp4", clip_factory(seconds=1, fps="25", size=(96, 64)))
    output = default_output_name("own/clip.mp4", "19", "own/net.pth")
    published = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        net = TransformerNet()
        with torch.no_grad():  # an output that spans 0..255, so the two weights give two pictures
            net.deconv3.conv2d.weight.mul_(160.0)
            net.deconv3.conv2d.bias.fill_(127.5)
        weights = io.BytesIO()
        torch.save(net.state_dict(), weights)
        stack.blob_client().get_blob_client("styles", "own/net.pth").upload_blob(weights.getvalue(), overwrite=True)
        conf = {"input_blob": "own/clip.mp4", "model_blob": "own/net.pth"}
        assert dags_test(stack, "video_style_transfer", conf) == "success"
        blob = stack.blob_client().get_blob_client("videos-out", output)
        published.append((blob.get_blob_properties().metadata["run_id"], blob.download_blob().readall()))
    (first_run, first_video), (second_run, second_video) = published
    assert first_run != second_run and first_video != second_video


def _upload_runs(stack) -> set[str]:
    runs = airflow_json(stack.airflow("dags", "list-runs", "video_style_transfer", "-o", "json"))
    return {r["run_id"] for r in runs if r["run_id"].startswith("upload__")}


def test_watcher_starts_one_run_per_blob_version(stack, clip_factory):
    def inbox():
        return set(blobs(stack, "videos-in"))

    # `airflow dags test` runs a trigger until it fires: with an empty inbox it would wait for
    # ever (the idle give-up is the scheduler's, shown on the running stack in test_uploads.py)
    if inbox():
        stack.airflow("dags", "test", "blob_watcher", check=False)  # takes in whatever earlier tests left
    baseline = _upload_runs(stack)

    clip = clip_factory(seconds=1, fps="25", size=(96, 64))
    first = upload(stack, "watched/a.mp4", clip, "videos-in")
    assert dags_test(stack, "blob_watcher") == "success"
    runs = _upload_runs(stack)
    assert runs - baseline == {processing_run_id("videos-in", "watched/a.mp4", first)}
    assert inbox() == set() and blobs(stack, "accepted")["watched/a.mp4"] == clip.read_bytes()  # claimed

    assert _upload_runs(stack) == runs  # nothing pending: nothing more is started

    second = upload(stack, "watched/a.mp4", clip_factory(seconds=1.5, fps="25", size=(96, 64)), "videos-in")
    assert second != first
    assert dags_test(stack, "blob_watcher") == "success"
    assert _upload_runs(stack) - runs == {processing_run_id("videos-in", "watched/a.mp4", second)}

    # a version whose run exists already (a start retried, a crash before the claim finished,
    # a second watcher): claimed and passed over, never a second run, never offered again
    third = upload(stack, "watched/b.mp4", clip, "videos-in")
    made = processing_run_id("videos-in", "watched/b.mp4", third)
    stack.airflow("dags", "trigger", "video_style_transfer", "-r", made, "-c", json.dumps({"input_blob": "watched/b.mp4"}))
    before = _upload_runs(stack)
    assert dags_test(stack, "blob_watcher") == "success"
    assert "1 passed_over" in stack.last_output
    assert _upload_runs(stack) == before and inbox() == set() and "watched/b.mp4" in blobs(stack, "accepted")
