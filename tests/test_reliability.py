"""Reliability under load, bad inputs and faults, against a running standalone Airflow and Azurite.

One standalone serves the load test and the bad-input corpus (the bad uploads arrive together
with the good ones, so they are part of the load); the fault tests that kill processes use
their own, smaller stacks. Each test prints its figures (run with ``-s`` to see them live);
they are also written to the terminal summary, and the README quotes them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import psutil
import pytest

from devstack import REPO, Stack, free_port
from scoring.media import ffmpeg
from scoring.media.samples import make_clip

from .helpers import Api, tiny_disk, urlopen, wait_until
from .test_dags import SECRET, Webhooks

sys.path.insert(0, str(REPO / "plugins"))
from intake.inbox import processing_run_id  # noqa: E402

pytestmark = pytest.mark.skipif(not (REPO / "node_modules" / ".bin" / "azurite-blob").exists(),
                                reason="Azurite is not installed (make setup runs npm ci)")

SCORING_SLOTS = 2  # the `scoring` pool of this stack (devstack's default is 1; 2 makes the bound visible)
GOOD_UPLOADS = 20
FIGURES: list[str] = []  # printed now and again in the terminal summary (conftest.py)


def report(line: str) -> None:
    print(line, flush=True)
    FIGURES.append(line)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()  # noqa: S324 - a content fingerprint, not security


def _ffmpeg(*args) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-y", *map(str, args)], check=True)


# --------------------------------------------------------------------------- the stack and its API


def wait_finished(api: Api, run_ids: set[str], timeout: float) -> dict[str, dict]:
    def finished():
        runs = api.runs()
        done = {r: runs[r] for r in run_ids if r in runs and runs[r]["state"] in ("success", "failed")}
        return done if len(done) == len(run_ids) else None

    return wait_until(finished, timeout, what=f"{len(run_ids)} runs to finish")


def blob_map(stack: Stack, container: str) -> dict[str, bytes]:
    client = stack.blob_client().get_container_client(container)
    return {b.name: client.download_blob(b.name).readall() for b in client.list_blobs()}


def upload(stack: Stack, container: str, name: str, data: bytes) -> str:
    props = stack.blob_client().get_blob_client(container, name).upload_blob(data, overwrite=True)
    return str(props["etag"]).strip('"')


def start_stack(root: Path, scoring_slots: int, extra_env: dict) -> Stack:
    stack = Stack(root, blob_port=free_port(), api_port=free_port())
    stack.extra_env = extra_env
    stack.start_azurite()
    stack.create_containers()
    stack.prepare_airflow(scoring_slots=scoring_slots)
    stack.start_airflow()
    return stack


class ScoringSampler:
    """Samples /proc for this stack's `python -m scoring score` processes (MPI ranks) while it runs:
    the peak number of rank processes and of scoring jobs (distinct --segments folders)."""

    def __init__(self, scratch: Path, every: float = 0.2):
        self.scratch, self.every = str(scratch), every
        self.peak_ranks = self.peak_jobs = self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def snapshot(self) -> tuple[int, set[str]]:
        procs = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                args = Path(entry.path, "cmdline").read_bytes().split(b"\0")
                ppid = int(Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            args = [a.decode(errors="replace") for a in args]
            if args[1:4] == ["-m", "scoring", "score"] and "--segments" in args:
                segments = args[args.index("--segments") + 1]
                if segments.startswith(self.scratch):
                    procs[int(entry.name)] = (ppid, segments)
        # a rank forking ffmpeg shows, for an instant, a child with its own command line
        ranks = {pid: seg for pid, (ppid, seg) in procs.items() if ppid not in procs}
        return len(ranks), set(ranks.values())

    def _loop(self):
        while not self._stop.is_set():
            ranks, jobs = self.snapshot()
            self.peak_ranks, self.peak_jobs = max(self.peak_ranks, ranks), max(self.peak_jobs, len(jobs))
            self.samples += 1
            self._stop.wait(self.every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


# --------------------------------------------------------------------------- the shared standalone


@pytest.fixture(scope="module")
def busy(tmp_path_factory, clip_factory):
    """A standalone with the watcher running, fed 20 good uploads and a corpus of bad ones at once."""
    hooks = Webhooks()
    stack = start_stack(tmp_path_factory.mktemp("busy"), SCORING_SLOTS, {
        "VST_WATCH_POLL_SECONDS": "1", "VST_WATCH_IDLE_SECONDS": "600",
        # a task whose supervisor died is failed (and retried) after 30 s without a heartbeat;
        # one queued by a scheduler that died is reset (and run again) by the next scheduler once
        # the dead one has missed its heartbeat for 20 s (defaults: 300 s, 30 s, every 300 s)
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "30",
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_THRESHOLD": "20",
        "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "10",
        "AIRFLOW_CONN_VIDEO_WEBHOOK": json.dumps({"conn_type": "http", "host": hooks.url, "password": SECRET}),
    })
    try:
        stack.api, stack.hooks = Api(stack), hooks
        yield stack
    finally:
        stack.stop()
        hooks.server.shutdown()


def bad_uploads(folder: Path, clip: Path) -> dict[str, tuple[str, bytes]]:
    """kind -> (blob name, bytes): uploads the watcher will pick up, each one bad."""
    data = clip.read_bytes()
    _ffmpeg("-i", clip, "-c", "copy", "-movflags", "+faststart", folder / "fast.mp4")
    fast = (folder / "fast.mp4").read_bytes()
    _ffmpeg("-i", clip, "-vn", "-c:a", "copy", folder / "sound.mp4")
    _ffmpeg("-f", "lavfi", "-i", "color=c=red:s=64x36", "-frames:v", "1", folder / "photo.png")
    _ffmpeg("-f", "lavfi", "-i", "color=c=black:s=4096x4096:r=1", "-frames:v", "1", "-c:v", "libx264",
            "-preset", "ultrafast", "-pix_fmt", "yuv420p", folder / "huge.mp4")
    _ffmpeg("-f", "lavfi", "-i", "color=c=black:s=16x16:r=1", "-t", "3700", "-c:v", "libx264",
            "-preset", "ultrafast", "-pix_fmt", "yuv420p", folder / "long.mp4")
    _ffmpeg("-f", "lavfi", "-i", "anullsrc=r=8000:cl=mono", "-t", "1", folder / "sound.wav")
    text = b"this is a shopping list, not a video\n"
    return {
        "text named .mp4": ("bad/notes.mp4", text),
        "random bytes": ("bad/noise.mp4", bytes(range(256)) * 64),
        "truncated (moov missing)": ("bad/cut.mp4", data[: len(data) // 2]),
        "truncated (data missing)": ("bad/cut-fast.mp4", fast[: len(fast) * 6 // 10]),
        "audio only (AAC in .mp4)": ("bad/sound.mp4", (folder / "sound.mp4").read_bytes()),
        "audio only (WAV named .mp4)": ("bad/wav.mp4", (folder / "sound.wav").read_bytes()),
        "image renamed .mp4": ("bad/photo.mp4", (folder / "photo.png").read_bytes()),
        "huge resolution (4096x4096)": ("bad/huge.mp4", (folder / "huge.mp4").read_bytes()),
        "duration over the cap (3700 s)": ("bad/long.mp4", (folder / "long.mp4").read_bytes()),
        "name with spaces and unicode": ("bad/ shopping list ü 名前 .mp4", text),
        "very long name (1024 chars)": ("bad/" + "x" * (1024 - 8) + ".mp4", text),
    }


def odd_but_valid(folder: Path) -> dict[str, tuple[str, bytes]]:
    """Uploads that look odd but are videos: they must be processed like any other."""
    make_clip(folder / "one.mp4", seconds=0.1, fps="10", size=(64, 36), audio=False)
    make_clip(folder / "odd.mkv", seconds=1, fps="10", size=(64, 36), audio=True)
    _ffmpeg("-i", folder / "odd.mkv", "-c:v", "mpeg4", "-c:a", "mp3", folder / "odd.avi")
    return {"1-frame video": ("odd/one-frame.mp4", (folder / "one.mp4").read_bytes()),
            "MPEG-4 part 2 + MP3 in AVI": ("odd/clip.avi", (folder / "odd.avi").read_bytes())}


@pytest.fixture(scope="module")
def load(busy, tmp_path_factory):
    """Uploads everything at once, samples the scoring processes, waits for every run."""
    folder = tmp_path_factory.mktemp("corpus")
    clips = []
    for i in range(GOOD_UPLOADS):  # distinct content: tiny clips whose length differs
        clips.append(folder / f"good-{i}.mp4")
        make_clip(clips[-1], seconds=1 + (i % 4) / 10, fps="10", size=(64, 36), audio=i % 2 == 0)
    bad, odd = bad_uploads(folder, clips[0]), odd_but_valid(folder)
    good = {f"load/clip-{i:02d}.mp4": p.read_bytes() for i, p in enumerate(clips)} | dict(odd.values())

    with ScoringSampler(busy.scratch) as sampler:
        started = time.monotonic()
        uploads = {name: upload(busy, "videos-in", name, data) for name, data in good.items()}
        uploads |= {name: upload(busy, "videos-in", name, data) for name, data in bad.values()}
        expected = {processing_run_id("videos-in", name, etag) for name, etag in uploads.items()}
        wait_until(lambda: expected <= set(busy.api.runs()), 240, what="the watcher to start every run")
        runs = wait_finished(busy.api, expected, 600)
        seconds = time.monotonic() - started
    busy.load = {"good": good, "bad": bad, "odd": odd, "uploads": uploads, "runs": runs, "seconds": seconds,
                 "sampler": sampler}
    return busy.load


@pytest.mark.timeout(1200)  # the standalone's start and the 33 runs included: 6-7 minutes alone, more beside a test
def test_twenty_uploads_at_once_each_processed_once_within_the_pool(load, busy):
    uploads, runs = load["uploads"], load["runs"]
    good = {name: uploads[name] for name in load["good"]}
    good_runs = {processing_run_id("videos-in", name, etag): name for name, etag in good.items()}
    assert {r: runs[r]["state"] for r in good_runs} == {r: "success" for r in good_runs}

    # exactly once: one run per uploaded version, nothing else started by the watcher
    all_runs = busy.api.runs()
    watcher_runs = {r for r in all_runs if r.startswith("upload__")}
    assert watcher_runs == set(runs), sorted(watcher_runs ^ set(runs))
    out = blob_map(busy, "videos-out")
    videos = {n for n in out if n.endswith(".mp4")}
    assert len(videos) == len(good) == GOOD_UPLOADS + len(load["odd"])
    for run_id, name in good_runs.items():
        manifest = json.loads(out[str(Path(name).with_suffix("")) + ".style-19.mp4.manifest.json"])
        accepted = busy.blob_client().get_blob_client("accepted", name).get_blob_properties()
        assert manifest["run_id"] == run_id and accepted.metadata["upload_etag"] == good[name]  # the upload's version
        assert manifest["input"]["etag"] == str(accepted.etag).strip('"')  # read from its accepted copy
        assert manifest["output"]["frames"] == manifest["input"]["frames"]
        ti = busy.api.tasks(run_id)["score_local"]
        assert ti["try_number"] == 1 and ti["pool"] == "scoring"

    status, pool = busy.api.call("GET", "/api/v2/pools/scoring")
    assert status == 200 and pool["slots"] == SCORING_SLOTS
    sampler = load["sampler"]
    ranks = 2  # the DAG's default `ranks` (no metadata on the uploads, no defaults Variable)
    assert 1 <= sampler.peak_jobs <= SCORING_SLOTS
    assert sampler.peak_ranks <= SCORING_SLOTS * ranks
    durations = sorted(_seconds(runs[r]) for r in good_runs)
    report(f"load: {len(good)} good + {len(load['bad'])} bad uploads at once -> {len(runs)} runs, "
           f"{len(videos)} videos out, every version once; all finished in {load['seconds']:.0f} s "
           f"(run durations {durations[0]:.0f}-{durations[-1]:.0f} s, median {durations[len(durations) // 2]:.0f} s)")
    report(f"load: scoring pool {SCORING_SLOTS} slots x {ranks} ranks: peak {sampler.peak_jobs} scoring jobs, "
           f"{sampler.peak_ranks} `scoring score` rank processes at once ({sampler.samples} /proc samples)")


def test_bad_uploads_through_the_dag_are_quarantined_input_kept(load, busy):
    uploads, runs = load["uploads"], load["runs"]
    quarantine, accepted, out = blob_map(busy, "quarantine"), blob_map(busy, "accepted"), blob_map(busy, "videos-out")
    inbox = blob_map(busy, "videos-in")
    rows = []
    for kind, (name, data) in load["bad"].items():
        run_id = processing_run_id("videos-in", name, uploads[name])
        assert runs[run_id]["state"] == "failed", kind
        assert md5(accepted[name]) == md5(data) and name not in inbox, kind  # taken in, byte-identical
        assert not [n for n in out if n.startswith(str(Path(name).with_suffix("")))], kind
        tasks = busy.api.tasks(run_id)
        assert tasks["probe"]["state"] == "failed" and tasks["probe"]["try_number"] == 1, kind  # no retries
        assert quarantine[name] == data, kind
        reason = _reason_blob(quarantine, name)
        assert "\n" not in reason
        rows.append((kind, "quarantined", reason))
    for kind, (name, _) in load["odd"].items():
        run_id = processing_run_id("videos-in", name, uploads[name])
        assert runs[run_id]["state"] == "success", kind
        rows.append((kind, "processed", "a valid video"))
    busy.bad_rows = rows
    assert busy.api.healthy()


def _seconds(run: dict) -> float:
    from datetime import datetime

    return (datetime.fromisoformat(run["end_date"]) - datetime.fromisoformat(run["start_date"])).total_seconds()


def _reason_blob(quarantine: dict, name: str) -> str:
    """The reason file: <name>.reason.json, or a shortened name where that passes 1024 characters."""
    if len(name + ".reason.json") <= 1024:
        return json.loads(quarantine[name + ".reason.json"])["reason"]
    reasons = [json.loads(v) for k, v in quarantine.items() if k.endswith(".reason.json")]
    matches = [r["reason"] for r in reasons if r["input"].startswith(f"accepted/{name}?snapshot=")]
    assert len(matches) == 1, name
    return matches[0]


TRIGGERED = {  # kind -> (conf, outcome words)
    "zero bytes (in accepted; triggered)": ({"input_blob": "bad/empty.mp4"}, "is empty (0 bytes)"),
    "input_blob with ../": ({"input_blob": "../videos-out/x.mp4"}, "'..' path segment"),
    "input_blob that does not exist": ({"input_blob": "nowhere.mp4"}, "does not exist"),
    ".pth that is not a state dict": ({"input_blob": "load/clip-00.mp4", "model_blob": "junk.pth",
                                       "output_name": "never/b.mp4"}, "not a PyTorch checkpoint"),
    "output_name with ../": ({"input_blob": "load/clip-00.mp4", "output_name": "../x.mp4"}, "'..' path segment"),
}
REFUSED_BY_PARAMS = {  # kind -> conf the API must refuse before a run exists
    "style spec that does not parse": {"input_blob": "load/clip-00.mp4", "style": "seven"},
    "unknown style (30)": {"input_blob": "load/clip-00.mp4", "style": "30"},
    "ranks 0 (out of range)": {"input_blob": "load/clip-00.mp4", "ranks": 0},
    "ranks 'two' (wrong type)": {"input_blob": "load/clip-00.mp4", "ranks": "two"},
    "backend 'gpu' (not in enum)": {"input_blob": "load/clip-00.mp4", "backend": "gpu"},
    "max_duration -5": {"input_blob": "load/clip-00.mp4", "max_duration": -5},
    "input_blob empty": {"input_blob": ""},
}


def test_bad_parameters_are_refused_and_bad_runs_fail_in_one_line(load, busy):
    busy.blob_client().get_blob_client("styles", "junk.pth").upload_blob(b"\x00" * 100, overwrite=True)
    busy.blob_client().get_blob_client("accepted", "bad/empty.mp4").upload_blob(b"", overwrite=True)
    before_in = {k: md5(v) for k, v in blob_map(busy, "accepted").items()}
    before_out = set(blob_map(busy, "videos-out"))
    rows = []
    for kind, conf in REFUSED_BY_PARAMS.items():
        status, answer = busy.api.trigger(conf)
        assert status == 400, (kind, status, answer)
        rows.append((kind, "refused by Params (HTTP 400)", str(answer["detail"]).splitlines()[0][:110]))
    cli = busy.airflow("dags", "trigger", "video_style_transfer", "-c", json.dumps({"ranks": 0, "input_blob": "a"}),
                       check=False)
    assert cli.returncode != 0 and "minimum of 1" in cli.stdout + cli.stderr, cli.stdout + cli.stderr
    rows.append(("ranks 0 via `airflow dags trigger --conf`", "refused by Params (exit 1)",
                 [line for line in (cli.stdout + cli.stderr).splitlines() if "minimum of 1" in line][-1].strip()[:110]))

    triggered = {}
    for i, (kind, (conf, _)) in enumerate(TRIGGERED.items()):
        status, answer = busy.api.trigger(conf, run_id=f"bad_{i}")
        assert status == 200, (kind, status, answer)
        triggered[kind] = f"bad_{i}"
    runs = wait_finished(busy.api, set(triggered.values()), 300)
    errors = {m["body"]["run_id"]: m["body"]["error"] for m in busy.hooks.received if m["body"]["status"] == "failed"}
    for kind, (conf, words) in TRIGGERED.items():
        run_id = triggered[kind]
        assert runs[run_id]["state"] == "failed", kind
        assert words in errors[run_id] and "\n" not in errors[run_id], (kind, errors.get(run_id))
        outcome = "quarantined" if "copied to quarantine" in errors[run_id] else "run failed, no retry"
        rows.append((kind, outcome, errors[run_id]))
        for ti in busy.api.tasks(run_id).values():
            assert ti["try_number"] <= 1, (kind, ti["task_id"])  # a user's error is not retried
    assert {k: md5(v) for k, v in blob_map(busy, "accepted").items()} == before_in
    assert set(blob_map(busy, "videos-out")) == before_out
    assert busy.api.healthy()

    rows = getattr(busy, "bad_rows", []) + rows
    report(f"bad inputs through the DAG: {len(rows)} kinds; every input byte-identical (md5), nothing in "
           f"videos-out, scheduler healthy after")
    width = max(len(k) for k, _, _ in rows)
    for kind, outcome, reason in rows:
        report(f"  {kind:<{width}}  {outcome:<28}  {reason[:150]}")


# --------------------------------------------------------------------------- the watcher's listing cost


def test_preview_link_opens_for_those_who_may_read_runs(load, busy):
    """The preview task's extra link goes to the API server's preview page: a Viewer gets the
    run's preview picture from videos-out; without credentials, nothing. No SAS in the link
    (Airflow keeps extra-link URLs in XCom)."""
    name = "load/clip-00.mp4"
    run_id = processing_run_id("videos-in", name, load["uploads"][name])
    status, answer = busy.api.call("POST", "/auth/token", {"username": "viewer",
                                                           "password": busy.password("viewer")})
    assert status in (200, 201), answer
    viewer = {"Authorization": f"Bearer {answer['access_token']}"}
    quoted = urllib.parse.quote(run_id, safe="")
    request = urllib.request.Request(f"{busy.api.base}/api/v2/dags/video_style_transfer/dagRuns/{quoted}"
                                     "/taskInstances/preview/links", headers=viewer)
    with urlopen(request, timeout=60) as response:
        link = json.loads(response.read())["extra_links"]["Preview"]
    assert link.startswith(f"{busy.api.base}/style-previews/image?") and "sig=" not in link, link
    with urlopen(urllib.request.Request(link, headers=viewer), timeout=60) as page:
        assert page.headers["Content-Type"] == "image/jpeg"
        shown = page.read()
    assert shown == blob_map(busy, "videos-out")["load/clip-00.style-19.mp4.preview.jpg"]
    with pytest.raises(urllib.error.HTTPError) as refused:
        urlopen(link, timeout=60)
    assert refused.value.code in (401, 403)
    report("preview link: a Viewer gets the run's preview through the API server; no credentials -> "
           f"{refused.value.code}; the link holds no SAS")


def test_watcher_trigger_is_quiet_on_an_empty_inbox_and_fires_once(busy, monkeypatch):
    """The provider's trigger the watcher defers to, on an empty inbox beside 200 processed
    uploads: no event while nothing is pending; one upload is one event after one poll."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from airflow.providers.microsoft.azure.triggers.wasb import WasbPrefixSensorTrigger

    for key in ("AIRFLOW_CONN_WASB_DATA", "AIRFLOW_HOME"):
        monkeypatch.setenv(key, busy.env()[key])
    service = busy.blob_client()
    for name in ("listing-inbox", "listing-accepted"):
        service.create_container(name)
    archive = service.get_container_client("listing-accepted")
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: archive.upload_blob(f"old/{i:03d}.mp4", b"x" * 1024), range(200)))

    async def first_event(timeout: float):
        events = WasbPrefixSensorTrigger("listing-inbox", "", "wasb_data", poke_interval=0.5).run()
        return await asyncio.wait_for(events.__anext__(), timeout)

    with pytest.raises(TimeoutError):
        asyncio.run(first_event(5))
    service.get_container_client("listing-inbox").upload_blob("new/one.mp4", b"y" * 1024)
    started = time.perf_counter()
    event = asyncio.run(first_event(10))
    fired = time.perf_counter() - started
    assert event.payload["status"] == "success" and fired < 0.5

    took_in = []
    for log in (Path(busy.env()["AIRFLOW_HOME"]) / "logs").rglob("*"):
        if log.is_file() and "wait_for_uploads" in str(log):
            took_in += [int(line.split("took in ")[1].split(":")[0]) for line in log.read_text(errors="replace")
                        .splitlines() if "inbox: " in line and "took in " in line]
    report(f"watcher: empty inbox beside 200 processed uploads -> no event in 5 s; one upload -> one event "
           f"in {fired * 1000:.0f} ms")
    if took_in:
        report(f"watcher during the load (1 s poke): {len(took_in)} watcher run(s) took in {sum(took_in)} "
               f"upload(s) (per run: {sorted(took_in)})")


