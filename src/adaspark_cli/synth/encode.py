"""Writing frames to a video file with PyAV: the one encoder loop of the suites, the tests and the benchmarks."""

from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import numpy as np


def encode_frames(
    path: str | Path,
    frames: Iterable[np.ndarray],
    *,
    rate: Fraction,
    width: int,
    height: int,
    encoder: str = "libx264",
    pix_fmt: str = "yuv420p",
    options: dict[str, str] | None = None,
    container_options: dict[str, str] | None = None,
    rotation: int = 0,
    threads: int | None = None,
    index_pts: bool = True,
    start_empty: bool = False,
) -> Path:
    """Encode (height, width, 3) uint8 RGB `frames` (any iterable: a generator keeps long videos out of memory).

    ``index_pts``: frame i gets pts i in a stream time base of 1 / rate (else PyAV numbers them).
    ``threads``: encoder threads (1 keeps libx264's bytes identical from run to run). ``rotation`` (degrees
    counterclockwise) tags the stream with a display matrix. ``start_empty`` writes the header even when
    `frames` is empty (PyAV writes nothing until the first packet otherwise)."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w", options=container_options or {}) as out:
        stream = out.add_stream(encoder, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if index_pts:
            stream.time_base = 1 / rate
        if threads is not None:
            stream.codec_context.thread_count = threads
        if rotation:
            stream.set_display_rotation(rotation)
        stream.options = dict(options or {})
        if start_empty:
            out.start_encoding()
        for i, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            if index_pts:
                frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path
