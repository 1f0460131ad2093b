"""Prefill benchmark for issue 4: dense SDPA against AdaSpark's block-sparse attention and gathered FFN.

One layer of Qwen2.5-VL-7B's language model (hidden 3584, 28 query / 4 KV heads, head_dim 128,
FFN 18944, bf16, random weights) at 16K-128K video tokens. Before timing, the fast path is checked
against the reference on small random inputs (max error printed). Whole-model time to first token
is ESTIMATED as 28 x (attention + FFN + QKV/O projections) of the one measured layer (embedding,
norms, RoPE, residual adds, lm_head and the vision encoder are not included, the same for both).

Usage (on the GPU machine):  PYTHONPATH=src python3 benchmarks/bench_prefill.py --out $OUT
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
import traceback

import torch
import torch.nn.functional as F

from adaspark_cli.attention import adas_attention_reference, cube_mean_keys
from adaspark_cli.attention import blocksparse as bs
from adaspark_cli.cubes import VideoSpan, cube_layout
from adaspark_cli.ffn import fast as ffn_fast
from adaspark_cli.ffn.reference import adas_ffn_gathered, adas_ffn_reference, cube_mean_of_kept, select_ffn_tokens

HIDDEN, HQ, HKV, D, FFN_DIM, LAYERS = 3584, 28, 4, 128, 18944, 28
TEXT_BEFORE, TEXT_AFTER = 64, 64
GRID_HW = (16, 16)  # merged tokens per frame pair (448 x 448 frames)
CUBE = (2, 8, 8)
SCALE = D**-0.5

RESULTS: dict = {"env": {}, "checks": {}, "sizes": {}, "skipped": []}
OUT = None
SMOKE = False  # --smoke: tiny dims on the CPU, only to exercise the code paths


def save() -> None:
    if OUT:
        with open(os.path.join(OUT, "bench_prefill.json"), "w") as f:
            json.dump(RESULTS, f, indent=1, default=str)


def timeit(fn, reps: int, warmup: int = 2) -> float:
    """Median milliseconds over reps, CUDA events around each call."""
    if SMOKE:
        fn()
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e))
    return statistics.median(times)


def peak_mib(fn) -> float:
    """Extra memory (MiB) allocated at the peak of one call, over what was allocated before it."""
    if SMOKE:
        fn()
        return 0.0
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del out
    return peak / 2**20


# ------------------------------------------------------------------------------------------------
# inputs


def make_layout(video_tokens: int):
    t = video_tokens // (GRID_HW[0] * GRID_HW[1])
    span = VideoSpan(TEXT_BEFORE, (t, *GRID_HW))
    seq = TEXT_BEFORE + span.num_tokens + TEXT_AFTER
    return cube_layout([span], seq, CUBE)


def structured_qkv(layout, device, dtype=torch.bfloat16, seed=0, lag=3, a=8.0, b=8.5):
    """Synthetic inputs with video-like structure (random weights give flat cube scores, for which any
    top-p union is dense): each cube c has a random unit topic per KV head; its keys are a*topic +
    noise; a query of cube i looks for the topics of the same spatial cube in the `lag` previous slabs.
    Text tokens are plain noise."""
    g = torch.Generator(device=device).manual_seed(seed)
    L, C = layout.seq_len, layout.num_cubes
    cube = layout.cube_of_token.to(device)
    video = cube >= 0
    topic = torch.randn(HKV, C, D, device=device, generator=g)
    topic = topic / topic.norm(dim=-1, keepdim=True)
    k = torch.randn(HKV, L, D, device=device, generator=g) * 0.5
    k[:, video] += a * topic[:, cube[video]]
    # related cubes: same spatial position, slabs s-1..s-lag
    per_slab = int((layout.slab_of_cube == 0).sum())
    target = torch.zeros(HKV, C, D, device=device)
    cid = torch.arange(C, device=device)
    for j in range(1, lag + 1):
        src = cid - j * per_slab
        ok = src >= 0
        target[:, ok] += topic[:, src[ok]]
    q = torch.randn(HQ, L, D, device=device, generator=g) * 0.5
    q[:, video] += b * target.repeat_interleave(HQ // HKV, 0)[:, cube[video]]
    v = torch.randn(HKV, L, D, device=device, generator=g)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def forced_selection(plan, density: float, hkv: int, seed: int = 0):
    """Random per-(KV head, block) cube sets sized so that attended pairs / causal pairs ~ density."""
    dev = plan.q_pos.device
    ns = plan.sel_blocks.numel()
    c = plan.num_cubes
    full_sel = (torch.arange(c, device=dev)[None] < plan.sel_cand[:, None]).expand(hkv, -1, -1)
    f0, p0 = bs.block_structure(plan, torch.zeros_like(full_sel), hkv)
    f1, p1 = bs.block_structure(plan, full_sel, hkv)
    base, causal = bs.attended_pairs(plan, f0, p0)
    allp, _ = bs.attended_pairs(plan, f1, p1)
    frac = min(1.0, max(0.0, (density * causal - base) / max(1, allp - base)))
    g = torch.Generator(device=dev).manual_seed(seed)
    r = torch.rand(hkv, ns, c, device=dev, generator=g)
    r = r.masked_fill(~full_sel, 2.0)
    rank = r.argsort(-1).argsort(-1)
    n_keep = torch.round(plan.sel_cand.float() * frac).long()
    return rank < n_keep[None, :, None]


# ------------------------------------------------------------------------------------------------
# layer pieces


class MLP:
    def __init__(self, device, dtype=torch.bfloat16, seed=0):
        g = torch.Generator(device=device).manual_seed(seed)
        s = HIDDEN**-0.5
        self.gate = torch.randn(FFN_DIM, HIDDEN, device=device, dtype=dtype, generator=g) * s
        self.up = torch.randn(FFN_DIM, HIDDEN, device=device, dtype=dtype, generator=g) * s
        self.down = torch.randn(HIDDEN, FFN_DIM, device=device, dtype=dtype, generator=g) * FFN_DIM**-0.5

    def __call__(self, x):
        return F.linear(F.silu(F.linear(x, self.gate)) * F.linear(x, self.up), self.down)


def ffn_gathered_keep(ffn, x, token_cube, num_cubes, keep):
    """adas_ffn_gathered's compute after selection, for a given keep mask (forced keep fractions)."""
    video = token_cube >= 0
    video_idx = video.nonzero().squeeze(1)
    cubes = token_cube[video_idx]
    rows = torch.cat([(~video).nonzero().squeeze(1), video_idx[keep]])
    rows_out = ffn(x[rows])
    out = torch.empty(x.shape[0], rows_out.shape[-1], dtype=rows_out.dtype, device=x.device)
    out[rows] = rows_out
    skipped = video_idx[~keep]
    n_text = rows.numel() - int(keep.sum())
    means = cube_mean_of_kept(rows_out[n_text:], cubes, keep, num_cubes)
    out[skipped] = means[cubes[~keep]].to(out.dtype)
    return out


