"""Video decoding: uniform-in-time frame sampling with a decord and a PyAV backend.

Benchmark, 2026-11-25, 2-core CPU (shared, load ~4, so +-30% noise; decord2 3.4.0, PyAV 18.1),
60 s 640x360 30 fps H.264 (1800 frames, made by tests/video_factory.py), sampled to 64 frames,
median of 5 decode_video calls after warm-up:
  grainy 5 Mbit/s, keyframe every ~32 frames:  decord 4.7 s   PyAV 5.3 s
  smooth 0.3 Mbit/s, keyframe every 250:       decord 1.3 s   PyAV 1.1 s
  grainy, 1 s GOP, only 16 frames:             decord 1.2 s   PyAV 4.4 s  (decord seeks to keyframes)
  peak RSS, fresh process:                     decord 1.2 GB  PyAV 0.16 GB
decord costs ~1 GB RSS and 0.6 s just to import: decord2 dlopens every nvidia/*/lib/*.so that the
CUDA torch wheels installed, even on a CPU host (+0.8 GB when torch is already imported).
Choice: "auto" picks per file (`auto_order`): decord when the wanted frames lie several keyframe
intervals apart, where its keyframe seeking wins several-fold; PyAV otherwise (sequential reading,
a quarter of decord's memory). Either falls back to the other when it cannot open or read the file.

Real videos (issue 11, part 2):
- Frame times come from one demux pass (`_scan`, packets only): every frame's pts in display order,
  from the first frame. A constant-rate file is sampled by index (`sample_indices`); a variable-rate
  one uniformly in real time (`sample_times`), and the timestamps are the chosen frames' real times.
- A damaged stretch is skipped as a player skips it: PyAV decodes packet by packet, drops the packets
  the decoder rejects, and a sampled frame that never decodes is replaced by the nearest decodable
  frame (`_Picker`), with a note. More than half the sampled frames replaced is refused.
- A display matrix (phone videos) is applied in multiples of 90 degrees, with a note.
- decord is used only for containers with a seek index (mp4/mov, mkv/webm, avi): on MPEG-TS and
  MPEG-PS decord 3.4 returns wrong frames without an error (see _INDEXED_FORMATS).
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import numbers
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import VideoError

BACKENDS = ("auto", "decord", "pyav")

# A header may over-count a stream by a frame or two (muxer rounding, a dropped trailing frame);
# more missing frames than this means the file was cut short or damaged.
_MIN_SLACK_FRAMES = 2
_SLACK_FRACTION = 0.02

# A damaged stretch is skipped while at most this fraction of the sampled frames falls in one; past it
# the video is mostly unreadable and an answer about it would be about the replacements.
MAX_REPLACED_FRACTION = 0.5

# Frames smaller than one merged vision patch (2 x 14 px) on a side carry almost nothing for the model.
_TINY_SIDE = 28

# Containers with a seek index, searched by pts. Without one (MPEG-TS, MPEG-PS) FFmpeg seeks by a binary
# search over dts, and decord 3.4 returns wrong frames without an error: on a 48-frame H.264 .ts it drops the
# first group of pictures and repeats the last frame; on a 72-frame MPEG-2 .mpg it returns frames 3, 9, 3,
# 9, ... for 3, 9, 15, 21, ... So decord reads only these.
_INDEXED_FORMATS = {"mov", "mp4", "matroska", "webm", "avi"}

# FFmpeg demuxers of single pictures: a JPEG or PNG renamed .mp4 opens as a one-frame "video".
_STILL_FORMATS = ("image2", "image2pipe")

__all__ = [
    "BACKENDS",
    "MAX_REPLACED_FRACTION",
    "DecodedVideo",
    "decode_video",
    "sample_indices",
    "sample_times",
]


@dataclass(frozen=True)
class DecodedVideo:
    """Frames sampled from one video, with where in the source they came from.

    timestamps are the sampled frames' times in seconds from the first frame: ``indices / source_fps``
    for a constant-rate file (so both backends agree exactly), the frames' real pts for a variable-rate
    one. source_fps is ``total_frames / duration``, the header's rate for a constant-rate file. notes
    are one-line remarks for the user (rotation applied, damaged frames replaced, a tiny frame size).
    """

    path: Path
    frames: np.ndarray  # (N, H, W, 3) uint8 RGB, rotated as the file's display matrix asks
    timestamps: np.ndarray  # (N,) float64 seconds of each sampled frame from the first frame
    indices: np.ndarray  # (N,) int64 source frame indices (display order) that were sampled
    source_fps: float
    total_frames: int
    duration: float  # seconds
    backend: str  # "decord" or "pyav"
    seconds: float = 0.0  # wall time decode_video took
    notes: tuple[str, ...] = ()


# --------------------------------------------------------------------------------------------
# sampling


def sample_indices(total_frames: int, source_fps: float, *, fps: float, max_frames: int) -> np.ndarray:
    """Source frame indices sampled uniformly in time at ``fps`` frames per second of video.

    n = floor(duration * fps) with duration = total_frames / source_fps, at least 1, at most
    ``max_frames`` and at most ``total_frames`` (indices are distinct). The video is cut into n equal
    intervals and each index is the frame at the CENTRE of its interval:
    ``index_k = floor((k + 0.5) * total_frames / n)``, computed in integers so it is exact.
    Example: 48 frames at 24 fps sampled at 2 fps -> n = 4 -> indices 6, 18, 30, 42 (0.25 s, 0.75 s, ...).
    """
    _check_fps(fps)
    _check_max_frames(max_frames)
    if not isinstance(total_frames, numbers.Integral) or isinstance(total_frames, bool) or total_frames < 1:
        raise _error(f"total_frames must be an integer >= 1, got {total_frames!r}; a video needs at least one frame")
    if not _is_real(source_fps) or not math.isfinite(source_fps) or source_fps <= 0:
        raise _error(f"source_fps must be a finite number > 0, got {source_fps!r}; pass the video's frame rate")
    total = int(total_frames)
    # the epsilon keeps e.g. 300 frames / 29.97 fps * 2 from rounding 20.0 down to 19
    n = math.floor(total * float(fps) / float(source_fps) + 1e-9)
    n = max(1, min(n, int(max_frames), total))
    k = np.arange(n, dtype=np.int64)
    return ((2 * k + 1) * total) // (2 * n)


def sample_times(times: np.ndarray, duration: float, *, fps: float, max_frames: int) -> np.ndarray:
    """Indices of the frames shown at n instants uniformly spaced in real time (variable frame rate).

    times: (total,) increasing seconds of each frame; duration: seconds of the video. n is chosen as in
    `sample_indices`; instant k is the centre of the k-th of n equal intervals, and its frame is the one
    a player shows then (the last frame starting at or before it). On evenly spaced times this gives
    `sample_indices`' indices; where a frame lasts longer than an interval it is sampled twice.
    """
    _check_fps(fps)
    _check_max_frames(max_frames)
    times = np.asarray(times, dtype=np.float64)
    if times.ndim != 1 or times.size < 1 or not _is_real(duration) or not duration > 0:
        raise _error(f"sample_times needs at least one frame time and a duration > 0, got {times.size} and {duration!r}")
    total = int(times.size)
    n = max(1, min(math.floor(duration * float(fps) + 1e-9), int(max_frames), total))
    instants = (np.arange(n, dtype=np.float64) + 0.5) * (duration / n)
    # a relative epsilon: an instant that falls exactly on a frame's start picks that frame despite rounding
    picked = np.searchsorted(times, instants + duration * 1e-12, side="right") - 1
    return np.clip(picked, 0, total - 1).astype(np.int64)


# --------------------------------------------------------------------------------------------
# public entry point


def decode_video(
    path: str | Path, *, fps: float = 2.0, max_frames: int = 256, backend: str = "auto"
) -> DecodedVideo:
    """Decode the frames sampled uniformly in time from ``path`` as (N, H, W, 3) uint8 RGB.

    backend: "decord", "pyav", or "auto" (tries the one ``auto_order`` prefers and falls back to the other
    when one cannot open or read the file). Every failure is a one-line ``VideoError``; remarks the user
    should see (rotation, damaged frames replaced, a tiny frame size) are in ``DecodedVideo.notes``.
    """
    start = time.perf_counter()
    video = _decode(path, fps=fps, max_frames=max_frames, backend=backend)
    return dataclasses.replace(video, seconds=time.perf_counter() - start)


def _decode(path: str | Path, *, fps: float, max_frames: int, backend: str) -> DecodedVideo:
    _check_fps(fps)
    _check_max_frames(max_frames)
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise _error(f"unknown --decoder {backend!r}; use --decoder {', '.join(BACKENDS[:-1])} or {BACKENDS[-1]}")
    path = _check_path(path)
    # one cheap header read with PyAV gives the same errors (not a video, no video stream) whichever
    # backend decodes; decord alone logs to stderr instead
    probe = _probe(path)
    plan = _plan(path, probe, fps=fps, max_frames=max_frames)
    decoders = {"decord": _decode_decord, "pyav": _decode_pyav}
    if backend != "auto":
        return decoders[backend](path, probe, plan)
    # decord is imported only if it is tried: importing it alone costs ~1 GB RSS (see above)
    errors: dict[str, VideoError] = {}
    for name in auto_order(probe, len(plan.indices)):
        try:
            return decoders[name](path, probe, plan)
        except VideoError as exc:
            errors[name] = exc
    raise errors["pyav"]  # both failed: PyAV's message names the problem and the fix


# --------------------------------------------------------------------------------------------
# argument and path checks


def _is_real(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _check_fps(fps: Any) -> None:
    if not _is_real(fps) or not math.isfinite(fps) or fps <= 0:
        raise _error(f"--fps must be a finite number > 0, got {fps!r}; use e.g. --fps 2")


def _check_max_frames(max_frames: Any) -> None:
    if not isinstance(max_frames, numbers.Integral) or isinstance(max_frames, bool) or max_frames < 1:
        raise _error(f"--max-frames must be an integer >= 1, got {max_frames!r}; use e.g. --max-frames 256")


def _error(message: str) -> VideoError:
    """A VideoError whose message is one line even if a path or FFmpeg text held line breaks."""
    return VideoError(" ".join(message.splitlines()).strip())


# "https://host/v.mp4" arrives as Path("https:/host/v.mp4"): pathlib folds the double slash
_URL = re.compile(r"^(?:https?|ftp|ftps|rtsp|rtmp|rtmps|srt|udp|tcp|s3|gs|file):/", re.IGNORECASE)


def _check_path(path: str | Path) -> Path:
    if isinstance(path, str) and not path.strip():
        raise _error("video path is empty; pass the path of a video file")
    try:
        p = Path(path)
    except TypeError as exc:
        raise _error(f"video path must be a str or Path, got {type(path).__name__}; pass a file path") from exc
    if not p.exists():
        if _URL.match(str(path)):
            url = re.sub(r"^([A-Za-z]+):/+", r"\1://", str(path))
            raise _error(f"URLs are not supported: {url}; download the video first and pass the file's path")
        raise _error(f"video not found: {p}; check the path")
    if p.is_dir():
        raise _error(f"video path is a directory: {p}; pass a video file, not a folder")
    if not p.is_file():
        raise _error(f"video path is not a regular file: {p}; pass a video file")
    try:
        size = p.stat().st_size
    except OSError as exc:
        raise _error(f"cannot read {p} ({exc.strerror or exc}); check the file's permissions") from exc
    if size == 0:
        raise _error(f"video file is empty (0 bytes): {p}; re-download or re-export it")
    return p


# decord prefixes its C++ errors with "[13:04:42] /project/src/video/ffmpeg/filter_graph.cc:55: "
_DECORD_LOG_PREFIX = re.compile(r"\[\d\d:\d\d:\d\d\]\s*\S+\.(?:cc|h|cpp):\d+:\s*")


def _reason(exc: BaseException) -> str:
    """FFmpeg's or decord's short reason ("Invalid data found when processing input"), one line."""
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    text = _DECORD_LOG_PREFIX.sub("", str(text))
    text = " ".join(text.split())
    return text if len(text) <= 160 else text[:157] + "..."


# --------------------------------------------------------------------------------------------
# header probe (PyAV)


@dataclass(frozen=True)
class _Probe:
    fps: float
    header_frames: int  # frame count the container stores, 0 when it stores none (webm, mkv)
    expected_frames: int | None  # header_frames, else header duration * fps, else None
    pixel_format_known: bool  # False when FFmpeg's stream probe decoded no frame (an empty stream)
    keyframe_interval: int | None = None  # frames between the first two keyframes; None: none within the scan
    rotation: int = 0  # degrees counterclockwise to turn decoded frames (display matrix): 0, 90, 180, 270
    format_name: str = ""  # FFmpeg's demuxer, e.g. "mov,mp4,m4a,3gp,3g2,mj2", "mpegts"
    width: int = 0  # coded size, before rotation
    height: int = 0

    @property
    def indexed(self) -> bool:
        """Whether the container has a seek index (see _INDEXED_FORMATS): decord reads it right, and a seek
        by a keyframe's pts finds that keyframe."""
        return bool(_INDEXED_FORMATS & set(self.format_name.split(",")))

    def notes(self, path: Path) -> tuple[str, ...]:
        """What the user should know about this file before its frames reach the model."""
        notes = []
        if self.rotation:
            notes.append(f"{path.name}: turned {self.rotation} degrees counterclockwise, as its display matrix asks")
        if self.width and self.height and min(self.width, self.height) < _TINY_SIDE:
            notes.append(
                f"{path.name} is only {self.width}x{self.height} pixels; frames are enlarged to the model's minimum"
                " size, so there is little for it to see"
            )
        return tuple(notes)


