"""The pipelined reader's work on one chunk of sampled frames: seek to each group of pictures that holds a
wanted frame, decode from its keyframe, convert and resize the wanted frames (`stream.VideoStream` runs
`decode_chunk` in its worker threads; the choices and their measurements are in stream.py's docstring).

A frame is identified by its pts (`packets.PacketIndex`), not by counting, so seeking is exact. Files without
usable pts are read from the start, counting frames (`read_sequential_chunks`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .checks import video_error
from .frames import Picker, decoded_frames, opened, read_counted, to_rgb
from .packets import PacketIndex

__all__ = ["FrameChunk", "decode_chunk", "frame_converter", "read_sequential_chunks", "resize_frames"]

Converter = Callable[[Any], np.ndarray]  # a decoded PyAV frame -> (H, W, 3) uint8 RGB


@dataclass(frozen=True)
class FrameChunk:
    """Consecutive sampled frames of one video."""

    frames: np.ndarray  # (n, H, W, 3) uint8 RGB, at the size asked for
    indices: np.ndarray  # (n,) int64 source frame indices (a damaged one replaced by the frame shown instead)
    first: int  # position of the first frame among all sampled frames
    replaced: int = 0  # sampled frames that fell in a damaged stretch and were replaced by the nearest decodable
    lost: int = 0  # source frames the decoder skipped (damaged) while reading this chunk


def frame_converter(rotation: int, coded_size: tuple[int, int], size: tuple[int, int] | None) -> Converter:
    """Frames to RGB, turned by `rotation` at `coded_size` (one size for every chunk, whatever a frame claims),
    then resized to `size` (height, width), or left at the decoded size for None."""

    def convert(frame: Any) -> np.ndarray:
        image = to_rgb(frame, rotation, coded_size)
        return image if size is None else resize_frames(image[None], size)[0]

    return convert


def decode_chunk(path: Path, packets: PacketIndex, planned: np.ndarray, first: int, stop: int,
                 convert: Converter) -> FrameChunk:
    """Decode sampled frames first..stop-1: seek to their group of pictures, skip groups with none.

    (Each group decodes from its keyframe, or, in the first group of pictures, from the file's start.)"""
    wanted = planned[first:stop].tolist()
    images: list[np.ndarray] = []
    chosen: list[int] = []
    replaced = lost = 0
    with opened(path, "NONE") as (container, stream):  # parallel across chunks instead (stream.py's docstring)
        slot = 0
        while slot < len(wanted):
            gop = packets.gop_start[wanted[slot]]
            # frames of this group of pictures that are wanted; the next group starts a new seek
            last = slot
            while last + 1 < len(wanted) and packets.gop_start[wanted[last + 1]] == gop:
                last += 1
            picker = _decode_group(path, packets, container, stream, gop, wanted[slot : last + 1], convert)
            images.extend(picker.images)  # type: ignore[arg-type]
            chosen.extend(picker.chosen)
            replaced += picker.replaced
            lost += picker.lost
            slot = last + 1
    position = {p: i for i, p in enumerate(packets.pts)}  # Picker only takes frames with a packet's pts
    indices = np.asarray([position[p] for p in chosen], dtype=np.int64)
    return FrameChunk(frames=np.stack(images), indices=indices, first=first, replaced=replaced, lost=lost)


def _decode_group(path: Path, packets: PacketIndex, container: Any, stream: Any, gop: int, group: list[int],
                  convert: Converter) -> Picker:
    """The frames `group` (display indices of one group of pictures), decoded after a seek.

    A seek may land after the wanted frames (MPEG-TS seeks by dts and has no index; a damaged keyframe
    decodes to nothing; MPEG-PS gives the first frames after a seek pts no packet had): then the group is
    decoded again from the keyframe before, at worst from the file's start without seeking. What is still
    missing from there is damage, and `Picker` replaces it.
    """
    wanted = [packets.pts[i] for i in group]
    first_gop = packets.gop_start[0]
    starts = list(dict.fromkeys([gop, packets.gop_start[gop - 1] if gop > 0 else gop, first_gop]))
    for start in starts:
        if start == first_gop:
            return _decode_from_start(path, packets, wanted, convert)
        picker = Picker(wanted, packets.pts, None, convert)
        try:
            container.seek(packets.seek_ts[start], stream=stream, backward=True, any_frame=False)
        except Exception:  # the container cannot seek there: try an earlier keyframe
            continue
        picker.read(decoded_frames(container, stream))
        if picker.done and picker.first_pts is not None and picker.first_pts <= min(wanted):
            return picker
    raise AssertionError("unreachable: the last start is the file's first keyframe")


def _decode_from_start(path: Path, packets: PacketIndex, wanted: list[int], convert: Converter) -> Picker:
    """Decode from the first packet, as a player starts (a fresh container: no seek to get wrong)."""
    picker = Picker(wanted, packets.pts, packets.pts[0], convert)
    with opened(path, "NONE") as (container, stream):
        picker.read(decoded_frames(container, stream))
    if not picker.done:
        raise video_error(f"video is corrupt: none of the {len(packets.pts)} frames of {path} can be decoded; re-encode it")
    return picker


def read_sequential_chunks(path: Path, indices: np.ndarray, chunk_frames: int, convert: Converter) -> list[FrameChunk]:
    """Without usable pts: decode from the start counting frames, as decode_video's PyAV backend does, in the
    caller's thread (no overlap, all frames at once; rare: raw streams, broken muxers)."""
    wanted = indices.tolist()
    frames, count = read_counted(path, wanted, lambda frame, _first_size: convert(frame))
    if len(frames) < len(wanted):
        raise video_error(
            f"video is truncated or corrupt: {path} (frame {wanted[len(frames)]} is missing, only {count}"
            " decodable); re-download or re-encode it"
        )
    return [
        FrameChunk(frames=np.stack(frames[i : i + chunk_frames]), indices=indices[i : i + chunk_frames].copy(), first=i)
        for i in range(0, len(frames), chunk_frames)
    ]


def resize_frames(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(n, H, W, 3) uint8 -> (n, h, w, 3) uint8 with the call the Qwen2-VL video processor makes.

    transformers' processor resizes uint8 (n, 3, H, W) tensors with torchvision's bicubic, antialiased
    resize; doing the same here gives bit-identical frames, and the processor skips a same-size resize.
    """
    import torch
    import torchvision.transforms.v2.functional as tvF

    if frames.shape[1:3] == tuple(size):
        return frames
    video = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
    resized = tvF.resize(video, list(size), interpolation=tvF.InterpolationMode.BICUBIC, antialias=True)
    return resized.permute(0, 2, 3, 1).contiguous().numpy()
