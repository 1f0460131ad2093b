"""The bundled trained checkpoints (issues 3 and 17): they load, answer fixed generated items of every task
correctly with and without sparsity, answer every task well above its prior, and `ask` with no --model uses
them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adaspark_cli.cli.app import app
from adaspark_cli.config import config_from_checkpoint
from adaspark_cli.qa import bundled_model_dir, load_video_qa
from adaspark_cli.synth import normalize_answer, question_answer, render_frames, sample_scene, write_video
from adaspark_cli.video.stream import open_video

ROOT = Path(__file__).resolve().parents[1]
SPARSE = ROOT / "models" / "adaspark-synth-small"
DENSE = ROOT / "models" / "adaspark-synth-small-dense"
TASKS = ("retrieval", "ordering", "counting", "motion")
# Items of 64 frames, depth 0.5 (as examples/make_demo_video.py): of seeds 0-5, both checkpoints answer every
# item right, dense and sparse, except counting seed 2 (wrong in all four runs; the checkpoints score 93-100 %
# per task on the held-out suite, docs/benchmarks.md)
KNOWN_GOOD_SEEDS = (0, 1)


@pytest.fixture(scope="module")
def loaded():
    return {path.name: load_video_qa(str(path), device="cpu") for path in (SPARSE, DENSE)}


def _answer(loaded_model, video: Path, question: str, *, dense: bool) -> str:
    qa = loaded_model.qa
    with qa.state.override(enabled=not dense):
        prompt = qa.prepare_video(open_video(video, fps=2.0, max_frames=256, decoder="auto"))
        stream = qa.answer(qa.prefill_video(prompt), question, max_new_tokens=8)
        for _ in stream:
            pass
        return stream.result.answer


def _write_item(tmp_path: Path, task: str, n: int, depth: float, seed: int) -> tuple[Path, str, str]:
    scene = sample_scene(task, n, depth, seed)
    path = tmp_path / f"{task}-{n}-{depth}-{seed}.mp4"
    write_video(path, render_frames(scene), scene.fps)  # type: ignore[arg-type]
    return (path, *question_answer(scene))


def test_bundled_checkpoints_are_the_default_and_small():
    assert bundled_model_dir() == SPARSE
    block = config_from_checkpoint(json.loads((SPARSE / "config.json").read_text()))
    assert block is not None and block.cube == (8, 4, 4)  # one 128-token kernel tile at 112 px
    assert config_from_checkpoint(json.loads((DENSE / "config.json").read_text())) is None
    size = sum(f.stat().st_size for d in (SPARSE, DENSE) for f in d.iterdir())
    assert size < 100 * 2**20
    for d in (SPARSE, DENSE):
        assert "Evaluation" in (d / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("seed", KNOWN_GOOD_SEEDS)
def test_fixed_items_are_answered_correctly_dense_and_sparse(loaded, tmp_path, task, seed):
    video, question, expected = _write_item(tmp_path, task, 64, 0.5, seed)
    for name, model in loaded.items():
        for dense in (False, True):
            got = _answer(model, video, question, dense=dense)
            assert normalize_answer(got) == expected, (name, dense, question, got, expected)


@pytest.mark.parametrize("task", TASKS)
def test_every_task_is_well_above_the_answer_prior(loaded, tmp_path, task):
    """6 fresh items of a task at 32 frames (priors: 1/6 retrieval, 1/2 ordering, about 1/3 counting, 1/4
    motion): the sparse checkpoint, sparse, must get at least 5 (it got 6 of 6 on each task)."""
    items = [_write_item(tmp_path, task, 32, depth, 5000 + k) for k in range(2) for depth in (0.1, 0.5, 0.9)]
    hits = sum(normalize_answer(_answer(loaded[SPARSE.name], v, q, dense=False)) == a for v, q, a in items)
    assert hits >= 5, f"{task}: {hits}/6"


def test_ask_without_model_answers_the_demo(monkeypatch):
    from typer.testing import CliRunner

    monkeypatch.delenv("ADASPARK_MODEL", raising=False)
    res = CliRunner().invoke(app, ["ask", str(ROOT / "examples" / "demo.mp4"), "What color is the heart in the video?",
                                   "--device", "cpu"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == "yellow"
    assert "synthetic scenes" not in res.stderr  # the demo is the one video the notice is not for


def test_ask_on_another_video_says_once_what_the_bundled_model_knows(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    monkeypatch.delenv("ADASPARK_MODEL", raising=False)
    video, question, _ = _write_item(tmp_path, "motion", 16, 0.5, 3)
    res = CliRunner().invoke(app, ["ask", str(video), question, "What color was the ball?", "--device", "cpu"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert res.stderr.count("knows only adaspark's synthetic scenes") == 1
    assert "--model" in res.stderr