def _open_av(path: Path) -> Any:
    try:
        import av
    except ImportError as exc:  # a broken install, not the user's video
        raise _error("PyAV (the av package, adaspark's video reader) is not installed; pip install av") from exc
    try:
        return av.open(str(path), mode="r")
    except PermissionError as exc:
        raise _error(f"cannot read {path} (permission denied); check the file's permissions") from exc
    except Exception as exc:  # av.error.* or OSError: FFmpeg could not parse it as a media file
        raise _error(
            f"cannot open {path} as a video ({_reason(exc)}); it is not a video or it is truncated or corrupt"
            " - check that it plays, then re-download or re-encode it"
        ) from exc


def _video_stream(container: Any, path: Path) -> Any:
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        raise _error(
            f"no video stream in {path} (streams: {', '.join(kinds)}); pass a file that contains video"
        )
    return container.streams.video[0]


def _frame_rate(stream: Any) -> float | None:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and rate > 0:
            return float(rate)
    return None


def _stream_duration(container: Any, stream: Any) -> float | None:
    """Seconds of the video stream from the header, or None when the header does not say."""
    if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
        return float(stream.duration * stream.time_base)
    tag = stream.metadata.get("DURATION") or stream.metadata.get("duration")  # Matroska per-track tag
    if tag:
        try:
            h, m, s = tag.split(":")
            return int(h) * 3600 + int(m) * 60 + float(s)
        except ValueError:
            pass
    # the container's duration is the longest stream's; only trust it for a video-only file
    if container.duration is not None and container.duration > 0 and len(container.streams) == 1:
        return container.duration / 1_000_000
    return None


