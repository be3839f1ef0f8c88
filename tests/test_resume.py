"""A rank killed mid-segment, or a node told to stop: rerunning finishes the job, nothing twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest

from scoring.media import ffmpeg
from scoring.networks.score import score

from .helpers import REPO, psnr, read_frames, run_scoring, wait_until

STYLE = "7"
SEGMENT_FRAMES = 6


def _score_cmd(ranks: int, segments, out) -> list[str]:
    cmd = [sys.executable, "-m", "scoring", "score", "--segments", str(segments), "--out", str(out),
           "--style", STYLE, "--batch", "2"]
    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return [mpiexec, "-n", str(ranks), *cmd] if ranks > 1 else cmd


def _is_rank(process: psutil.Process) -> bool:
    try:
        return process.cmdline()[1:4] == ["-m", "scoring", "score"]
    except psutil.Error:  # an ffmpeg child that just exited
        return False


@pytest.fixture(scope="module")
def split_clip(clip_factory, tmp_path_factory):
    folder = tmp_path_factory.mktemp("split")
    source = clip_factory(seconds=4, fps="24", size=(320, 180))
    run_scoring("split", source, "--out", folder / "segments", "--segment-frames", SEGMENT_FRAMES, check=True)
    return source, folder / "segments"


def test_rank_killed_mid_segment_then_rerun(split_clip, tmp_path):
    source, segments = split_clip
    styled = tmp_path / "styled"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    job = subprocess.Popen(_score_cmd(2, segments, styled), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # wait until some segments are done and one is being written, then SIGKILL a rank
    wait_until(lambda: len(list(styled.glob("*.done"))) >= 3 and list(styled.glob(".*.partial")), 120,
               "three segments done, a fourth under way", every=0.01)
    candidates = [p for p in psutil.Process(job.pid).children(recursive=True) if _is_rank(p)]
    # a rank that is just forking ffmpeg shows a child with its own command line: skip those
    ranks = [p for p in candidates if p.ppid() not in {c.pid for c in candidates}]
    assert len(ranks) == 2
    ranks[-1].send_signal(signal.SIGKILL)
    job.communicate(timeout=60)
    assert job.returncode != 0

    done_before = {p.name for p in styled.glob("*.done")}
    assert 3 <= len(done_before) < 16
    mtimes = {name: (styled / name).stat().st_mtime_ns for name in done_before}

    rerun = subprocess.run(_score_cmd(2, segments, styled), env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout)
    assert summary["segments"] == 16
    assert summary["skipped"] == len(done_before)  # finished work is kept...
    assert summary["scored"] == 16 - len(done_before)  # ...and only the rest is done
    assert all((styled / name).stat().st_mtime_ns == mtimes[name] for name in done_before)
    assert not list(styled.glob(".*.partial"))

    # the result is the same video an uninterrupted run makes: every frame once, in order
    run_scoring("stitch", "--segments", segments, "--styled", styled, tmp_path / "resumed.mp4", check=True)
    # on the same two ranks: oneDNN's channels-last kernels (native bf16) sum in an order that
    # follows the threads, and a frame's last bit with it
    clean = subprocess.run(_score_cmd(2, segments, tmp_path / "clean"), env=env, capture_output=True, text=True,
                           timeout=300)
    assert clean.returncode == 0, clean.stderr
    run_scoring("stitch", "--segments", segments, "--styled", tmp_path / "clean", tmp_path / "clean.mp4", check=True)
    resumed, clean = read_frames(tmp_path / "resumed.mp4"), read_frames(tmp_path / "clean.mp4")
    assert len(resumed) == len(clean) == ffmpeg.count_frames(source) == 96
    for i, (a, b) in enumerate(zip(resumed, clean)):
        assert psnr(a, b) > 40, f"frame {i} differs from the uninterrupted run"


def test_sigterm_leaves_no_half_written_segment(split_clip, tmp_path):
    _, segments = split_clip
    styled = tmp_path / "styled"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    job = subprocess.Popen(_score_cmd(1, segments, styled), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_until(lambda: len(list(styled.glob("*.done"))) >= 2 and list(styled.glob(".*.partial")), 120,
               "two segments done, a third under way", every=0.01)
    job.send_signal(signal.SIGTERM)  # what a preempted Azure node gets
    job.communicate(timeout=60)
    assert job.returncode == 143
    assert not list(styled.glob(".*.partial"))
    finished = sorted(p.name for p in styled.glob("*.done"))
    streams = sorted(p.name for p in styled.glob("seg-*.h264"))
    assert [f"{name}.done" for name in streams] == finished  # every stream present is complete

    stitched = run_scoring("stitch", "--segments", segments, "--styled", styled, tmp_path / "early.mp4")
    assert stitched.returncode == 2 and "not styled yet" in stitched.stderr
    assert not (tmp_path / "early.mp4").exists()


def test_a_different_style_never_mixes_into_finished_segments(split_clip, tmp_path):
    _, segments = split_clip
    run_scoring("score", "--segments", segments, "--out", tmp_path / "styled", "--style", "1", check=True)
    other = run_scoring("score", "--segments", segments, "--out", tmp_path / "styled", "--style", "2")
    assert other.returncode == 2
    assert "holds segments of another run" in other.stderr and len(other.stderr.strip().splitlines()) == 1


class Counting:
    """A stand-in network for the tests about a segment's files: the frames as they came, counted."""

    def __init__(self):
        self.frames = 0
        self.into_second_segment = threading.Event()

    def __call__(self, frames):
        self.frames += len(frames)
        if self.frames > SEGMENT_FRAMES:
            self.into_second_segment.set()
        return frames.copy()


