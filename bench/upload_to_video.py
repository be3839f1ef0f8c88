"""Upload -> stylized video, against the command line on the same clip, side by side: on the
stack `make demo` left running (.demo), each round styles the demo's sample clip with
``python -m scoring stylize`` at the DAG's defaults (style 19, 2 ranks), then uploads the same
clip to videos-in under a new name and times it until its video is in videos-out.

    make demo && .venv/bin/python bench/upload_to_video.py --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "plugins")]

from pipeline.tasks import default_output_name  # noqa: E402

from devstack import Stack  # noqa: E402
from scoring.media.samples import make_clip  # noqa: E402

STYLE, RANKS = "19", 2  # the DAG's defaults (run_settings.PARAMS)


def cli_seconds(clip: Path, work: Path) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "scoring", "stylize", str(clip), str(work / "cli.mp4"), "--style", STYLE,
                    "--ranks", str(RANKS)], check=True, capture_output=True, stdin=subprocess.DEVNULL)
    return time.perf_counter() - started


def upload_seconds(stack: Stack, clip: Path, timeout: float) -> float:
    name = f"bench/upload-{time.time_ns()}.mp4"
    video = stack.blob_client().get_blob_client("videos-out", default_output_name(name, STYLE, None))
    started = time.time()
    # bytes of its own after the clip (players ignore them): a new version, so no run can reuse
    # another's finished segments
    stack.blob_client().get_blob_client("videos-in", name).upload_blob(clip.read_bytes() + name.encode())
    while not video.exists():
        if time.time() - started > timeout:
            raise SystemExit(f"upload_to_video: no video for {name} after {timeout:.0f} s")
        time.sleep(0.5)
    return time.time() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--root", type=Path, default=REPO / ".demo", help="the running stack's folder")
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for one video")
    args = parser.parse_args()
    stack = Stack(args.root)  # the ports `make demo` uses
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        clip = work / "sample.mp4"
        make_clip(clip, seconds=6, fps="30000/1001", size=(640, 360))  # the demo's clip
        rows = []
        for i in range(args.rounds):
            cli = cli_seconds(clip, work)
            uploaded = upload_seconds(stack, clip, args.timeout)
            rows.append((cli, uploaded))
            print(f"round {i + 1}: command line {cli:.1f} s, upload -> video {uploaded:.1f} s "
                  f"({uploaded / cli:.2f}x)", flush=True)
    cli, uploaded = (statistics.median(column) for column in zip(*rows))
    print(f"median: command line {cli:.1f} s, upload -> video {uploaded:.1f} s: {uploaded / cli:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
