"""Videos end to end through the real ffmpeg, the real model and real mpiexec."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from scoring.media import ffmpeg

from .helpers import REPO, SHARED_MEDIA, psnr, read_frames, run_scoring, tiny_disk


@pytest.mark.parametrize("fps, suffix, audio", [
    ("179/6", ".mp4", True),        # 29.83 fps
    ("30000/1001", ".mkv", True),   # NTSC; Matroska headers carry no frame count
    ("25/2", ".mov", False),        # 12.5 fps, no audio
])
def test_timing_frames_and_audio_follow_the_source(clip_factory, tmp_path, fps, suffix, audio):
    source = clip_factory(seconds=2.5, fps=fps, audio=audio, suffix=suffix)
    output = tmp_path / f"styled{suffix}"
    result = run_scoring("stylize", source, output, "--style", "3:0.5,12:0.5", "--segment-frames", "7", "--ranks", "2",
                         check=True)
    assert json.loads(result.stdout.splitlines()[-1])["frames"] == ffmpeg.count_frames(source)

    before, after = ffmpeg.probe(source), ffmpeg.probe(output)
    assert after.frames == before.frames
    assert Fraction(after.frame_rate) == Fraction(fps)
    assert abs(after.duration - before.duration) <= 1 / Fraction(fps)
    assert after.has_audio == audio
    assert (after.width, after.height) == (before.width, before.height)
    assert not list(tmp_path.glob(".*")), "work files or partial outputs left behind"


@pytest.mark.parametrize("camera", [False, True], ids=["re-encoded split", "copied split"])
def test_styled_frames_are_the_source_frames_styled_in_order(clip_factory, tmp_path, camera):
    """Each output frame must resemble the styled version of the same input frame, not a
    neighbour: from a re-encoded split, and from a camera's H.264 cut as it is at its IDR
    pictures, B-frames and all (segments of 12, 12 and 6 frames, shared by frames on 2 ranks)."""
    from scoring.media.segments import Plan
    from scoring.networks.models import load_model
    from scoring.networks.stylizer import Stylizer

    source = clip_factory(seconds=1.2, fps="25")
    if camera:
        source = camera_clip(source, tmp_path / "camera.mp4", "-g", "12")
    output = tmp_path / "out.mp4"
    run_scoring("stylize", source, output, "--style", "7", "--segment-frames", "6" if camera else "5", "--ranks", "2",
                "--work-dir", tmp_path / "work", "--keep-work", check=True)
    plan = Plan.load(tmp_path / "work" / "segments")
    assert plan.copied == camera and (not camera or [s.frames for s in plan.segments] == [12, 12, 6])
    expected = Stylizer(load_model("7"), "cpu")(read_frames(source))
    got = read_frames(output)
    assert len(got) == len(expected)
    for i in range(len(got)):
        scores = [psnr(got[i], frame) for frame in expected]
        assert scores[i] > 30, f"frame {i}: {scores[i]:.1f} dB"
        assert max(range(len(scores)), key=scores.__getitem__) == i, f"frame {i} is closest to another frame"


def test_stylize_compile_writes_the_video_it_writes_without(clip_factory, tmp_path):
    """``--compile`` is a speed option: the video must be the one the eager network makes
    (once, in bf16 on a CPU, the compiled network traced the C++ kernels and styled frames up to
    250 of 255 off)."""
    source = clip_factory(seconds=0.4, fps="25", size=(96, 64))
    videos = {}
    for flags in ((), ("--compile",)):
        videos[flags] = tmp_path / f"out{len(videos)}.mp4"
        run_scoring("stylize", source, videos[flags], "--style", "7", "--ranks", "1", *flags, check=True)
    eager, compiled = (read_frames(path) for path in videos.values())
    assert eager.shape == compiled.shape and np.array_equal(eager, compiled)


def test_stylize_loads_the_network_while_it_splits(clip_factory, tmp_path, monkeypatch):
    """torch and the weights load alongside the split's ffmpeg, not before it: the loading
    here waits until the split has started, which never happens if the two run in turn."""
    import scoring.media.split
    from scoring import cli

    splitting = threading.Event()
    load, split = cli.stylizer_from, scoring.media.split.split

    def load_once_splitting(args):
        assert splitting.wait(20), "the network loaded before the split started"
        return load(args)

    def split_and_say(*args, **kwargs):
        splitting.set()
        return split(*args, **kwargs)

    monkeypatch.setattr(cli, "stylizer_from", load_once_splitting)
    monkeypatch.setattr(scoring.media.split, "split", split_and_say)
    output = tmp_path / "styled.mp4"
    assert cli.main(["stylize", str(clip_factory(seconds=1)), str(output), "--ranks", "1"]) == 0
    assert ffmpeg.probe(output).frames == 25


def test_stylize_on_auto_loads_the_network_while_it_probes(clip_factory, tmp_path, monkeypatch):
    """On ``--ranks auto`` the run styles in this process whatever the input, so torch and the
    weights start to load before the probe: the probe here waits for the loading to have
    begun, which never happens if the two run in turn."""
    from scoring import cli

    loading = threading.Event()
    load, probe = cli.stylizer_from, ffmpeg.probe

    def load_and_say(args):
        loading.set()
        return load(args)

    def probe_once_loading(*args, **kwargs):
        assert loading.wait(20), "the probe ran before the network began to load"
        return probe(*args, **kwargs)

    monkeypatch.setattr(cli, "stylizer_from", load_and_say)
    monkeypatch.setattr(ffmpeg, "probe", probe_once_loading)
    output = tmp_path / "styled.mp4"
    assert cli.main(["stylize", str(clip_factory(seconds=1)), str(output), "--style", "7"]) == 0
    assert probe(output).frames == 25


def test_the_split_reads_each_fact_of_its_source_once(clip_factory, tmp_path, monkeypatch):
    """Every ffprobe of the source is a process before the first frame: the split takes the
    caller's probe instead of probing again, and reads the packets' flags and times and the
    stream's time base in one pass, after the one that describes the streams."""
    from scoring.media import split as splitting
    from scoring.media import tracks

    source = clip_factory(seconds=1)
    info, read, reads = ffmpeg.probe(source), tracks.ffprobe_json, []

    def counted(path, *entries):
        reads.append(entries)
        return read(path, *entries)

    monkeypatch.setattr(tracks, "ffprobe_json", counted)
    monkeypatch.setattr(ffmpeg, "probe", lambda *args, **kwargs: pytest.fail("the split probed its source again"))
    plan = splitting.split(source, tmp_path / "segments", info=info)
    assert plan.frames == 25 and plan.timestamps
    assert len(reads) == 2, reads


