"""Synthetic long-video QA generator: determinism, answers recomputed from the drawn pixels, suites on disk."""

from __future__ import annotations

import json

import numpy as np
import pytest

from adaspark_cli.synth import (
    ANSWER_VOCAB,
    COLORS,
    TASKS,
    make_suite,
    needle_duration,
    normalize_answer,
    question_answer,
    read_suite,
    render_frames,
    sample_scene,
    write_suite,
)
from adaspark_cli.synth.scene import MAX_HOLD_SHARE, PALETTE, hold_for_share, max_hold, motion_duration
from adaspark_cli.synth.suite import iter_training_items
from adaspark_cli.video import decode_video


def _shape_ids(scene, shape):
    base = len(scene.distractors)
    return [base + i for i, n in enumerate(scene.needles) if n.shape == shape]


def _visible(ids, obj_ids):
    """(N,) bool: frames where any pixel of one of obj_ids is drawn."""
    return np.isin(ids, obj_ids).reshape(ids.shape[0], -1).any(axis=1)


def _runs(flags):
    """Number of maximal runs of True."""
    f = np.concatenate([[False], flags])
    return int(((~f[:-1]) & f[1:]).sum())


def answer_from_pixels(scene) -> str:
    """Recompute the answer from the rendered frames and the object-id map alone."""
    frames, ids = render_frames(scene, with_ids=True)
    if scene.task == "retrieval":
        mask = np.isin(ids, _shape_ids(scene, scene.target[0]))
        rgb = frames[mask].astype(np.int64)
        mean = rgb.mean(axis=0)
        return min(COLORS, key=lambda c: float(np.sum((np.array(PALETTE[c]) - mean) ** 2)))
    if scene.task == "ordering":
        first = {s: int(np.argmax(_visible(ids, _shape_ids(scene, s)))) for s in scene.target}
        return min(first, key=first.__getitem__)
    if scene.task == "counting":
        return str(_runs(_visible(ids, _shape_ids(scene, scene.target[0]))))
    ball = _shape_ids(scene, "ball")
    frames_on = np.nonzero(_visible(ids, ball))[0]

    def centroid(t):
        ys, xs = np.nonzero(np.isin(ids[t], ball))
        return xs.mean(), ys.mean()

    (x0, y0), (x1, y1) = centroid(frames_on[0]), centroid(frames_on[-1])
    dx, dy = x1 - x0, y1 - y0
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("n_frames", [16, 64, 128])
def test_answer_recomputed_from_the_drawn_scene(task, n_frames):
    for seed in range(6):
        for depth in (0.0, 0.5, 1.0):
            scene = sample_scene(task, n_frames, depth, seed)
            q, a = question_answer(scene)
            assert a in ANSWER_VOCAB
            assert q.endswith(("?", ".")) and scene.target[0] in q
            assert answer_from_pixels(scene) == a, (task, n_frames, depth, seed, q, a)


def test_same_seed_same_scene_and_frames():
    for task in TASKS:
        a, b = sample_scene(task, 64, 0.3, 42), sample_scene(task, 64, 0.3, 42)
        assert a == b
        np.testing.assert_array_equal(render_frames(a), render_frames(b))
        assert sample_scene(task, 64, 0.3, 43) != a


def test_scene_round_trips_through_json():
    scene = sample_scene("ordering", 256, 0.7, 5)
    assert type(scene).from_dict(json.loads(json.dumps(scene.to_dict()))) == scene


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("depth", [0.0, 0.25, 0.5, 0.75, 1.0])
def test_long_scene_depth_is_controlled(task, depth):
    """1024 frames: the (first) needle starts at the requested depth (within one slot); only a window is drawn."""
    n = 1024
    scene = sample_scene(task, n, depth, 9)
    first = scene.needles[0]
    if task == "motion":
        assert abs(first.start - depth * (n - motion_duration(n))) <= 1
    elif task == "retrieval":
        target = [x for x in scene.needles if x.shape == scene.target[0]][0]
        assert abs(target.start / n - depth) <= 2 * 2 * needle_duration(n) / n + 1e-9
    else:
        assert first.start / n <= depth + 4 * 2 * needle_duration(n) / n
    frames = render_frames(scene, first.start, first.end)
    assert frames.shape == (first.end - first.start, 112, 112, 3)


