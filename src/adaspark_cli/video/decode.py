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
- Frame times come from one demux pass (`probe.probe_video`, packets only): every frame's pts in display order,
  from the first frame. A constant-rate file is sampled by index (`sample_indices`); a variable-rate
  one uniformly in real time (`sample_times`), and the timestamps are the chosen frames' real times.
- A damaged stretch is skipped as a player skips it: PyAV decodes packet by packet, drops the packets
  the decoder rejects, and a sampled frame that never decodes is replaced by the nearest decodable
  frame (`frames.Picker`), with a note. More than half the sampled frames replaced is refused.
- A display matrix (phone videos) is applied in multiples of 90 degrees, with a note.
- decord is used only for containers with a seek index (mp4/mov, mkv/webm, avi): on MPEG-TS and
  MPEG-PS decord 3.4 returns wrong frames without an error (see probe.INDEXED_FORMATS).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import VideoError
from ..limits import DECODERS, check_decoder, check_fps, check_max_frames
from .checks import check_path, reason, video_error
from .frames import MAX_REPLACED_FRACTION, Picker, check_replaced, damage_note, decoded_frames, opened, read_counted, to_rgb
from .plan import Plan, Timeline, plan_frames, sample_indices, sample_times
from .probe import Probe, check_frame_count, no_frames_error, probe_video, truncated_error

BACKENDS = DECODERS  # --decoder

