"""Which frames to read: every frame's time from the packet scan, sampled uniformly in time.

A constant-rate file is sampled by index (`sample_indices`); a variable-rate one uniformly in real time
(`sample_times`), and the timestamps are the chosen frames' real times.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

from ..errors import VideoError
from ..limits import check_fps, check_max_frames, is_real
from .checks import video_error
from .probe import Probe, Scan


def sample_indices(total_frames: int, source_fps: float, *, fps: float, max_frames: int) -> np.ndarray:
    """Source frame indices sampled uniformly in time at ``fps`` frames per second of video.

    n = floor(duration * fps) with duration = total_frames / source_fps, at least 1, at most
    ``max_frames`` and at most ``total_frames`` (indices are distinct). The video is cut into n equal
    intervals and each index is the frame at the CENTRE of its interval:
    ``index_k = floor((k + 0.5) * total_frames / n)``, computed in integers so it is exact.
    Example: 48 frames at 24 fps sampled at 2 fps -> n = 4 -> indices 6, 18, 30, 42 (0.25 s, 0.75 s, ...).
    """
    check_fps(fps, VideoError)
    check_max_frames(max_frames, VideoError)
    if not isinstance(total_frames, numbers.Integral) or isinstance(total_frames, bool) or total_frames < 1:
        raise video_error(f"total_frames must be an integer >= 1, got {total_frames!r}; a video needs at least one frame")
    if not is_real(source_fps) or not math.isfinite(source_fps) or source_fps <= 0:
        raise video_error(f"source_fps must be a finite number > 0, got {source_fps!r}; pass the video's frame rate")
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
    check_fps(fps, VideoError)
    check_max_frames(max_frames, VideoError)
    times = np.asarray(times, dtype=np.float64)
    if times.ndim != 1 or times.size < 1 or not is_real(duration) or not duration > 0:
        raise video_error(f"sample_times needs at least one frame time and a duration > 0, got {times.size} and {duration!r}")
    total = int(times.size)
    n = max(1, min(math.floor(duration * float(fps) + 1e-9), int(max_frames), total))
    instants = (np.arange(n, dtype=np.float64) + 0.5) * (duration / n)
    # a relative epsilon: an instant that falls exactly on a frame's start picks that frame despite rounding
    picked = np.searchsorted(times, instants + duration * 1e-12, side="right") - 1
    return np.clip(picked, 0, total - 1).astype(np.int64)




def _usable_pts(pts: list[int | None]) -> bool:
    """Whether packets identify frames: every one has a pts and no two share one."""
    return all(p is not None for p in pts) and len(set(pts)) == len(pts)


@dataclass(frozen=True)
class Timeline:
    """Every frame of the video stream in display order."""

    times: np.ndarray  # (total,) float64 seconds from the first frame
    duration: float  # seconds: last frame's time plus its duration
    fps: float  # total / duration; the header's rate for a constant-rate file
    pts: list[int] | None  # (total,) display-order pts, None when packets carry no usable pts
    constant_rate: bool  # every frame within a tenth of a frame of index / header fps

    @property
    def total(self) -> int:
        return int(self.times.size)


def _timeline(scan: Scan, header_fps: float) -> Timeline:
    total = len(scan.pts)
    uniform = np.arange(total, dtype=np.float64) / header_fps
    if not _usable_pts(scan.pts) or scan.time_base <= 0:
        return Timeline(uniform, total / header_fps, header_fps, None, True)
    order = sorted(range(total), key=lambda i: scan.pts[i])  # type: ignore[arg-type, return-value]
    pts = [int(scan.pts[i]) for i in order]  # type: ignore[arg-type]
    times = (np.asarray(pts, dtype=np.float64) - pts[0]) * scan.time_base
    if np.all(np.abs(times - uniform) <= 0.1 / header_fps):
        return Timeline(uniform, total / header_fps, header_fps, pts, True)
    last = scan.durations[order[-1]] * scan.time_base
    if not last > 0:
        last = float(np.median(np.diff(times))) if total > 1 else 1 / header_fps
    duration = float(times[-1] + last)
    return Timeline(times, duration, total / duration, pts, False)


@dataclass(frozen=True)
class Plan:
    """Which frames to decode: the timeline and the sampled display indices."""

    timeline: Timeline
    indices: np.ndarray  # (N,) int64, non-decreasing (a long frame of a variable-rate file may repeat)
    scan: Scan


def plan_frames(scan: Scan, probe: Probe, *, fps: float, max_frames: int) -> Plan:
    timeline = _timeline(scan, probe.fps)
    if timeline.constant_rate:
        indices = sample_indices(timeline.total, timeline.fps, fps=fps, max_frames=max_frames)
    else:
        indices = sample_times(timeline.times, timeline.duration, fps=fps, max_frames=max_frames)
    return Plan(timeline=timeline, indices=indices, scan=scan)
