"""The whole tiny Qwen2.5-VL with AdaSpark: p = 1 reproduces dense, the cache path equals one full forward."""

from pathlib import Path

import numpy as np
import pytest
import torch

from adaspark_cli.adapters import sparse_state, sparsify, unsparsify
from adaspark_cli.checkpoint import load_model
from adaspark_cli.config import AdaSparkConfig
from adaspark_cli.qa import VideoQA
from adaspark_cli.stats import PrefillStats
from adaspark_cli.video import DecodedVideo

QUESTION = "what color was the star?"


def synthetic_video(n=12, height=112, width=168, seed=0) -> DecodedVideo:
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, size=(n, height, width, 3), dtype=np.uint8)
    idx = np.arange(n) * 12
    return DecodedVideo(Path("synthetic.mp4"), frames, idx / 24.0, idx, 24.0, n * 12, n * 12 / 24.0, "test")


@pytest.fixture(scope="module")
def loaded(tiny_checkpoint):
    model, processor = load_model(str(tiny_checkpoint))
    return model, processor


def first_token_logits(qa: VideoQA, video: DecodedVideo, question: str = QUESTION) -> torch.Tensor:
    prompt = qa.prepare_video(video, max_pixels=168 * 112)
    prefix = qa.prefill_video(prompt)
    captured = {}
    stream = qa.answer(prefix, question, max_new_tokens=1, on_step=lambda i, logits: captured.setdefault(i, logits.clone()))
    list(stream)
    return captured[0]


def full_forward_logits(model, qa: VideoQA, video: DecodedVideo, question: str = QUESTION) -> torch.Tensor:
    """One forward over prefix + question with the stock model (SDPA), same positions."""
    prompt = qa.prepare_video(video, max_pixels=168 * 112)
    q_ids = qa.question_ids(question)
    ids = torch.cat([prompt.input_ids[0], q_ids])[None]
    q_pos = torch.arange(prompt.next_position, prompt.next_position + q_ids.numel()).view(1, 1, -1).expand(3, 1, -1)
    positions = torch.cat([prompt.positions, q_pos], dim=2)
    with torch.inference_mode():
        out = model(
            input_ids=ids,
            pixel_values_videos=prompt.pixel_values_videos,
            video_grid_thw=prompt.video_grid_thw,
            position_ids=positions,
        )
    return out.logits[0, -1]


def test_p_one_reproduces_the_dense_model(loaded):
    model, processor = loaded
    video = synthetic_video()
    state = sparsify(model, AdaSparkConfig(cube=(1, 2, 2), attn_top_p=1.0, ffn_top_p=1.0))
    try:
        qa = VideoQA(model, processor, state)
        sparse_p1 = first_token_logits(qa, video)
        with state.override(enabled=False):
            dense_path = first_token_logits(qa, video)
    finally:
        unsparsify(model)
    stock = full_forward_logits(model, qa, video)
    torch.testing.assert_close(sparse_p1, stock, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dense_path, stock, rtol=1e-5, atol=1e-5)


def test_sparsity_changes_logits_and_records_stats(loaded):
    model, processor = loaded
    video = synthetic_video(seed=1)
    state = sparsify(model, AdaSparkConfig(cube=(1, 2, 2), attn_top_p=0.3, ffn_top_p=0.3), kernel="reference")
    try:
        qa = VideoQA(model, processor, state)
        prompt = qa.prepare_video(video, max_pixels=168 * 112)
        prefix = qa.prefill_video(prompt)
        stream = qa.answer(prefix, QUESTION, max_new_tokens=2)
        list(stream)
        res = stream.result.to_json()
        sparse = first_token_logits(qa, video)
    finally:
        unsparsify(model)
    dense = full_forward_logits(model, qa, video)
    assert torch.isfinite(sparse).all()
    assert not torch.allclose(sparse, dense, atol=1e-4)
    assert res["video_tokens"] == prompt.video_tokens == 6 * 6 * 4
    for row in res["layers"]:
        assert row["sparse"]
        assert 0 < row["attn_density"] < 1
        assert 0 < row["ffn_kept"] < row["ffn_total"] == res["video_tokens"]
        assert row["cubes_attended_mean"] < row["cubes_total"]
    assert 0 < res["flops"]["reduction"] < 1