def test_counting_appearances_are_separated_by_an_empty_frame_pair():
    for seed in range(20):
        scene = sample_scene("counting", 64, 0.2, seed)
        spans = sorted((n.start, n.end) for n in scene.needles)
        for (_, end), (start, _) in zip(spans, spans[1:]):
            empty = set(range(end, start))
            assert any(f in empty and f + 1 in empty for f in range(0, 64, 2)), spans


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("share", [1.0, 0.5, 0.25])
def test_curriculum_scenes_keep_their_answers(task, share):
    """A longer hold and no clutter change only how easy the needle is to find: the answer recomputed
    from the pixels still agrees, the needle stays on screen as long as asked, nothing else is drawn."""
    for n in (16, 32, 64):
        hold = hold_for_share(task, n, share)
        assert hold is None or (hold % 2 == 0 and hold <= max_hold(task, n) <= MAX_HOLD_SHARE[task] * n)
        for seed in range(4):
            for depth in (0.0, 0.6, 1.0):
                scene = sample_scene(task, n, depth, seed, hold=hold, clutter=False)
                assert scene.distractors == () and all(t.shape in scene.target for t in scene.needles)
                if hold is not None and task != "motion":
                    assert all(t.end - t.start == hold for t in scene.needles)
                assert all(0 <= t.start < t.end <= n for t in scene.needles)
                assert answer_from_pixels(scene) == question_answer(scene)[1], (n, depth, seed, hold)
                assert type(scene).from_dict(json.loads(json.dumps(scene.to_dict()))) == scene


def test_retrieval_needle_can_fill_the_whole_video():
    scene = sample_scene("retrieval", 32, 0.4, 3, hold=32)
    (needle,) = [t for t in scene.needles if t.shape == scene.target[0]]
    assert (needle.start, needle.end) == (0, 32)
    assert _visible(render_frames(scene, with_ids=True)[1], _shape_ids(scene, scene.target[0])).all()


def test_training_stream_defaults_are_the_held_out_distribution():
    import itertools

    plain = [s for s, _, _ in itertools.islice(iter_training_items(5, lengths=[16, 32]), 12)]
    assert all(s.hold is None and s.clutter for s in plain)
    mixed = [s for s, _, _ in itertools.islice(iter_training_items(5, lengths=[32], needle_share=(1.0, 0.0)), 80)]
    assert {s.hold is None for s in mixed} == {True, False}  # each item draws a share: both kinds occur
    with pytest.raises(ValueError, match="hold must be"):
        sample_scene("ordering", 32, 0.5, 0, hold=16)  # two needles cannot each fill half the video


def test_look_alike_retrieval_shows_both_shapes_and_leaves_the_rest_alone():
    import itertools

    from adaspark_cli.synth.suite import LOOK_ALIKE

    def stream(share):
        return list(itertools.islice(iter_training_items(8, lengths=[32, 64], look_alike=share), 120))

    plain, hard = stream(0.0), stream(1.0)
    plain_retrieval = [s for s, _, _ in plain if s.task == "retrieval"]
    hard_retrieval = [s for s, _, _ in hard if s.task == "retrieval"]
    assert len(hard_retrieval) > 20
    assert all(set(LOOK_ALIKE) <= {t.shape for t in s.needles} and s.target[0] in LOOK_ALIKE for s in hard_retrieval)
    assert sum(set(LOOK_ALIKE) <= {t.shape for t in s.needles} for s in plain_retrieval) < len(plain_retrieval) / 3
    # the other tasks' items, and every item's length and depth, are those of the plain stream
    assert [(s.task, s.n_frames, s.depth) for s, _, _ in hard] == [(s.task, s.n_frames, s.depth) for s, _, _ in plain]
    assert [s for s, _, _ in hard if s.task != "retrieval"] == [s for s, _, _ in plain if s.task != "retrieval"]
    for scene, q, a in hard[:40]:  # answers still come from the drawn scene
        assert (q, a) == question_answer(scene)
    with pytest.raises(ValueError, match="needs clutter"):
        next(iter(iter_training_items(8, lengths=[32], look_alike=0.5, clutter=False)))


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="unknown task"):
        sample_scene("colour", 16, 0.5, 0)
    with pytest.raises(ValueError, match="n_frames"):
        sample_scene("retrieval", 8, 0.5, 0)
    with pytest.raises(ValueError, match="depth"):
        sample_scene("retrieval", 16, 1.5, 0)


