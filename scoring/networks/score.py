"""score: the MPI entry point. Each rank styles its contiguous share of the segments.

Started as ``mpiexec -n R python -m scoring score ...`` (locally or on Azure ML nodes) or
as a plain single process. A segment is written under a temporary name and renamed into
place, then marked done; a rerun skips done segments, so a killed or preempted run resumes
where it stopped and redoes at most the segments that were in flight.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from queue import Queue
from threading import Thread

import numpy as np

from ..launch import scoring_command
from ..media import ffmpeg
from ..media.colour import Colour
from ..media.delivery import DEFAULT_DELIVERY, segment_encode
from ..media.errors import UserError
from ..media.files import atomic_path
from ..media.segments import Plan, Segment, finished, mark_done
from .stylizer import Stylizer
from .temporal import WARMUP_FRAMES, TemporalSmoother, check_strength, work_tag

MPI_ENV = ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK")


class World:
    """This process's place among the ranks; a plain process is rank 0 of 1."""

    def __init__(self):
        self.comm = None
        self.rank, self.size, self.local_size, self.local_rank = 0, 1, 1, 0
        if any(name in os.environ for name in MPI_ENV):
            from mpi4py import MPI

            self.comm = MPI.COMM_WORLD
            self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
            node = self.comm.Split_type(MPI.COMM_TYPE_SHARED)  # the ranks on this node
            self.local_size, self.local_rank = node.Get_size(), node.Get_rank()

    def gather(self, value):
        return self.comm.gather(value, root=0) if self.comm else [value]

    def abort(self, code: int) -> None:
        if self.comm and self.size > 1:
            self.comm.Abort(code)


