"""Selection as data, the block plan, and every CPU-runnable attention implementation against references.

- The block plan: every token once, tiles of whole cubes of one slab, packing of small cubes.
- Selection: per-block sets are exactly the union of the reference's per-token sets (p < 1 and 1),
  on awkward shapes (partial cubes, two videos, a past cache, GQA / MHA / MQA, packed tiles).
- Attention: `attention_gathered` (the CPU fast path) against `attention_reference` on the same
  Selection; the reference with a per-block selection against a brute-force per-token mask; tile
  packing against the unpacked computation of the same attended cubes; p = 1 equals dense causal.
- The dense fallback's decision, the statistics counted from a Selection, the FFN's block path, and
  the Triton selection kernel through Triton's interpreter. FA4 and FlexAttention need a GPU:
  benchmarks/bench_prefill.py checks them there against the reference before timing.
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

from adaspark_cli.attention import allowed_keys, attention_reference, kernels
from adaspark_cli.attention.gathered import attention_gathered
from adaspark_cli.attention.reference import selected_cubes_of_queries
from adaspark_cli.cubes import VideoSpan, cube_layout
from adaspark_cli.cubes.plan import PAD_POS, build_plan, permute, unpermute
from adaspark_cli.ffn import adas_ffn_reference
from adaspark_cli.ffn import fast as ffn_fast
from adaspark_cli.selection import (
    Selection,
    attended_cubes,
    block_structure,
    select_per_block,
    select_per_token,
    union_per_block,
)
from adaspark_cli.stats.collect import LayerRecord

# ([(start, grid)], cube, block, past, (hq, hkv))
LAYOUTS = [
    pytest.param([(3, (4, 5, 6))], (2, 2, 2), 8, 0, (4, 2), id="odd-grid-partial-cubes-gqa"),
    pytest.param([(2, (3, 4, 4)), (60, (2, 3, 3))], (1, 2, 2), 4, 0, (3, 3), id="two-videos-mha"),
    pytest.param([(4, (4, 4, 4))], (2, 2, 2), 8, 10, (4, 1), id="past-cache-mqa"),
    pytest.param([(5, (5, 3, 7))], (2, 4, 4), 16, 0, (4, 2), id="partial-cubes-block16"),
    pytest.param([(1, (3, 2, 3))], (2, 2, 2), 4, 0, (2, 1), id="cube-spans-two-blocks"),
    pytest.param([(2, (4, 4, 6))], (1, 2, 2), 16, 0, (4, 2), id="packed-4-cubes-per-tile"),
    pytest.param([(3, (5, 3, 5)), (90, (2, 2, 3))], (1, 2, 2), 8, 7, (6, 2), id="packed-partial-two-videos-past"),
    # Qwen3-VL: one run per frame pair, 3 timestamp tokens between runs; cubes of 2 frame pairs
    pytest.param([(2, (4, 3, 4), (2, 17, 32, 47))], (2, 2, 2), 8, 0, (4, 2), id="frame-runs-timestamps"),
]
TOP_P = [0.2, 0.5, 0.9, 1.0]


def make(spans, cube, *, tail=5, hq=4, hkv=2, d=8, past=0, seed=0):
    torch.manual_seed(seed)
    spans = [VideoSpan(*span) for span in spans]
    seq = max(s.end for s in spans) + tail
    layout = cube_layout(spans, seq, cube)
    q = torch.randn(hq, seq - past, d) * 2
    k = torch.randn(hkv, seq, d) * 2
    v = torch.randn(hkv, seq, d)
    return layout, q, k, v


def masked_attention(q, k, v, mask, scale):
    """Plain float64 softmax attention under a (Hkv, Lq, Lk) key mask."""
    hkv, lq = mask.shape[0], q.shape[1]
    group = q.shape[0] // hkv
    scores = torch.einsum("kgqd,kld->kgql", q.double().reshape(hkv, group, lq, -1), k.double()) * scale
    w = torch.softmax(scores.masked_fill(~mask[:, None], float("-inf")), -1)
    return torch.einsum("kgql,kld->qkgd", w, v.double()).reshape(lq, q.shape[0], -1)


# ----------------------------------------------------------------------------------------------
# the block plan


@pytest.mark.parametrize("spans,cube,block,past,heads", LAYOUTS)
@pytest.mark.parametrize("pack", [True, False])
def test_plan_round_trip_and_tiles(spans, cube, block, past, heads, pack):
    layout, q, k, v = make(spans, cube, past=past, hq=heads[0], hkv=heads[1])
    lq, lk = q.shape[1], k.shape[1]
    plan = build_plan(layout, lq, lk, block=block, pack=pack)
    if not pack:
        assert not plan.packed and torch.equal(plan.tile_of_cube, torch.arange(layout.num_cubes))
    for groups, lo in ((plan.q, past), (plan.k, 0)):
        idx = groups.index
        assert idx.numel() % block == 0
        assert sorted(idx[idx >= 0].tolist()) == list(range(lo, lk))  # every token exactly once
        for row, tile in zip(idx.view(-1, block), groups.block_tile.tolist()):
            toks = row[row >= 0]
            assert toks.numel() > 0 and (row[toks.numel():] < 0).all()  # padding only at the end
            cubes = layout.cube_of_token[toks]
            if tile < 0:
                assert (cubes < 0).all() and (toks.diff() > 0).all()  # a text block, in order
                continue
            assert (plan.tile_of_cube[cubes] == tile).all()  # one tile's cubes only
            assert layout.slab_of_cube[cubes].unique().numel() == 1  # of one slab
            assert (cubes.diff() >= 0).all()  # cube by cube, each in original order
            same = cubes[1:] == cubes[:-1]
            assert (toks.diff()[same] > 0).all()
    qp, kp, _ = permute(plan, q, k, v)
    assert torch.equal(unpermute(plan, qp), q.transpose(0, 1))
    kv_valid = plan.kv_pos < PAD_POS
    assert torch.equal(kp[:, kv_valid], k[:, plan.kv_pos[kv_valid].long()])


def test_text_runs_share_blocks():
    # short text runs (Qwen3-VL's timestamps between frame pairs) fill blocks together, in position
    # order, instead of one padded block per run
    layout, *_ = make([(2, (4, 3, 4), (2, 17, 32, 47))], (2, 2, 2), tail=5)
    plan = build_plan(layout, layout.seq_len, layout.seq_len, block=8)
    text_blocks = plan.k.block_tile < 0
    n_text = int((layout.cube_of_token < 0).sum())  # 2 before, 3 x 3 between, 5 after
    assert int(text_blocks.sum()) == -(-n_text // 8)
    listed = plan.k.index.view(-1, 8)[text_blocks]
    assert sorted(listed[listed >= 0].tolist()) == (layout.cube_of_token < 0).nonzero().flatten().tolist()


def test_small_cubes_pack_into_full_tiles():
    layout = cube_layout([VideoSpan(0, (4, 8, 8))], 256, (2, 4, 4))  # 32-token cubes, 4 per 2-frame slab
    packed, unpacked = build_plan(layout, 256, 256, block=128), build_plan(layout, 256, 256, block=128, pack=False)
    assert packed.q.num_blocks == 2 and unpacked.q.num_blocks == 8  # 4x less padding work
    assert packed.num_tiles == 2 and packed.tile_of_cube.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]


# ----------------------------------------------------------------------------------------------
# selection


@pytest.mark.parametrize("spans,cube,block,past,heads", LAYOUTS)
@pytest.mark.parametrize("top_p", TOP_P)
def test_block_selection_is_the_union_of_the_reference_per_token_sets(spans, cube, block, past, heads, top_p):
    layout, q, k, v = make(spans, cube, past=past, hq=heads[0], hkv=heads[1], seed=2)
    scale = 1 / math.sqrt(q.shape[-1])
    plan = build_plan(layout, q.shape[1], k.shape[1], block=block)
    per_token = select_per_token(q, k, plan, top_p, scale)
    per_block = select_per_block(q, k, plan, top_p, scale, method="exact")
    assert per_block.per_block and not per_token.per_block
    # computed independently: the union over each tile's tokens of the per-token sets
    want = torch.zeros_like(per_block.cubes)
    block_of = plan.q_unperm // block
    for row, blk in enumerate(plan.sel_blocks.tolist()):
        toks = (block_of == blk).nonzero().squeeze(1)
        want[:, row] = per_token.cubes[:, toks].any(1)
    assert torch.equal(per_block.cubes, want)
    assert torch.equal(union_per_block(per_token, plan).cubes, want)
    if top_p < 1.0 and plan.sel_blocks.numel():
        assert per_block.cubes.sum() < per_block.cubes.numel()  # something was left out


def test_per_token_selection_is_the_nucleus_of_each_query():
    layout, q, k, v = make([(1, (4, 2, 2))], (1, 2, 2), tail=1, hq=2, hkv=1, d=4, seed=7)
    plan = build_plan(layout, q.shape[1], k.shape[1], block=4)
    sel = select_per_token(q, k, plan, 0.01, 0.5)  # p -> 0: the single most probable earlier cube
    slab = layout.slab_of_token
    assert torch.equal(sel.cubes[0].sum(-1), (slab.clamp(min=0) > 0).long() * (slab >= 0))
    assert not (sel.cubes[0] & (layout.slab_of_cube[None, :] >= slab[:, None])).any()  # earlier slabs only


# ----------------------------------------------------------------------------------------------
# attention implementations


def brute_force(query, key, value, layout, top_p, scaling):
    """AdaS-Attn one query token at a time: plain Python sets and a softmax over the allowed keys."""
    hq, lq, d = query.shape
    hkv, lk, _ = key.shape
    group = hq // hkv
    past = lk - lq
    cube_of, slab_of = layout.cube_of_token.tolist(), layout.slab_of_token.tolist()
    slab_of_cube = layout.slab_of_cube.tolist()
    means = [key[:, [i for i in range(lk) if cube_of[i] == c]].double().mean(dim=1) for c in range(layout.num_cubes)]
    out = torch.zeros(lq, hq, d, dtype=torch.float64)
    for qi in range(lq):
        p = past + qi
        for g in range(hkv):
            allowed = set(range(p + 1))
            if slab_of[p] >= 0:
                cands = [c for c in range(layout.num_cubes) if slab_of_cube[c] < slab_of[p]]
                chosen = set()
                if cands:
                    probs = torch.zeros(len(cands), dtype=torch.float64)
                    for h in range(g * group, (g + 1) * group):
                        logits = torch.stack([query[h, qi].double() @ means[c][g] * scaling for c in cands])
                        probs += torch.softmax(logits, 0) / group
                    mass = 0.0
                    for i in sorted(range(len(cands)), key=lambda i: -probs[i].item()):
                        if top_p < 1.0 and mass >= top_p:
                            break
                        chosen.add(cands[i])
                        mass += probs[i].item()
                allowed = {kk for kk in allowed if cube_of[kk] < 0 or slab_of[kk] == slab_of[p] or cube_of[kk] in chosen}
            keys = sorted(allowed)
            for h in range(g * group, (g + 1) * group):
                s = torch.stack([query[h, qi].double() @ key[g, kk].double() * scaling for kk in keys])
                out[qi, h] = (torch.softmax(s, 0)[:, None] * value[g, keys].double()).sum(0)
    return out


@pytest.mark.parametrize("spans,cube,block,past,heads", LAYOUTS[:4])
@pytest.mark.parametrize("top_p", TOP_P)
def test_reference_with_per_token_selection_is_the_method(spans, cube, block, past, heads, top_p):
    layout, q, k, v = make(spans, cube, past=past, hq=heads[0], hkv=heads[1], d=6, seed=3)
    scale = 1 / math.sqrt(q.shape[-1])
    plan = build_plan(layout, q.shape[1], k.shape[1], block=block)
    got = attention_reference(q, k, v, plan, select_per_token(q, k, plan, top_p, scale), scale)
    torch.testing.assert_close(got.double(), brute_force(q, k, v, layout, top_p, scale), rtol=1e-5, atol=1e-5)


def _per_token_mask(plan, selection, lq, lk):
    return allowed_keys(torch.arange(lk - lq, lk), plan.layout, lk, selected_cubes_of_queries(plan, selection, torch.arange(lq)))


@pytest.mark.parametrize("spans,cube,block,past,heads", LAYOUTS)
@pytest.mark.parametrize("top_p", TOP_P)
def test_gathered_and_reference_agree_on_a_block_selection(spans, cube, block, past, heads, top_p):
    layout, q, k, v = make(spans, cube, past=past, hq=heads[0], hkv=heads[1], seed=4)
    scale = 1 / math.sqrt(q.shape[-1])
    lq, lk = q.shape[1], k.shape[1]
    plan = build_plan(layout, lq, lk, block=block)
    sel = select_per_block(q, k, plan, top_p, scale, method="exact")
    want = masked_attention(q, k, v, _per_token_mask(plan, sel, lq, lk), scale)
    torch.testing.assert_close(attention_reference(q, k, v, plan, sel, scale).double(), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(attention_gathered(q, k, v, plan, sel, scale).double(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spans,cube,block,past,heads", LAYOUTS)
def test_gathered_on_random_selections(spans, cube, block, past, heads):
    """Any Selection, not only a top-p one: every implementation computes the same function of it."""
    layout, q, k, v = make(spans, cube, past=past, hq=heads[0], hkv=heads[1], seed=5)
    plan = build_plan(layout, q.shape[1], k.shape[1], block=block)
    cand = torch.arange(layout.num_cubes)[None, :] < plan.sel_cand[:, None]
    cubes = (torch.rand(heads[1], plan.sel_blocks.numel(), layout.num_cubes) < 0.4) & cand[None]
    sel = Selection(cubes, per_block=True, top_p=0.5)
    ref = attention_reference(q, k, v, plan, sel, 0.3)
    torch.testing.assert_close(attention_gathered(q, k, v, plan, sel, 0.3), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("top_p", [0.2, 0.5])
def test_packed_tiles_compute_the_unpacked_result_of_their_attended_cubes(top_p):
    layout, q, k, v = make([(3, (5, 4, 6))], (1, 2, 2), hq=4, hkv=2, seed=6)  # 4-token cubes, 4 per 16-tile
    lq, lk = q.shape[1], k.shape[1]
    packed = build_plan(layout, lq, lk, block=16)
    unpacked = build_plan(layout, lq, lk, block=16, pack=False)
    assert packed.packed and packed.q.num_blocks < unpacked.q.num_blocks
    sel = select_per_block(q, k, packed, top_p, 0.35, method="exact")
    widened = attended_cubes(sel, packed)
    assert (widened | ~sel.cubes).all() and widened.sum() >= sel.cubes.sum()  # a superset of the selection
    # the same attended cubes per query token, on the unpacked plan, by the reference
    per_token = Selection(selected_cubes_of_queries(packed, sel, torch.arange(lq)), per_block=False, top_p=top_p)
    want = attention_reference(q, k, v, unpacked, per_token, 0.35)
    torch.testing.assert_close(attention_gathered(q, k, v, packed, sel, 0.35), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spans,cube,block,past,heads", LAYOUTS)
def test_p_one_equals_dense_causal_attention(spans, cube, block, past, heads):
    layout, q, k, v = make(spans, cube, past=past, hq=heads[0], hkv=heads[1], seed=8)
    lq, lk = q.shape[1], k.shape[1]
    plan = build_plan(layout, lq, lk, block=block)
    causal = torch.ones(lq, lk, dtype=torch.bool).tril(lk - lq)[None].expand(heads[1], -1, -1)
    dense = masked_attention(q, k, v, causal, 0.3)
    for sel in (select_per_token(q, k, plan, 1.0, 0.3), select_per_block(q, k, plan, 1.0, 0.3)):
        for fn in (attention_reference, attention_gathered):
            torch.testing.assert_close(fn(q, k, v, plan, sel, 0.3).double(), dense, rtol=1e-5, atol=1e-5)


def test_block_structure_lists_exactly_what_the_mask_allows():
    layout, q, k, v = make([(3, (4, 5, 6))], (2, 2, 2), seed=9)
    b, lq, lk = 8, q.shape[1], k.shape[1]
    plan = build_plan(layout, lq, lk, block=b)
    sel = select_per_block(q, k, plan, 0.5, 0.35, method="exact")
    full, partial = block_structure(plan, sel)
    assert not (full & partial).any()
    mask = _per_token_mask(plan, sel, lq, lk)  # (Hkv, Lq, Lk) in sequence order
    qrow = plan.q_gather.view(-1, b)
    krow = plan.k_gather.view(-1, b)
    qv, kv = (plan.q_pos >= 0).view(-1, b), (plan.kv_pos < PAD_POS).view(-1, b)
    for h in range(full.shape[0]):
        for qb in range(full.shape[1]):
            for kb in range(full.shape[2]):
                cell = mask[h][qrow[qb]][:, krow[kb]] & qv[qb][:, None] & kv[kb][None, :]
                if full[h, qb, kb]:
                    assert cell[qv[qb]][:, kv[kb]].all()
                elif not partial[h, qb, kb]:
                    assert not cell.any()


# ----------------------------------------------------------------------------------------------
# dense fallback and statistics


def test_dense_fallback_decision(monkeypatch):
    layout, q, k, v = make([(3, (6, 4, 4))], (1, 2, 2), seed=10)
    plan = build_plan(layout, q.shape[1], k.shape[1], block=8)
    every = select_per_block(q, k, plan, 1.0, 0.3)
    sparse = select_per_block(q, k, plan, 0.05, 0.3)
    f_every, f_sparse = float(kernels.kept_block_fraction(plan, every)), float(kernels.kept_block_fraction(plan, sparse))
    assert f_every == pytest.approx(1.0) and f_sparse < 0.9
    cpu = torch.device("cpu")
    monkeypatch.setitem(kernels.DENSE_ABOVE, "cpu", (f_every + f_sparse) / 2)
    assert kernels.runs_dense(plan, every, cpu) and not kernels.runs_dense(plan, sparse, cpu)


def test_counts_from_a_selection():
    layout, q, k, v = make([(1, (4, 2, 2))], (1, 2, 2), tail=1, hq=2, hkv=1, d=4, seed=2)  # 4 cubes, one per slab
    plan = build_plan(layout, q.shape[1], k.shape[1], block=4)
    dense, sparse, per_block = LayerRecord(0), LayerRecord(0), LayerRecord(0)
    dense.add_attention(plan, None, 1)
    sparse.add_attention(plan, select_per_token(q, k, plan, 0.01, 0.5), 1)
    per_block.add_attention(plan, select_per_block(q, k, plan, 0.01, 0.5), 1)
    for rec in (dense, sparse, per_block):
        rec.settle()
        assert rec.attention.video_queries == 16 and rec.queries == 18
        assert rec.text_query_keys == 1 + 18  # the first and the last token are text
    a, s = dense.attention, sparse.attention
    assert a.cubes_total == 4 * (1 + 2 + 3 + 4) and a.cubes_attended == a.cubes_total
    assert a.attended_keys == a.causal_keys == sum(range(2, 18))
    # p -> 0 keeps one candidate cube (none in the first slab) plus the own slab
    assert s.cubes_attended == 4 * 1 + 4 * 2 + 4 * 2 + 4 * 2
    assert s.cubes_attended_max == 2 and s.cubes_attended_min == 1
    mask = _per_token_mask(plan, select_per_token(q, k, plan, 0.01, 0.5), q.shape[1], k.shape[1])
    video = layout.slab_of_token >= 0
    assert s.attended_keys == int(mask[:, video].sum())
    assert per_block.attention.attended_keys >= s.attended_keys  # the union attends at least as much


# ----------------------------------------------------------------------------------------------
# FFN over the unpacked plan


def make_ffn(d, seed=0):
    g = torch.Generator().manual_seed(seed)
    w1, w2 = torch.randn(d, 3 * d, generator=g) / d**0.5, torch.randn(3 * d, d, generator=g) / (3 * d) ** 0.5
    return lambda x: torch.nn.functional.silu(x @ w1) @ w2


@pytest.mark.parametrize("top_p", [0.1, 0.5, 0.9, 1.0])
@pytest.mark.parametrize(
    "spans,cube,block",
    [([(3, (4, 5, 6))], (2, 2, 2), 8), ([(2, (3, 4, 4)), (60, (2, 3, 3))], (1, 2, 2), 4), ([(2, (4, 4, 6))], (1, 2, 2), 16)],
    ids=["partial-cubes", "two-videos", "cubes-smaller-than-a-tile"],
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


# ----------------------------------------------------------------------------------------------
# the fused CUDA selection kernel, through Triton's interpreter

TRITON_CHECK = textwrap.dedent(
    """
    import torch
    from adaspark_cli.cubes import VideoSpan, cube_layout
    from adaspark_cli.cubes.plan import build_plan
    from adaspark_cli.selection import select_per_block
    torch.manual_seed(0)
    spans = [VideoSpan(3, (6, 6, 6)), VideoSpan(230, (3, 4, 4))]
    layout = cube_layout(spans, spans[-1].end + 4, (2, 2, 2))
    L = layout.seq_len
    plan = build_plan(layout, L, L, block=8)
    # GQA with a group of 2, a group of 3 (not a power of two), MHA; token-major query memory, as the
    # projections leave it (the rows' gather then runs as a kernel)
    for hq, hkv, p in ((4, 2, 0.3), (4, 2, 0.8), (3, 1, 0.5), (2, 2, 0.9)):
        q, k = torch.randn(L, hq, 16).transpose(0, 1) * 3, torch.randn(hkv, L, 16) * 3
        ex = select_per_block(q, k, plan, p, 0.25, method="exact").cubes
        tr = select_per_block(q, k, plan, p, 0.25, method="triton").cubes
        # the kernel path scores in float16 (the exact path in float32): rounding may move a cube that
        # sits on the nucleus boundary, so allow 1% either way; with float32 scores it matches exactly
        budget = max(2, int(ex.sum()) // 100)
        assert int((ex & ~tr).sum()) <= budget, "triton selection misses cubes of the exact union"
        assert int((tr & ~ex).sum()) <= budget, "triton selection adds cubes to the exact union"
        every = int(select_per_block(q, k, plan, 1.0, 0.25, method="exact").cubes.sum())  # all candidates
        assert 0.2 * every < int(ex.sum()) < every, "a check that selects nothing or everything tests nothing"
    print("ok")
    """
)


def run_in_triton_interpreter(script: str, timeout: int = 300) -> None:
    """Run `script` in a fresh interpreter with TRITON_INTERPRET=1 (Triton kernels on the CPU); it prints ok."""
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=timeout)
    if run.returncode != 0 and "interpret" in run.stderr.lower() and "not supported" in run.stderr.lower():
        pytest.skip("this Triton has no interpreter for these ops")
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().endswith("ok")


def test_triton_selection_kernel_in_interpreter():
    run_in_triton_interpreter(TRITON_CHECK)


ROWS_CHECK = textwrap.dedent(
    """
    import torch
    from adaspark_cli.selection.triton_rows import ROW_BLOCK, gather_rows_fp16, gather_rows_fp16_reference
    torch.manual_seed(0)
    # rows narrower and wider than one step, a strided row view, repeated and unordered indices
    for shape in [(50, 3, 5), (40, 2, ROW_BLOCK // 2 + 3)]:
        src = torch.randn(*shape, dtype=torch.bfloat16)
        rows = torch.tensor([7, 0, 49 % shape[0], 7, 3])
        for view in (src, torch.randn(shape[0], 2 * shape[1], shape[2], dtype=torch.bfloat16)[:, : shape[1]]):
            got = gather_rows_fp16(view, rows)
            assert got.dtype == torch.float16 and got.shape == (5, *shape[1:])
            assert torch.equal(got, gather_rows_fp16_reference(view, rows))
    # a head-major tensor's token view cannot be read row by row: torch's gather, same result
    head_major, rows = torch.randn(3, 20, 4).transpose(0, 1), torch.tensor([1, 5])
    assert torch.equal(gather_rows_fp16(head_major, rows), gather_rows_fp16_reference(head_major, rows))
    print("ok")
    """
)


def test_row_gather_kernel_in_interpreter():
    run_in_triton_interpreter(ROWS_CHECK)


# ----------------------------------------------------------------------------------------------
# decode steps and question prefills over a long (preallocated, masked) cache


@pytest.mark.parametrize("hq,hkv", [(4, 2), (3, 3), (4, 1)], ids=["gqa", "mha", "mqa"])
@pytest.mark.parametrize("n", [1, 5])
@pytest.mark.parametrize("masked", [False, True])
def test_decode_reference_matches_sdpa(hq, hkv, n, masked):
    from adaspark_cli.attention.decode import decode_attention_reference

    torch.manual_seed(5)
    length, d = 50, 8
    q, k, v = torch.randn(hq, n, d), torch.randn(hkv, length, d), torch.randn(hkv, length, d)
    causal = torch.arange(length)[None, :] <= torch.arange(length - n, length)[:, None]
    mask = causal & (torch.rand(n, length) > 0.3) if masked else None
    if mask is not None:
        mask[:, 0] = True  # every query keeps at least a key
    want = torch.nn.functional.scaled_dot_product_attention(
        q[None], k.repeat_interleave(hq // hkv, 0)[None], v.repeat_interleave(hq // hkv, 0)[None],
        attn_mask=(causal if mask is None else mask)[None, None], scale=0.3,
    )[0].transpose(0, 1)
    torch.testing.assert_close(decode_attention_reference(q, k, v, mask, 0.3), want, rtol=1e-5, atol=1e-5)


DECODE_CHECK = textwrap.dedent(
    """
    import torch
    from adaspark_cli.attention import decode as dec
    torch.manual_seed(0)
    # (Hq, Hkv, keys, head dim): GQA, MHA, MQA, a head dim that is not a power of two, lengths that are
    # not multiples of the kernel's block, and enough keys for several chunks; one query (a decode step)
    # and several (a question's prefill: row tiles of the group's heads x queries, partly filled)
    for hq, hkv, length, d in [(4, 2, 40, 8), (3, 3, 130, 16), (4, 1, 257, 32), (6, 2, 700, 20)]:
        for n in (1, 3, 11):
            q, k, v = torch.randn(hq, n, d), torch.randn(hkv, length, d), torch.randn(hkv, length, d)
            filled = length // 5 + n  # a filled prefix: later chunks are wholly masked
            causal = dec.causal_mask(n, filled, q.device)
            prefix = torch.zeros(n, length, dtype=torch.bool)
            prefix[:, :filled] = causal
            holes = torch.rand(n, length) > 0.5
            holes[:, 0] = True
            for mask in (None, prefix, holes, prefix[-1:].expand(n, length)):
                got = dec.decode_attention(q, k, v, mask, 0.3)
                want = dec.decode_attention_reference(q, k, v, mask, 0.3)
                assert got.shape == want.shape == (n, hq, d), got.shape
                err = (got - want).abs().max().item()
                assert err < 1e-4, (hq, hkv, length, d, n, err)
    # a non-contiguous cache view (the filled part of a bigger buffer) and a strided query are read through
    # their strides
    buf = torch.randn(2, 300, 8)
    q = torch.randn(5, 4, 8).transpose(0, 1)
    got = dec.decode_attention(q, buf[:, :90], buf[:, :90] * 2, None, 0.5)
    assert (got - dec.decode_attention_reference(q, buf[:, :90], buf[:, :90] * 2, None, 0.5)).abs().max() < 1e-4
    # more rows than one program's tile (several row tiles per chunk)
    dec.LAUNCH["prefill_rows"], rows = 16, dec.LAUNCH["prefill_rows"]
    q, k, v = torch.randn(8, 9, 16), torch.randn(2, 200, 16), torch.randn(2, 200, 16)
    err = (dec.decode_attention(q, k, v, None, 0.3) - dec.decode_attention_reference(q, k, v, None, 0.3)).abs().max()
    dec.LAUNCH["prefill_rows"] = rows
    assert err < 1e-4, err
    print("ok")
    """
)


def test_decode_kernel_in_interpreter():
    run_in_triton_interpreter(DECODE_CHECK)