def _is_still_image(container: Any) -> bool:
    name = str(container.format.name or "")
    return name in _STILL_FORMATS or name.endswith("_pipe")  # jpeg_pipe, png_pipe, webp_pipe, ...


def _probe(path: Path) -> _Probe:
    container = _open_av(path)
    try:
        if _is_still_image(container):
            raise _error(
                f"{path} is a still image ({container.format.name}), not a video; pass a video file, or make a"
                " clip of the picture first, e.g. ffmpeg -loop 1 -t 2 -i IMAGE clip.mp4"
            )
        stream = _video_stream(container, path)
        header_frames = max(0, int(stream.frames or 0))
        duration = _stream_duration(container, stream)
        fps = _frame_rate(stream)
        if fps is None and header_frames and duration:
            fps = header_frames / duration
        if fps is None or not math.isfinite(fps) or fps <= 0:
            raise _error(
                f"cannot tell the frame rate of {path}; re-encode it at a constant rate,"
                " e.g. ffmpeg -i IN -r 30 OUT.mp4"
            )
        expected = header_frames or (round(duration * fps) if duration else None)
        pixel_format_known = stream.codec_context.pix_fmt is not None
        width, height = int(stream.codec_context.width or 0), int(stream.codec_context.height or 0)
        interval, rotation = _scan_head(container, stream)
        return _Probe(
            fps=fps,
            header_frames=header_frames,
            expected_frames=expected or None,
            pixel_format_known=pixel_format_known,
            keyframe_interval=interval,
            rotation=rotation,
            format_name=str(container.format.name or ""),
            width=width,
            height=height,
        )
    except VideoError:
        raise
    except Exception as exc:
        raise _error(f"cannot read the header of {path} ({_reason(exc)}); re-download or re-encode it") from exc
    finally:
        container.close()


