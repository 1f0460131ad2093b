"""Whole language-model prefill, dense against AdaSpark in the same run (issue 12, part 5).

The full 28-layer Qwen2.5-VL-7B-shaped language model (hidden 3584, 28 query / 4 KV heads, head dim
128, FFN 18944, bf16, random weights, built on the GPU), fed 64 text tokens, a video of 16x16 merged
tokens per frame pair (448x448 frames) and 64 more text tokens, with the official M-RoPE positions.
Time to first token of the language model = embeddings to the last position's logits, one call, no
cache. Every run of a size uses the same model object: `state.override(enabled=False)` is dense.

Runs per size (each: 1 warm-up, then --repeats timed calls, medians):
  dense            adaspark dense (SDPA, transformers' own attention)
  forced a/f       sparse with a benchmark-only hook that replaces each layer's selection by random cube
                   sets of density a (attention) and FFN top-p f (random weights: keep ~ f); the selection
                   step itself is skipped, so this isolates the kernels
  top-p p          real selection at attention top-p p, FFN top-p p (and the default 0.9 / 0.7)
Per run: the attention block's and FFN block's time (CUDA events in module hooks, no sync), FLOPs and
their cut (analytic, stats/flops.py), which layers fell back to dense, peak memory over the weights.
Before timing: the fast kernels against the reference on the same Selection (max error printed), and
p = 1 against dense logits. Kernel table: one layer's attention alone at forced densities, dense SDPA,
FA4 dense, FA4 and FlexAttention sparse, with "fraction of ideal" = best dense x kept fraction / time.

--arch qwen3_vl (issue 14, part 4): the 36-layer Qwen3-VL-8B language model instead (hidden 4096, 32 query /
8 KV heads, head dim 128, FFN 12288, interleaved M-RoPE), its prompt laid out as Qwen3VLProcessor does
(per frame pair a timestamp text, <|vision_start|>, 16x16 video tokens, <|vision_end|>), positions from
the model's own get_rope_index, random DeepStack features added after layers 0-2 (whose FFN stays dense,
docs/method.md), plus one run with those FFNs sparse too. Defaults then: --sizes 32,64, 2 repeats, no
kernel table, deadline 200 s (the whole script about 3-4 minutes on an H200).

Usage (GPU machine; FA4 optional, found by import):
    PYTHONPATH=src python3 benchmarks/bench_prefill.py --out $OUT --sizes 16,32,64,128
    PYTHONPATH=src python3 benchmarks/bench_prefill.py --arch qwen3_vl --out $OUT
CPU smoke run (tiny shapes, no timing claims): python benchmarks/bench_prefill.py --smoke [--arch qwen3_vl]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch

from _common import (  # this folder is on sys.path when run as a script; it puts src/ there too
    HEAD_DIM_7B,
    TEXT_7B,
    TEXT_TINY,
    VISION_TINY,
    elapsed,
    environment,
    log_stamped,
    out_file,
    random_model,
    time_ms,
    wall_seconds,
    write_json,
)

from adaspark_cli.adapters import sparsify
from adaspark_cli.adapters.positions import mrope_position_ids
from adaspark_cli.attention import IMPLEMENTATIONS
from adaspark_cli.attention.fa4 import fa4_available
from adaspark_cli.config import AdaSparkConfig
from adaspark_cli.cubes import VideoSpan, cube_layout, frame_pair_spans
from adaspark_cli.cubes.plan import build_plan
from adaspark_cli.selection import random_selection, select_per_block
from adaspark_cli.stats import ModelDims, PrefillStats, prefill_flops, reduction

# positions past 7B's 128000: the longest prompt here has 131K video tokens (the default rope ignores the field)
TEXT_LONG = dict(TEXT_7B, max_position_embeddings=262144)
VISION_ONE_BLOCK = dict(VISION_TINY, depth=1, fullatt_block_indexes=[0])  # unused: the language model alone is timed
TEXT_8B = dict(vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
               num_attention_heads=32, num_key_value_heads=8, head_dim=128, hidden_act="silu",
               max_position_embeddings=262144, rms_norm_eps=1e-6, tie_word_embeddings=False,
               rope_parameters={"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [24, 20, 20],
                                "mrope_interleaved": True})
TEXT_8B_SMOKE = dict(TEXT_8B, vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                     rope_parameters={"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [4, 2, 2],
                                      "mrope_interleaved": True})
VISION_TINY_QWEN3 = dict(depth=3, hidden_size=32, num_heads=2, intermediate_size=64, in_channels=3, patch_size=16,
                         spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=64,
                         deepstack_visual_indexes=[0, 1, 2])  # 8B: [8, 16, 24] of 27 blocks: LM layers 0-2
TIMESTAMP_TOKENS = 6  # "<12.3 seconds>" in Qwen's BPE: "<", "1", "2", ".", "3", " seconds>" (about)
TEXT_BEFORE, TEXT_AFTER = 64, 64
GRID_HW = (16, 16)
CUBE = (2, 8, 8)
FORCED = [(0.5, 0.5), (0.3, 0.3), (0.2, 0.3)]
TOP_P = [(0.9, 0.7), (0.3, 0.3)]
log = log_stamped
HQ, HKV, D = TEXT_7B["num_attention_heads"], TEXT_7B["num_key_value_heads"], HEAD_DIM_7B


def build_model(smoke: bool, device: torch.device, dtype: torch.dtype, arch: str = "qwen2_5_vl") -> Any:
    """The 7B-shaped (or, smoke, tiny) random language model (arch qwen3_vl: Qwen3-VL-8B-shaped); the special
    token ids are the vocabulary's last four."""
    if arch == "qwen3_vl":
        return build_qwen3(smoke, device, dtype)
    text = TEXT_TINY if smoke else TEXT_LONG
    vocab = text["vocab_size"]
    return random_model(text, {**VISION_ONE_BLOCK, "out_hidden_size": text["hidden_size"]}, device=device, dtype=dtype,
                        image_token_id=vocab - 4, video_token_id=vocab - 3, vision_start_token_id=vocab - 2,
                        vision_end_token_id=vocab - 1)