class Progress:
    """One line per rank, at most every few seconds: frames done/total, fps, ETA."""

    def __init__(self, world: World, total: int, every: float = 2.0):
        self.world, self.total, self.every = world, total, every
        self.done, self.start, self.last = 0, time.monotonic(), 0.0

    def advance(self, frames: int) -> None:
        self.done += frames
        now = time.monotonic()
        if now - self.last >= self.every or self.done >= self.total:
            self.last = now
            fps = self.done / max(now - self.start, 1e-9)
            eta = (self.total - self.done) / fps if fps else 0.0
            print(f"[rank {self.world.rank}/{self.world.size}] {self.done}/{self.total} frames "
                  f"{fps:.2f} fps ETA {eta:.0f}s", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Encoding:
    """How styled frames are batched through the network, smoothed over time and encoded."""

    # On a CPU one frame per pass is fastest (26-style bf16 at 768x432: 0.11 s/frame at batch 1,
    # 0.15 at batch 4): a bigger batch only spills the activations out of the caches.
    batch: int = 1
    crf: int = segment_encode(DEFAULT_DELIVERY)[1]
    preset: str = segment_encode(DEFAULT_DELIVERY)[0]
    # 0: each frame styled on its own; above 0, still regions are smoothed over time (temporal.py)
    temporal: float = 0.0
    delivery: str = DEFAULT_DELIVERY  # what the segments are encoded for (delivery.py), in their done markers

    @property
    def tag(self) -> str:
        """How the segments are encoded, in the work id: a rerun with another encode styles them again."""
        return f" for {self.delivery} (x264 {self.preset} crf {self.crf})"


def score(segments_dir: Path | str, out_dir: Path | str, stylizer: Stylizer, model_id: str,
          encoding: Encoding = Encoding(), world: World | None = None) -> dict:
    """Style this rank's share of segments; returns what it did (for the summary)."""
    segments_dir, out_dir = Path(segments_dir), Path(out_dir)
    world = world or World()
    plan = Plan.load(segments_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    temporal = check_strength(encoding.temporal)
    work_id = f"{model_id}{work_tag(temporal)}{encoding.tag} on {plan.fingerprint}"
    mine = plan.share(world.size, world.rank)
    todo = [s for s in mine if not finished(out_dir, s, work_id)]
    progress = Progress(world, sum(s.frames for s in todo))
    started = time.monotonic()
    for segment in todo:
        t0 = time.monotonic()
        with atomic_path(out_dir / segment.name) as tmp:
            frames = _style_stream(segments_dir, segment, tmp, plan, stylizer, encoding, progress)
            if frames != segment.frames:
                raise RuntimeError(f"{segment.name}: styled {frames} frames, the plan says {segment.frames}")
        mark_done(out_dir, segment, work_id, time.monotonic() - t0, encoding.delivery)
    return {"rank": world.rank, "segments": len(mine), "scored": len(todo), "skipped": len(mine) - len(todo),
            "frames_scored": progress.done, "seconds": round(time.monotonic() - started, 3)}


def _style_stream(segments_dir: Path, segment: Segment, target: Path, plan: Plan, stylizer: Stylizer,
                  encoding: Encoding, progress: Progress) -> int:
    """Decode, style and encode one segment; a thread reads ahead and another writes behind,
    so that ffmpeg's pipes never wait on the network or the other way round. With temporal
    smoothing the write-behind thread also blends (in order), after a warm-up on the end of
    the previous segment."""
    size = (plan.width, plan.height)
    colour = Colour.from_dict(plan.colour) if plan.colour else None  # a plan of an older split: untagged
    smoother = TemporalSmoother(encoding.temporal) if encoding.temporal else None
    with ffmpeg.FrameReader(segments_dir / segment.name, size, input_format="h264", colour=colour) as reader, \
            ffmpeg.FrameWriter(target, size, plan.frame_rate, encoding.crf, encoding.preset, colour=colour,
                               hdr=Colour.from_dict(plan.hdr_output) if plan.hdr_output else None,
                               mastering=plan.mastering) as writer, \
            ThreadPoolExecutor(1) as encoder_thread:
        if smoother and segment.index > 0:
            _warm_up(smoother, segments_dir / plan.segments[segment.index - 1].name, size, stylizer, encoding.batch,
                     colour)

        def write(frames, styled):
            writer.write(smoother(frames, styled) if smoother else styled)

        pending = None
        for frames in _read_ahead(reader.batches(encoding.batch)):
            styled = stylizer(frames)
            if pending:
                pending.result()
            pending = encoder_thread.submit(write, frames, styled)
            progress.advance(len(frames))
        if pending:
            pending.result()
    return writer.frames


def _warm_up(smoother: TemporalSmoother, previous: Path, size: tuple[int, int], stylizer: Stylizer,
             batch: int, colour: Colour | None = None) -> None:
    """Prime the smoother with the last WARMUP_FRAMES frames of the previous segment's source
    (styled, not written): the segment starts as if the video were styled in one pass."""
    tail: deque = deque(maxlen=WARMUP_FRAMES)
    with ffmpeg.FrameReader(previous, size, input_format="h264", colour=colour) as reader:
        for frames in reader.batches(16):
            tail.extend(frames)
    for start in range(0, len(tail), batch):
        frames = np.stack(list(tail)[start:start + batch])
        smoother(frames, stylizer(frames))


def _read_ahead(batches: Iterable, depth: int = 2) -> Iterator:
    queue: Queue = Queue(depth)
    end = object()

    def fill():
        try:
            for item in batches:
                queue.put(item)
            queue.put(end)
        except BaseException as exc:  # hand decoder errors to the consuming thread
            queue.put(exc)

    Thread(target=fill, daemon=True).start()
    while (item := queue.get()) is not end:
        if isinstance(item, BaseException):
            raise item
        yield item


def run_ranks(score_args: list[str], ranks: int) -> None:
    """Run the score step as ``mpiexec -n ranks python -m scoring score ...``."""
    code = subprocess.run(scoring_command(["score", *score_args], ranks), stdin=subprocess.DEVNULL).returncode
    if code != 0:
        raise UserError(f"scoring ranks failed (mpiexec exit code {code}); run again to resume from finished segments")


def set_threads(world: World) -> None:
    """Split this machine's cores among the ranks that share it (no oversubscription)."""
    import torch

    cores = len(os.sched_getaffinity(0))
    torch.set_num_threads(max(1, cores // world.local_size))


def exit_on_sigterm() -> None:
    """A preempted node gets SIGTERM: unwind so that no half-written segment is left behind."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def summarize(world: World, result: dict) -> dict | None:
    results = world.gather(result)
    if world.rank != 0:
        return None
    totals = {k: sum(r[k] for r in results) for k in ("segments", "scored", "skipped", "frames_scored")}
    return totals | {"ranks": world.size, "per_rank": results}
