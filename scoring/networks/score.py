"""score: the MPI entry point. Each rank styles its contiguous share of the segments.

Started as ``mpiexec -n R python -m scoring score ...`` (locally or on Azure ML nodes) or
as a plain single process. Within a rank on a CPU, lanes (threads) style its segments side
by side, one per core the rank has (``Lanes``). A segment is written under a temporary name
and renamed into place, then marked done; a rerun skips done segments, so a killed or
preempted run resumes where it stopped and redoes at most the segments that were in flight.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from queue import Queue
from threading import Event, Lock, Thread

import numpy as np
import torch

from ..media import ffmpeg
from ..media.colour import Colour
from ..media.delivery import DEFAULT_DELIVERY, segment_encode
from ..media.files import atomic_path
from ..media.segments import Plan, Segment, finished, mark_done
from .stylizer import Stylizer
from .temporal import WARMUP_FRAMES, TemporalSmoother, check_strength, work_tag

MPI_ENV = ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK")
GO_TAG = 1  # the message in which rank 0 passes on stylize's go
DONE_TAG = 2  # the message in which a rank done with its share tells the others styling on its node
ASLEEP = 0.02  # seconds between looks while a rank waits: MPICH's blocking waits poll and take a core


class World:
    """This process's place among the ranks; a plain process is rank 0 of 1."""

    def __init__(self):
        self.comm = self.node = None
        self.rank, self.size, self.local_size, self.local_rank = 0, 1, 1, 0
        if any(name in os.environ for name in MPI_ENV):
            from mpi4py import MPI

            self.comm = MPI.COMM_WORLD
            self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
            self.node = self.comm.Split_type(MPI.COMM_TYPE_SHARED)  # the ranks on this node
            self.local_size, self.local_rank = self.node.Get_size(), self.node.Get_rank()
        self.go: int | None = None  # how many ranks style, where stylize's go said so (await_go)
        self._peers: list[int] = []  # the other ranks on this node that style (begin_styling)
        self._styling: list | None = None  # a receive per peer, done when it says it has finished
        self._told: list = []

    @property
    def workers(self) -> int:
        """The ranks that style: all of them, unless stylize started more than its split needs."""
        return self.size if self.go is None else self.go

    def share(self, plan: Plan) -> list[Segment]:
        """This rank's contiguous share of the segments; none for a rank past the workers."""
        return plan.share(self.workers, self.rank) if self.rank < self.workers else []

    def await_go(self) -> bool:
        """For ranks that stylize starts before its split: rank 0 reads one line from standard
        input, how many ranks style, and passes it on; the others wait asleep, leaving the cores
        to the split and to rank 0's start-up. False where the line says 0 or never comes (the
        split was refused)."""
        if self.rank == 0:
            line = sys.stdin.readline().strip()
            workers = int(line) if line.isdigit() else 0
            for rank in range(1, self.size):
                self.comm.send(workers, dest=rank, tag=GO_TAG)
        else:
            request = self.comm.irecv(source=0, tag=GO_TAG)
            while not (received := request.test())[0]:
                time.sleep(ASLEEP)
            workers = received[1]
        self.go = min(workers, self.size)
        return self.go > 0

    @property
    def styling_here(self) -> int:
        """The ranks on this node that style and have not finished, this one counted."""
        return min(self.local_size, self.workers) if self._styling is None else 1 + len(self._styling)

    def begin_styling(self) -> None:
        """Every rank, before it styles its share: those that style listen for the others on
        their node to say they are done (``done_styling``), to take their cores then. Shares
        end up to a segment apart, and the last one's frames would run on a part of the cores."""
        if self.node is None:
            return
        styles = self.node.allgather(self.rank < self.workers)
        if styles[self.local_rank]:
            self._peers = [rank for rank, style in enumerate(styles) if style and rank != self.local_rank]
            self._styling = [self.node.irecv(source=rank, tag=DONE_TAG) for rank in self._peers]

    def done_styling(self) -> None:
        """Tell the other ranks styling on this node that this one has finished its share."""
        self._told = [self.node.isend(self.rank, dest=rank, tag=DONE_TAG) for rank in self._peers]

    def take_freed_cores(self) -> bool:
        """Between frames: True where another rank on this node has finished its share since
        the last look, so that ``styling_here`` counts one fewer and its cores can be spread
        again among those still styling (torch takes a new thread count at once)."""
        if self._styling:
            still = [request for request in self._styling if not request.test()[0]]
            if len(still) < len(self._styling):
                self._styling = still
                return True
        return False

    def wait_for_all(self) -> None:
        """Return once every rank has come here, waiting asleep (a rank done first, or one with
        no share, would otherwise take CPU from those still styling)."""
        if self.comm:
            request = self.comm.Ibarrier()
            while not request.Test():
                time.sleep(ASLEEP)
            for request in [*(self._styling or []), *self._told]:  # all sent before the barrier
                request.wait()

    def gather(self, value):
        return self.comm.gather(value, root=0) if self.comm else [value]

    def abort(self, code: int) -> None:
        if self.comm and self.size > 1:
            self.comm.Abort(code)


