"""Block-sparse AdaS-Attn through FlashAttention-4's CuTe block-sparse forward (CUDA, Hopper and newer).

Same signature and function as `attention_reference`. The plan's tile order is laid out (L, H, D), as
FA4 takes it; the selection's block structure becomes FA4's per-(head, query block) lists of full and
partial ("mask") key blocks, 128 x 128 on Hopper with head dim 128; partial blocks run a CuTe mask_mod
that is causal in original positions, read from two aux tensors (q_pos, kv_pos). Measured on an H200
(research/kernels.md): 0.86-0.99 of ideal from 32K tokens, against 0.60-0.67 for FlexAttention's
Triton kernel; no recompile for a new sequence length (the aux tensors are fully dynamic).

`pip install 'adaspark-cli[fa4]'` installs it (`flash-attn-4`); importing `flash_attn.cute` takes about
8 s (the CuTe DSL), so it is imported on first use, on CUDA only.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import torch

from ..cubes.plan import BlockPlan
from ..selection import Selection, block_structure
from .flex import block_indices

TILE = 128  # FA4's q and kv tile on Hopper at head dim 128; the plan's block must match


def _enable_compile_cache() -> None:
    """FA4's own on-disk cache of compiled kernels (off by default in FA4): the 4-5 s compile then
    happens once per machine, not once per process. Set before flash_attn.cute is imported; the
    user's own FLASH_ATTENTION_CUTE_DSL_CACHE_* settings win."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "adaspark" / "fa4"
    os.environ.setdefault("FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED", "1")
    os.environ.setdefault("FLASH_ATTENTION_CUTE_DSL_CACHE_DIR", str(cache))


@functools.cache
def fa4_available() -> bool:
    """Whether flash-attn-4 imports here (it needs a CUDA GPU of compute capability 9.0 or newer)."""
    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9:
        return False
    _enable_compile_cache()
    try:
        import flash_attn.cute  # noqa: F401
    except Exception:
        return False
    return True


@functools.cache
def fa4_kernel() -> tuple[Any, Any, Any]:
    """FA4's function, its block-sparse tensors type and the causal mask_mod in original positions (compiled once)."""
    import cutlass
    import cutlass.cute as cute
    from flash_attn.cute import flash_attn_func, utils
    from flash_attn.cute.block_sparsity import BlockSparseTensorsTorch

    @cute.jit
    def causal_in_original_positions(batch, head, q_idx, kv_idx, seqlen_info, aux_tensors):  # noqa: ANN001, ANN202
        q_pos, kv_pos = aux_tensors[0], aux_tensors[1]
        qp = utils.scalar_to_ssa(q_pos[q_idx[0]], cutlass.Int32)
        kp = utils.scalar_to_ssa(kv_pos[kv_idx[0]], cutlass.Int32)
        return kp <= qp

    return flash_attn_func, BlockSparseTensorsTorch, causal_in_original_positions


def tile_order(x: torch.Tensor, gather: torch.Tensor) -> torch.Tensor:
    """(H, L, D) -> (1, Lp, H, D) contiguous in tile order (one gather, no extra transpose copy when the
    projections left x token-major, as transformers' attention does)."""
    return x.transpose(0, 1).index_select(0, gather)[None]


def attention_fa4(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    plan: BlockPlan,
    selection: Selection,
    scaling: float,
) -> torch.Tensor:
    """Returns (Lq, Hq, D) in query's dtype."""
    if plan.block != TILE:
        raise ValueError(f"FA4's block-sparse tiles are {TILE} tokens; the plan uses {plan.block}")
    flash_attn_func, BlockSparseTensors, mask_mod = fa4_kernel()
    hq, hkv = query.shape[0], key.shape[0]
    full, partial = block_structure(plan, selection)
    full_num, full_idx = block_indices(full, hq // hkv)
    part_num, part_idx = block_indices(partial, hq // hkv)
    tensors = BlockSparseTensors(
        mask_block_cnt=part_num, mask_block_idx=part_idx, full_block_cnt=full_num, full_block_idx=full_idx,
        block_size=(TILE, TILE),
    )
    out = flash_attn_func(
        tile_order(query, plan.q_gather), tile_order(key, plan.k_gather), tile_order(value, plan.k_gather),
        softmax_scale=scaling, causal=False, mask_mod=mask_mod, aux_tensors=[plan.q_pos, plan.kv_pos],
        block_sparse_tensors=tensors,
    )
    out = out[0] if isinstance(out, (tuple, list)) else out  # (1, Lqp, Hq, D)
    return out[0].index_select(0, plan.q_unperm)