_KEYFRAME_SCAN = 1000  # packets demuxed (not decoded) to find the second keyframe


def _scan_head(container: Any, stream: Any) -> tuple[int | None, int]:
    """(frames from the first keyframe to the second, the display rotation) from the file's first packets.

    The interval comes from packet flags alone; the rotation from the first frame that decodes (FFmpeg
    attaches the stream's display matrix to every frame). Both are hints: a damaged file gives None, 0.
    """
    seen = 0
    first: int | None = None
    interval: int | None = None
    rotation: int | None = None
    try:
        for packet in container.demux(stream):
            if rotation is None:
                rotation = _first_rotation(stream, packet)
            if packet.size == 0:
                continue
            if packet.is_keyframe and interval is None:
                if first is None:
                    first = seen
                else:
                    interval = seen - first
            seen += 1
            if (interval is not None and rotation is not None) or seen >= _KEYFRAME_SCAN:
                break
    except Exception:  # a damaged file: the decoders report it
        pass
    return interval, rotation or 0


def _first_rotation(stream: Any, packet: Any) -> int | None:
    """The quarter turn of the first frame `packet` decodes to, or None while no frame has come out."""
    try:
        frames = stream.decode(packet)
    except Exception:  # a damaged packet: try the next one
        return None
    return _quarter_turns(frames[0].rotation) * 90 if frames else None


def _quarter_turns(degrees: float) -> int:
    """FFmpeg's display rotation (counterclockwise degrees, -180..180) as 0-3 quarter turns, as decord rounds."""
    return int(math.floor(degrees / 90 + 0.5)) % 4


