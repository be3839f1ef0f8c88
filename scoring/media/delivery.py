"""The published video's encode (``--delivery``), chosen by measurement (bench/delivery.py; the
table and the choice: docs/performance.md). A delivery says two things: how the ranks encode
the styled segments as they style them, and whether the stitch encodes them once more.

``web`` (the default) is encoded once, by the ranks, at its delivery settings: the stitch
copies the segments, so the encode runs in parallel beside the network (on every node of a
cluster) instead of after it, and the picture is one generation from the network's frames.
``mezzanine`` is the segments at the scorer's ``--preset``/``--crf`` (fast, near-lossless),
copied. ``hevc`` encodes those intermediate segments once more, with x265, in the stitch.

The segments never have B-frames: each segment's pictures are in display order, so the
stitch gives each its source frame time from the order alone (tracks.write_ivf).
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import UserError

# x264 settings of the intermediate segments (mezzanine, and what hevc encodes again):
# "veryfast" takes much less CPU per frame than "fast", and one step lower crf keeps the quality
# for a few more bytes (docs/performance.md).
STYLED_CRF = 17
STYLED_PRESET = "veryfast"


@dataclass(frozen=True)
class Delivery:
    segments: tuple[str, int] | None  # x264 (preset, crf) the ranks encode the segments with; None: --preset/--crf
    codec: str | None  # the stitch's encoder where the segments are not the delivery yet; None: always copied
    options: tuple[str, ...]  # that encoder's options, after the segments' decode
    why: str


DELIVERIES = {
    "web": Delivery(("faster", 20), "libx264", ("-c:v", "libx264", "-preset", "medium", "-crf", "20", "-bf", "3"),
                    "H.264 (x264 faster, crf 20) for players and the web, encoded once from the network's frames, "
                    "by the ranks as they style: the quality floor with a margin, at half the CPU of x264 medium"),
    "hevc": Delivery(None, "libx265", ("-c:v", "libx265", "-preset", "medium", "-crf", "19", "-x265-params",
                                       "log-level=error"),
                     "HEVC (x265 medium, crf 19) at the same floor, for a team that needs HEVC: the stitch encodes "
                     "the intermediate segments again"),
    "mezzanine": Delivery(None, None, (), "the styled segments as the ranks wrote them (--preset, --crf: x264 "
                                          "veryfast, crf 17), not encoded again: the closest to the network's "
                                          "frames, the most bytes"),
}
DEFAULT_DELIVERY = "web"


def segment_encode(delivery: str, preset: str | None = None, crf: int | None = None) -> tuple[str, int]:
    """The x264 preset and crf the ranks encode ``delivery``'s segments with: ``--preset`` and
    ``--crf`` where given, else the delivery's own, else the intermediate's."""
    own = DELIVERIES[delivery].segments or (STYLED_PRESET, STYLED_CRF)
    return (preset or own[0], own[1] if crf is None else crf)


def needs_encode(delivery: str, scored_for: set[str]) -> bool:
    """Whether the stitch encodes the segments for ``delivery``, given the deliveries the ranks
    encoded them for: where they are that delivery already, it copies them. Segments encoded for
    another delivery (``stitch --delivery`` asked again, or a run in flight across an upgrade)
    are encoded as the stitch always did, B-frames and all; a mezzanine is only ever the
    segments the ranks wrote for it."""
    chosen = DELIVERIES[delivery]
    if chosen.codec is None and scored_for != {delivery}:
        raise UserError(f"the styled segments were encoded for --delivery {', '.join(sorted(scored_for))}, and a "
                        f"{delivery} is the segments the ranks wrote for it: score again with --delivery {delivery}")
    return chosen.codec is not None and not (chosen.segments and scored_for == {delivery})