def test_the_next_segment_is_styled_while_the_encoder_before_it_flushes(split_clip, tmp_path, monkeypatch):
    """x264 holds its last frames (lookahead, frame threads) until its input ends: the network
    goes on to the next segment meanwhile. The first segment's encoder is let finish only once
    a frame of the second has been styled; run in turn, it never would."""
    _, segments = split_clip
    network, close = Counting(), ffmpeg.FrameWriter.close

    def close_after_the_next_has_begun(writer):
        assert network.into_second_segment.wait(30), "the second segment waited for the first one's encoder"
        close(writer)

    monkeypatch.setattr(ffmpeg.FrameWriter, "close", close_after_the_next_has_begun)
    done = score(segments, tmp_path / "styled", network, "as they came", lanes=1)  # one segment after another
    assert done["scored"] == 16 and len(list((tmp_path / "styled").glob("*.done"))) == 16
    assert not list((tmp_path / "styled").glob(".*.partial"))


def test_an_encoder_that_fails_as_it_ends_leaves_nothing_for_a_rerun_to_trust(split_clip, tmp_path, monkeypatch):
    """The first segment's encoder fails after its last frame, while the second is being styled:
    the run stops, and neither segment is left renamed into place or marked done."""
    _, segments = split_clip

    def fail(writer):
        writer.kill()
        raise RuntimeError("ffmpeg encoder failed: a stand-in for a full disk")

    monkeypatch.setattr(ffmpeg.FrameWriter, "close", fail)
    with pytest.raises(RuntimeError, match="full disk"):
        score(segments, tmp_path / "styled", Counting(), "as they came", lanes=1)
    assert sorted(p.name for p in (tmp_path / "styled").iterdir()) == []


def test_a_lane_that_fails_stops_the_other_and_a_rerun_styles_the_rest(split_clip, tmp_path):
    """Two lanes style segments side by side. The network fails in one of them mid-segment:
    the other lane stops between two frames and unwinds (its encoder killed, its partial file
    removed), the run raises the failure itself, not the other lane's stop, and what is left is
    whole segments, each marked done. A rerun styles only the others."""
    _, segments = split_clip
    styled = tmp_path / "styled"

    class FailsOnce(Counting):
        def __init__(self, at: int):
            super().__init__()
            self.at, self.lock, self.failed = at, threading.Lock(), False

        def __call__(self, frames):
            with self.lock:
                self.frames += len(frames)
                fail = self.frames >= self.at and not self.failed
                self.failed |= fail
            if fail:
                raise RuntimeError("the network failed: a stand-in")
            time.sleep(0.005)  # both lanes well inside a segment when one fails
            return frames.copy()

    with pytest.raises(RuntimeError, match="stand-in"):
        score(segments, styled, FailsOnce(at=SEGMENT_FRAMES * 5 + 3), "as they came", lanes=2)
    names = {p.name for p in styled.iterdir()}
    assert not [name for name in names if name.startswith(".")], names  # no partial file
    done = {name.removesuffix(".done") for name in names if name.endswith(".done")}
    assert done == names - {f"{name}.done" for name in done} and 2 <= len(done) < 16, names
    again = score(segments, styled, Counting(), "as they came", lanes=2)
    assert again["skipped"] == len(done) and again["scored"] == 16 - len(done)