def auto_order(probe: _Probe, wanted: int) -> tuple[str, ...]:
    """Which backends "auto" tries, in order.

    decord seeks to the keyframe before each wanted frame; PyAV reads sequentially. Seeking pays only
    when wanted frames lie several keyframe intervals apart, otherwise it decodes the same GOPs again
    and again. Measured 2026-11-25 on the 2-core CPU:
      10-min 854x480 30 fps H.264, keyframe every 250, 256 frames (one per 70): decord 8.7 s, 1.45 GB
        peak RSS; PyAV 5.7 s, 0.37 GB  -> sequential
      60 s grainy 30 fps, keyframe every 30, 16 frames (one per 112): decord 1.2 s; PyAV 4.4 s  -> seek
    Containers without a seek index (MPEG-TS, MPEG-PS) are PyAV only: decord misreads them (_INDEXED_FORMATS).
    """
    if not probe.indexed:
        return ("pyav",)
    expected = probe.expected_frames or probe.header_frames
    interval = probe.keyframe_interval
    if interval and expected and wanted and expected / wanted > 2 * interval:
        return ("decord", "pyav")
    return ("pyav", "decord")


def _slack(expected: int) -> int:
    return max(_MIN_SLACK_FRAMES, int(expected * _SLACK_FRACTION))


def _check_frame_count(path: Path, probe: _Probe, counted: int) -> None:
    """Frames counted from packets: none is an empty stream, fewer than the header promises is a cut file."""
    if counted < 1:
        raise _no_frames(path, probe.expected_frames)
    expected = probe.expected_frames
    if expected is not None and counted < expected - _slack(expected):
        raise _truncated(path, expected, counted)


def _truncated(path: Path, expected: int, found: int) -> VideoError:
    return _error(
        f"video is truncated or corrupt: {path} (header says {expected} frames, only {found} readable);"
        " re-download or re-encode it"
    )


def _no_frames(path: Path, expected: int | None = None) -> VideoError:
    claim = f" (header says {expected} frames)" if expected else ""
    return _error(f"no decodable frames in {path}{claim}; the video stream is empty or damaged - re-encode it")


# --------------------------------------------------------------------------------------------
# frame times (one demux pass) and the sampling plan


@dataclass(frozen=True)
class _Scan:
    """What one demux pass (no decoding) tells about the video stream, per packet in DECODE order."""

    pts: list[int | None]
    dts: list[int | None]
    keys: list[bool]
    durations: list[int]  # packet durations in time_base units, 0 when unknown
    time_base: float  # seconds per pts unit; 0.0 when the stream has none
    width: int
    height: int


def _scan(path: Path) -> _Scan:
    """Demux every packet of the video stream once (0.1 s for a 10-minute 854x480 H.264 file)."""
    container = _open_av(path)
    pts: list[int | None] = []
    dts: list[int | None] = []
    keys: list[bool] = []
    durations: list[int] = []
    try:
        stream = _video_stream(container, path)
        width, height = int(stream.codec_context.width or 0), int(stream.codec_context.height or 0)
        time_base = float(stream.time_base) if stream.time_base else 0.0
        try:
            for packet in container.demux(stream):
                if packet.size:
                    pts.append(packet.pts)
                    dts.append(packet.dts)
                    keys.append(bool(packet.is_keyframe))
                    durations.append(int(packet.duration or 0))
        except Exception:  # the container breaks off here (a damaged or cut file): the packets so far count
            if not pts:
                raise
    except VideoError:
        raise
    except Exception as exc:
        raise _error(f"video is corrupt: cannot read {path} ({_reason(exc)}); re-download or re-encode it") from exc
    finally:
        container.close()
    if not pts:
        raise _no_frames(path)
    return _Scan(pts=pts, dts=dts, keys=keys, durations=durations, time_base=time_base, width=width, height=height)


def _usable_pts(pts: list[int | None]) -> bool:
    """Whether packets identify frames: every one has a pts and no two share one."""
    return all(p is not None for p in pts) and len(set(pts)) == len(pts)


@dataclass(frozen=True)
class _Timeline:
    """Every frame of the video stream in display order."""

    times: np.ndarray  # (total,) float64 seconds from the first frame
    duration: float  # seconds: last frame's time plus its duration
    fps: float  # total / duration; the header's rate for a constant-rate file
    pts: list[int] | None  # (total,) display-order pts, None when packets carry no usable pts
    constant_rate: bool  # every frame within a tenth of a frame of index / header fps

    @property
    def total(self) -> int:
        return int(self.times.size)


def _timeline(scan: _Scan, header_fps: float) -> _Timeline:
    total = len(scan.pts)
    uniform = np.arange(total, dtype=np.float64) / header_fps
    if not _usable_pts(scan.pts) or scan.time_base <= 0:
        return _Timeline(uniform, total / header_fps, header_fps, None, True)
    order = sorted(range(total), key=lambda i: scan.pts[i])  # type: ignore[arg-type, return-value]
    pts = [int(scan.pts[i]) for i in order]  # type: ignore[arg-type]
    times = (np.asarray(pts, dtype=np.float64) - pts[0]) * scan.time_base
    if np.all(np.abs(times - uniform) <= 0.1 / header_fps):
        return _Timeline(uniform, total / header_fps, header_fps, pts, True)
    last = scan.durations[order[-1]] * scan.time_base
    if not last > 0:
        last = float(np.median(np.diff(times))) if total > 1 else 1 / header_fps
    duration = float(times[-1] + last)
    return _Timeline(times, duration, total / duration, pts, False)


