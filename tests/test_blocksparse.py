"""Block-sparse AdaS-Attn fast path and block-gathered AdaS-FFN against the references (CPU).

The GPU kernel itself (flex_attention, the Triton selection kernel on CUDA) is checked by
benchmarks/bench_prefill.py on the device; here the same permutation, block selection and block
mask are checked through the CPU path (a dense float32 computation of exactly that block mask), and
the Triton selection kernel through Triton's interpreter in a subprocess.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from adaspark_cli.attention import adas_attention_reference, allowed_keys, cube_mean_keys
from adaspark_cli.attention import blocksparse as bs
from adaspark_cli.cubes import VideoSpan, cube_layout
from adaspark_cli.ffn import adas_ffn_reference
from adaspark_cli.ffn import fast as ffn_fast

# (text before the first video, [(start, grid)], cube, block, past_cut)
LAYOUTS = [
    pytest.param([(3, (4, 5, 6))], (2, 2, 2), 8, 0, id="odd-grid-partial-cubes"),
    pytest.param([(2, (3, 4, 4)), (60, (2, 3, 3))], (1, 2, 2), 4, 0, id="two-videos"),
    pytest.param([(4, (4, 4, 4))], (2, 2, 2), 8, 10, id="past-cache"),
    pytest.param([(5, (5, 3, 7))], (2, 4, 4), 16, 0, id="partial-cubes-block16"),
    pytest.param([(1, (3, 2, 3))], (2, 2, 2), 4, 0, id="cube-spans-two-blocks"),
]


def make(spans, cube, tail=5, hq=4, hkv=2, d=8, past=0, seed=0):
    torch.manual_seed(seed)
    spans = [VideoSpan(s, g) for s, g in spans]
    seq = max(s.end for s in spans) + tail
    layout = cube_layout(spans, seq, cube)
    q = torch.randn(hq, seq - past, d) * 2
    k = torch.randn(hkv, seq, d) * 2
    v = torch.randn(hkv, seq, d)
    return layout, q, k, v


@pytest.mark.parametrize("spans,cube,block,past", LAYOUTS)
def test_permutation_round_trip_and_blocks(spans, cube, block, past):
    layout, q, k, v = make(spans, cube, past=past)
    lq, lk = q.shape[1], k.shape[1]
    plan = bs.build_plan(layout, lq, lk, block=block)
    for groups, lo in ((plan.q, past), (plan.k, 0)):
        idx = groups.index
        assert idx.numel() % block == 0
        valid = idx[idx >= 0]
        assert sorted(valid.tolist()) == list(range(lo, lk))  # every token exactly once
        blocks = idx.view(-1, block)
        for row, c in zip(blocks, groups.block_cube.tolist()):
            toks = row[row >= 0]
            assert toks.numel() > 0
            cubes = layout.cube_of_token[toks]
            assert (cubes == c).all()  # one cube (or text) per block
            assert (toks.diff() > 0).all()  # original order inside a block
            assert (row[toks.numel():] < 0).all()  # padding only at the end
    qp, kp, vp = bs.permute_qkv(plan, q, k, v)
    assert torch.equal(bs.unpermute(plan, qp), q.transpose(0, 1))
    # keys: the permuted rows are the keys at their original positions
    kv_valid = plan.kv_pos < bs.PAD_POS
    assert torch.equal(kp[:, kv_valid], k[:, plan.kv_pos[kv_valid].long()])


@pytest.mark.parametrize("spans,cube,block,past", LAYOUTS)
def test_p_one_equals_reference(spans, cube, block, past):
    layout, q, k, v = make(spans, cube, past=past, seed=1)
    scale = 1 / math.sqrt(q.shape[-1])
    want = adas_attention_reference(q, k, v, layout, top_p=1.0, scaling=scale)
    got = bs.adas_attention_blocksparse(q, k, v, layout, top_p=1.0, scaling=scale, block=block)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spans,cube,block,past", LAYOUTS)
@pytest.mark.parametrize("top_p", [0.3, 0.8])
def test_block_selection_is_the_union_of_per_token_sets(spans, cube, block, past, top_p):
    layout, q, k, v = make(spans, cube, past=past, seed=2)
    scale = 1 / math.sqrt(q.shape[-1])
    plan = bs.build_plan(layout, q.shape[1], k.shape[1], block=block)
    qp, kp, _ = bs.permute_qkv(plan, q, k, v)
    mk = bs.mean_keys_from_blocks(plan, kp)
    torch.testing.assert_close(mk, cube_mean_keys(k, layout))
    sel = bs.select_blocks(plan, qp, mk, top_p, scale, method="exact")
    per_tok = bs.per_token_selection(plan, qp, mk, top_p, scale)  # (Hkv, NS*block, C)
    per_tok = per_tok.view(per_tok.shape[0], -1, block, per_tok.shape[-1])
    assert torch.equal(per_tok.any(2), sel)
    assert not (per_tok & ~sel[:, :, None]).any()  # every token's set is inside its block's set
    # and the per-token sets are the reference's own (nucleus over cubes of earlier slabs)
    if plan.sel_blocks.numel():
        assert sel.any()


@pytest.mark.parametrize("spans,cube,block,past", LAYOUTS)
@pytest.mark.parametrize("top_p", [0.3, 0.8])
def test_block_sparse_output_is_attention_over_the_block_sets(spans, cube, block, past, top_p):
    """p < 1: each video query attends text keys, its own slab, and its BLOCK's union of cubes,
    causally in original positions: checked against a per-token brute-force mask."""
    layout, q, k, v = make(spans, cube, past=past, seed=3)
    scale = 1 / math.sqrt(q.shape[-1])
    info: dict = {}
    got = bs.adas_attention_blocksparse(q, k, v, layout, top_p=top_p, scaling=scale, block=block, info=info)
    plan, sel = info["plan"], info["selection"]
    hkv, lk = k.shape[0], k.shape[1]
    lq = q.shape[1]
    chosen = torch.zeros(hkv, lq, layout.num_cubes, dtype=torch.bool)
    row_of = plan.q_unperm // block  # query block of each query token
    for j, blk in enumerate(plan.sel_blocks.tolist()):
        toks = (row_of == blk).nonzero().squeeze(1)
        chosen[:, toks] = sel[:, j][:, None]
    pos = torch.arange(lk - lq, lk)
    mask = allowed_keys(pos, layout, lk, chosen)  # the reference's mask builder with block sets
    group = q.shape[0] // hkv
    scores = torch.einsum("kgqd,kld->kgql", q.reshape(hkv, group, lq, -1), k) * scale
    w = torch.softmax(scores.masked_fill(~mask[:, None], float("-inf")), -1)
    want = torch.einsum("kgql,kld->qkgd", w, v).reshape(lq, q.shape[0], -1)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_block_mask_dense_view_matches_blocks():
    layout, q, k, v = make([(3, (4, 5, 6))], (2, 2, 2), seed=4)
    b = 8
    plan = bs.build_plan(layout, q.shape[1], k.shape[1], block=b)
    qp, kp, _ = bs.permute_qkv(plan, q, k, v)
    sel = bs.select_blocks(plan, qp, bs.mean_keys_from_blocks(plan, kp), 0.5, 0.35, method="exact")
    full, partial = bs.block_structure(plan, sel, k.shape[0])
    assert not (full & partial).any()
    dense = bs.dense_mask(plan, full, partial)  # (Hkv, Lqp, Lkp)
    hkv, nqb, nkb = full.shape
    cells = dense.view(hkv, nqb, b, nkb, b).permute(0, 1, 3, 2, 4)  # (Hkv, NQB, NKB, b, b)
    q_valid = (plan.q_pos >= 0).view(-1, b)
    k_valid = (plan.kv_pos < bs.PAD_POS).view(-1, b)
    pair_valid = q_valid[:, None, :, None] & k_valid[None, :, None, :]  # (NQB, NKB, b, b)
    assert (cells | ~pair_valid[None]).all(-1).all(-1)[full].all()  # full: every valid pair allowed
    assert not cells[~(full | partial)].any()  # unlisted blocks: nothing
    assert not dense[:, :, ~(plan.kv_pos < bs.PAD_POS)].any()  # padded keys: never
    assert not full[:, :, ~k_valid.all(1)].any()  # blocks with padded keys are never full


def test_info_stats_helpers():
    layout, q, k, v = make([(3, (4, 4, 4))], (2, 2, 2), seed=5)
    info: dict = {}
    bs.adas_attention_blocksparse(q, k, v, layout, top_p=1.0, scaling=0.3, block=8, info=info)
    pairs, causal = bs.attended_pairs(info["plan"], info["full"], info["partial"])
    assert pairs == causal == k.shape[0] * q.shape[1] * (q.shape[1] + 1) // 2
    bs.adas_attention_blocksparse(q, k, v, layout, top_p=0.2, scaling=0.3, block=8, info=info)
    sparse_pairs, _ = bs.attended_pairs(info["plan"], info["full"], info["partial"])
    assert sparse_pairs < pairs


def make_ffn(d, seed=0):
    g = torch.Generator().manual_seed(seed)
    w1, w2 = torch.randn(d, 3 * d, generator=g) / d**0.5, torch.randn(3 * d, d, generator=g) / (3 * d) ** 0.5
    return lambda x: torch.nn.functional.silu(x @ w1) @ w2


@pytest.mark.parametrize("top_p", [0.1, 0.5, 0.9, 1.0])
@pytest.mark.parametrize(
    "spans,cube,block",
    [([(3, (4, 5, 6))], (2, 2, 2), 8), ([(2, (3, 4, 4)), (60, (2, 3, 3))], (1, 2, 2), 4)],
    ids=["partial-cubes", "two-videos"],
)
def test_ffn_blocks_matches_reference(spans, cube, block, top_p):
    spans_ = [VideoSpan(s, g) for s, g in spans]
    seq = max(s.end for s in spans_) + 4
    layout = cube_layout(spans_, seq, cube)
    torch.manual_seed(6)
    x = torch.randn(seq, 16) * torch.rand(seq, 1) * 3
    ffn = make_ffn(16)
    want, keep_want = adas_ffn_reference(ffn, x, layout.cube_of_token, layout.num_cubes, top_p)
    got = ffn_fast.adas_ffn_blocks(ffn, x, layout, top_p, block=block)
    assert got is not None
    out, keep = got
    assert torch.equal(keep, keep_want)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    auto_out, _ = ffn_fast.adas_ffn_auto(ffn, x, layout, layout.cube_of_token, top_p)
    torch.testing.assert_close(auto_out, want, rtol=1e-5, atol=1e-5)


def test_ffn_blocks_declines_big_cubes_and_partial_calls():
    layout = cube_layout([VideoSpan(1, (3, 2, 3))], 24, (2, 2, 2))  # 8-token cubes
    x = torch.randn(24, 8)
    ffn = make_ffn(8)
    assert ffn_fast.adas_ffn_blocks(ffn, x, layout, 0.5, block=4) is None  # cube spans two blocks
    assert ffn_fast.adas_ffn_blocks(ffn, x[:10], layout, 0.5, block=8) is None  # not the whole sequence
    want, _ = adas_ffn_reference(ffn, x, layout.cube_of_token, layout.num_cubes, 0.5)
    got, _ = ffn_fast.adas_ffn_auto(ffn, x, layout, layout.cube_of_token, 0.5)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


TRITON_CHECK = textwrap.dedent(
    """
    import torch
    from adaspark_cli.cubes import VideoSpan, cube_layout
    from adaspark_cli.attention import blocksparse as bs
    torch.manual_seed(0)
    spans = [VideoSpan(3, (6, 6, 6)), VideoSpan(230, (3, 4, 4))]
    layout = cube_layout(spans, spans[-1].end + 4, (2, 2, 2))
    L = layout.seq_len
    q, k = torch.randn(4, L, 16) * 3, torch.randn(2, L, 16) * 3
    plan = bs.build_plan(layout, L, L, block=8)
    qp = q.index_select(1, plan.q_gather)
    mk = bs.mean_keys_from_blocks(plan, k.index_select(1, plan.k_gather))
    # the kernel path scores in float16 (the exact path in float32): rounding may move a cube that
    # sits on the nucleus boundary, so allow 1% either way; with float32 scores it matches exactly
    for p in (0.3, 0.8):
        ex = bs.select_blocks(plan, qp, mk, p, 0.25, method="exact")
        tr = bs.select_blocks(plan, qp, mk, p, 0.25, method="triton")
        budget = max(2, int(ex.sum()) // 100)
        assert int((ex & ~tr).sum()) <= budget, "triton selection misses cubes of the exact union"
        assert int((tr & ~ex).sum()) <= budget, "triton selection adds cubes to the exact union"
    print("ok")
    """
)


def test_triton_selection_kernel_in_interpreter():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    run = subprocess.run([sys.executable, "-c", TRITON_CHECK], env=env, capture_output=True, text=True, timeout=120)
    if run.returncode != 0 and "interpret" in run.stderr.lower() and "not supported" in run.stderr.lower():
        pytest.skip("this Triton has no interpreter for these ops")
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().endswith("ok")
