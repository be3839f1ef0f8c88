"""Partitioning: every frame in exactly one segment, every segment on exactly one rank."""

from __future__ import annotations

import os

import pytest

from scoring.media.errors import UserError
from scoring.media.files import atomic_path
from scoring.media.segments import segment_lengths, share


@pytest.mark.parametrize("frames", [1, 2, 7, 47, 48, 49, 97, 377, 1000])
@pytest.mark.parametrize("segment_frames", [1, 5, 48, 1000])
@pytest.mark.parametrize("ranks", [1, 2, 3, 4, 7, 16, 64])
def test_every_frame_once_for_any_counts(frames, segment_frames, ranks):
    lengths = segment_lengths(frames, segment_frames)
    assert sum(lengths) == frames and all(0 < n <= segment_frames for n in lengths)
    assert all(n == segment_frames for n in lengths[:-1])
    shares = _check_shares(lengths, ranks)
    if len(set(lengths)) == 1:  # segments of one length share out by count
        assert max(map(len, shares)) - min(map(len, shares)) <= 1


# a copy split's segments, cut at the source's keyframes: as long as its GOPs, the last shorter
@pytest.mark.parametrize("lengths", [[60] * 6 + [17], [50, 96, 50, 96, 3], [1, 95, 2], [96, 48], [48, 96, 60, 60]])
@pytest.mark.parametrize("ranks", [1, 2, 3, 4, 7])
def test_unequal_segments_share_by_frames(lengths, ranks):
    _check_shares(lengths, ranks)


def test_shares_balance_frames_not_segments():
    """Seven GOPs of a copy split: by count the first rank took four (240 frames to 137)."""
    lengths = [60] * 6 + [17]
    assert [share(lengths, 2, r) for r in range(2)] == [range(0, 3), range(3, 7)]  # 180 and 197 frames


def _check_shares(lengths: list[int], ranks: int) -> list[range]:
    """Every segment on exactly one rank, contiguous and in order; each rank's frames within
    one segment of an equal part of them."""
    shares = [share(lengths, ranks, r) for r in range(ranks)]
    assert [i for s in shares for i in s] == list(range(len(lengths)))  # contiguous, in order, no gap, no overlap
    part = sum(lengths) / ranks
    for s in shares:
        assert abs(sum(lengths[i] for i in s) - part) <= max(lengths), (lengths, ranks, shares)
    return shares


def test_more_ranks_than_segments_leaves_some_idle():
    assert sorted(len(share([48, 48], 5, r)) for r in range(5)) == [0, 0, 0, 1, 1]


def test_bad_partition_arguments():
    with pytest.raises(UserError):
        segment_lengths(10, 0)
    with pytest.raises(ValueError):
        share([48, 48, 48], 2, 2)


def test_atomic_path_publishes_only_on_success(tmp_path):
    target = tmp_path / "out.bin"
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"complete")
    assert target.read_bytes() == b"complete"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed")
    assert target.read_bytes() == b"complete"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def _plan(total: int, segment_frames: int = 48):
    from scoring.media.segments import Plan, Segment

    lengths = segment_lengths(total, segment_frames)
    segments = [Segment(i, sum(lengths[:i]), n) for i, n in enumerate(lengths)]
    return Plan(source={}, width=64, height=36, frame_rate="25", frames=total, segment_frames=segment_frames,
                segments=segments, audio=None, fingerprint="x")


@pytest.mark.parametrize("frames, cores", [(180, 2), (120, 2), (40, 2), (377, 4), (192, 16)])
def test_auto_ranks_on_a_cpu_is_one_whose_lanes_take_the_cores(monkeypatch, frames, cores):
    """On a CPU, ``--ranks auto`` is one rank: its lanes style a segment per core in one process
    (score.Lanes), where a rank per core would import torch and load the network in each."""
    import torch

    from scoring.networks import devices, score

    monkeypatch.setattr(devices, "mpiexec_path", lambda: "/usr/bin/mpiexec")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
    assert devices.auto_ranks(torch.device("cpu"), _plan(frames)) == 1
    assert score.Lanes.for_device(torch.device("cpu"), False, score.World()) == cores
    assert score.Lanes.for_device(torch.device("cpu"), True, score.World()) == 1  # torch.compile: one lane
    assert score.Lanes.for_device(torch.device("cuda"), False, score.World()) == 1


def test_useful_ranks_is_at_most_one_per_segment():
    assert [_plan(100).useful_ranks(r) for r in (1, 2, 3, 8)] == [1, 2, 3, 3]


def test_auto_ranks_on_cuda_is_one_per_gpu_but_never_more_than_segments(monkeypatch):
    import torch

    from scoring.networks import devices

    monkeypatch.setattr(devices, "mpiexec_path", lambda: "/usr/bin/mpiexec")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    cuda = torch.device("cuda")
    assert [devices.auto_ranks(cuda, _plan(frames)) for frames in (40, 100, 377)] == [1, 3, 4]