# --------------------------------------------------------------------------- faults through the DAG


def _task_running(api: Api, run_id: str, task_id: str):
    runs = api.runs()
    return run_id in runs and api.tasks(run_id).get(task_id, {}).get("state") == "running"


def _check_output(stack: Stack, name: str, folder: Path, frames: int) -> list[str]:
    """The published video has every frame; videos-out holds nothing else for it but its
    manifest and pictures (no partial, no dot-file)."""
    out = stack.blob_client().get_container_client("videos-out")
    stem = str(Path(name).with_suffix(""))
    mine = sorted(b.name for b in out.list_blobs() if b.name.startswith(stem) or "/." in b.name
                  or b.name.startswith("."))
    video = stem + ".style-19.mp4"
    assert mine == sorted([video, *(video + suffix for suffix in (".manifest.json", ".preview.jpg", ".strip.jpg"))]), mine
    (folder / "out.mp4").write_bytes(out.download_blob(video).readall())
    assert ffmpeg.probe(folder / "out.mp4").frames == frames
    return mine


def test_storage_stopped_during_a_transfer_the_run_carries_on(load, busy, clip_factory, tmp_path):
    """Azurite stopped for a few seconds as soon as the watcher has started the run, then started
    again on the same port and folder: the run still ends with a correct video (through the SDK's
    retries, or the task's). The report says when the probe started relative to the gap."""
    from datetime import datetime, timezone

    clip = clip_factory(seconds=4, fps="25", size=(160, 90))
    name = "faults/storage-blip.mp4"
    run_id = processing_run_id("videos-in", name, upload(busy, "videos-in", name, clip.read_bytes()))
    wait_until(lambda: run_id in busy.api.runs(), 180, every=0.3, what="the watcher to start the run")
    pid = busy.pid("azurite")
    os.killpg(pid, signal.SIGTERM)  # Azurite saves its metadata on the way down
    wait_until(lambda: _gone(pid), 30, every=0.2, what="Azurite to stop")
    down = time.monotonic()
    time.sleep(6)
    busy.start_azurite()
    back, down = datetime.now(timezone.utc), time.monotonic() - down
    runs = wait_finished(busy.api, {run_id}, 300)
    assert runs[run_id]["state"] == "success"
    _check_output(busy, name, tmp_path, 100)
    assert md5(busy.blob_client().get_blob_client("accepted", name).download_blob().readall()) == md5(
        clip.read_bytes())
    tasks = busy.api.tasks(run_id)
    retried = {t: ti["try_number"] for t, ti in tasks.items() if (ti["try_number"] or 0) > 1} or "none"
    # the probe's first attempt: when it started against the dead port (its start_date now is the last try's)
    first_probe = min([tasks["probe"]["start_date"]] + [h["start_date"] for h in _tries(busy.api, run_id, "probe")])
    overlap = (back - datetime.fromisoformat(first_probe)).total_seconds()
    when = (f"probe started {overlap:.1f} s before storage was back" if overlap > 0
            else f"probe started only {-overlap:.1f} s after storage was back")
    report(f"fault: Azurite stopped {down:.1f} s right after the run was created ({when}) -> run succeeded, "
           f"100/100 frames, input untouched; tasks retried: {retried}")


