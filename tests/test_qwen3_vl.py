"""Qwen3-VL behind the same interface: a tiny random Qwen3-VL (the real Qwen3VLProcessor, our tokenizer).

- The checkpoint is laid out like the hub's and loads through the same loader.
- Cube layouts across the per-frame-pair runs (golden), odd grids, two videos; the reference attention
  against the brute-force method on such a layout (timestamp text between the frame runs).
- The whole model: p = 1 equals the stock model with its own position computation; DeepStack layers
  keep a dense FFN; the pipelined (streamed) prompt equals the processor's; the MoE class works.
- `ask --json`, `convert`, `profile` end to end on the checkpoint directory.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from test_model import QUESTION, synthetic_video
from test_sparse_attention import brute_force
from video_factory import write_video

from adaspark_cli.adapters import sparsify, unsparsify
from adaspark_cli.adapters.arch import architecture_of
from adaspark_cli.attention import attention_reference
from adaspark_cli.checkpoint import load_model
from adaspark_cli.cli.app import app
from adaspark_cli.config import AdaSparkConfig
from adaspark_cli.cubes import VideoSpan, cube_layout, frame_pair_spans
from adaspark_cli.cubes.plan import build_plan
from adaspark_cli.errors import AdasparkError
from adaspark_cli.qa import VideoQA
from adaspark_cli.qa.result import layer_rows
from adaspark_cli.selection import select_per_token
from adaspark_cli.stats import ModelDims

MAX_PIXELS = 168 * 112  # 168x112 frames -> 96x160 px, a 3x5 token grid per frame pair (odd)


@pytest.fixture(scope="module")
def loaded(tiny_qwen3_checkpoint):
    return load_model(str(tiny_qwen3_checkpoint))


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("clip3") / "clip.mp4", n_frames=24, fps=6.0, width=112, height=112)


# ----------------------------------------------------------------------------------------------
# the checkpoint


def test_checkpoint_is_laid_out_like_the_hub(tiny_qwen3_checkpoint, loaded):
    files = {p.name for p in tiny_qwen3_checkpoint.iterdir()}
    assert {"config.json", "generation_config.json", "preprocessor_config.json", "video_preprocessor_config.json",
            "chat_template.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors.index.json"} <= files
    assert len([f for f in files if f.startswith("model-0")]) >= 2 and "processor_config.json" not in files
    model, processor = loaded
    assert type(model).__name__ == "Qwen3VLForConditionalGeneration"
    assert type(processor).__name__ == "Qwen3VLProcessor" and processor.video_processor.patch_size == 16
    assert architecture_of(model).name == "Qwen3-VL"


# ----------------------------------------------------------------------------------------------
# cube layouts across frame-pair runs


def _types(runs: list[tuple[int, int]], seq_len: int) -> torch.Tensor:
    types = torch.zeros(seq_len, dtype=torch.long)
    for start, n in runs:
        types[start : start + n] = 2
    return types


def test_golden_layout_across_timestamp_segments():
    # one video, grid (3, 2, 2) merged tokens: three frame runs of 4 tokens, 3 text tokens before each
    # (a timestamp and <|vision_start|>), 1 after (<|vision_end|>): runs at 3, 10, 17
    types = _types([(3, 4), (10, 4), (17, 4)], 24)
    spans = frame_pair_spans(types, torch.tensor([[3, 4, 4]]), 2)
    assert spans == [VideoSpan(3, (3, 2, 2), (3, 10, 17))]
    layout = cube_layout(spans, 24, (2, 1, 2))
    T = -1
    assert layout.cube_of_token.tolist() == [T, T, T, 0, 0, 1, 1, T, T, T, 0, 0, 1, 1, T, T, T, 2, 2, 3, 3, T, T, T]
    assert layout.slab_of_token.tolist() == [T, T, T, 0, 0, 0, 0, T, T, T, 0, 0, 0, 0, T, T, T, 1, 1, 1, 1, T, T, T]
    assert layout.cube_sizes.tolist() == [4, 4, 2, 2] and layout.slab_of_cube.tolist() == [0, 0, 1, 1]
    assert layout.num_video_tokens == 12 and spans[0].end == 21


def test_golden_layout_odd_grid_two_videos():
    # video A: grid (2, 3, 3) (runs of 9 at 2 and 14); text; video B: grid (1, 1, 3) (one run of 3 at 30)
    types = _types([(2, 9), (14, 9), (30, 3)], 35)
    spans = frame_pair_spans(types, torch.tensor([[2, 6, 6], [1, 2, 6]]), 2)
    assert spans == [VideoSpan(2, (2, 3, 3), (2, 14)), VideoSpan(30, (1, 1, 3), (30,))]
    layout = cube_layout(spans, 35, (2, 2, 2))
    cubes = layout.cube_of_token.tolist()
    # A: cube (h-block, w-block) of token (h, w): [[0,0,1],[0,0,1],[2,2,3]], the same in both frame runs
    frame = [0, 0, 1, 0, 0, 1, 2, 2, 3]
    assert cubes[2:11] == frame and cubes[14:23] == frame
    assert cubes[30:33] == [4, 4, 5]  # B's cubes follow A's
    assert all(c == -1 for i, c in enumerate(cubes) if not (2 <= i < 11 or 14 <= i < 23 or 30 <= i < 33))
    assert layout.cube_sizes.tolist() == [8, 4, 4, 2, 2, 1]
    assert layout.slab_of_cube.tolist() == [0, 0, 0, 0, 1, 1]


def test_frame_runs_that_do_not_match_the_grid_are_refused():
    with pytest.raises(AdasparkError, match="3 frame pairs"):
        frame_pair_spans(_types([(1, 4), (7, 4)], 12), torch.tensor([[3, 4, 4]]), 2)
    with pytest.raises(AdasparkError, match="has 5 tokens"):
        frame_pair_spans(_types([(1, 5), (8, 4)], 14), torch.tensor([[2, 4, 4]]), 2)


@pytest.mark.parametrize("top_p", [0.3, 0.7, 1.0])
@pytest.mark.parametrize("cube", [(2, 2, 2), (1, 2, 3), (3, 1, 1)], ids=lambda c: "x".join(map(str, c)))
def test_reference_attention_is_the_method_across_frame_runs(top_p, cube):
    """Timestamp text between the frame runs: text keys always attended, cubes gathered across runs."""
    runs = [(4, 6), (14, 6), (24, 6), (34, 6), (50, 4)]  # video A (4, 2, 3) with 4 text tokens between runs; B (1, 2, 2)
    types = _types(runs, 58)
    layout = cube_layout(frame_pair_spans(types, torch.tensor([[4, 4, 6], [1, 4, 4]]), 2), 58, cube)
    torch.manual_seed(1)
    q, k, v = torch.randn(4, 58, 6) * 2, torch.randn(2, 58, 6) * 2, torch.randn(2, 58, 6)
    scale = 1 / math.sqrt(6)
    plan = build_plan(layout, 58, 58, block=8)
    got = attention_reference(q, k, v, plan, select_per_token(q, k, plan, top_p, scale), scale)
    torch.testing.assert_close(got.double(), brute_force(q, k, v, layout, top_p, scale), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# the whole model


def _first_token_logits(qa: VideoQA, prompt) -> torch.Tensor:
    prefix = qa.prefill_video(prompt)
    captured = {}
    list(qa.answer(prefix, QUESTION, max_new_tokens=1, on_step=lambda i, logits: captured.setdefault(i, logits.clone())))
    return captured[0]


def _stock_logits(model, qa: VideoQA, prompt) -> torch.Tensor:
    """The unpatched model on prefix + question, positions from its own get_rope_index (no position_ids)."""
    q_ids = qa.question_ids(QUESTION)
    ids = torch.cat([prompt.input_ids[0], q_ids])[None]
    types = (ids == model.config.video_token_id).long() * 2
    with torch.inference_mode():
        out = model(input_ids=ids, pixel_values_videos=prompt.pixel_values_videos, video_grid_thw=prompt.video_grid_thw,
                    mm_token_type_ids=types)
    model.model.rope_deltas = None
    return out.logits[0, -1]


def test_prompt_has_timestamps_and_frame_runs(loaded):
    model, processor = loaded
    state = sparsify(model, AdaSparkConfig(cube=(2, 2, 2)))
    try:
        qa = VideoQA(model, processor, state)
        prompt = qa.prepare_video(synthetic_video(n=6), max_pixels=MAX_PIXELS)  # frames 0, 12, .. at 24 fps
    finally:
        unsparsify(model)
    assert prompt.video_grid_thw.tolist() == [[3, 6, 10]] and prompt.video_tokens == 3 * 3 * 5
    text = processor.tokenizer.decode(prompt.input_ids[0])
    for seconds in ("<0.2 seconds>", "<1.2 seconds>", "<2.2 seconds>"):  # the mean time of each frame pair
        assert text.count(seconds + "<|vision_start|>") == 1
    assert [s.frame_starts is not None and len(s.frame_starts) for s in prompt.layout.spans] == [3]


def test_p_one_equals_the_stock_model_and_deepstack_layers_keep_a_dense_ffn(loaded):
    model, processor = loaded
    state = sparsify(model, AdaSparkConfig(cube=(2, 2, 2), attn_top_p=1.0, ffn_top_p=1.0), kernel="reference")
    try:
        qa = VideoQA(model, processor, state)
        prompt = qa.prepare_video(synthetic_video(n=8), max_pixels=MAX_PIXELS)
        p1 = {kernel: None for kernel in ("reference", "gathered")}
        for kernel in p1:
            with state.override(kernel=kernel):
                p1[kernel] = _first_token_logits(qa, prompt)
        with state.override(config=AdaSparkConfig(cube=(2, 2, 2), attn_top_p=0.3, ffn_top_p=0.3)):
            prefix = qa.prefill_video(prompt)
            sparse = _first_token_logits(qa, prompt)
    finally:
        unsparsify(model)
    stock = _stock_logits(model, qa, prompt)
    for kernel, logits in p1.items():
        torch.testing.assert_close(logits, stock, rtol=1e-5, atol=1e-5, msg=lambda m: f"{kernel}: {m}")
    assert not torch.allclose(sparse, stock, atol=1e-4)
    rows = {r["layer"]: r for r in layer_rows(prefix.stats)}
    assert rows[0]["ffn_kept"] == rows[0]["ffn_total"] == rows[1]["ffn_kept"] == prompt.video_tokens  # DeepStack: dense
    assert rows[2]["ffn_kept"] < rows[2]["ffn_total"]
    assert all(rows[i]["attn_density"] < 1 for i in range(3))  # attention stays sparse there


def test_streamed_prompt_equals_the_processors(loaded, clip):
    from adaspark_cli.video import decode_video
    from adaspark_cli.video.stream import open_video_stream

    model, processor = loaded
    state = sparsify(model, AdaSparkConfig(cube=(2, 2, 2), attn_top_p=0.5, ffn_top_p=0.5))
    try:
        qa = VideoQA(model, processor, state)
        one_shot = qa.prepare_video(decode_video(clip, fps=6.0, max_frames=10), max_pixels=MAX_PIXELS)
        streamed = qa.prepare_video_stream(open_video_stream(clip, fps=6.0, max_frames=10), max_pixels=MAX_PIXELS, chunk_frames=4)
        assert torch.equal(streamed.input_ids, one_shot.input_ids)
        assert torch.equal(streamed.positions, one_shot.positions)
        assert torch.equal(streamed.layout.cube_of_token, one_shot.layout.cube_of_token)
        assert streamed.deepstack_embeds is not None and len(streamed.deepstack_embeds) == 2
        a, b = _first_token_logits(qa, one_shot), _first_token_logits(qa, streamed)
    finally:
        unsparsify(model)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_max_pixels_is_per_frame_and_has_a_qwen3_minimum(loaded):
    model, processor = loaded
    state = sparsify(model, AdaSparkConfig())
    try:
        qa = VideoQA(model, processor, state)
        assert qa.frame_size(112, 168, 200, max_pixels=MAX_PIXELS) == (96, 160)  # frame count does not matter
        assert qa.frame_size(112, 168, 2, max_pixels=MAX_PIXELS) == (96, 160)
        assert qa.frame_size(1080, 1920, 8, max_pixels=448 * 448) == (320, 576)
        with pytest.raises(AdasparkError, match="minimum 4096 for Qwen3-VL"):
            qa.frame_size(112, 112, 4, max_pixels=3500)
    finally:
        unsparsify(model)


def test_moe_p_one_equals_dense_and_sparsity_runs(tmp_path):
    from adaspark_cli.checkpoint.tiny_qwen3 import build_tiny_qwen3_checkpoint

    model, processor = load_model(str(build_tiny_qwen3_checkpoint(tmp_path / "moe", moe=True, text_layers=2, deepstack=(0,))))
    assert type(model).__name__ == "Qwen3VLMoeForConditionalGeneration"
    assert ModelDims.from_text_config(model.config.text_config).intermediate == 2 * 64  # 2 experts of 64 per row
    state = sparsify(model, AdaSparkConfig(cube=(2, 2, 2), attn_top_p=1.0, ffn_top_p=1.0))
    try:
        qa = VideoQA(model, processor, state)
        prompt = qa.prepare_video(synthetic_video(n=6), max_pixels=MAX_PIXELS)
        p1 = _first_token_logits(qa, prompt)
        with state.override(config=AdaSparkConfig(cube=(2, 2, 2), attn_top_p=0.3, ffn_top_p=0.3)):
            prefix = qa.prefill_video(prompt)
    finally:
        unsparsify(model)
    torch.testing.assert_close(p1, _stock_logits(model, qa, prompt), rtol=1e-5, atol=1e-5)
    row = layer_rows(prefix.stats)[1]  # layer 0 gets DeepStack (dense FFN); layer 1's routed block is sparse
    assert row["ffn_kept"] < row["ffn_total"] == prompt.video_tokens


# ----------------------------------------------------------------------------------------------
# the CLI, end to end


def test_ask_json_convert_profile(runner, clip, tiny_qwen3_checkpoint, tmp_path):
    common = ["--max-frames", "8", "--max-pixels", "12544"]  # 112x112 -> 96x96 px: 3x3 tokens per frame pair
    res = runner.invoke(app, ["ask", str(clip), "what color?", "how many?", "--model", str(tiny_qwen3_checkpoint),
                              "--json", "--cube", "2x2x2", "--top-p", "0.5", "--max-new-tokens", "3", *common])
    assert res.exit_code == 0, res.output
    first, second = (json.loads(line) for line in res.stdout.strip().splitlines())
    assert first["mode"] == "adaspark" and first["frames"] == 8 and first["video_tokens"] == 4 * 3 * 3
    assert first["cubes"] == 2 * 2 * 2 and second["video_prefill_reused"]
    assert [row["ffn_kept"] == row["ffn_total"] for row in first["layers"]] == [True, True, False]
    assert 0 < first["flops"]["reduction"] < 1

    out = tmp_path / "q3-adaspark"
    conv = runner.invoke(app, ["convert", str(tiny_qwen3_checkpoint), str(out), "--top-p", "0.6", "--cube", "2x2x2"])
    assert conv.exit_code == 0, conv.output
    block = json.loads((out / "config.json").read_text())["adaspark"]
    assert block["attn_top_p"] == block["ffn_top_p"] == 0.6 and block["cube"] == [2, 2, 2]

    prof = runner.invoke(app, ["profile", str(clip), "what color?", "--model", str(out), "--json", "-q", *common])
    assert prof.exit_code == 0, prof.output
    report = json.loads(prof.stdout)
    assert report["config"]["attn_top_p"] == 0.6 and report["video_tokens"] == 36
    assert len(report["layers"]) == 3


def test_a_near_miss_architecture_is_refused_in_one_line(runner, clip, tmp_path):
    (tmp_path / "q2").mkdir()
    config = {"model_type": "qwen2_vl", "architectures": ["Qwen2VLForConditionalGeneration"]}
    (tmp_path / "q2" / "config.json").write_text(json.dumps(config))
    res = runner.invoke(app, ["ask", str(clip), "q?", "--model", str(tmp_path / "q2")])
    assert res.exit_code == 1
    err = res.stderr.strip()
    assert err.startswith("error:") and "\n" not in err and "is a qwen2_vl checkpoint" in err
    assert "Qwen3-VL (Qwen3VLForConditionalGeneration, Qwen3VLMoeForConditionalGeneration)" in err


def test_batch_answers_equal_ask_json(runner, clip, tiny_qwen3_checkpoint, tmp_path):
    from test_batch import records, without_clocks

    common = ["--model", str(tiny_qwen3_checkpoint), "--max-frames", "8", "--max-pixels", "12544", "--cube", "2x2x2",
              "--top-p", "0.5", "--max-new-tokens", "3"]
    folder = tmp_path / "videos"
    folder.mkdir()
    (folder / "a.mp4").write_bytes(clip.read_bytes())
    (folder / "broken.mp4").write_bytes(b"not a video")
    out = tmp_path / "answers.jsonl"
    res = runner.invoke(app, ["batch", str(folder), "-q", "what color?", "-q", "how many?", "--out", str(out), *common])
    assert res.exit_code == 1, res.output  # the broken video is recorded, the run goes on, exit 1 at the end
    good, bad = sorted(records(out), key=lambda r: r["video"])
    assert bad["answers"] == [] and bad["error"] and "\n" not in bad["error"]
    asked = runner.invoke(app, ["ask", str(folder / "a.mp4"), "what color?", "how many?", "--json", *common])
    assert asked.exit_code == 0, asked.output
    expected = [json.loads(line) for line in asked.stdout.splitlines()]
    assert [without_clocks(a) for a in good["answers"]] == [without_clocks(e) for e in expected]


def test_eval_runs_on_a_qwen3_checkpoint(runner, tiny_qwen3_checkpoint, tmp_path):
    from adaspark_cli.synth import make_suite, write_suite

    suite = tmp_path / "suite"
    write_suite(make_suite(7, lengths=(16,), depths=(0.5,)), suite)
    res = runner.invoke(app, ["eval", str(suite), "--model", str(tiny_qwen3_checkpoint), "--json", "--cube", "2x2x2",
                              "--top-p", "0.5", "--max-new-tokens", "2", "--max-pixels", "12544"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["items"] == len(data["results"]) == 4
    assert 0 <= data["dense"]["accuracy"] <= 1 and 0 < data["adaspark"]["flops_reduction"] < 1
