"""Block-sparse AdaS-Attn for prefill: the GPU fast path (issue 4, part 1).

Same function as `adas_attention_reference`, except that selection is made per query *block* (the
union of the per-token nucleus sets of the block's query tokens, method.md section 2: a superset,
so at top_p = 1 the result is the reference's exactly and at p < 1 every token attends at least
what the reference gives it).

Steps, for one sequence:
  1. Permutation (`build_plan`): the tokens are regrouped so that every cube occupies whole
     BLOCK-token blocks (a partial cube is padded; padded keys are masked, padded query rows are
     dropped). Text runs are cut into blocks of their own. Groups are ordered by their first
     position, so block order follows slab order. RoPE is already applied: only causality has to be
     expressed, and it is, in ORIGINAL positions (`q_pos`, `kv_pos`).
  2. Selection (`select_blocks`): cube mean keys (after RoPE), per-token cube probabilities
     averaged over each KV group's query heads, top-p per token, OR over the block's tokens.
     Queries are processed in chunks of blocks whose candidates are a prefix of the cubes (the
     cubes of earlier slabs), so memory stays bounded. On CUDA the scores are one float16 GEMM per
     chunk and a Triton kernel does the softmax, head average, nucleus (bisection on the
     probability threshold, aiming at mass p + 1e-4 so that rounding errs towards more cubes) and
     union in one pass over them; float16 scores can move a cube that sits exactly on the nucleus
     boundary (H100 check: 0 missing, <= 0.2% extra against the float32 exact union; one cube in
     315 missing in a CPU-interpreter test, which allows 1%). Elsewhere the
     exact sort-based `nucleus_mask` of the reference is used, in float32.
  3. Block mask (`build_block_mask`): full blocks = selected earlier-slab cubes and text/own-slab
     blocks entirely below the diagonal; partial blocks = blocks crossing the diagonal or holding
     padded keys, with a mask_mod `kv_pos[kv] <= q_pos[q]` (padded keys have position +inf,
     padded queries -1). Built with `BlockMask.from_kv_blocks` (no create_block_mask compile).
  4. Attention: `flex_attention` under torch.compile on CUDA; on the CPU the same block mask is
     expanded to a dense mask and applied in float32 (the test oracle path).
  5. Un-permute to (Lq, Hq, D).

Entry point for the attention hook: `adas_attention_blocksparse(query, key, value, layout, top_p=,
scaling=)`, same arguments and result as `adas_attention_reference`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..cubes import CubeLayout
from .selection import nucleus_mask

BLOCK = 128
PAD_POS = 1 << 30  # position of a padded key: after every query
# Logits of one selection chunk hold Hq x tokens x candidate cubes values: 2**28 (512 MB in float16 on
# CUDA; the CPU path is for small inputs).
SELECT_BUDGET = 1 << 28
_TOP_P_SLACK = 1e-4  # the bisection nucleus aims at mass p + slack, so float rounding errs towards more cubes


@dataclass
class BlockGroups:
    """Tokens of [lo, hi) regrouped into BLOCK-token blocks. index: (NB*BLOCK,) absolute position or -1."""

    index: torch.Tensor
    block_cube: torch.Tensor  # (NB,) cube id, -1 for text
    block_slab: torch.Tensor  # (NB,) slab id, -1 for text
    block_min: torch.Tensor  # (NB,) smallest valid position
    block_max: torch.Tensor  # (NB,) largest valid position
    block_has_pad: torch.Tensor  # (NB,) bool
    num_blocks: int


@dataclass
class Plan:
    """Everything about one (layout, Lq, Lk) that does not depend on the data; shared by all layers."""

    block: int
    lq: int
    lk: int
    past: int
    q: BlockGroups
    k: BlockGroups
    q_gather: torch.Tensor  # (Lqp,) index into query's token dim (clamped; padded rows arbitrary)
    k_gather: torch.Tensor  # (Lkp,)
    q_unperm: torch.Tensor  # (Lq,) row of the permuted query for each query token
    q_pos: torch.Tensor  # (Lqp,) int32 absolute position, -1 for padding
    kv_pos: torch.Tensor  # (Lkp,) int32 absolute position, PAD_POS for padding
    always_full: torch.Tensor  # (NQB, NKB) bool, head-independent full blocks
    always_partial: torch.Tensor  # (NQB, NKB) bool, head-independent partial blocks
    cand_blocks: torch.Tensor  # (NQB, NKB) bool, earlier-slab cube blocks open to selection
    k_block_cube: torch.Tensor  # (NKB,) cube of each key block (clamped to 0 for text)
    # selection over query blocks that are video and have candidate cubes
    sel_blocks: torch.Tensor  # (NS,) permuted query-block ids
    sel_cand: torch.Tensor  # (NS,) number of candidate cubes (a prefix of the cube ids)
    sel_cand_host: list[int] = field(default_factory=list)
    num_cubes: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def _group_blocks(layout: CubeLayout, lo: int, hi: int, block: int, device: torch.device) -> BlockGroups:
    pos = torch.arange(lo, hi, device=device)
    n = hi - lo
    cube = layout.cube_of_token[lo:hi].to(device)
    video = cube >= 0
    # Every token gets the first position of its group: cube (within [lo, hi)) or text block.
    first = torch.empty(n, dtype=torch.long, device=device)
    if bool(video.any()):
        cube_first = torch.full((layout.num_cubes,), PAD_POS, dtype=torch.long, device=device)
        cube_first.scatter_reduce_(0, cube[video], pos[video], reduce="amin")
        first[video] = cube_first[cube[video]]
    text = ~video
    if bool(text.any()):
        prev_text = torch.cat([torch.zeros(1, dtype=torch.bool, device=device), text[:-1]])
        run_start_flag = text & ~prev_text
        run_id = torch.cumsum(run_start_flag.long(), 0) - 1
        run_start = pos[run_start_flag]
        tpos = pos[text]
        rs = run_start[run_id[text]]
        first[text] = rs + (tpos - rs) // block * block
    order = torch.argsort(first * (n + 1) + (pos - lo))
    sorted_first = first[order]
    groups, counts = torch.unique_consecutive(sorted_first, return_counts=True)
    nblk = (counts + block - 1) // block
    pad_start = torch.cumsum(nblk * block, 0) - nblk * block
    sorted_start = torch.cumsum(counts, 0) - counts
    gidx = torch.repeat_interleave(torch.arange(groups.numel(), device=device), counts)
    dest = pad_start[gidx] + (torch.arange(n, device=device) - sorted_start[gidx])
    total = int(nblk.sum())
    index = torch.full((total * block,), -1, dtype=torch.long, device=device)
    index[dest] = pos[order]
    blocks = index.view(total, block)
    valid = blocks >= 0
    bmin = torch.where(valid, blocks, PAD_POS).amin(1)
    bmax = blocks.amax(1)
    head = bmin.clamp(max=layout.seq_len - 1)
    return BlockGroups(
        index=index,
        block_cube=layout.cube_of_token.to(device)[head],
        block_slab=layout.slab_of_token.to(device)[head],
        block_min=bmin,
        block_max=bmax,
        block_has_pad=~valid.all(1),
        num_blocks=total,
    )


_PLAN_CACHE: dict[tuple, tuple[CubeLayout, Plan]] = {}


def build_plan(layout: CubeLayout, lq: int, lk: int, *, block: int = BLOCK, device: torch.device | str = "cpu") -> Plan:
    """Permutation and data-independent block structure for queries [lk-lq, lk) and keys [0, lk).

    Cached per layout object, lengths, block and device (the 28 layers of one forward share it).
    """
    device = torch.device(device)
    cache_key = (id(layout), lq, lk, block, str(device))
    hit = _PLAN_CACHE.get(cache_key)
    if hit is not None and hit[0] is layout:
        return hit[1]
    past = lk - lq
    kg = _group_blocks(layout, 0, lk, block, device)
    qg = kg if past == 0 else _group_blocks(layout, past, lk, block, device)
    q_valid = qg.index >= 0
    q_pos = torch.where(q_valid, qg.index, -1).to(torch.int32)
    kv_pos = torch.where(kg.index >= 0, kg.index, PAD_POS).to(torch.int32)
    q_gather = (qg.index - past).clamp(min=0)
    k_gather = kg.index.clamp(min=0)
    q_unperm = torch.empty(lq, dtype=torch.long, device=device)
    rows = torch.arange(qg.index.numel(), device=device)
    q_unperm[qg.index[q_valid] - past] = rows[q_valid]

    qcube, kcube = qg.block_cube[:, None], kg.block_cube[None, :]
    qslab, kslab = qg.block_slab[:, None], kg.block_slab[None, :]
    q_text, k_text = qcube < 0, kcube < 0
    before = kg.block_max[None, :] < qg.block_min[:, None]
    after = kg.block_min[None, :] > qg.block_max[:, None]
    k_pad = kg.block_has_pad[None, :]
    always = q_text | k_text | (qslab == kslab)  # text query, text key, own slab: causal only
    always_full = always & before & ~k_pad
    always_partial = always & ~after & ~always_full
    cand_blocks = ~q_text & ~k_text & (kslab < qslab)

    slab_of_cube = layout.slab_of_cube.to(device)
    is_sel = (qg.block_cube >= 0) & (qg.block_slab >= 0)
    cand = torch.searchsorted(slab_of_cube, qg.block_slab.clamp(min=0))  # cubes with slab < s
    is_sel &= cand > 0
    sel_blocks = is_sel.nonzero().squeeze(1)
    sel_cand = cand[sel_blocks]
    plan = Plan(
        block=block,
        lq=lq,
        lk=lk,
        past=past,
        q=qg,
        k=kg,
        q_gather=q_gather,
        k_gather=k_gather,
        q_unperm=q_unperm,
        q_pos=q_pos,
        kv_pos=kv_pos,
        always_full=always_full,
        always_partial=always_partial,
        cand_blocks=cand_blocks,
        k_block_cube=kg.block_cube.clamp(min=0),
        sel_blocks=sel_blocks,
        sel_cand=sel_cand,
        sel_cand_host=sel_cand.tolist(),
        num_cubes=layout.num_cubes,
    )
    if len(_PLAN_CACHE) > 8:
        _PLAN_CACHE.clear()
    _PLAN_CACHE[cache_key] = (layout, plan)
    return plan


def permute_qkv(plan: Plan, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor):
    """(H, L, D) tensors -> cube-major padded (H, Lp, D)."""
    return query.index_select(1, plan.q_gather), key.index_select(1, plan.k_gather), value.index_select(1, plan.k_gather)


def unpermute(plan: Plan, out_perm: torch.Tensor) -> torch.Tensor:
    """(Hq, Lqp, D) -> (Lq, Hq, D) contiguous."""
    return out_perm.transpose(0, 1).index_select(0, plan.q_unperm)


# ----------------------------------------------------------------------------------------------
# Selection


def _selection_chunks(plan: Plan, hq: int) -> list[tuple[int, int, int]]:
    """(start, end, candidate cubes) over plan.sel_blocks; candidates grow along the blocks."""
    chunks = []
    cands = plan.sel_cand_host
    i = 0
    while i < len(cands):
        j = i + 1
        while j < len(cands) and (j + 1 - i) * plan.block * hq * cands[j] <= SELECT_BUDGET:
            j += 1
        chunks.append((i, j, max(cands[i:j])))
        i = j
    return chunks


def mean_keys_from_blocks(plan: Plan, k_perm: torch.Tensor) -> torch.Tensor:
    """cube_mean_keys from the permuted keys (Hkv, Lkp, D): one float32 sum per block (a padded row
    holds a copy of position 0's key, which is subtracted again), then per cube.
    Returns (Hkv, num_cubes, D) float32, equal to cube_mean_keys up to summation order."""
    hkv, _, d = k_perm.shape
    b = plan.block
    if "mean_keys" not in plan.extra:
        valid = (plan.kv_pos < PAD_POS).view(-1, b)
        vb = (plan.k.block_cube >= 0).nonzero().squeeze(1)
        counts = torch.zeros(plan.num_cubes, dtype=torch.float32, device=k_perm.device)
        counts.index_add_(0, plan.k.block_cube[vb], valid[vb].sum(1).float())
        pos0_row = int((plan.k.index == 0).nonzero()[0, 0])
        plan.extra["mean_keys"] = (vb, plan.k.block_cube[vb], (~valid[vb]).sum(1).float(), counts.clamp(min=1), pos0_row)
    vb, vcube, npad, counts, pos0_row = plan.extra["mean_keys"]
    sums = k_perm.view(hkv, -1, b, d)[:, vb].sum(2, dtype=torch.float32)  # (Hkv, NV, D)
    sums -= npad[None, :, None] * k_perm[:, pos0_row : pos0_row + 1].float()
    cube_sums = torch.zeros(hkv, plan.num_cubes, d, dtype=torch.float32, device=k_perm.device)
    cube_sums.index_add_(1, vcube, sums)
    return cube_sums / counts[None, :, None]


def select_blocks(
    plan: Plan,
    q_perm: torch.Tensor,
    mean_keys: torch.Tensor,
    top_p: float,
    scaling: float,
    *,
    method: str = "auto",
) -> torch.Tensor:
    """Per (KV head, selectable query block) the union of its tokens' nucleus cube sets.

    q_perm: (Hq, Lqp, D) permuted queries; mean_keys: (Hkv, C, D). Returns (Hkv, NS, C) bool over
    plan.sel_blocks. method: "exact" (sort, as the reference), "triton" (fused bisection kernel),
    "auto" (triton on CUDA when available).
    """
    hq, _, d = q_perm.shape
    hkv, c, _ = mean_keys.shape
    group = hq // hkv
    ns = plan.sel_blocks.numel()
    device = q_perm.device
    sel = torch.zeros(hkv, ns, c, dtype=torch.bool, device=device)
    if ns == 0:
        return sel
    ar = torch.arange(c, device=device)
    if top_p >= 1.0:
        return (ar[None, :] < plan.sel_cand[:, None]).expand(hkv, -1, -1).clone()
    if method == "auto":
        method = "triton" if device.type == "cuda" and _triton_available() else "exact"
    if method == "triton":
        return _select_triton(plan, q_perm, mean_keys, top_p, scaling)
    b = plan.block
    q_valid = (plan.q_pos >= 0).view(-1, b)
    for s0, s1, cc in _selection_chunks(plan, hq):
        blocks = plan.sel_blocks[s0:s1]
        nb = s1 - s0
        tok = (blocks[:, None] * b + torch.arange(b, device=device)[None, :]).flatten()
        q = q_perm.index_select(1, tok)  # (Hq, nb*b, D)
        mk = mean_keys[:, :cc]
        # exact: float32 scores, sort-based nucleus, as the reference
        logits = torch.einsum("kgnd,kcd->kgnc", q.float().reshape(hkv, group, nb * b, d), mk.float()) * scaling
        cand_tok = (ar[None, :cc] < plan.sel_cand[s0:s1].repeat_interleave(b)[:, None])  # (n, cc)
        logits = logits.masked_fill(~cand_tok[None, None], float("-inf"))
        probs = torch.softmax(logits, dim=-1).nan_to_num(0.0).mean(dim=1)  # (Hkv, n, cc)
        keep = nucleus_mask(probs, top_p, cand_tok[None].expand(hkv, -1, -1))
        keep &= q_valid[blocks].flatten()[None, :, None]
        sel[:, s0:s1, :cc] = keep.view(hkv, nb, b, cc).any(dim=2)
    return sel


_ALIGN = 64  # candidate columns are padded to this, so that the float16 GEMM output rows stay aligned


def _select_triton(plan: Plan, q_perm: torch.Tensor, mean_keys: torch.Tensor, top_p: float, scaling: float) -> torch.Tensor:
    """CUDA selection: float16 scaled logits per chunk (one GEMM), then the fused kernel."""
    hq, _, d = q_perm.shape
    hkv, c, _ = mean_keys.shape
    group = hq // hkv
    b = plan.block
    ns = plan.sel_blocks.numel()
    device = q_perm.device
    c_pad = -(-c // _ALIGN) * _ALIGN
    mk16 = torch.zeros(hkv, c_pad, d, dtype=torch.float16, device=device)
    mk16[:, :c] = mean_keys * scaling
    mk_t = mk16.repeat_interleave(group, 0).transpose(1, 2)  # (Hq, D, C_pad)
    if "sel_range" not in plan.extra:
        blocks = plan.sel_blocks.tolist()
        contiguous = blocks == list(range(blocks[0], blocks[0] + len(blocks)))
        plan.extra["sel_range"] = (blocks[0], contiguous)
        tok = (plan.sel_blocks[:, None] * b + torch.arange(b, device=device)[None, :]).flatten()
        plan.extra["sel_tok"] = tok
        plan.extra["sel_valid"] = (plan.q_pos[tok] >= 0).to(torch.int8)
        plan.extra["sel_cand32"] = plan.sel_cand.to(torch.int32)
    first, contiguous = plan.extra["sel_range"]
    if contiguous:
        q16 = q_perm[:, first * b : (first + ns) * b].to(torch.float16)
    else:
        q16 = q_perm.index_select(1, plan.extra["sel_tok"]).to(torch.float16)
    valid, cand = plan.extra["sel_valid"], plan.extra["sel_cand32"]
    out = torch.zeros(hkv, ns, c_pad, dtype=torch.int32, device=device)
    for s0, s1, cc in _selection_chunks(plan, hq):
        ccp = -(-cc // _ALIGN) * _ALIGN
        logits = torch.bmm(q16[:, s0 * b : s1 * b], mk_t[:, :, :ccp])  # (Hq, n, ccp) float16
        _launch_union(logits, cand[s0:s1], valid[s0 * b : s1 * b], out[:, s0:s1], top_p, group, b)
    return out[:, :, :c] != 0


def per_token_selection(
    plan: Plan, q_perm: torch.Tensor, mean_keys: torch.Tensor, top_p: float, scaling: float
) -> torch.Tensor:
    """The reference's per-token nucleus sets for the selectable query rows: (Hkv, NS*BLOCK, C) bool
    (padded rows all False). For measuring how much the per-block union adds; memory O(all)."""
    hq, _, d = q_perm.shape
    hkv, c, _ = mean_keys.shape
    group = hq // hkv
    b = plan.block
    device = q_perm.device
    ar = torch.arange(c, device=device)
    tok = (plan.sel_blocks[:, None] * b + torch.arange(b, device=device)[None, :]).flatten()
    q = q_perm.index_select(1, tok)
    cand_tok = ar[None, :] < plan.sel_cand.repeat_interleave(b)[:, None]
    logits = torch.einsum("kgnd,kcd->kgnc", q.float().reshape(hkv, group, -1, d), mean_keys.float()) * scaling
    probs = torch.softmax(logits.masked_fill(~cand_tok[None, None], float("-inf")), -1).nan_to_num(0.0).mean(1)
    keep = nucleus_mask(probs, top_p, cand_tok[None].expand(hkv, -1, -1))
    return keep & (plan.q_pos >= 0).view(-1, b)[plan.sel_blocks].flatten()[None, :, None]


# ----------------------------------------------------------------------------------------------
# Block mask


def block_structure(plan: Plan, sel: torch.Tensor, hkv: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense block-level (Hkv, NQB, NKB) full and partial masks for a selection (Hkv, NS, C)."""
    nqb, nkb = plan.always_full.shape
    chosen = torch.zeros(hkv, nqb, nkb, dtype=torch.bool, device=sel.device)
    if plan.sel_blocks.numel():
        chosen[:, plan.sel_blocks] = sel[:, :, plan.k_block_cube] & plan.cand_blocks[plan.sel_blocks][None]
    k_pad = plan.k.block_has_pad[None, None, :]
    full = plan.always_full[None] | (chosen & ~k_pad)
    partial = plan.always_partial[None] | (chosen & k_pad)
    return full, partial


def _dense_to_ordered(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    num = mask.sum(-1, dtype=torch.int32)
    idx = torch.argsort(mask.to(torch.uint8), dim=-1, descending=True, stable=True).to(torch.int32)
    return num, idx


def _mask_mod_factory(q_pos: torch.Tensor, kv_pos: torch.Tensor):
    def causal_in_original_positions(b, h, q_idx, kv_idx):
        return kv_pos[kv_idx] <= q_pos[q_idx]

    return causal_in_original_positions


def _plan_mask_mod(plan: Plan):
    # one function object per plan: torch.compile then compiles once per plan, not once per call
    if "mask_mod" not in plan.extra:
        plan.extra["mask_mod"] = _mask_mod_factory(plan.q_pos, plan.kv_pos)
    return plan.extra["mask_mod"]


def build_block_mask(plan: Plan, full: torch.Tensor, partial: torch.Tensor, hq: int):
    """A flex_attention BlockMask over the permuted sequence; heads = query heads."""
    from torch.nn.attention.flex_attention import BlockMask

    hkv = full.shape[0]
    group = hq // hkv
    fn, fi = _dense_to_ordered(full)
    pn, pi = _dense_to_ordered(partial)

    def heads(x: torch.Tensor) -> torch.Tensor:
        return x.repeat_interleave(group, dim=0)[None]

    kwargs = dict(
        BLOCK_SIZE=(plan.block, plan.block),
        mask_mod=_plan_mask_mod(plan),
        seq_lengths=(plan.q_pos.numel(), plan.kv_pos.numel()),
    )
    try:
        return BlockMask.from_kv_blocks(heads(pn), heads(pi), heads(fn), heads(fi), compute_q_blocks=False, **kwargs)
    except TypeError:
        return BlockMask.from_kv_blocks(heads(pn), heads(pi), heads(fn), heads(fi), **kwargs)


def dense_mask(plan: Plan, full: torch.Tensor, partial: torch.Tensor) -> torch.Tensor:
    """(Hkv, Lqp, Lkp) bool: exactly what the block mask allows (full blocks, partial blocks with
    the mask_mod). For the CPU path and tests: memory O(Lq * Lk)."""
    b = plan.block
    expand = lambda x: x.repeat_interleave(b, 1).repeat_interleave(b, 2)  # noqa: E731
    causal = plan.kv_pos[None, :] <= plan.q_pos[:, None]
    return expand(full) | (expand(partial) & causal[None])


# ----------------------------------------------------------------------------------------------
# Attention

_COMPILED: dict[str, Any] = {}
# Measured on an H100 (torch 2.11, 7B shapes, 64K tokens, density 0.3): the TMA loads took the flex
# kernel from 25.9 to 23.2 ms; explicit block sizes / warps / stages did not beat flex's defaults.
DEFAULT_KERNEL_OPTIONS: dict | None = {"USE_TMA": True}


def _flex():
    if "flex" not in _COMPILED:
        from torch.nn.attention.flex_attention import flex_attention

        # Each new sequence length may compile again; past dynamo's limit (default 8) flex would
        # silently run eagerly and materialise the full score matrix, so allow more.
        for name in ("recompile_limit", "cache_size_limit"):
            if hasattr(torch._dynamo.config, name):
                setattr(torch._dynamo.config, name, max(64, getattr(torch._dynamo.config, name)))
        _COMPILED["flex"] = torch.compile(flex_attention)
    return _COMPILED["flex"]


def sparse_attention(
    plan: Plan, q_perm: torch.Tensor, k_perm: torch.Tensor, v_perm: torch.Tensor, full, partial, scaling: float,
    *, backend: str = "auto", kernel_options: dict | None = None, block_mask=None,
) -> torch.Tensor:
    """Attention over the permuted sequence. Returns (Hq, Lqp, D)."""
    hq = q_perm.shape[0]
    hkv = k_perm.shape[0]
    if backend == "auto":
        backend = "flex" if q_perm.device.type == "cuda" else "dense"
    if backend == "flex":
        if block_mask is None:
            block_mask = build_block_mask(plan, full, partial, hq)
        options = kernel_options
        if options is None and q_perm.device.type == "cuda":
            options = _COMPILED.get("default_options", DEFAULT_KERNEL_OPTIONS)
        try:
            out = _flex()(
                q_perm[None], k_perm[None], v_perm[None], block_mask=block_mask, scale=scaling, enable_gqa=hkv != hq,
                kernel_options=options,
            )
        except Exception:
            if kernel_options is not None or not options:
                raise
            _COMPILED["default_options"] = None  # this torch does not take the option: flex's own defaults
            out = _flex()(q_perm[None], k_perm[None], v_perm[None], block_mask=block_mask, scale=scaling, enable_gqa=hkv != hq)
        return out[0]
    group = hq // hkv
    allowed = dense_mask(plan, full, partial)  # (Hkv, Lqp, Lkp)
    d = q_perm.shape[-1]
    scores = torch.einsum("kgqd,kld->kgql", q_perm.float().reshape(hkv, group, -1, d), k_perm.float()) * scaling
    scores = scores.masked_fill(~allowed[:, None], float("-inf"))
    weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # padded query rows may have no key
    out = torch.einsum("kgql,kld->kgqd", weights, v_perm.float()).reshape(hq, -1, d)
    return out.to(q_perm.dtype)


def adas_attention_blocksparse(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    layout: CubeLayout,
    *,
    top_p: float,
    scaling: float,
    block: int = BLOCK,
    selection: str = "auto",
    backend: str = "auto",
    kernel_options: dict | None = None,
    info: dict | None = None,
) -> torch.Tensor:
    """AdaS-Attn for one sequence with per-block cube selection and a block-sparse kernel.

    query: (Hq, Lq, D) for positions [Lk - Lq, Lk); key, value: (Hkv, Lk, D), RoPE applied.
    Returns (Lq, Hq, D) in query's dtype, like `adas_attention_reference`. On CUDA: Triton
    selection + flex_attention; on the CPU: exact selection + dense masked attention of the same
    block mask. `info`, if given, receives the plan and the block structure (for statistics).
    """
    hq, lq, d = query.shape
    hkv, lk, _ = key.shape
    device = query.device
    plan = build_plan(layout, lq, lk, block=block, device=device)
    q_perm, k_perm, v_perm = permute_qkv(plan, query, key, value)
    if plan.sel_blocks.numel() and top_p < 1.0:
        mean_keys = mean_keys_from_blocks(plan, k_perm)
        sel = select_blocks(plan, q_perm, mean_keys, top_p, scaling, method=selection)
    else:
        sel = select_blocks(plan, q_perm, key.new_zeros(hkv, layout.num_cubes, d, dtype=torch.float32), 1.0, scaling)
    full, partial = block_structure(plan, sel, hkv)
    out_perm = sparse_attention(plan, q_perm, k_perm, v_perm, full, partial, scaling, backend=backend, kernel_options=kernel_options)
    if info is not None:
        info.update(plan=plan, selection=sel, full=full, partial=partial)
    return unpermute(plan, out_perm)


def attended_pairs(plan: Plan, full: torch.Tensor, partial: torch.Tensor, chunk: int = 1 << 12) -> tuple[int, int]:
    """(attended (query, key) pairs summed over KV heads, causal pairs x Hkv) for the block structure."""
    b = plan.block
    hkv = full.shape[0]
    qv = (plan.q_pos >= 0).view(-1, b).sum(1)  # valid queries per block
    kv = (plan.kv_pos < PAD_POS).view(-1, b).sum(1)
    total = int((full.to(torch.int64) * (qv[:, None] * kv[None, :])[None]).sum())
    hq_, qb_, kb_ = partial.nonzero(as_tuple=True)
    for s in range(0, hq_.numel(), chunk):
        qb, kb = qb_[s : s + chunk], kb_[s : s + chunk]
        qp = plan.q_pos.view(-1, b)[qb]  # (n, b)
        kp = plan.kv_pos.view(-1, b)[kb]
        total += int(((kp[:, None, :] <= qp[:, :, None]) & (qp[:, :, None] >= 0)).sum())
    qpos = plan.q_pos[plan.q_pos >= 0].to(torch.int64)
    causal = int((qpos + 1).sum()) * hkv
    return total, causal


# ----------------------------------------------------------------------------------------------
# Triton: softmax over candidates, KV-group head mean, nucleus by bisection, union over the block

_TRITON: dict[str, Any] = {}


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:  # pragma: no cover - no triton
        return False
    return True


def _get_kernel():
    if "kernel" in _TRITON:
        return _TRITON["kernel"]
    import triton
    import triton.language as tl

    @triton.jit
    def nucleus_union_kernel(
        logits_ptr, cand_ptr, valid_ptr, out_ptr, top_p, n_tok, ccp, out_stride_h, out_stride_b,
        G: tl.constexpr, BLOCK: tl.constexpr, BLOCK_T: tl.constexpr, CPAD: tl.constexpr, ITERS: tl.constexpr,
    ):
        # one program: BLOCK_T query rows of one block, one KV head; union OR-ed into out
        blk = tl.program_id(0)
        h = tl.program_id(1)
        sub = tl.program_id(2)
        cand = tl.load(cand_ptr + blk)
        cols = tl.arange(0, CPAD)
        cmask = cols < cand
        rows = blk * BLOCK + sub * BLOCK_T + tl.arange(0, BLOCK_T)
        valid = tl.load(valid_ptr + rows) != 0
        p = tl.zeros([BLOCK_T, CPAD], dtype=tl.float32)
        for g in tl.static_range(G):
            base = (h * G + g).to(tl.int64) * n_tok
            ptrs = logits_ptr + (base + rows[:, None]) * ccp + cols[None, :]
            x = tl.load(ptrs, mask=cmask[None, :], other=float("-inf")).to(tl.float32)
            m = tl.max(x, 1)
            e = tl.exp(x - m[:, None])
            e = tl.where(cmask[None, :], e, 0.0)
            p += e * (1.0 / tl.sum(e, 1))[:, None]
        p = p * (1.0 / G)
        lo = tl.zeros([BLOCK_T], dtype=tl.float32)
        hi = tl.max(p, 1)
        for _ in range(ITERS):
            mid = (lo + hi) * 0.5
            s = tl.sum(tl.where(p >= mid[:, None], p, 0.0), 1)
            ok = s >= top_p
            lo = tl.where(ok, mid, lo)
            hi = tl.where(ok, hi, mid)
        s_hi = tl.sum(tl.where(p >= hi[:, None], p, 0.0), 1)
        thr = tl.where(s_hi >= top_p, hi, lo)
        keep = (p >= thr[:, None]) & cmask[None, :] & valid[:, None]
        union = tl.max(keep.to(tl.int32), 0)
        dst = out_ptr + h.to(tl.int64) * out_stride_h + blk.to(tl.int64) * out_stride_b + cols
        tl.atomic_or(dst, union, mask=cmask & (union != 0))

    _TRITON["kernel"] = nucleus_union_kernel
    return nucleus_union_kernel


def _launch_union(logits, cand, valid, out, top_p: float, group: int, block: int) -> None:
    """logits: (Hq, n, ccp) float16 scaled, n = nb*block; cand: (nb,) int32; valid: (n,) int8;
    out: (Hkv, nb, >= ccp) int32 view, OR-ed into."""
    import triton

    kernel = _get_kernel()
    hq, n, ccp = logits.shape
    hkv, nb = out.shape[0], out.shape[1]
    cpad = triton.next_power_of_2(max(ccp, 16))
    block_t = max(1, min(16, 2048 // cpad, block & -block))  # a power of two that divides block
    kernel[(nb, hkv, block // block_t)](
        logits, cand, valid, out, min(1.0, float(top_p) + _TOP_P_SLACK), n, ccp, out.stride(0), out.stride(1),
        G=group, BLOCK=block, BLOCK_T=block_t, CPAD=cpad, ITERS=16, num_warps=4,
    )


# ----------------------------------------------------------------------------------------------
# statistics of a block-sparse call, in the terms of AttentionStats (video queries only)


def record_blocksparse_stats(info: dict[str, Any], layout: CubeLayout, stats: Any) -> None:
    """Fill `stats` (an AttentionStats) from `adas_attention_blocksparse(..., info=info)`.

    A query's attended cubes are its block's selection (shared by the block's tokens) plus its own
    slab's cubes; attended keys are the block structure's pairs minus the text queries' (dense) keys.
    """
    plan: Plan = info["plan"]
    sel, full, partial = info["selection"], info["full"], info["partial"]
    hkv = full.shape[0]
    device = full.device
    b = plan.block
    q_pos = plan.q_pos.view(-1, b).to(torch.int64)
    valid = q_pos >= 0
    block_slab = plan.q.block_slab.to(device)
    video = block_slab >= 0
    if not bool(video.any()):
        return
    slab_of_cube = layout.slab_of_cube.to(device)
    own = (slab_of_cube[None, :] == block_slab[:, None]).sum(1)  # (NQB,) own-slab cubes
    cand = torch.zeros_like(own)
    chosen = torch.zeros(hkv, own.numel(), dtype=torch.int64, device=device)
    if plan.sel_blocks.numel():
        cand[plan.sel_blocks] = plan.sel_cand.to(own.dtype)
        chosen[:, plan.sel_blocks] = sel.sum(-1)
    per_block = valid.sum(1)  # valid queries per block
    weight = (per_block * video)[None]  # count video queries only
    attended = chosen + own[None]
    pairs, _ = attended_pairs(plan, full, partial)
    text_keys = int(((q_pos + 1) * (valid & ~video[:, None])).sum()) * hkv
    video_causal = int(((q_pos + 1) * (valid & video[:, None])).sum()) * hkv
    shown = attended[:, video & (per_block > 0)]
    stats.add_counts(
        queries=int(weight.sum()),
        kv_heads=hkv,
        cubes_total=int(((cand + own) * per_block * video).sum()) * hkv,
        cubes_attended=int((attended * weight).sum()),
        attended_min=int(shown.min()),
        attended_max=int(shown.max()),
        attended_keys=pairs - text_keys,
        causal_keys=video_causal,
        scored=int((cand * per_block * video).sum()),
    )
