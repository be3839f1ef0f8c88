"""Colour as a video stream declares it: primaries, transfer, matrix and range.

The names are ffprobe's (and the ``-color_*`` options'). A value the input leaves unknown
stays unknown in the output (a player then guesses for the output as it did for the input),
and the conversions to and from RGB use the same matrix both ways.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from fractions import Fraction

UNKNOWN = ("", "unknown", "unspecified", "reserved", None)
# swscale's names (the scale filter's in/out_color_matrix) for ffprobe's matrix names; swscale
# takes BT.601 where a stream says nothing, both ways, so an untagged input round-trips as it was.
SWS_MATRIX = {"bt709": "bt709", "smpte170m": "bt601", "bt470bg": "bt601", "fcc": "fcc", "smpte240m": "smpte240m",
              "bt2020nc": "bt2020", "bt2020c": "bt2020"}
HDR_TRANSFERS = {"smpte2084": "PQ", "arib-std-b67": "HLG"}
# ITU-T H.273 code points, as the h264_metadata bitstream filter takes them.
PRIMARIES_CODE = {"bt709": 1, "bt470m": 4, "bt470bg": 5, "smpte170m": 6, "smpte240m": 7, "film": 8, "bt2020": 9,
                  "smpte428": 10, "smpte431": 11, "smpte432": 12}
TRANSFER_CODE = {"bt709": 1, "gamma22": 4, "gamma28": 5, "smpte170m": 6, "smpte240m": 7, "linear": 8,
                 "iec61966-2-4": 11, "bt1361e": 12, "iec61966-2-1": 13, "bt2020-10": 14, "bt2020-12": 15,
                 "smpte2084": 16, "smpte428": 17, "arib-std-b67": 18}
MATRIX_CODE = {"bt709": 1, "fcc": 4, "bt470bg": 5, "smpte170m": 6, "smpte240m": 7, "ycgco": 8, "bt2020nc": 9,
               "bt2020c": 10}


@dataclass(frozen=True)
class Colour:
    primaries: str = "unknown"
    transfer: str = "unknown"
    matrix: str = "unknown"
    range: str = "unknown"  # "tv" (limited) or "pc" (full)

    @classmethod
    def of_stream(cls, stream: dict) -> Colour:
        """A video stream's colour as ffprobe describes it (``-show_streams``)."""
        def known(key):
            value = stream.get(key)
            return "unknown" if value in UNKNOWN else str(value)

        colour_range = known("color_range")
        if colour_range == "unknown" and str(stream.get("pix_fmt", "")).startswith("yuvj"):
            colour_range = "pc"  # the JPEG pixel formats are full range by definition
        return cls(known("color_primaries"), known("color_transfer"), known("color_space"), colour_range)

    @classmethod
    def from_dict(cls, facts: dict | None) -> Colour:
        return cls(**facts) if facts else cls()

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def hdr(self) -> str | None:
        """"PQ" or "HLG" for a high dynamic range transfer, else None."""
        return HDR_TRANSFERS.get(self.transfer)

    @property
    def sws_matrix(self) -> str:
        return SWS_MATRIX.get(self.matrix, "bt601")

    @property
    def sws_range(self) -> str:
        return "full" if self.range == "pc" else "limited"

    def tag_args(self) -> list[str]:
        """The encoder options that write these tags (known values only)."""
        args = []
        for option, value in (("-color_primaries", self.primaries), ("-color_trc", self.transfer),
                              ("-colorspace", self.matrix), ("-color_range", self.range)):
            if value not in UNKNOWN:
                args += [option, value]
        return args

    def h264_metadata(self) -> list[str]:
        """The same tags as h264_metadata options, to rewrite them into a stream's SPS."""
        options = []
        for option, table, value in (("colour_primaries", PRIMARIES_CODE, self.primaries),
                                     ("transfer_characteristics", TRANSFER_CODE, self.transfer),
                                     ("matrix_coefficients", MATRIX_CODE, self.matrix)):
            if value in table:
                options.append(f"{option}={table[value]}")
        if self.range in ("tv", "pc"):
            options.append(f"video_full_range_flag={int(self.range == 'pc')}")
        return options


SDR_BT709 = Colour("bt709", "bt709", "bt709", "tv")


def tone_map_filters(source: Colour) -> list[str]:
    """Filters that take an HDR picture (PQ or HLG) to SDR BT.709, limited range, 8 bits: to
    linear light, BT.709 primaries, Hable's curve (highlights roll off instead of clipping)."""
    return ["zscale=t=linear:npl=100", "format=gbrpf32le", "zscale=p=bt709", "tonemap=tonemap=hable:desat=0",
            "zscale=t=bt709:m=bt709:r=tv", "format=yuv420p"]


def hdr_from_sdr_filters(target: Colour) -> list[str]:
    """Filters that take styled SDR BT.709 RGB back to ``target``'s HDR signal (PQ or HLG,
    BT.2020) in 10 bits: SDR white placed at 203 cd/m², the reference white of ITU-R BT.2408."""
    colour_range = "full" if target.range == "pc" else "limited"
    return ["format=gbrp", "zscale=tin=bt709:pin=bt709:rin=full:t=linear:p=bt709:npl=203", "format=gbrpf32le",
            f"zscale=p={target.primaries}:t={target.transfer}:m={target.matrix}:r={colour_range}:npl=203",
            "format=yuv420p10le"]


# --------------------------------------------------------------------------- HDR10 static metadata

MASTERING_SIDE_DATA = "Mastering display metadata"
LIGHT_SIDE_DATA = "Content light level metadata"


def mastering_from_side_data(side_data: list[dict]) -> dict | None:
    """HDR10's static metadata as ffprobe shows it (a frame's or a stream's side data):
    ``display``, the mastering display in x264's and x265's ``master-display`` form
    (chromaticities in 1/50000, luminance in 1/10000 cd/m²), and ``light``, the content light
    level as ``MaxCLL,MaxFALL``; None where the source has neither."""
    found = {}
    for entry in side_data or []:
        kind = entry.get("side_data_type")
        if kind == MASTERING_SIDE_DATA and "display" not in found and "red_x" in entry:
            def units(key, scale):
                return round(Fraction(str(entry[key])) * scale)
            xy = {c: (units(f"{c}_x", 50000), units(f"{c}_y", 50000)) for c in ("green", "blue", "red", "white_point")}
            found["display"] = ("G({},{})B({},{})R({},{})WP({},{})".format(*xy["green"], *xy["blue"], *xy["red"],
                                                                          *xy["white_point"])
                                + f"L({units('max_luminance', 10000)},{units('min_luminance', 10000)})")
        elif kind == LIGHT_SIDE_DATA and "light" not in found and "max_content" in entry:
            found["light"] = f"{int(entry['max_content'])},{int(entry.get('max_average') or 0)}"
    return found or None


def mastering_params(mastering: dict | None, encoder: str) -> str:
    """The same metadata as ``-x264-params`` (``encoder`` libx264) or ``-x265-params`` take it."""
    if not mastering:
        return ""
    x264 = encoder == "libx264"  # the two name the same options differently
    params = []
    if "display" in mastering:
        params.append(("mastering-display=" if x264 else "master-display=") + mastering["display"])
    if "light" in mastering:
        params.append(("cll=" if x264 else "max-cll=") + mastering["light"])
    return ":".join(params)
