"""Every bad input a user can send: exit 2, one line saying what is wrong, input untouched,
nothing at the output path."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import torch

from .helpers import run_scoring, sha256


def _ffmpeg(*args):
    subprocess.run(["ffmpeg", "-v", "error", "-y", *map(str, args)], check=True, stdin=subprocess.DEVNULL)


def make_bad_inputs(folder, clip):
    """name -> (input path, extra CLI args, words the error line must contain)."""
    cases = {}

    def add(name, path, words, *args):
        cases[name] = (path, list(args), words)

    add("missing", folder / "nope.mp4", "input not found")
    (folder / "empty.mp4").write_bytes(b"")
    add("zero bytes", folder / "empty.mp4", "is empty (0 bytes)")
    (folder / "notes.mp4").write_text("this is not a video\n")
    add("text named .mp4", folder / "notes.mp4", "not a video or image we can read")
    (folder / "noise.mp4").write_bytes(bytes(range(256)) * 64)
    add("random bytes", folder / "noise.mp4", "not a video or image we can read")
    data = clip.read_bytes()
    (folder / "cut.mp4").write_bytes(data[: len(data) // 2])  # moov is at the end: gone
    add("truncated (moov missing)", folder / "cut.mp4", "truncated or incomplete")
    _ffmpeg("-i", clip, "-c", "copy", "-movflags", "+faststart", folder / "fast.mp4")
    fast = (folder / "fast.mp4").read_bytes()
    (folder / "cut-fast.mp4").write_bytes(fast[: len(fast) * 6 // 10])
    add("truncated (data missing)", folder / "cut-fast.mp4", "is truncated")
    _ffmpeg("-i", clip, "-vn", "-c:a", "copy", folder / "sound.mp4")
    add("audio only", folder / "sound.mp4", "has only audio")
    add("too many pixels", clip, "the limit is 0.0 MP", "--max-pixels", "1000")
    add("too long", clip, "the limit is 1 s", "--max-duration", "1")
    add("too many frames", clip, "the limit is 10", "--max-frames", "10")
    add("unknown style", clip, "unknown style 30", "--style", "30")
    add("style spec that does not parse", clip, "bad style spec", "--style", "seven")
    (folder / "junk.pth").write_bytes(b"\x00" * 100)
    add("unreadable .pth", clip, "not a PyTorch checkpoint", "--model", folder / "junk.pth")
    torch.save({"fc.weight": torch.zeros(2, 2)}, folder / "other.pth")
    add(".pth of another network", clip, "not a TransformerNet", "--model", folder / "other.pth")
    add("missing .pth", clip, "model file not found", "--model", folder / "nowhere.pth")
    # files that name other files or URLs: ffmpeg would follow them, so they are refused unread
    _ffmpeg("-i", clip, "-c", "copy", "-f", "mpegts", folder / "seg.ts")
    hls = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\n{}\n#EXT-X-ENDLIST\n"
    (folder / "list.m3u8").write_text(hls.format(f"file:{folder / 'seg.ts'}"))
    add("HLS playlist of file: paths", folder / "list.m3u8", "is a playlist (HLS .m3u8), not a video")
    (folder / "playlist.mp4").write_text(hls.format("seg.ts"))
    add("HLS playlist named .mp4", folder / "playlist.mp4", "is a playlist (HLS .m3u8), not a video")
    (folder / "remote.m3u8").write_text(hls.format("http://127.0.0.1:9/seg.ts"))
    add("remote-URL playlist", folder / "remote.m3u8", "is a playlist of remote URLs (HLS .m3u8), not a video")
    (folder / "list.ffconcat").write_text("ffconcat version 1.0\nfile seg.ts\n")
    add("concat list", folder / "list.ffconcat", "is a concat list (ffconcat), not a video")
    shutil.copy(clip, folder / "../ odd näme ..mp4")
    add("odd name, bad style", folder / "../ odd näme ..mp4", "unknown style 99", "--style", "99")
    return cases


@pytest.fixture(scope="module")
def bad_inputs(clip_factory, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad") / "inputs"
    folder.mkdir()
    return make_bad_inputs(folder, clip_factory(seconds=2, fps="25"))


CASES = ["missing", "zero bytes", "text named .mp4", "random bytes", "truncated (moov missing)",
         "truncated (data missing)", "audio only", "too many pixels", "too long", "too many frames", "unknown style",
         "style spec that does not parse", "unreadable .pth", ".pth of another network", "missing .pth",
         "odd name, bad style", "HLS playlist of file: paths", "HLS playlist named .mp4", "remote-URL playlist",
         "concat list"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_refused_cleanly(bad_inputs, tmp_path, case):
    source, args, words = bad_inputs[case]
    before = sha256(source) if source.exists() else None
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = run_scoring("stylize", source, out_dir / "styled.mp4", *args)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], lines
    assert "Traceback" not in result.stderr
    assert (sha256(source) if source.exists() else None) == before
    assert list(out_dir.iterdir()) == []  # no output, and no work folder of a run refused
    assert not (out_dir / "styled.mp4").exists()


def test_all_cases_are_covered(bad_inputs):
    assert sorted(bad_inputs) == sorted(CASES)


def test_bad_output_names_and_parameters(clip_factory, tmp_path):
    clip = clip_factory(seconds=2, fps="25")
    for args, words in [
        ([clip, tmp_path / "out.avi"], "must end in one of"),
        ([clip, tmp_path], "is a folder"),
        ([clip, tmp_path / "o.mp4", "--ranks", "0"], "must be at least 1"),
        ([clip, tmp_path / "o.mp4", "--max-side", "abc"], "invalid positive_int value"),
        ([clip, tmp_path / "o.mp4", "--device", "tpu"], "invalid choice"),
        ([clip, tmp_path / "o.mp4", "--precision", "fp16"], "fp16 needs a CUDA device"),
    ]:
        result = run_scoring("stylize", *args)
        assert result.returncode == 2, (args, result.stderr)
        assert words in result.stderr, (args, result.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