def dense_sdpa(q, k, v, variant: str):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if SMOKE:
        return F.scaled_dot_product_attention(q[None], k[None], v[None], is_causal=True, scale=SCALE, enable_gqa=True)[0]
    if variant == "gqa":
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]):
            return F.scaled_dot_product_attention(q[None], k[None], v[None], is_causal=True, scale=SCALE, enable_gqa=True)[0]
    if variant == "cudnn":
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            return F.scaled_dot_product_attention(q[None], k[None], v[None], is_causal=True, scale=SCALE)[0]
    if variant == "flash":
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            return F.scaled_dot_product_attention(q[None], k[None], v[None], is_causal=True, scale=SCALE)[0]
    raise ValueError(variant)


# ------------------------------------------------------------------------------------------------
# correctness


def rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm().clamp(min=1e-30))


def check_correctness(device) -> None:
    print("== correctness (random inputs, fast path vs reference) ==", flush=True)
    torch.manual_seed(1234)
    spans = [VideoSpan(40, (8, 12, 12)), VideoSpan(40 + 8 * 144 + 20, (4, 10, 6))]  # partial cubes, two videos
    L = spans[-1].end + 30
    layout = cube_layout(spans, L, CUBE).to(device)
    checks = {}
    for trial, p in enumerate([1.0, 0.9, 0.5]):
        q = (torch.randn(HQ, L, D, device=device) * 2).to(torch.bfloat16)
        k = (torch.randn(HKV, L, D, device=device) * 2).to(torch.bfloat16)
        v = torch.randn(HKV, L, D, device=device).to(torch.bfloat16)
        info = {}
        fast = bs.adas_attention_blocksparse(q, k, v, layout, top_p=p, scaling=SCALE, info=info)
        plan, full, partial = info["plan"], info["full"], info["partial"]
        # oracle 1: the fp32 dense-mask computation of the same block mask (same selection)
        qp, kp, vp = bs.permute_qkv(plan, q.float(), k.float(), v.float())
        oracle = bs.unpermute(plan, bs.sparse_attention(plan, qp, kp, vp, full, partial, SCALE, backend="dense"))
        err_mask = float((fast.float() - oracle).abs().max())
        entry = {"max_abs_err_vs_same_mask_fp32": err_mask, "rel_err_vs_same_mask_fp32": rel(fast, oracle)}
        if p >= 1.0:
            ref = adas_attention_reference(q.float(), k.float(), v.float(), layout, top_p=1.0, scaling=SCALE)
            entry["max_abs_err_vs_reference_p1"] = float((fast.float() - ref).abs().max())
            entry["rel_err_vs_reference_p1"] = rel(fast, ref)
        # selection: triton vs exact sort, and per-block union vs per-token sets
        mk = cube_mean_keys(k, layout)
        ex = bs.select_blocks(plan, qp.to(torch.bfloat16), mk, p, SCALE, method="exact")
        tr = bs.select_blocks(plan, qp.to(torch.bfloat16), mk, p, SCALE, method="triton")
        entry["triton_missing_vs_exact"] = int((ex & ~tr).sum())
        entry["triton_extra_vs_exact"] = int((tr & ~ex).sum())
        tok = bs.per_token_selection(plan, qp.to(torch.bfloat16), mk, p, SCALE)
        union = tok.view(HKV, -1, plan.block, tok.shape[-1]).any(2)
        entry["union_equals_exact_blocks"] = bool((union == ex).all())
        per_tok = int(tok.sum(-1).sum())
        per_blk = int((tr.sum(-1)[:, :, None] * (plan.q_pos >= 0).view(-1, plan.block)[plan.sel_blocks].sum(-1)[None, :, None]).sum())
        entry["cubes_per_token_reference"] = per_tok
        entry["cubes_per_token_block_union"] = per_blk
        entry["nan"] = bool(torch.isnan(fast).any())
        checks[f"attn_p{p}"] = entry
        print(f"  attn top_p={p}: {entry}", flush=True)
    # FFN gathered vs reference on a small random input
    x = torch.randn(L, 256, device=device, dtype=torch.float32)
    w1, w2 = torch.randn(512, 256, device=device) / 16, torch.randn(256, 512, device=device) / 22
    ffn = lambda t: F.linear(F.silu(F.linear(t, w1)), w2)  # noqa: E731
    for p in [0.5, 0.9]:
        a, ka = adas_ffn_reference(ffn, x, layout.cube_of_token, layout.num_cubes, p)
        b, kb = adas_ffn_gathered(ffn, x, layout.cube_of_token, layout.num_cubes, p)
        c_, kc = ffn_fast.adas_ffn_blocks(ffn, x, layout, p)
        checks[f"ffn_p{p}"] = {"gathered_max_abs_err": float((a - b).abs().max()), "gathered_same_keep": bool((ka == kb).all()),
                               "blocks_max_abs_err": float((a - c_).abs().max()), "blocks_keep_mismatches": int((ka != kc).sum())}
        print(f"  ffn top_p={p}: {checks[f'ffn_p{p}']}", flush=True)
    RESULTS["checks"] = checks
    save()


