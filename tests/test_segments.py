"""Partitioning: every frame in exactly one segment, every segment on exactly one rank."""

from __future__ import annotations

import pytest

from scoring.errors import UserError
from scoring.files import atomic_path
from scoring.segments import segment_lengths, share


@pytest.mark.parametrize("frames", [1, 2, 7, 47, 48, 49, 97, 377, 1000])
@pytest.mark.parametrize("segment_frames", [1, 5, 48, 1000])
@pytest.mark.parametrize("ranks", [1, 2, 3, 4, 7, 16, 64])
def test_every_frame_once_for_any_counts(frames, segment_frames, ranks):
    lengths = segment_lengths(frames, segment_frames)
    assert sum(lengths) == frames and all(0 < n <= segment_frames for n in lengths)
    assert all(n == segment_frames for n in lengths[:-1])
    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    owner = []
    shares = [share(len(lengths), ranks, r) for r in range(ranks)]
    for rank_share in shares:
        owner.extend(rank_share)
    assert owner == list(range(len(lengths)))  # contiguous, in order, no gap, no overlap
    sizes = [len(s) for s in shares]
    assert max(sizes) - min(sizes) <= 1
    covered = [f for i in owner for f in range(starts[i], starts[i] + lengths[i])]
    assert covered == list(range(frames))


def test_more_ranks_than_segments_leaves_some_idle():
    assert [len(share(2, 5, r)) for r in range(5)] == [1, 1, 0, 0, 0]


def test_bad_partition_arguments():
    with pytest.raises(UserError):
        segment_lengths(10, 0)
    with pytest.raises(ValueError):
        share(3, 2, 2)


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
