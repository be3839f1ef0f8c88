"""The network alone on a split clip, on the ranks the score step would use: what the whole
clip is measured against (bench/run.py row 5).

    python bench/network_alone.py SEGMENTS_DIR --style 7            # one rank, all cores
    mpiexec -n 2 python bench/network_alone.py SEGMENTS_DIR --style 7

Each rank takes the share of the segments ``score`` gives it, on the lanes and threads
``score`` gives it (``Lanes``: on a CPU a lane of one thread per core the rank has, each taking
the next segment), and decodes them into memory first; then all ranks start together and
style their frames one at a time, with no decode, no encode and no start-up. Rank 0 prints
JSON: the frames, the seconds from the common start to the last rank's end, and the rate.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scoring.launch import restart_with_huge_pages  # noqa: E402

if __name__ == "__main__":
    restart_with_huge_pages()  # the malloc `python -m scoring` runs with; before torch loads

import numpy as np  # noqa: E402

from scoring.media import ffmpeg  # noqa: E402
from scoring.media.colour import Colour  # noqa: E402
from scoring.media.segments import Plan  # noqa: E402
from scoring.networks.models import load_model  # noqa: E402
from scoring.networks.score import Lanes, World, set_threads  # noqa: E402
from scoring.networks.stylizer import Stylizer  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("segments", type=Path, help="a folder written by `python -m scoring split`")
    parser.add_argument("--style", default="7", help="built-in style (default: %(default)s)")
    parser.add_argument("--precision", default="auto", help="as score's --precision (default: %(default)s)")
    args = parser.parse_args(argv)

    world = World()
    set_threads(world)
    plan = Plan.load(args.segments)
    colour = Colour.from_dict(plan.colour) if plan.colour else None
    frames = {}  # segment -> its frames, one array each
    for segment in plan.share(world.size, world.rank):
        with ffmpeg.FrameReader(args.segments / segment.name, (plan.width, plan.height),
                                input_format="h264", colour=colour) as reader:
            frames[segment] = list(reader.batches(1))
    stylizer = Stylizer(load_model(args.style), "cpu", args.precision)
    first = next((batch for batches in frames.values() for batch in batches), None)
    stylizer(first if first is not None else np.zeros((1, plan.height, plan.width, 3), np.uint8))  # warm-up
    if world.comm:
        world.comm.Barrier()
    world.begin_styling()
    lanes = Lanes(world, list(frames), Lanes.for_device(stylizer.device, False, world))

    def lane() -> None:  # as the score step's lanes take segments, without the decode and encode
        while (segment := lanes.take()) is not None:
            for frame in frames[segment]:
                stylizer(frame)
                lanes.between_frames()

    start = time.perf_counter()
    lanes.run(lane)
    end = time.perf_counter()
    world.wait_for_all()
    ends = world.gather(end)
    counts = world.gather(sum(len(batches) for batches in frames.values()))
    if world.rank == 0:
        seconds = max(ends) - start
        print(json.dumps({"ranks": world.size, "frames": sum(counts), "seconds": seconds,
                          "fps": sum(counts) / seconds, "precision": stylizer.precision}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