@dataclass(frozen=True)
class _Plan:
    """Which frames to decode: the timeline and the sampled display indices."""

    timeline: _Timeline
    indices: np.ndarray  # (N,) int64, non-decreasing (a long frame of a variable-rate file may repeat)
    scan: _Scan


def _plan(path: Path, probe: _Probe, *, fps: float, max_frames: int) -> _Plan:
    scan = _scan(path)
    _check_frame_count(path, probe, len(scan.pts))  # no frames, or fewer than the header promises
    return _plan_from(scan, probe, fps=fps, max_frames=max_frames)


def _plan_from(scan: _Scan, probe: _Probe, *, fps: float, max_frames: int) -> _Plan:
    timeline = _timeline(scan, probe.fps)
    if timeline.constant_rate:
        indices = sample_indices(timeline.total, timeline.fps, fps=fps, max_frames=max_frames)
    else:
        indices = sample_times(timeline.times, timeline.duration, fps=fps, max_frames=max_frames)
    return _Plan(timeline=timeline, indices=indices, scan=scan)


def _result(
    path: Path, frames: np.ndarray, indices: np.ndarray, timeline: _Timeline, backend: str, notes: tuple[str, ...]
) -> DecodedVideo:
    indices = np.asarray(indices, dtype=np.int64)
    return DecodedVideo(
        path=path,
        frames=frames,
        timestamps=timeline.times[indices].astype(np.float64),
        indices=indices,
        source_fps=float(timeline.fps),
        total_frames=timeline.total,
        duration=float(timeline.duration),
        backend=backend,
        notes=notes,
    )


# --------------------------------------------------------------------------------------------
# decord backend


_decord_module: Any = None


def _import_decord() -> Any:
    global _decord_module
    if _decord_module is None:
        try:
            import decord
        except Exception as exc:  # ImportError, or a broken native library
            raise _error(
                f"the decord decoder is unavailable ({_reason(exc)}); pip install decord2, or use --decoder pyav"
            ) from exc
        # decord bundles its own FFmpeg, which logs every damaged packet to stderr; the library must not print
        decord.logging.set_level(decord.logging.QUIET)
        _decord_module = decord
    return _decord_module


def _open_decord(path: Path) -> Any:
    """A decord VideoReader on the CPU (split out so tests can make decord fail)."""
    decord = _import_decord()
    return decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=0)


# decord (0.6 and decord2 up to 3.4 at least) copies each RGB frame without its row padding; where
# FFmpeg pads the rows (it aligns them to the CPU's vector width: 64 bytes with AVX-512) the copy's
# size check fails, e.g. for 96x64, 16x16 and 2x2 frames on an AVX-512 machine. That is not the file's
# fault: "auto" falls back to PyAV, and a forced decord says what happened.
_DECORD_COPY_BUG = "DECORDArrayCopyFromTo"


def _decode_decord(path: Path, probe: _Probe, plan: _Plan) -> DecodedVideo:
    if not probe.indexed:
        kind = probe.format_name.split(",")[0] or "this kind of"
        raise _error(
            f"decord returns wrong frames for {kind} files such as {path} (they have no seek index);"
            " use --decoder pyav or --decoder auto"
        )
    try:
        reader = _open_decord(path)
    except VideoError:
        raise
    except Exception as exc:  # RuntimeError, DECORDError, AssertionError (frame count 0)
        if not probe.pixel_format_known:  # decord cannot even build its filter graph: no frame to decode
            raise _no_frames(path, probe.expected_frames) from exc
        raise _error(f"decord cannot open {path} ({_reason(exc)}); use --decoder pyav or re-encode the video") from exc
    try:
        if len(reader) != plan.timeline.total:  # decord would number the frames differently
            raise _error(
                f"decord counts {len(reader)} frames in {path}, the container {plan.timeline.total};"
                " use --decoder pyav"
            )
        unique, inverse = np.unique(plan.indices, return_inverse=True)  # a variable-rate file may repeat one
        batch = reader.get_batch(unique.tolist())
        frames = batch.asnumpy() if hasattr(batch, "asnumpy") else np.asarray(batch)  # decord bridge may be torch
        frames = np.ascontiguousarray(frames, dtype=np.uint8)
        if frames.ndim != 4 or frames.shape[0] != len(unique) or frames.shape[3] != 3:
            raise _error(f"decord returned frames of shape {frames.shape} for {path}; use --decoder pyav")
        frames = _decord_rotated(frames, probe)[inverse.reshape(-1)]
        return _result(path, frames, plan.indices, plan.timeline, "decord", probe.notes(path))
    except VideoError:
        raise
    except Exception as exc:  # DECORDError from a damaged packet, IndexError, ...
        if _DECORD_COPY_BUG in str(exc):
            raise _error(
                f"decord cannot convert the frames of {path} (a decord bug with padded pixel rows, which "
                "depends on the frame width and the CPU); use --decoder pyav or --decoder auto"
            ) from exc
        raise _error(
            f"decord cannot read {path} ({_reason(exc)}); use --decoder pyav or --decoder auto, which skip"
            " damaged stretches, or re-encode the video"
        ) from exc
    finally:
        del reader


