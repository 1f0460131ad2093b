"""Block-sparse AdaS-Attn through FlexAttention (CUDA; same signature and function as `attention_reference`).

The selection's block structure becomes a `BlockMask` built with `from_kv_blocks` (no
create_block_mask compile; `compute_q_blocks=False`: inference never needs the backward indices) over
the plan's tile order, with a mask_mod that is causal in original positions for the partial blocks.
FlexAttention's Triton kernel runs at 0.60-0.67 of ideal on an H200 (research/kernels.md); it is the
fallback where FlashAttention-4 (`fa4.py`) is not installed.
"""

from __future__ import annotations

from typing import Any

import torch

from ..cubes.plan import BlockPlan, permute, unpermute
from ..selection import Selection, block_structure

_COMPILED: dict[str, Any] = {}
# Measured on an H100 (torch 2.11, 7B shapes, 64K tokens, density 0.3): the TMA loads took the flex
# kernel from 25.9 to 23.2 ms; explicit block sizes / warps / stages did not beat flex's defaults.
DEFAULT_KERNEL_OPTIONS: dict | None = {"USE_TMA": True}


def _flex() -> Any:
    if "flex" not in _COMPILED:
        from torch.nn.attention.flex_attention import flex_attention

        # Each new sequence length may compile again; past dynamo's limit (default 8) flex would
        # silently run eagerly and materialise the full score matrix, so allow more.
        for name in ("recompile_limit", "cache_size_limit"):
            if hasattr(torch._dynamo.config, name):
                setattr(torch._dynamo.config, name, max(64, getattr(torch._dynamo.config, name)))
        _COMPILED["flex"] = torch.compile(flex_attention)
    return _COMPILED["flex"]


def block_indices(mask: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(Hkv, NQB, NKB) bool -> per query head (1, Hq, NQB) int32 counts and (1, Hq, NQB, NKB) int32
    key-block indices, the listed ones first (the form FlexAttention and FA4 both take)."""
    num = mask.sum(-1, dtype=torch.int32)
    idx = torch.argsort(mask.to(torch.uint8), dim=-1, descending=True, stable=True).to(torch.int32)
    return num.repeat_interleave(group, 0)[None].contiguous(), idx.repeat_interleave(group, 0)[None].contiguous()


def _mask_mod(plan: BlockPlan) -> Any:
    # one function object per plan: torch.compile then compiles once per plan, not once per call
    if "flex_mask_mod" not in plan.cache:
        q_pos, kv_pos = plan.q_pos, plan.kv_pos

        def causal_in_original_positions(b, h, q_idx, kv_idx):  # noqa: ANN001, ANN202
            return kv_pos[kv_idx] <= q_pos[q_idx]

        plan.cache["flex_mask_mod"] = causal_in_original_positions
    return plan.cache["flex_mask_mod"]


def build_block_mask(plan: BlockPlan, full: torch.Tensor, partial: torch.Tensor, hq: int) -> Any:
    """A flex_attention BlockMask over the plan's tile order; heads = query heads."""
    from torch.nn.attention.flex_attention import BlockMask

    group = hq // full.shape[0]
    fn, fi = block_indices(full, group)
    pn, pi = block_indices(partial, group)
    kwargs = dict(
        BLOCK_SIZE=(plan.block, plan.block), mask_mod=_mask_mod(plan), seq_lengths=(plan.q_pos.numel(), plan.kv_pos.numel())
    )
    try:
        return BlockMask.from_kv_blocks(pn, pi, fn, fi, compute_q_blocks=False, **kwargs)
    except TypeError:  # torch before compute_q_blocks
        return BlockMask.from_kv_blocks(pn, pi, fn, fi, **kwargs)


def attention_flex(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    plan: BlockPlan,
    selection: Selection,
    scaling: float,
) -> torch.Tensor:
    """Returns (Lq, Hq, D) in query's dtype."""
    hq, hkv = query.shape[0], key.shape[0]
    q_perm, k_perm, v_perm = permute(plan, query, key, value)
    full, partial = block_structure(plan, selection)
    block_mask = build_block_mask(plan, full, partial, hq)
    options = _COMPILED.get("default_options", DEFAULT_KERNEL_OPTIONS)
    call = dict(block_mask=block_mask, scale=scaling, enable_gqa=hkv != hq)
    try:
        out = _flex()(q_perm[None], k_perm[None], v_perm[None], kernel_options=options, **call)
    except Exception:
        if not options:
            raise
        _COMPILED["default_options"] = None  # this torch does not take the option: flex's own defaults
        out = _flex()(q_perm[None], k_perm[None], v_perm[None], **call)
    return unpermute(plan, out[0])
