"""bench_prefill's kernel checks and kernel table: each fast sparse-attention kernel against the reference on
one random Selection, and one layer's attention alone (dense SDPA, FA4 dense, the sparse kernels at forced
densities) with "fraction of ideal" = best dense x kept fraction / time.
"""

from __future__ import annotations

import statistics
import traceback
from typing import Any

import torch

from _common import HEAD_DIM_7B, TEXT_7B, log_stamped, time_ms  # this folder is on sys.path; puts src/ there too
from _prefill_model import CUBE, GRID_HW, TEXT_AFTER, TEXT_BEFORE

from adaspark_cli.attention import IMPLEMENTATIONS
from adaspark_cli.cubes import VideoSpan, cube_layout
from adaspark_cli.cubes.plan import build_plan
from adaspark_cli.selection import random_selection, select_per_block
from adaspark_cli.stats import PrefillStats

log = log_stamped
HQ, HKV, D = TEXT_7B["num_attention_heads"], TEXT_7B["num_key_value_heads"], HEAD_DIM_7B


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

    flash_attn_func, tensors_cls, mask_mod = fa4.fa4_kernel()
    group = q.shape[0] // k.shape[0]
    fn_, fi_ = block_indices(sel.full, group)
    pn_, pi_ = block_indices(sel.partial, group)
    tensors = tensors_cls(mask_block_cnt=pn_, mask_block_idx=pi_, full_block_cnt=fn_, full_block_idx=fi_, block_size=(128, 128))
    qt, kt, vt = (fa4.tile_order(x, g) for x, g in ((q, plan.q_gather), (k, plan.k_gather), (v, plan.k_gather)))
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
