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
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import re
import time
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

__all__ = ["BACKENDS", "DecodedVideo", "decode_video", "sample_indices"]


@dataclass(frozen=True)
class DecodedVideo:
    """Frames sampled from one video, with where in the source they came from.

    timestamps are ``indices / source_fps`` (not per-frame pts) so both backends give identical
    results and they match the uniform spacing the model's temporal position ids assume;
    duration is ``total_frames / source_fps``.
    """

    path: Path
    frames: np.ndarray  # (N, H, W, 3) uint8 RGB
    timestamps: np.ndarray  # (N,) float64 seconds of each sampled frame: index / source_fps
    indices: np.ndarray  # (N,) int64 source frame indices that were sampled
    source_fps: float
    total_frames: int
    duration: float  # seconds
    backend: str  # "decord" or "pyav"
    seconds: float = 0.0  # wall time decode_video took


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


# --------------------------------------------------------------------------------------------
# public entry point


def decode_video(
    path: str | Path, *, fps: float = 2.0, max_frames: int = 256, backend: str = "auto"
) -> DecodedVideo:
    """Decode the frames ``sample_indices`` picks from ``path`` as (N, H, W, 3) uint8 RGB.

    backend: "decord", "pyav", or "auto" (tries the one ``auto_order`` prefers and falls back to the other
    when one cannot open or read the file). Every failure is a one-line ``VideoError``.
    """
    start = time.perf_counter()
    video = _decode(path, fps=fps, max_frames=max_frames, backend=backend)
    return dataclasses.replace(video, seconds=time.perf_counter() - start)


def _decode(path: str | Path, *, fps: float, max_frames: int, backend: str) -> DecodedVideo:
    _check_fps(fps)
    _check_max_frames(max_frames)
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise _error(f"unknown video backend {backend!r}; use one of {', '.join(BACKENDS)}")
    path = _check_path(path)
    # one cheap header read with PyAV gives the same errors (not a video, no video stream) and the
    # frame count the file claims, whichever backend decodes; decord alone logs to stderr instead
    probe = _probe(path)
    decoders = {"decord": _decode_decord, "pyav": _decode_pyav}
    if backend != "auto":
        return decoders[backend](path, probe, fps=fps, max_frames=max_frames)
    wanted = len(sample_indices(probe.expected_frames, probe.fps, fps=fps, max_frames=max_frames)) if probe.expected_frames else 0
    # decord is imported only if it is tried: importing it alone costs ~1 GB RSS (see above)
    errors: dict[str, VideoError] = {}
    for name in auto_order(probe, wanted):
        try:
            return decoders[name](path, probe, fps=fps, max_frames=max_frames)
        except VideoError as exc:
            errors[name] = exc
    raise errors["pyav"]  # both failed: PyAV's message names the problem and the fix


# --------------------------------------------------------------------------------------------
# argument and path checks


