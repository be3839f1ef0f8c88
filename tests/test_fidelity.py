"""What a media organisation's footage carries comes out of `stylize` with it: every track,
the frames' own times, the colour tags, the shape. Each clip is made by ffmpeg here and the
output is compared with it through ffprobe."""

from __future__ import annotations

import json
import subprocess
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from scoring.media import ffmpeg, tracks
from scoring.media.samples import make_clip

from .helpers import assert_every_frame_decodes, decoded_frames, run_scoring, x264_runs

SUBTITLES = "1\n00:00:00,100 --> 00:00:00,900\nhello there\n\n2\n00:00:01,000 --> 00:00:01,400\nsecond line\n"
CHAPTERS = (";FFMETADATA1\ntitle=My film\n[CHAPTER]\nTIMEBASE=1/1000\nSTART=0\nEND=800\ntitle=Opening\n"
            "[CHAPTER]\nTIMEBASE=1/1000\nSTART=800\nEND=1500\ntitle=End\n")


def make(path: Path, *args: str) -> Path:
    subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-y", *args, str(path)], check=True)
    return path


def probe(path: Path, *entries: str) -> dict:
    out = subprocess.run(["ffprobe", "-v", "error", "-print_format", "json", *entries, str(path)], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


def streams(path: Path) -> list[dict]:
    return probe(path, "-show_streams")["streams"]


def stylize(source: Path, output: Path, *extra: str, segment_frames: int = 16) -> dict:
    """``stylize`` the source, and check that every one of its frames decodes in the output."""
    result = run_scoring("stylize", source, output, "--style", "3", "--segment-frames", str(segment_frames),
                         "--ranks", "1", *extra, check=True)
    assert_every_frame_decodes(output, source)
    return json.loads(result.stdout.splitlines()[-1])


def subtitle_text(path: Path, index: int = 0) -> str:
    out = subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-i", str(path), "-map", f"0:s:{index}", "-f", "srt",
                          "-"], check=True, capture_output=True, text=True).stdout
    return " ".join(line for line in out.splitlines() if line and not line[0].isdigit())


