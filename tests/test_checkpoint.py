"""The tiny Qwen2.5-VL builder and the checkpoint loader (adaspark_cli.checkpoint)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from adaspark_cli.checkpoint import (
    SPECIAL_TOKENS,
    SUPPORTED_MODEL_TYPES,
    build_tiny_checkpoint,
    load_model,
    read_config_json,
    resolve_model_path,
)
from adaspark_cli.errors import CheckpointError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "processor_config.json")
QUESTION = "What color is the square that moves to the left?"


def _frames(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)


def _video_messages(frames: np.ndarray, question: str = QUESTION) -> list[dict]:
    return [{"role": "user", "content": [{"type": "video", "video": frames}, {"type": "text", "text": question}]}]


def _metadata(n: int, fps: float = 2.0):
    from transformers.video_utils import VideoMetadata

    return VideoMetadata(total_num_frames=n, fps=fps, frames_indices=list(range(n)))


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _checkpoint_error(model: str | Path, match: str) -> str:
    with pytest.raises(CheckpointError, match=match) as info:
        load_model(str(model))
    message = str(info.value)
    assert "\n" not in message and "\r" not in message, message
    return message


@pytest.fixture(scope="module")
def tiny_loaded(tiny_checkpoint: Path):
    return load_model(str(tiny_checkpoint))


# --- builder ----------------------------------------------------------------------------------------------


def test_builder_is_deterministic(tiny_checkpoint: Path, tmp_path: Path) -> None:
    again = build_tiny_checkpoint(tmp_path / "again", seed=0)
    other = build_tiny_checkpoint(tmp_path / "other", seed=1)
    for name in (*TOKENIZER_FILES, "config.json", "generation_config.json"):
        assert (again / name).read_bytes() == (tiny_checkpoint / name).read_bytes(), name
        assert (other / name).read_bytes() == (tiny_checkpoint / name).read_bytes(), name  # seed: weights only
    assert (again / "model.safetensors").read_bytes() == (tiny_checkpoint / "model.safetensors").read_bytes()
    first, second = load_file(tiny_checkpoint / "model.safetensors"), load_file(again / "model.safetensors")
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    third = load_file(other / "model.safetensors")
    assert any(not torch.equal(first[k], third[k]) for k in first)
    assert all(t.dtype == torch.float32 for t in first.values())


def test_builder_leaves_global_rng_alone(tmp_path: Path) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_checkpoint(tmp_path / "ckpt", seed=7)
    assert torch.equal(torch.rand(3), expected)


def test_config_is_tiny_qwen2_5_vl(tiny_checkpoint: Path) -> None:
    from transformers import AutoTokenizer

    config = read_config_json(tiny_checkpoint)
    text, vision = config["text_config"], config["vision_config"]
    assert config["model_type"] in SUPPORTED_MODEL_TYPES
    assert config["architectures"] == ["Qwen2_5_VLForConditionalGeneration"]
    assert (text["hidden_size"], text["num_hidden_layers"], text["intermediate_size"]) == (64, 2, 128)
    assert (text["num_attention_heads"], text["num_key_value_heads"]) == (4, 2)
    assert text["rope_parameters"]["mrope_section"] == [2, 3, 3]  # sums to head_dim / 2 = 8
    assert text["max_position_embeddings"] == 4096 and config["tie_word_embeddings"] is False
    assert (vision["depth"], vision["hidden_size"], vision["num_heads"], vision["out_hidden_size"]) == (2, 32, 2, 64)
    assert (vision["patch_size"], vision["spatial_merge_size"], vision["temporal_patch_size"]) == (14, 2, 2)
    assert vision["fullatt_block_indexes"] == [1] and vision["window_size"] == 112

    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    assert 300 <= len(tokenizer) <= 600
    assert text["vocab_size"] >= len(tokenizer) and text["vocab_size"] % 64 == 0
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    assert config["video_token_id"] == ids["<|video_pad|>"]
    assert config["image_token_id"] == ids["<|image_pad|>"]
    assert config["vision_start_token_id"] == ids["<|vision_start|>"]
    assert config["vision_end_token_id"] == ids["<|vision_end|>"]
    assert config["eos_token_id"] == ids["<|im_end|>"] and config["pad_token_id"] == ids["<|endoftext|>"]
    generation = json.loads((tiny_checkpoint / "generation_config.json").read_text())
    assert ids["<|im_end|>"] in generation["eos_token_id"]


def test_reload_offline_with_stock_classes(tiny_checkpoint: Path) -> None:
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

    assert os.environ["HF_HUB_OFFLINE"] == "1"
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_checkpoint)
    processor = AutoProcessor.from_pretrained(tiny_checkpoint)
    assert isinstance(processor, Qwen2_5_VLProcessor)
    assert type(processor.video_processor).__name__ == "Qwen2VLVideoProcessor"
    assert processor.video_token_id == model.config.video_token_id
    assert processor.image_token_id == model.config.image_token_id
    assert processor.tokenizer.eos_token == "<|im_end|>" and processor.tokenizer.pad_token == "<|endoftext|>"
    assert 200_000 < sum(p.numel() for p in model.parameters()) < 300_000


def test_tokenizer_round_trip(tiny_checkpoint: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    sentence = "How many red circles move up, down, left or right? Answer: 12 (twelve)."
    ids = tokenizer(sentence)["input_ids"]
    assert tokenizer.decode(ids) == sentence
    assert len(ids) < len(sentence.encode())  # the BPE merges common words
    for token in SPECIAL_TOKENS:
        assert tokenizer.tokenize(token) == [token]
    assert tokenizer.decode(tokenizer("<|im_start|>user\nhi<|im_end|>")["input_ids"], skip_special_tokens=True) == (
        "user\nhi"
    )
    assert "ü" in tokenizer.decode(tokenizer("über")["input_ids"])  # byte-level: no unknown tokens


def test_chat_template(tiny_checkpoint: Path) -> None:
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_checkpoint)
    text = processor.apply_chat_template(_video_messages(_frames(2, 56, 56), "Hi?"), add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>Hi?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert processor.tokenizer.apply_chat_template(chat, tokenize=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    )


@pytest.mark.parametrize(
    ("frames", "height", "width", "grid"),
    [(8, 112, 112, [4, 8, 8]), (5, 56, 84, [3, 4, 6])],  # 5 frames: the last is repeated to a pair
)
def test_processed_video_forward(tiny_loaded, frames: int, height: int, width: int, grid: list[int]) -> None:
    model, processor = tiny_loaded
    video = _frames(frames, height, width)
    messages = _video_messages(video)
    inputs = processor.apply_chat_template(
        messages,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        add_generation_prompt=True,
        processor_kwargs={"video_metadata": [_metadata(frames)], "do_sample_frames": False},
    )
    assert set(inputs) == {
        "input_ids",
        "attention_mask",
        "mm_token_type_ids",
        "pixel_values_videos",
        "video_grid_thw",
        "second_per_grid_ts",
    }
    assert inputs["video_grid_thw"].tolist() == [grid]
    n_patches = grid[0] * grid[1] * grid[2]
    assert inputs["pixel_values_videos"].shape == (n_patches, 3 * 2 * 14 * 14)
    n_video_tokens = int((inputs["input_ids"] == processor.video_token_id).sum())
    assert n_video_tokens == n_patches // 4 == int((inputs["mm_token_type_ids"] == 2).sum())
    assert inputs["second_per_grid_ts"].tolist() == [1.0]  # 2 frames / 2 fps

    # The same through a rendered prompt and processor(...).
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    direct = processor(
        text=[text], videos=[video], video_metadata=[_metadata(frames)], do_sample_frames=False, return_tensors="pt"
    )
    assert set(direct) == set(inputs)
    assert all(torch.equal(torch.as_tensor(direct[k]), torch.as_tensor(inputs[k])) for k in inputs)

    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (1, inputs["input_ids"].shape[1], model.config.text_config.vocab_size)
    assert torch.isfinite(logits).all()


# --- loader -----------------------------------------------------------------------------------------------


def test_load_model_tiny(tiny_loaded, tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, processor = tiny_loaded
    assert model.dtype == torch.float32 and not model.training
    assert model.device.type == "cpu"
    assert model.config.text_config._attn_implementation == "sdpa"
    assert model.config.vision_config._attn_implementation == "sdpa"
    assert processor.video_token_id == model.config.video_token_id
    capsys.readouterr()
    again, _ = load_model(str(tiny_checkpoint), dtype=torch.bfloat16)
    assert again.dtype == torch.bfloat16
    assert capsys.readouterr() == ("", "")  # the library never prints (no progress bars either)


def test_resolve_local_dir_and_cached_hub_id(tiny_checkpoint: Path) -> None:
    assert resolve_model_path(str(tiny_checkpoint)) == tiny_checkpoint
    # A hub id found in the HF cache (HF_HOME/hub) resolves offline to its snapshot folder.
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = Path(os.environ["HF_HOME"]) / "hub" / "models--tiny--qwen2_5_vl"
    _copy(tiny_checkpoint, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    assert resolve_model_path("tiny/qwen2_5_vl") == repo / "snapshots" / commit
    model, _ = load_model("tiny/qwen2_5_vl")
    assert model.config.model_type == "qwen2_5_vl"


def test_uncached_hub_id_offline() -> None:
    message = _checkpoint_error("nobody/not-a-model", "not in the Hugging Face cache")
    assert "nobody/not-a-model" in message and "`hf download nobody/not-a-model`" in message
    assert "HF_HUB_OFFLINE" in message and "local" in message


def test_uncached_hub_id_network_down(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "ENDPOINT", "http://127.0.0.1:9")  # connection refused, at once
    message = _checkpoint_error("nobody/not-a-model", r"not in the Hugging Face cache \(the Hub cannot be reached\)")
    assert "`hf download nobody/not-a-model`" in message


def test_missing_path(tmp_path: Path) -> None:
    message = _checkpoint_error(tmp_path / "nope", "does not exist")
    assert str(tmp_path / "nope") in message
    _checkpoint_error("./not/a/dir", "does not exist")


def test_path_is_a_file(tiny_checkpoint: Path) -> None:
    _checkpoint_error(tiny_checkpoint / "model.safetensors", "is a file, not a checkpoint directory")


def test_no_config_json(tmp_path: Path) -> None:
    _checkpoint_error(tmp_path, "has no config.json")


@pytest.mark.parametrize(("text", "match"), [("{not json", "is not valid JSON"), ("[1, 2]", "not an object")])
def test_config_json_not_json(tmp_path: Path, text: str, match: str) -> None:
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(CheckpointError, match=match):
        read_config_json(tmp_path)
    _checkpoint_error(tmp_path, match)


def test_unsupported_model_type(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    message = _checkpoint_error(tmp_path, "is a llama checkpoint")
    assert "Qwen2.5-VL (Qwen2_5_VLForConditionalGeneration)" in message
    (tmp_path / "config.json").write_text("{}")
    _checkpoint_error(tmp_path, "has no model_type")


def test_missing_weights(tiny_checkpoint: Path, tmp_path: Path) -> None:
    ckpt = _copy(tiny_checkpoint, tmp_path / "ckpt")
    (ckpt / "model.safetensors").unlink()
    _checkpoint_error(ckpt, r"has no model weights \(model.safetensors or model.safetensors.index.json\)")
    (ckpt / "pytorch_model.bin").write_bytes(b"")
    _checkpoint_error(ckpt, "found pytorch_model.bin: convert them to safetensors")


def test_index_names_missing_shard(tiny_checkpoint: Path, tmp_path: Path) -> None:
    ckpt = _copy(tiny_checkpoint, tmp_path / "ckpt")
    names = list(load_file(ckpt / "model.safetensors"))
    (ckpt / "model.safetensors").rename(ckpt / "model-00001-of-00002.safetensors")
    weight_map = {name: f"model-0000{1 + i % 2}-of-00002.safetensors" for i, name in enumerate(names)}
    (ckpt / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    _checkpoint_error(ckpt, "missing weight shards listed in model.safetensors.index.json: model-00002-of-00002")


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda f: os.truncate(f, f.stat().st_size // 2), "is truncated"),
        (lambda f: os.truncate(f, 4), "is corrupt"),
        (lambda f: f.write_bytes(b"<html>404 not found</html>" * 4), "is corrupt"),
    ],
    ids=["truncated", "short", "garbage"],
)
def test_corrupt_shard(tiny_checkpoint: Path, tmp_path: Path, damage, match: str) -> None:
    ckpt = _copy(tiny_checkpoint, tmp_path / "ckpt")
    damage(ckpt / "model.safetensors")
    message = _checkpoint_error(ckpt, match)
    assert "re-download" in message


def test_missing_tensor(tiny_checkpoint: Path, tmp_path: Path) -> None:
    ckpt = _copy(tiny_checkpoint, tmp_path / "ckpt")
    tensors = load_file(ckpt / "model.safetensors")
    del tensors["model.layers.0.mlp.down_proj.weight"]
    save_file(tensors, ckpt / "model.safetensors", metadata={"format": "pt"})
    _checkpoint_error(ckpt, r"lacks 1 weight tensor\(s\) of Qwen2.5-VL \(.*layers.0.mlp.down_proj.weight\)")


def test_wrong_shape_tensor(tiny_checkpoint: Path, tmp_path: Path) -> None:
    ckpt = _copy(tiny_checkpoint, tmp_path / "ckpt")
    tensors = load_file(ckpt / "model.safetensors")
    tensors["lm_head.weight"] = tensors["lm_head.weight"][:100].clone()
    save_file(tensors, ckpt / "model.safetensors", metadata={"format": "pt"})
    _checkpoint_error(ckpt, r"shape does not match its config.json \(lm_head.weight \[100, 64\] vs \[512, 64\]\)")


def test_missing_processor_files(tiny_checkpoint: Path, tmp_path: Path) -> None:
    ckpt = _copy(tiny_checkpoint, tmp_path / "ckpt")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (ckpt / name).unlink()
    message = _checkpoint_error(ckpt, "the tokenizer of .* does not match the model")
    assert "no tokenizer.json or vocab.json" in message and "video token id" in message
