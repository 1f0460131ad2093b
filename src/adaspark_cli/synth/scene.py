"""A seeded description of one synthetic long-video QA scene (issue 3; in the spirit of V-NIAH / VNBench).

A scene is pure data: a textured or noisy background that drifts like a slow camera pan, distractor
shapes (squares and diamonds) that move and bounce all the time, and *needles*: shapes from a separate
set (star, heart, triangle, cross, ball) that are on screen only during short intervals, placed at a
controlled depth of the video. `render.py` draws it, `tasks.py` turns it into a question and its answer.

Everything is drawn from ``numpy.random.default_rng(seed)``; the same (task, n_frames, depth, seed, size)
gives the identical scene on any machine.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

TASKS = ("retrieval", "ordering", "counting", "motion")

# Colors of needles and distractors (RGB). Far apart in hue so that H.264's 4:2:0 chroma survives.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (225, 30, 30),
    "green": (30, 190, 50),
    "blue": (40, 80, 240),
    "yellow": (245, 225, 30),
    "purple": (160, 50, 210),
    "white": (250, 250, 250),
}
COLORS = tuple(PALETTE)
NEEDLE_SHAPES = ("star", "heart", "triangle", "cross", "ball")  # "ball" is drawn as a disc
DISTRACTOR_SHAPES = ("square", "diamond")  # never asked about, never a needle
DIRECTIONS = ("left", "right", "up", "down")
BACKGROUNDS = ("noise", "stripes", "checker", "blobs")
MIN_FRAMES, MAX_FRAMES = 16, 4096
MAX_COUNT = 4  # counting answers are 1..MAX_COUNT
# Training curriculum only: the largest share of the frames a needle may fill while the task still has its
# answer (ordering needs two needles in separate slots, counting at least two slots).
MAX_HOLD_SHARE = {"retrieval": 1.0, "ordering": 0.25, "counting": 0.25, "motion": 1.0}


@dataclass(frozen=True)
class Track:
    """An object on screen from frame ``start`` (inclusive) to ``end`` (exclusive).

    Position (top-left, pixels) at frame t is (x0 + vx * (t - start), y0 + vy * (t - start)); with
    ``bounce`` the path is reflected at the frame edges, otherwise it is clamped (needles never leave).
    """

    shape: str
    color: str
    size: int
    x0: float
    y0: float
    vx: float
    vy: float
    start: int
    end: int
    bounce: bool = False

    def visible(self, t: int) -> bool:
        return self.start <= t < self.end

    def position(self, t: int, width: int, height: int) -> tuple[int, int]:
        dt = t - self.start
        x, y = self.x0 + self.vx * dt, self.y0 + self.vy * dt
        span_x, span_y = width - self.size, height - self.size
        if self.bounce:
            x, y = _reflect(x, span_x), _reflect(y, span_y)
        return int(round(min(max(x, 0), span_x))), int(round(min(max(y, 0), span_y)))


@dataclass(frozen=True)
class Scene:
    """One video's content. ``needles`` are in time order; ``target`` names what the question is about."""

    task: str
    n_frames: int
    depth: float  # requested position of the (first) needle in [0, 1]
    seed: int
    width: int
    height: int
    fps: float
    background: str
    bg_level: int  # mean gray of the background
    bg_contrast: int
    drift: tuple[float, float]  # background offset per frame (dx, dy) in pixels: a slow camera pan
    distractors: tuple[Track, ...]
    needles: tuple[Track, ...]
    target: tuple[str, ...] = field(default=())  # shapes the question names
    hold: int | None = None  # frames a needle stays on screen, where a training curriculum overrides the default
    clutter: bool = True  # distractor shapes and decoy needles (a training curriculum may leave them out)

    @property
    def needle_frames(self) -> int:
        """Frames a retrieval/ordering/counting needle stays on screen."""
        return self.hold or needle_duration(self.n_frames)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scene:
        d = dict(data)
        d["drift"] = tuple(d["drift"])
        d["target"] = tuple(d["target"])
        d["distractors"] = tuple(Track(**t) for t in d["distractors"])
        d["needles"] = tuple(Track(**t) for t in d["needles"])
        return cls(**d)


