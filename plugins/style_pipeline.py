"""The bodies of the ``video_style_transfer`` tasks: storage in, a scoring command, storage out.

Each function is idempotent: it can be rerun after a crash or a retry and gives the same
result, never touching the input. Big data moves through blob storage (the run's own
containers in the system account); a local scratch folder is only a cache, so any task may
run on any worker.
What a task returns goes to XCom and is small.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

import storage
from storage import DATA_CONN, INPUTS, OUTPUTS, QUARANTINE, STYLES, SYSTEM_CONN, BlobStore

from scoring.media import Limits

MAX_INPUT_BYTES = Limits().max_bytes


class BadInput(Exception):
    """The upload or the parameters cannot be processed; the message says why, in one line."""


class AlreadyDone(Exception):
    """This input version was already published with these settings; the message says by whom."""


def run_key(run_id: str) -> str:
    """A storage-safe, unique folder name for one DAG run (run ids may hold any character)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", run_id).strip("-.")[:60]
    return f"{slug}-{hashlib.sha256(run_id.encode()).hexdigest()[:10]}"


def scratch(key: str) -> Path:
    root = Path(os.environ.get("VST_SCRATCH", Path(tempfile.gettempdir()) / "video-style-transfer"))
    path = root / key
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_output_name(input_blob: str, style: str | None, model_blob: str | None) -> str:
    path = PurePosixPath(input_blob)
    tag = "model-" + PurePosixPath(model_blob).stem if model_blob else "style-" + re.sub(r"[^0-9.]+", "_", style or "0")
    return str(path.with_name(f"{path.stem}.{tag}.mp4"))


def scoring(*args: str, ranks: int = 1) -> dict:
    """Run ``python -m scoring ARGS`` (under ``mpiexec -n ranks`` when ranks > 1) and return
    its JSON answer; a user error becomes BadInput, anything else stays a bug."""
    cmd = [sys.executable, "-m", "scoring", *args]
    if ranks > 1:
        mpiexec = shutil.which("mpiexec", path=os.pathsep.join([os.path.dirname(sys.executable), os.environ["PATH"]]))
        cmd = [mpiexec or "mpiexec", "-n", str(ranks), *cmd]
    result = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if result.stderr:
        print(result.stderr[-4000:], file=sys.stderr)
    if result.returncode == 2:
        raise BadInput(result.stderr.strip().splitlines()[-1].removeprefix("error: "))
    if result.returncode != 0:
        raise RuntimeError(f"scoring {args[0]} failed with exit code {result.returncode}")
    return json.loads(result.stdout) if result.stdout.strip() else {}


# --------------------------------------------------------------------------- tasks


def probe(params: dict, run_id: str) -> dict:
    """Fetch and validate the upload. A bad one is copied to quarantine with its reason."""
    started = time.monotonic()
    name = params["input_blob"]
    try:
        storage.check_blob_name(name)
    except storage.InvalidBlobName as exc:
        raise BadInput(f"input_blob: {exc}") from None
    data = BlobStore(DATA_CONN)
    blob = data.info(INPUTS, name)
    if blob is None:
        raise BadInput(f"{INPUTS}/{name} does not exist")
    key = run_key(run_id)
    local = scratch(key) / ("input" + _safe_suffix(name))
    with quarantined_on_bad_input(data, name, local, run_id):
        if blob.size > MAX_INPUT_BYTES:  # refused before a byte is downloaded
            raise BadInput(f"{name} is {blob.size / 1024**3:.1f} GiB; the limit is "
                           f"{MAX_INPUT_BYTES / 1024**3:.0f} GiB")
        data.download(INPUTS, name, local, etag=blob.etag)
        info = scoring("probe", str(local), *_limit_args(params))
        if info["kind"] != "video":
            raise BadInput(f"{PurePosixPath(name).name} is a still image; this pipeline takes videos")
    output = params.get("output_name") or default_output_name(name, params.get("style"), params.get("model_blob"))
    try:
        storage.check_blob_name(output)
    except storage.InvalidBlobName as exc:
        raise BadInput(f"output_name: {exc}") from None
    done_by = published_by(data, output, name, blob.etag, params)
    if done_by:
        raise AlreadyDone(f"{OUTPUTS}/{output} already holds {name} (this version, these settings), "
                          f"published by run {done_by}: nothing to do")
    work_in, work_out = storage.run_containers(run_id)
    system = BlobStore(SYSTEM_CONN)
    system.ensure_container(work_in)
    system.ensure_container(work_out)
    return {"run_key": key, "work_in": work_in, "work_out": work_out, "input_blob": name, "etag": blob.etag,
            "size": blob.size, "output_blob": output,
            "frames": info["frames"], "duration": info["duration"], "frame_rate": info["frame_rate"],
            "width": info["width"], "height": info["height"], "audio": info["has_audio"],
            "seconds": round(time.monotonic() - started, 3)}


