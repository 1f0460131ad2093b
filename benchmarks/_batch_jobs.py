"""bench_batch's videos and what their outcomes tell: jobs whose names carry what a synthetic stream needs,
a `VideoStream` whose chunk threads synthesise 448x448-style frames instead of decoding (an optional charged
decode time per frame), and the comparisons and busy times read from the outcomes.
"""

from __future__ import annotations

import dataclasses
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

import _common  # noqa: F401  (puts src/ on sys.path)

from adaspark_cli.jobs import VideoJob, VideoOutcome
from adaspark_cli.video.stream import FrameChunk, PacketIndex, VideoStream

QUESTION = "What happens in the video?"
CLOCK_KEYS = {"prefill_seconds", "video_prefill_seconds", "decode_seconds", "timing", "replica"}

_NAME = re.compile(r"synthetic-(\d+)f-(\d+)px-(\d+)us-(\d+)\.mp4")
_BASE: dict[tuple[int, int], np.ndarray] = {}


def job_name(frames: int, side: int, decode_us: int, seed: int) -> str:
    """The job's path carries what its stream needs (also in a spawned worker, which re-imports this file)."""
    return f"synthetic-{frames}f-{side}px-{decode_us}us-{seed}.mp4"


@dataclasses.dataclass
class SyntheticStream(VideoStream):
    """A pipelined stream whose chunk threads synthesise frames instead of decoding them."""

    seed: int = 0
    decode_us_per_frame: int = 0

    def decode_chunk(self, planned: np.ndarray, first: int, stop: int, size: tuple[int, int] | None) -> FrameChunk:
        indices = planned[first:stop].copy()
        h, w = size or (self.height, self.width)
        base = _base_frames(len(indices), h, w)
        frames = np.bitwise_xor(base, np.uint8((self.seed * 37 + first // 2 + 1) % 255 + 1))
        if self.decode_us_per_frame:
            time.sleep(self.decode_us_per_frame * len(indices) / 1e6)  # charged decode (PyAV releases the GIL too)
        return FrameChunk(frames=frames, indices=indices, first=first)


def _base_frames(n: int, h: int, w: int) -> np.ndarray:
    key = (h, w)
    if key not in _BASE or _BASE[key].shape[0] < n:
        _BASE[key] = np.random.default_rng(0).integers(0, 256, size=(max(n, 32), h, w, 3), dtype=np.uint8)
    return _BASE[key][:n]


def synthetic_open(replica: Any, job: VideoJob) -> VideoStream:
    match = _NAME.fullmatch(job.path.name)
    if match is None:
        raise ValueError(f"{job.path.name} is not a synthetic job name")
    frames, side, decode_us, seed = (int(g) for g in match.groups())
    fps = 2.0
    return SyntheticStream(path=job.path, width=side, height=side, source_fps=fps, total_frames=frames,
                           indices=np.arange(frames, dtype=np.int64), timestamps=np.arange(frames) / fps,
                           duration=frames / fps, backend="synthetic", packets=PacketIndex(pts=[], gop_start=[]),
                           seed=seed, decode_us_per_frame=decode_us)


def make_jobs(n: int, video_tokens: int, side: int, decode_us: int, prefix: str = "v", first_seed: int = 0
              ) -> list[VideoJob]:
    frames = 2 * max(1, video_tokens // ((side // 28) ** 2))
    return [VideoJob(id=f"{prefix}{i:02d}", video=job_name(frames, side, decode_us, first_seed + i),
                     path=Path(job_name(frames, side, decode_us, first_seed + i)), questions=(QUESTION,), fps=2.0,
                     max_frames=frames, max_pixels=side * side) for i in range(n)]


def comparable(outcome: VideoOutcome) -> Any:
    """An outcome's answers without the clocks and the replica tag (what two runs must agree on)."""
    return outcome.error, [{k: v for k, v in a.items() if k not in CLOCK_KEYS} for a in outcome.answers]


def first_token(outcome: VideoOutcome) -> float | None:
    return outcome.answers[0]["timing"]["first_token_s"] if outcome.answers else None


def busy_seconds(outcome: VideoOutcome) -> float:
    """The replica's own time on a video: the first question's time to first token (prepare, vision
    tower, prefill) and every answer's decode and later questions' prefill; not the time it waited in
    the prefetch queue (which `outcome.seconds` includes)."""
    total = 0.0
    for i, a in enumerate(outcome.answers):
        total += (a["timing"]["first_token_s"] if i == 0 else a["prefill_seconds"]) + a["decode_seconds"]
    return total


def per_replica(outcomes: list[VideoOutcome]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for o in outcomes:
        device = o.answers[0]["replica"] if o.answers else "failed"
        row = out.setdefault(device, {"videos": 0, "busy_s": 0.0})
        row["videos"] += 1
        row["busy_s"] += busy_seconds(o)
    return out
