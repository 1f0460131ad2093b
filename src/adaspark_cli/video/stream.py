"""Pipelined decoding (issue 6, part 2): the sampled frames of a video in chunks, decoded and resized by
background threads while the caller works on the previous chunk.

Three modules: this one (`VideoStream`: chunks in order from worker threads, and opening a file into one),
`packets.py` (the packet index built from the probe's demux pass) and `reader.py` (one chunk's seeking,
decoding and resizing). `open_video_stream` probes the file and demuxes it once (packets only, nothing decoded: 0.1 s for a
10-minute 854x480 H.264 file), which gives the exact frame count, every frame's pts and the keyframes.
`VideoStream.chunks` then hands out chunks of ``chunk_frames`` sampled frames, in order. Each chunk is
decoded by a worker thread (PyAV, one decoder thread each) that seeks to the keyframe before the
chunk's first frame and, inside the chunk, jumps over every stretch of frames up to the next keyframe
that holds no wanted frame. A frame is identified by its pts, not by counting, so seeking is exact.
Each wanted frame is converted to RGB at full size and resized with the same torchvision call the
Qwen2-VL video processor makes (bicubic, antialias, uint8), so the frames are already at its target size:
`adapters.patches` (or the processor itself) then only rescales, normalises and patches them, and the
pixels are bit-identical to resizing in the processor. Memory is bounded by the chunks in flight
(``workers + 1``), never by the video.

Measured 2026-11-25 on the 2-core CPU (benchmarks/bench_decode.py; 10-minute 854x480 30 fps H.264, a
keyframe every 250 frames, 256 frames resized to 588x336): see docs/benchmarks.md. Choices, by the numbers:
- one decoder thread per worker and two workers on two chunks beat FFmpeg's own frame threads: x264's
  cheap frames spend more in frame-thread hand-offs than in decoding (PyAV sequential, resized, frame
  threads: 4.0-4.5 s wall, 6.1-6.9 s CPU; one thread: 3.8-4.8 s wall, 4.2-5.2 s CPU; two threads of one
  decoder thread each: 2.2-2.4 s wall, 4.2-4.6 s CPU; a loaded machine, so ranges);
- skipping non-reference frames (``skip_frame="NONREF"``) is not used: this file (x264 ultrafast,
  constrained baseline) has none, and on files with B-frames it drops them, so wanted frames would move
  by a frame or two (it halved decoding of a grainy 640x360 file with B-frames: 4.7 s to 2.2 s);
- resizing with swscale instead differs from the processor's torchvision resize (one step: 3.6-3.9 grey
  levels on average; RGB first, then bicubic: 0.19, but 4.6 ms a frame against torchvision's ~1.5 ms).

Real videos (issue 11, part 2):
- in MPEG-TS and MPEG-PS a group of pictures is sought by its keyframe's dts: they have no index and FFmpeg
  seeks in them by dts, so seeking by pts landed a group late ("frame 7 cannot be decoded"); indexed
  containers (mp4, mkv, ...) are searched by pts, so there it stays the keyframe's pts. A seek that lands
  after the wanted frames (or MPEG-PS, whose first frames after a seek carry pts no packet had) is retried
  from the keyframe before, at worst from the file start; the first group of pictures is always decoded
  from the file start, without a seek;
- a wanted frame in a damaged stretch is replaced by the nearest decodable frame (`frames.Picker`), the
  chunk reports it and `chunks` adds a note; more than half the sampled frames replaced is an error;
- frames are turned as the display matrix asks before resizing (`width` / `height` are the turned size).

Files whose packets carry no usable pts (missing or repeated) are read sequentially by one worker,
counting frames as `decode_video`'s PyAV backend does.
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import VideoError
from ..limits import check_fps, check_max_frames
from .checks import check_path, video_error
from .decode import DecodedVideo, decode_planned, decode_video
from .frames import check_replaced, damage_note
from .packets import PacketIndex, index_packets, with_seek_points
from .plan import Plan, plan_frames
from .probe import Probe, check_frame_count, probe_video
from .reader import Converter, FrameChunk, decode_chunk, frame_converter, read_sequential_chunks, resize_frames

DEFAULT_CHUNK_FRAMES = 32  # 16 frame pairs; 588x336 RGB: 19 MB per chunk
DEFAULT_WORKERS = 2

__all__ = [
    "DEFAULT_CHUNK_FRAMES", "FrameChunk", "PacketIndex", "VideoStream", "index_packets", "open_video", "open_video_stream",
    "resize_frames",
]


@dataclass
class VideoStream:
    """The sampled frames of one video, read in chunks by `chunks`; opening it decodes nothing.

    `open_seconds` is the time `open_video_stream` took (probe and packet scan); `wait_seconds` the time the
    consumer spent blocked waiting for frames (the decode that other work did not hide); `seconds` the wall
    time from the first chunk asked for to the last one delivered. `notes` are one-line remarks for the user,
    as `DecodedVideo.notes`; a damaged stretch is only found while decoding, so its note is added by `chunks`
    (and `indices` / `timestamps` then name the frames delivered instead).
    """

    path: Path
    width: int  # of the delivered frames before resizing (rotation applied)
    height: int
    source_fps: float
    total_frames: int
    indices: np.ndarray  # (N,) int64 source frame indices that will be delivered
    timestamps: np.ndarray  # (N,) float64 seconds from the first frame, as DecodedVideo
    duration: float
    backend: str = "pyav"
    open_seconds: float = 0.0
    wait_seconds: float = 0.0
    seconds: float = 0.0
    notes: tuple[str, ...] = ()
    rotation: int = 0  # degrees counterclockwise applied to each decoded frame
    coded_size: tuple[int, int] = (0, 0)  # (width, height) every decoded frame is scaled to before rotation
    packets: PacketIndex | None = field(default=None, repr=False)  # None: no usable pts, read sequentially
    _times: np.ndarray | None = field(default=None, repr=False)  # (total,) seconds of every display frame
    _planned: tuple[np.ndarray, np.ndarray, tuple[str, ...]] | None = field(default=None, repr=False)  # as opened

    @property
    def pipelined(self) -> bool:
        """True when the packets carry usable pts, so `chunks` decodes in worker threads, seeking per group of
        pictures; False when it falls back to reading the whole file sequentially in the caller's thread."""
        return self.packets is not None

    def chunks(
        self,
        *,
        size: tuple[int, int] | None = None,
        chunk_frames: int = DEFAULT_CHUNK_FRAMES,
        workers: int = DEFAULT_WORKERS,
    ) -> Iterator[FrameChunk]:
        """Chunks of up to `chunk_frames` frames (even, so frame pairs never straddle chunks), in order.

        size: (height, width) to resize every frame to, or None for the decoded size. Decoding runs in
        `workers` threads, at most `workers + 1` chunks ahead of the consumer. A sampled frame in a damaged
        stretch is replaced by the nearest decodable frame, with a note; more than half replaced is an error.
        """
        if not isinstance(chunk_frames, int) or chunk_frames < 2 or chunk_frames % 2:
            raise VideoError(f"chunk_frames must be an even integer >= 2, got {chunk_frames!r}; use e.g. 32")
        if not isinstance(workers, int) or workers < 1:
            raise VideoError(f"workers must be an integer >= 1, got {workers!r}; use e.g. 2")
        self.wait_seconds = 0.0
        start = time.perf_counter()
        self._restore_plan()  # a second read starts from the plan, not from the last read's replacements
        base_notes = self.notes
        replaced = lost = 0
        try:
            if self.packets is None:
                source = iter(self._sequential_chunks(size, chunk_frames))
            else:
                source = self._parallel_chunks(size, chunk_frames, workers)
            for chunk in self._waited(source):
                if chunk.replaced or chunk.lost:
                    replaced, lost = replaced + chunk.replaced, lost + chunk.lost
                    check_replaced(self.path, replaced, len(self.indices), lost)
                    self._record(chunk)
                    self.notes = base_notes + (damage_note(self.path, replaced, len(self.indices), lost),)
                yield chunk
        finally:
            self.seconds = time.perf_counter() - start

    def _restore_plan(self) -> None:
        if self._planned is None:
            self._planned = (self.indices.copy(), self.timestamps.copy(), self.notes)
        self.indices, self.timestamps, self.notes = self._planned[0].copy(), self._planned[1].copy(), self._planned[2]

    def _record(self, chunk: FrameChunk) -> None:
        """Name the frames a chunk delivered instead of damaged ones in `indices` and `timestamps`."""
        stop = chunk.first + len(chunk.indices)
        self.indices = self.indices.copy()
        self.indices[chunk.first : stop] = chunk.indices
        if self._times is not None:
            self.timestamps = self._times[self.indices]

    def _waited(self, chunks: Iterator[FrameChunk]) -> Iterator[FrameChunk]:
        """Yield from `chunks`, adding the time spent waiting for each one to `wait_seconds`."""
        try:
            while True:
                wait = time.perf_counter()
                chunk = next(chunks, None)
                self.wait_seconds += time.perf_counter() - wait
                if chunk is None:
                    return
                yield chunk
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:  # stops the workers when the consumer stops early
                close()

    def _parallel_chunks(self, size: tuple[int, int] | None, chunk_frames: int, workers: int) -> Iterator[FrameChunk]:
        """Chunks decoded by `workers` threads, delivered in order, at most `workers + 1` in flight."""
        planned = self.indices.copy()  # the plan; `_record` may rewrite self.indices as chunks arrive
        firsts = iter(range(0, len(planned), chunk_frames))
        pending: deque[Future[FrameChunk]] = deque()
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="adaspark-decode") as pool:
            try:
                for first in firsts:
                    pending.append(pool.submit(self.decode_chunk, planned, first, first + chunk_frames, size))
                    if len(pending) > workers:
                        break
                while pending:
                    chunk = pending.popleft().result()
                    following = next(firsts, None)
                    if following is not None:
                        pending.append(pool.submit(self.decode_chunk, planned, following, following + chunk_frames, size))
                    yield chunk
            finally:  # the consumer stopped early or a chunk failed: drop the queued work
                for future in pending:
                    future.cancel()

    def read_all(self, *, size: tuple[int, int] | None = None, workers: int = DEFAULT_WORKERS) -> np.ndarray:
        """Every sampled frame as one (N, H, W, 3) array (no overlap with other work; for benchmarks/tests)."""
        return np.concatenate([c.frames for c in self.chunks(size=size, workers=workers)])

    # ---- workers -------------------------------------------------------------------------------

    def decode_chunk(self, planned: np.ndarray, first: int, stop: int, size: tuple[int, int] | None) -> FrameChunk:
        """Sampled frames first..stop-1 of the plan, decoded by seeking (a worker thread's job; a subclass may
        produce the frames otherwise, as benchmarks/bench_batch.py's synthetic stream does)."""
        assert self.packets is not None
        return decode_chunk(self.path, self.packets, planned, first, stop, self._converter(size))

    def _converter(self, size: tuple[int, int] | None) -> Converter:
        return frame_converter(self.rotation, self.coded_size, size)

    def _sequential_chunks(self, size: tuple[int, int] | None, chunk_frames: int) -> list[FrameChunk]:
        return read_sequential_chunks(self.path, self.indices, chunk_frames, self._converter(size))