def _decord_rotated(frames: np.ndarray, probe: _Probe) -> np.ndarray:
    """decord (2 3.4) applies the display matrix itself; turn the frames only if this decord did not."""
    turns = probe.rotation // 90
    if turns % 2 and probe.width != probe.height and frames.shape[1:3] == (probe.height, probe.width):
        return np.ascontiguousarray(np.rot90(frames, turns, axes=(1, 2)))
    return frames


# --------------------------------------------------------------------------------------------
# PyAV: decoding that skips damaged stretches


def decoded_frames(container: Any, stream: Any) -> Iterator[Any]:
    """The frames of `stream` in display order, leaving out packets the decoder rejects, as a player does.

    The demuxer breaking off (a cut or garbled container) ends the stream there.
    """
    import av

    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except av.error.FFmpegError:
            return
        try:
            frames = stream.decode(packet)
        except av.error.FFmpegError:  # InvalidDataError: a damaged packet
            continue
        yield from frames


def to_rgb(frame: Any, rotation: int, size: tuple[int, int] | None = None) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a decoded frame at coded size `size` (width, height), turned `rotation` degrees."""
    if size is not None and (frame.width, frame.height) != size:  # resolution changed mid-stream: keep the first
        frame = frame.reformat(width=size[0], height=size[1])
    image = frame.to_ndarray(format="rgb24")
    return np.ascontiguousarray(np.rot90(image, rotation // 90)) if rotation else image


class Picker:
    """Collects the wanted frames from decoded frames arriving in display order, each identified by its pts.

    A wanted pts that never arrives lies in a damaged stretch: it gets the nearer in time of the last frame
    decoded before it and the first one after (a player shows one of them there). `lost` counts the frames
    of `timeline_pts` the decoder skipped from `start_pts` (where decoding began, None after a seek: what a seek
    skips is not lost) to the last frame seen.
    """

    def __init__(
        self, wanted: list[int], timeline_pts: list[int], start_pts: int | None, convert: Callable[[Any], np.ndarray]
    ) -> None:
        self.pending = sorted((pts, slot) for slot, pts in enumerate(wanted))
        self.chosen = list(wanted)  # pts that fills each slot
        self.images: list[np.ndarray | None] = [None] * len(wanted)
        self.replaced = 0
        self.lost = 0
        self.first_pts: int | None = None  # of the first frame that decoded
        self._timeline = timeline_pts
        self._known = set(timeline_pts)
        # frames after this pts and before the next decoded frame are lost
        self._last_pts: int | None = None if start_pts is None else start_pts - 1
        self._prev: tuple[int, Any] | None = None
        self._convert = convert
        self._converted: dict[int, np.ndarray] = {}

    @property
    def done(self) -> bool:
        return not self.pending

    def offer(self, frame: Any) -> bool:
        """Take `frame` if it is wanted or the nearest to a skipped wanted frame; True once all are filled."""
        pts = frame.pts
        # no pts, a pts no packet had (MPEG-PS right after a seek), or the decoder repeating itself after damage
        if pts is None or pts not in self._known or (self._last_pts is not None and pts <= self._last_pts):
            return self.done
        if self.first_pts is None:
            self.first_pts = pts
        if self._last_pts is not None:
            self.lost += self._between(self._last_pts, pts)
        while self.pending and self.pending[0][0] <= pts:
            want, slot = self.pending.pop(0)
            if want == pts:
                self._fill(slot, pts, frame)
            else:
                before = self._prev
                use = before if before is not None and want - before[0] <= pts - want else (pts, frame)
                self._fill(slot, *use)
                self.replaced += 1
        self._prev = (pts, frame)
        self._last_pts = pts
        return self.done

    def finish(self) -> bool:
        """The stream ended: the frames still wanted get the last frame decoded. False if there was none."""
        if self._prev is None:
            return self.done
        self.lost += self._between(self._prev[0], None)
        while self.pending:
            _, slot = self.pending.pop(0)
            self._fill(slot, *self._prev)
            self.replaced += 1
        return True

    def _between(self, after: int, before: int | None) -> int:
        lo = bisect.bisect_right(self._timeline, after)
        hi = len(self._timeline) if before is None else bisect.bisect_left(self._timeline, before)
        return max(0, hi - lo)

    def _fill(self, slot: int, pts: int, frame: Any) -> None:
        if pts not in self._converted:
            self._converted = {k: v for k, v in self._converted.items() if k >= pts}  # older ones are never reused
            self._converted[pts] = self._convert(frame)
        self.images[slot] = self._converted[pts]
        self.chosen[slot] = pts

    def frames(self) -> np.ndarray:
        return np.stack(self.images)  # type: ignore[arg-type]


def damage_note(path: Path, replaced: int, sampled: int, lost: int) -> str:
    """The note for frames skipped in damaged stretches, e.g. "clip.mp4: skipped 12 damaged frames; ..."."""
    skipped = f"{path.name}: skipped {lost} damaged frame{'s' if lost != 1 else ''}"
    if not replaced:
        return f"{skipped}; none of the {sampled} sampled frames was among them"
    return f"{skipped}; {replaced} of {sampled} sampled frames fell there and are the nearest decodable frames instead"


def check_replaced(path: Path, replaced: int, sampled: int, lost: int) -> None:
    """Refuse a video whose sampled frames mostly fall in damaged stretches (see MAX_REPLACED_FRACTION)."""
    if replaced > MAX_REPLACED_FRACTION * sampled:
        raise _error(
            f"video is corrupt: {path} has {lost} damaged frames, and {replaced} of {sampled} sampled frames"
            " cannot be decoded; re-download or re-encode it"
        )


# --------------------------------------------------------------------------------------------
# PyAV backend


def _decode_pyav(path: Path, probe: _Probe, plan: _Plan) -> DecodedVideo:
    timeline = plan.timeline
    if timeline.pts is None:
        frames = _read_counted(path, plan.indices, probe.rotation)
        return _result(path, frames, plan.indices, timeline, "pyav", probe.notes(path))
    wanted = [timeline.pts[i] for i in plan.indices.tolist()]
    picker = _read_by_pts(path, wanted, timeline.pts, probe.rotation, (plan.scan.width, plan.scan.height))
    notes = probe.notes(path)
    indices = plan.indices
    if picker.replaced or picker.lost:
        check_replaced(path, picker.replaced, len(wanted), picker.lost)
        position = {p: i for i, p in enumerate(timeline.pts)}
        indices = np.asarray([position[p] for p in picker.chosen], dtype=np.int64)
        notes += (damage_note(path, picker.replaced, len(wanted), picker.lost),)
    return _result(path, picker.frames(), indices, timeline, "pyav", notes)


def _read_by_pts(
    path: Path, wanted: list[int], timeline_pts: list[int], rotation: int, coded: tuple[int, int]
) -> Picker:
    """Decode from the start, converting only the wanted frames (by pts); stops after the last one.

    Every frame is scaled to `coded` (the stream header's size), else to the first frame's size."""
    size: list[tuple[int, int]] = [coded] if all(coded) else []

    def convert(frame: Any) -> np.ndarray:
        if not size:
            size.append((frame.width, frame.height))
        return to_rgb(frame, rotation, size[0])

    picker = Picker(wanted, timeline_pts, timeline_pts[0], convert)
    container = _open_av(path)
    try:
        stream = _video_stream(container, path)
        stream.thread_type = "AUTO"  # frame + slice threads; the skipped frames still have to be decoded
        for frame in decoded_frames(container, stream):
            if picker.offer(frame):
                break
        else:
            picker.finish()
    except VideoError:
        raise
    except Exception as exc:  # a failure outside decoding proper (conversion, an odd frame): one line
        raise _error(f"video is corrupt: {path} cannot be decoded ({_reason(exc)}); re-encode it") from exc
    finally:
        container.close()
    if not picker.done:
        raise _error(f"video is corrupt: none of the {len(timeline_pts)} frames of {path} can be decoded; re-encode it")
    return picker


def _read_counted(path: Path, indices: np.ndarray, rotation: int) -> np.ndarray:
    """Packets without usable pts: decode from the start counting frames (a damaged packet is an error, as
    skipping it would shift the count)."""
    container = _open_av(path)
    wanted = indices.tolist()
    out: list[np.ndarray] = []
    count = 0
    size: tuple[int, int] | None = None
    try:
        stream = _video_stream(container, path)
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            size = size or (frame.width, frame.height)
            while len(out) < len(wanted) and wanted[len(out)] == count:  # a repeated index repeats the frame
                out.append(out[-1] if out and wanted[len(out) - 1] == count else to_rgb(frame, rotation, size))
            if len(out) == len(wanted):
                return np.stack(out)
            count += 1
    except VideoError:
        raise
    except Exception as exc:  # av.error.InvalidDataError from a damaged packet, ...
        raise _error(
            f"video is corrupt: {path} cannot be decoded after frame {count} ({_reason(exc)}); re-encode it"
        ) from exc
    finally:
        container.close()
    if count == 0:
        raise _no_frames(path)
    raise _truncated(path, int(indices[-1]) + 1, count)
