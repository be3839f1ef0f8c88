"""Helpers the tests share: running the CLI for real, reading frames, comparing pictures."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote

import numpy as np

from scoring.media import ffmpeg

REPO = Path(__file__).resolve().parents[1]
SHARED_MEDIA = REPO.parent / "shared" / "media"


def style_network(name: str, tmp_path: Path):
    """One of the three networks the tests style with, by name: "26-style" (style 7),
    "TransformerNet" (random weights, seeded) or "style picture" (scikit-image's cat)."""
    import torch
    from skimage import data

    from scoring.networks.models import TransformerNet, UnitRange, load_model

    if name == "26-style":
        return load_model("7")
    if name == "TransformerNet":
        torch.manual_seed(0)
        return UnitRange(TransformerNet()).eval()
    from PIL import Image

    Image.fromarray(data.chelsea()).save(tmp_path / "style.png")
    return load_model(style_image=tmp_path / "style.png")


def same_on_any_thread_count(run) -> bool:
    """Whether ``run()`` gives the same tensor on 1, 2 and again 1 of torch's threads."""
    import torch

    previous = torch.get_num_threads()
    outputs = []
    try:
        for threads in (1, 2, 1):
            torch.set_num_threads(threads)
            outputs.append(run())
    finally:
        torch.set_num_threads(previous)
    return all(torch.equal(outputs[0], other) for other in outputs[1:])


def run_scoring(*args, cwd=None, check=False, timeout=300) -> subprocess.CompletedProcess:
    """``python -m scoring ARGS`` in a fresh process, as a user would run it."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-m", "scoring", *map(str, args)], capture_output=True, text=True,
                            cwd=cwd, env=env, timeout=timeout, stdin=subprocess.DEVNULL)
    if check and result.returncode != 0:
        raise AssertionError(f"scoring {args} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_frames(path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """All frames of a video as uint8 [N, H, W, 3]."""
    info = ffmpeg.probe(path)
    size = size or (info.width, info.height)
    with ffmpeg.FrameReader(path, size) as reader:
        return np.concatenate(list(reader.batches(64)))


def decoded_frames(path: Path) -> int:
    """Frames of a video's first video stream counted by decoding every one of them (a packet
    without a picture, or one the decoder refuses, is not a frame); the decoder must say nothing."""
    result = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
                             "stream=nb_read_frames", "-of", "json", str(path)], capture_output=True, text=True,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0 and not result.stderr.strip(), f"{Path(path).name} does not decode cleanly: " \
        f"{result.stderr.strip()[-500:]}"
    return int(json.loads(result.stdout)["streams"][0]["nb_read_frames"])  # MPEG-TS lists it per program too


def assert_every_frame_decodes(output: Path, source: Path) -> int:
    """The output holds as many decodable frames as the source, and as many packets: nothing
    lost, nothing doubled, no packet without its picture."""
    frames = decoded_frames(output)
    assert frames == decoded_frames(source), f"{Path(output).name}: {frames} frames decode, " \
        f"the source {Path(source).name} has {decoded_frames(source)}"
    assert ffmpeg.count_frames(output) == frames, f"{Path(output).name}: {ffmpeg.count_frames(output)} packets, " \
        f"{frames} decodable frames"
    return frames


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def xcom_value(value):
    """An XCom entry's value as the REST API gives it (a JSON value, or its string form)."""
    import ast

    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return ast.literal_eval(value)
    return value