# stylize in a fresh process, its ranks' mpiexec and its split watched: the split must start
# with the ranks already running, and stylize itself must never import torch
RANKS_BESIDE_THE_SPLIT = """
import sys
import scoring.media.split as splitting
from scoring import cli

started, split = [], splitting.split


class Watched(cli.WaitingRanks):
    def __init__(self, *args):
        super().__init__(*args)
        started.append(self)


def split_beside_the_ranks(*args, **kwargs):
    assert started and started[0].process.poll() is None, "the split began before the ranks"
    return split(*args, **kwargs)


cli.WaitingRanks, splitting.split = Watched, split_beside_the_ranks
code = cli.main(sys.argv[1:])
assert "torch" not in sys.modules, "stylize imported torch beside its ranks"
sys.exit(code)
"""


def test_stylize_starts_its_cpu_ranks_before_it_splits(clip_factory, tmp_path):
    """Several CPU ranks load the network while the split runs, instead of after it, and the
    process that splits and stitches never loads torch (seconds of a core each)."""
    output = tmp_path / "styled.mp4"
    result = subprocess.run([sys.executable, "-c", RANKS_BESIDE_THE_SPLIT, "stylize", str(clip_factory(seconds=1)),
                             str(output), "--style", "7", "--segment-frames", "10", "--ranks", "2"],
                            capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks, published = (json.loads(line) for line in result.stdout.splitlines()[-2:])
    assert ranks["ranks"] == 2 and ranks["frames_scored"] == 25 and published["ranks"] == 2
    assert ffmpeg.probe(output).frames == 25


def test_a_refused_split_ends_the_waiting_ranks_unheard(clip_factory, tmp_path, monkeypatch, capfd):
    """The ranks started before the split end with it when it refuses the input: one line of
    error, no process left, nothing on disk."""
    import scoring.media.split
    from scoring import cli
    from scoring.media.errors import UserError

    started = []

    class Watched(cli.WaitingRanks):
        def __init__(self, *args):
            super().__init__(*args)
            started.append(self)

    def refuse(*args, **kwargs):
        time.sleep(1)  # the ranks are importing torch
        raise UserError("this input is refused here")

    monkeypatch.setattr(cli, "WaitingRanks", Watched)
    monkeypatch.setattr(scoring.media.split, "split", refuse)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    assert cli.main(["stylize", str(clip_factory(seconds=1)), str(out_dir / "styled.mp4"), "--segment-frames", "10",
                     "--ranks", "2"]) == 2
    assert capfd.readouterr().err.splitlines() == ["error: this input is refused here"]
    assert started and started[0].process.returncode is not None
    ranks = f"--segments {out_dir / '.styled.mp4.work' / 'segments'}"
    for _ in range(50):  # mpiexec's proxies end its ranks as soon as it is gone
        if subprocess.run(["pgrep", "-f", ranks], capture_output=True).returncode:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("a rank outlived the refused split")
    assert list(out_dir.iterdir()) == []


@pytest.mark.parametrize("fps, segment_frames", [("30000/1001", 1), ("179/6", 7), ("24000/1001", 16), ("25", 48)])
def test_split_cuts_every_segment_at_its_frame_and_each_decodes_alone(clip_factory, tmp_path, fps, segment_frames):
    """split encodes the segments in one ffmpeg, cut by the segment muxer at forced IDR
    pictures: each segment must hold exactly its frames (a cut one frame late or early shifts
    every later segment), decode on its own, and be the source's frames in order."""
    assert_split_cuts_at_frames(clip_factory(seconds=1.6, fps=fps), tmp_path / "seg", segment_frames)


@pytest.mark.parametrize("segment_frames", [7, 16])
def test_split_cuts_a_variable_rate_source_at_its_frames(tmp_path, segment_frames):
    """Phone footage: 30 frames a second, then 10, the picture 0.25 s after the sound. split
    retimes the frames one after another at the plan's one average rate, and the muxer, which
    cuts by time, must still cut at each segment's first frame."""
    source = tmp_path / "vfr.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-itsoffset", "0.25", "-f", "lavfi", "-i",
                    r"testsrc2=s=96x64:r=30:d=2,select='lt(t\,1)+not(mod(n\,3))'", "-f", "lavfi", "-i",
                    "sine=f=440:d=2.5", "-fps_mode", "vfr", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac",
                    str(source)], check=True)
    assert_split_cuts_at_frames(source, tmp_path / "seg", segment_frames)


