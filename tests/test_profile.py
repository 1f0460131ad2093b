"""`profile`: dense against AdaSpark on one prefill (library and CLI), fidelity, heatmap data and --plot."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from adaspark_cli.cli.app import app
from adaspark_cli.errors import AdasparkError
from adaspark_cli.qa import load_video_qa, logit_fidelity, profile_prefill
from adaspark_cli.stats import layer_flops, prefill_flops
from adaspark_cli.video import DecodedVideo

QUESTION = "what color was the star?"
TOP_KEYS = {"question", "frames", "video_tokens", "cubes", "device", "dtype", "config", "layers", "flops", "time",
            "memory", "fidelity", "selection"}
LAYER_KEYS = {"layer", "sparse", "kernel", "dense_fallback", "cubes_total", "cubes_attended_mean", "cubes_attended_min",
              "cubes_attended_max", "attn_density", "ffn_kept", "ffn_total", "flops", "attn_top_p", "ffn_top_p"}
TIME_KEYS = {"dense_s", "sparse_s", "speedup", "clock", "warmup", "repeats", "dense_runs_s", "sparse_runs_s"}
FIDELITY_KEYS = {"kl", "kl_mean", "top1_agreement", "positions", "first_token_dense", "first_token_sparse"}
SPARSE = {"cube": (1, 2, 2), "attn_top_p": 0.5, "ffn_top_p": 0.5}


def synthetic_video(n=8, size=112, seed=0) -> DecodedVideo:
    """n frames of 112x112 noise -> a 4 x 4 x 4 grid of 64 video tokens with the tiny processor."""
    frames = np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    idx = np.arange(n) * 6
    return DecodedVideo(Path("synthetic.mp4"), frames, idx / 24.0, idx, 24.0, n * 6, n * 6 / 24.0, "test")


@pytest.fixture(scope="module")
def loaded(tiny_checkpoint):
    # the reference kernel: per-token selection shows sparsity where one 128-token tile holds the whole tiny video
    return load_video_qa(str(tiny_checkpoint), device="cpu", overrides=SPARSE, kernel="reference")


@pytest.fixture(scope="module")
def report(loaded):
    result = profile_prefill(loaded.qa, synthetic_video(), QUESTION, max_pixels=112 * 112)
    return result, result.to_json()


def test_profile_json_keys_and_consistency(loaded, report):
    result, out = report
    assert set(out) == TOP_KEYS
    assert json.loads(json.dumps(out, allow_nan=False)) == out  # strict JSON (no NaN)
    assert out["frames"] == 8 and out["video_tokens"] == 64 and out["cubes"] == 4 * 2 * 2
    assert out["config"] == loaded.config.to_dict() and out["device"] == "cpu" and out["dtype"] == "float32"
    assert [row["layer"] for row in out["layers"]] == [0, 1]
    for row in out["layers"]:
        assert set(row) == LAYER_KEYS and row["sparse"]
        assert set(row["flops"]) == {"dense", "sparse"}
        assert row["cubes_attended_min"] <= row["cubes_attended_mean"] <= row["cubes_attended_max"]
        assert row["cubes_attended_mean"] <= row["cubes_total"]
        assert 0 < row["attn_density"] < 1 and 0 < row["ffn_kept"] < row["ffn_total"] == 64
        assert row["flops"]["sparse"]["total"] < row["flops"]["dense"]["total"]
    # totals = layers + one lm_head row, and the same numbers `ask` reports
    dense, sparse = prefill_flops(result.stats, result.dims)
    reduction = pytest.approx(1 - sparse.total / dense.total)
    assert out["flops"] == {"dense": dense.to_dict(), "sparse": sparse.to_dict(), "reduction": reduction}
    head = 2.0 * result.dims.hidden * result.dims.vocab
    assert sum(r["flops"]["dense"]["total"] for r in out["layers"]) + head == pytest.approx(dense.total)
    assert 0 < out["flops"]["reduction"] < 1
    # the dense figure is the dense model's on this input: the attention of every causal key
    rec = result.stats.layers[0]
    assert out["layers"][0]["flops"]["dense"] == layer_flops(rec, result.dims, sparse=False).to_dict()


def test_profile_time_memory_fidelity(loaded, report):
    result, out = report
    t = out["time"]
    assert set(t) == TIME_KEYS and t["clock"] == "cpu" and t["warmup"] == 1 and t["repeats"] == 1
    assert t["dense_s"] > 0 and t["sparse_s"] > 0 and t["speedup"] == pytest.approx(t["dense_s"] / t["sparse_s"])
    mem = out["memory"]
    assert mem["measure"] == "process_peak_rss" and mem["sparse_bytes"] >= mem["dense_bytes"] > 0
    fid = out["fidelity"]
    assert set(fid) == FIDELITY_KEYS
    assert fid["positions"] == loaded.qa.question_ids(QUESTION).numel()
    assert fid["kl"] >= 0 and fid["kl_mean"] >= 0 and 0 <= fid["top1_agreement"] <= 1
    # the state is left as it was: AdaSpark on, no selection kept
    assert loaded.qa.state.enabled and loaded.qa.state.settings.heatmap_layer is None


def test_profile_heatmap_data(report):
    result, out = report
    sel = out["selection"]
    assert sel["layer"] == 1 and sel["cube"] == [1, 2, 2] and sel["space_grid"] == [2, 2]  # middle sparse layer
    frac = sel["fraction"]
    assert len(frac) == 4 and all(len(row) == 4 for row in frac)  # 4 time slabs x 2x2 cubes
    assert frac[-1] == [None] * 4  # the last slab is never a candidate (own slab is always attended)
    assert all(0.0 <= v <= 1.0 for row in frac[:-1] for v in row)
    assert sel["slab_start_s"] == pytest.approx([0.0, 0.5, 1.0, 1.5])  # slab s starts at frame 2s, frames 6 apart
    # consistent with the per-layer mean: selected cubes + own slab = attended
    rows = out["layers"][1]
    assert rows["cubes_attended_mean"] < rows["cubes_total"]


def test_p_one_matches_dense_exactly(tiny_checkpoint):
    loaded = load_video_qa(str(tiny_checkpoint), device="cpu", overrides={"cube": (1, 2, 2), "attn_top_p": 1.0, "ffn_top_p": 1.0})
    result = profile_prefill(loaded.qa, synthetic_video(seed=1), QUESTION, max_pixels=112 * 112)
    assert result.fidelity.kl == pytest.approx(0.0, abs=1e-9) and result.fidelity.top1_agreement == 1.0
    assert result.fidelity.first_token_dense == result.fidelity.first_token_sparse


def test_profile_reports_progress_and_repeats(loaded):
    calls = []
    result = profile_prefill(loaded.qa, synthetic_video(n=4), QUESTION, max_pixels=112 * 112, warmup=1, repeats=2,
                             progress=lambda text, done, total: calls.append((text, done, total)))
    assert [c[1] for c in calls] == list(range(7)) and {c[2] for c in calls} == {6}
    assert calls[0][0] == "dense: warm-up 1/1" and calls[3][0] == "sparse: warm-up 1/1" and calls[-1][0] == "done"
    assert len(result.dense_times) == len(result.sparse_times) == 2 and result.to_json()["time"]["repeats"] == 2


def test_logit_fidelity_by_hand():
    dense = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    sparse = torch.tensor([[2.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    fid = logit_fidelity(dense, sparse)
    p = torch.softmax(dense[1].double(), -1)
    q = torch.softmax(sparse[1].double(), -1)
    assert fid.kl == pytest.approx(float((p * (p / q).log()).sum()))  # last row: the first answer token
    assert fid.kl_mean == pytest.approx(fid.kl / 2)  # the first row is identical
    assert fid.top1_agreement == 0.5 and fid.positions == 2
    assert (fid.first_token_dense, fid.first_token_sparse) == (1, 0)
    with pytest.raises(AdasparkError, match="cannot compare"):
        logit_fidelity(dense, sparse[:1])


@pytest.mark.parametrize(
    "kwargs,match",
    [
        pytest.param({"warmup": 0}, "--warmup must be at least 1", id="warmup-zero"),
        pytest.param({"repeats": 0}, "--repeats must be at least 1", id="repeats-zero"),
        pytest.param({"heatmap_layer": 2}, r"not a layer of this model; use 0-1", id="heatmap-layer-past-model"),
    ],
)
def test_profile_bad_arguments(loaded, kwargs, match):
    with pytest.raises(AdasparkError, match=match):
        profile_prefill(loaded.qa, synthetic_video(), QUESTION, max_pixels=112 * 112, **kwargs)


# --- CLI ----------------------------------------------------------------------------------------------


def profile_cli(runner, *args):
    return runner.invoke(app, ["profile", *map(str, args)], catch_exceptions=False)


def test_profile_cli_json_and_plot(runner, clip, tiny_checkpoint, tmp_path):
    png = tmp_path / "profile.png"
    res = profile_cli(runner, clip, QUESTION, "--model", tiny_checkpoint, "--cube", "1x2x2", "--top-p", "0.5",
                      "--fps", "4", "--json", "--plot", png, "--heatmap-layer", "0")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)  # only JSON on stdout
    assert set(out) == TOP_KEYS | {"model", "config_source"}
    assert out["frames"] == 8 and out["question"] == QUESTION and out["selection"]["layer"] == 0
    assert set(out["flops"]) == {"dense", "sparse", "reduction"} and set(out["time"]) == TIME_KEYS
    assert {"kl", "top1_agreement"} <= set(out["fidelity"]) and {"dense_bytes", "sparse_bytes"} <= set(out["memory"])
    assert "density" in res.stderr and "CPU time" in res.stderr  # tables go to stderr with --json
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_profile_cli_tables_are_the_output(runner, clip, tiny_checkpoint):
    # without --json the report is the command's output: stdout; -q hides only notes and progress
    res = profile_cli(runner, clip, "--model", tiny_checkpoint, "--cube", "1x2x2", "--fps", "2", "-q")
    assert res.exit_code == 0, res.output
    assert "density" in res.stdout and "prefill FLOPs" in res.stdout and "CPU time" in res.stdout
    assert res.stderr == ""


def test_profile_cli_quiet_json_is_only_json(runner, clip, tiny_checkpoint):
    res = profile_cli(runner, clip, "--model", tiny_checkpoint, "--cube", "1x2x2", "--fps", "2", "--json", "-q")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["frames"] == 4 and res.stderr == ""


@pytest.mark.parametrize(
    "args,fragment,code",
    [
        pytest.param(["--plot", "{tmp}/p.txt"], "use a .png, .svg or .pdf", 1, id="plot-suffix"),
        pytest.param(["--plot", "{tmp}/no/such/dir/p.png"], "does not exist", 1, id="plot-folder"),
        pytest.param(["--repeats", "0"], "--repeats must be at least 1", 2, id="repeats-zero"),
        pytest.param(["--heatmap-layer", "7"], "not a layer of this model", 1, id="heatmap-layer"),
        pytest.param(["--top-p", "0"], "top-p", 2, id="top-p-zero"),
        pytest.param(["--model", "{tmp}/missing"], "does not exist", 1, id="missing-model"),
    ],
)
def test_profile_cli_errors_are_one_line(runner, clip, tiny_checkpoint, tmp_path, args, fragment, code):
    args = [a.format(tmp=tmp_path) for a in args]
    model = [] if "--model" in args else ["--model", tiny_checkpoint]
    res = profile_cli(runner, clip, *model, "--fps", "2", *args)
    assert res.exit_code == code, res.output
    err = res.stderr.strip()
    assert err.startswith("error:") and "\n" not in err and "Traceback" not in err, err
    assert fragment in err and res.stdout == ""


def test_profile_cli_missing_video(runner, tiny_checkpoint, tmp_path):
    res = profile_cli(runner, tmp_path / "nope.mp4", "--model", tiny_checkpoint)
    assert res.exit_code == 1
    err = res.stderr.strip()
    assert err.startswith("error:") and "\n" not in err and "not found" in err


def test_plot_without_matplotlib_names_the_extra(runner, clip, tiny_checkpoint, tmp_path, monkeypatch):
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)  # import raises ImportError
    res = profile_cli(runner, clip, "--model", tiny_checkpoint, "--plot", tmp_path / "p.png")
    assert res.exit_code == 1
    err = res.stderr.strip()
    assert err.startswith("error:") and "\n" not in err and "pip install 'adaspark-cli[plot]'" in err
    assert not (tmp_path / "p.png").exists()