def _tries(api: Api, run_id: str, task_id: str) -> list[dict]:
    """Earlier attempts of a task (the task instance shows only the latest)."""
    from urllib.parse import quote

    status, answer = api.call("GET", f"/api/v2/dags/video_style_transfer/dagRuns/{quote(run_id, safe='')}"
                                     f"/taskInstances/{task_id}/tries")
    return [t for t in answer["task_instances"] if t.get("start_date")] if status == 200 else []


def _gone(pid: int) -> bool:
    """The process group led by ``pid`` (our child: reaped here, a zombie would still count) is gone."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        os.killpg(pid, 0)
        return False
    except ProcessLookupError:
        return True


def test_scheduler_and_task_killed_mid_score_the_run_completes(load, busy, clip_factory, tmp_path):
    """SIGKILL to the whole standalone (scheduler, executor, the task's supervisor and runner,
    the mpiexec ranks) while score_local runs; standalone started again: the new scheduler finds
    the dead one's running task, resets it, runs it again (finished segments are skipped), and
    the run publishes."""
    # frames large enough that scoring outlasts the preview (which runs beside split and score):
    # at 160x90 a score_local once finished before the preview was out, and the kill met no score
    clip = clip_factory(seconds=4, fps="25", size=(640, 360), audio=False)
    name = "faults/scheduler-killed.mp4"
    run_id = processing_run_id("videos-in", name, upload(busy, "videos-in", name, clip.read_bytes()))
    sampler = ScoringSampler(busy.scratch)
    preview = str(Path(name).with_suffix("")) + ".style-19.mp4.preview.jpg"
    wait_until(lambda: _task_running(busy.api, run_id, "score_local") and sampler.snapshot()[0] > 0
             and preview in blob_map(busy, "videos-out"), 240,  # the kill is meant for score_local alone: a
             every=0.3, what="score_local's ranks to run, its preview out")  # killed preview is not retried
    pid = busy.pid("airflow")
    # the task runner has a process group of its own: kill the whole tree, as a crash would
    tree = psutil.Process(pid).children(recursive=True)
    os.killpg(pid, signal.SIGKILL)
    for process in tree:
        with contextlib.suppress(psutil.Error):
            process.kill()
    killed = time.monotonic()
    wait_until(lambda: _gone(pid) and not sampler.snapshot()[0], 30, every=0.2, what="the standalone to die")
    busy.start_airflow()
    busy.api = Api(busy)
    runs = wait_finished(busy.api, {run_id}, 360)
    assert runs[run_id]["state"] == "success"
    recovered = time.monotonic() - killed
    _check_output(busy, name, tmp_path, 100)
    score = busy.api.tasks(run_id)["score_local"]
    assert score["try_number"] >= 2
    assert busy.api.healthy()
    manifest = json.loads(busy.blob_client().get_blob_client(
        "videos-out", str(Path(name).with_suffix("")) + ".style-19.mp4.manifest.json").download_blob().readall())
    scored = manifest["scoring"]
    report(f"fault: standalone and its task runner + ranks SIGKILLed mid score_local, restarted -> "
           f"the new scheduler reset the orphaned score_local, run again (try {score['try_number']}); run succeeded "
           f"{recovered:.0f} s after the kill (retry skipped {scored['skipped']} finished segments, scored "
           f"{scored['scored']}), 100/100 frames, videos-out holds only the video, its manifest and its pictures")


# --------------------------------------------------------------------------- faults, step by step

PIPELINE = """
import json, sys
from pipeline import tasks as p
steps, state_file = sys.argv[1].split(","), sys.argv[2]
state = json.load(open(state_file))
params, run_id = state["params"], state["run_id"]
try:
    for step in steps:
        if step == "probe": state["probed"] = p.probe(params, run_id)
        if step == "split": state["split"] = p.split(params, state["probed"], run_id)
        if step == "score": state["scored"] = p.score_local(params, state["probed"])
        if step == "publish":
            state["published"] = p.stitch_and_publish(params, state["probed"], state["split"], state["scored"], run_id)