def frame_times(path: Path) -> list[float]:
    frames = probe(path, "-select_streams", "v:0", "-show_entries", "frame=pts_time")["frames"]
    return [float(f["pts_time"]) for f in frames]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fidelity")
    (folder / "subs.srt").write_text(SUBTITLES)
    (folder / "chapters.txt").write_text(CHAPTERS)
    made = {}
    # two audio tracks (AAC English, AC-3 Portuguese, not default), text subtitles, chapters, BT.709 tags
    made["tracks"] = make(
        folder / "tracks.mp4", "-f", "lavfi", "-i", "testsrc2=s=96x64:r=20:d=1.5", "-f", "lavfi", "-i",
        "sine=f=440:d=1.5", "-f", "lavfi", "-i", "sine=f=660:d=1.5", "-i", folder / "subs.srt",
        "-i", folder / "chapters.txt", "-map", "0", "-map", "1", "-map", "2", "-map", "3", "-map_metadata", "4",
        "-map_chapters", "4", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-colorspace", "bt709", "-color_primaries",
        "bt709", "-color_trc", "bt709", "-color_range", "tv", "-c:a:0", "aac", "-c:a:1", "ac3", "-c:s", "mov_text",
        "-metadata:s:a:0", "language=eng", "-metadata:s:a:1", "language=por", "-metadata:s:s:0", "language=por",
        "-disposition:a:1", "0", "-metadata", "creation_time=2024-05-01T10:00:00Z")
    # Matroska: PCM audio with a title, SubRip subtitles
    made["mkv"] = make(
        folder / "tracks.mkv", "-f", "lavfi", "-i", "testsrc2=s=96x64:r=25:d=1.5", "-f", "lavfi", "-i",
        "sine=f=440:d=1.5", "-i", folder / "subs.srt", "-map", "0", "-map", "1", "-map", "2", "-c:v", "libx264",
        "-pix_fmt", "yuv420p", "-c:a", "pcm_s16le", "-c:s", "srt", "-metadata:s:a:0", "language=por",
        "-metadata:s:a:0", "title=Comentário", "-metadata:s:s:0", "language=eng")
    # 30 frames a second for one second, then 10; the picture starts 0.25 s after the sound
    made["vfr"] = make(
        folder / "vfr.mp4", "-itsoffset", "0.25", "-f", "lavfi", "-i",
        r"testsrc2=s=96x64:r=30:d=2,select='lt(t\,1)+not(mod(n\,3))'", "-f", "lavfi", "-i", "sine=f=440:d=2.5",
        "-fps_mode", "vfr", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac")
    made["ts"] = make(folder / "broadcast.ts", "-f", "lavfi", "-i", "testsrc2=s=96x64:r=25:d=0.8", "-f", "lavfi",
                      "-i", "sine=f=440:d=0.8", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac")
    made["hdr"] = make(
        folder / "hdr10.mp4", "-f", "lavfi", "-i", "testsrc2=s=96x64:r=24:d=0.5", "-vf", "format=yuv420p10le",
        "-c:v", "libx265", "-x265-params", "log-level=error:colorprim=bt2020:transfer=smpte2084:"
        "colormatrix=bt2020nc:range=limited:hdr10=1:master-display=G(13250,34500)B(7500,3000)R(34000,16000)"
        "WP(15635,16450)L(10000000,1):max-cll=1000,400", "-color_primaries", "bt2020", "-color_trc", "smpte2084",
        "-colorspace", "bt2020nc", "-tag:v", "hvc1")
    made["full"] = make(
        folder / "full.mp4", "-f", "lavfi", "-i", "testsrc2=s=96x64:r=24:d=0.5", "-vf",
        "scale=out_range=full:out_color_matrix=bt709,format=yuv420p", "-c:v", "libx264", "-colorspace", "bt709",
        "-color_primaries", "bt709", "-color_trc", "bt709", "-color_range", "pc")
    made["sar"] = make(folder / "anamorphic.mp4", "-f", "lavfi", "-i", "testsrc2=s=96x64:r=24:d=0.5,setsar=4/3",
                       "-c:v", "libx264", "-pix_fmt", "yuv420p")
    made["odd"] = make(folder / "odd.mp4", "-f", "lavfi", "-i", "testsrc2=s=97x63:r=24:d=0.5,format=yuv444p",
                       "-c:v", "libx264", "-pix_fmt", "yuv444p")
    made["interlaced"] = make(
        folder / "interlaced.mp4", "-f", "lavfi", "-i", "testsrc2=s=96x64:r=25:d=0.6,setfield=tff", "-c:v",
        "libx264", "-pix_fmt", "yuv420p", "-flags", "+ilme+ildct", "-x264-params", "interlaced=1:tff=1")
    return made


def test_every_audio_track_subtitles_chapters_and_metadata_are_kept(clips, tmp_path):
    output = tmp_path / "out.mp4"
    result = stylize(clips["tracks"], output)
    got = streams(output)
    kinds = [s["codec_type"] for s in got]
    assert kinds.count("video") == 1 and kinds.count("audio") == 2 and kinds.count("subtitle") == 1
    audio = [s for s in got if s["codec_type"] == "audio"]
    assert [(s["codec_name"], s["tags"]["language"]) for s in audio] == [("aac", "eng"), ("ac3", "por")]
    assert [s["disposition"]["default"] for s in audio] == [1, 0]
    subtitle = next(s for s in got if s["codec_type"] == "subtitle")
    assert subtitle["codec_name"] == "mov_text" and subtitle["tags"]["language"] == "por"
    assert subtitle_text(output) == "hello there second line"
    facts = probe(output, "-show_chapters", "-show_format")
    assert [c["tags"]["title"] for c in facts["chapters"]] == ["Opening", "End"]
    assert facts["format"]["tags"]["title"] == "My film"
    assert facts["format"]["tags"]["creation_time"].startswith("2024-05-01T10:00:00")
    actions = {s["index"]: s["action"] for s in result["streams"]}
    assert actions == {0: "styled", 1: "kept", 2: "kept", 3: "kept", 4: "converted"}  # 4: the chapter track


def test_matroska_tracks_converted_where_mp4_needs_it_and_back(clips, tmp_path):
    output = tmp_path / "out.mp4"
    result = stylize(clips["mkv"], output)
    audio, subtitle = [s for s in streams(output) if s["codec_type"] != "video"]
    assert (audio["codec_name"], audio["tags"]["language"]) == ("alac", "por")  # MP4 takes no PCM: lossless still
    assert audio["channels"] == 1
    assert (subtitle["codec_name"], subtitle["tags"]["language"]) == ("mov_text", "eng")
    assert subtitle_text(output) == "hello there second line"
    report = {s["codec"]: s for s in result["streams"]}
    assert report["pcm_s16le"]["action"] == "converted" and report["pcm_s16le"]["to"] == "alac"
    assert report["subrip"]["action"] == "converted" and "mov_text" in report["subrip"]["why"]

    back = tmp_path / "back.mkv"  # mov_text out of MP4 into Matroska becomes SubRip; every title kept
    result = stylize(clips["tracks"], back)
    got = streams(back)
    assert [s["codec_name"] for s in got if s["codec_type"] == "subtitle"] == ["subrip"]
    assert [s["tags"].get("language") for s in got if s["codec_type"] == "audio"] == ["eng", "por"]
    assert subtitle_text(back) == "hello there second line"
    assert probe(clips["mkv"], "-show_streams")["streams"][1]["tags"]["title"] == "Comentário"
    mkv_out = tmp_path / "same.mkv"
    stylize(clips["mkv"], mkv_out)
    pcm = next(s for s in streams(mkv_out) if s["codec_type"] == "audio")
    assert (pcm["codec_name"], pcm["tags"]["title"]) == ("pcm_s16le", "Comentário")  # Matroska takes it as it is


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_variable_frame_rate_start_offset_and_sync_are_kept(clips, tmp_path, suffix):
    output = tmp_path / f"out{suffix}"
    stylize(clips["vfr"], output)
    before, after = frame_times(clips["vfr"]), frame_times(output)
    assert len(after) == len(before) == 40
    # Matroska holds no negative time: where the sound starts before zero (AAC's priming samples)
    # the whole file moves by that much; MP4 keeps every time as it was
    shift = after[0] - before[0]
    assert shift == pytest.approx(0, abs=0.001) if suffix == ".mp4" else 0 <= shift < 0.05
    assert max(abs(a - b - shift) for a, b in zip(after, before)) < 0.001
    assert after[28] - after[0] == pytest.approx(before[28] - before[0], abs=0.001)  # 0.87 s in: still there

    def first(path, kind):
        return float(probe(path, "-select_streams", kind, "-show_entries", "packet=pts_time",
                           "-read_intervals", "%+#1")["packets"][0]["pts_time"])

    # the picture starts 0.25 s after the sound, in the output too: the sound stays with the picture
    lead = [first(path, "v:0") - first(path, "a:0") for path in (clips["vfr"], output)]
    assert lead[0] > 0.2 and lead[1] == pytest.approx(lead[0], abs=0.001)


def test_a_clip_trimmed_without_encoding_is_styled_from_its_first_shown_frame(tmp_path):
    """A clip cut by stream copy (an editor's or a phone's quick trim, ``ffmpeg -ss -c copy``)
    starts inside a GOP: its MP4 edit list hides the pictures before the cut, decoded only to
    build the first one shown. Those are no frames, so the file is not damaged (split refused
    it as such); the output holds the frames shown, at their times, with the sound."""
    whole, trimmed, output = tmp_path / "whole.mp4", tmp_path / "trimmed.mp4", tmp_path / "out.mp4"
    make(whole, "-f", "lavfi", "-i", "testsrc2=s=96x64:r=30:d=4", "-f", "lavfi", "-i", "sine=f=440:d=4",
         "-c:v", "libx264", "-preset", "veryfast", "-g", "60", "-pix_fmt", "yuv420p", "-c:a", "aac")
    make(trimmed, "-ss", "0.5", "-i", whole, "-c", "copy")
    hidden = [p for p in probe(trimmed, "-select_streams", "v:0", "-show_entries", "packet=flags")["packets"]
              if "D" in p["flags"]]
    assert len(hidden) >= 10  # the edit list this test is about
    stylize(trimmed, output)
    before, after = frame_times(trimmed), frame_times(output)
    assert len(after) == len(before) == 105
    assert max(abs(a - b) for a, b in zip(after, before)) < 0.001
    durations = [float(s["duration"]) for s in streams(output)]
    assert max(durations) - min(durations) < 0.05  # the sound as long as the picture, as in the source


def test_a_raw_h264_stream_is_styled_at_its_frame_rate(tmp_path):
    """An elementary stream, with no container to give a duration or frame times (split
    crashed writing the plan): styled at its frame rate, every frame."""
    source, output = tmp_path / "camera.h264", tmp_path / "out.mp4"
    make(source, "-f", "lavfi", "-i", "testsrc2=s=96x64:r=30:d=1", "-c:v", "libx264", "-pix_fmt", "yuv420p")
    result = stylize(source, output)
    assert result["frames"] == 30 and result["frame_times"] == "frame rate"
    assert len(frame_times(output)) == 30


def test_mpeg_ts_times_count_from_the_start_and_keep_the_sync(clips, tmp_path):
    output = tmp_path / "out.mp4"
    stylize(clips["ts"], output)

    def starts(path):
        return {s["codec_type"]: float(s["start_time"]) for s in probe(path, "-show_streams")["streams"]}

    before, after = starts(clips["ts"]), starts(output)
    assert before["audio"] > 1  # MPEG-TS starts where its clock was
    assert after["audio"] == pytest.approx(0, abs=0.001)
    assert after["video"] - after["audio"] == pytest.approx(before["video"] - before["audio"], abs=0.001)
    shift = before["audio"]
    assert max(abs(a + shift - b) for a, b in zip(frame_times(output), frame_times(clips["ts"]))) < 0.001


def colour_tags(path: Path) -> tuple:
    video = next(s for s in streams(path) if s["codec_type"] == "video")
    return (video.get("color_primaries"), video.get("color_transfer"), video.get("color_space"),
            video.get("color_range"), video["pix_fmt"])


def rgb_frames(path: Path) -> np.ndarray:
    """The frames as a player shows them: converted by their own tags (matrix, range)."""
    video = next(s for s in streams(path) if s["codec_type"] == "video")
    matrix = {"bt709": "bt709"}.get(video.get("color_space"), "bt601")
    colour_range = "full" if video.get("color_range") == "pc" else "limited"
    out = subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-i", str(path), "-map", "0:v:0", "-vf",
                          f"scale=in_color_matrix={matrix}:in_range={colour_range}", "-f", "rawvideo", "-pix_fmt",
                          "rgb24", "-"], check=True, capture_output=True).stdout
    return np.frombuffer(out, np.uint8).reshape(-1, video["height"], video["width"], 3)