@contextmanager
def quarantined_on_bad_input(data: BlobStore, name: str, local: Path, run_id: str):
    """A BadInput raised inside copies the upload to quarantine with its reason (the
    upload itself stays where it was) and is raised again with where the copy went."""
    try:
        yield
    except BadInput as exc:
        reason = str(exc).replace(local.name, PurePosixPath(name).name)
        data.copy(INPUTS, name, QUARANTINE, name)
        data.upload_text(json.dumps({"input": f"{INPUTS}/{name}", "reason": reason, "run_id": run_id}, indent=2),
                         QUARANTINE, name + ".reason.json", "application/json")
        raise BadInput(f"{name}: {reason} (copied to {QUARANTINE}/{name})") from None


def split(params: dict, probed: dict, run_id: str) -> dict:
    started = time.monotonic()
    local = scratch(probed["run_key"])
    source = local / ("input" + _safe_suffix(probed["input_blob"]))
    if not source.is_file():  # another worker: fetch exactly the version that was probed
        BlobStore(DATA_CONN).download(INPUTS, probed["input_blob"], source, etag=probed["etag"])
    args = ["split", str(source), "--out", str(local / "segments"), "--segment-frames", str(params["segment_frames"]),
            *_limit_args(params)]
    if params.get("max_side"):
        args += ["--max-side", str(params["max_side"])]
    with quarantined_on_bad_input(BlobStore(DATA_CONN), probed["input_blob"], source, run_id):
        plan = scoring(*args)  # decoding the whole video can find damage the probe could not
    system = BlobStore(SYSTEM_CONN)
    uploaded = system.sync_up(local / "segments", probed["work_in"], "segments/", suffixes=("plan.json",))
    if params.get("model_blob"):  # scoring nodes read only the system account: the model goes there too
        system.upload(fetch_model(params, local), probed["work_in"], "model.pth")
    return plan | {"uploaded": uploaded, "seconds": round(time.monotonic() - started, 3)}


def score_local(params: dict, probed: dict) -> dict:
    """mpiexec over the segments; finished segments in storage are fetched first and skipped."""
    started = time.monotonic()
    local = scratch(probed["run_key"])
    system = BlobStore(SYSTEM_CONN)
    system.sync_down(probed["work_in"], "segments/", local / "segments")
    resumed = system.sync_down(probed["work_out"], "styled/", local / "styled")
    try:
        summary = scoring("score", "--segments", str(local / "segments"), "--out", str(local / "styled"),
                          *model_args(params, local), ranks=int(params["ranks"]))
    finally:  # what finished is kept in storage even if this attempt fails
        system.sync_up(local / "styled", probed["work_out"], "styled/", suffixes=(".done",))
    return {k: summary.get(k) for k in ("segments", "scored", "skipped", "frames_scored", "ranks")} | {
        "fetched_done_files": resumed, "seconds": round(time.monotonic() - started, 3)}


def model_args(params: dict, local: Path) -> list[str]:
    args = ["--precision", params.get("precision", "auto"), *temporal_args(params)]
    if params.get("model_blob"):
        return ["--model", str(fetch_model(params, local)), *args]
    return ["--style", str(params.get("style") or "0"), *args]


def temporal_args(params: dict) -> list[str]:
    """``--temporal STRENGTH`` when the run asks for steadier video; nothing when it is off."""
    strength = params.get("temporal") or 0
    return ["--temporal", str(strength)] if float(strength) else []


def fetch_model(params: dict, local: Path) -> Path:
    """The user's .pth from the styles container (cached in the run's scratch folder)."""
    path = local / "model.pth"
    if not path.is_file():
        try:
            name = storage.check_blob_name(params["model_blob"])
        except storage.InvalidBlobName as exc:
            raise BadInput(f"model_blob: {exc}") from None
        data = BlobStore(DATA_CONN)
        if data.info(STYLES, name) is None:
            raise BadInput(f"model_blob {STYLES}/{name} does not exist")
        data.download(STYLES, name, path)
    return path


