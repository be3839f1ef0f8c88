"""The bodies of the ``video_style_transfer`` tasks: storage in, a scoring command, storage out.

Each function is idempotent: it can be rerun after a crash or a retry and gives the same
result, never touching the input. Big data moves through blob storage (the run's own
containers in the system account); a local scratch folder is only a cache, so any task may
run on any worker.
What a task returns goes to XCom and is small.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path, PurePosixPath

from observability import metrics, progress
from observability.estimate import azureml_cluster, estimate
from observability.estimate import actual as estimate_and_actual
from storage import blobs
from storage.blobs import ACCEPTED, DATA_CONN, INPUTS, OUTPUTS, QUARANTINE, STYLES, SYSTEM_CONN, BlobStore
from storage.scratch import run_key, scratch, scratch_root

from scoring.launch import child_env, scoring_command
from scoring.media.delivery import DEFAULT_DELIVERY
from scoring.media.split import DEFAULT_HDR
from scoring.media.ffmpeg import Limits
from scoring.media.segments import Plan

MAX_INPUT_BYTES = Limits().max_bytes
MAX_STYLE_IMAGE_BYTES = 100 * 1024**2  # a style picture is read at 256x256: more is never needed
MAX_MODEL_BYTES = 256 * 1024**2  # a TransformerNet state dict is a few MB; a bigger .pth is not one
STYLE_IMAGE = "style-image"  # its name in the scratch folder and in the run's work container
# Pictures published beside an output video ``<output>``, and the reason file beside a quarantined upload.
PREVIEW_SUFFIX, STRIP_SUFFIX, REASON_SUFFIX = ".preview.jpg", ".strip.jpg", ".reason.json"
PREVIEW_FRAMES, STRIP_FRAMES = 3, 8
log = logging.getLogger(__name__)


class BadInput(Exception):
    """The upload or the parameters cannot be processed; the message says why, in one line."""


class AlreadyDone(Exception):
    """This input version was already published with these settings; the message says by whom."""


def default_output_name(input_blob: str, style: str | None, model_blob: str | None, style_image: str | None = None,
                        style_strength: float | None = None) -> str:
    path = PurePosixPath(input_blob)
    if style_image:
        tag = "image-" + PurePosixPath(style_image).stem
    elif model_blob:
        tag = "model-" + PurePosixPath(model_blob).stem
    else:
        tag = "style-" + re.sub(r"[^0-9.]+", "_", style or "0")
    if style_strength is not None and float(style_strength) != 1:
        tag += f"-strength-{float(style_strength):g}"
    return str(path.with_name(f"{path.stem}.{tag}.mp4"))


def scoring(*args: str, ranks: int = 1, threads: int | None = None,
            while_running: Callable[[], object] | None = None) -> dict:
    """Run ``python -m scoring ARGS`` (under ``mpiexec -n ranks`` when ranks > 1, on ``threads``
    threads where given) and return its JSON answer; a user error becomes BadInput, anything
    else stays a bug. The step parses untrusted files, so it sees none of the worker's
    credentials (``child_env``). ``while_running`` is called every second until it ends."""
    env = child_env() | ({"OMP_NUM_THREADS": str(threads)} if threads else {})
    # its own process group, so that whatever ends this task (a kill: see own_scratch) ends
    # every rank too, instead of leaving them to run on and write into the scratch folder
    process = subprocess.Popen(scoring_command(list(args), ranks), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        while True:
            try:
                stdout, stderr = process.communicate(timeout=1 if while_running else None)
                break
            except subprocess.TimeoutExpired:
                while_running()
    except BaseException:
        stop_group(process)
        raise
    result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    if result.stderr:
        print(result.stderr[-4000:], file=sys.stderr)
    if result.returncode == 2:  # under mpiexec every rank says it, and the lines can run together
        raise BadInput(result.stderr.strip().splitlines()[-1].rsplit("error: ", 1)[-1])
    if result.returncode != 0:  # the last line of stderr says why (e.g. "No space left on device")
        last = (result.stderr.strip().splitlines() or [""])[-1].strip()[:300]
        raise RuntimeError(f"scoring {args[0]} failed with exit code {result.returncode}" + (f": {last}" if last else ""))
    return json.loads(result.stdout) if result.stdout.strip() else {}


def stop_group(process: subprocess.Popen, grace: float = 2.0) -> None:
    """SIGTERM to the step's process group (a rank removes its half-written segment and exits),
    SIGKILL to what is left after ``grace`` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(grace)
            return
        except subprocess.TimeoutExpired:
            continue