def test_video_prefix_is_reused_and_never_mutated(loaded):
    model, processor = loaded
    state = sparsify(model, AdaSparkConfig(cube=(1, 2, 2), attn_top_p=0.5, ffn_top_p=0.5))
    try:
        qa = VideoQA(model, processor, state)
        vision_calls = []
        hook = model.model.visual.register_forward_hook(lambda *args: vision_calls.append(1))
        prefix = qa.prefill_video(qa.prepare_video(synthetic_video(seed=2), max_pixels=168 * 112))
        first = qa.answer(prefix, "how many circles?", max_new_tokens=4)
        a1 = "".join(first)
        second = qa.answer(prefix, "which way did it move?", max_new_tokens=4)
        "".join(second)
        again = qa.answer(prefix, "how many circles?", max_new_tokens=4)
        a3 = "".join(again)
        hook.remove()
    finally:
        unsparsify(model)
    assert a1 == a3
    assert not first.result.video_prefill_reused
    assert second.result.video_prefill_reused and again.result.video_prefill_reused
    assert len(vision_calls) == 1  # the video was encoded and prefilled once for three questions
    # the first question's prefill time includes the video prefill it paid for
    assert first.result.prefill_seconds >= first.result.video_prefill_seconds


def test_only_listed_layers_are_sparse(loaded):
    model, processor = loaded
    state = sparsify(model, AdaSparkConfig(cube=(1, 2, 2), attn_top_p=0.3, ffn_top_p=0.3, sparse_layers=(1,)), kernel="reference")
    try:
        qa = VideoQA(model, processor, state)
        prefix = qa.prefill_video(qa.prepare_video(synthetic_video(), max_pixels=168 * 112))
        stream = qa.answer(prefix, QUESTION, max_new_tokens=1)
        list(stream)
        rows = {r["layer"]: r for r in stream.result.to_json()["layers"]}
    finally:
        unsparsify(model)
    assert not rows[0]["sparse"] and rows[0]["attn_density"] == 1.0 and rows[0]["ffn_kept"] == rows[0]["ffn_total"]
    assert rows[1]["sparse"] and rows[1]["attn_density"] < 1.0


def test_sparsify_keeps_checkpoint_keys_and_is_reversible(loaded):
    model, _ = loaded
    keys = list(model.state_dict())
    sparsify(model, AdaSparkConfig())
    assert list(model.state_dict()) == keys
    assert model.config.text_config._attn_implementation == "adaspark"
    assert model.config.vision_config._attn_implementation == "sdpa"
    unsparsify(model)
    assert sparse_state(model) is None
    assert model.config.text_config._attn_implementation == "sdpa"
    assert "forward" not in model.model.language_model.layers[0].mlp.__dict__


def test_unsupported_model_class_is_rejected():
    from adaspark_cli.errors import CheckpointError

    with pytest.raises(CheckpointError, match="Qwen2_5_VLForConditionalGeneration"):
        sparsify(torch.nn.Linear(2, 2), AdaSparkConfig())


def test_block_kernel_in_the_model(loaded):
    """The CPU fast path (per-tile selection, gathered attention) in the whole model: p = 1 is the dense
    model; at p < 1 its per-tile sets attend at least what the per-token reference does."""
    model, processor = loaded
    video = synthetic_video(seed=3)
    state = sparsify(model, AdaSparkConfig(cube=(1, 2, 2), attn_top_p=1.0, ffn_top_p=1.0), kernel="gathered")
    try:
        qa = VideoQA(model, processor, state)
        p1 = first_token_logits(qa, video)
        results = {}
        for kernel in ("reference", "gathered"):
            with state.override(kernel=kernel, config=AdaSparkConfig(cube=(1, 2, 2), attn_top_p=0.4, ffn_top_p=0.5)):
                stream = qa.answer(qa.prefill_video(qa.prepare_video(video, max_pixels=168 * 112)), QUESTION, max_new_tokens=1)
                list(stream)
            results[kernel] = stream.result.to_json()
    finally:
        unsparsify(model)
    torch.testing.assert_close(p1, full_forward_logits(model, qa, video), rtol=1e-5, atol=1e-5)
    ref, fast = results["reference"], results["gathered"]
    for r, f in zip(ref["layers"], fast["layers"]):
        assert f["cubes_total"] == r["cubes_total"]
        assert r["cubes_attended_mean"] <= f["cubes_attended_mean"] <= f["cubes_total"]
        assert r["attn_density"] <= f["attn_density"] <= 1.0
        assert f["ffn_total"] == r["ffn_total"]