class Progress:
    """One line per rank, at most every few seconds: frames done/total, fps, ETA, threads."""

    def __init__(self, world: World, total: int, every: float = 2.0):
        self.world, self.total, self.every = world, total, every
        self.done, self.start, self.last = 0, time.monotonic(), 0.0
        self._lock = Lock()  # the rank's lanes advance it in turn

    def advance(self, frames: int, lanes: Lanes) -> None:
        with self._lock:
            self.done += frames
            now = time.monotonic()
            if now - self.last >= self.every or self.done >= self.total:
                self.last = now
                fps = self.done / max(now - self.start, 1e-9)
                eta = (self.total - self.done) / fps if fps else 0.0
                print(f"[rank {self.world.rank}/{self.world.workers}] {self.done}/{self.total} frames {fps:.2f} fps "
                      f"ETA {eta:.0f}s on {lanes.describe()}", file=sys.stderr, flush=True)


class _Stopped(Exception):
    """Raised in a lane between two frames once another lane has failed, or a SIGTERM has come."""


class Lanes:
    """The threads of one rank that style its share side by side, each taking the next segment
    in order. On a CPU, one lane of one thread for each core the rank has: as fast a frame per
    core as one process per core, with torch imported and the network loaded once, and no op
    waits, as one op on several threads does, for a core that an encoder has taken
    (docs/performance.md#lanes-instead-of-a-process-per-core-2026-12-07-late). On a GPU, or
    with torch.compile, one lane.

    A lane with nothing left to take lends its cores to the lanes still styling, as a rank done
    first lends its cores to the others on its node; the last lane to end tells them. A lane
    that fails stops the others between two frames (each unwinds: its encoder killed, its
    partial file removed), and ``run`` raises the first failure, a SIGTERM's exit included."""

    def __init__(self, world: World, segments: list[Segment], count: int):
        self.world, self.count = world, max(1, min(count, len(segments)))
        self._queue = deque(segments)
        self._cores = len(os.sched_getaffinity(0))  # this node's, read once rather than at every frame
        self._styling = self.count  # the lanes that have not yet found the queue empty
        self._lock = Lock()  # the queue, the count and the MPI calls, one lane at a time
        self._stop = Event()
        self._error: BaseException | None = None

    @staticmethod
    def for_device(device: torch.device, compiled: bool, world: World) -> int:
        """How many lanes a rank styles on: its share of this node's cores on a CPU, else one."""
        if device.type != "cpu" or compiled:
            return 1
        return max(1, len(os.sched_getaffinity(0)) // world.styling_here)

    def take(self) -> Segment | None:
        """The next segment to style; None once there is none or the rank is stopping, after
        which this lane ends (and takes no more)."""
        with self._lock:
            if self._queue and not self._stop.is_set():
                return self._queue.popleft()
            self._styling -= 1
            if self._styling == 0:
                self.world.done_styling()
            return None

    def threads(self) -> int:
        """One lane's threads: this rank's cores among the ranks styling on the node, then
        among its lanes still styling."""
        cores = max(1, self._cores // self.world.styling_here)
        return max(1, cores // max(1, self._styling))

    def between_frames(self) -> None:
        """In a lane, after each frame: stop if another lane has failed; take freed cores."""
        if self._stop.is_set():
            raise _Stopped
        with self._lock:
            self.world.take_freed_cores()
            threads = self.threads()
        if threads != torch.get_num_threads():  # this thread's own count: each lane sets its own
            torch.set_num_threads(threads)

    def describe(self) -> str:
        threads = self.threads()
        lanes = f"{self._styling} lanes of " if self._styling > 1 else ""
        return f"{lanes}{threads} thread{'s' * (threads > 1)}"

    def run(self, lane: Callable[[], None]) -> None:
        """``lane`` on every lane, the first on this thread (where a SIGTERM's exit arrives);
        returns once all have ended, or raises the first failure."""

        def guarded() -> None:
            try:
                torch.set_num_threads(self.threads())
                lane()
            except _Stopped:
                pass
            except BaseException as exc:  # noqa: BLE001  (raised below, once every lane has ended)
                self._fail(exc)

        with ThreadPoolExecutor(max(1, self.count - 1), thread_name_prefix="lane") as pool:
            others = [pool.submit(guarded) for _ in range(self.count - 1)]
            try:
                guarded()
                wait(others)
            except BaseException as exc:  # noqa: BLE001  (a SIGTERM while this thread waits)
                self._fail(exc)
                wait(others)
        if self._error is not None:
            raise self._error

    def _fail(self, exc: BaseException) -> None:
        with self._lock:
            self._error = self._error or exc
        self._stop.set()


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
          encoding: Encoding = Encoding(), world: World | None = None, lanes: int | None = None) -> dict:
    """Style this rank's share of segments on ``lanes`` lanes (``Lanes.for_device``'s count by
    default); returns what it did (for the summary).

    A segment's encoder flushes its last frames, and the segment is renamed into place and
    marked done, on a finisher thread while the network styles the next segment; a segment
    counts as done only once all of that has happened."""
    segments_dir, out_dir = Path(segments_dir), Path(out_dir)
    world = world or World()
    plan = Plan.load(segments_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    temporal = check_strength(encoding.temporal)
    work_id = f"{model_id}{work_tag(temporal)}{encoding.tag} on {plan.fingerprint}"
    mine = world.share(plan)
    todo = [s for s in mine if not finished(out_dir, s, work_id)]
    world.begin_styling()
    lanes = Lanes(world, todo, lanes or Lanes.for_device(stylizer.device, stylizer.compiled, world))
    progress = Progress(world, sum(s.frames for s in todo))
    started = time.monotonic()

    def finish(output: ExitStack, segment: Segment, t0: float) -> None:
        output.close()  # the encoder's flush and check, then the rename into place
        mark_done(out_dir, segment, work_id, time.monotonic() - t0, encoding.delivery)

    def lane() -> None:
        with ThreadPoolExecutor(1) as finisher:
            finishing = None
            while (segment := lanes.take()) is not None:
                t0 = time.monotonic()
                with ExitStack() as output:  # on an error: the encoder killed, the partial file removed
                    tmp = output.enter_context(atomic_path(out_dir / segment.name))
                    writer = output.enter_context(_segment_writer(tmp, plan, encoding))
                    frames = _style_stream(segments_dir, segment, writer, plan, stylizer, encoding, progress, lanes)
                    if frames != segment.frames:
                        raise RuntimeError(f"{segment.name}: styled {frames} frames, the plan says {segment.frames}")
                    if finishing:
                        finishing.result()  # the segment before failed to finish: this one stops here too
                    finishing = finisher.submit(finish, output.pop_all(), segment, t0)
            if finishing:
                finishing.result()

    lanes.run(lane)
    return {"rank": world.rank, "segments": len(mine), "scored": len(todo), "skipped": len(mine) - len(todo),
            "frames_scored": progress.done, "seconds": round(time.monotonic() - started, 3)}


def styled_folder(segments_dir: Path | str, model_id: str, encoding: Encoding) -> Path:
    """Where stylize keeps the styled segments of a split, beside it: named by the split, the
    model, the smoothing and the encode, so that a rerun of the same command resumes and a new
    style starts clean."""
    segments_dir, smoothing = Path(segments_dir), work_tag(check_strength(encoding.temporal))
    work_id = f"{Plan.load(segments_dir).fingerprint} {model_id}{smoothing}{encoding.tag}"
    return segments_dir.parent / ("styled-" + hashlib.sha256(work_id.encode()).hexdigest()[:12])


def _segment_writer(target: Path, plan: Plan, encoding: Encoding) -> ffmpeg.FrameWriter:
    """The encoder of a styled segment, in the split's colour (HDR written back where it was kept)."""
    return ffmpeg.FrameWriter(target, (plan.width, plan.height), plan.frame_rate, encoding.crf, encoding.preset,
                              colour=Colour.from_dict(plan.colour) if plan.colour else None,  # an older split: untagged
                              hdr=Colour.from_dict(plan.hdr_output) if plan.hdr_output else None,
                              mastering=plan.mastering)


def _style_stream(segments_dir: Path, segment: Segment, writer: ffmpeg.FrameWriter, plan: Plan,
                  stylizer: Stylizer, encoding: Encoding, progress: Progress, lanes: Lanes) -> int:
    """Decode and style one segment into ``writer``; a thread reads ahead and another writes
    behind, so that ffmpeg's pipes never wait on the network or the other way round. With
    temporal smoothing the write-behind thread also blends (in order), after a warm-up on the
    end of the previous segment. Returns the frames written."""
    size = (plan.width, plan.height)
    colour = Colour.from_dict(plan.colour) if plan.colour else None
    smoother = TemporalSmoother(encoding.temporal) if encoding.temporal else None
    with ffmpeg.FrameReader(segments_dir / segment.name, size, input_format="h264", colour=colour) as reader, \
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
            progress.advance(len(frames), lanes)
            lanes.between_frames()
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


def set_threads(world: World) -> None:
    """Split this machine's cores among the ranks on it that style (no oversubscription)."""
    cores = len(os.sched_getaffinity(0))
    torch.set_num_threads(max(1, cores // world.styling_here))


def exit_on_sigterm() -> None:
    """A preempted node gets SIGTERM: unwind so that no half-written segment is left behind."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def summarize(world: World, result: dict) -> dict | None:
    world.wait_for_all()
    results = world.gather(result)
    if world.rank != 0:
        return None
    results = results[:world.workers]  # a rank past the workers had nothing to do
    totals = {k: sum(r[k] for r in results) for k in ("segments", "scored", "skipped", "frames_scored")}
    return totals | {"ranks": world.workers, "per_rank": results}