class Killed(BaseException):
    """Airflow's SIGTERM to a task it stops (the run marked failed, the task cleared): raised in
    the task so that what it started and wrote is cleaned up before the SIGKILL that follows."""


@contextmanager
def own_scratch(key: str, name: str):
    """A task's own folder in the run's scratch folder on this worker, removed when the task
    ends, however it ends: success, failure, or a kill (Airflow sends SIGTERM, then SIGKILL 5 s
    later; the SIGTERM becomes ``Killed`` here, the Task SDK's own handler still called). Then
    the run's folder goes too, once no other task of the run has a folder in it. For the tasks
    of the ``scoring`` queue: no clean_up runs on that queue's workers."""
    folder = scratch(key) / name
    folder.mkdir(parents=True, exist_ok=True)
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.getsignal(signal.SIGTERM)

        def killed(signum, frame):
            if callable(previous):
                previous(signum, frame)
            raise Killed(f"stopped by signal {signum}")

        signal.signal(signal.SIGTERM, killed)
    try:
        yield folder
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        shutil.rmtree(folder, ignore_errors=True)
        with contextlib.suppress(OSError):
            folder.parent.rmdir()  # only when empty


# --------------------------------------------------------------------------- tasks


def probe(params: dict, run_id: str) -> dict:
    """Fetch and validate the accepted upload: the snapshot ``input_version`` where the run has
    one (the watcher pins each upload's), else the current version, which every later read
    then insists on. A bad one is copied to quarantine with its reason."""
    from intake.settings import InvalidSettings, check_run

    started = time.monotonic()
    name, snapshot = params["input_blob"], params.get("input_version")
    try:
        blobs.check_blob_name(name)
    except blobs.InvalidBlobName as exc:
        raise BadInput(f"input_blob: {exc}") from None
    try:
        check_run(params)  # what the form's schema cannot say (a style weighing 0, a model and a picture)
    except InvalidSettings as exc:
        raise BadInput(str(exc)) from None
    data = BlobStore(DATA_CONN)
    style_etag = check_style_image(data, params)  # a parameter's problem: the input is not quarantined
    model_etag = model_version(data, params)
    blob = data.info(ACCEPTED, name, snapshot=snapshot)
    if blob is None:
        raise BadInput(f"{ACCEPTED}/{name}" + (f" (snapshot {snapshot})" if snapshot else "") + " does not exist"
                       + ("" if snapshot else f"; an upload to {INPUTS} gets there when the watcher takes it in"))
    version = {"snapshot": snapshot, "etag": blob.etag}
    output = params.get("output_name") or default_output_name(name, params.get("style"), params.get("model_blob"),
                                                              params.get("style_image"), params.get("style_strength"))
    try:
        blobs.check_blob_name(output)
        bad_output = None
    except blobs.InvalidBlobName as exc:
        bad_output = f"output_name: {exc}"
    if bad_output and params.get("output_name"):  # the parameter's problem: the input is not quarantined
        raise BadInput(bad_output)
    done_by = None if bad_output else published_by(data, output, name, blob.etag, params, style_etag, model_etag)
    if done_by:  # before a byte of the input is downloaded
        raise AlreadyDone(f"{OUTPUTS}/{output} already holds {name} (this version, these settings), "
                          f"published by run {done_by}: nothing to do")
    key = run_key(run_id)
    local = scratch(key) / ("input" + _safe_suffix(name))
    with quarantined_on_bad_input(data, name, version, local, run_id):
        if blob.size > MAX_INPUT_BYTES:  # refused before a byte is downloaded
            raise BadInput(f"{name} is {blob.size / 1024**3:.1f} GiB; the limit is "
                           f"{MAX_INPUT_BYTES / 1024**3:.0f} GiB")
        download_input(data, name, version, local)
        info = scoring("probe", str(local), *_limit_args(params))
        if info["kind"] != "video":
            raise BadInput(f"{PurePosixPath(name).name} is a still image; this pipeline takes videos")
    if bad_output:  # a name so long its result's name would be too: said once the upload itself was checked
        raise BadInput(bad_output)
    work_in, work_out = blobs.run_containers(run_id)
    system = BlobStore(SYSTEM_CONN)
    system.ensure_container(work_in)
    system.ensure_container(work_out)
    backend = params.get("backend") or "local"
    price = estimate(info["frames"], info["width"], info["height"], params,
                     azureml_cluster() if backend == "azureml" else None)
    print(f"estimate: {json.dumps(price)}")
    metrics.run_started(backend)
    return {"run_key": key, "work_in": work_in, "work_out": work_out, "input_blob": name, "etag": blob.etag,
            "snapshot": snapshot,
            "size": blob.size, "output_blob": output, "style_etag": style_etag, "model_etag": model_etag,
            "frames": info["frames"], "duration": info["duration"], "frame_rate": info["frame_rate"],
            "width": info["width"], "height": info["height"], "audio": info["has_audio"],
            "estimate": price, "seconds": round(time.monotonic() - started, 3)}