@pytest.mark.parametrize("clip, colour_range", [("tracks", "tv"), ("full", "pc")])
def test_colour_tags_and_range_are_kept(clips, tmp_path, clip, colour_range):
    output = tmp_path / "out.mp4"
    stylize(clips[clip], output, "--style-strength", "0")  # the network's blend back to the input: the input
    assert colour_tags(output) == colour_tags(clips[clip])
    assert colour_tags(output)[:4] == ("bt709", "bt709", "bt709", colour_range)
    before, after = rgb_frames(clips[clip]).astype(float), rgb_frames(output).astype(float)
    assert np.abs(before.mean(axis=(0, 1, 2)) - after.mean(axis=(0, 1, 2))).max() < 2  # no level or hue shift
    assert np.percentile(after, 99.5) > 250 and np.percentile(after, 0.5) < 5  # black stays black, white white


def test_hdr10_is_tone_mapped_to_sdr_and_tagged_so(clips, tmp_path):
    assert colour_tags(clips["hdr"])[:2] == ("bt2020", "smpte2084")
    output = tmp_path / "out.mp4"
    result = stylize(clips["hdr"], output)
    assert colour_tags(output) == ("bt709", "bt709", "bt709", "tv", "yuv420p")
    assert any("tone-mapped to SDR BT.709" in note for note in result["picture"])
    strength0 = tmp_path / "plain.mp4"
    stylize(clips["hdr"], strength0, "--style-strength", "0")
    # PQ's code values shown as SDR would be grey and flat; tone-mapped, the bars keep their contrast
    assert rgb_frames(strength0).std() > 50