def test_normalize_answer():
    assert normalize_answer("The STAR.") == "star"
    assert normalize_answer("It moved to the left") == "left"
    assert normalize_answer(" Three ") == "3"
    assert normalize_answer("circle") == "ball"
    assert normalize_answer("") == ""


def test_suite_grid_and_every_task_present():
    suite = make_suite(3, lengths=(16, 1024), depths=(0.1, 0.9), per_cell=2)
    assert len(suite.items) == 4 * 2 * 2 * 2
    assert {i.task for i in suite.items} == set(TASKS)
    assert {i.n_frames for i in suite.items} == {16, 1024}
    assert len({i.id for i in suite.items}) == len(suite.items)
    assert make_suite(3, lengths=(16, 1024), depths=(0.1, 0.9), per_cell=2) == suite
    assert make_suite(4, lengths=(16, 1024), depths=(0.1, 0.9), per_cell=2) != suite


def test_written_suite_is_deterministic_and_decodes(tmp_path):
    suite = make_suite(1, lengths=(16,), depths=(0.5,))
    a = write_suite(suite, tmp_path / "a")
    b = write_suite(suite, tmp_path / "b")
    assert (tmp_path / "a" / "suite.json").read_text() == (tmp_path / "b" / "suite.json").read_text()
    back = read_suite(tmp_path / "a")
    assert back.items == a.items and back.items[0].video.endswith(".mp4")
    for item in a.items:
        # the drawn frames are the deterministic part; libx264's bytes are not (they differ from run to
        # run on AVX-512 CPUs), so each written file is checked against the drawn frames instead
        assert np.array_equal(render_frames(item.scene()), render_frames(b.items[a.items.index(item)].scene()))
        _assert_encodes(a.video_path(item), render_frames(item.scene()), suite.fps)
        _assert_encodes(b.video_path(item), render_frames(item.scene()), suite.fps)


def _assert_encodes(path, drawn: np.ndarray, fps: float) -> None:
    """The file decodes to the drawn frames (H.264 at crf 16: a few levels off on average)."""
    video = decode_video(path, fps=fps, max_frames=1024, backend="pyav")
    assert video.frames.shape == drawn.shape
    err = np.abs(video.frames.astype(np.int16) - drawn.astype(np.int16))
    assert err.mean() < 4.0


def test_read_suite_errors(tmp_path):
    with pytest.raises(ValueError, match="no suite manifest"):
        read_suite(tmp_path)
    (tmp_path / "suite.json").write_text("{\"format\": \"other\"}")
    with pytest.raises(ValueError, match="not an adaspark suite"):
        read_suite(tmp_path)


def test_parallel_suite_writing_gives_the_same_files(tmp_path):
    suite = make_suite(2, lengths=(16,), depths=(0.5,), tasks=("retrieval", "motion", "counting"))
    seen = []
    a = write_suite(suite, tmp_path / "a")
    b = write_suite(suite, tmp_path / "b", workers=2, progress=lambda done, total, item: seen.append((done, total, item.id)))
    assert (tmp_path / "a" / "suite.json").read_text() == (tmp_path / "b" / "suite.json").read_text()
    assert a.items == b.items
    for item in b.items:  # each worker wrote its own item's video, not another's
        _assert_encodes(b.video_path(item), render_frames(item.scene()), suite.fps)
    assert [d for d, _, _ in seen] == [1, 2, 3] and {i for _, _, i in seen} == {item.id for item in suite.items}
    with pytest.raises(ValueError, match="workers"):
        write_suite(suite, tmp_path / "c", workers=0)