def download_input(data: BlobStore, name: str, version: dict, path: Path) -> None:
    """Exactly the run's version of the accepted upload: its snapshot, or the etag probe saw."""
    if version.get("snapshot"):
        data.download(ACCEPTED, name, path, snapshot=version["snapshot"])
    else:
        data.download(ACCEPTED, name, path, etag=version["etag"])


@contextmanager
def quarantined_on_bad_input(data: BlobStore, name: str, version: dict, local: Path, run_id: str,
                             withdraw: str | None = None):
    """A BadInput raised inside copies the run's version of the upload to quarantine with its
    reason (the accepted upload itself stays where it was) and is raised again with where the
    copy went. A preview already published for it (``withdraw``) is taken back from videos-out."""
    try:
        yield
    except BadInput as exc:
        reason = str(exc).replace(local.name, PurePosixPath(name).name)
        quarantine(data, ACCEPTED, name, reason, run_id, snapshot=version.get("snapshot"),
                   etag=None if version.get("snapshot") else version["etag"])
        if withdraw:
            data.delete(OUTPUTS, withdraw)
        raise BadInput(f"{name}: {reason} (copied to {QUARANTINE}/{name})") from None


def quarantine(data: BlobStore, container: str, name: str, reason: str, run_id: str | None,
               snapshot: str | None = None, etag: str | None = None) -> None:
    """Copy that version of ``container/name`` to quarantine, and its reason beside it."""
    data.copy(container, name, QUARANTINE, name, snapshot=snapshot, etag=etag)
    source = f"{container}/{name}" + (f"?snapshot={snapshot}" if snapshot else "")
    data.upload_text(json.dumps({"input": source, "reason": reason, "run_id": run_id}, indent=2),
                     QUARANTINE, reason_blob(name), "application/json")
    metrics.run_quarantined()


def reason_blob(name: str) -> str:
    """Where the reason for quarantining ``name`` goes: beside its copy, or, for a name near
    Azure's limit of 1024 characters, under a shortened name made unique by a hash."""
    if len(name + REASON_SUFFIX) <= 1024:
        return name + REASON_SUFFIX
    return f"{name[:990]}~{hashlib.sha256(name.encode()).hexdigest()[:16]}{REASON_SUFFIX}"


def quarantined_by(data: BlobStore, name: str, run_id: str) -> bool:
    """True if this run quarantined the upload ``name``."""
    reason = data.read_text(QUARANTINE, reason_blob(name))
    return bool(reason) and json.loads(reason).get("run_id") == run_id


def preview(params: dict, probed: dict, run_id: str) -> dict:
    """A few frames before and after, as one image beside where the output will land,
    seconds after the upload is seen. It never fails a run: a bad style or model is the
    scoring step's to report, and without a preview the video still comes."""
    started = time.monotonic()
    data = BlobStore(DATA_CONN)
    name = probed["output_blob"] + PREVIEW_SUFFIX
    try:
        with own_scratch(probed["run_key"], "preview") as local:  # its own copies: split fetches the same files
            image = local / "preview.jpg"
            if params.get("style_image"):
                fetch_style_image(params, local, probed["style_etag"])
            args = ["preview", str(local_input(probed, fetch_into=local)), str(image), "--frames", str(PREVIEW_FRAMES),
                    *model_args(params, local, probed.get("model_etag")), *_limit_args(params)]
            if params.get("max_side"):
                args += ["--max-side", str(params["max_side"])]
            # one thread: it runs beside split and score, and torch's threads spin-wait for each
            # other when the cores are taken (measured: docs/performance.md#upload-to-video)
            scoring(*args, threads=1)
            data.upload(image, OUTPUTS, name, content_type="image/jpeg")
    except Exception as exc:  # noqa: BLE001 - see the docstring; the log keeps the traceback
        log.warning("no preview for %s: %s", probed["input_blob"], exc, exc_info=not isinstance(exc, BadInput))
        return {"preview_blob": None, "reason": str(exc)[:300]}
    if quarantined_by(data, probed["input_blob"], run_id):  # split found damage while we worked
        data.delete(OUTPUTS, name)
        return {"preview_blob": None, "reason": "the input was quarantined"}
    return {"preview_blob": name, "seconds": round(time.monotonic() - started, 3)}