def test_hdr10_kept_as_10_bit_hdr_when_asked(clips, tmp_path):
    output = tmp_path / "hdr.mp4"
    result = stylize(clips["hdr"], output, "--hdr", "keep")
    assert colour_tags(output) == ("bt2020", "smpte2084", "bt2020nc", "tv", "yuv420p10le")
    assert next(s for s in streams(output) if s["codec_type"] == "video")["profile"] == "High 10"
    assert result["colour"]["transfer"] == "smpte2084" and any("10-bit HDR" in n for n in result["picture"])
    assert ffmpeg.count_frames(output) == ffmpeg.count_frames(clips["hdr"])
    # the source's HDR10 static metadata, as the output's bitstream carries it (ffmpeg 5.1's H.264
    # decoder does not read these SEI: the bitstream's own syntax is read instead)
    sei = hdr10_sei(output)
    assert sei["display_primaries_x[0]"] == 13250 and sei["display_primaries_y[0]"] == 34500
    assert (sei["white_point_x"], sei["white_point_y"]) == (15635, 16450)
    assert (sei["max_display_mastering_luminance"], sei["min_display_mastering_luminance"]) == (10000000, 1)
    assert (sei["max_content_light_level"], sei["max_pic_average_light_level"]) == (1000, 400)
    video = next(s for s in result["streams"] if s["action"] == "styled")
    assert video["mastering"] == {"action": "kept", "display": "G(13250,34500)B(7500,3000)R(34000,16000)"
                                  "WP(15635,16450)L(10000000,1)", "light": "1000,400"}