except Exception as exc:
    state["error"] = f"{type(exc).__name__}: {exc}"
json.dump(state, open(state_file, "w"))
"""
PARAMS = {"style": "19", "model_blob": None, "max_side": None, "ranks": 1, "backend": "local", "output_name": None,
          "segment_frames": 10, "precision": "auto", "max_duration": 3600}


@pytest.fixture(scope="module")
def azurite(tmp_path_factory):
    stack = Stack(tmp_path_factory.mktemp("faults"), blob_port=free_port(), api_port=free_port())
    stack.start_azurite()
    stack.create_containers()
    yield stack
    stack.stop()


def pipeline(stack: Stack, steps: str, state_file: Path, scratch: Path | None = None) -> dict:
    """Task bodies run as a worker runs them (the Airflow connections from the environment)."""
    env = stack.env() | {"PYTHONPATH": f"{REPO / 'plugins'}{os.pathsep}{REPO}"}
    if scratch:
        env["VST_SCRATCH"] = str(scratch)
    result = subprocess.run([sys.executable, "-c", PIPELINE, steps, str(state_file)], env=env, text=True,
                            capture_output=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(state_file.read_text())


def test_output_container_missing_fails_in_one_line_input_kept(azurite, clip_factory, tmp_path):
    clip = clip_factory(seconds=1, fps="10", size=(64, 36))
    etag = upload(azurite, "accepted", "faults/nowhere-to-go.mp4", clip.read_bytes())
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"params": PARAMS | {"input_blob": "faults/nowhere-to-go.mp4"}, "run_id": "fault_1"}))
    assert "error" not in pipeline(azurite, "probe,split,score", state)
    azurite.blob_client().delete_container("videos-out")  # gone before publishing
    try:
        error = pipeline(azurite, "publish", state)["error"]
    finally:
        wait_until(lambda: _recreate(azurite, "videos-out"), 60, every=1, what="videos-out to be created again")
    assert "\n" not in error and "videos-out does not exist" in error, error
    blob = azurite.blob_client().get_blob_client("accepted", "faults/nowhere-to-go.mp4")
    assert blob.get_blob_properties().etag.strip('"') == etag and md5(blob.download_blob().readall()) == md5(
        clip.read_bytes())
    report(f"fault: videos-out deleted before publishing -> {error}; input untouched")


def _recreate(stack: Stack, container: str) -> bool:
    from azure.core.exceptions import ResourceExistsError

    try:
        stack.blob_client().create_container(container)
        return True
    except ResourceExistsError:  # still being deleted
        return False


def test_scratch_disk_full_fails_clearly_input_kept(azurite, clip_factory, tmp_path):
    """The scratch folder on a 1 MiB tmpfs: the video fits, its segments do not."""
    with tiny_disk(tmp_path / "tiny") as scratch:
        clip = clip_factory(seconds=4, fps="25", size=(320, 180))
        assert 200_000 < clip.stat().st_size < 900_000
        etag = upload(azurite, "accepted", "faults/disk-full.mp4", clip.read_bytes())
        state = tmp_path / "state.json"
        state.write_text(json.dumps({"params": PARAMS | {"input_blob": "faults/disk-full.mp4"}, "run_id": "fault_2"}))
        result = pipeline(azurite, "probe,split,score,publish", state, scratch=scratch)
    error = result.get("error", "")
    assert "\n" not in error and "No space left on device" in error, result
    blob = azurite.blob_client().get_blob_client("accepted", "faults/disk-full.mp4")
    assert blob.get_blob_properties().etag.strip('"') == etag
    assert md5(blob.download_blob().readall()) == md5(clip.read_bytes())
    assert not [b.name for b in azurite.blob_client().get_container_client("videos-out").list_blobs()
                if b.name.startswith("faults/disk-full")]
    report(f"fault: scratch on a 1 MiB tmpfs (disk full) -> {error[:200]}; input untouched, nothing in videos-out")
