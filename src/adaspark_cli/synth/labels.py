"""Dense training targets read off a drawn scene: what each video token shows, and what the video has shown so far.

Training only (`adaspark_cli.train.aux`): a model trained from scratch on one answer per video gets a
few bits of signal per 2K-token video. These targets give it signal at every token, computed from the
same drawing the frames come from (the sprites and positions `render_frames` pastes), never from the
question; tests/test_synth.py checks them against `render_frames(..., with_ids=True)`.

- ``patch_shape`` / ``patch_color`` (one per video token, i.e. per 2 frames x 28 x 28 px): the needle
  shape covering most of that token's pixels and its color (0: no needle, or under `MIN_PIXELS`).
- ``state`` (one row per frame pair, as of the end of that pair): for each needle shape, how many
  separate appearances so far (capped at `MAX_COUNT`), the color of its first appearance, the rank of
  its first appearance among the needle shapes seen (capped at `MAX_RANK`); and the moving ball's
  direction once it has been on screen for two frames. The four questions are read off the last row:
  retrieval (color), ordering (ranks), counting (count), motion (direction).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .render import sprite
from .scene import COLORS, DIRECTIONS, MAX_COUNT, NEEDLE_SHAPES, Scene

TOKEN_PX = 28  # one video token: 2x2 patches of 14 px after the 2x2 merge
TEMPORAL = 2  # frames per video token (temporal_patch_size)
MIN_PIXELS = 40  # needle pixels (over both frames) for a token to count as showing it
MAX_RANK = 3
PATCH_CLASSES = 1 + len(NEEDLE_SHAPES)
COLOR_CLASSES = 1 + len(COLORS)
# the state row: per shape (count 0..MAX_COUNT, first color 0..6, rank 0..MAX_RANK), then the ball's direction
STATE_FIELDS: tuple[tuple[str, int], ...] = (
    *((f"count_{s}", MAX_COUNT + 1) for s in NEEDLE_SHAPES),
    *((f"color_{s}", COLOR_CLASSES) for s in NEEDLE_SHAPES),
    *((f"rank_{s}", MAX_RANK + 1) for s in NEEDLE_SHAPES),
    ("direction", 1 + len(DIRECTIONS)),
)


@dataclass(frozen=True)
class SceneLabels:
    patch_shape: np.ndarray  # (T', H', W') int64, video tokens in the model's order (pair, row, column)
    patch_color: np.ndarray  # (T', H', W') int64
    state: np.ndarray  # (T', len(STATE_FIELDS)) int64


def scene_labels(scene: Scene) -> SceneLabels:
    """The targets of a scene, from the needles as `render_frames` draws them (same sprites, positions and
    stacking: needles go on top of distractors, later needles over earlier ones). An odd last frame counts
    twice, as the processor repeats it to fill the last pair."""
    n, h, w = scene.n_frames, scene.height, scene.width
    if h % TOKEN_PX or w % TOKEN_PX:
        raise ValueError(f"a {w}x{h} scene does not tile into {TOKEN_PX}x{TOKEN_PX} px tokens")
    t, gh, gw = -(-n // TEMPORAL), h // TOKEN_PX, w // TOKEN_PX
    shape_px = np.zeros((t, gh, gw, PATCH_CLASSES), dtype=np.int64)  # needle pixels per token and class
    color_px = np.zeros((t, gh, gw, COLOR_CLASSES), dtype=np.int64)
    cell_rows, cell_cols = np.arange(h) // TOKEN_PX, np.arange(w) // TOKEN_PX
    for slot in range(t * TEMPORAL):
        f = min(slot, n - 1)
        visible = [nd for nd in scene.needles if nd.visible(f)]
        if not visible:
            continue
        canvas = np.full((h, w), -1, dtype=np.int64)  # index into `visible`, painted in drawing order
        for i, nd in enumerate(visible):
            x, y = nd.position(f, w, h)
            canvas[y : y + nd.size, x : x + nd.size][sprite(nd.shape, nd.size)] = i
        ys, xs = np.nonzero(canvas >= 0)
        who = canvas[ys, xs]
        shapes = np.array([1 + NEEDLE_SHAPES.index(nd.shape) for nd in visible])[who]
        colors = np.array([1 + COLORS.index(nd.color) for nd in visible])[who]
        np.add.at(shape_px[slot // TEMPORAL], (cell_rows[ys], cell_cols[xs], shapes), 1)
        np.add.at(color_px[slot // TEMPORAL], (cell_rows[ys], cell_cols[xs], colors), 1)
    return SceneLabels(_majority(shape_px), _majority(color_px), state_labels(scene))


def _majority(pixels: np.ndarray) -> np.ndarray:
    """(T', H', W', classes) pixel counts -> the most frequent non-zero class, 0 under MIN_PIXELS."""
    counts = pixels[..., 1:]
    best = counts.argmax(axis=-1)
    top = np.take_along_axis(counts, best[..., None], axis=-1)[..., 0]
    return np.where(top >= MIN_PIXELS, best + 1, 0).astype(np.int64)


def state_labels(scene: Scene) -> np.ndarray:
    """(T', len(STATE_FIELDS)) int64: the state row after each frame pair (see the module docstring)."""
    pairs = -(-scene.n_frames // TEMPORAL)
    ends = np.minimum((np.arange(pairs) + 1) * TEMPORAL, scene.n_frames)  # frames seen after each pair: [0, end)
    k = len(NEEDLE_SHAPES)
    out = np.zeros((pairs, len(STATE_FIELDS)), dtype=np.int64)
    first_seen = {}
    for s in NEEDLE_SHAPES:
        onsets = [n.start for n in scene.needles if n.shape == s]
        if onsets:
            first_seen[s] = min(onsets)
    for j, s in enumerate(NEEDLE_SHAPES):
        tracks = sorted((n for n in scene.needles if n.shape == s), key=lambda n: n.start)
        if not tracks:
            continue
        starts = np.array([n.start for n in tracks])
        out[:, j] = np.minimum((starts[None, :] < ends[:, None]).sum(axis=1), MAX_COUNT)
        seen = starts[0] < ends
        out[:, k + j] = np.where(seen, 1 + COLORS.index(tracks[0].color), 0)
        # rank: 1 + how many other shapes were first seen strictly earlier (ties share a rank)
        earlier = sum(1 for o, t0 in first_seen.items() if o != s and t0 < starts[0])
        out[:, 2 * k + j] = np.where(seen, min(1 + earlier, MAX_RANK), 0)
    out[:, 3 * k] = _direction(scene, ends)
    return out


def _direction(scene: Scene, ends: np.ndarray) -> np.ndarray:
    """The moving ball's direction (1 + DIRECTIONS index) once two of its frames have been seen, else 0."""
    moving = [n for n in scene.needles if n.shape == "ball" and (n.vx or n.vy)]
    if not moving:
        return np.zeros(len(ends), dtype=np.int64)
    (ball,) = moving
    if abs(ball.vx) >= abs(ball.vy):
        d = "right" if ball.vx > 0 else "left"
    else:
        d = "down" if ball.vy > 0 else "up"
    return np.where(ends >= ball.start + 2, 1 + DIRECTIONS.index(d), 0).astype(np.int64)