def hdr10_sei(path: Path) -> dict:
    """The mastering display and content light level fields of the first picture's SEI, by name."""
    trace = subprocess.run(["ffmpeg", "-v", "trace", "-nostdin", "-i", str(path), "-map", "0:v:0", "-c", "copy",
                            "-bsf:v", "trace_headers", "-frames:v", "1", "-f", "null", "-"],
                           capture_output=True, text=True, check=True).stderr
    wanted = ("display_primaries", "white_point", "display_mastering_luminance", "content_light_level",
              "pic_average_light_level")
    fields = {}
    for line in trace.splitlines():
        parts = line.split()
        if "trace_headers" in line and len(parts) > 4 and any(w in parts[-4] for w in wanted):
            fields.setdefault(parts[-4], int(parts[-1]))
    return fields


def test_non_square_pixels_odd_sides_and_interlacing(clips, tmp_path):
    def aspect(path):
        video = next(s for s in streams(path) if s["codec_type"] == "video")
        sar = Fraction(video.get("sample_aspect_ratio", "1:1").replace(":", "/"))
        return video["width"], video["height"], sar, sar * video["width"] / video["height"]

    stylize(clips["sar"], tmp_path / "sar.mp4")
    assert aspect(tmp_path / "sar.mp4") == aspect(clips["sar"]) == (96, 64, Fraction(4, 3), Fraction(2))

    result = stylize(clips["odd"], tmp_path / "odd.mp4")
    width, height, _, dar = aspect(tmp_path / "odd.mp4")
    assert (width, height) == (96, 62) and dar == Fraction(97, 63)
    assert any("97x63" in note for note in result["picture"])

    assert next(s for s in streams(clips["interlaced"]) if s["codec_type"] == "video")["field_order"] == "tt"
    result = stylize(clips["interlaced"], tmp_path / "progressive.mp4")
    video = next(s for s in streams(tmp_path / "progressive.mp4") if s["codec_type"] == "video")
    assert video.get("field_order", "progressive") == "progressive"
    assert ffmpeg.count_frames(tmp_path / "progressive.mp4") == ffmpeg.count_frames(clips["interlaced"])
    assert any("deinterlaced" in note for note in result["picture"])


def annex_b(path: Path, frames: int, *x264: str) -> bytes:
    """``frames`` frames of raw H.264 as the styled segments are written (no B-frames)."""
    make(path, "-f", "lavfi", "-i", f"testsrc2=s=64x48:r=25,trim=end_frame={frames}", "-c:v", "libx264",
         "-preset", "veryfast", "-bf", "0", "-pix_fmt", "yuv420p", *x264, "-f", "h264")
    return path.read_bytes()