def _reflect(x: float, span: float) -> float:
    if span <= 0:
        return 0.0
    period = 2 * span
    x = math.fmod(x, period)
    if x < 0:
        x += period
    return period - x if x > span else x


def needle_duration(n_frames: int) -> int:
    """A needle is on screen for n/64 frames, at least 2 (one frame pair): 2 at 16-128, 16 at 1024."""
    return max(2, n_frames // 64)


def motion_duration(n_frames: int) -> int:
    """The moving ball stays longer so that its direction is visible: n/16 frames, at least 4."""
    return max(4, n_frames // 16)


def max_hold(task: str, n_frames: int) -> int:
    """The longest even ``hold`` `sample_scene` takes for a task and length (see `MAX_HOLD_SHARE`)."""
    return max(2, int(MAX_HOLD_SHARE[task] * n_frames) // 2 * 2)


def hold_for_share(task: str, n_frames: int, share: float) -> int | None:
    """The even hold that fills about ``share`` of the frames, capped by `max_hold`; None where that is no
    longer than the default duration (the scene is then drawn as in a held-out suite)."""
    hold = min(int(round(share * n_frames / 2)) * 2, max_hold(task, n_frames))
    default = motion_duration(n_frames) if task == "motion" else needle_duration(n_frames)
    return hold if hold > default else None


def check_args(task: str, n_frames: int, depth: float, size: tuple[int, int]) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")
    if not (isinstance(n_frames, (int, np.integer)) and MIN_FRAMES <= n_frames <= MAX_FRAMES):
        raise ValueError(f"n_frames must be an integer in {MIN_FRAMES}..{MAX_FRAMES}, got {n_frames!r}")
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth!r}")
    w, h = size
    if w < 56 or h < 56 or w % 28 or h % 28:
        raise ValueError(f"frame size must be multiples of 28 px, at least 56, got {w}x{h}")


def sample_scene(
    task: str, n_frames: int, depth: float, seed: int, *, size: tuple[int, int] = (112, 112), fps: float = 2.0,
    hold: int | None = None, clutter: bool = True,
) -> Scene:
    """Draw the scene of one item. ``size`` is (width, height); ``depth`` places the (first) needle.

    Training curriculum only (held-out suites never set them): ``hold`` keeps needles on screen this many
    frames (an even number up to `max_hold`: the whole video for retrieval and motion) instead of
    `needle_duration`, the moving ball at least as long; ``clutter=False`` leaves out the distractor shapes
    and the decoy needles. Both make where the answer is in the video easier to find, which a model
    trained from scratch must learn first (docs/training.md). With the defaults the random draws, and so
    the scene, are those of a held-out item."""
    check_args(task, n_frames, depth, size)
    limit = max_hold(task, n_frames)
    if hold is not None and not (isinstance(hold, int) and 2 <= hold <= limit and hold % 2 == 0):
        raise ValueError(f"hold must be an even number of frames in 2..{limit} for {task} at {n_frames} frames, "
                         f"got {hold!r}")
    rng = np.random.default_rng([seed, TASKS.index(task), n_frames, int(round(depth * 1000))])
    width, height = size
    background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    bg_level = int(rng.integers(70, 150))
    bg_contrast = int(rng.integers(15, 45))
    angle = rng.uniform(0, 2 * math.pi)
    speed = rng.uniform(0.1, 0.6)
    drift = (round(speed * math.cos(angle), 4), round(speed * math.sin(angle), 4))

    distractors = []
    for _ in range(int(rng.integers(2, 5))):
        s = int(rng.integers(12, 20))
        distractors.append(
            Track(
                shape=DISTRACTOR_SHAPES[int(rng.integers(len(DISTRACTOR_SHAPES)))],
                color=COLORS[int(rng.integers(len(COLORS)))],
                size=s,
                x0=float(rng.integers(0, width - s)),
                y0=float(rng.integers(0, height - s)),
                vx=round(float(rng.uniform(-3, 3)), 3),
                vy=round(float(rng.uniform(-3, 3)), 3),
                start=0,
                end=n_frames,
                bounce=True,
            )
        )

    dur = hold or needle_duration(n_frames)
    slots = n_frames // (2 * dur)  # slot k covers frames [2k*dur, 2(k+1)*dur); a needle fills its first half

    def slot_start(k: int) -> int:
        # jitter inside the slot, leaving at least one whole empty frame pair before the next slot's needle
        return 2 * k * dur + (0 if dur == 2 else int(rng.integers(0, dur // 2 + 1)))

    def static(shape: str, color: str, start: int, length: int) -> Track:
        s = int(rng.integers(26, 33))
        return Track(shape, color, s, float(rng.integers(0, width - s)), float(rng.integers(0, height - s)),
                     0.0, 0.0, start, start + length)

    def others(n: int, exclude: set[int]) -> list[int]:
        free = [k for k in range(slots) if k not in exclude]
        return [int(k) for k in rng.choice(free, size=min(n, len(free)), replace=False)]

    needles: list[Track] = []
    target: tuple[str, ...]
    shapes = [str(x) for x in rng.permutation(NEEDLE_SHAPES)]
    colors = [str(x) for x in rng.permutation(COLORS)]
    if task == "retrieval" and slots == 0:  # a hold of over half the video: one needle, no room for decoys
        needles.append(static(shapes[0], colors[0], int(round(depth * (n_frames - dur) / 2)) * 2, dur))
        target = (shapes[0],)
    elif task == "retrieval":
        first = int(round(depth * (slots - 1)))
        needles.append(static(shapes[0], colors[0], slot_start(first), dur))
        for i, k in enumerate(others(int(rng.integers(0, 3)), {first})):  # decoys: other shapes, other colors
            needles.append(static(shapes[1 + i], colors[1 + i], slot_start(k), dur))
        target = (shapes[0],)
    elif task == "ordering":
        pair = [s for s in shapes if s != "ball"][:2]
        first = int(round(depth * (slots - 2)))
        second = int(rng.integers(first + 1, slots))
        needles.append(static(pair[0], colors[0], slot_start(first), dur))
        needles.append(static(pair[1], colors[1], slot_start(second), dur))
        target = tuple(pair) if rng.random() < 0.5 else (pair[1], pair[0])  # the order the question names them
    elif task == "counting":
        decoy = int(rng.integers(0, 2)) if slots > MAX_COUNT else 0
        count = int(rng.integers(1, min(MAX_COUNT, slots - decoy) + 1))
        first = int(round(depth * (slots - count - decoy)))
        later = [int(k) for k in rng.choice(np.arange(first + 1, slots), size=count - 1 + decoy, replace=False)]
        color = colors[0]
        for k in [first, *later[: count - 1]]:
            needles.append(static(shapes[0], color, slot_start(k), dur))
        for k in later[count - 1 :]:
            needles.append(static(shapes[1], colors[1], slot_start(k), dur))
        target = (shapes[0],)
    else:  # motion: the ball crosses the frame in one direction
        mdur = max(motion_duration(n_frames), hold or 0)
        start = int(round(depth * (n_frames - mdur)))
        s = int(rng.integers(24, 31))
        direction = DIRECTIONS[int(rng.integers(len(DIRECTIONS)))]
        margin = 4
        travel_x, travel_y = width - s - 2 * margin, height - s - 2 * margin
        step = 1.0 / max(1, mdur - 1)
        cx, cy = float(rng.integers(margin, width - s - margin)), float(rng.integers(margin, height - s - margin))
        if direction == "left":
            x0, y0, vx, vy = float(width - s - margin), cy, -travel_x * step, 0.0
        elif direction == "right":
            x0, y0, vx, vy = float(margin), cy, travel_x * step, 0.0
        elif direction == "up":
            x0, y0, vx, vy = cx, float(height - s - margin), 0.0, -travel_y * step
        else:
            x0, y0, vx, vy = cx, float(margin), 0.0, travel_y * step
        needles.append(Track("ball", colors[0], s, x0, y0, round(vx, 4), round(vy, 4), start, start + mdur))
        target = ("ball",)
    if not clutter:
        distractors = []
        needles = [t for t in needles if t.shape in target]
    needles.sort(key=lambda t: t.start)
    return Scene(
        task=task, n_frames=int(n_frames), depth=float(depth), seed=int(seed), width=width, height=height,
        fps=float(fps), background=background, bg_level=bg_level, bg_contrast=bg_contrast, drift=drift,
        distractors=tuple(distractors), needles=tuple(needles), target=target, hold=hold,
        clutter=clutter,
    )