def build_qwen3(smoke: bool, device: torch.device, dtype: torch.dtype) -> Any:
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    text = TEXT_8B_SMOKE if smoke else TEXT_8B
    v = text["vocab_size"]
    config = Qwen3VLConfig(text_config=text, vision_config={**VISION_TINY_QWEN3, "out_hidden_size": text["hidden_size"]},
                           image_token_id=v - 4, video_token_id=v - 3, vision_start_token_id=v - 2, vision_end_token_id=v - 1)
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen3VLForConditionalGeneration._from_config(
            config, dtype=dtype, attn_implementation={"text_config": "sdpa", "vision_config": "sdpa"})
    return model.eval()


class Inputs:
    """One prompt of `video_tokens` video tokens: embeddings, M-RoPE positions, the cube layout."""

    deepstack: dict[str, Any] = {}  # Qwen3-VL: the language model's DeepStack inputs

    def __init__(self, model: Any, video_tokens: int, device: torch.device) -> None:
        t = max(1, video_tokens // (GRID_HW[0] * GRID_HW[1]))
        span = VideoSpan(TEXT_BEFORE, (t, *GRID_HW))
        self.seq = TEXT_BEFORE + span.num_tokens + TEXT_AFTER
        self.video_tokens = span.num_tokens
        self.layout = cube_layout([span], self.seq, CUBE)
        types = torch.zeros(self.seq, dtype=torch.long)
        types[span.start : span.end] = 2
        grid = torch.tensor([[t, GRID_HW[0] * 2, GRID_HW[1] * 2]])
        positions, _ = mrope_position_ids(types, grid, [1.0], spatial_merge_size=2, tokens_per_second=2)
        self.positions = positions[:, None].to(device)  # (3, 1, L)
        g = torch.Generator(device=device).manual_seed(video_tokens)
        hidden = model.config.text_config.hidden_size
        self.embeds = (torch.randn(1, self.seq, hidden, generator=g, device=device) * 0.5).to(next(model.parameters()).dtype)


class Qwen3Inputs(Inputs):
    """The same, laid out as Qwen3VLProcessor does: per frame pair TIMESTAMP_TOKENS of text, <|vision_start|>,
    16x16 video tokens, <|vision_end|>; positions from the model's get_rope_index; random DeepStack features."""

    def __init__(self, model: Any, video_tokens: int, device: torch.device) -> None:
        t = max(1, video_tokens // (GRID_HW[0] * GRID_HW[1]))
        per_frame = GRID_HW[0] * GRID_HW[1]
        segment = TIMESTAMP_TOKENS + 1 + per_frame + 1
        self.seq = TEXT_BEFORE + t * segment + TEXT_AFTER
        types = torch.zeros(self.seq, dtype=torch.long)
        for i in range(t):
            start = TEXT_BEFORE + i * segment + TIMESTAMP_TOKENS + 1
            types[start : start + per_frame] = 2
        grid = torch.tensor([[t, GRID_HW[0] * 2, GRID_HW[1] * 2]])
        self.layout = cube_layout(frame_pair_spans(types, grid, 2), self.seq, CUBE)
        self.video_tokens = self.layout.num_video_tokens
        positions, _ = model.model.get_rope_index(torch.zeros(1, self.seq, dtype=torch.long), types[None], video_grid_thw=grid)
        self.positions = positions.to(device)  # (3, 1, L)
        g = torch.Generator(device=device).manual_seed(video_tokens)
        hidden = model.config.text_config.hidden_size
        dtype = next(model.parameters()).dtype
        self.embeds = (torch.randn(1, self.seq, hidden, generator=g, device=device) * 0.5).to(dtype)
        levels = len(model.config.vision_config.deepstack_visual_indexes)
        self.deepstack = {
            "visual_pos_masks": (types == 2)[None].to(device),
            "deepstack_visual_embeds": [(torch.randn(self.video_tokens, hidden, generator=g, device=device) * 0.5).to(dtype)
                                        for _ in range(levels)],
        }


def make_inputs(arch: str, model: Any, video_tokens: int, device: torch.device) -> Inputs:
    return Qwen3Inputs(model, video_tokens, device) if arch == "qwen3_vl" else Inputs(model, video_tokens, device)


def prefill(model: Any, state: Any, inp: Inputs, stats: PrefillStats | None = None) -> torch.Tensor:
    """The language model over the prompt and the last position's logits (what a first token needs)."""
    lm = model.model.language_model
    with torch.no_grad(), state.forward_context(layout=inp.layout, offset=0, stats=stats):
        out = lm(inputs_embeds=inp.embeds, position_ids=inp.positions, use_cache=False, **inp.deepstack)
        return model.lm_head(out.last_hidden_state[:, -1:])[0, -1].float()


class BlockTimer:
    """CUDA events before and after every layer's attention and FFN module (no sync while running)."""

    def __init__(self, model: Any) -> None:
        self.events: dict[str, list[tuple[Any, Any]]] = {"attention": [], "ffn": []}
        self.handles = []
        self.on = False
        for layer in model.model.language_model.layers:
            for name, module in (("attention", layer.self_attn), ("ffn", layer.mlp)):
                self.handles.append(module.register_forward_pre_hook(self._pre(name)))
                self.handles.append(module.register_forward_hook(self._post(name)))

    def _pre(self, name: str):
        def hook(*_: Any) -> None:
            if self.on:
                e = torch.cuda.Event(enable_timing=True)
                e.record()
                self.events[name].append((e, None))
        return hook

    def _post(self, name: str):
        def hook(*_: Any) -> None:
            if self.on:
                e = torch.cuda.Event(enable_timing=True)
                e.record()
                start, _ = self.events[name][-1]
                self.events[name][-1] = (start, e)
        return hook

    def take(self) -> dict[str, float]:
        torch.cuda.synchronize()
        out = {name: sum(s.elapsed_time(e) for s, e in pairs) for name, pairs in self.events.items()}
        self.events = {"attention": [], "ffn": []}
        return out


def timed_runs(model: Any, state: Any, inp: Inputs, repeats: int, timer: BlockTimer | None) -> dict[str, Any]:
    device = inp.embeds.device
    cuda = device.type == "cuda"
    stats = PrefillStats()
    first = wall_seconds(lambda: prefill(model, state, inp, stats), device)  # warm-up (first call: compiles), statistics
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() if cuda else 0
    times, blocks = [], []
    for _ in range(repeats):
        if timer:
            timer.on = True
        times.append(wall_seconds(lambda: prefill(model, state, inp), device))
        if timer:
            timer.on = False
            blocks.append(timer.take())
    dims = ModelDims.from_text_config(model.config.text_config)
    dense_f, sparse_f = prefill_flops(stats, dims)
    layers = stats.layers
    row = {
        "ms": statistics.median(times) * 1e3,
        "ms_all": [x * 1e3 for x in times],
        "first_call_s": first,
        "peak_extra_gib": (torch.cuda.max_memory_allocated() - base) / 2**30 if cuda else None,
        "flops_dense": dense_f.total,
        "flops_sparse": sparse_f.total,
        "flops_cut": reduction(dense_f, sparse_f),
        "attn_density": sum(r.attention.attended_keys for r in layers.values())
        / max(1, sum(r.attention.causal_keys for r in layers.values())),
        "ffn_kept": sum(r.ffn_kept for r in layers.values()) / max(1, sum(r.ffn_total for r in layers.values())),
        "dense_fallback_layers": [i for i, r in sorted(layers.items()) if r.dense_fallback],
        "kernels": sorted({r.kernel for r in layers.values() if r.kernel}),
    }
    if blocks:
        row["attention_ms"] = statistics.median(b["attention"] for b in blocks)
        row["ffn_ms"] = statistics.median(b["ffn"] for b in blocks)
    return row


# ---- checks --------------------------------------------------------------------------------------


def check_kernels(device: torch.device, kernels: list[str], out: dict) -> None:
    """Each fast kernel against the reference on the same random Selection (bf16 inputs, 4K tokens)."""
    inp_layout = cube_layout([VideoSpan(64, (16, 16, 16))], 64 + 4096 + 64, CUBE)
    L = inp_layout.seq_len
    g = torch.Generator(device=device).manual_seed(1)
    hq, hkv, d = HQ, HKV, D
    q = torch.randn(hq, L, d, generator=g, device=device).to(torch.bfloat16)
    k = torch.randn(hkv, L, d, generator=g, device=device).to(torch.bfloat16)
    v = torch.randn(hkv, L, d, generator=g, device=device).to(torch.bfloat16)
    plan = build_plan(inp_layout, L, L, device=device)
    for density in (1.0, 0.3):
        sel = random_selection(plan, hkv, density, seed=2)
        ref = IMPLEMENTATIONS["reference"](q, k, v, plan, sel, d**-0.5).float()
        for name in list(kernels):
            try:
                got = IMPLEMENTATIONS[name](q, k, v, plan, sel, d**-0.5).float()
            except Exception as exc:  # this kernel cannot run here: leave it out of every timing
                out["errors"].append(f"check {name}: {exc!r}")
                traceback.print_exc()
                kernels.remove(name)
                continue
            err = float((got - ref).abs().max())
            out.setdefault("kernel_max_abs_err", {})[f"{name}@{density}"] = err
            log(f"check {name} density {density}: max abs err vs reference {err:.4f}")
            if not err < 0.05:  # bf16 inputs: about 4e-3 expected; a wrong kernel never posts a number
                out["errors"].append(f"check {name}@{density}: max abs err {err}")
                kernels.remove(name)
    real = select_per_block(q, k, plan, 0.5, d**-0.5, method="exact")
    fused = select_per_block(q, k, plan, 0.5, d**-0.5)
    out["selection_fused_vs_exact"] = {"missing": int((real.cubes & ~fused.cubes).sum()),
                                       "extra": int((fused.cubes & ~real.cubes).sum()), "exact_total": int(real.cubes.sum())}
    log(f"check fused selection vs exact: {out['selection_fused_vs_exact']}")


def fa4_call_only(q, k, v, plan, sel, scale):
    """A closure running only FA4's block-sparse call of `attention_fa4` (for its overhead split)."""
    from adaspark_cli.attention import fa4
    from adaspark_cli.attention.flex import block_indices

    flash_attn_func, tensors_cls, mask_mod = fa4._kernel()
    group = q.shape[0] // k.shape[0]
    fn_, fi_ = block_indices(sel.full, group)
    pn_, pi_ = block_indices(sel.partial, group)
    tensors = tensors_cls(mask_block_cnt=pn_, mask_block_idx=pi_, full_block_cnt=fn_, full_block_idx=fi_, block_size=(128, 128))
    qt, kt, vt = (fa4._tile_order(x, g) for x, g in ((q, plan.q_gather), (k, plan.k_gather), (v, plan.k_gather)))
    return lambda: flash_attn_func(qt, kt, vt, softmax_scale=scale, causal=False, mask_mod=mask_mod,
                                   aux_tensors=[plan.q_pos, plan.kv_pos], block_sparse_tensors=tensors)


def kernel_table(device: torch.device, video_tokens: int, kernels: list[str], reps: int) -> dict:
    """One layer's attention alone: dense SDPA and FA4 dense, sparse kernels at forced densities."""
    import torch.nn.functional as F

    layout = cube_layout([VideoSpan(TEXT_BEFORE, (video_tokens // 256, *GRID_HW))], TEXT_BEFORE + video_tokens + TEXT_AFTER, CUBE)
    L = layout.seq_len
    g = torch.Generator(device=device).manual_seed(3)
    hq, hkv, d = HQ, HKV, D
    # token-major memory, as transformers' projections leave it
    q = torch.randn(L, hq, d, generator=g, device=device).to(torch.bfloat16).transpose(0, 1)
    k = torch.randn(L, hkv, d, generator=g, device=device).to(torch.bfloat16).transpose(0, 1)
    v = torch.randn(L, hkv, d, generator=g, device=device).to(torch.bfloat16).transpose(0, 1)
    plan = build_plan(layout, L, L, device=device)
    res: dict[str, Any] = {"tokens": L}

    def bench(fn) -> float:
        return statistics.median(time_ms(fn, reps=reps, warmup=2, cuda=True))

    res["sdpa_dense_ms"] = bench(
        lambda: F.scaled_dot_product_attention(q[None], k[None], v[None], is_causal=True, enable_gqa=True)
    )
    if "fa4" in kernels:
        from flash_attn.cute import flash_attn_func

        qt, kt, vt = (x.transpose(0, 1)[None] for x in (q, k, v))
        res["fa4_dense_ms"] = bench(lambda: flash_attn_func(qt, kt, vt, causal=True))
    best = min(x for key, x in res.items() if key.endswith("_dense_ms"))
    res["best_dense_ms"] = best
    res["sparse"] = {}
    for density in (1.0, 0.5, 0.3, 0.2):
        sel = random_selection(plan, hkv, density, seed=4)
        stats = PrefillStats()
        stats.layer(0).add_attention(plan, sel, hkv)
        a = stats.layers[0].attention
        kept = a.attended_keys / a.causal_keys  # video queries; text queries attend densely (a few)
        row: dict[str, Any] = {"kept_fraction": kept}
        # tiles the kernel computes against a dense causal kernel's (the diagonal one of each query
        # block counted whole in both): partial tiles cost a whole tile but count part of one in `kept`
        nqb = sel.full.shape[1]
        row["tile_fraction"] = float((sel.full | sel.partial).sum()) / (hkv * nqb * (nqb + 1) / 2)
        row["partial_tiles_share"] = float(sel.partial.sum()) / float((sel.full | sel.partial).sum())
        row["select_ms"] = bench(lambda: select_per_block(q, k, plan, density, d**-0.5)) if density < 1 else None
        for name in kernels:
            fn = IMPLEMENTATIONS[name]
            ms = bench(lambda: fn(q, k, v, plan, sel, d**-0.5))
            row[f"{name}_ms"] = ms
            row[f"{name}_frac_ideal"] = best * kept / ms
        if "fa4" in kernels:  # the kernel alone: inputs already in tile order, block lists already built
            row["fa4_call_ms"] = bench(fa4_call_only(q, k, v, plan, sel, d**-0.5))
            row["fa4_call_frac_ideal"] = best * kept / row["fa4_call_ms"]
            row["fa4_call_frac_tile_ideal"] = best * row["tile_fraction"] / row["fa4_call_ms"]
        res["sparse"][str(density)] = row
        timings = ", ".join(f"{kk} {vv:.3f}" for kk, vv in row.items() if isinstance(vv, float))
        log(f"kernel {L} tokens density {density}: {timings}")
    return res


# ---- main ------------------------------------------------------------------------------------------


def forced_hook(density: float) -> Callable[[Any, int, int], Any]:
    """A selection hook: a random selection of `density` per layer, seeded by the layer."""
    return lambda plan, layer, kv: random_selection(plan, kv, density, seed=layer)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", choices=("qwen2_5_vl", "qwen3_vl"), default="qwen2_5_vl",
                    help="language-model shapes: Qwen2.5-VL-7B or Qwen3-VL-8B")
    ap.add_argument("--sizes", default=None, help="video tokens in thousands (1024s); default 16,32,64,128 (qwen3_vl: 32,64)")
    ap.add_argument("--repeats", type=int, default=None, help="timed calls per run; default 3 (qwen3_vl: 2)")
    ap.add_argument("--deadline", type=float, default=None,
                    help="seconds; later runs are skipped past it; default 540 (qwen3_vl: 200)")
    ap.add_argument("--out", default=None, help="folder for bench_prefill.json")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU: exercise the code paths only")
    ap.add_argument("--no-kernel-table", action="store_true")
    args = ap.parse_args()
    qwen3 = args.arch == "qwen3_vl"
    args.sizes = args.sizes or ("32,64" if qwen3 else "16,32,64,128")
    args.repeats = args.repeats or (2 if qwen3 else 3)
    args.deadline = args.deadline or (200.0 if qwen3 else 540.0)
    args.no_kernel_table = args.no_kernel_table or qwen3  # the kernel table is the 7B's (28 / 4 heads)
    device = torch.device("cpu" if args.smoke else "cuda")
    env = environment(device.type == "cuda", packages=("triton", "flash-attn-4", "nvidia-cutlass-dsl"))
    results: dict[str, Any] = {"env": {**env, "fa4": fa4_available()}, "arch": args.arch, "sizes": {}, "kernel_table": {},
                               "errors": []}
    out_path = out_file(args.out, "bench_prefill_qwen3_vl.json" if qwen3 else "bench_prefill.json")

    def save() -> None:
        write_json(results, out_path)

    log(json.dumps(results["env"]))
    kernels = ["gathered"] if args.smoke else (["fa4", "flex"] if fa4_available() else ["flex"])
    if not args.smoke:
        check_kernels(device, kernels, results)
        save()
        if not kernels:
            return 1
    sparse_kernel = kernels[0]
    results["env"]["sparse_kernel"] = sparse_kernel
    t = time.perf_counter()
    model = build_model(args.smoke, device, torch.float32 if args.smoke else torch.bfloat16, arch=args.arch)
    log(f"{args.arch} model built in {time.perf_counter() - t:.1f} s, "
        f"{sum(p.numel() for p in model.model.language_model.parameters()) / 1e9:.2f} B language-model parameters")
    state = sparsify(model, AdaSparkConfig(cube=CUBE), kernel=sparse_kernel)
    results["env"]["dense_ffn_layers"] = sorted(state.settings.dense_ffn_layers)
    timer = None if args.smoke else BlockTimer(model)
    sizes = [int(s) * 1024 for s in ("1" if args.smoke else args.sizes).split(",")]  # smoke: one small size
    # p = 1 reproduces dense (fallback off, so the sparse kernels themselves run)
    inp = make_inputs(args.arch, model, sizes[0], device)
    with state.override(enabled=False):
        dense_logits = prefill(model, state, inp)
    with state.override(config=AdaSparkConfig(cube=CUBE, attn_top_p=1.0, ffn_top_p=1.0), dense_fallback=False):
        p1 = prefill(model, state, inp)
    results["p1_vs_dense"] = {
        "max_abs_logit_diff": float((p1 - dense_logits).abs().max()),
        "rel_l2": float((p1 - dense_logits).norm() / dense_logits.norm()),
        "top1_same": bool(p1.argmax() == dense_logits.argmax()),
        "top10_overlap": len(set(p1.topk(10).indices.tolist()) & set(dense_logits.topk(10).indices.tolist())),
    }
    log(f"p = 1 against dense (sparse kernels, fallback off), {inp.seq} tokens: {results['p1_vs_dense']}")
    for size in sizes:
        inp = make_inputs(args.arch, model, size, device)
        per = results["sizes"][str(size)] = {"seq": inp.seq, "video_tokens": inp.video_tokens, "runs": {}}
        runs: list[tuple[str, dict[str, Any]]] = [("dense", {"enabled": False})]
        for a, f in FORCED:
            hook = forced_hook(a)
            runs.append((f"forced {a}/{f}", {"config": AdaSparkConfig(cube=CUBE, ffn_top_p=f), "selection_hook": hook,
                                             "dense_fallback": False}))
        if qwen3:  # the DeepStack decision's cost: the same forced run with those layers' FFN sparse too
            # (before the top-p runs, which the deadline may skip at 64K)
            a, f = FORCED[1]
            hook = forced_hook(a)
            runs.append((f"forced {a}/{f} deepstack-ffn-sparse", {"config": AdaSparkConfig(cube=CUBE, ffn_top_p=f),
                                                                  "selection_hook": hook, "dense_fallback": False,
                                                                  "dense_ffn_layers": frozenset()}))
        for a, f in TOP_P:
            runs.append((f"top-p {a}/{f}", {"config": AdaSparkConfig(cube=CUBE, attn_top_p=a, ffn_top_p=f)}))
        if not args.smoke and "flex" in kernels and sparse_kernel != "flex":
            hook = forced_hook(0.3)
            runs.append(("forced 0.3/0.3 flex", {"config": AdaSparkConfig(cube=CUBE, ffn_top_p=0.3), "selection_hook": hook,
                                                 "dense_fallback": False, "kernel": "flex"}))
        for name, changes in runs:
            if elapsed() > args.deadline:
                per.setdefault("skipped", []).append(name)
                continue
            try:
                with state.override(**changes):
                    row = timed_runs(model, state, inp, 1 if args.smoke else args.repeats, timer)
            except Exception as exc:
                results["errors"].append(f"{size} {name}: {exc!r}")
                traceback.print_exc()
                continue
            per["runs"][name] = row
            dense_ms = per["runs"].get("dense", {}).get("ms")
            if dense_ms:
                row["speedup_vs_dense"] = dense_ms / row["ms"]
            log(f"{inp.seq} tokens {name}: {row['ms']:.1f} ms" + (f" ({row.get('speedup_vs_dense', 1):.2f}x)" if dense_ms else "")
                + f", FLOPs cut {row['flops_cut']:.1%}, attn density {row['attn_density']:.2f}, ffn kept {row['ffn_kept']:.2f}, "
                f"attention {row.get('attention_ms', 0):.1f} ms, ffn {row.get('ffn_ms', 0):.1f} ms, "
                f"first {row['first_call_s']:.1f} s, "
                f"peak +{row['peak_extra_gib'] or 0:.1f} GiB, dense layers {row['dense_fallback_layers']}")
            save()
        if not args.smoke and not args.no_kernel_table and elapsed() < args.deadline:
            try:
                results["kernel_table"][str(size)] = kernel_table(device, size, kernels, 5)
            except Exception as exc:
                results["errors"].append(f"kernel table {size}: {exc!r}")
                traceback.print_exc()
            save()
        torch.cuda.empty_cache() if device.type == "cuda" else None
    report(results)
    save()
    return 0


def report(results: dict) -> None:
    print("\n| tokens | run | ms | vs dense | FLOPs cut | attn density | FFN kept | attention ms | FFN ms | first call s "
          "| peak +GiB | dense layers |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for per in results["sizes"].values():
        for name, r in per["runs"].items():
            print(f"| {per['seq']} | {name} | {r['ms']:.1f} | {r.get('speedup_vs_dense', 1):.2f}x | {r['flops_cut']:.1%} | "
                  f"{r['attn_density']:.2f} | {r['ffn_kept']:.2f} | {r.get('attention_ms', float('nan')):.1f} | "
                  f"{r.get('ffn_ms', float('nan')):.1f} | {r['first_call_s']:.1f} | {r['peak_extra_gib'] or 0:.1f} | "
                  f"{len(r['dense_fallback_layers'])} |")
    for t in results["kernel_table"].values():
        print(f"\nkernel, {t['tokens']} tokens: best dense {t['best_dense_ms']:.2f} ms (sdpa {t['sdpa_dense_ms']:.2f}"
              + (f", fa4 {t['fa4_dense_ms']:.2f}" if "fa4_dense_ms" in t else "") + ")")
        for dens, row in t["sparse"].items():
            print(f"  density {dens}: kept {row['kept_fraction']:.2f}, " + ", ".join(
                f"{k} {v:.3f}" for k, v in row.items() if k != "kept_fraction" and isinstance(v, float)))
    if results["errors"]:
        print("errors:", results["errors"])


if __name__ == "__main__":
    sys.exit(main())