@pytest.mark.parametrize("frames, x264", [
    (1, []),  # one picture after its SPS, PPS and SEI: the stream's last NAL unit is the picture's
    (5, ["-force_key_frames", "expr:eq(n,4)"]),  # the last picture an IDR with its own SPS and PPS
    (5, ["-slices", "3"]),  # every picture in three slices: the last slice ends the stream
    (6, []),
], ids=["one-frame", "idr-last", "slices", "plain"])
def test_access_units_hold_every_byte_one_picture_each(tmp_path, frames, x264):
    data = annex_b(tmp_path / "styled.h264", frames, *x264)
    units = tracks.access_units(data)
    assert len(units) == frames
    assert b"".join(units) == data  # no byte left out, the last NAL unit's included
    ivf = tmp_path / "joined.ivf"
    with open(ivf, "wb") as out:
        tracks.write_ivf([tmp_path / "styled.h264"], list(range(frames)), "1/25", (64, 48), out, [frames])
    assert decoded_frames(ivf) == frames


def test_a_segment_holding_headers_without_their_picture_is_refused(tmp_path):
    data = annex_b(tmp_path / "styled.h264", 3)
    headers = data[:data.index(b"\x00\x00\x01\x65") if b"\x00\x00\x01\x65" in data else 0]
    assert headers  # SPS, PPS and SEI before the first IDR
    with pytest.raises(RuntimeError, match="hold no picture"):
        tracks.access_units(data + headers)
    with open(tmp_path / "out.ivf", "wb") as out, pytest.raises(RuntimeError, match="holds 3 pictures, its plan 4"):
        tracks.write_ivf([tmp_path / "styled.h264"], list(range(4)), "1/25", (64, 48), out, [4])


@pytest.mark.parametrize("seconds, fps, audio, segment_frames", [
    (1.2, "10", True, 48),  # 12 frames in one segment, with sound: the clip that lost its last frame
    (1.2, "10", True, 5),  # 5 + 5 + 2
    (1.0, "25", False, 16),  # 16 + 9
    (0.68, "25", True, 16),  # 17 frames: the last segment holds one frame
    (0.92, "25", False, 7),  # 23 frames: 7 + 7 + 7 + 2
], ids=["10fps-12-audio", "10fps-odd-segments", "25fps", "last-segment-one-frame", "23-in-sevens"])
def test_every_frame_of_the_input_decodes_in_the_output(tmp_path, seconds, fps, audio, segment_frames):
    source = tmp_path / "in.mp4"
    made = make_clip(source, seconds=seconds, fps=fps, size=(64, 36), audio=audio)
    output = tmp_path / "out.mp4"
    result = stylize(source, output, segment_frames=segment_frames)
    assert result["frames"] == made["frames"] == assert_every_frame_decodes(output, source)


@pytest.mark.parametrize("segment_frames", [16, 39])  # 40 frames: 16 + 16 + 8, and 39 + 1
def test_every_frame_of_a_variable_frame_rate_input_decodes(clips, tmp_path, segment_frames):
    output = tmp_path / "out.mkv"
    stylize(clips["vfr"], output, segment_frames=segment_frames)
    assert assert_every_frame_decodes(output, clips["vfr"]) == 40