def stitch_and_publish(params: dict, probed: dict, split_facts: dict, scored: dict, run_id: str) -> dict:
    """Join, check, and publish the video and its manifest to videos-out (once per input version)."""
    started = time.monotonic()
    local = scratch(probed["run_key"])
    data, system = BlobStore(DATA_CONN), BlobStore(SYSTEM_CONN)
    output = probed["output_blob"]
    done_by = published_by(data, output, probed["input_blob"], probed["etag"], params)
    if done_by:  # a concurrent run of the same version got here first
        print(f"{OUTPUTS}/{output} already holds this input version with these settings (run {done_by})")
        return {"output_blob": output, "published": False, "by_run": done_by}
    system.sync_down(probed["work_in"], "segments/", local / "segments")
    system.sync_down(probed["work_out"], "styled/", local / "styled")
    video = local / "output.mp4"
    stitched = scoring("stitch", "--segments", str(local / "segments"), "--styled", str(local / "styled"), str(video))
    stitch_seconds = time.monotonic() - started
    metadata = {"source_blob": _ascii(probed["input_blob"]), "source_etag": probed["etag"],
                "settings": settings_digest(params), "run_id": _ascii(run_id)}
    data.upload(video, OUTPUTS, output, metadata=metadata)  # one commit: complete or absent
    manifest = {
        "input": {"container": INPUTS, "blob": probed["input_blob"], "etag": probed["etag"], "bytes": probed["size"],
                  "frames": probed["frames"], "duration": probed["duration"], "frame_rate": probed["frame_rate"],
                  "size": f"{probed['width']}x{probed['height']}", "audio": probed["audio"]},
        "output": {"container": OUTPUTS, "blob": output, "frames": stitched["frames"], "size": stitched["size"],
                   "frame_rate": stitched["frame_rate"], "audio": stitched["audio"], "bytes": video.stat().st_size},
        "settings": {k: params.get(k) for k in ("style", "model_blob", "max_side", "ranks", "backend",
                                                 "segment_frames", "precision", "temporal")},
        "segments": split_facts.get("segments"),
        "scoring": {k: v for k, v in scored.items() if k not in ("seconds", "fetched_done_files")},
        "seconds": {"probe": probed["seconds"], "split": split_facts["seconds"], "score": scored.get("seconds"),
                    "stitch": round(stitch_seconds, 3),
                    "publish": round(time.monotonic() - started - stitch_seconds, 3)},
        "run_id": run_id,
    }
    data.upload_text(json.dumps(manifest, indent=2), OUTPUTS, output + ".manifest.json", "application/json")
    return {"output_blob": output, "published": True, "frames": stitched["frames"]}


def clean_up(probed: dict) -> int:
    """After publishing, the run's intermediate files are no longer needed anywhere."""
    system = BlobStore(SYSTEM_CONN)
    removed = sum(system.delete_container(name) for name in (probed["work_in"], probed["work_out"]))
    shutil.rmtree(scratch(probed["run_key"]), ignore_errors=True)
    return removed


# --------------------------------------------------------------------------- helpers


def published_by(data: BlobStore, output: str, input_blob: str, etag: str, params: dict) -> str | None:
    """The run that published this input version with these settings to ``output``, if any."""
    existing = data.info(OUTPUTS, output)
    meta = existing.metadata if existing else {}
    if meta.get("source_etag") == etag and meta.get("source_blob") == _ascii(input_blob) \
            and meta.get("settings") == settings_digest(params):
        return meta.get("run_id")
    return None


def settings_digest(params: dict) -> str:
    keys = ("style", "model_blob", "max_side", "segment_frames", "precision")
    settings = {k: params.get(k) for k in keys}
    if float(params.get("temporal") or 0):  # only when on: outputs published before the option keep their digest
        settings["temporal"] = float(params["temporal"])
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _safe_suffix(name: str) -> str:
    suffix = PurePosixPath(name).suffix.lower()
    return suffix if re.fullmatch(r"\.[a-z0-9]{1,8}", suffix) else ".bin"


def _ascii(text: str) -> str:
    """Blob metadata values must be ASCII."""
    return text.encode("ascii", "backslashreplace").decode()


def _limit_args(params: dict) -> list[str]:
    return ["--max-duration", str(params.get("max_duration", 3600))]
