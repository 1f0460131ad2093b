"""--device-map on the CPU: a tiny model split by accelerate (some layers in memory, the others streamed from
the checkpoint on disk) gives the single-device logits and answers, p = 1 still equals dense; the
placement of a multi-GPU map (read without GPUs); the flags' one-line errors."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from adaspark_cli.cli.app import app
from adaspark_cli.placement import (
    DeviceMapSpec,
    Placement,
    PlacementError,
    parse_device_map,
    parse_max_memory,
    plan_device_map,
)
from adaspark_cli.video import DecodedVideo

pytest.importorskip("accelerate")

QUESTION = "what color was the star?"
CLOCK_KEYS = {"prefill_seconds", "video_prefill_seconds", "decode_seconds", "timing"}
LAYERS = 4


def synthetic_video(n=12, height=112, width=168, seed=0) -> DecodedVideo:
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, size=(n, height, width, 3), dtype=np.uint8)
    idx = np.arange(n) * 12
    return DecodedVideo(Path("synthetic.mp4"), frames, idx / 24.0, idx, 24.0, n * 12, n * 12 / 24.0, "test")


@pytest.fixture(scope="module")
def tiny4(tmp_path_factory):
    from adaspark_cli.checkpoint import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny4"), text_layers=LAYERS)


def layer_values(device_map: dict) -> list:
    return [Placement(device_map).raw(f"model.language_model.layers.{i}") for i in range(LAYERS)]


@pytest.fixture(scope="module")
def split_cap(tiny4):
    """A CPU memory cap under which accelerate keeps some layers in memory and streams the others from disk."""
    from transformers import AutoConfig, Qwen2_5_VLForConditionalGeneration

    config = AutoConfig.from_pretrained(tiny4)
    total = sum(p.stat().st_size for p in tiny4.glob("*.safetensors"))
    for percent in range(100, 20, -5):
        cap = total * percent // 100
        plan = plan_device_map(Qwen2_5_VLForConditionalGeneration, config,
                               DeviceMapSpec("auto", (("cpu", cap),)), torch.float32)
        values = layer_values(plan)
        if "cpu" in values and "disk" in values:
            return cap
    pytest.fail("no CPU cap splits the tiny model between memory and disk")


def load(path, **kwargs):
    from adaspark_cli.qa import load_video_qa

    return load_video_qa(str(path), **kwargs)


SPARSE = {"cube": (1, 2, 2), "attn_top_p": 0.5, "ffn_top_p": 0.5}


@pytest.mark.parametrize("kernel", ["reference", "auto"])
def test_split_model_equals_the_single_device_model(tiny4, split_cap, kernel):
    """reference: the per-token selection and the gathered FFN; auto: the CPU's gathered block kernel and
    the block FFN (on this tiny random model each query tile's union covers every earlier tile)."""
    spec = DeviceMapSpec("auto", (("cpu", split_cap),))
    split = load(tiny4, device_map=spec, overrides=SPARSE, kernel=kernel)
    single = load(tiny4, device="cpu", overrides=SPARSE, kernel=kernel)
    placement = split.placement
    assert placement is not None and placement.spread and set(layer_values(placement.device_map)) == {"cpu", "disk"}
    assert placement.devices == [torch.device("cpu")] and split.device == torch.device("cpu")
    assert split.qa.decode_step == "dynamic"  # the fixed-shape step would write every cache at one device's index
    assert any(p.device.type == "meta" for p in split.qa.model.parameters())  # some weights really are on disk
    assert "streamed from disk" in placement.describe(LAYERS)

    prompt = single.qa.prepare_video(synthetic_video(), max_pixels=168 * 112)
    # no dense fallback: the sparse kernel itself runs on the split layers
    with split.qa.state.override(dense_fallback=False), single.qa.state.override(dense_fallback=False):
        sparse_split = split.qa.prefill_logits(prompt, QUESTION)
        torch.testing.assert_close(sparse_split, single.qa.prefill_logits(prompt, QUESTION), rtol=0, atol=0)
        stream = split.qa.answer(split.qa.prefill_video(prompt), QUESTION, max_new_tokens=4)
        list(stream)
    rows = stream.result.to_json()["layers"]
    want = "reference" if kernel == "reference" else "gathered"
    assert all(r["sparse"] and r["kernel"] == want and r["ffn_kept"] < r["ffn_total"] for r in rows)
    if kernel == "reference":
        assert all(r["attn_density"] < 1.0 for r in rows)

    with split.qa.state.override(enabled=False):  # dense on the split model
        dense_split = split.qa.prefill_logits(prompt, QUESTION)
    with split.qa.state.override(config=split.config.replace(attn_top_p=1.0, ffn_top_p=1.0)):
        p1_split = split.qa.prefill_logits(prompt, QUESTION)
    torch.testing.assert_close(p1_split, dense_split, rtol=1e-5, atol=1e-5)  # p = 1 is dense, split or not
    with single.qa.state.override(enabled=False):
        torch.testing.assert_close(dense_split, single.qa.prefill_logits(prompt, QUESTION), rtol=0, atol=0)
    assert not torch.allclose(sparse_split, dense_split)  # top-p 0.5 changed something: the check can fail


def test_a_map_that_fits_one_device_is_the_plain_model(tiny4):
    loaded = load(tiny4, device_map=DeviceMapSpec("auto"))
    assert loaded.placement.device_map == {"": "cpu"} and not loaded.placement.spread
    assert loaded.qa.decode_step == "auto" and loaded.device == torch.device("cpu")
    assert loaded.placement.describe(LAYERS) == "layers 0-3 on cpu; vision tower on cpu"


def ask(runner, *args):
    return runner.invoke(app, ["ask", *map(str, args)], catch_exceptions=False)


FAST = ["--max-frames", "4", "--max-new-tokens", "4", "--cube", "1x2x2", "--top-p", "0.5"]


def answers(stdout: str) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in CLOCK_KEYS} for line in stdout.splitlines()]


