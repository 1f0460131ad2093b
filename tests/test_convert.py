"""`convert`: atomic AdaSpark checkpoints (same weights, config block), calibration, and every error."""

import errno
import hashlib
import json
import os
import shutil
import stat
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from adaspark_cli.adapters import sparsify
from adaspark_cli.checkpoint import convert as convert_mod
from adaspark_cli.checkpoint import convert_checkpoint, load_model, read_calibration, read_config_json
from adaspark_cli.checkpoint.convert import adaspark_block
from adaspark_cli.cli.app import app
from adaspark_cli.cli.options import sparsity_overrides
from adaspark_cli.config import AdaSparkConfig, config_from_checkpoint
from adaspark_cli.errors import AdasparkError, CheckpointError, ConfigError
from adaspark_cli.qa import VideoQA, calibrate, calibrate_per_layer, load_video_qa
from adaspark_cli.qa.calibrate import LayerChoice, solve_per_layer
from adaspark_cli.stats import PrefillStats, prefill_flops
from adaspark_cli.video import DecodedVideo

CONFIG = AdaSparkConfig(cube=(1, 2, 2), attn_top_p=0.5, ffn_top_p=0.5)
QUESTION = "what color was the star?"
TIMING_KEYS = {"prefill_seconds", "video_prefill_seconds", "decode_seconds", "timing"}


def synthetic_video(n=8, size=112, seed=0) -> DecodedVideo:
    frames = np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    idx = np.arange(n) * 6
    return DecodedVideo(Path(f"synthetic{seed}.mp4"), frames, idx / 24.0, idx, 24.0, n * 6, n * 6 / 24.0, "test")