def split(params: dict, probed: dict, run_id: str) -> dict:
    started = time.monotonic()
    local = scratch(probed["run_key"])
    source = local_input(probed)
    if params.get("style_image"):  # decoded here, before the video is, so that it never fails on the cluster
        validate_style_image(fetch_style_image(params, local, probed["style_etag"]), params["style_image"])
    args = ["split", str(source), "--out", str(local / "segments"), "--segment-frames", str(params["segment_frames"]),
            "--hdr", params.get("hdr") or DEFAULT_HDR, *_limit_args(params)]
    if params.get("max_side"):
        args += ["--max-side", str(params["max_side"])]
    with quarantined_on_bad_input(BlobStore(DATA_CONN), probed["input_blob"], probed, source, run_id,
                                  withdraw=probed["output_blob"] + PREVIEW_SUFFIX):
        plan = scoring(*args)  # decoding the whole video can find damage the probe could not
    system = BlobStore(SYSTEM_CONN)
    uploaded = system.sync_up(local / "segments", probed["work_in"], "segments/", suffixes=("plan.json",))
    if params.get("model_blob"):  # scoring nodes read only the system account: the model goes there too
        system.upload(fetch_model(params, local, probed.get("model_etag")), probed["work_in"], "model.pth")
    if params.get("style_image"):  # scoring nodes read only the system account: like the model
        system.upload(local / STYLE_IMAGE, probed["work_in"], STYLE_IMAGE)
    return plan | {"uploaded": uploaded, "seconds": round(time.monotonic() - started, 3)}


def score_local(params: dict, probed: dict, report: Callable[[dict], None] | None = None) -> dict:
    """mpiexec over the segments; finished segments in storage are fetched first and skipped.
    While it runs, ``report`` gets the progress (frames done, ETA) from the done markers. Its
    files on this worker go when it ends; only a worker killed with it keeps them, and the
    retry on that worker skips the segments finished there (housekeeping removes the rest)."""
    started = time.monotonic()
    system = BlobStore(SYSTEM_CONN)
    with own_scratch(probed["run_key"], "score") as local:
        system.sync_down(probed["work_in"], "segments/", local / "segments")
        if params.get("style_image"):  # the run's copy, from split
            system.download(probed["work_in"], STYLE_IMAGE, local / STYLE_IMAGE)
        resumed = system.sync_down(probed["work_out"], "styled/", local / "styled")
        plan = Plan.load(local / "segments")
        ranks = plan.useful_ranks(int(params["ranks"]))
        tracker = progress.Tracker.from_plan(asdict(plan), "local", (probed.get("estimate") or {}).get("score_seconds"))
        reporter = progress.Reporter(tracker, lambda: progress.local_markers(local / "styled"),
                                     report or (lambda _: None))
        reporter.tick(force=True)
        try:
            summary = scoring("score", "--segments", str(local / "segments"), "--out", str(local / "styled"),
                              *model_args(params, local, probed.get("model_etag")),
                              "--delivery", params.get("delivery") or DEFAULT_DELIVERY, ranks=ranks,
                              while_running=reporter.tick)
        except Killed:
            raise  # the run is over and the SIGKILL near: the scratch goes first
        except BaseException:  # what finished is kept in storage even if this attempt fails
            system.sync_up(local / "styled", probed["work_out"], "styled/", suffixes=(".done",))
            raise
        system.sync_up(local / "styled", probed["work_out"], "styled/", suffixes=(".done",))
        reporter.tick(force=True)
    return {k: summary.get(k) for k in ("segments", "scored", "skipped", "frames_scored", "ranks")} | {
        "fetched_done_files": resumed, "seconds": round(time.monotonic() - started, 3)}


