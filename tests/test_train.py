"""Training code on the CPU: inputs match the inference path, the loss falls, gradients flow through AdaSpark."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from adaspark_cli.adapters import sparsify, unsparsify
from adaspark_cli.config import AdaSparkConfig
from adaspark_cli.qa import VideoQA, load_video_qa
from adaspark_cli.stats import PrefillStats
from adaspark_cli.synth import question_answer, render_frames, sample_scene
from adaspark_cli.train import (
    IGNORE,
    PRESETS,
    Encoder,
    TrainConfig,
    build_model,
    dense_loss,
    sparse_loss,
    train,
)
from adaspark_cli.video import DecodedVideo


@pytest.fixture(scope="module")
def tiny():
    model, processor = build_model(PRESETS["tiny"], seed=0)
    return model, processor, Encoder(processor, model.config)


def _examples(encoder, n=2, frames=16):
    out = []
    for seed, task in zip(range(n), ["retrieval", "motion", "counting", "ordering"]):
        scene = sample_scene(task, frames, 0.5, seed)
        q, a = question_answer(scene)
        out.append(encoder.encode(render_frames(scene), q, a))
    return out


def test_encoder_matches_the_inference_prompt(tiny):
    model, processor, encoder = tiny
    scene = sample_scene("counting", 32, 0.3, 4)
    frames = render_frames(scene)
    q, a = question_answer(scene)
    ex = encoder.encode(frames, q, a)
    state = sparsify(model, AdaSparkConfig(cube=(1, 2, 2)))
    try:
        qa = VideoQA(model, processor, state)
        idx = np.arange(len(frames))
        video = DecodedVideo(Path("synthetic.mp4"), frames, idx / 2.0, idx, 2.0, len(frames), len(frames) / 2.0, "test")
        prompt = qa.prepare_video(video)
        q_ids = qa.question_ids(q)
    finally:
        unsparsify(model)
    p = ex.prefix_len
    assert torch.equal(prompt.input_ids[0], ex.input_ids[:p])
    assert torch.equal(q_ids, ex.input_ids[p : p + q_ids.numel()])
    assert torch.equal(prompt.video_grid_thw, ex.grid)
    torch.testing.assert_close(prompt.pixel_values_videos, ex.pixel_values, atol=1e-5, rtol=0)
    assert torch.equal(prompt.positions[:, 0], ex.positions[:, :p])
    assert int(ex.positions[0, p]) == prompt.next_position
    answer = ex.labels[ex.labels != IGNORE]
    assert processor.tokenizer.decode(answer) == a + "<|im_end|>"
    assert int((ex.labels != IGNORE).sum()) == ex.input_ids.numel() - p - q_ids.numel()


def test_dense_loss_falls_on_one_repeated_batch():
    model, processor = build_model(PRESETS["tiny"], seed=1)
    encoder = Encoder(processor, model.config)
    batch = _examples(encoder, n=2)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(6):
        loss = dense_loss(model, batch, encoder.tok.pad_token_id, torch.device("cpu"))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert all(np.isfinite(losses))
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < 0.8 * losses[0], losses


def test_gradients_flow_through_adaspark_attention_and_ffn():
    model, processor = build_model(PRESETS["tiny"], seed=2)
    encoder = Encoder(processor, model.config)
    cube = (1, 2, 2)
    state = sparsify(model, AdaSparkConfig(cube=cube, attn_top_p=0.3, ffn_top_p=0.3), kernel="reference")  # as training
    model.train()
    ex = _examples(encoder, n=1, frames=32)
    # the sparse path is really taken: fewer FFN rows and cubes than dense
    stats = PrefillStats()
    with torch.no_grad(), state.forward_context(layout=encoder.layout(ex[0], cube), offset=0, stats=stats):
        model(input_ids=ex[0].input_ids[None], pixel_values_videos=ex[0].pixel_values,
              video_grid_thw=ex[0].grid, position_ids=ex[0].positions[:, None])
    rec = stats.layers[0]
    assert rec.sparse and rec.ffn_kept < rec.ffn_total
    assert rec.attention.attended_keys < rec.attention.causal_keys
    loss = sparse_loss(model, encoder, ex, state, cube, torch.device("cpu"))
    assert np.isfinite(loss) and loss > 0
    layer = model.model.language_model.layers[0]
    for name, param in [("q_proj", layer.self_attn.q_proj.weight), ("k_proj", layer.self_attn.k_proj.weight),
                        ("v_proj", layer.self_attn.v_proj.weight), ("gate_proj", layer.mlp.gate_proj.weight),
                        ("down_proj", layer.mlp.down_proj.weight), ("vision", model.model.visual.patch_embed.proj.weight)]:
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0, name


def test_a_batched_sparse_step_equals_one_video_at_a_time():
    """The fine-tune's batch of right-padded videos (one forward per video length) gives each video's loss and
    gradient as alone: the loss of four videos, two lengths, is the sum of the four one-video losses."""
    model, processor = build_model(PRESETS["tiny"], seed=5)
    encoder = Encoder(processor, model.config)
    cube = (1, 2, 2)
    state = sparsify(model, AdaSparkConfig(cube=cube, attn_top_p=0.3, ffn_top_p=0.3), kernel="reference")
    model.eval()  # no dropout: the two ways must see the same function
    examples = _examples(encoder, n=3, frames=16) + _examples(encoder, n=1, frames=32)
    assert len({int(e.input_ids.numel()) for e in examples[:3]}) > 1  # the 16-frame ones really are padded
    params = [model.model.language_model.layers[0].mlp.down_proj.weight, model.model.visual.patch_embed.proj.weight]
    total = sum(int((e.labels != IGNORE).sum()) for e in examples)
    batched = sparse_loss(model, encoder, examples, state, cube, torch.device("cpu"))
    batched_grads = [p.grad.clone() for p in params]
    # each alone: a one-video call divides by its own answer tokens, so weight it back to the batch's
    alone, grads = 0.0, [torch.zeros_like(p) for p in params]
    for e in examples:
        model.zero_grad(set_to_none=True)
        weight = int((e.labels != IGNORE).sum()) / total
        alone += sparse_loss(model, encoder, [e], state, cube, torch.device("cpu")) * weight
        for g, p in zip(grads, params):
            g += p.grad * weight
    model.zero_grad(set_to_none=True)
    assert batched == pytest.approx(alone, rel=1e-4)
    for g, want in zip(batched_grads, grads):
        assert want.abs().sum() > 0
        torch.testing.assert_close(g, want, rtol=1e-3, atol=1e-6)


def test_the_fast_kernels_refuse_a_batch():
    from adaspark_cli.errors import AdasparkError

    model, processor = build_model(PRESETS["tiny"], seed=5)
    encoder = Encoder(processor, model.config)
    state = sparsify(model, AdaSparkConfig(cube=(1, 2, 2), attn_top_p=0.3, ffn_top_p=0.3), kernel="auto")
    with pytest.raises(AdasparkError, match="one sequence at a time"):
        sparse_loss(model, encoder, _examples(encoder, n=2), state, (1, 2, 2), torch.device("cpu"), backward=False)


def test_train_smoke_writes_loadable_checkpoints(tmp_path):
    cfg = TrainConfig(preset="tiny", steps=3, sparse_steps=2, batch=2, lengths=(16,), warmup=1, log_every=1,
                      cube=(1, 2, 2))
    lines: list[str] = []
    record = train(cfg, tmp_path / "run", device="cpu", log=lines.append)
    assert len(record["dense"]) == 3 and len(record["adaspark"]) == 2
    assert all(np.isfinite(record["dense"] + record["adaspark"]))
    assert json.loads((tmp_path / "run" / "train_log.json").read_text())["dense_steps"] == 3
    assert any("adaspark step 1" in line for line in lines)
    dense = load_video_qa(str(tmp_path / "run" / "dense"), device="cpu")
    sparse = load_video_qa(str(tmp_path / "run" / "adaspark"), device="cpu")
    assert dense.config_source == "defaults"
    assert sparse.config_source == "checkpoint" and sparse.config.cube == (1, 2, 2)
    keys_dense = set(dense.qa.model.state_dict())
    assert keys_dense == set(sparse.qa.model.state_dict())
    # continue from the dense checkpoint: same sizes, training runs on
    again = train(TrainConfig(init=str(tmp_path / "run" / "dense"), steps=1, sparse_steps=0, batch=2, lengths=(16,),
                              warmup=1), tmp_path / "run2", device="cpu", log=lines.append)
    assert again["parameters"] == record["parameters"] and np.isfinite(again["dense"][0])
    assert any("initialised from" in line for line in lines)


def test_curriculum_training_checks_both_distributions(tmp_path):
    """--needle-share / --no-clutter change the training videos; the checks then report held-out-like
    items and training-like ones, and a bad share is refused by the CLI."""
    from adaspark_cli.train.__main__ import main

    cfg = TrainConfig(preset="tiny", steps=2, sparse_steps=0, batch=2, lengths=(16,), warmup=1, log_every=1,
                      tasks=("retrieval", "motion"), needle_share=(1.0, 0.0), clutter=False, check_items=4)
    assert cfg.curriculum and not TrainConfig().curriculum
    lines: list[str] = []
    record = train(cfg, tmp_path / "run", device="cpu", log=lines.append)
    for check in (record["dense_check"], record["dense_check_curriculum"]):  # 4 items: a task may be missing
        assert "all" in check and set(check) <= {"retrieval", "motion", "all"}
    assert any("training videos (curriculum)" in line for line in lines)
    for bad in (["--needle-share", "1.5"], ["--tasks", "colour"]):
        with pytest.raises(SystemExit):
            main(["--out", str(tmp_path / "x"), *bad])


def test_fast_vision_in_training_matches_the_stock_loop():
    from adaspark_cli.adapters.vision import fast_vision
    from adaspark_cli.train import collate

    model, processor = build_model(PRESETS["tiny"], seed=3)
    encoder = Encoder(processor, model.config)
    small = encoder.encode(render_frames(sample_scene("motion", 16, 0.5, 0)), "x?", "left")
    wide = encoder.encode(render_frames(sample_scene("motion", 16, 0.5, 1, size=(168, 112))), "x?", "left")
    vis = model.model.visual

    def run(examples):
        b = collate(examples, encoder.tok.pad_token_id)
        out = vis(b["pixel_values_videos"], grid_thw=b["video_grid_thw"]).pooler_output
        out = torch.cat(list(out)) if isinstance(out, (list, tuple)) else out
        model.zero_grad()
        out.square().sum().backward()
        return out.detach(), vis.blocks[0].attn.qkv.weight.grad.clone()

    equal, unequal = [small, small], [small, wide]  # a batch of equal and of unequal frame sizes
    stock = run(equal), run(unequal)
    fast_vision(model)
    new = run(equal), run(unequal)
    for (out_a, grad_a), (out_b, grad_b) in zip(stock, new):
        torch.testing.assert_close(out_a, out_b, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grad_a, grad_b, rtol=1e-4, atol=1e-6)


def test_raw_frame_batches_give_the_same_model_inputs(tiny):
    from adaspark_cli.train import collate, model_inputs

    _, _, encoder = tiny
    examples = _examples(encoder, n=3, frames=16) + [
        encoder.encode(render_frames(sample_scene("motion", 17, 0.5, 9)), "x?", "left")]  # odd: last frame repeated
    pad = encoder.tok.pad_token_id
    ref = collate(examples, pad)
    raw = collate(examples, pad, raw_frames=True)
    assert raw["frames"].dtype == torch.uint8 and "pixel_values_videos" not in raw
    got = model_inputs(raw, torch.device("cpu"))
    assert set(got) == set(ref)
    for key in ref:
        torch.testing.assert_close(got[key], ref[key], rtol=0, atol=1e-6)


def test_a_non_finite_gradient_skips_the_step():
    from adaspark_cli.train import clipped_step

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    model(torch.tensor([[1.0, float("inf"), 0.0]])).sum().backward()
    assert not clipped_step(model, opt)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(p.grad is None for p in model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    assert clipped_step(model, opt)
    assert not torch.equal(before[0], model.weight)


def test_aux_targets_follow_the_video_tokens(tiny):
    """Dense targets line up with the video tokens of a padded batch (odd lengths too), the state rows sit on
    the last token of each frame pair, and the heads' loss trains the vision tower and the decoder."""
    from adaspark_cli.synth.labels import scene_labels
    from adaspark_cli.train import collate
    from adaspark_cli.train.aux import AuxHeads

    model, _, encoder = tiny
    scenes = [sample_scene("counting", 16, 0.5, 1), sample_scene("motion", 17, 0.3, 2),
              sample_scene("ordering", 32, 0.7, 3)]
    examples = [encoder.encode(render_frames(s), *question_answer(s), scene_labels(s)) for s in scenes]
    batch = collate(examples, encoder.tok.pad_token_id, raw_frames=True)
    video = batch["input_ids"] == model.config.video_token_id
    assert batch["aux_patch_shape"].shape == batch["aux_patch_color"].shape == (int(video.sum()),)
    assert batch["aux_state"].shape[0] == batch["aux_state_index"].shape[0] == 8 + 9 + 16
    assert batch["aux_state_index"][:9].tolist() == [16 * k - 1 for k in range(1, 9)] + [128 + 15]
    assert (batch["aux_patch_shape"] > 0).any()
    heads = AuxHeads(model.config.text_config.hidden_size)
    parts: dict[str, float] = {}
    model.zero_grad()
    dense_loss(model, batch, encoder.tok.pad_token_id, torch.device("cpu"), heads=heads, aux_weight=1.0,
               parts=parts).backward()
    assert {"answer", "aux", "aux_patch", "aux_state"} <= set(parts)
    assert np.isfinite([parts[k] for k in ("answer", "aux", "aux_patch", "aux_state")]).all()
    for name, param in [("vision", model.model.visual.patch_embed.proj.weight), ("state head", heads.state.weight),
                        ("decoder", model.model.language_model.layers[0].mlp.down_proj.weight)]:
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    model.zero_grad()