def stitch_again(work: Path, source: Path, output: Path, delivery: str) -> dict:
    """The kept work of a ``stylize`` stitched again with another ``--delivery``."""
    styled = next(work.glob("styled-*"))
    result = run_scoring("stitch", "--segments", work / "segments", "--styled", styled, "--source", source,
                         "--delivery", delivery, output, check=True)
    assert_every_frame_decodes(output, source)
    return json.loads(result.stdout.splitlines()[-1])


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_every_delivery_choice_decodes_every_frame_at_the_source_times(clips, tmp_path, suffix):
    from scoring.media.delivery import DEFAULT_DELIVERY, segment_encode

    source_times = frame_times(clips["vfr"])
    segments = -(-len(source_times) // 16)
    web, mezzanine = tmp_path / "work-web", tmp_path / "work-mezzanine"
    made = {"web": stylize(clips["vfr"], tmp_path / f"web{suffix}", "--work-dir", web, "--keep-work"),
            "mezzanine": stylize(clips["vfr"], tmp_path / f"mezzanine{suffix}", "--delivery", "mezzanine",
                                 "--work-dir", mezzanine, "--keep-work"),
            # the same segments stitched again: web from the intermediate ones, as a run in flight across
            # an upgrade does, and HEVC
            "web again": stitch_again(mezzanine, clips["vfr"], tmp_path / f"web again{suffix}", "web"),
            "hevc": stitch_again(web, clips["vfr"], tmp_path / f"hevc{suffix}", "hevc")}
    expected = {"web": (DEFAULT_DELIVERY, "copy", "the ranks, as they styled"),
                "mezzanine": ("mezzanine", "copy", "the ranks, as they styled"),
                "web again": ("web", "libx264", "the stitch"), "hevc": ("hevc", "libx265", "the stitch")}
    for name, result in made.items():
        video = next(s for s in result["streams"] if s["action"] == "styled")
        assert (video["delivery"], video["encoder"], video["encoded_by"]) == expected[name]
        output = tmp_path / f"{name}{suffix}"
        times = frame_times(output)
        assert len(times) == len(source_times) == 40
        # as in the default's test above: Matroska may move the whole file by the sound's priming
        shift = times[0] - source_times[0]
        assert shift == pytest.approx(0, abs=0.001) if suffix == ".mp4" else 0 <= shift < 0.05, (name, shift)
        assert max(abs(a - b - shift) for a, b in zip(times, source_times)) < 0.001, name
        assert [s["codec_type"] for s in streams(output)].count("audio") == 1
    assert next(s for s in streams(tmp_path / f"hevc{suffix}") if s["codec_type"] == "video")["codec_name"] == "hevc"
    # the default is encoded once, by the ranks, segment by segment, at its own settings; never again
    preset, crf = segment_encode("web")
    subme = {"veryfast": 2, "faster": 4, "fast": 6, "medium": 7}[preset]  # what tells x264's presets apart
    runs = x264_runs(tmp_path / f"web{suffix}")
    assert len(runs) == segments and all(f" crf={crf}.0 " in r and " bframes=0 " in r and f" subme={subme} " in r
                                         for r in runs), runs
    runs = x264_runs(tmp_path / f"mezzanine{suffix}")
    assert len(runs) == segments and all(" crf=17.0 " in r and " subme=2 " in r for r in runs), runs  # veryfast
    (again,) = x264_runs(tmp_path / f"web again{suffix}")
    assert " crf=20.0 " in again and " bframes=3 " in again
    # a mezzanine is only the segments the ranks wrote for one
    refused = run_scoring("stitch", "--segments", web / "segments", "--styled", next(web.glob("styled-*")),
                          "--source", clips["vfr"], "--delivery", "mezzanine", tmp_path / f"refused{suffix}")
    assert refused.returncode == 2 and not (tmp_path / f"refused{suffix}").exists()
    assert refused.stderr.strip().splitlines() == [
        "error: the styled segments were encoded for --delivery web, and a mezzanine is the segments the ranks "
        "wrote for it: score again with --delivery mezzanine"], refused.stderr


def test_hdr10_metadata_kept_in_hevc_delivery(clips, tmp_path):
    work = tmp_path / "work"
    stylize(clips["hdr"], tmp_path / "first.mp4", "--hdr", "keep", "--work-dir", work, "--keep-work")
    output = tmp_path / "hdr-hevc.mp4"
    result = stitch_again(work, clips["hdr"], output, "hevc")
    assert colour_tags(output) == ("bt2020", "smpte2084", "bt2020nc", "tv", "yuv420p10le")
    side = probe(output, "-select_streams", "v:0", "-read_intervals", "%+#1", "-show_frames",
                 "-show_entries", "frame=side_data_list")["frames"][0]["side_data_list"]
    display = next(d for d in side if d["side_data_type"] == "Mastering display metadata")
    assert (display["green_x"], display["max_luminance"]) == ("13250/50000", "10000000/10000")
    light = next(d for d in side if d["side_data_type"] == "Content light level metadata")
    assert (light["max_content"], light["max_average"]) == (1000, 400)
    assert next(s for s in result["streams"] if s["action"] == "styled")["mastering"]["action"] == "kept"
