"""The selection step of AdaS-Attn: which earlier cubes each video query attends (method.md section 2).

One `Selection` per layer and forward call, computed once, outside every attention kernel, and passed
to whichever kernel runs; statistics are counted from it too (`stats.collect`).

For a video query q in time slab s the candidates are the cubes of earlier slabs; P is the mean over
the KV group's query heads of softmax_j(q . kbar_j * scale) over the candidates (kbar: cube mean keys
after RoPE), and the selection is the nucleus (top-p) of P. Text keys and every key of q's own slab
are always attended (not part of the selection), and attention is causal in original order.

Two granularities, one type:
  - per token (`select_per_token`): the reference, exactly the method;
  - per block (`select_per_block`): one set per query tile of the block plan, the union of its tokens'
    sets (a superset, method.md). Its exact form sorts in float32 like the reference; on CUDA a fused
    Triton kernel (`triton_union.py`) gives the same sets up to float16 rounding at the boundary.
A packed plan (several small cubes per tile) attends whole key tiles: `attended_tiles` is what the
kernels compute, a superset again of the selected cubes.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from ..cubes.plan import BlockPlan
from .scoring import cube_mean_keys, cube_probabilities, nucleus_mask
from .triton_rows import gather_rows_fp16
from .triton_union import launch_union, triton_available

# Scores of one chunk hold Hq x rows x candidate cubes values: 2**24 floats (64 MB in float32) for the
# per-token reference and the exact per-block path (the CPU's: its float32 sort makes several copies);
# the fused CUDA path uses 2**28 (512 MB in float16), since fewer, larger GEMMs pay there.
TOKEN_SCORE_BUDGET = 1 << 24
BLOCK_SCORE_BUDGET = {"exact": 1 << 24, "triton": 1 << 28}
_ALIGN = 64  # candidate columns are padded to this, so that the float16 GEMM output rows stay aligned
METHODS = ("auto", "exact", "triton")


@dataclass(frozen=True)
class Selection:
    """Cubes chosen for each query row, beyond the always-attended keys.

    cubes: (Hkv, R, C) bool. per_block: rows are the plan's selectable query blocks (`plan.sel_blocks`);
    otherwise rows are the query tokens [0, Lq) of the call (rows without candidates all False), and a
    batch of sequences (only the per-token reference's, for training) has cubes (B, Hkv, R, C).
    """

    cubes: torch.Tensor
    per_block: bool
    top_p: float
    # (Hkv, NQB, NKB) bool full and partial key blocks per query block (`block_structure`), when known
    full: torch.Tensor | None = None
    partial: torch.Tensor | None = None

    @property
    def kv_heads(self) -> int:
        return int(self.cubes.shape[-3])

    def __repr__(self) -> str:  # tensors left out: tables and logs label themselves with this
        kind = "block" if self.per_block else "token"
        h, r, c = self.cubes.shape[-3:]
        return f"Selection(per_{kind}, top_p={self.top_p}, kv_heads={h}, rows={r}, cubes={c})"


def select_per_token(query: torch.Tensor, key: torch.Tensor, plan: BlockPlan, top_p: float, scaling: float) -> Selection:
    """The reference selection. query: (Hq, Lq, D) for positions [Lk - Lq, Lk); key: (Hkv, Lk, D).

    A leading batch dim on both (sequences sharing the plan's layout: the training fine-tune's batches)
    gives cubes of (B, Hkv, Lq, C), each sequence's own selection."""
    *lead, hq, lq, _ = query.shape
    layout = plan.layout.to(query.device) if plan.layout.cube_of_token.device != query.device else plan.layout
    mean_keys = cube_mean_keys(key, layout)  # (..., Hkv, C, D)
    hkv, c = mean_keys.shape[-3:-1]
    out = torch.zeros(*lead, hkv, lq, c, dtype=torch.bool, device=query.device)
    chunk = max(1, TOKEN_SCORE_BUDGET // max(1, math.prod(lead) * hq * max(c, 1)))
    for start in range(0, lq, chunk):
        pos = torch.arange(plan.past + start, plan.past + min(lq, start + chunk), device=query.device)
        q_slab = layout.slab_of_token[pos]
        candidates = (layout.slab_of_cube[None, :] < q_slab[:, None]) & (q_slab >= 0)[:, None]  # (n, C)
        probs = cube_probabilities(query[..., pos - plan.past, :], mean_keys, candidates, scaling)
        out[..., pos - plan.past, :] = nucleus_mask(probs, top_p, candidates.expand(probs.shape))
    return Selection(out, per_block=False, top_p=top_p)


def select_per_block(
    query: torch.Tensor, key: torch.Tensor, plan: BlockPlan, top_p: float, scaling: float, *, method: str = "auto",
) -> Selection:
    """Per query tile of the plan, the union of its tokens' nucleus sets.

    query: (Hq, Lq, D); key: (Hkv, Lk, D), in sequence order.
    method: "exact" (float32, sort: as the reference), "triton" (the fused float16 CUDA kernel), "auto"
    (triton on CUDA when available, else exact).
    """
    if method not in METHODS:
        raise ValueError(f"unknown selection method {method!r}; use one of {METHODS}")
    hkv, c = key.shape[0], plan.num_cubes
    ns = plan.sel_blocks.numel()
    device = query.device
    if ns == 0 or top_p >= 1.0:
        every = torch.arange(c, device=device)[None, :] < plan.sel_cand[:, None]
        return with_blocks(Selection(every[None].expand(hkv, -1, -1).clone(), per_block=True, top_p=top_p), plan)
    mean_keys = plan_mean_keys(plan, key)
    if method == "auto":
        method = "triton" if device.type == "cuda" and triton_available() else "exact"
    if method == "triton":
        cubes = _select_triton(plan, query, mean_keys, top_p, scaling)
    else:
        cubes = _select_exact(plan, query.index_select(1, plan.q_gather), mean_keys, top_p, scaling)
    return with_blocks(Selection(cubes, per_block=True, top_p=top_p), plan)


def plan_mean_keys(plan: BlockPlan, key: torch.Tensor) -> torch.Tensor:
    """`cube_mean_keys` for the plan's keys, from indices built once per plan (no host sync per layer:
    boolean indexing and bincount on the device would each wait for the GPU). Returns (Hkv, C, D) float32."""
    if "mean_keys" not in plan.cache:
        cube = plan.layout.cube_of_token[: plan.lk]
        video = (cube >= 0).nonzero().squeeze(1)
        counts = torch.bincount(cube[video], minlength=plan.num_cubes).clamp(min=1).to(torch.float32)
        plan.cache["mean_keys"] = tuple(t.to(key.device) for t in (video, cube[video], counts))
    video, cubes, counts = plan.cache["mean_keys"]
    sums = torch.zeros(key.shape[0], plan.num_cubes, key.shape[2], dtype=torch.float32, device=key.device)
    sums.index_add_(1, cubes, key.index_select(1, video).float())
    return sums / counts[None, :, None]


def union_per_block(selection: Selection, plan: BlockPlan) -> Selection:
    """A per-token selection folded to the plan's query tiles (the union over each tile's tokens)."""
    if selection.per_block:
        return selection
    hkv, _, c = selection.cubes.shape
    rows = plan.q_gather.view(-1, plan.block)[plan.sel_blocks]  # (NS, B) query token of each tile row
    valid = (plan.q_pos.view(-1, plan.block)[plan.sel_blocks] >= 0)
    picked = selection.cubes[:, rows.flatten()].view(hkv, rows.shape[0], plan.block, c)
    return Selection((picked & valid[None, :, :, None]).any(dim=2), per_block=True, top_p=selection.top_p)


def attended_tiles(selection: Selection, plan: BlockPlan) -> torch.Tensor:
    """(Hkv, NS, T) bool: the key tiles a per-block selection makes the kernels attend (a tile holding
    any selected cube; the same as the cubes when nothing is packed)."""
    if not plan.packed:
        return selection.cubes
    onehot = torch.zeros(plan.num_cubes, plan.num_tiles, device=selection.cubes.device)
    onehot[torch.arange(plan.num_cubes, device=onehot.device), plan.tile_of_cube] = 1.0
    return (selection.cubes.float() @ onehot) > 0


def attended_cubes(selection: Selection, plan: BlockPlan) -> torch.Tensor:
    """(Hkv, R, C) bool: every cube whose keys the kernels attend for the selection (the selected cubes
    widened to whole tiles when the plan packs cubes). Candidates only: never an own-slab cube."""
    if not selection.per_block or not plan.packed:
        return selection.cubes
    cand = torch.arange(plan.num_cubes, device=selection.cubes.device)[None, :] < plan.sel_cand[:, None]
    return attended_tiles(selection, plan)[:, :, plan.tile_of_cube] & cand[None]


def with_blocks(selection: Selection, plan: BlockPlan) -> Selection:
    """The selection with its block structure filled in (computed once, read by kernels and statistics)."""
    if selection.full is not None:
        return selection
    full, partial = block_structure(plan, selection)
    return dataclasses.replace(selection, full=full, partial=partial)


def block_structure(plan: BlockPlan, selection: Selection) -> tuple[torch.Tensor, torch.Tensor]:
    """(Hkv, NQB, NKB) bool full and partial (causal-masked) key blocks of each query block."""
    if selection.full is not None and selection.partial is not None:
        return selection.full, selection.partial
    if not selection.per_block:
        selection = union_per_block(selection, plan)
    hkv = selection.kv_heads
    nqb, nkb = plan.always_full.shape
    chosen = torch.zeros(hkv, nqb, nkb, dtype=torch.bool, device=selection.cubes.device)
    if plan.sel_blocks.numel():
        tiles = attended_tiles(selection, plan)
        chosen[:, plan.sel_blocks] = tiles[:, :, plan.k_block_tile] & plan.cand_blocks[plan.sel_blocks][None]
    k_pad = plan.k.block_has_pad[None, None, :]
    full = plan.always_full[None] | (chosen & ~k_pad)
    partial = plan.always_partial[None] | (chosen & k_pad)
    return full, partial


# ----------------------------------------------------------------------------------------------
# per-block selection: exact and fused


def _selection_chunks(plan: BlockPlan, hq: int, budget: int) -> list[tuple[int, int, int]]:
    """(start, end, candidate cubes) over plan.sel_blocks; candidates grow along the blocks, so a chunk
    scores only the candidates its last block has."""
    chunks = []
    cands = plan.sel_cand_host
    i = 0
    while i < len(cands):
        j = i + 1
        while j < len(cands) and (j + 1 - i) * plan.block * hq * cands[j] <= budget:
            j += 1
        chunks.append((i, j, max(cands[i:j])))
        i = j
    return chunks


def _select_exact(plan: BlockPlan, q_perm: torch.Tensor, mean_keys: torch.Tensor, top_p: float, scaling: float) -> torch.Tensor:
    hq = q_perm.shape[0]
    hkv, c, _ = mean_keys.shape
    b = plan.block
    device = q_perm.device
    sel = torch.zeros(hkv, plan.sel_blocks.numel(), c, dtype=torch.bool, device=device)
    ar = torch.arange(c, device=device)
    q_valid = (plan.q_pos >= 0).view(-1, b)
    for s0, s1, cc in _selection_chunks(plan, hq, BLOCK_SCORE_BUDGET["exact"]):
        blocks = plan.sel_blocks[s0:s1]
        nb = s1 - s0
        tok = (blocks[:, None] * b + torch.arange(b, device=device)[None, :]).flatten()
        q = q_perm.index_select(1, tok)
        cand_tok = ar[None, :cc] < plan.sel_cand[s0:s1].repeat_interleave(b)[:, None]  # (n, cc)
        probs = cube_probabilities(q, mean_keys[:, :cc], cand_tok, scaling)
        keep = nucleus_mask(probs, top_p, cand_tok[None].expand(hkv, -1, -1))
        keep &= q_valid[blocks].flatten()[None, :, None]
        sel[:, s0:s1, :cc] = keep.view(hkv, nb, b, cc).any(dim=2)
    return sel


def _select_triton(plan: BlockPlan, query: torch.Tensor, mean_keys: torch.Tensor, top_p: float, scaling: float) -> torch.Tensor:
    """CUDA: float16 scaled logits per chunk (one GEMM), then the fused softmax/nucleus/union kernel.

    The selectable rows are gathered in tile order and cast to float16 in one pass over whole token rows
    (Hq x D each) of the projections' token-major memory (`triton_rows.py`); gathering along the
    head-major view, then casting, took 3.2 ms of a 14 ms selection at 128K tokens (H200)."""
    hq, _, d = query.shape
    hkv, c, _ = mean_keys.shape
    group = hq // hkv
    b = plan.block
    ns = plan.sel_blocks.numel()
    device = query.device
    c_pad = -(-c // _ALIGN) * _ALIGN
    mk16 = torch.zeros(hkv, c_pad, d, dtype=torch.float16, device=device)
    mk16[:, :c] = mean_keys * scaling
    mk_t = mk16.repeat_interleave(group, 0).transpose(1, 2)  # (Hq, D, C_pad)
    if "sel_rows" not in plan.cache:
        tok = (plan.sel_blocks[:, None] * b + torch.arange(b, device=device)[None, :]).flatten()  # tile rows
        plan.cache["sel_rows"] = (plan.q_gather[tok], (plan.q_pos[tok] >= 0).to(torch.int8), plan.sel_cand.to(torch.int32))
    rows, valid, cand = plan.cache["sel_rows"]
    q16 = gather_rows_fp16(query.transpose(0, 1), rows).transpose(0, 1)  # (Hq, NS*B, D) view
    out = torch.zeros(hkv, ns, c_pad, dtype=torch.int32, device=device)
    for s0, s1, cc in _selection_chunks(plan, hq, BLOCK_SCORE_BUDGET["triton"]):
        ccp = -(-cc // _ALIGN) * _ALIGN
        logits = torch.bmm(q16[:, s0 * b : s1 * b], mk_t[:, :, :ccp])  # (Hq, n, ccp) float16
        launch_union(logits, cand[s0:s1], valid[s0 * b : s1 * b], out[:, s0:s1], top_p, group, b)
    return out[:, :, :c] != 0


def random_selection(plan: BlockPlan, kv_heads: int, density: float, *, seed: int = 0) -> Selection:
    """A per-block selection choosing each candidate cube with probability `density` (benchmarks force
    fixed densities with it: random weights make top-p select almost every cube)."""
    g = torch.Generator(device=plan.q_pos.device).manual_seed(seed)
    ns, c = plan.sel_blocks.numel(), plan.num_cubes
    cand = torch.arange(c, device=plan.q_pos.device)[None, :] < plan.sel_cand[:, None]
    cubes = (torch.rand(kv_heads, ns, c, generator=g, device=plan.q_pos.device) < density) & cand[None]
    return with_blocks(Selection(cubes, per_block=True, top_p=density), plan)