def test_aux_heads_read_layer_inputs_and_leave_the_vision_tower_alone(tiny):
    """The heads read what output_hidden_states would give (the embeddings and what enters the last decoder
    layer), through hooks: the flag itself would reach the vision tower and send its fast path back to
    transformers' loop over attention windows (10x slower training on an H200)."""
    from adaspark_cli.synth.labels import scene_labels
    from adaspark_cli.train import collate
    from adaspark_cli.train.aux import AuxHeads, layer_inputs
    from adaspark_cli.train.data import model_inputs

    model, _, encoder = tiny
    batch = model_inputs(collate(_examples(encoder), encoder.tok.pad_token_id), torch.device("cpu"))
    flags = []
    hook = model.model.visual.register_forward_pre_hook(
        lambda _m, _a, kwargs: flags.append(kwargs.get("output_hidden_states")), with_kwargs=True)
    try:
        with torch.no_grad():
            want = model(**batch, use_cache=False, output_hidden_states=True).hidden_states
            with layer_inputs(model.model.language_model.layers) as got:
                model(**batch, use_cache=False)
            torch.testing.assert_close(got["embeds"], want[0])
            torch.testing.assert_close(got["last"], want[-2])
            flags.clear()
            heads = AuxHeads(model.config.text_config.hidden_size)
            examples = [encoder.encode(render_frames(s), *question_answer(s), scene_labels(s))
                        for s in (sample_scene("counting", 16, 0.5, 1), sample_scene("motion", 16, 0.3, 2))]
            dense_loss(model, examples, encoder.tok.pad_token_id, torch.device("cpu"), heads=heads, aux_weight=1.0)
    finally:
        hook.remove()
    assert flags and not any(flags), flags