def _is_real(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _check_fps(fps: Any) -> None:
    if not _is_real(fps) or not math.isfinite(fps) or fps <= 0:
        raise _error(f"fps must be a finite number > 0, got {fps!r}; use e.g. fps=2.0")


def _check_max_frames(max_frames: Any) -> None:
    if not isinstance(max_frames, numbers.Integral) or isinstance(max_frames, bool) or max_frames < 1:
        raise _error(f"max_frames must be an integer >= 1, got {max_frames!r}; use e.g. max_frames=256")


def _error(message: str) -> VideoError:
    """A VideoError whose message is one line even if a path or FFmpeg text held line breaks."""
    return VideoError(" ".join(message.splitlines()).strip())


def _check_path(path: str | Path) -> Path:
    if isinstance(path, str) and not path.strip():
        raise _error("video path is empty; pass the path of a video file")
    try:
        p = Path(path)
    except TypeError as exc:
        raise _error(f"video path must be a str or Path, got {type(path).__name__}; pass a file path") from exc
    if not p.exists():
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


def _open_av(path: Path) -> Any:
    import av

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


def _probe(path: Path) -> _Probe:
    container = _open_av(path)
    try:
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
        return _Probe(
            fps=fps,
            header_frames=header_frames,
            expected_frames=expected or None,
            pixel_format_known=stream.codec_context.pix_fmt is not None,
            keyframe_interval=_keyframe_interval(container, stream),
        )
    except VideoError:
        raise
    except Exception as exc:
        raise _error(f"cannot read the header of {path} ({_reason(exc)}); re-download or re-encode it") from exc
    finally:
        container.close()


_KEYFRAME_SCAN = 1000  # packets demuxed (not decoded) to find the second keyframe


def _keyframe_interval(container: Any, stream: Any) -> int | None:
    """Frames from the first keyframe to the second, from packet flags alone (cheap: no decoding)."""
    seen = 0
    first: int | None = None
    try:
        for packet in container.demux(stream):
            if packet.size == 0:
                continue
            if packet.is_keyframe:
                if first is not None:
                    return seen - first
                first = seen
            seen += 1
            if seen >= _KEYFRAME_SCAN:
                break
    except Exception:  # a damaged file: the decoders report it; the interval is only a hint
        return None
    return None


def auto_order(probe: _Probe, wanted: int) -> tuple[str, str]:
    """Which backend "auto" tries first.

    decord seeks to the keyframe before each wanted frame; PyAV reads sequentially. Seeking pays only
    when wanted frames lie several keyframe intervals apart, otherwise it decodes the same GOPs again
    and again. Measured 2026-11-25 on the 2-core CPU:
      10-min 854x480 30 fps H.264, keyframe every 250, 256 frames (one per 70): decord 8.7 s, 1.45 GB
        peak RSS; PyAV 5.7 s, 0.37 GB  -> sequential
      60 s grainy 30 fps, keyframe every 30, 16 frames (one per 112): decord 1.2 s; PyAV 4.4 s  -> seek
    """
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


def _result(path: Path, frames: np.ndarray, indices: np.ndarray, fps: float, total: int, backend: str) -> DecodedVideo:
    return DecodedVideo(
        path=path,
        frames=frames,
        timestamps=indices.astype(np.float64) / fps,
        indices=indices.astype(np.int64),
        source_fps=float(fps),
        total_frames=int(total),
        duration=total / fps,
        backend=backend,
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


def _decode_decord(path: Path, probe: _Probe, *, fps: float, max_frames: int) -> DecodedVideo:
    try:
        reader = _open_decord(path)
    except VideoError:
        raise
    except Exception as exc:  # RuntimeError, DECORDError, AssertionError (frame count 0)
        if not probe.pixel_format_known:  # decord cannot even build its filter graph: no frame to decode
            raise _no_frames(path, probe.expected_frames) from exc
        raise _error(f"decord cannot open {path} ({_reason(exc)}); use --decoder pyav or re-encode the video") from exc
    try:
        total = len(reader)  # decord counts packets when it opens the file
        _check_frame_count(path, probe, total)
        indices = sample_indices(total, probe.fps, fps=fps, max_frames=max_frames)
        batch = reader.get_batch(indices.tolist())
        frames = batch.asnumpy() if hasattr(batch, "asnumpy") else np.asarray(batch)  # decord bridge may be torch
        frames = np.ascontiguousarray(frames, dtype=np.uint8)
        if frames.ndim != 4 or frames.shape[0] != len(indices) or frames.shape[3] != 3:
            raise _error(f"decord returned frames of shape {frames.shape} for {path}; use --decoder pyav")
        return _result(path, frames, indices, probe.fps, total, "decord")
    except VideoError:
        raise
    except Exception as exc:  # DECORDError from a damaged packet, IndexError, ...
        if _DECORD_COPY_BUG in str(exc):
            raise _error(
                f"decord cannot convert the frames of {path} (a decord bug with padded pixel rows, which "
                "depends on the frame width and the CPU); use --decoder pyav or --decoder auto"
            ) from exc
        raise _error(
            f"decord cannot read {path} ({_reason(exc)}); use --decoder pyav, or re-encode the video"
        ) from exc
    finally:
        del reader


# --------------------------------------------------------------------------------------------
# PyAV backend


def _count_packets(container: Any, stream: Any) -> int:
    """Frames in a stream whose header has no count (webm, mkv): demux only, nothing is decoded."""
    return sum(1 for packet in container.demux(stream) if packet.size)


def _decode_pyav(path: Path, probe: _Probe, *, fps: float, max_frames: int) -> DecodedVideo:
    total = probe.header_frames
    if not total:
        container = _open_av(path)
        try:
            total = _count_packets(container, _video_stream(container, path))
        except VideoError:
            raise
        except Exception as exc:
            raise _error(f"video is corrupt: cannot read {path} ({_reason(exc)}); re-download or re-encode it") from exc
        finally:
            container.close()
        _check_frame_count(path, probe, total)
    indices = sample_indices(total, probe.fps, fps=fps, max_frames=max_frames)
    frames, decoded = _read_frames(path, indices)
    if frames is None:
        if decoded == 0:
            raise _no_frames(path, probe.expected_frames)
        if total - decoded > _slack(total):
            raise _truncated(path, total, decoded)
        # the header over-counted by a frame or two: sample the frames that exist, in a second pass
        total = decoded
        indices = sample_indices(total, probe.fps, fps=fps, max_frames=max_frames)
        frames, decoded = _read_frames(path, indices)
        if frames is None:
            raise _truncated(path, total, decoded)
    return _result(path, frames, indices, probe.fps, total, "pyav")


def _read_frames(path: Path, indices: np.ndarray) -> tuple[np.ndarray | None, int]:
    """Decode from the start, converting only the wanted frames; stops after the last one.

    Returns (frames, frames decoded); frames is None when the stream ended before the last index.
    """
    container = _open_av(path)
    out: np.ndarray | None = None
    wanted = indices.tolist()
    slot = 0
    count = 0
    size: tuple[int, int] | None = None
    try:
        stream = _video_stream(container, path)
        stream.thread_type = "AUTO"  # frame + slice threads; the skipped frames still have to be decoded
        for frame in container.decode(stream):
            if count == wanted[slot]:
                if size is None:
                    size = (frame.width, frame.height)
                    out = np.empty((len(wanted), size[1], size[0], 3), dtype=np.uint8)
                if (frame.width, frame.height) != size:  # resolution changed mid-stream: keep the first
                    frame = frame.reformat(width=size[0], height=size[1])
                out[slot] = frame.to_ndarray(format="rgb24")  # type: ignore[index]
                slot += 1
                if slot == len(wanted):
                    return out, count + 1
            count += 1
    except VideoError:
        raise
    except Exception as exc:  # av.error.InvalidDataError from a damaged packet, ...
        raise _error(
            f"video is corrupt: {path} cannot be decoded after frame {count} ({_reason(exc)}); re-encode it"
        ) from exc
    finally:
        container.close()
    return None, count
