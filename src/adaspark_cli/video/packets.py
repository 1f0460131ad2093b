"""The packet index of a video stream: display order, the keyframe each frame decodes from, and the timestamp
to seek to for each keyframe, all from `probe_video`'s one demux pass (`Scan`, decode order).

The pipelined reader (`stream.VideoStream`, `reader.decode_chunk`) seeks by these; a file whose packets
carry no usable pts (missing or repeated) has no index and is read sequentially instead.
"""

from __future__ import annotations

import bisect
import dataclasses
from dataclasses import dataclass, field

from .probe import Scan

__all__ = ["PacketIndex", "index_packets", "with_seek_points"]


@dataclass(frozen=True)
class PacketIndex:
    """What one demux pass tells about the video stream, in display order."""

    pts: list[int]  # pts of display frame i
    gop_start: list[int]  # display index of the keyframe to seek to before decoding display frame i
    seek_ts: dict[int, int] = field(default_factory=dict)  # keyframe display index -> timestamp to seek to


def index_packets(pts: list[int | None], keys: list[bool]) -> PacketIndex | None:
    """Display order from pts; None (read sequentially) when pts are missing or repeated."""
    if any(p is None for p in pts) or len(set(pts)) != len(pts):
        return None
    known = [p for p in pts if p is not None]  # all of them (checked above)
    decode_position = sorted(range(len(known)), key=lambda i: known[i])  # display index -> decode position
    display_index = {d: i for i, d in enumerate(decode_position)}
    # decoding can always begin at the first packet, flagged or not (a damaged keyframe loses its flag)
    key_positions = [d for d, key in enumerate(keys) if key or d == 0]
    gop_start: list[int] = []
    for i, d in enumerate(decode_position):
        # a frame's references follow the last keyframe before it in DECODE order
        k = bisect.bisect_right(key_positions, d) - 1
        if i < display_index[key_positions[k]] and k > 0:
            k -= 1  # a leading picture of an open GOP also needs the group before
        gop_start.append(display_index[key_positions[k]])
    return PacketIndex(pts=[int(known[d]) for d in decode_position], gop_start=gop_start)


def with_seek_points(packets: PacketIndex, scan: Scan, *, by_dts: bool) -> PacketIndex:
    """The timestamp to seek to for each keyframe: its pts in an indexed container (mp4, mkv: the index is
    searched by pts, and a keyframe's dts would find the keyframe before), its dts in MPEG-TS / MPEG-PS (FFmpeg
    searches those by dts, and a keyframe's pts lands a group of pictures late)."""
    seek_ts: dict[int, int] = {}
    if by_dts:
        position = {p: d for d, p in enumerate(scan.pts)}
        for start in set(packets.gop_start):
            dts = scan.dts[position[packets.pts[start]]]
            seek_ts[start] = int(dts) if dts is not None else packets.pts[start]
    else:
        seek_ts = {start: packets.pts[start] for start in set(packets.gop_start)}
    return dataclasses.replace(packets, seek_ts=seek_ts)