def test_aux_training_saves_only_the_model(tmp_path):
    from dataclasses import replace

    cfg = TrainConfig(preset="tiny", steps=2, sparse_steps=1, batch=2, lengths=(16,), warmup=1, log_every=1,
                      aux_weight=1.0, cube=(1, 2, 2), sparse_batch=1)
    record = train(cfg, tmp_path / "run", device="cpu", log=lambda s: None)
    assert len(record["dense_aux"]) == 2 and np.isfinite(record["dense_aux"]).all()
    fresh, _ = build_model(PRESETS["tiny"])
    for name in ("dense", "adaspark"):
        saved = load_video_qa(str(tmp_path / "run" / name), device="cpu").qa.model.state_dict()
        assert set(saved) == set(fresh.state_dict()), name
        assert not list((tmp_path / "run" / name).glob("aux*"))
    lines: list[str] = []  # a continuation picks the heads up from beside the checkpoint
    train(replace(cfg, init=str(tmp_path / "run" / "dense"), steps=1, sparse_steps=0), tmp_path / "run2",
          device="cpu", log=lines.append)
    assert any("auxiliary heads from" in line for line in lines)


def test_gpu_training_script_runs_both_stages_on_the_cpu(tmp_path):
    """benchmarks/train_gpu.sh --smoke: stage 1, stage 2 resuming from it, stage 3 from stage 2's dense checkpoint;
    OUT within the device limits."""
    import os
    import subprocess
    import sys
    import tarfile

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "ADASPARK_TRAIN_DIR": str(tmp_path / "work"), "PYTHON": sys.executable}
    for stage, extra in (("stage1", []), ("stage2", []), ("stage3", ["--init", str(tmp_path / "stage2" / "dense")])):
        done = subprocess.run(["bash", str(root / "benchmarks/train_gpu.sh"), stage, str(tmp_path / stage), "--smoke",
                               *extra], env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        files = [p for p in (tmp_path / stage).rglob("*") if p.is_file()]
        assert len(files) <= 8 and all(p.stat().st_size < 16 * 2**20 for p in files)
        assert all(len(p.relative_to(tmp_path / stage).parts) <= 3 for p in files)
    log2 = (tmp_path / "stage2" / "stage2.log").read_text()
    assert "stage 2 continues from" in log2 and "auxiliary heads from" in log2
    assert (tmp_path / "stage1" / "stage1" / "aux_heads.pt").is_file()
    log3 = json.loads((tmp_path / "stage3" / "stage3_train_log.json").read_text())
    assert log3["config"]["look_alike"] == 0.5 and log3["dense_steps"] > 0 and log3["adaspark_steps"] > 0
    for stage in ("stage2", "stage3"):
        for name in ("dense", "adaspark"):
            with tarfile.open(tmp_path / stage / "processor.tar") as tar:
                tar.extractall(tmp_path / stage / name, filter="data")
            assert load_video_qa(str(tmp_path / stage / name), device="cpu").qa.model is not None
    bad = subprocess.run(["bash", str(root / "benchmarks/train_gpu.sh"), "stage2", str(tmp_path / "x"), "--smoke"],
                         env={**env, "ADASPARK_TRAIN_DIR": str(tmp_path / "empty")}, capture_output=True, text=True,
                         cwd=tmp_path)
    assert bad.returncode == 2 and "run stage1 first or pass --init DIR" in bad.stderr