def model_args(params: dict, local: Path, model_etag: str | None = None) -> list[str]:
    """The score step's style options. ``style_image`` wants the picture that split fetched in
    ``local``; it and ``model_blob`` (the version ``model_etag`` where given) each replace
    ``style`` (probe refuses both at once)."""
    args = ["--precision", params.get("precision", "auto"), *strength_args(params), *temporal_args(params)]
    if params.get("style_image"):
        return ["--style-image", str(local / STYLE_IMAGE), *args]
    if params.get("model_blob"):
        return ["--model", str(fetch_model(params, local, model_etag)), *args]
    return ["--style", str(params.get("style") or "0"), *args]


def local_input(probed: dict, fetch_into: Path | None = None) -> Path:
    """The upload in this worker's scratch folder: the probed copy, or on another worker
    exactly the version that was probed, fetched again (into ``fetch_into``, a task's own
    folder, where given)."""
    source = scratch(probed["run_key"]) / ("input" + _safe_suffix(probed["input_blob"]))
    if not source.is_file():
        source = (fetch_into or source.parent) / source.name
        if not source.is_file():
            download_input(BlobStore(DATA_CONN), probed["input_blob"], probed, source)
    return source


def strength_args(params: dict) -> list[str]:
    strength = params.get("style_strength")
    return [] if strength is None or float(strength) == 1 else ["--style-strength", str(float(strength))]


def temporal_args(params: dict) -> list[str]:
    """``--temporal STRENGTH`` when the run asks for steadier video; nothing when it is off."""
    strength = params.get("temporal") or 0
    return ["--temporal", str(strength)] if float(strength) else []


def fetch_model(params: dict, local: Path, etag: str | None = None) -> Path:
    """The user's .pth from the styles container, the version probe saw where it saw one
    (cached in the run's scratch folder)."""
    from azure.core.exceptions import ResourceModifiedError

    path = local / "model.pth"
    if not path.is_file():
        try:
            name = blobs.check_blob_name(params["model_blob"])
        except blobs.InvalidBlobName as exc:
            raise BadInput(f"model_blob: {exc}") from None
        data = BlobStore(DATA_CONN)
        check_model_size(data.info(STYLES, name), name)
        try:
            data.download(STYLES, name, path, etag=etag)
        except ResourceModifiedError:
            raise BadInput(f"model_blob {STYLES}/{name} was replaced during the run; "
                           "trigger again to use the new version") from None
    return path


def model_version(data: BlobStore, params: dict) -> str | None:
    """The ``model_blob``'s etag, the version this run uses (None without one, or where the
    name is bad or missing: split reports those in one line). One over ``MAX_MODEL_BYTES``
    is refused here, before anything is downloaded."""
    if not params.get("model_blob"):
        return None
    try:
        name = blobs.check_blob_name(params["model_blob"])
    except blobs.InvalidBlobName:
        return None
    blob = data.info(STYLES, name)
    if blob:
        check_model_size(blob, name)
    return blob.etag if blob else None


def check_model_size(blob: blobs.BlobInfo | None, name: str) -> None:
    """The ``model_blob`` exists and is not over ``MAX_MODEL_BYTES`` (checked from its properties)."""
    if blob is None:
        raise BadInput(f"model_blob {STYLES}/{name} does not exist")
    if blob.size > MAX_MODEL_BYTES:
        raise BadInput(f"model_blob {STYLES}/{name} is {blob.size / 1024**2:.0f} MiB; the limit is "
                       f"{MAX_MODEL_BYTES / 1024**2:.0f} MiB (a TransformerNet .pth is a few MB)")


def check_style_image(data: BlobStore, params: dict) -> str | None:
    """The ``style_image`` blob's etag (the version this run uses), after the checks that need no download."""
    if not params.get("style_image"):
        return None
    try:
        name = blobs.check_blob_name(params["style_image"])
    except blobs.InvalidBlobName as exc:
        raise BadInput(f"style_image: {exc}") from None
    blob = data.info(STYLES, name)
    if blob is None:
        raise BadInput(f"style_image {STYLES}/{name} does not exist")
    if blob.size > MAX_STYLE_IMAGE_BYTES:
        raise BadInput(f"style_image {STYLES}/{name} is {blob.size / 1024**2:.0f} MiB; the limit is "
                       f"{MAX_STYLE_IMAGE_BYTES / 1024**2:.0f} MiB (a style picture needs no more than about 1000 px)")
    return blob.etag