def tree(path: Path) -> dict[str, tuple[str, int]]:
    """{relative path: (sha256, mtime_ns)} of every file under path (symlinks followed)."""
    return {
        str(p.relative_to(path)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def one_line(exc: BaseException) -> str:
    message = str(exc)
    assert "\n" not in message and "\r" not in message, message
    return message


def sharded_copy(src: Path, dst: Path, shards: int = 3) -> Path:
    shutil.copytree(src, dst)
    tensors = load_file(dst / "model.safetensors")
    (dst / "model.safetensors").unlink()
    names = sorted(tensors)
    weight_map = {}
    for i in range(shards):
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: tensors[k] for k in names[i::shards]}
        save_file(part, dst / file, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, file))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (dst / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    return dst


def answer_json(qa: VideoQA, video: DecodedVideo) -> dict:
    prefix = qa.prefill_video(qa.prepare_video(video, max_pixels=112 * 112))
    stream = qa.answer(prefix, QUESTION, max_new_tokens=3)
    list(stream)
    return {k: v for k, v in stream.result.to_json().items() if k not in TIMING_KEYS}


# --- the converted checkpoint -------------------------------------------------------------------------


def test_converted_checkpoint_matches_in_memory_sparsify(tiny_checkpoint, tmp_path):
    before = tree(tiny_checkpoint)
    out = tmp_path / "adaspark"
    result = convert_checkpoint(tiny_checkpoint, out, CONFIG)
    assert tree(tiny_checkpoint) == before  # SRC never written
    assert result.linked == 1 and result.copied == 0 and result.weights == ("model.safetensors",)
    assert os.stat(out / "model.safetensors").st_ino == os.stat(tiny_checkpoint / "model.safetensors").st_ino
    for name in ("tokenizer.json", "tokenizer_config.json", "processor_config.json", "chat_template.jinja",
                 "generation_config.json"):
        assert (out / name).read_bytes() == (tiny_checkpoint / name).read_bytes(), name
    config_json = read_config_json(out)
    assert config_from_checkpoint(config_json) == CONFIG and read_calibration(config_json) is None
    src_json = read_config_json(tiny_checkpoint)
    assert {k: v for k, v in config_json.items() if k != "adaspark"} == src_json
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adaspark"]  # no temporary directory left
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask  # not mkdtemp's 0700

    loaded = load_video_qa(str(out), device="cpu")
    assert loaded.config_source == "checkpoint" and loaded.config == CONFIG
    model, processor = load_model(str(tiny_checkpoint))
    in_memory = VideoQA(model, processor, sparsify(model, CONFIG))
    video = synthetic_video()
    got, want = answer_json(loaded.qa, video), answer_json(in_memory, video)
    assert got == want
    assert got["flops"]["reduction"] > 0 and all(row["sparse"] for row in got["layers"])
    prompt = in_memory.prepare_video(video, max_pixels=112 * 112)
    torch.testing.assert_close(loaded.qa.prefill_logits(prompt, QUESTION), in_memory.prefill_logits(prompt, QUESTION),
                               rtol=0, atol=0)


RECORD = {"method": "grid", "target_reduction": 0.5, "chosen": {"attn_top_p": 0.5, "ffn_top_p": 0.3}}


@pytest.mark.parametrize(
    "config,record",
    [
        pytest.param(AdaSparkConfig(), None, id="defaults"),
        pytest.param(AdaSparkConfig(cube=(1, 2, 2), attn_top_p=0.25, ffn_top_p=1.0, sparse_layers=(1,)), RECORD, id="set"),
        pytest.param(AdaSparkConfig(sparse_layers=()), None, id="no-sparse-layer"),
    ],
)
def test_config_block_round_trips(config, record, tiny_checkpoint, tmp_path):
    data = json.loads(json.dumps({"adaspark": adaspark_block(config, record)}))
    assert config_from_checkpoint(data) == config and read_calibration(data) == record
    assert set(data["adaspark"]) == {"version", "cube", "attn_top_p", "ffn_top_p", "sparse_layers", "calibration"}
    convert_checkpoint(tiny_checkpoint, tmp_path / "out", config, calibration=record)
    on_disk = read_config_json(tmp_path / "out")
    assert config_from_checkpoint(on_disk) == config and read_calibration(on_disk) == record
    bad = dict(data["adaspark"], attn_top_p="high")
    with pytest.raises(ConfigError, match="attn_top_p"):
        config_from_checkpoint({"adaspark": bad})


PER_LAYER = AdaSparkConfig(cube=(1, 2, 2), layer_top_p=((0, 1.0, 1.0), (1, 0.3, 0.4)))


def test_layer_top_p_round_trips_and_is_validated(tiny_checkpoint, tmp_path):
    assert PER_LAYER.to_dict()["layer_top_p"] == {"0": [1.0, 1.0], "1": [0.3, 0.4]}
    assert "layer_top_p" not in AdaSparkConfig().to_dict()  # absent unless set: older readers stay happy
    assert AdaSparkConfig.from_dict(PER_LAYER.to_dict()) == PER_LAYER
    assert (PER_LAYER.attn_top_p_for(1), PER_LAYER.ffn_top_p_for(1), PER_LAYER.attn_top_p_for(7)) == (0.3, 0.4, 0.9)
    convert_checkpoint(tiny_checkpoint, tmp_path / "out", PER_LAYER)
    assert config_from_checkpoint(read_config_json(tmp_path / "out")) == PER_LAYER
    assert sparsity_overrides(None, 0.5, None, None, None)["layer_top_p"] is None  # --top-p sets every layer


@pytest.mark.parametrize(
    "block,match",
    [
        pytest.param({"layer_top_p": [[0, 0.5, 0.5]]}, "expected an object", id="list"),
        pytest.param({"layer_top_p": {"x": [0.5, 0.5]}}, "is not a layer index", id="key-not-int"),
        pytest.param({"layer_top_p": {"01": [0.5, 0.5]}}, "is not a layer index", id="key-not-canonical"),
        pytest.param({"layer_top_p": {"-1": [0.5, 0.5]}}, "non-negative layer index", id="negative"),
        pytest.param({"layer_top_p": {"0": [0.5]}}, r"expected \[attn_top_p, ffn_top_p\]", id="one-value"),
        pytest.param({"layer_top_p": {"0": [1.5, 0.5]}}, "attn: expected a number in", id="attn-above-one"),
        pytest.param({"layer_top_p": {"0": [0.5, "x"]}}, "expected a number", id="ffn-string"),
        pytest.param({"layer_top_p": {"3": [0.5, 0.5]}, "sparse_layers": [0, 1]}, "not in sparse_layers", id="not-sparse"),
    ],
)
def test_bad_layer_top_p_is_a_config_error(block, match):
    with pytest.raises(ConfigError, match=match) as info:
        AdaSparkConfig.from_dict(block)
    one_line(info.value)


def test_layer_top_p_constructor_checks():
    with pytest.raises(ConfigError, match="sorted and listed once"):
        AdaSparkConfig(layer_top_p=((1, 0.5, 0.5), (0, 0.5, 0.5)))
    with pytest.raises(ConfigError, match="sorted and listed once"):
        AdaSparkConfig(layer_top_p=((0, 0.5, 0.5), (0, 0.3, 0.3)))
    with pytest.raises(ConfigError, match="keep every layer it sets sparse"):
        PER_LAYER.replace(sparse_layers=(0,))


def test_adapter_uses_layer_top_p(tiny_checkpoint):
    qa = load_video_qa(str(tiny_checkpoint), device="cpu", overrides={"cube": (1, 2, 2), "layer_top_p": PER_LAYER.layer_top_p},
                       kernel="reference").qa  # per-token statistics: the whole tiny video is one 128-token tile
    rows = {r["layer"]: r for r in answer_json(qa, synthetic_video())["layers"]}
    assert rows[0]["sparse"] and rows[0]["attn_density"] == 1.0 and rows[0]["ffn_kept"] == rows[0]["ffn_total"]
    assert rows[1]["sparse"] and rows[1]["attn_density"] < 1.0 and rows[1]["ffn_kept"] < rows[1]["ffn_total"]


def test_sharded_source_stays_sharded_and_copies_across_filesystems(tiny_checkpoint, tmp_path, monkeypatch):
    src = sharded_copy(tiny_checkpoint, tmp_path / "sharded")

    def no_link(*args, **kwargs):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(convert_mod.os, "link", no_link)
    result = convert_checkpoint(src, tmp_path / "out", CONFIG)
    assert result.linked == 0 and result.copied == 3 and result.bytes_written > 0
    names = sorted(p.name for p in (tmp_path / "out").glob("*.safetensors"))
    assert names == sorted(p.name for p in src.glob("*.safetensors")) and len(names) == 3
    assert (tmp_path / "out" / "model.safetensors.index.json").read_bytes() == (src / "model.safetensors.index.json").read_bytes()
    for name in names:
        assert (tmp_path / "out" / name).read_bytes() == (src / name).read_bytes()
        assert os.stat(tmp_path / "out" / name).st_ino != os.stat(src / name).st_ino
    model, _ = load_model(str(tmp_path / "out"))
    ref, _ = load_model(str(tiny_checkpoint))
    for (k, a), (_, b) in zip(model.state_dict().items(), ref.state_dict().items()):
        assert torch.equal(a, b), k


def test_cached_hub_id_is_resolved_and_symlinks_followed(tiny_checkpoint, tmp_path):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = Path(os.environ["HF_HOME"]) / "hub" / "models--tiny--qwen2_5_vl"
    snapshot = repo / "snapshots" / commit
    shutil.copytree(tiny_checkpoint, snapshot)
    (repo / "blobs").mkdir()
    blob = repo / "blobs" / "weights-blob"
    (snapshot / "model.safetensors").rename(blob)
    (snapshot / "model.safetensors").symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    convert_checkpoint("tiny/qwen2_5_vl", tmp_path / "out", CONFIG)
    weights = tmp_path / "out" / "model.safetensors"
    assert not weights.is_symlink() and weights.read_bytes() == blob.read_bytes()
    assert blob.is_file() and (snapshot / "model.safetensors").is_symlink()


def test_existing_out_needs_force(tiny_checkpoint, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "junk.txt").write_text("old")
    with pytest.raises(CheckpointError, match="already exists; pass --force") as info:
        convert_checkpoint(tiny_checkpoint, out, CONFIG)
    one_line(info.value)
    assert (out / "junk.txt").read_text() == "old"
    convert_checkpoint(tiny_checkpoint, out, CONFIG, force=True)
    assert not (out / "junk.txt").exists() and config_from_checkpoint(read_config_json(out)) == CONFIG
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the old OUT is gone too


# --- errors ---------------------------------------------------------------------------------------------


def _llama(tmp):
    (tmp / "llama").mkdir()
    (tmp / "llama" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return tmp / "llama"


def _missing_shard(tmp, tiny):
    src = sharded_copy(tiny, tmp / "sharded")
    (src / "model-00002-of-00003.safetensors").unlink()
    return src


def _corrupt_shard(tmp, tiny):
    src = sharded_copy(tiny, tmp / "sharded")
    shard = src / "model-00003-of-00003.safetensors"
    os.truncate(shard, shard.stat().st_size // 2)
    return src


@pytest.mark.parametrize(
    "make_src,match",
    [
        pytest.param(lambda tmp, tiny: tmp / "missing", "does not exist", id="src-missing"),
        pytest.param(lambda tmp, tiny: _llama(tmp), "is a llama checkpoint", id="not-qwen2.5-vl"),
        pytest.param(lambda tmp, tiny: tmp, "has no config.json", id="not-a-checkpoint"),
        pytest.param(_missing_shard, "missing weight shards listed in model.safetensors.index.json", id="missing-shard"),
        pytest.param(_corrupt_shard, "is truncated", id="corrupt-shard"),
        pytest.param(lambda tmp, tiny: "nobody/not-a-model", "not in the Hugging Face cache", id="uncached-hub-id-offline"),
    ],
)
def test_bad_source_is_a_one_line_error(make_src, match, tiny_checkpoint, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    src = make_src(work, tiny_checkpoint)
    listing = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(CheckpointError, match=match) as info:
        convert_checkpoint(src, tmp_path / "out", CONFIG)
    one_line(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == listing


def test_out_overlapping_src_is_refused(tiny_checkpoint, tmp_path):
    src = shutil.copytree(tiny_checkpoint, tmp_path / "src")
    before = tree(src)
    for out, force in ((src / "inside", False), (src, True), (tmp_path, True)):
        with pytest.raises(CheckpointError, match="overlaps SRC") as info:
            convert_checkpoint(src, out, CONFIG, force=force)
        one_line(info.value)
    assert tree(src) == before


def test_out_folder_must_exist_and_layers_must_fit(tiny_checkpoint, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist; create it first"):
        convert_checkpoint(tiny_checkpoint, tmp_path / "a" / "b", CONFIG)
    with pytest.raises(ConfigError, match="past the model's 2 layers"):
        convert_checkpoint(tiny_checkpoint, tmp_path / "out", CONFIG.replace(sparse_layers=(0, 5)))
    assert list(tmp_path.iterdir()) == []


def test_no_disk_space_up_front(tiny_checkpoint, tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(convert_mod.shutil, "disk_usage", lambda path: usage(10**9, 10**9, 1000))
    with pytest.raises(CheckpointError, match="not enough disk space in .*free some space") as info:
        convert_checkpoint(tiny_checkpoint, tmp_path / "out", CONFIG)
    one_line(info.value)
    assert list(tmp_path.iterdir()) == []


def test_disk_full_while_copying_leaves_nothing(tiny_checkpoint, tmp_path, monkeypatch):
    def no_link(*args, **kwargs):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    def full(src, dst, *args, **kwargs):
        Path(dst).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(convert_mod.os, "link", no_link)
    monkeypatch.setattr(convert_mod.shutil, "copy2", full)
    with pytest.raises(CheckpointError, match="ran out of disk space while writing .*nothing was written") as info:
        convert_checkpoint(tiny_checkpoint, tmp_path / "out", CONFIG)
    one_line(info.value)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_convert_leaves_nothing(tiny_checkpoint, tmp_path, monkeypatch):
    src = sharded_copy(tiny_checkpoint, tmp_path / "src")
    before = tree(src)
    original = convert_mod.link_or_copy
    calls = []

    def interrupted(a, b):
        calls.append(a)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(a, b)

    monkeypatch.setattr(convert_mod, "link_or_copy", interrupted)
    with pytest.raises(KeyboardInterrupt):
        convert_checkpoint(src, tmp_path / "out", CONFIG)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"] and tree(src) == before
    # an interrupted --force replacement keeps the old OUT
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("old")
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        convert_checkpoint(src, tmp_path / "out", CONFIG, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]


# --- calibration --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def calib_qa(tiny_checkpoint):
    return load_video_qa(str(tiny_checkpoint), device="cpu", overrides={"cube": (1, 2, 2)}).qa


def test_calibration_reaches_its_target(calib_qa):
    videos = [synthetic_video(seed=3), synthetic_video(seed=4)]
    target = 0.1
    result = calibrate(calib_qa, videos, target_reduction=target, question=QUESTION, grid=(1.0, 0.6, 0.3),
                       max_pixels=112 * 112)
    assert len(result.points) == 9
    chosen = result.chosen
    assert chosen.reduction >= target
    reaching = [p for p in result.points if p.reduction >= target]
    assert chosen.kl == min(p.kl for p in reaching)
    assert any(p.reduction < target for p in result.points)  # the target actually constrains the choice
    assert result.config == calib_qa.state.config.replace(attn_top_p=chosen.attn_top_p, ffn_top_p=chosen.ffn_top_p)
    assert calib_qa.state.config.attn_top_p == 0.9 and calib_qa.state.enabled  # state restored
    # the chosen setting reproduces its reduction
    with calib_qa.state.override(config=result.config):
        dense = sparse = 0.0
        for video in videos:
            stats = PrefillStats()
            calib_qa.prefill_logits(calib_qa.prepare_video(video, max_pixels=112 * 112), QUESTION, stats=stats)
            d, s = prefill_flops(stats, calib_qa.dims)
            dense, sparse = dense + d.total, sparse + s.total
    assert 1 - sparse / dense == pytest.approx(chosen.reduction) and 1 - sparse / dense >= target
    record = result.record()
    assert record["method"] == "grid" and record["chosen"] == chosen.to_dict() and len(record["table"]) == 9
    assert [v["name"] for v in record["videos"]] == ["synthetic3.mp4", "synthetic4.mp4"]


def test_unreachable_target_is_an_error(calib_qa):
    with pytest.raises(AdasparkError, match="no setting on the grid reaches a 99% FLOPs reduction") as info:
        calibrate(calib_qa, [synthetic_video(n=4)], target_reduction=0.99, grid=(1.0, 0.5), max_pixels=112 * 112)
    one_line(info.value)
    with pytest.raises(AdasparkError, match="between 0 and 1"):
        calibrate(calib_qa, [synthetic_video(n=4)], target_reduction=1.5)


def test_solve_per_layer_least_kl_for_the_target():
    def c(layer, r, kl):
        return LayerChoice(layer, 1.0 - r, 1.0 - r, r, kl)

    options = {0: [c(0, 0, 0), c(0, 0.2, 0.1), c(0, 0.4, 0.5)], 1: [c(1, 0, 0), c(1, 0.2, 0.01), c(1, 0.3, 0.05)]}
    # best: 0.2 + 0.2 (KL 0.11); the relaxation alone would stop at 0.2 + 0.3 (KL 0.15)
    assert [x.reduction for x in solve_per_layer(options, 0.4)] == [0.2, 0.2]
    assert [x.reduction for x in solve_per_layer(options, 0.25)] == [0, 0.3]
    assert solve_per_layer(options, 0.71) is None


def test_per_layer_calibration_reaches_its_target(calib_qa):
    before = calib_qa.state.config
    videos = [synthetic_video(seed=5)]
    result = calibrate_per_layer(calib_qa, videos, target_reduction=0.1, question=QUESTION, grid=(1.0, 0.3),
                                 max_pixels=112 * 112)
    assert calib_qa.state.config == before and calib_qa.state.enabled
    assert [c.layer for c in result.layers] == [0, 1] and result.measured.reduction >= 0.1
    assert result.config.layer_top_p == tuple((c.layer, c.attn_top_p, c.ffn_top_p) for c in result.layers)
    with calib_qa.state.override(config=result.config):
        stats = PrefillStats()
        calib_qa.prefill_logits(calib_qa.prepare_video(videos[0], max_pixels=112 * 112), QUESTION, stats=stats)
    dense, sparse = prefill_flops(stats, calib_qa.dims)
    measured = 1 - sparse.total / dense.total
    assert measured == pytest.approx(result.measured.reduction) and measured >= 0.1
    record = result.record()
    assert record["method"] == "per_layer" and len(record["layers"]) == 2 and record["measured"]["reduction"] >= 0.1


# --- CLI ------------------------------------------------------------------------------------------------


def convert_cli(runner, *args):
    return runner.invoke(app, ["convert", *map(str, args)], catch_exceptions=False)


def test_convert_cli_calibrates_and_profile_picks_the_block_up(runner, clip, tiny_checkpoint, tmp_path):
    out = tmp_path / "out"
    res = convert_cli(runner, tiny_checkpoint, out, "--cube", "1x2x2", "--target-reduction", "0.1", "--calibrate", clip,
                      "--grid", "1,0.5", "--fps", "4", "--json")
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout)
    block = result["adaspark"]
    assert block["calibration"]["chosen"]["reduction"] >= 0.1 and block["cube"] == [1, 2, 2]
    assert "calibration: target 10%" in res.stderr and "* chosen" in res.stderr
    assert read_config_json(out)["adaspark"] == block
    prof = runner.invoke(app, ["profile", str(clip), "--model", str(out), "--fps", "4", "--json", "-q"])
    assert prof.exit_code == 0, prof.output
    report = json.loads(prof.stdout)
    assert report["config_source"] == "checkpoint"
    assert report["config"] == {k: v for k, v in block.items() if k != "calibration"}


def test_convert_cli_per_layer_and_profile_reads_it(runner, clip, tiny_checkpoint, tmp_path):
    out = tmp_path / "out"
    res = convert_cli(runner, tiny_checkpoint, out, "--cube", "1x2x2", "--target-reduction", "0.1", "--calibrate", clip,
                      "--per-layer", "--grid", "1,0.3", "--fps", "4")
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == str(out) and "per-layer calibration: target 10%" in res.stderr
    block = read_config_json(out)["adaspark"]
    assert block["calibration"]["method"] == "per_layer" and set(block["layer_top_p"]) == {"0", "1"}
    prof = runner.invoke(app, ["profile", str(clip), "--model", str(out), "--fps", "4", "--json", "-q"])
    assert prof.exit_code == 0, prof.output
    report = json.loads(prof.stdout)
    assert report["config"]["layer_top_p"] == block["layer_top_p"]
    for row in report["layers"]:
        assert [row["attn_top_p"], row["ffn_top_p"]] == block["layer_top_p"][str(row["layer"])]
    # a top-p flag replaces the per-layer values
    prof = runner.invoke(app, ["profile", str(clip), "--model", str(out), "--fps", "4", "--json", "-q", "--top-p", "0.5"])
    report = json.loads(prof.stdout)
    assert "layer_top_p" not in report["config"] and {r["attn_top_p"] for r in report["layers"]} == {0.5}


def test_convert_cli_plain_prints_out(runner, tiny_checkpoint, tmp_path):
    res = convert_cli(runner, tiny_checkpoint, tmp_path / "out", "--attn-top-p", "0.8", "--ffn-top-p", "0.6", "-q")
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == str(tmp_path / "out") and res.stderr == ""
    cfg = config_from_checkpoint(read_config_json(tmp_path / "out"))
    assert (cfg.attn_top_p, cfg.ffn_top_p) == (0.8, 0.6)


@pytest.mark.parametrize(
    "args,fragment,code",
    [
        pytest.param(["{tmp}/missing", "{tmp}/out"], "does not exist", 1, id="src-missing"),
        pytest.param(["{ck}", "{tmp}/exists"], "already exists; pass --force", 1, id="out-exists"),
        pytest.param(["{ck}", "{tmp}/out", "--target-reduction", "0.5"], "go together", 2, id="target-without-videos"),
        pytest.param(["{ck}", "{tmp}/out", "--calibrate", "{tmp}/v.mp4"], "go together", 2, id="videos-without-target"),
        pytest.param(["{ck}", "{tmp}/out", "--target-reduction", "0.5", "--calibrate", "{tmp}/v.mp4", "--top-p", "0.5"],
                     "chooses the top-p values", 2, id="target-and-top-p"),
        pytest.param(["{ck}", "{tmp}/out", "--target-reduction", "0.5", "--calibrate", "{tmp}/v.mp4", "--grid", "x"],
                     "--grid", 2, id="bad-grid"),
        pytest.param(["{ck}", "{tmp}/out", "--attn-top-p", "2"], "attn-top-p", 2, id="bad-top-p"),
        pytest.param(["{ck}", "{tmp}/out", "--per-layer"], "--per-layer is a calibration method", 2, id="per-layer-alone"),
        pytest.param(["{ck}", "{tmp}/out", "--layers", "0-9"], "past the model's 2 layers", 1, id="layers-past-model"),
        pytest.param(["nobody/not-a-model", "{tmp}/out"], "not in the Hugging Face cache", 1, id="uncached-hub-id"),
        pytest.param(["{ck}", "{tmp}/out", "--question", "  "], "--question is empty", 2, id="empty-question"),
    ],
)
def test_convert_cli_errors_are_one_line(runner, tiny_checkpoint, tmp_path, args, fragment, code):
    (tmp_path / "exists").mkdir()
    args = [a.format(tmp=tmp_path, ck=tiny_checkpoint) for a in args]
    res = convert_cli(runner, *args)
    assert res.exit_code == code, res.output
    err = res.stderr.strip()
    assert err.startswith("error:") and "\n" not in err and "Traceback" not in err, err
    assert fragment in err and res.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists"]


def test_convert_cli_ctrl_c_exits_130_and_leaves_nothing(runner, tiny_checkpoint, tmp_path, monkeypatch):
    def interrupted(a, b):
        raise KeyboardInterrupt

    monkeypatch.setattr(convert_mod, "link_or_copy", interrupted)
    res = convert_cli(runner, tiny_checkpoint, tmp_path / "out", "-q")
    assert res.exit_code == 130 and "interrupted" in res.stderr and "Traceback" not in res.stderr
    assert list(tmp_path.iterdir()) == []