def _labels_from_ids(scene, ids):
    """Per-token majority needle shape and color recomputed from the drawn object-id map."""
    from adaspark_cli.synth.labels import MIN_PIXELS, TOKEN_PX
    from adaspark_cli.synth.scene import NEEDLE_SHAPES

    base = len(scene.distractors)
    n, h, w = ids.shape
    shape = np.zeros((n // 2, h // TOKEN_PX, w // TOKEN_PX), dtype=np.int64)
    color = np.zeros_like(shape)
    for t in range(n // 2):
        for r in range(h // TOKEN_PX):
            for c in range(w // TOKEN_PX):
                cell = ids[2 * t : 2 * t + 2, r * TOKEN_PX : (r + 1) * TOKEN_PX, c * TOKEN_PX : (c + 1) * TOKEN_PX]
                for key, out, names in ((lambda nd: nd.shape, shape, NEEDLE_SHAPES), (lambda nd: nd.color, color, COLORS)):
                    px = {name: 0 for name in names}
                    for i, nd in enumerate(scene.needles):
                        px[key(nd)] += int((cell == base + i).sum())
                    best = max(names, key=lambda k: (px[k], -names.index(k)))
                    out[t, r, c] = 1 + names.index(best) if px[best] >= MIN_PIXELS else 0
    return shape, color


def _answer_from_tokens(scene, patch_shape):
    """The answer as a viewer of the model's tokens (2 frames x 28 x 28 px each, which needle covers it) gets it."""
    from adaspark_cli.synth.scene import NEEDLE_SHAPES

    def on(shape):
        return (patch_shape == 1 + NEEDLE_SHAPES.index(shape)).any(axis=(1, 2))

    if scene.task == "ordering":
        return min(scene.target, key=lambda s: int(np.argmax(on(s))))
    if scene.task == "counting":
        return str(_runs(on(scene.target[0])))
    if scene.task == "motion":
        pairs = np.nonzero(on("ball"))[0]
        (y0, x0), (y1, x1) = (np.argwhere(patch_shape[p] > 0).mean(axis=0) for p in (pairs[0], pairs[-1]))
        if abs(x1 - x0) >= abs(y1 - y0):
            return "right" if x1 > x0 else "left"
        return "down" if y1 > y0 else "up"
    return None  # retrieval: the color is in patch_color


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("n_frames", [16, 64, 256])
def test_every_answer_is_visible_at_the_models_token_grid(task, n_frames):
    """Answerable from what the model sees: per 28 px x 2 frame token, the needle drawn there (recomputed from
    the pixels) gives the answer; and `scene_labels` computes those token labels exactly."""
    from adaspark_cli.synth.labels import scene_labels
    from adaspark_cli.synth.scene import COLORS as NAMES

    for seed in range(3):
        for depth in (0.0, 0.5, 1.0):
            scene = sample_scene(task, n_frames, depth, seed)
            labels = scene_labels(scene)
            shape, color = _labels_from_ids(scene, render_frames(scene, with_ids=True)[1])
            np.testing.assert_array_equal(labels.patch_shape, shape)
            np.testing.assert_array_equal(labels.patch_color, color)
            a = question_answer(scene)[1]
            if task == "retrieval":
                from adaspark_cli.synth.scene import NEEDLE_SHAPES

                target = shape == 1 + NEEDLE_SHAPES.index(scene.target[0])
                assert {NAMES[c - 1] for c in color[target]} == {a}
            else:
                assert _answer_from_tokens(scene, shape) == a, (task, n_frames, depth, seed)


@pytest.mark.parametrize("task", TASKS)
def test_the_last_state_row_answers_the_question(task):
    """The running state (`synth.labels.state_labels`) holds every task's answer after the last frame pair."""
    from adaspark_cli.synth.labels import STATE_FIELDS, state_labels
    from adaspark_cli.synth.scene import DIRECTIONS

    names = [name for name, _ in STATE_FIELDS]
    for n in (16, 128):
        for seed in range(5):
            for share in (0.0, 0.5):
                hold = hold_for_share(task, n, share) if share else None
                scene = sample_scene(task, n, 0.4, seed, hold=hold)
                state = state_labels(scene)
                assert state.shape == (n // 2, len(STATE_FIELDS))
                assert (np.diff(state[:, : len(names) - 1], axis=0) >= 0).all()  # nothing seen is ever unseen
                last = dict(zip(names, state[-1].tolist()))
                a = question_answer(scene)[1]
                if task == "retrieval":
                    got = COLORS[last[f"color_{scene.target[0]}"] - 1]
                elif task == "ordering":
                    got = min(scene.target, key=lambda s: last[f"rank_{s}"])
                elif task == "counting":
                    got = str(last[f"count_{scene.target[0]}"])
                else:
                    got = DIRECTIONS[last["direction"] - 1]
                assert got == a, (task, n, seed, share)
