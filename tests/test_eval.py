"""`adaspark eval` on a tiny suite with the tiny random model: JSON keys, the table, --plot, bad input."""

from __future__ import annotations

import json
import sys

import pytest
from typer.testing import CliRunner

from adaspark_cli.cli.app import app
from adaspark_cli.qa import load_video_qa
from adaspark_cli.qa.eval import evaluate
from adaspark_cli.synth import TASKS, make_suite, write_suite

GROUP_KEYS = {"items", "dense", "adaspark"}


@pytest.fixture(scope="module")
def runner():
    return CliRunner()


@pytest.fixture(scope="module")
def suite_dir(tmp_path_factory):
    """One 16-frame item per task (4 items), written as H.264 once."""
    out = tmp_path_factory.mktemp("suite")
    write_suite(make_suite(7, lengths=(16,), depths=(0.5,)), out)
    return out


def run(runner, *args):
    return runner.invoke(app, ["eval", *map(str, args)], catch_exceptions=False)


def test_eval_json_has_the_documented_keys(runner, suite_dir, tiny_checkpoint):
    res = run(runner, suite_dir, "--model", tiny_checkpoint, "--json", "--cube", "1x2x2", "--top-p", "0.5",
              "--max-new-tokens", "2", "--device", "cpu")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert {"suite", "items", "dense", "adaspark", "by_task", "by_length_depth"} <= set(data)
    assert data["items"] == 4 and data["suite"]["items"] == 4
    assert set(data["dense"]) >= {"accuracy"} and set(data["adaspark"]) >= {"accuracy", "flops_reduction"}
    assert set(data["by_task"]) == set(TASKS)
    for group in (*data["by_task"].values(), *data["by_length_depth"].values()):
        assert set(group) == GROUP_KEYS and "flops_reduction" in group["adaspark"]
    assert list(data["by_length_depth"]) == ["16x0.5"]
    assert 0.0 < data["adaspark"]["flops_reduction"] < 1.0
    assert all(0.0 <= data[m]["accuracy"] <= 1.0 for m in ("dense", "adaspark"))
    assert {r["task"] for r in data["results"]} == set(TASKS)
    assert "accuracy by task" in res.stderr  # the table goes to stderr with --json


def test_eval_generates_a_suite_and_plots(runner, tiny_checkpoint, tmp_path):
    png = tmp_path / "eval.png"
    res = run(runner, "--model", tiny_checkpoint, "--lengths", "16", "--depths", "0.2", "--tasks", "retrieval,motion",
              "--max-new-tokens", "1", "--out", tmp_path / "suite", "--plot", png, "--device", "cpu", "--workers", "2")
    assert res.exit_code == 0, res.output
    assert "accuracy by task" in res.stdout and "16x0.2" in res.stdout  # without --json the tables are the output
    assert png.stat().st_size > 1000
    manifest = json.loads((tmp_path / "suite" / "suite.json").read_text())
    assert [i["task"] for i in manifest["items"]] == ["retrieval", "motion"]


def test_evaluate_restores_the_mode_and_matches_itself(suite_dir, tiny_checkpoint):
    from adaspark_cli.synth import read_suite

    loaded = load_video_qa(str(tiny_checkpoint), device="cpu", overrides={"cube": (1, 2, 2), "attn_top_p": 1.0,
                                                                          "ffn_top_p": 1.0})
    report = evaluate(loaded.qa, read_suite(suite_dir), max_new_tokens=2)
    assert loaded.qa.state.enabled
    # top-p 1.0 is the dense model: the same answers in both modes
    assert all(r.answers["dense"] == r.answers["adaspark"] for r in report.results)
    assert report.to_json()["adaspark"]["flops_reduction"] <= 0.0  # only the scoring overhead


@pytest.mark.parametrize(
    ("args", "message", "code"),
    [
        (["--tasks", "colour"], "--tasks: unknown task 'colour'", 2),
        (["--lengths", "8"], "--lengths: '8' is not a frame count", 2),
        (["--depths", "2"], "--depths: '2' is not a depth", 2),
        (["--per-cell", "0"], "--per-cell must be at least 1", 2),
        (["--workers", "0"], "--workers must be at least 1", 2),
        (["--limit", "0"], "--limit must be at least 1", 2),
        (["--plot", "{tmp}/p.txt"], "use a .png, .svg or .pdf", 1),
        (["{tmp}"], "no suite manifest", 1),
        (["--top-p", "0"], "top-p", 2),
    ],
)
def test_eval_bad_input_is_one_line(runner, tiny_checkpoint, tmp_path, args, message, code):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    res = run(runner, *args, "--model", tiny_checkpoint)
    assert res.exit_code == code
    err = res.stderr.strip()
    assert err.startswith("error:") and "\n" not in err and message in err, err


def test_eval_plot_without_matplotlib_names_the_extra(runner, tiny_checkpoint, tmp_path, monkeypatch):
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)
    res = run(runner, "--model", tiny_checkpoint, "--plot", tmp_path / "p.png")
    err = res.stderr.strip()
    assert res.exit_code == 1 and "\n" not in err and "pip install 'adaspark-cli[plot]'" in err


def test_eval_checkpoints_shards_merge_into_the_unsharded_run(suite_dir, tiny_checkpoint, tmp_path):
    """benchmarks/eval_checkpoints.py, which the GPU evaluations ran: two shards joined by --merge hold the
    same items and answers as one unsharded run; a run cut by --deadline before its first chunk writes nothing."""
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "eval_checkpoints.py"

    def call(*args):
        done = subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        return done

    common = ("--suite", suite_dir, "--device", "cpu", "--run", f"m={tiny_checkpoint}:0.5/0.5")
    call(*common, "--out", tmp_path / "whole")
    for k in (0, 1):
        call(*common, "--shard", f"{k}/2", "--out", tmp_path / "parts")
    call(*common, "--shard", "0/2", "--deadline", "0", "--out", tmp_path / "late")
    assert not (tmp_path / "late" / "m.shard0.json").exists()
    merged = tmp_path / "merged.json"
    done = call("--merge", f"{tmp_path / 'parts' / 'm.shard0.json'},{tmp_path / 'parts' / 'm.shard1.json'}", "--out", merged)
    assert "m: 4 items" in done.stderr
    whole = json.loads((tmp_path / "whole" / "m.json").read_text())
    joined = json.loads(merged.read_text())
    answers = lambda data: {r["id"]: r["answers"] for r in data["results"]}  # noqa: E731
    assert len(whole["results"]) == 4 and answers(joined) == answers(whole)
    assert joined["dense"]["accuracy"] == whole["dense"]["accuracy"]
    assert joined["adaspark"]["flops_reduction"] == pytest.approx(whole["adaspark"]["flops_reduction"])
    assert joined["config"]["cube"] == [8, 4, 4] and joined["config"]["attn_top_p"] == 0.5