def test_unknown_kernel_is_an_error(loaded):
    from adaspark_cli.errors import AdasparkError

    model, processor = loaded
    state = sparsify(model, AdaSparkConfig(cube=(1, 2, 2)))
    try:
        with pytest.raises(AdasparkError, match="unknown attention kernel"):
            with state.override(kernel="magic"):
                pass
        with pytest.raises(AdasparkError, match="unknown attention kernel"):
            sparsify(model, AdaSparkConfig(cube=(1, 2, 2)), kernel="magic")
        with pytest.raises(AdasparkError, match="--kernel fa4 needs a CUDA GPU"):
            with state.override(kernel="fa4"):
                qa = VideoQA(model, processor, state)
                qa.prefill_video(qa.prepare_video(synthetic_video(), max_pixels=168 * 112))
    finally:
        unsparsify(model)


def test_near_dense_layers_fall_back_to_dense_attention(loaded, monkeypatch):
    """A layer whose selection keeps more of the causal blocks than the threshold runs dense SDPA,
    recorded as such, with exactly the dense model's attention; without the fallback the kernel runs."""
    from adaspark_cli.attention import kernels

    monkeypatch.setitem(kernels.DENSE_ABOVE, "cpu", 0.0)  # every selection counts as near-dense
    model, processor = loaded
    video = synthetic_video(seed=2)
    state = sparsify(model, AdaSparkConfig(cube=(1, 2, 2), attn_top_p=0.3, ffn_top_p=1.0), kernel="gathered")
    try:
        qa = VideoQA(model, processor, state)
        stats = PrefillStats()
        prompt = qa.prepare_video(video, max_pixels=168 * 112)
        fallback = qa.prefill_logits(prompt, QUESTION, stats=stats)
        sparse_stats = PrefillStats()
        with state.override(dense_fallback=False):
            sparse = qa.prefill_logits(prompt, QUESTION, stats=sparse_stats)
        with state.override(enabled=False):
            dense = qa.prefill_logits(prompt, QUESTION)
    finally:
        unsparsify(model)
    records = [stats.layers[i] for i in sorted(stats.layers)]
    assert all(r.sparse and r.dense_fallback and r.kernel == "sdpa" for r in records)
    assert all(r.attention.attended_keys == r.attention.causal_keys for r in records)
    torch.testing.assert_close(fallback, dense, rtol=1e-5, atol=1e-5)
    # without the fallback the gathered kernel runs; on this tiny video each query tile's union covers
    # every earlier tile, so it computes the dense attention too, the slow way
    assert all(r.kernel == "gathered" and not r.dense_fallback for r in sparse_stats.layers.values())
    torch.testing.assert_close(sparse, dense, rtol=1e-4, atol=1e-4)


def test_prefill_reports_progress_per_layer(loaded):
    model, processor = loaded
    state = sparsify(model, AdaSparkConfig(cube=(1, 2, 2), attn_top_p=0.5, ffn_top_p=0.5))
    try:
        qa = VideoQA(model, processor, state)
        seen: list[tuple[int, int]] = []
        prompt = qa.prepare_video(synthetic_video(seed=4), max_pixels=168 * 112)
        qa.prefill_video(prompt, progress=lambda d, t: seen.append((d, t)))
        n = len(model.model.language_model.layers)
        assert seen == [(i + 1, n) for i in range(n)]
        qa.prefill_video(qa.prepare_video(synthetic_video(seed=4), max_pixels=168 * 112))  # hooks removed: no more calls
        assert len(seen) == n
    finally:
        unsparsify(model)