def fetch_style_image(params: dict, local: Path, etag: str | None) -> Path:
    """The ``style_image`` picture from the styles container, exactly the version probe saw."""
    path = local / STYLE_IMAGE
    if not path.is_file():
        BlobStore(DATA_CONN).download(STYLES, blobs.check_blob_name(params["style_image"]), path, etag=etag)
    return path


def validate_style_image(path: Path, name: str) -> None:
    from scoring.media.errors import UserError
    from scoring.media.pictures import load_style_image

    try:
        load_style_image(path)
    except UserError as exc:
        raise BadInput(str(exc).replace(f"style image {path.name}", f"style_image {STYLES}/{name}")) from None


def stitch_and_publish(params: dict, probed: dict, split_facts: dict, scored: dict, run_id: str) -> dict:
    """Join, check, and publish the video and its manifest to videos-out (once per input version).

    The video goes up only if ``output`` is still what this run saw when it started (absent,
    or that version): of two runs racing for one output exactly one publishes, and the other
    says by whom. The contact strip and the manifest (which names the video's etag) follow it,
    each written only while that video is the one in place, so they always describe the
    bytes beside them."""
    started = time.monotonic()
    local = scratch(probed["run_key"])
    data, system = BlobStore(DATA_CONN), BlobStore(SYSTEM_CONN)
    output = probed["output_blob"]
    seen = data.info(OUTPUTS, output)  # the version this run may replace; any other means another run won
    done_by = published_by(data, output, probed["input_blob"], probed["etag"], params, probed.get("style_etag"),
                           probed.get("model_etag"))
    if done_by and done_by != _ascii(run_id):  # a concurrent run of the same version got here first
        print(f"{OUTPUTS}/{output} already holds this input version with these settings (run {done_by})")
        return {"output_blob": output, "published": False, "by_run": done_by}
    system.sync_down(probed["work_in"], "segments/", local / "segments")
    system.sync_down(probed["work_out"], "styled/", local / "styled")
    video = local / "output.mp4"
    # the upload itself gives the output its audio, subtitles, chapters and metadata
    stitched = scoring("stitch", "--segments", str(local / "segments"), "--styled", str(local / "styled"),
                       "--source", str(local_input(probed)), "--delivery", params.get("delivery") or DEFAULT_DELIVERY,
                       str(video))
    strip = local / "strip.jpg"
    scoring("strip", str(video), str(strip), "--frames", str(STRIP_FRAMES))
    stitch_seconds = time.monotonic() - started
    preview_blob = output + PREVIEW_SUFFIX if data.info(OUTPUTS, output + PREVIEW_SUFFIX) else None
    metadata = {"source_blob": _ascii(probed["input_blob"]), "source_etag": probed["etag"],
                "settings": settings_digest(params, probed.get("style_etag"), probed.get("model_etag")),
                "run_id": _ascii(run_id)}
    video_etag = data.publish(video, OUTPUTS, output, metadata, seen.etag if seen else None)
    current = data.info(OUTPUTS, output) if video_etag is None else None
    if current and current.metadata.get("run_id") == metadata["run_id"]:  # our own upload, retried by the SDK
        video_etag = current.etag
    if video_etag is None:  # another run published since this one looked: its video stays, with its manifest
        by_run = (current or seen).metadata.get("run_id", "?")
        print(f"{OUTPUTS}/{output} was published meanwhile by run {by_run}: this run's result is not published")
        return {"output_blob": output, "published": False, "by_run": by_run}
    data.publish_beside(strip.read_bytes(), OUTPUTS, output + STRIP_SUFFIX, output, video_etag, "image/jpeg")
    manifest = {
        "input": {"container": ACCEPTED, "blob": probed["input_blob"], "etag": probed["etag"],
                  "snapshot": probed.get("snapshot"), "bytes": probed["size"],
                  "frames": probed["frames"], "duration": probed["duration"], "frame_rate": probed["frame_rate"],
                  "size": f"{probed['width']}x{probed['height']}", "audio": probed["audio"]},
        "output": {"container": OUTPUTS, "blob": output, "etag": video_etag, "frames": stitched["frames"],
                   "size": stitched["size"],
                   "frame_rate": stitched["frame_rate"], "audio": stitched["audio"], "bytes": video.stat().st_size,
                   "frame_times": stitched.get("frame_times"), "colour": stitched.get("colour"),
                   "sample_aspect_ratio": stitched.get("sar"), "picture": stitched.get("picture")},
        # per stream of the upload: styled, kept, converted (to what) or dropped, and why
        "streams": stitched.get("streams"),
        "settings": {k: params.get(k) for k in ("style", "model_blob", "style_image", "style_strength", "max_side",
                                                 "ranks", "backend", "segment_frames", "precision", "temporal")},
        "pictures": {"preview": preview_blob, "contact_strip": output + STRIP_SUFFIX},
        "segments": split_facts.get("segments"),
        "scoring": {k: v for k, v in scored.items() if k not in ("seconds", "fetched_done_files", "cost")},
        # Azure ML: node-seconds per "tier/vm_size" over every job of the run, resubmissions included
        "cost": scored.get("cost"),
        # probe's estimate of the score step beside what it took (docs/azureml.md#the-price-before-the-wait)
        "estimate": estimate_and_actual(probed.get("estimate"), scored),
        "seconds": {"probe": probed["seconds"], "split": split_facts["seconds"], "score": scored.get("seconds"),
                    "stitch": round(stitch_seconds, 3),
                    "publish": round(time.monotonic() - started - stitch_seconds, 3)},
        "run_id": run_id,
    }
    if not data.publish_beside(json.dumps(manifest, indent=2).encode(), OUTPUTS, output + ".manifest.json", output,
                               video_etag, "application/json"):
        print(f"{OUTPUTS}/{output} was replaced by a later run before its manifest was written: that run writes it")
    metrics.run_published()
    metrics.frames_styled(params.get("backend") or "local", stitched["frames"], scored.get("seconds"))
    return {"output_blob": output, "published": True, "frames": stitched["frames"],
            "preview_blob": preview_blob, "strip_blob": output + STRIP_SUFFIX}