# --------------------------------------------------------------------------------------------
# opening


def open_video_stream(path: str | Path, *, fps: float = 2.0, max_frames: int = 256) -> VideoStream:
    """Probe `path` and plan which frames to read (uniform in time, as `decode_video`); decodes nothing.

    Every failure is a one-line `VideoError`, with `decode_video`'s messages for the same problems.
    """
    return _open(path, fps=fps, max_frames=max_frames)[0]


def open_video(
    path: str | Path, *, fps: float = 2.0, max_frames: int = 256, decoder: str = "auto"
) -> VideoStream | DecodedVideo:
    """The reader `adaspark ask` uses: a `VideoStream` to decode later, or the frames already decoded.

    decoder "auto": `open_video_stream` (probe and packet scan, nothing decoded yet), so that
    `VideoQA.prepare_video` decodes chunk by chunk while the vision tower runs. A file whose packets carry
    no usable pts (missing or repeated) is instead decoded now, in one go, by `decode_video`'s "auto" choice
    (from the same probe: the file is opened and scanned once). "decord" / "pyav": `decode_video` with that
    backend, now, in one go. Anything else is `decode_video`'s one-line "unknown --decoder" error. Every
    failure is a `VideoError` with `decode_video`'s message for the same problem.
    """
    if decoder != "auto":
        return decode_video(path, fps=fps, max_frames=max_frames, backend=decoder)
    stream, probe, plan = _open(path, fps=fps, max_frames=max_frames)
    if stream.pipelined:
        return stream
    start = time.perf_counter()
    video = decode_planned(stream.path, probe, plan, "auto")
    return dataclasses.replace(video, seconds=stream.open_seconds + time.perf_counter() - start)