def test_ask_and_batch_answers_with_a_device_map_equal_the_single_device_ones(runner, tiny4, split_cap, make_video,
                                                                               tmp_path):
    clip = make_video(n_frames=24, fps=12.0, width=112, height=112)
    questions = ["what color?", "how many?"]
    plain = ask(runner, clip, *questions, "--json", "--model", tiny4, *FAST)
    spread = ask(runner, clip, *questions, "--json", "--model", tiny4, *FAST, "--device-map", "auto",
                 "--max-memory", f"cpu={split_cap}")
    assert plain.exit_code == 0 and spread.exit_code == 0, spread.output
    assert answers(spread.stdout) == answers(plain.stdout)
    assert "--device-map auto: layers " in spread.stderr and "streamed from disk" in spread.stderr

    out = tmp_path / "answers.jsonl"
    manifest = tmp_path / "videos.jsonl"
    manifest.write_text(json.dumps({"video": str(clip), "questions": questions}) + "\n")
    res = runner.invoke(app, ["batch", str(manifest), "--out", str(out), "--model", str(tiny4), *FAST,
                              "--device-map", "balanced", "--max-memory", f"cpu={split_cap}"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert [{k: v for k, v in a.items() if k not in CLOCK_KEYS} for a in record["answers"]] == answers(plain.stdout)
    assert "--device-map balanced: layers " in res.stderr


def test_placement_of_a_two_gpu_map_without_gpus():
    device_map = {"model.visual": 0, "model.language_model.embed_tokens": 0,
                  "model.language_model.layers.0": 0, "model.language_model.layers.1": 1,
                  "model.language_model.layers.2": 1, "model.language_model.layers.3": "cpu",
                  "model.language_model.norm": 1, "lm_head": "disk"}
    placement = Placement(device_map)
    cuda0, cuda1 = torch.device("cuda", 0), torch.device("cuda", 1)
    assert placement.main_device == cuda0 and placement.devices == [cuda0, cuda1] and placement.spread
    assert placement.device_of("model.language_model.embed_tokens") == cuda0
    assert placement.device_of("model.language_model.layers.2.mlp.up_proj") == cuda1  # the enclosing entry
    assert placement.device_of("model.language_model.layers.3") == cuda0 and placement.offloaded("model.language_model.layers.3")
    assert placement.describe(LAYERS) == ("layers 0 on cuda:0, 1-2 on cuda:1, 3 on cuda:0 (streamed from cpu); "
                                          "vision tower on cuda:0")
    assert not Placement({"": 0}).spread and not Placement({"": "cpu"}).spread
    assert Placement({"a": "cpu", "b": "disk"}).spread and not Placement({"a": "cpu"}).offloaded("a")


def test_parse_max_memory_and_strategies():
    assert parse_max_memory("0=1GiB, 1 = 2GB,cpu=3MB,cuda:2=512") == ((0, 2**30), (1, 2 * 10**9), ("cpu", 3 * 10**6),
                                                                        (2, 512))
    assert parse_max_memory("cpu=1.5KiB") == (("cpu", 1536),)
    for bad in ("cpu", "gpu=1GB", "0=lots", "0=1GB,0=2GB", ""):
        with pytest.raises(PlacementError):
            parse_max_memory(bad)
    assert [parse_device_map(s) for s in ("auto", "balanced", "balanced_low_0", "sequential")]
    with pytest.raises(PlacementError, match="--device cuda:1"):
        parse_device_map("cuda:1")


@pytest.mark.parametrize("args,fragment", [
    (["--device-map", "everywhere"], "--device-map 'everywhere' is not a strategy; use --device-map auto"),
    (["--device-map", "cpu"], "use --device cpu for that"),
    (["--max-memory", "cpu=1GB"], "--max-memory caps the devices of --device-map; add --device-map auto"),
    (["--device-map", "auto", "--max-memory", "cpu:1GB"], "is not DEVICE=SIZE"),
    (["--device-map", "auto", "--device", "cpu"], "drop --device cpu"),
])
def test_bad_device_map_flags_are_one_line_usage_errors(runner, tmp_path, args, fragment):
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"")
    res = ask(runner, clip, "what?", *args)
    assert res.exit_code == 2 and fragment in res.stderr, res.output
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.output


@pytest.mark.parametrize("args,fragment", [
    (["--gpus", "2"], "--gpus 2 runs one replica per GPU; give one of them"),
    (["--ray", "local"], "--ray places one replica per GPU on a cluster: give one of them"),
])
def test_batch_refuses_device_map_with_several_replicas(runner, tmp_path, args, fragment):
    (tmp_path / "a.mp4").write_bytes(b"")
    res = runner.invoke(app, ["batch", str(tmp_path), "-q", "what?", "--out", str(tmp_path / "o.jsonl"),
                              "--device-map", "auto", *args], catch_exceptions=False)
    assert res.exit_code == 2 and fragment in res.stderr, res.output


def test_missing_accelerate_is_one_line_naming_pip_install(runner, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "accelerate", None)  # find_spec -> None, import -> ImportError
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"")
    res = ask(runner, clip, "what?", "--device-map", "auto")
    assert res.exit_code == 1, res.output
    assert res.stderr.strip() == ("error: --device-map needs accelerate, which is not installed; install it with "
                                  "pip install accelerate (or pip install 'adaspark-cli[multi-gpu]')")