def clean_up(run_id: str) -> int:
    """Once the run is final (published, failed or skipped), its work containers and this
    worker's scratch folder are no longer needed: both follow from the run id alone, so this
    works whatever step the run ended at. The ``scoring`` queue's tasks remove their own files
    (``own_scratch``); what another ``default`` worker holds is the housekeeping DAG's."""
    system = BlobStore(SYSTEM_CONN)
    removed = sum(system.delete_container(name) for name in blobs.run_containers(run_id))
    shutil.rmtree(scratch_root() / run_key(run_id), ignore_errors=True)
    return removed


# --------------------------------------------------------------------------- helpers


def published_by(data: BlobStore, output: str, input_blob: str, etag: str, params: dict,
                 style_etag: str | None = None, model_etag: str | None = None) -> str | None:
    """The run that published this input version with these settings to ``output``, if any."""
    existing = data.info(OUTPUTS, output)
    meta = existing.metadata if existing else {}
    if meta.get("source_etag") == etag and meta.get("source_blob") == _ascii(input_blob) \
            and meta.get("settings") == settings_digest(params, style_etag, model_etag):
        return meta.get("run_id")
    return None


def settings_digest(params: dict, style_etag: str | None = None, model_etag: str | None = None) -> str:
    """What decides the output's pixels. A style picture or a model counts by version (its
    etag), so a new upload under the same name is a new result; the keys added later are left
    out at their defaults, so outputs published before them keep their digest."""
    keys = ("style", "model_blob", "max_side", "segment_frames", "precision")
    settings = {k: params.get(k) for k in keys}
    if params.get("style_image"):
        settings |= {"style_image": params["style_image"], "style_etag": style_etag}
    if params.get("model_blob") and model_etag:
        settings["model_etag"] = model_etag
    if strength_args(params):
        settings["style_strength"] = float(params["style_strength"])
    if float(params.get("temporal") or 0):  # only when on: outputs published before the option keep their digest
        settings["temporal"] = float(params["temporal"])
    if (params.get("delivery") or DEFAULT_DELIVERY) != DEFAULT_DELIVERY:  # as temporal: only when not the default
        settings["delivery"] = params["delivery"]
    if (params.get("hdr") or DEFAULT_HDR) != DEFAULT_HDR:  # so too the HDR choice
        settings["hdr"] = params["hdr"]
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _safe_suffix(name: str) -> str:
    suffix = PurePosixPath(name).suffix.lower()
    return suffix if re.fullmatch(r"\.[a-z0-9]{1,8}", suffix) else ".bin"


def _ascii(text: str) -> str:
    """Blob metadata values must be ASCII."""
    return text.encode("ascii", "backslashreplace").decode()


def _limit_args(params: dict) -> list[str]:
    return ["--max-duration", str(params.get("max_duration", 3600))]