__all__ = [
    "BACKENDS",
    "MAX_REPLACED_FRACTION",
    "DecodedVideo",
    "decode_planned",
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
    check_fps(fps, VideoError)
    check_max_frames(max_frames, VideoError)
    check_decoder(backend, VideoError)
    path = check_path(path)
    # one header read and packet scan with PyAV gives the same errors (not a video, no video stream)
    # whichever backend decodes; decord alone logs to stderr instead
    probe, scan = probe_video(path)
    check_frame_count(path, probe, len(scan.pts))  # no frames, or fewer than the header promises
    plan = plan_frames(scan, probe, fps=fps, max_frames=max_frames)
    return decode_planned(path, probe, plan, backend)


def decode_planned(path: Path, probe: Probe, plan: Plan, backend: str) -> DecodedVideo:
    """Decode the frames `plan` samples from a file already probed (`decode_video` after its checks)."""
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


def auto_order(probe: Probe, wanted: int) -> tuple[str, ...]:
    """Which backends "auto" tries, in order.

    decord seeks to the keyframe before each wanted frame; PyAV reads sequentially. Seeking pays only
    when wanted frames lie several keyframe intervals apart, otherwise it decodes the same GOPs again
    and again. Measured 2026-11-25 on the 2-core CPU:
      10-min 854x480 30 fps H.264, keyframe every 250, 256 frames (one per 70): decord 8.7 s, 1.45 GB
        peak RSS; PyAV 5.7 s, 0.37 GB  -> sequential
      60 s grainy 30 fps, keyframe every 30, 16 frames (one per 112): decord 1.2 s; PyAV 4.4 s  -> seek
    Containers without a seek index (MPEG-TS, MPEG-PS) are PyAV only: decord misreads them (INDEXED_FORMATS).
    """
    if not probe.indexed:
        return ("pyav",)
    expected = probe.expected_frames or probe.header_frames
    interval = probe.keyframe_interval
    if interval and expected and wanted and expected / wanted > 2 * interval:
        return ("decord", "pyav")
    return ("pyav", "decord")


def _result(
    path: Path, frames: np.ndarray, indices: np.ndarray, timeline: Timeline, backend: str, notes: tuple[str, ...]
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


def import_decord() -> Any:
    """The decord module, quietened; a one-line VideoError when it cannot load (tests replace this name)."""
    global _decord_module
    if _decord_module is None:
        try:
            import decord
        except Exception as exc:  # ImportError, or a broken native library
            raise video_error(
                f"the decord decoder is unavailable ({reason(exc)}); pip install decord2, or use --decoder pyav"
            ) from exc
        # decord bundles its own FFmpeg, which logs every damaged packet to stderr; the library must not print
        decord.logging.set_level(decord.logging.QUIET)
        _decord_module = decord
    return _decord_module


def open_decord(path: Path) -> Any:
    """A decord VideoReader on the CPU (a module-level name, so tests can make decord fail)."""
    decord = import_decord()
    return decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=0)


# decord (0.6 and decord2 up to 3.4 at least) copies each RGB frame without its row padding; where
# FFmpeg pads the rows (it aligns them to the CPU's vector width: 64 bytes with AVX-512) the copy's
# size check fails, e.g. for 96x64, 16x16 and 2x2 frames on an AVX-512 machine. That is not the file's
# fault: "auto" falls back to PyAV, and a forced decord says what happened.
_DECORD_COPY_BUG = "DECORDArrayCopyFromTo"


def _decode_decord(path: Path, probe: Probe, plan: Plan) -> DecodedVideo:
    if not probe.indexed:
        kind = probe.format_name.split(",")[0] or "this kind of"
        raise video_error(
            f"decord returns wrong frames for {kind} files such as {path} (they have no seek index);"
            " use --decoder pyav or --decoder auto"
        )
    try:
        reader = open_decord(path)
    except VideoError:
        raise
    except Exception as exc:  # RuntimeError, DECORDError, AssertionError (frame count 0)
        if not probe.pixel_format_known:  # decord cannot even build its filter graph: no frame to decode
            raise no_frames_error(path, probe.expected_frames) from exc
        raise video_error(f"decord cannot open {path} ({reason(exc)}); use --decoder pyav or re-encode the video") from exc
    try:
        if len(reader) != plan.timeline.total:  # decord would number the frames differently
            raise video_error(
                f"decord counts {len(reader)} frames in {path}, the container {plan.timeline.total};"
                " use --decoder pyav"
            )
        unique, inverse = np.unique(plan.indices, return_inverse=True)  # a variable-rate file may repeat one
        batch = reader.get_batch(unique.tolist())
        frames = batch.asnumpy() if hasattr(batch, "asnumpy") else np.asarray(batch)  # decord bridge may be torch
        frames = np.ascontiguousarray(frames, dtype=np.uint8)
        if frames.ndim != 4 or frames.shape[0] != len(unique) or frames.shape[3] != 3:
            raise video_error(f"decord returned frames of shape {frames.shape} for {path}; use --decoder pyav")
        frames = _decord_rotated(frames, probe)[inverse.reshape(-1)]
        return _result(path, frames, plan.indices, plan.timeline, "decord", probe.notes(path))
    except VideoError:
        raise
    except Exception as exc:  # DECORDError from a damaged packet, IndexError, ...
        if _DECORD_COPY_BUG in str(exc):
            raise video_error(
                f"decord cannot convert the frames of {path} (a decord bug with padded pixel rows, which "
                "depends on the frame width and the CPU); use --decoder pyav or --decoder auto"
            ) from exc
        raise video_error(
            f"decord cannot read {path} ({reason(exc)}); use --decoder pyav or --decoder auto, which skip"
            " damaged stretches, or re-encode the video"
        ) from exc
    finally:
        del reader


def _decord_rotated(frames: np.ndarray, probe: Probe) -> np.ndarray:
    """decord (2 3.4) applies the display matrix itself; turn the frames only if this decord did not."""
    turns = probe.rotation // 90
    if turns % 2 and probe.width != probe.height and frames.shape[1:3] == (probe.height, probe.width):
        return np.ascontiguousarray(np.rot90(frames, turns, axes=(1, 2)))
    return frames


# --------------------------------------------------------------------------------------------
# PyAV backend


def _decode_pyav(path: Path, probe: Probe, plan: Plan) -> DecodedVideo:
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
    with opened(path, "AUTO") as (container, stream):  # frame + slice threads: skipped frames still decode
        picker.read(decoded_frames(container, stream))
    if not picker.done:
        raise video_error(f"video is corrupt: none of the {len(timeline_pts)} frames of {path} can be decoded; re-encode it")
    return picker


def _read_counted(path: Path, indices: np.ndarray, rotation: int) -> np.ndarray:
    """Packets without usable pts: the sampled frames by counting (`frames.read_counted`), at the first frame's size."""
    out, count = read_counted(path, indices.tolist(), lambda frame, size: to_rgb(frame, rotation, size))
    if len(out) == len(indices):
        return np.stack(out)
    if count == 0:
        raise no_frames_error(path)
    raise truncated_error(path, int(indices[-1]) + 1, count)