def _open(path: str | Path, *, fps: float, max_frames: int) -> tuple[VideoStream, Probe, Plan]:
    """The stream, with the probe and the plan it was made from (one open, one packet scan)."""
    start = time.perf_counter()
    check_fps(fps, VideoError)
    check_max_frames(max_frames, VideoError)
    path = check_path(path)
    probe, scan = probe_video(path)  # not a video, no video stream, unknown frame rate, a still image
    check_frame_count(path, probe, len(scan.pts))  # no frames, or fewer than the header promises
    plan = plan_frames(scan, probe, fps=fps, max_frames=max_frames)
    packets = index_packets(scan.pts, scan.keys)
    if packets is not None:
        packets = with_seek_points(packets, scan, by_dts=not probe.indexed)
    width, height = scan.width, scan.height
    if not (width and height):
        raise video_error(f"cannot tell the frame size of {path} (the stream header is damaged); re-encode it")
    if probe.rotation in (90, 270):
        width, height = height, width
    timeline = plan.timeline
    stream = VideoStream(
        path=path,
        width=width,
        height=height,
        source_fps=float(timeline.fps),
        total_frames=timeline.total,
        indices=plan.indices.astype(np.int64),
        timestamps=timeline.times[plan.indices].astype(np.float64),
        duration=float(timeline.duration),
        open_seconds=time.perf_counter() - start,
        notes=probe.notes(path),
        rotation=probe.rotation,
        coded_size=(scan.width, scan.height),
        packets=packets,
        _times=timeline.times,
    )
    return stream, probe, plan
