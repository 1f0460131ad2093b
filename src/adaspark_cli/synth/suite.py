"""Generate a held-out suite: items (task x length x depth), H.264 videos and a JSON manifest.

The videos are ordinary .mp4 files (libx264, yuv420p, 2 fps by default), so `adaspark ask` and
`adaspark eval` read them through the same `decode_video` path as any user video. Items are a pure
function of (seed, grid): the same call writes the same manifest and the same frames.

``depth`` is where in the video the (first) needle sits, in [0, 1]: the retrieval target, the first of
the two ordering needles, the first appearance of the counted shape, the start of the ball's motion.

Manifest (``suite.json``)::

    {"format": "adaspark-synth-suite", "version": 1, "seed": 0, "fps": 2.0, "size": [112, 112],
     "items": [{"id": "retrieval-16-d0.50-0", "task": "retrieval", "n_frames": 16, "depth": 0.5,
                "seed": 123, "question": "What color was the star?", "answer": "red",
                "video": "videos/retrieval-16-d0.50-0.mp4"}, ...]}
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from .encode import encode_frames
from .render import render_frames
from .scene import TASKS, Scene, hold_for_share, sample_scene
from .tasks import question_answer

FORMAT = "adaspark-synth-suite"
VERSION = 1
MANIFEST = "suite.json"
DEFAULT_LENGTHS = (16, 64, 256, 1024)
DEFAULT_DEPTHS = (0.1, 0.5, 0.9)
DEFAULT_FPS = 2.0
DEFAULT_SIZE = (112, 112)


@dataclass(frozen=True)
class SuiteItem:
    id: str
    task: str
    n_frames: int
    depth: float
    seed: int
    question: str
    answer: str
    video: str = ""  # path relative to the manifest's folder ("" until written)

    def scene(self, *, size: tuple[int, int] = DEFAULT_SIZE, fps: float = DEFAULT_FPS) -> Scene:
        return sample_scene(self.task, self.n_frames, self.depth, self.seed, size=size, fps=fps)


@dataclass(frozen=True)
class Suite:
    seed: int
    fps: float
    size: tuple[int, int]
    items: tuple[SuiteItem, ...]
    root: Path | None = None  # folder of the manifest, when read from or written to disk

    def video_path(self, item: SuiteItem) -> Path:
        if self.root is None or not item.video:
            raise ValueError(f"item {item.id} has no video on disk; write the suite first")
        return self.root / item.video

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "seed": self.seed,
            "fps": self.fps,
            "size": list(self.size),
            "items": [asdict(i) for i in self.items],
        }


def item_seed(seed: int, index: int) -> int:
    return int(np.random.default_rng([seed, index, 0x5EED]).integers(0, 2**31 - 1))


def make_suite(
    seed: int = 0,
    *,
    tasks: Sequence[str] = TASKS,
    lengths: Sequence[int] = DEFAULT_LENGTHS,
    depths: Sequence[float] = DEFAULT_DEPTHS,
    per_cell: int = 1,
    size: tuple[int, int] = DEFAULT_SIZE,
    fps: float = DEFAULT_FPS,
) -> Suite:
    """Items for every (task, length, depth) cell, ``per_cell`` each; no files are written."""
    for t in tasks:
        if t not in TASKS:
            raise ValueError(f"unknown task {t!r}; use one of {', '.join(TASKS)}")
    if per_cell < 1:
        raise ValueError(f"per_cell must be at least 1, got {per_cell}")
    items = []
    index = 0
    for n in lengths:
        for d in depths:
            for task in tasks:
                for k in range(per_cell):
                    s = item_seed(seed, index)
                    index += 1
                    scene = sample_scene(task, int(n), float(d), s, size=size, fps=fps)
                    q, a = question_answer(scene)
                    items.append(SuiteItem(f"{task}-{n}-d{d:.2f}-{k}", task, int(n), float(d), s, q, a))
    return Suite(seed=seed, fps=float(fps), size=tuple(size), items=tuple(items))  # type: ignore[arg-type]


def write_video(path: Path, frames: np.ndarray, fps: float, *, crf: int = 16) -> None:
    """Write (N, H, W, 3) uint8 RGB frames as H.264 (libx264, yuv420p) with one frame per 1/fps s.

    One encoder thread keeps the bytes identical from run to run."""
    encode_frames(path, frames, rate=Fraction(fps).limit_denominator(1000), width=int(frames.shape[2]),
                  height=int(frames.shape[1]), options={"crf": str(crf), "preset": "medium", "threads": "1"},
                  threads=1, index_pts=False)


def write_suite(
    suite: Suite, out_dir: str | Path, *, progress: Callable[[int, int, SuiteItem], None] | None = None,
    workers: int = 1,
) -> Suite:
    """Render and encode every item into ``out_dir/videos/`` and write ``out_dir/suite.json``.

    ``workers`` > 1 renders and encodes items in that many processes (the same items and drawn frames
    either way; libx264's output bytes can differ between runs on some CPUs, its decoded frames do not
    move the answers); ``progress`` then reports items as they finish."""
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    out = Path(out_dir)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    jobs = [(item, out / f"videos/{item.id}.mp4", suite.size, suite.fps) for item in suite.items]
    if workers == 1 or len(jobs) < 2:
        for i, job in enumerate(jobs):
            _write_item(*job)
            if progress is not None:
                progress(i + 1, len(jobs), job[0])
    else:
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
            futures = {pool.submit(_write_item, *job): job[0] for job in jobs}
            for done, future in enumerate(as_completed(futures), start=1):
                future.result()
                if progress is not None:
                    progress(done, len(jobs), futures[future])
    written = tuple(SuiteItem(**{**asdict(item), "video": f"videos/{item.id}.mp4"}) for item in suite.items)
    result = Suite(suite.seed, suite.fps, suite.size, written, root=out)
    (out / MANIFEST).write_text(json.dumps(result.to_json(), indent=1) + "\n", encoding="utf-8")
    return result


def _write_item(item: SuiteItem, path: Path, size: tuple[int, int], fps: float) -> None:
    write_video(path, render_frames(item.scene(size=size, fps=fps)), fps)  # type: ignore[arg-type]


def read_suite(path: str | Path) -> Suite:
    """Read a manifest (the file, or the folder holding ``suite.json``). Raises ValueError if malformed."""
    p = Path(path)
    if p.is_dir():
        p = p / MANIFEST
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"no suite manifest at {p}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{p} is not JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{p} is not an adaspark suite manifest (no \"format\": \"{FORMAT}\")")
    if data.get("version") != VERSION:
        raise ValueError(f"{p} has suite version {data.get('version')!r}; this adaspark reads version {VERSION}")
    try:
        items = tuple(SuiteItem(**i) for i in data["items"])
        return Suite(int(data["seed"]), float(data["fps"]), tuple(data["size"]), items, root=p.parent)  # type: ignore[arg-type]
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{p} has a malformed item list ({exc})") from None


# The two needle shapes the first dense checkpoint of issue 17 took for each other (docs/training.md)
LOOK_ALIKE = ("heart", "ball")
LOOK_ALIKE_DRAWS = 200


def iter_training_items(
    seed: int, *, lengths: Iterable[int], tasks: Sequence[str] = TASKS, size: tuple[int, int] = DEFAULT_SIZE,
    needle_share: float | Sequence[float] | None = None, clutter: bool = True, look_alike: float = 0.0,
) -> Iterable[tuple[Scene, str, str]]:
    """An endless stream of (scene, question, answer) with random depth, for training (no files).

    Curriculum knobs (`sample_scene`): ``needle_share`` keeps needles on screen for about that share of
    each video's frames (capped per task by `MAX_HOLD_SHARE`; several values: each item draws one, 0 the
    held-out duration); ``clutter=False`` drops distractors and decoys. ``look_alike`` redraws that share
    of the retrieval items until both `LOOK_ALIKE` shapes are in the video and the question asks for one
    of them (hard negatives; from a stream of its own, so 0 leaves every other draw as it was). The
    defaults give the held-out distribution.

    Seeds live in a range (2**31 + ...) that `make_suite`'s item seeds never reach, so training
    and held-out items never share a scene."""
    if look_alike > 0 and not clutter:
        raise ValueError("look_alike needs clutter: without decoys a video shows one needle")
    rng = np.random.default_rng([seed, 0x7EA1])
    hard = np.random.default_rng([seed, 0x4A2D])
    lengths = list(lengths)
    shares = [needle_share] if isinstance(needle_share, (int, float)) else list(needle_share or [])
    while True:
        task = tasks[int(rng.integers(len(tasks)))]
        n = int(lengths[int(rng.integers(len(lengths)))])
        depth = float(np.round(rng.uniform(0, 1), 3))
        s = 2**31 + int(rng.integers(0, 2**31))
        share = float(rng.choice(shares)) if shares else 0.0
        hold = hold_for_share(task, n, share) if share else None
        scene = sample_scene(task, n, depth, s, size=size, hold=hold, clutter=clutter)
        if task == "retrieval" and look_alike > 0 and hard.random() < look_alike:
            # about one draw in ten qualifies (sample_scene is cheap); a hold too long for decoys never does
            for _ in range(LOOK_ALIKE_DRAWS):
                if _shows_look_alikes(scene):
                    break
                scene = sample_scene(task, n, depth, 2**31 + int(hard.integers(0, 2**31)), size=size, hold=hold,
                                     clutter=clutter)
        q, a = question_answer(scene)
        yield scene, q, a


def _shows_look_alikes(scene: Scene) -> bool:
    shown = {t.shape for t in scene.needles}
    return set(LOOK_ALIKE) <= shown and scene.target[0] in LOOK_ALIKE
