"""Sparse decoding through the whole tiny Qwen2.5-VL: p = 1 is dense decoding exactly, the gathered
path equals the reference step by step, and the answer's JSON carries the decode statistics."""

import pytest
import torch

from adaspark_cli.adapters import sparsify, unsparsify
from adaspark_cli.checkpoint import load_model
from adaspark_cli.config import AdaSparkConfig
from adaspark_cli.errors import ConfigError
from adaspark_cli.qa import VideoQA
from test_model import QUESTION, synthetic_video

STEPS = 6


@pytest.fixture(scope="module")
def loaded(tiny_checkpoint):
    return load_model(str(tiny_checkpoint))


def answer_logits(qa: VideoQA, prefix, *, decode_kernel: str | None = None):
    """Logits of every step of one greedy answer (question step first) and the answer's JSON;
    decode_kernel switches the attention kernel after the prefill, for the decode steps only."""
    steps = []
    original = qa._step

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        steps.append(out.clone())
        return out

    qa._step = spy
    try:
        with qa.state.override(kernel=decode_kernel or "reference"):
            stream = qa.answer(prefix, QUESTION, max_new_tokens=STEPS)
            list(stream)
    finally:
        del qa._step
    return torch.stack(steps), stream.result.to_json()


def test_decode_top_p_one_is_dense_decoding_exactly(loaded):
    model, processor = loaded
    state = sparsify(model, AdaSparkConfig(cube=(1, 2, 2), attn_top_p=0.5, ffn_top_p=0.5))
    try:
        qa = VideoQA(model, processor, state)
        prefix = qa.prefill_video(qa.prepare_video(synthetic_video(seed=4), max_pixels=168 * 112))
        dense, dense_json = answer_logits(qa, prefix)
        with state.override(config=state.config.replace(decode_top_p=1.0)):
            p1, p1_json = answer_logits(qa, prefix)
    finally:
        unsparsify(model)
    assert p1.shape[0] > 1  # at least one decode step ran
    assert torch.equal(p1, dense)
    assert dense_json["decode"]["sparse"] is False and dense_json["decode"]["top_p"] is None
    assert p1_json["decode"]["sparse"] is True and p1_json["decode"]["attn_density"] == 1.0
    assert p1_json["decode"]["cubes_attended_mean"] == p1_json["decode"]["cubes_total"] == p1_json["cubes"]


def test_sparse_decoding_gathered_equals_reference_and_differs_from_dense(loaded):
    model, processor = loaded
    state = sparsify(model, AdaSparkConfig(cube=(1, 2, 2), attn_top_p=0.5, ffn_top_p=0.5))
    try:
        qa = VideoQA(model, processor, state)
        prefix = qa.prefill_video(qa.prepare_video(synthetic_video(seed=5), max_pixels=168 * 112))
        dense, _ = answer_logits(qa, prefix)
        with state.override(config=state.config.replace(decode_top_p=0.2)):
            ref, ref_json = answer_logits(qa, prefix, decode_kernel="reference")
            cube_keys = prefix.cube_keys
            fast, fast_json = answer_logits(qa, prefix, decode_kernel="gathered")
    finally:
        unsparsify(model)
    assert prefix.cube_keys is cube_keys is not None  # computed once per prefix, reused by the next question
    assert sorted(cube_keys.mean_keys) == [0, 1]
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)
    n = min(len(ref), len(dense))
    torch.testing.assert_close(ref[0], dense[0])  # the question step stays dense
    assert not torch.allclose(ref[1:n], dense[1:n], atol=1e-4)
    stats = ref_json["decode"]
    assert stats == fast_json["decode"]
    assert stats["sparse"] and stats["top_p"] == 0.2 and stats["steps"] == len(ref) - 1
    assert 0 < stats["cubes_attended_mean"] < stats["cubes_total"] == ref_json["cubes"]
    assert 0 < stats["attn_density"] < 1


def test_dense_mode_decodes_densely(loaded):
    model, processor = loaded
    state = sparsify(model, AdaSparkConfig(cube=(1, 2, 2), decode_top_p=0.2), enabled=False)
    try:
        qa = VideoQA(model, processor, state)
        prefix = qa.prefill_video(qa.prepare_video(synthetic_video(seed=6), max_pixels=168 * 112))
        _, result = answer_logits(qa, prefix)
    finally:
        unsparsify(model)
    assert prefix.cube_keys is None
    assert result["mode"] == "dense" and result["decode"]["sparse"] is False


def test_decode_top_p_in_the_checkpoint_block():
    cfg = AdaSparkConfig(decode_top_p=0.8)
    assert AdaSparkConfig.from_dict(cfg.to_dict()) == cfg
    assert "decode_top_p" not in AdaSparkConfig().to_dict()  # older builds keep reading blocks without it
    with pytest.raises(ConfigError, match="decode_top_p"):
        AdaSparkConfig(decode_top_p=0.0)
    with pytest.raises(ConfigError, match="decode_top_p"):
        AdaSparkConfig.from_dict({"decode_top_p": "high"})


def test_ask_decode_top_p_flag(runner, clip, tiny_checkpoint):
    import json

    from adaspark_cli.cli.app import app

    args = ["ask", str(clip), "what?", "--model", str(tiny_checkpoint), "--json", "-q", "--cube", "1x2x2", "--max-new-tokens", "4"]
    res = runner.invoke(app, [*args, "--decode-top-p", "0.3"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    decode = json.loads(res.stdout)["decode"]
    assert decode["sparse"] and decode["top_p"] == 0.3 and decode["cubes_attended_mean"] <= decode["cubes_total"]
    bad = runner.invoke(app, [*args, "--decode-top-p", "1.5"])
    assert bad.exit_code == 2 and "--decode-top-p" in bad.stderr
