"""The before/after preview and the contact strip, through the CLI on real clips."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
from PIL import Image

from scoring.media import ffmpeg, tracks
from scoring.media.pictures import sample_times
from scoring.media.samples import make_clip

from .helpers import run_scoring as run_cli


def test_preview_shows_each_frame_before_and_after(clip_factory, tmp_path):
    clip = clip_factory(seconds=2, fps="30000/1001", size=(160, 90))
    out = tmp_path / "preview.png"
    result = run_cli("preview", str(clip), str(out), "--style", "7", "--frames", "3")
    assert result.returncode == 0, result.stderr
    facts = json.loads(result.stdout)
    assert facts["frames"] == 3 and facts["size"] == "160x90"

    sheet = np.asarray(Image.open(out), float)
    assert sheet.shape == (6 + 3 * (90 + 18 + 6), 6 + 2 * (160 + 6), 3)
    frames = ffmpeg.grab_frames(clip, facts["times"], (160, 90))
    for row, frame in enumerate(frames):
        top = 6 + row * (90 + 18 + 6) + 18
        before, after = sheet[top:top + 90, 6:166], sheet[top:top + 90, 172:332]
        assert np.abs(before - frame).mean() < 2  # the left picture is that frame as it was
        assert np.abs(after - frame).mean() > 20  # the right one is styled


def test_contact_strip_spreads_over_the_video(clip_factory, tmp_path):
    clip = clip_factory(seconds=2, fps="25", size=(160, 90))
    result = run_cli("strip", str(clip), str(tmp_path / "strip.jpg"), "--frames", "8", "--tile-width", "80")
    assert result.returncode == 0, result.stderr
    facts = json.loads(result.stdout)
    assert len(facts["times"]) == 8 and facts["times"] == sorted(facts["times"])
    assert 0 < facts["times"][0] < 0.25 and 1.75 < facts["times"][-1] < 2.0
    assert Image.open(tmp_path / "strip.jpg").size == (6 + 8 * (80 + 6), 6 + 45 + 24)


def _ffmpeg(*args) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *map(str, args)], check=True, stdin=subprocess.DEVNULL)


def test_the_strip_takes_its_frames_at_their_own_times(tmp_path):
    """Two videos whose frame count and average rate mislead: a phone-like clip (30 fps, then 10,
    its picture 0.25 s after its sound) and an AVI with an empty packet for its second frame,
    re-encoded at its own frame times (10 pictures, an average rate of 25/3 over 1.1 s; the
    strip of that published video once asked for a frame at 1.05 s, after the last)."""
    phone, gap = tmp_path / "phone.mp4", tmp_path / "gap.mp4"
    _ffmpeg("-itsoffset", "0.25", "-f", "lavfi", "-i", r"testsrc2=s=96x64:r=30:d=2,select='lt(t\,1)+not(mod(n\,3))'",
            "-f", "lavfi", "-i", "sine=f=440:d=2.5", "-fps_mode", "vfr", "-c:v", "libx264", "-pix_fmt", "yuv420p", phone)
    make_clip(tmp_path / "odd.mkv", seconds=1, fps="10", size=(64, 36), audio=False)
    _ffmpeg("-i", tmp_path / "odd.mkv", "-c:v", "mpeg4", tmp_path / "odd.avi")
    _ffmpeg("-i", tmp_path / "odd.avi", "-c:v", "libx264", "-fps_mode", "passthrough", gap)
    for clip in (phone, gap):
        result = run_cli("strip", str(clip), str(tmp_path / "strip.jpg"), "--frames", "8")
        assert result.returncode == 0, result.stderr
        times, shown = json.loads(result.stdout)["times"], tracks.shown_times(clip)
        pictures = [min((s for s in shown if s >= t - 0.001), default=None) for t in times]
        assert None not in pictures and len(set(pictures)) == 8, (clip.name, times, shown)
        assert all(p - t < 0.03 for p, t in zip(pictures, times))  # a quarter gap early, at most
        assert pictures[0] < shown[len(shown) // 8] and pictures[-1] >= shown[-len(shown) // 8]


def test_a_video_shorter_than_the_preview_gives_each_frame_once(tmp_path):
    clip = tmp_path / "one.mp4"
    make_clip(clip, seconds=0.04, fps="25", size=(64, 36), audio=False)
    info = ffmpeg.probe(clip)
    assert info.frames == 1 and sample_times(clip, info, 3) == [0.0]
    result = run_cli("preview", str(clip), str(tmp_path / "p.png"))
    assert result.returncode == 0, result.stderr
    assert Image.open(tmp_path / "p.png").size == (6 + 2 * (64 + 6), 6 + 36 + 24)


@pytest.mark.parametrize("kind", ["image", "text"])
def test_preview_of_what_is_not_a_video_is_one_line(tmp_path, kind):
    source = tmp_path / ("still.png" if kind == "image" else "notes.mp4")
    if kind == "image":
        Image.new("RGB", (64, 48), "red").save(source)
    else:
        source.write_text("not a video")
    before = source.read_bytes()
    result = run_cli("preview", str(source), str(tmp_path / "p.png"))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert source.read_bytes() == before and not (tmp_path / "p.png").exists()


def test_an_hdr_source_is_shown_tone_mapped_as_the_network_sees_it(tmp_path):
    """An HDR10 source's PQ code values shown as SDR are grey and flat: the preview's before,
    the frames it styles and the strip are the tone-mapped frames split gives the network."""
    hdr = tmp_path / "hdr10.mp4"
    _ffmpeg("-f", "lavfi", "-i", "testsrc2=s=160x90:r=24:d=1", "-vf", "format=yuv420p10le", "-c:v", "libx265",
            "-x265-params", "log-level=error:colorprim=bt2020:transfer=smpte2084:colormatrix=bt2020nc:range=limited",
            "-color_primaries", "bt2020", "-color_trc", "smpte2084", "-colorspace", "bt2020nc", hdr)
    # the frames the run styles: split's tone-mapped SDR, through the network unchanged at strength 0
    seen = tmp_path / "seen.mp4"
    result = run_cli("stylize", hdr, seen, "--style", "7", "--style-strength", "0", "--crf", "0", "--ranks", "1")
    assert result.returncode == 0, result.stderr

    out = tmp_path / "preview.png"
    result = run_cli("preview", hdr, out, "--style", "7", "--frames", "2")
    assert result.returncode == 0, result.stderr
    times = json.loads(result.stdout)["times"]
    sheet = np.asarray(Image.open(out), float)
    expected = ffmpeg.grab_frames(seen, times, (160, 90)).astype(float)
    untouched = ffmpeg.grab_frames(hdr, times, (160, 90)).astype(float)  # PQ decoded as if it were SDR
    for row in range(2):
        top = 6 + row * (90 + 18 + 6) + 18
        before = sheet[top:top + 90, 6:166]
        assert np.abs(before - expected[row]).mean() < 3
        assert np.abs(before - untouched[row]).mean() > 3 * np.abs(before - expected[row]).mean()

    strip = tmp_path / "strip.png"
    result = run_cli("strip", hdr, strip, "--frames", "2", "--tile-width", "160")
    assert result.returncode == 0, result.stderr
    facts = json.loads(result.stdout)
    tiles = np.asarray(Image.open(strip), float)
    expected = ffmpeg.grab_frames(seen, facts["times"], (160, 90)).astype(float)
    first = tiles[24:24 + 90, 6:166]
    assert np.abs(first - expected[0]).mean() < 3
