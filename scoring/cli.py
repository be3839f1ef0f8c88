"""``python -m scoring``: the steps as commands. A user's mistake ends in one line and exit 2."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from threading import Thread

from .launch import WaitingRanks, mpiexec_path, run_ranks
from .media import ffmpeg
from .media.delivery import DEFAULT_DELIVERY, DELIVERIES, segment_encode
from .media.errors import UserError
from .media.segments import DEFAULT_SEGMENT_FRAMES
from .media.split import DEFAULT_HDR, HDR_MODES
from .options import PRECISIONS, check_model_choice, check_style_strength, check_temporal


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.run(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    if result is not None:
        print(json.dumps(result) if not isinstance(result, str) else result)
    return 0


# --------------------------------------------------------------------------- commands


def cmd_probe(args) -> str:
    return ffmpeg.probe(args.input, limits_from(args)).to_json()


def cmd_split(args) -> dict:
    from .media.split import split

    plan = split(args.input, args.out, args.max_side, args.segment_frames, limits_from(args), args.hdr)
    audio = any(s["type"] == "audio" for s in plan.media["streams"])
    return {"segments": len(plan.segments), "frames": plan.frames, "frame_rate": plan.frame_rate,
            "size": f"{plan.width}x{plan.height}", "audio": audio, "copied": plan.copied, "folder": str(args.out)}


def cmd_score(args) -> dict | None:
    Thread(target=_list_demuxers, daemon=True).start()
    from .networks import score

    world = score.World()
    score.exit_on_sigterm()
    score.set_threads(world)

    if args.device in ("auto", "cuda"):  # one rank per GPU; a GPU torch cannot run fails here, in one line
        from .gpus import local_rank
        from .networks.devices import check_node

        args.device = check_node(local_rank() if local_rank() is not None else world.local_rank) or args.device
    # a bad style, model or strength fails every rank alike, before any work: a plain exit 2 in each
    stylizer, model_id = stylizer_from(args), model_id_from(args)
    check_temporal(args.temporal)
    if args.await_go:
        if not world.await_go():
            return None  # stylize's split was refused, and stylize says why
        score.set_threads(world)  # the cores, among the ranks that style
    encoding = encoding_from(args, stylizer)
    out = args.out or score.styled_folder(args.segments, model_id, encoding)
    try:
        result = score.score(args.segments, out, stylizer, model_id, encoding, world)
    except UserError as exc:
        if world.size > 1:  # a failure in one rank's share: the others would wait for it forever
            print(f"error: [rank {world.rank}] {exc}", file=sys.stderr, flush=True)
            world.abort(exc.exit_code)
        raise
    summary = score.summarize(world, result)
    return summary and {**summary, "out": str(out)}


def _list_demuxers() -> None:
    """ffmpeg lists its demuxers (a process of its own, for every decoder's whitelist) while
    torch loads, not after the go; should it fail, the first decoder's own call says why."""
    try:
        ffmpeg.allowed_demuxers()
    except Exception:  # noqa: BLE001  (reported where it is needed)
        pass


def cmd_stitch(args) -> dict:
    from .media.stitch import stitch

    return stitch(args.segments, args.styled, args.output, args.source, args.delivery)


def cmd_stylize(args) -> dict:
    source, output = Path(args.input), Path(args.output)
    # --ranks auto styles in this process whatever the input: torch and the network start to
    # load now, beside the probe and the split (a second of a core, before the first frame)
    loading = _load_beside(args) if args.ranks == "auto" else None
    info = ffmpeg.probe(source, limits_from(args))
    if info.kind == "image":
        from .networks.images import stylize_image

        stylizer = loading.result() if loading else stylizer_from(args)
        return stylize_image(source, output, stylizer, args.max_side, limits_from(args))
    from .media.stitch import check_delivery, check_output_path, stitch

    check_output_path(output)
    check_delivery(args.delivery)
    check_model_choice(args.style, args.model, args.style_image)  # a bad style fails here, before any work
    check_temporal(args.temporal)
    work = Path(args.work_dir) if args.work_dir else output.parent / f".{output.name}.work"
    fresh = not work.exists()
    ranks = ranks_before_split(args, info)
    if ranks > 1:
        styled, ranks = _score_on_waiting_ranks(args, source, info, work, fresh, ranks)
    else:
        styled, ranks = _score_after_loading(args, source, info, work, fresh, loading or _load_beside(args))
    result = stitch(work / "segments", styled, output, source, args.delivery)
    if not args.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return {**result, "ranks": ranks}


def ranks_before_split(args, info: ffmpeg.MediaInfo) -> int:
    """How many ranks stylize starts before it splits, so that they load the network while it
    splits; 0 where it loads the network itself beside the split and decides after it. Only
    for ``--ranks N`` on a CPU and a built-in style: ``auto`` styles here, on a lane per core
    (score.Lanes); a user's .pth or picture is opened here first, so that one that does not
    load is one line before any work; and torch counts a GPU's ranks."""
    if args.ranks == "auto" or args.model or args.style_image or args.precision == "fp16" or not mpiexec_path():
        return 0
    if args.device == "cuda" or (args.device == "auto" and any(Path("/dev").glob("nvidia[0-9]*"))):
        return 0
    segments = -(-info.frames // args.segment_frames)  # at most: none but the last is shorter than asked
    return ranks if (ranks := min(args.ranks, segments)) > 1 else 0


def _load_beside(args) -> Future:
    """The stylizer, loading on a thread of this process while this one goes on."""
    pool = ThreadPoolExecutor(1)
    loading = pool.submit(stylizer_from, args)
    pool.shutdown(wait=False)  # the thread ends with its one task
    return loading


def _score_on_waiting_ranks(args, source: Path, info: ffmpeg.MediaInfo, work: Path, fresh: bool,
                            ranks: int) -> tuple[Path, int]:
    """Several CPU ranks: mpiexec starts first and its ranks load the network while this
    process splits (this one never imports torch); then every one the split gives a share
    styles it, even shares or not: they have loaded already, and one done first lends its
    cores to those still styling. Returns the styled segments' folder and the ranks that styled."""
    from .media.split import split

    waiting = WaitingRanks(["--segments", str(work / "segments"), *model_args(args)], ranks)
    try:
        plan = split(source, work / "segments", args.max_side, args.segment_frames, limits_from(args), args.hdr,
                     info)
    except BaseException as stopped:
        waiting.cancel()
        if fresh and isinstance(stopped, UserError):  # a run refused leaves no split behind
            shutil.rmtree(work, ignore_errors=True)
        raise
    summary = waiting.go(plan.useful_ranks(ranks))
    return Path(summary["out"]), summary["ranks"]


def _score_after_loading(args, source: Path, info: ffmpeg.MediaInfo, work: Path, fresh: bool,
                         loading: Future) -> tuple[Path, int]:
    """One rank, a GPU's ranks or a user's model: torch and the network load here (``loading``)
    beside the split, then the split decides the ranks. Returns the styled segments' folder and
    the ranks."""
    from .media.split import split

    # torch and the network load (seconds of one core) while the split runs in ffmpeg's own
    # process; a device or precision this machine may lack is checked first, before any work
    if args.device not in ("auto", "cpu") or args.precision == "fp16":
        loading.result()
    try:
        plan = split(source, work / "segments", args.max_side, args.segment_frames, limits_from(args), args.hdr,
                     info)
        stylizer = loading.result()
    except UserError as refused:
        if fresh:  # a run refused leaves no split behind
            shutil.rmtree(work, ignore_errors=True)
        # a model that does not load is the error to show, as it would be without the overlap
        raise (loading.exception() or refused) from None
    from .networks.devices import auto_ranks  # torch, loaded by now
    from .networks.score import score, styled_folder

    model_id = model_id_from(args)  # reads a .pth or picture once: its digest names it
    encoding = encoding_from(args, stylizer)
    styled = styled_folder(work / "segments", model_id, encoding)
    ranks = auto_ranks(stylizer.device, plan) if args.ranks == "auto" else plan.useful_ranks(args.ranks)
    if ranks > 1:
        run_ranks(["--segments", str(work / "segments"), "--out", str(styled), *model_args(args)], ranks)
    else:
        score(work / "segments", styled, stylizer, model_id, encoding)
    return styled, ranks


def cmd_preview(args) -> dict:
    from .networks.preview import before_after

    stylizer = stylizer_from(args)
    return before_after(args.input, args.output, stylizer, args.frames, args.max_side, args.tile_width,
                        limits_from(args))


def cmd_strip(args) -> dict:
    from .media.pictures import contact_strip

    return contact_strip(args.video, args.output, args.frames, args.tile_width)


def cmd_styles(args) -> dict:
    from .networks.images import style_sheet

    return style_sheet(args.image, Path(args.sheet), args.device, args.tile)


def cmd_sample(args) -> dict:
    from .media.samples import make_clip

    width, _, height = args.size.partition("x")
    return make_clip(args.output, args.seconds, args.fps, (int(width), int(height)), audio=not args.no_audio)


# --------------------------------------------------------------------------- shared options


def stylizer_from(args):
    from .networks.models import load_model
    from .networks.stylizer import Stylizer

    return Stylizer(load_model(args.style, args.model, args.style_image), args.device, args.precision, args.compile,
                    args.style_strength)


def encoding_from(args, stylizer):
    """Batching (``auto`` resolved for the stylizer's device), x264 settings for the delivery
    and smoothing."""
    from .networks.score import Encoding
    from .networks.stylizer import resolve_batch

    preset, crf = segment_encode(args.delivery, args.preset, args.crf)
    return Encoding(resolve_batch(args.batch, str(stylizer.device)), crf, preset, args.temporal, args.delivery)


def model_id_from(args) -> str:
    from .networks.models import model_id
    from .networks.stylizer import resolve_precision

    chosen = model_id(args.style, args.model, args.style_image, args.style_strength)
    return f"{chosen}@{resolve_precision(args.precision, args.device)}"


def model_args(args) -> list[str]:
    """The model options again, to hand to the ranks that mpiexec starts."""
    if args.style_image:
        chosen = ["--style-image", str(args.style_image)]
    else:
        chosen = ["--model", str(args.model)] if args.model else ["--style", args.style or "0"]
    preset, crf = segment_encode(args.delivery, args.preset, args.crf)
    return [*chosen, "--style-strength", str(args.style_strength), "--device", args.device,
            "--precision", args.precision, "--batch", str(args.batch), "--delivery", args.delivery,
            "--crf", str(crf), "--preset", preset, *(["--compile"] if args.compile else []),
            "--temporal", repr(args.temporal)]


def limits_from(args) -> ffmpeg.Limits:
    return ffmpeg.Limits(max_pixels=args.max_pixels, max_duration=args.max_duration, max_frames=args.max_frames)


def auto_or_positive(text: str) -> int | str:
    return "auto" if text == "auto" else positive_int(text)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def strength(text: str) -> float:
    try:
        return check_style_strength(float(text))  # argparse words a ValueError itself
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    defaults = ffmpeg.Limits()
    limits = argparse.ArgumentParser(add_help=False)
    group = limits.add_argument_group("input limits")
    group.add_argument("--max-pixels", type=positive_int, default=defaults.max_pixels,
                       help="largest frame accepted, width x height (default: %(default)s, 4K UHD)")
    group.add_argument("--max-duration", type=float, default=defaults.max_duration,
                       help="longest video accepted, in seconds (default: %(default)s)")
    group.add_argument("--max-frames", type=positive_int, default=defaults.max_frames,
                       help="most frames accepted (default: %(default)s)")

    model = argparse.ArgumentParser(add_help=False)
    group = model.add_argument_group("model")
    choice = group.add_mutually_exclusive_group()
    choice.add_argument("--style", help="built-in style 0-25, or a blend such as 3:0.5,12:0.5 (default: 0)")
    choice.add_argument("--model", type=Path, help="a pytorch/examples TransformerNet .pth state dict instead")
    choice.add_argument("--style-image", type=Path, metavar="PICTURE", help="any picture (JPEG, PNG, WebP...) as "
                        "the style instead: its center square, at 256x256, sets the arbitrary-style network")
    group.add_argument("--style-strength", type=strength, default=1.0, metavar="S",
                       help="0..1: blend each styled frame toward the original; 1 is fully styled "
                       "(default: %(default)s)")
    group.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="(default: %(default)s)")
    group.add_argument("--precision", default="auto", choices=PRECISIONS,
                       help="auto: fp16 on CUDA, bf16 on a CPU with native bf16 (AVX-512 BF16, AMX), else fp32; "
                       "fp16 needs CUDA; bf16 on a CPU with VNNI and no AMX takes the first layer in int8 on the "
                       "frames' own 8-bit values (default: %(default)s)")
    group.add_argument("--compile", action="store_true", help="torch.compile the network: faster per frame "
                       "after a first call of about half a minute per process (per rank): for long clips")
    group.add_argument("--batch", type=auto_or_positive, default="auto", help="frames per forward pass; auto: 1 on "
                       "a CPU, 4 on a GPU (bench/run.py, bench/gpu.py; default: %(default)s)")
    group.add_argument("--crf", type=int, help="x264 quality of the styled segments, lower is better (default: "
                       "the delivery's: " + ", ".join(f"{name} {segment_encode(name)[1]}" for name in DELIVERIES) + ")")
    group.add_argument("--preset", help="x264 speed preset of the styled segments (default: the delivery's: "
                       + ", ".join(f"{name} {segment_encode(name)[0]}" for name in DELIVERIES) + ")")
    group = model.add_argument_group("video")
    group.add_argument("--temporal", type=float, default=0.0, metavar="STRENGTH",
                       help="steadier video: blend the previous styled frame into the new one where the input "
                       "stood still, 0 (off) to 0.95; 0.7 is a good start. It costs some work per frame; moving "
                       "parts stay as styled per frame (what it does to flicker, measured: docs/performance.md; "
                       "default: %(default)s)")

    delivery = argparse.ArgumentParser(add_help=False)
    group = delivery.add_argument_group("delivery")
    group.add_argument("--delivery", default=DEFAULT_DELIVERY, choices=list(DELIVERIES),
                       help="the published video's encode: " + "; ".join(f"{name}: {d.why}" for name, d in
                                                                          DELIVERIES.items())
                       + " (the measured trade: docs/performance.md; default: %(default)s)")

    split_opts = argparse.ArgumentParser(add_help=False)
    group = split_opts.add_argument_group("splitting")
    group.add_argument("--max-side", type=positive_int, help="scale down so the longer side is at most this many "
                       "pixels (aspect kept, even sizes)")
    group.add_argument("--segment-frames", type=positive_int, default=DEFAULT_SEGMENT_FRAMES,
                       help="frames per segment, the unit of work and of resume; an H.264 source that needs no "
                       "filter is cut at its own IDR pictures instead of encoded again, into segments of N to 2N "
                       "frames, where they come that often (default: %(default)s)")
    group.add_argument("--hdr", default=DEFAULT_HDR, choices=HDR_MODES, help="what HDR input (PQ, HLG) becomes: sdr "
                       "tone-maps it to SDR BT.709 and tags it so; keep styles it tone-mapped and writes it back as "
                       "10-bit HDR with the source's tags (default: %(default)s)")

    parser = argparse.ArgumentParser(prog="python -m scoring", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    p = sub.add_parser("stylize", parents=[model, split_opts, delivery, limits], help="a video or image, start to end",
                       description="Stylize a video (split, score on N ranks, stitch with the source's audio, subtitles, "
                       "chapters and metadata) "
                       "or a still image. Rerunning after a crash resumes from finished segments.")
    p.add_argument("input", type=Path)
    p.add_argument("output", type=Path, help="video: .mp4 .m4v .mov .mkv; image: .png .jpg .webp ...")
    p.add_argument("--ranks", type=auto_or_positive, default="auto",
                   help="MPI ranks; above 1 runs mpiexec, never more than the video has segments (default: auto: one "
                   "per GPU on CUDA; on a CPU one, in this process, styling a segment per core side by side)")
    p.add_argument("--work-dir", type=Path, help="where segments go (default: .OUTPUT.work beside the output)")
    p.add_argument("--keep-work", action="store_true", help="keep the segments after a successful run")
    p.set_defaults(run=cmd_stylize)

    p = sub.add_parser("probe", parents=[limits], help="validate an input and print its facts as JSON",
                       description="Validate an input and print what the pipeline needs to know, as JSON.")
    p.add_argument("input", type=Path)
    p.set_defaults(run=cmd_probe)

    p = sub.add_parser("split", parents=[split_opts, limits], help="cut a video into segments",
                       description="Validate a video, write its frames as segments into a folder, with a "
                       "plan.json listing them and the source's streams, colour and frame times. Rerunning with "
                       "the same input reuses the split.")
    p.add_argument("input", type=Path)
    p.add_argument("--out", type=Path, required=True, help="folder for segments and plan.json")
    p.set_defaults(run=cmd_split)

    p = sub.add_parser("score", parents=[model, delivery], help="style the segments (the MPI step)",
                       description="Style every segment of a split; run under mpiexec each rank takes a "
                       "contiguous share. Finished segments are skipped, so a rerun resumes.")
    p.add_argument("--segments", type=Path, required=True, help="folder written by split")
    p.add_argument("--out", type=Path, help="folder for styled segments and their done markers (default: one beside "
                   "the segments' folder, named by the split, model, smoothing and encode, as stylize keeps them)")
    p.add_argument("--await-go", action="store_true", help="load the network, then wait for one line on standard "
                   "input (rank 0's): how many ranks style, 0 or none to end; stylize starts its ranks so while it "
                   "splits")
    p.set_defaults(run=cmd_score)

    p = sub.add_parser("stitch", parents=[delivery], help="join styled segments and the source's other streams into one video",
                       description="Join the styled segments in order at the source's frame times, add every "
                       "audio and subtitle track, the chapters and the metadata of the source (docs/cli.md), "
                       "check the frame count, and publish the output atomically.")
    p.add_argument("--segments", type=Path, required=True, help="folder written by split")
    p.add_argument("--styled", type=Path, required=True, help="folder written by score")
    p.add_argument("--source", type=Path, help="the video split was given (default: the path split read it from)")
    p.add_argument("output", type=Path, help=".mp4 .m4v .mov or .mkv")
    p.set_defaults(run=cmd_stitch)

    p = sub.add_parser("preview", parents=[model, limits], help="a few frames before and after, on one image",
                       description="Style a few frames spread over a video and save them beside the originals "
                       "as one image: a look at the result in seconds, before the whole video is done.")
    p.add_argument("input", type=Path)
    p.add_argument("output", type=Path, help="image: .jpg .png .webp ...")
    p.add_argument("--frames", type=positive_int, default=3, help="rows of the preview (default: %(default)s)")
    p.add_argument("--max-side", type=positive_int, help="style at the size a run with this --max-side uses")
    p.add_argument("--tile-width", type=positive_int, default=480, help="width of each picture, at most "
                   "(default: %(default)s)")
    p.set_defaults(run=cmd_preview)

    p = sub.add_parser("strip", help="a contact strip of a video",
                       description="A row of frames spread evenly over a video, each labelled with its time.")
    p.add_argument("video", type=Path)
    p.add_argument("output", type=Path, help="image: .jpg .png .webp ...")
    p.add_argument("--frames", type=positive_int, default=8, help="(default: %(default)s)")
    p.add_argument("--tile-width", type=positive_int, default=192, help="width of each frame, at most "
                   "(default: %(default)s)")
    p.set_defaults(run=cmd_strip)

    p = sub.add_parser("styles", help="all 26 built-in styles on one labelled image",
                       description="Render a photo in each of the 26 built-in styles, labelled, on one sheet.")
    p.add_argument("--sheet", required=True, type=Path, help="output image, e.g. styles.png")
    p.add_argument("--image", type=Path, help="photo to use (default: scikit-image's astronaut)")
    p.add_argument("--tile", type=positive_int, default=192, help="longer side of each tile (default: %(default)s)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.set_defaults(run=cmd_styles)

    p = sub.add_parser("sample", help="make a sample clip from real photos",
                       description="Make a clip that pans across scikit-image's photos, with a tone track.")
    p.add_argument("output", type=Path, help=".mp4 .m4v .mov or .mkv")
    p.add_argument("--seconds", type=float, default=4.0, help="(default: %(default)s)")
    p.add_argument("--fps", default="25", help="frame rate, may be a fraction such as 30000/1001 (default: 25)")
    p.add_argument("--size", default="320x180", help="WIDTHxHEIGHT (default: %(default)s)")
    p.add_argument("--no-audio", action="store_true", help="leave out the tone track")
    p.set_defaults(run=cmd_sample)
    return parser
