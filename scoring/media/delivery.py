"""The published video's encode (``--delivery``): the stitch decodes the styled segments (fast,
near-lossless x264 without B-frames, an intermediate) and encodes them once more for delivery,
at settings chosen by measurement (bench/delivery.py; the table and the choice:
docs/performance.md). ``mezzanine`` publishes the segments as they are (as before a delivery
encode was chosen): a second encode of them is never closer to the network's frames."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Delivery:
    codec: str | None  # the encoder; None: the styled segments copied as they are
    options: tuple[str, ...]  # encoder options, after the segments' decode
    why: str


DELIVERIES = {
    "web": Delivery("libx264", ("-c:v", "libx264", "-preset", "medium", "-crf", "20", "-bf", "3"),
                    "H.264 (x264 medium, crf 20, B-frames) for players and the web: the fewest bytes at the "
                    "quality floor"),
    "hevc": Delivery("libx265", ("-c:v", "libx265", "-preset", "medium", "-crf", "19", "-x265-params",
                                 "log-level=error"), "HEVC (x265 medium, crf 19) at the same floor, for a team that "
                                                     "needs HEVC"),
    "mezzanine": Delivery(None, (), "the styled segments as the scorer wrote them (--crf, --preset), not encoded "
                                    "again: the closest to the network's frames, the most bytes"),
}
DEFAULT_DELIVERY = "web"