def assert_split_cuts_at_frames(source, folder, segment_frames):
    from scoring.media.segments import Plan, segment_lengths

    run_scoring("split", source, "--out", folder, "--segment-frames", str(segment_frames), check=True)
    plan = Plan.load(folder)
    expected = read_frames(source)
    assert plan.frames == len(expected)
    assert [s.frames for s in plan.segments] == segment_lengths(len(expected), segment_frames)
    assert sorted(p.name for p in folder.glob("seg-*")) == [s.name for s in plan.segments]
    for segment in plan.segments:
        with ffmpeg.FrameReader(folder / segment.name, (plan.width, plan.height), input_format="h264") as r:
            got = np.concatenate(list(r.batches(8)))
        assert len(got) == segment.frames, segment.name
        for i, frame in enumerate(got):
            scores = [psnr(frame, other) for other in expected]
            assert scores[segment.first_frame + i] > 35, f"{segment.name} frame {i}: {scores[segment.first_frame + i]:.1f} dB"
            assert max(range(len(scores)), key=scores.__getitem__) == segment.first_frame + i, \
                f"{segment.name} frame {i} is closest to another source frame"


def camera_clip(source: Path, path: Path, *x264: str) -> Path:
    """``source`` as a camera records it: H.264 (x264 veryfast: B-frames) with ``x264``'s GOP, its sound copied."""
    subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-i", str(source), "-map", "0", "-c:v", "libx264", "-preset",
                    "veryfast", *x264, "-pix_fmt", "yuv420p", "-c:a", "copy", str(path)], check=True)
    return path