# ------------------------------------------------------------------------------------------------
# one size


KERNEL_OPTIONS: dict | None = None  # chosen by the sweep at the first size, used for every flex call after it
KO_VARIANTS = [
    ("default", {}),
    ("tma", {"USE_TMA": True}),
]


def fmt(e: dict) -> str:
    return json.dumps({k_: (round(v_, 4) if isinstance(v_, float) else v_) for k_, v_ in e.items()})


def bench_size(n_video: int, args, device) -> dict:
    global KERNEL_OPTIONS
    reps = args.reps if n_video <= 65536 else max(3, args.reps // 2)
    layout = make_layout(n_video).to(device)
    L = layout.seq_len
    res: dict = {"video_tokens": n_video, "seq_len": L, "cubes": layout.num_cubes, "reps": reps}
    q, k, v = structured_qkv(layout, device)
    t0 = time.time()
    plan = bs.build_plan(layout, L, L, device=device)
    if not SMOKE:
        torch.cuda.synchronize()
    res["plan_build_ms_once_per_forward"] = (time.time() - t0) * 1e3
    causal_pairs = L * (L + 1) // 2
    dense_attn_flops = 4 * D * HQ * causal_pairs

    # dense attention
    dense = {}
    for variant in ["gqa", "cudnn"]:
        try:
            kk, vv = (k, v) if variant == "gqa" else (k.repeat_interleave(HQ // HKV, 0), v.repeat_interleave(HQ // HKV, 0))
            ms = timeit(lambda: dense_sdpa(q, kk, vv, variant), reps)
            dense[variant] = {"ms": ms, "tflops": dense_attn_flops / ms / 1e9, "peak_extra_mib": peak_mib(lambda: dense_sdpa(q, kk, vv, variant))}
            del kk, vv
        except Exception as e:  # noqa: BLE001
            dense[variant] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
    ok = {k_: v_ for k_, v_ in dense.items() if "ms" in v_}
    best = min(ok, key=lambda k_: ok[k_]["ms"])
    res["dense_attention"] = dense
    res["dense_best"] = best
    t_dense = ok[best]["ms"]
    dense_ref_out = dense_sdpa(q, k, v, "gqa") if "ms" in dense.get("gqa", {}) else None
    print(f"  dense SDPA: " + ", ".join(f"{k_} {v_.get('ms', float('nan')):.2f} ms" for k_, v_ in dense.items()), flush=True)

    qp, kp, vp = bs.permute_qkv(plan, q, k, v)

    # flex kernel options, swept once (first size), at forced density 0.3
    if args.kernel_options and KERNEL_OPTIONS is None and not SMOKE:
        sel = forced_selection(plan, 0.3, HKV)
        full, partial = bs.block_structure(plan, sel, HKV)
        bm = bs.build_block_mask(plan, full, partial, HQ)
        variants = {}
        for name, ko in KO_VARIANTS:
            try:
                variants[name] = timeit(lambda: bs.sparse_attention(plan, qp, kp, vp, full, partial, SCALE, block_mask=bm, backend="flex", kernel_options=ko), reps)
            except Exception as ex:  # noqa: BLE001
                variants[name] = f"{type(ex).__name__}: {str(ex)[:160]}"
        timed = {n_: t_ for n_, t_ in variants.items() if isinstance(t_, float)}
        choice = min(timed, key=timed.get)
        KERNEL_OPTIONS = dict(KO_VARIANTS)[choice]
        res["kernel_options_sweep_d0.3_ms"] = variants
        RESULTS["kernel_options_chosen"] = {"name": choice, "options": KERNEL_OPTIONS, "at_video_tokens": n_video}
        print(f"  kernel options at d=0.3 (ms): {variants} -> {choice}", flush=True)
    ko = KERNEL_OPTIONS  # None: the library default (USE_TMA on CUDA); {}: flex's own defaults

    # sparse attention at forced densities (and 1.0 = every candidate = causal)
    sparse = {}
    for dens in args.densities:
        sel = forced_selection(plan, dens, HKV)
        full, partial = bs.block_structure(plan, sel, HKV)
        pairs, causal_kv = bs.attended_pairs(plan, full, partial)
        bm = bs.build_block_mask(plan, full, partial, HQ)
        e: dict = {"target_density": dens, "density": pairs / causal_kv}
        e["block_density"] = float((full | partial).sum()) / float((plan.always_full | plan.always_partial | plan.cand_blocks).sum() * HKV)
        e["mask_ms"] = timeit(lambda: bs.build_block_mask(plan, *bs.block_structure(plan, sel, HKV), HQ), reps)
        e["permute_ms"] = timeit(lambda: bs.permute_qkv(plan, q, k, v), reps)
        e["kernel_ms"] = timeit(lambda: bs.sparse_attention(plan, qp, kp, vp, full, partial, SCALE, block_mask=bm, backend="flex", kernel_options=ko), reps)
        out_perm = bs.sparse_attention(plan, qp, kp, vp, full, partial, SCALE, block_mask=bm, backend="flex", kernel_options=ko)
        e["unpermute_ms"] = timeit(lambda: bs.unpermute(plan, out_perm), reps)

        def total():
            a, b_, c_ = bs.permute_qkv(plan, q, k, v)
            f_, p_ = bs.block_structure(plan, sel, HKV)
            o = bs.sparse_attention(plan, a, b_, c_, f_, p_, SCALE, backend="flex", kernel_options=ko)
            return bs.unpermute(plan, o)

        e["total_ms"] = timeit(total, reps)
        e["peak_extra_mib"] = peak_mib(total)
        flops = 4 * D * HQ * pairs / HKV
        e["attn_flops"] = flops
        e["kernel_tflops"] = flops / e["kernel_ms"] / 1e9
        e["ideal_ms"] = t_dense * pairs / causal_kv
        e["frac_of_ideal_kernel"] = e["ideal_ms"] / e["kernel_ms"]
        e["speedup_total_vs_dense"] = t_dense / e["total_ms"]
        if dens >= 1.0 and dense_ref_out is not None:
            e["max_abs_err_vs_sdpa"] = float((bs.unpermute(plan, out_perm).transpose(0, 1).float() - dense_ref_out.float()).abs().max())
        sparse[f"d{dens}"] = e
        print(f"  flex density {dens}: {fmt(e)}", flush=True)
        del out_perm, bm
    res["sparse_forced"] = sparse

    # top-p with real selection on the structured inputs
    topp = {}
    mk = bs.mean_keys_from_blocks(plan, kp)
    mk_ref = cube_mean_keys(k, layout)
    res["mean_keys_max_abs_diff_vs_cube_mean_keys"] = float((mk - mk_ref).abs().max())
    for p in args.top_p:
        info: dict = {}
        e = {}
        e["mean_keys_ms"] = timeit(lambda: bs.mean_keys_from_blocks(plan, kp), reps)
        e["select_ms"] = timeit(lambda: bs.select_blocks(plan, qp, mk, p, SCALE, method="triton"), reps)
        launch = bs._launch_union
        bs._launch_union = lambda *a_, **k_: None
        e["select_logits_only_ms"] = timeit(lambda: bs.select_blocks(plan, qp, mk, p, SCALE, method="triton"), reps)
        bs._launch_union = launch
        e["total_ms"] = timeit(lambda: bs.adas_attention_blocksparse(q, k, v, layout, top_p=p, scaling=SCALE, kernel_options=ko), reps)
        bs.adas_attention_blocksparse(q, k, v, layout, top_p=p, scaling=SCALE, info=info, kernel_options=ko)
        pairs, causal_kv = bs.attended_pairs(plan, info["full"], info["partial"])
        e["density"] = pairs / causal_kv
        e["attn_flops"] = 4 * D * HQ * pairs / HKV
        e["cubes_selected_mean"] = float(info["selection"].sum(-1).float().mean())
        e["candidates_mean"] = float(plan.sel_cand.float().mean())
        e["select_flops"] = 2 * D * HQ * float((plan.sel_cand * plan.block).sum())
        e["peak_extra_mib"] = peak_mib(lambda: bs.adas_attention_blocksparse(q, k, v, layout, top_p=p, scaling=SCALE, kernel_options=ko))
        if n_video <= 16384:
            e["select_exact_sort_ms"] = timeit(lambda: bs.select_blocks(plan, qp, mk, p, SCALE, method="exact"), 3, warmup=1)
            ex = bs.select_blocks(plan, qp, mk, p, SCALE, method="exact")
            e["triton_vs_exact_missing"] = int((ex & ~info["selection"]).sum())
            e["triton_vs_exact_extra"] = int((info["selection"] & ~ex).sum())
            e["exact_selected"] = int(ex.sum())
        topp[f"p{p}"] = e
        print(f"  top_p {p}: {fmt(e)}", flush=True)
    res["sparse_top_p"] = topp
    del qp, kp, vp, q, k, v, dense_ref_out
    torch.cuda.empty_cache()

    # FFN and projections
    mlp = MLP(device)
    x = torch.randn(L, HIDDEN, device=device, dtype=torch.bfloat16)
    cube_ids = layout.cube_of_token
    ffn = {"dense_ms": timeit(lambda: mlp(x), reps), "dense_peak_extra_mib": peak_mib(lambda: mlp(x))}
    ffn["dense_flops"] = 2 * 3 * HIDDEN * FFN_DIM * L
    n_text = L - n_video
    pos_blk, _, text_pos = ffn_fast._video_blocks(plan)
    valid = pos_blk >= 0
    g = torch.Generator(device=device).manual_seed(1)
    for keep_frac in args.keeps:
        r = torch.rand(pos_blk.shape, device=device, generator=g).masked_fill(~valid, 2.0)
        r[:, 0] = -1.0  # at least one kept per cube
        keep_blk = (r < keep_frac) & valid
        e = {"ms": timeit(lambda: ffn_fast.apply_ffn_blocks(mlp, x, pos_blk, text_pos, keep_blk), reps)}
        e["peak_extra_mib"] = peak_mib(lambda: ffn_fast.apply_ffn_blocks(mlp, x, pos_blk, text_pos, keep_blk))
        keep_tok = torch.zeros(L, dtype=torch.bool, device=device)
        keep_tok[pos_blk[keep_blk]] = True
        keep_vid = keep_tok[cube_ids >= 0]
        e["old_gathered_ms"] = timeit(lambda: ffn_gathered_keep(mlp, x, cube_ids, layout.num_cubes, keep_vid), reps)
        ref_out = ffn_gathered_keep(mlp, x, cube_ids, layout.num_cubes, keep_vid)
        e["max_abs_diff_vs_gathered"] = float((ffn_fast.apply_ffn_blocks(mlp, x, pos_blk, text_pos, keep_blk).float() - ref_out.float()).abs().max())
        del ref_out
        rows = n_text + int(keep_blk.sum())
        e["keep"] = rows / L
        e["flops"] = 2 * 3 * HIDDEN * FFN_DIM * rows
        e["ideal_ms"] = ffn["dense_ms"] * rows / L
        e["frac_of_ideal"] = e["ideal_ms"] / e["ms"]
        ffn[f"keep{keep_frac}"] = e
    video = cube_ids >= 0
    for p in [0.5, 0.9]:
        def sel_fast():
            norms = torch.linalg.vector_norm(x, dim=-1, dtype=torch.float32)
            nb_ = norms[pos_blk.clamp(min=0)].masked_fill(~valid, 0.0)
            return ffn_fast.select_ffn_blocks(nb_, valid, p)

        ffn[f"select_top_p{p}_ms"] = timeit(sel_fast, reps)
        ffn[f"select_top_p{p}_keep"] = float(sel_fast().sum()) / n_video
        ffn[f"select_old_top_p{p}_ms"] = timeit(lambda: select_ffn_tokens(x[video].float().norm(dim=-1), cube_ids[video], layout.num_cubes, p), reps)
    print(f"  ffn: {fmt(ffn)}", flush=True)
    res["ffn"] = ffn
    wqkv = torch.randn(HQ * D + 2 * HKV * D, HIDDEN, device=device, dtype=torch.bfloat16) * 0.02
    wo = torch.randn(HIDDEN, HQ * D, device=device, dtype=torch.bfloat16) * 0.02
    res["proj_ms"] = timeit(lambda: (F.linear(x, wqkv), F.linear(x[:, : HQ * D], wo)), reps)
    res["proj_flops"] = 2 * L * HIDDEN * (HQ * D + 2 * HKV * D) + 2 * L * HQ * D * HIDDEN
    del x, mlp, wqkv, wo
    torch.cuda.empty_cache()

    # whole-layer combinations and the TTFT estimate (28 x one layer)
    dense_layer = t_dense + ffn["dense_ms"] + res["proj_ms"]
    dense_fl = dense_attn_flops + ffn["dense_flops"] + res["proj_flops"]
    combos = {"dense": {"layer_ms": dense_layer, "ttft_est_s": LAYERS * dense_layer / 1e3, "flops_per_layer": dense_fl,
                        "peak_extra_mib": max(ok[best]["peak_extra_mib"], ffn["dense_peak_extra_mib"])}}
    # selection cost charged to the forced-density rows: the real top-p selection measured at the middle p
    tp_mid = topp[f"p{args.top_p[len(args.top_p) // 2]}"] if topp else None
    attn_sel_ms = tp_mid["select_ms"] + tp_mid["mean_keys_ms"] if tp_mid else 0.0
    attn_sel_fl = tp_mid["select_flops"] if tp_mid else 0.0
    ffn_sel_ms = ffn["select_top_p0.5_ms"]
    rows_ = []
    for dens in args.densities:
        if dens < 1.0:
            a = sparse[f"d{dens}"]
            rows_.append((f"d{dens}", a["total_ms"] + attn_sel_ms, a["attn_flops"] + attn_sel_fl, a["peak_extra_mib"], a["density"], a["frac_of_ideal_kernel"]))
    for name, e in topp.items():
        rows_.append((f"top{name}", e["total_ms"], e["attn_flops"] + e["select_flops"], e["peak_extra_mib"], e["density"], None))
    for name, attn_ms, attn_fl, attn_peak, dens_, frac in rows_:
        for keep_frac in args.keeps:
            f_ = ffn[f"keep{keep_frac}"]
            layer = attn_ms + f_["ms"] + ffn_sel_ms + res["proj_ms"]
            fl = attn_fl + f_["flops"] + res["proj_flops"]
            combos[f"{name}_keep{keep_frac}"] = {
                "attn_ms": attn_ms, "density": dens_, "kernel_frac_of_ideal": frac,
                "layer_ms": layer, "ttft_est_s": LAYERS * layer / 1e3, "speedup": dense_layer / layer,
                "flops_per_layer": fl, "flops_reduction": 1 - fl / dense_fl,
                "selection_share": ((attn_sel_ms if name.startswith("d") else e_sel(topp, name)) + ffn_sel_ms) / layer,
                "peak_extra_mib": max(attn_peak, f_["peak_extra_mib"]),
            }
    res["combos"] = combos
    return res


def e_sel(topp: dict, name: str) -> float:
    e = topp[name[len("top"):]]
    return e["select_ms"] + e["mean_keys_ms"]


def main() -> None:
    global OUT
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="65536,131072,16384,32768")
    ap.add_argument("--densities", default="1.0,0.5,0.3,0.2")
    ap.add_argument("--keeps", default="0.5,0.3")
    ap.add_argument("--top-p", default="0.6,0.8,0.9")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--budget-s", type=float, default=420.0, help="skip the remaining sizes after this many seconds")
    ap.add_argument("--kernel-options", action="store_true")
    ap.add_argument("--out", default=os.environ.get("OUT"))
    ap.add_argument("--smoke", action="store_true", help="tiny dims on the CPU (code paths only, numbers meaningless)")
    args = ap.parse_args()
    args.densities = [float(x) for x in args.densities.split(",")]
    args.keeps = [float(x) for x in args.keeps.split(",")]
    args.top_p = [float(x) for x in args.top_p.split(",")]
    OUT = args.out
    start = time.time()
    device = torch.device("cuda")
    if args.smoke:
        global SMOKE, HIDDEN, HQ, HKV, D, FFN_DIM, SCALE
        SMOKE, HIDDEN, HQ, HKV, D, FFN_DIM = True, 64, 4, 2, 16, 128
        SCALE = D**-0.5
        device = torch.device("cpu")
        from torch.nn.attention.flex_attention import flex_attention

        bs._COMPILED["flex"] = flex_attention  # eager on the CPU
        torch.cuda.get_device_name = lambda: "cpu (smoke)"  # type: ignore[assignment]
    torch._dynamo.config.cache_size_limit = max(64, torch._dynamo.config.cache_size_limit)
    try:
        import triton

        triton_version = triton.__version__
    except Exception:  # noqa: BLE001
        triton_version = "none"
    env = {
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton_version,
        "python": platform.python_version(),
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
    }
    RESULTS["env"] = env
    print("== environment ==")
    for k_, v_ in env.items():
        print(f"  {k_}: {v_}")
    check_correctness(device)
    print(f"  [{time.time() - start:.0f} s]", flush=True)
    for n in [int(s) for s in args.sizes.split(",")]:
        if time.time() - start > args.budget_s:
            RESULTS["skipped"].append({"video_tokens": n, "why": f"time budget {args.budget_s:.0f} s used"})
            print(f"== {n} video tokens: SKIPPED (time budget) ==", flush=True)
            continue
        print(f"== {n} video tokens ==", flush=True)
        try:
            RESULTS["sizes"][str(n)] = bench_size(n, args, device)
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            RESULTS["skipped"].append({"video_tokens": n, "why": f"{type(e).__name__}: {str(e)[:300]}"})
        torch.cuda.empty_cache()
        save()
        print(f"  [{time.time() - start:.0f} s]", flush=True)
    save()
    print_table()


def print_table() -> None:
    print("\n== summary (ms per layer, one run; TTFT = 28 x one layer, an estimate) ==")
    if "kernel_options_chosen" in RESULTS:
        print(f"flex kernel options: {RESULTS['kernel_options_chosen']}")
    print("| video tokens | setting | attn ms | attn density | kernel frac of ideal | layer ms | TTFT est s | speedup | FLOPs cut | selection share | peak extra MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for n, r in RESULTS["sizes"].items():
        d = r["dense_attention"][r["dense_best"]]
        c = r["combos"]["dense"]
        print(f"| {n} | dense SDPA ({r['dense_best']}) | {d['ms']:.1f} | 1.00 | - | {c['layer_ms']:.1f} | {c['ttft_est_s']:.2f} | 1.00 | 0% | - | {c['peak_extra_mib']:.0f} |")
        for name, e in r["combos"].items():
            if name == "dense":
                continue
            frac = "-" if e["kernel_frac_of_ideal"] is None else f"{e['kernel_frac_of_ideal']:.2f}"
            print(f"| {n} | {name} | {e['attn_ms']:.1f} | {e['density']:.2f} | {frac} | {e['layer_ms']:.1f} | {e['ttft_est_s']:.2f} | {e['speedup']:.2f} | {100 * e['flops_reduction']:.0f}% | {100 * e['selection_share']:.1f}% | {e['peak_extra_mib']:.0f} |")
    for s in RESULTS["skipped"]:
        print(f"skipped: {s}")


if __name__ == "__main__":
    main()
