"""Steadier video (--temporal): less flicker where the picture stands still, moving content not
smeared, segments still independent (MPI shares, resume), and the setting part of a run's identity.

The clip is made here: a still photo with camera-like noise on every frame (what makes a
style network flicker) and a patch of another photo crossing it (what must not smear).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from scoring.media import ffmpeg
from scoring.media.errors import UserError
from scoring.media.segments import Plan
from scoring.media.split import split
from scoring.networks import flicker, temporal
from scoring.networks.models import load_model
from scoring.networks.score import Encoding, World, score
from scoring.networks.stylizer import Stylizer

from .helpers import REPO, psnr, read_frames, run_scoring

STYLE = "19"
STRENGTH = 0.7
SIZE = (192, 108)
FRAMES, SEGMENT_FRAMES = 36, 12
MODEL_ID = f"style {STYLE}"


def _frames() -> np.ndarray:
    from skimage import data

    background = np.asarray(Image.fromarray(data.coffee()).resize(SIZE, Image.BILINEAR), np.float32)
    patch = np.asarray(Image.fromarray(data.astronaut()).resize((40, 40), Image.BILINEAR), np.float32)
    noise = np.random.default_rng(0)
    frames = []
    for t in range(FRAMES):
        frame = background + noise.normal(0, 2.0, background.shape)
        left = 8 + 4 * t  # the patch crosses the frame at 4 pixels per frame
        frame[30:70, left:left + 40] = patch
        frames.append(np.clip(frame, 0, 255).round().astype(np.uint8))
    return np.stack(frames)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """The clip split into segments, a stylizer, and both runs (plain, temporal) scored."""
    folder = tmp_path_factory.mktemp("temporal")
    source = folder / "still-and-moving.mp4"
    cmd = [ffmpeg.ffmpeg_path(), "-v", "error", "-nostdin", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
           "-s", f"{SIZE[0]}x{SIZE[1]}", "-framerate", "12", "-i", "pipe:0", "-c:v", "libx264", "-crf", "16",
           "-pix_fmt", "yuv420p", str(source)]
    subprocess.run(cmd, input=_frames().tobytes(), check=True)
    segments = folder / "segments"
    plan = split(source, segments, None, SEGMENT_FRAMES)
    # The module's runs style on the threads a rank of `stylize --ranks 2` gets, as the runs it
    # compares with: oneDNN's channels-last kernels (native bf16) sum in an order that
    # follows the threads, and a frame's last bit with it.
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // 2))
    stylizer = Stylizer(load_model(STYLE), "cpu", "auto")
    score(segments, folder / "plain", stylizer, MODEL_ID)
    score(segments, folder / "temporal", stylizer, MODEL_ID, Encoding(temporal=STRENGTH))
    yield {"folder": folder, "source": source, "segments": segments, "plan": plan, "stylizer": stylizer}
    torch.set_num_threads(threads)


def _decode(folder, plan: Plan, only: list[int] | None = None) -> np.ndarray:
    frames = []
    for segment in plan.segments:
        if only is None or segment.index in only:
            with ffmpeg.FrameReader(folder / segment.name, (plan.width, plan.height), input_format="h264") as reader:
                frames.extend(reader.batches(64))
    return np.concatenate(frames)


def test_flicker_is_reduced_and_moving_content_is_not_smeared(clip):
    plan = clip["plan"]
    source, plain = _decode(clip["segments"], plan), _decode(clip["folder"] / "plain", plan)
    steady = _decode(clip["folder"] / "temporal", plan)
    assert flicker.still_share(source) > 0.3  # the measure has still pixels to look at

    before, after = flicker.flicker_index(source, plain), flicker.flicker_index(source, steady)
    assert before > 1.0  # per-frame styling does flicker on camera noise
    assert after <= 0.6 * before, f"flicker {before:.2f} -> {after:.2f}: less than the 40% goal"

    ours, moving_share = flicker.moving_ssim(source, steady, plain)
    assert moving_share > 0.02  # the measure has moving pixels to look at
    assert ours > 0.9, f"moving regions differ from per-frame styling (SSIM {ours:.3f})"
    # the bound means something: the same blend without the motion mask smears the patch
    smeared, last = [], None
    for frame in plain.astype(np.float32):
        last = frame if last is None else STRENGTH * last + (1 - STRENGTH) * frame
        smeared.append(last.round().astype(np.uint8))
    unmasked, _ = flicker.moving_ssim(source, np.stack(smeared), plain)
    assert unmasked < ours - 0.1, f"unmasked blend {unmasked:.3f} vs ours {ours:.3f}"


def test_a_segment_scored_alone_equals_the_same_segment_scored_in_turn(clip, tmp_path, monkeypatch):
    """Rank 1 of 3 styles segment 1 alone (warming up on the end of segment 0's source): the
    same frames as the run that styled segment 0 just before it in the same process, and
    close to styling the whole clip in one pass."""
    plan = clip["plan"]
    written = []  # what the pipeline hands the encoder (the comparison must not see x264's loss)

    class RecordingWriter(ffmpeg.FrameWriter):
        def write(self, frames):
            written.append(frames.copy())
            super().write(frames)

    monkeypatch.setattr(ffmpeg, "FrameWriter", RecordingWriter)
    world = World()
    world.rank, world.size = 1, 3
    done = score(clip["segments"], tmp_path / "alone", clip["stylizer"], MODEL_ID, Encoding(temporal=STRENGTH), world)
    assert done["scored"] == 1 and (tmp_path / "alone" / plan.segments[1].name).is_file()
    assert np.array_equal(_decode(tmp_path / "alone", plan, only=[1]),
                          _decode(clip["folder"] / "temporal", plan, only=[1]))

    source = _decode(clip["segments"], plan)
    styled = np.concatenate([clip["stylizer"](frame[None]) for frame in source])
    one_pass = temporal.TemporalSmoother(STRENGTH)(source, styled).astype(np.int16)
    start = plan.segments[1].first_frame
    alone = np.concatenate(written)
    assert len(alone) == plan.segments[1].frames
    cold = temporal.TemporalSmoother(STRENGTH)(source[start:start + 3], styled[start:start + 3])
    gap = np.abs(alone[:3] - one_pass[start:start + 3]).mean()
    cold_gap = np.abs(cold - one_pass[start:start + 3]).mean()
    assert gap < 1.0 and gap < cold_gap / 3, f"seam: {gap:.2f} levels with warm-up, {cold_gap:.2f} without"


def test_resume_with_temporal_and_markers_tell_settings_apart(clip, tmp_path):
    plan = clip["plan"]
    out = tmp_path / "styled"
    score(clip["segments"], out, clip["stylizer"], MODEL_ID, Encoding(temporal=STRENGTH))
    marker = json.loads((out / f"{plan.segments[2].name}.done").read_text())
    assert "temporal 0.7" in marker["work"]
    kept = (out / plan.segments[0].name).stat().st_mtime_ns
    # a run killed while styling the last segment: its stream and marker are not there
    (out / plan.segments[2].name).unlink()
    (out / f"{plan.segments[2].name}.done").unlink()
    again = score(clip["segments"], out, clip["stylizer"], MODEL_ID, Encoding(temporal=STRENGTH))
    assert (again["scored"], again["skipped"]) == (1, 2)
    assert (out / plan.segments[0].name).stat().st_mtime_ns == kept
    assert np.array_equal(_decode(out, plan), _decode(clip["folder"] / "temporal", plan))

    for other in (Encoding(), Encoding(temporal=0.5)):  # plain, or another strength: never mixed in
        with pytest.raises(UserError, match="holds segments of another run"):
            score(clip["segments"], out, clip["stylizer"], MODEL_ID, other)
    with pytest.raises(UserError, match="holds segments of another run"):  # and the other way round
        score(clip["segments"], clip["folder"] / "plain", clip["stylizer"], MODEL_ID, Encoding(temporal=STRENGTH))


def test_two_ranks_from_the_command_line_give_the_same_video(clip, tmp_path):
    """stylize --ranks 2: each rank warms up on the segment before its share; the stitched
    video matches the single-process temporal run frame by frame."""
    output = tmp_path / "steady.mp4"
    run_scoring("stylize", clip["source"], output, "--style", STYLE, "--temporal", str(STRENGTH),
                "--segment-frames", str(SEGMENT_FRAMES), "--ranks", "2", check=True)
    # the default delivery is the segments the ranks encoded, as score's default Encoding here: the ranks'
    # frames are compared, not a second encode
    got, expected = read_frames(output), _decode(clip["folder"] / "temporal", clip["plan"])
    assert len(got) == len(expected) == FRAMES
    for i, (a, b) in enumerate(zip(got, expected)):
        assert psnr(a, b) > 40, f"frame {i} differs from the single-process run"


def test_out_of_range_strength_is_one_line(clip, tmp_path):
    result = run_scoring("score", "--segments", clip["segments"], "--out", tmp_path / "x", "--style", STYLE,
                         "--temporal", "1.5")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: temporal strength (--temporal) must be a number from 0 (off) to 0.95, got 1.5"]
    assert not (tmp_path / "x").exists()
    for value in (-0.1, 0.96, float("nan"), "strong"):
        with pytest.raises(UserError, match="must be a number from 0"):
            temporal.TemporalSmoother(value)


def test_the_option_reaches_the_pipeline_and_azure_ml():
    sys.path.insert(0, str(REPO / "plugins"))
    from aml_backend import entities
    from aml_backend.operators import AzureMLScoreOperator

    from scoring.cli import build_parser

    def command(temporal):
        operator = AzureMLScoreOperator(task_id="score", segments="in/s", styled="out/s", style="7", temporal=temporal)
        return entities.score_command(operator.score_args())

    assert "--temporal" not in command("0") and "--temporal" not in command(0.0)
    line = command("0.7")  # as the DAG renders "{{ params.temporal }}"
    assert build_parser().parse_args(line.split()[3:]).temporal == 0.7

    from pipeline import tasks

    base = {"style": "7", "model_blob": None, "max_side": None, "segment_frames": 48, "precision": "auto"}
    assert tasks.temporal_args(base) == [] == tasks.temporal_args(base | {"temporal": 0})
    assert tasks.temporal_args(base | {"temporal": 0.7}) == ["--temporal", "0.7"]
    # off keeps the digest of outputs published before the option existed; on is another output
    assert tasks.settings_digest(base) == tasks.settings_digest(base | {"temporal": 0})
    assert tasks.settings_digest(base) != tasks.settings_digest(base | {"temporal": 0.7})