@contextlib.contextmanager
def azurite(location: Path, accounts: dict[str, str]):
    """Azurite's blob service alone on a free port, with ``accounts`` (name: key), for tests that
    need storage and no stack; yields the port, and stops it on the way out."""
    from devstack import free_port, wait_for_port

    port = free_port()
    env = dict(os.environ, AZURITE_ACCOUNTS=";".join(f"{name}:{key}" for name, key in accounts.items()))
    proc = subprocess.Popen([str(REPO / "node_modules" / ".bin" / "azurite-blob"), "--silent", "--location",
                             str(location), "--blobHost", "127.0.0.1", "--blobPort", str(port),
                             "--skipApiVersionCheck"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, timeout=60, process=proc)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # Azurite may linger on SIGTERM; it holds nothing a test needs
            proc.kill()
            proc.wait(timeout=30)


# The stacks are on this machine: their APIs are reached directly, never through a proxy.
# urlopen's global opener keeps the proxies of the environment it was first used in, and the
# Azure ML tests set the emulator's proxy for the SDK while they run: a later module's calls
# to its own stack then went to the emulator's closed port (Connection refused).
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@contextlib.contextmanager
def tiny_disk(folder: Path, size: str = "1m"):
    """``folder`` on a tmpfs of ``size`` (a full scratch disk) for the block; skips the test
    where this machine cannot mount one."""
    import pytest

    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


def x264_runs(path: Path) -> list[str]:
    """The options of each x264 encode whose pictures ``path`` holds: x264 writes them in an SEI
    where it starts, so a stream joined from segments holds one per segment."""
    return [m.decode() for m in re.findall(rb"x264 - core \d+ .*? - options: ([ -~]+)", Path(path).read_bytes())]


def encoded_by_the_ranks(video: Path, manifest: dict, segments: int, delivery: str | None = None) -> None:
    """The published video is the ranks' own encode for ``delivery`` (default: the default),
    copied by the stitch: one x264 run per segment at the delivery's settings, no second encode."""
    from scoring.media.delivery import DEFAULT_DELIVERY, segment_encode

    delivery = delivery or DEFAULT_DELIVERY
    styled = next(s for s in manifest["streams"] if s["action"] == "styled")
    assert (styled["delivery"], styled["encoder"], styled["encoded_by"]) == (
        delivery, "copy", "the ranks, as they styled"), styled
    crf = segment_encode(delivery)[1]
    runs = x264_runs(video)
    assert len(runs) == segments and all(f" crf={crf}.0 " in r and " bframes=0 " in r for r in runs), runs


def wait_until(condition, timeout: float, what: str = "the condition", every: float = 1.0):
    """``condition()``'s first true value, asked every ``every`` seconds; fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(every)
    return value


def urlopen(request, timeout: float = 60):
    """``urllib.request.urlopen`` for a stack on this machine, without any proxy."""
    return DIRECT.open(request, timeout=timeout)


class Api:
    """A running stack's REST API as one user, or as nobody (``user=None``: no token). An
    `airflow` CLI process per question costs seconds of CPU, which a test that polls would take
    from the stack it waits on."""

    PAGE = 100  # the API server's default [api] maximum_page_limit

    def __init__(self, stack, user: str | None = "admin"):
        self.base = f"http://127.0.0.1:{stack.api_port}"
        self.stack, self.user, self._token = stack, user, None

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, object]:
        """(status, JSON answer). A statement that met SQLite's write lock (the standalone's
        database, development only) fails whole with HTTP 500 "Database error": asked again."""
        for attempt in range(3):
            status, answer = self._call(method, path, body)
            detail = answer.get("detail") if isinstance(answer, dict) else None
            if status != 500 or not isinstance(detail, dict) or detail.get("reason") != "Database error":
                return status, answer
            time.sleep(2 + attempt)
        return status, answer

    def _call(self, method: str, path: str, body: dict | None = None) -> tuple[int, object]:
        if self._token is None and self.user is not None and path != "/auth/token":
            status, answer = self.call("POST", "/auth/token",
                                       {"username": self.user, "password": self.stack.password(self.user)})
            assert status in (200, 201), (status, answer)
            self._token = answer["access_token"]
        headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {self._token}"}
                                                          if self._token else {})
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, method=method, data=data, headers=headers)
        try:
            with urlopen(request) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def runs(self, dag_id: str = "video_style_transfer") -> dict[str, dict]:
        """Every run of the DAG, page by page."""
        found: dict[str, dict] = {}
        while True:
            status, answer = self.call("GET", f"/api/v2/dags/{dag_id}/dagRuns?limit={self.PAGE}&offset={len(found)}"
                                              "&order_by=id")
            assert status == 200, answer
            found |= {r["dag_run_id"]: r for r in answer["dag_runs"]}
            if len(answer["dag_runs"]) < self.PAGE:
                return found

    def tasks(self, run_id: str, dag_id: str = "video_style_transfer") -> dict[str, dict]:
        status, answer = self.call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances")
        assert status == 200, answer
        return {t["task_id"]: t for t in answer["task_instances"]}

    def trigger(self, conf: dict, run_id: str | None = None, dag_id: str = "video_style_transfer"
                ) -> tuple[int, object]:
        return self.call("POST", f"/api/v2/dags/{dag_id}/dagRuns",
                         {"logical_date": None, "conf": conf} | ({"dag_run_id": run_id} if run_id else {}))

    def pause(self, dag_id: str, paused: bool = True) -> None:
        status, answer = self.call("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": paused})
        assert status == 200, answer

    def has_dag(self, dag_id: str) -> bool:
        return self.call("GET", f"/api/v2/dags/{dag_id}")[0] == 200

    def healthy(self) -> bool:
        status, answer = self.call("GET", "/api/v2/monitor/health")
        return status == 200 and answer["scheduler"]["status"] == "healthy"