def raw_pictures(path: Path, input_format: str | None = None) -> bytes:
    """Every picture of ``path``'s first video stream as the decoder gives it: yuv420p, no conversion."""
    return subprocess.run(["ffmpeg", "-v", "error", "-nostdin", *(["-f", input_format] if input_format else []),
                           "-i", str(path), "-map", "0:v:0", "-fps_mode", "passthrough", "-f", "rawvideo",
                           "-pix_fmt", "yuv420p", "-"], capture_output=True, check=True).stdout


def test_split_copies_h264_cut_at_its_idr_pictures(clip_factory, tmp_path):
    """H.264 already as the ranks decode it (8-bit 4:2:0, upright, at its size), with IDR
    pictures at most every twice the segment's frames: split cuts its own packets at them
    instead of encoding it again. Each segment starts at a keyframe and decodes alone to the
    source's very pictures, bit for bit (B-frames and all); a rerun does no work."""
    from scoring.media import tracks
    from scoring.media.segments import Plan

    source = camera_clip(clip_factory(seconds=2, fps="25"), tmp_path / "camera.mp4", "-g", "12")
    folder = tmp_path / "seg"
    run_scoring("split", source, "--out", folder, "--segment-frames", "10", check=True)
    plan = Plan.load(folder)
    assert plan.copied and [s.frames for s in plan.segments] == [12, 12, 12, 12, 2]
    keyframes = [n for n, flags in enumerate(tracks.video_packets(source, 0).flags) if "K" in flags]
    assert [s.first_frame for s in plan.segments] == keyframes
    picture = plan.width * plan.height * 3 // 2
    pieces = [raw_pictures(folder / s.name, "h264") for s in plan.segments]
    assert [len(piece) // picture for piece in pieces] == [s.frames for s in plan.segments]
    assert b"".join(pieces) == raw_pictures(source)

    written = {path.name: path.stat().st_mtime_ns for path in folder.iterdir()}
    run_scoring("split", source, "--out", folder, "--segment-frames", "10", check=True)
    assert {path.name: path.stat().st_mtime_ns for path in folder.iterdir()} == written


@pytest.mark.parametrize("x264", [("-g", "12", "-x264-params", "open-gop=1"), ("-g", "50")],
                         ids=["open GOPs", "IDR pictures too far apart"])
def test_split_encodes_what_it_cannot_cut_as_it_is(clip_factory, tmp_path, x264):
    """Open GOPs: the later keyframes are I pictures that are not IDR, and the B-frames after
    them refer to pictures before (as segments, they decode to as many frames, some of them
    wrong). IDR pictures 50 frames apart would make segments of 50 frames where 10 were asked
    for. Both are split as any other source: encoded, cut at every 10th frame."""
    from scoring.media.segments import Plan

    source = camera_clip(clip_factory(seconds=2, fps="25"), tmp_path / "camera.mp4", *x264)
    assert_split_cuts_at_frames(source, tmp_path / "seg", 10)
    assert not Plan.load(tmp_path / "seg").copied


@pytest.mark.parametrize("options, disk", [(["--max-side", "256"], "512k"), ([], "100k")], ids=["encoded", "copied"])
def test_split_onto_a_full_disk_is_the_disks_failure_not_the_inputs(clip_factory, tmp_path, options, disk):
    """ffmpeg failing to write the segments is the scratch disk's fault: an error naming the
    cause, never the one-line refusal of a bad input (exit 2), which would quarantine a sound
    upload. Scaled, the clip is encoded (about 0.75 MB of segments); at its size its own
    packets are copied (about 0.16 MB, keyframes 50 frames apart), and when that fails too the
    split encodes, which fails the same way."""
    with tiny_disk(tmp_path / "tiny", disk) as scratch:
        result = run_scoring("split", clip_factory(seconds=4, fps="25", size=(320, 180)), "--out", scratch / "seg",
                             *options)
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 1 and "No space left on device" in last, result.stderr[-2000:]
    assert "cannot decode" not in result.stderr


def test_a_reader_left_before_the_end_stops_its_decoder(clip_factory, tmp_path):
    """A caller that takes the frames it wants and leaves: no error (ffmpeg would fail on the
    closed pipe), no decoder left running; a damaged video read to its end still raises."""
    source = clip_factory(seconds=2.0, fps="25")
    with ffmpeg.FrameReader(source, (160, 90)) as reader:
        first = next(reader.batches(4))
    assert first.shape == (4, 90, 160, 3) and reader.process.returncode is not None

    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    with pytest.raises(ffmpeg.UserError, match="cannot decode video"):
        with ffmpeg.FrameReader(damaged, (160, 90)) as reader:
            list(reader.batches(4))


def test_steps_one_by_one_and_max_side(clip_factory, tmp_path):
    source = clip_factory(seconds=1, fps="24", size=(320, 180))
    split = json.loads(run_scoring("split", source, "--out", tmp_path / "seg", "--max-side", "101",
                                   "--segment-frames", "10", check=True).stdout)
    assert split == {"segments": 3, "frames": 24, "frame_rate": "24/1", "size": "100x56", "audio": True,
                     "copied": False, "folder": str(tmp_path / "seg")}  # scaled: encoded
    again = run_scoring("split", source, "--out", tmp_path / "seg", "--max-side", "101", "--segment-frames", "10",
                        check=True)
    assert json.loads(again.stdout) == split  # reused, not redone
    scored = run_scoring("score", "--segments", tmp_path / "seg", "--out", tmp_path / "styled", "--style", "2",
                         check=True)
    assert json.loads(scored.stdout)["scored"] == 3
    assert "[rank 0/1] 24/24 frames" in scored.stderr
    stitched = run_scoring("stitch", "--segments", tmp_path / "seg", "--styled", tmp_path / "styled",
                           tmp_path / "out.mkv", check=True)
    assert json.loads(stitched.stdout)["frames"] == 24
    info = ffmpeg.probe(tmp_path / "out.mkv")
    assert (info.width, info.height, info.frames) == (100, 56, 24)


def test_still_image_and_style_sheet(tmp_path):
    from PIL import Image
    from skimage import data

    Image.fromarray(data.coffee()).save(tmp_path / "photo one.jpg")
    run_scoring("stylize", tmp_path / "photo one.jpg", tmp_path / "out.png", "--style", "3:0.5,12:0.5",
                "--max-side", "200", check=True)
    assert Image.open(tmp_path / "out.png").size == (200, 133)
    run_scoring("styles", "--sheet", tmp_path / "sheet.png", "--tile", "64", check=True)
    sheet = Image.open(tmp_path / "sheet.png")
    assert sheet.width > 7 * 64 and sheet.height > 4 * 64  # 27 tiles in rows of 7


def test_every_command_has_help():
    for command in ["stylize", "probe", "split", "score", "stitch", "styles", "sample"]:
        result = run_scoring(command, "--help", check=True)
        assert "usage: python -m scoring " + command in result.stdout


@pytest.mark.skipif(not (SHARED_MEDIA / "car-detection.mp4").exists(), reason="../shared/media is not here")
def test_real_clip_from_shared_media(tmp_path):
    source = SHARED_MEDIA / "car-detection.mp4"
    output = tmp_path / "car.mp4"
    run_scoring("stylize", source, output, "--style", "19", "--max-side", "192", "--ranks", "2", check=True)
    before, after = ffmpeg.probe(source), ffmpeg.probe(output)
    assert after.frames == before.frames and after.has_audio == before.has_audio
    assert abs(after.duration - before.duration) <= 1 / Fraction(before.frame_rate)


def test_no_more_ranks_than_segments(clip_factory, tmp_path):
    """No more ranks style than the split has segments: 16 frames in segments of 5 on --ranks 4
    start 4 ranks before the split (they could be 4 segments), but a camera's keyframes every 8
    frames make 2, so 2 ranks style (each prints its progress as [rank r/size]) and 2 only wait."""
    source = camera_clip(clip_factory(seconds=1.6, fps="10", size=(64, 36)), tmp_path / "in.mp4", "-g", "8")
    result = run_scoring("stylize", source, tmp_path / "out.mp4", "--style", "7", "--segment-frames", "5",
                         "--ranks", "4", check=True)
    sizes = {line.split("]")[0].split("/")[1] for line in result.stderr.splitlines() if line.startswith("[rank ")}
    assert sizes == {"2"}, result.stderr
    ranks, published = (json.loads(line) for line in result.stdout.splitlines()[-2:])
    assert [r["frames_scored"] for r in ranks["per_rank"]] == [8, 8] and published["ranks"] == 2
    assert ffmpeg.probe(tmp_path / "out.mp4").frames == 16


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="two ranks need two cores to share")
def test_a_rank_done_first_lends_its_cores_to_the_one_still_styling(clip_factory, tmp_path):
    """Shares end up to a segment apart: a camera's 100 frames cut at its keyframes every 90 give
    rank 0 ninety frames and rank 1 ten. ``--ranks 2`` styles on both ranks (they loaded beside
    the split); rank 0 starts on half the cores and ends on all of them. (Nine times rank 1's
    frames: with four, a loaded machine that started rank 1 late let rank 0 finish first.)"""
    source = camera_clip(clip_factory(seconds=4, fps="25", size=(320, 180)), tmp_path / "in.mp4", "-g", "90",
                         "-sc_threshold", "0")
    result = run_scoring("stylize", source, tmp_path / "out.mp4", "--style", "7", "--segment-frames", "90",
                         "--ranks", "2", check=True)
    ranks = json.loads(result.stdout.splitlines()[-2])
    assert [r["frames_scored"] for r in ranks["per_rank"]] == [90, 10]
    last = {line.split("]")[0] + "]": line for line in result.stderr.splitlines() if line.startswith("[rank ")}
    cores = len(os.sched_getaffinity(0))
    assert last["[rank 1/2]"].startswith("[rank 1/2] 10/10 frames") and last["[rank 1/2]"].endswith(on(cores // 2))
    assert last["[rank 0/2]"].startswith("[rank 0/2] 90/90 frames") and last["[rank 0/2]"].endswith(on(cores)), last


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="one core has one lane")
def test_auto_styles_in_one_process_on_a_lane_per_core(clip_factory, tmp_path):
    """``--ranks auto`` on a CPU: no mpiexec, one process whose lanes style the 40- and 10-frame
    segments side by side on one thread each; the lane done first lends its core, so the
    40-frame segment ends on every core. The video is whole and in order."""
    source = camera_clip(clip_factory(seconds=2, fps="25", size=(320, 180)), tmp_path / "in.mp4", "-g", "40",
                         "-sc_threshold", "0")
    output = tmp_path / "out.mp4"
    result = run_scoring("stylize", source, output, "--style", "7", "--segment-frames", "40", check=True)
    assert json.loads(result.stdout.splitlines()[-1])["ranks"] == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("[rank ")]
    cores = len(os.sched_getaffinity(0))
    assert lines[0].endswith(f" on 2 lanes of {cores // 2} thread{'s' * (cores > 3)}"), lines
    assert lines[-1].startswith("[rank 0/1] 50/50 frames") and lines[-1].endswith(on(cores)), lines
    assert ffmpeg.probe(output).frames == 50
    reference = tmp_path / "ranks.mp4"  # the same frames styled by two ranks of one lane each
    run_scoring("stylize", source, reference, "--style", "7", "--segment-frames", "40", "--ranks", "2", check=True)
    got, expected = read_frames(output), read_frames(reference)
    assert got.shape == expected.shape and min(psnr(a, b) for a, b in zip(got, expected)) > 40


def on(threads: int) -> str:
    """How a rank's progress line ends: the threads it styles on."""
    return f" on {max(1, threads)} thread{'s' * (threads > 1)}"
