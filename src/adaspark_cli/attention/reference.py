"""Reference AdaS-Attn: exact masked attention for a given Selection (method.md section 2).

Every attention implementation in this package has this signature and computes this function:
  attention(query, key, value, plan, selection, scaling) -> (Lq, Hq, D)
query: (Hq, Lq, D) for positions [Lk - Lq, Lk); key, value: (Hkv, Lk, D), RoPE applied; plan: the
`cubes.plan.BlockPlan` of the call; selection: a `selection.Selection` (per token or per block).

A video query attends every text key, every key of its own slab, and every key of the cubes the
selection gives it (for a per-block selection on a packed plan, the whole tiles holding them, as the
kernels do); text queries attend densely; always causal in original order. This one builds the mask
key by key and runs float32 masked softmax attention, in chunks of queries so that memory stays
bounded by ``chunk x Lk`` scores rather than an Lq x Lk mask.

The reference alone also takes a leading batch dim on every tensor (and on the selection's cubes):
sequences that share the plan's layout, such as the training fine-tune's right-padded batches of
videos of one length. Each sequence gets exactly what it would get alone; the fast kernels take one.
"""

from __future__ import annotations

import math

import torch

from ..cubes import CubeLayout
from ..cubes.plan import BlockPlan, block_of_query_token, sel_row_of_block
from ..selection import Selection, attended_cubes

# Scores of one chunk hold Hq x chunk x Lk floats; 2**24 keeps a chunk near 64 MB in float32.
SCORE_BUDGET = 1 << 24


def allowed_keys(
    query_pos: torch.Tensor, layout: CubeLayout, num_keys: int, selected: torch.Tensor | None
) -> torch.Tensor:
    """Boolean key mask for a chunk of queries.

    query_pos: (n,) absolute positions. selected: (..., Hkv, n, C) attended cubes, or None for dense.
    Returns (..., Hkv or 1, n, num_keys) bool.
    """
    key_pos = torch.arange(num_keys, device=query_pos.device)
    causal = key_pos[None, :] <= query_pos[:, None]  # (n, Lk)
    if selected is None:
        return causal[None]
    # Decide per cube first, then expand to keys with one gather: text keys use an extra
    # always-true column; text queries allow every cube.
    query_slab = layout.slab_of_token[query_pos]
    own_slab = (layout.slab_of_cube[None, :] == query_slab[:, None]) | (query_slab < 0)[:, None]  # (n, C)
    always = torch.ones(*selected.shape[:-1], 1, dtype=torch.bool, device=selected.device)
    cube_ok = torch.cat([selected | own_slab, always], dim=-1)  # (..., Hkv, n, C + 1)
    key_cube = layout.cube_of_token[:num_keys]
    column = torch.where(key_cube >= 0, key_cube, layout.num_cubes)
    return cube_ok[..., column] & causal


def selected_cubes_of_queries(plan: BlockPlan, selection: Selection, rows: torch.Tensor) -> torch.Tensor:
    """(..., Hkv, n, C) bool: the cubes attended by query tokens `rows` (indices into [0, Lq))."""
    if not selection.per_block:
        return selection.cubes[..., rows, :]
    cubes = attended_cubes(selection, plan)
    sel_row = sel_row_of_block(plan)[block_of_query_token(plan)[rows]]  # (n,) -1: no candidates
    if cubes.shape[1] == 0:  # no query block has candidates (a video of one slab)
        return cubes.new_zeros(cubes.shape[0], rows.numel(), cubes.shape[2])
    picked = cubes[:, sel_row.clamp(min=0)]
    return picked & (sel_row >= 0)[None, :, None]


def attention_reference(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    plan: BlockPlan,
    selection: Selection,
    scaling: float,
) -> torch.Tensor:
    """Exact masked attention for `selection`. Returns (..., Lq, Hq, D) in query's dtype."""
    *lead, hq, lq, d = query.shape
    hkv, lk = key.shape[-3:-1]
    group = hq // hkv
    device = query.device
    layout = plan.layout.to(device) if plan.layout.cube_of_token.device != device else plan.layout
    out = torch.empty(*lead, lq, hq, d, dtype=query.dtype, device=device)
    chunk = max(1, SCORE_BUDGET // max(1, math.prod(lead) * hq * lk))
    keys_f, values_f = key.float(), value.float()
    for start in range(0, lq, chunk):
        rows = torch.arange(start, min(lq, start + chunk), device=device)
        pos = rows + plan.past
        mask = allowed_keys(pos, layout, lk, selected_cubes_of_queries(plan, selection, rows))  # (..., Hkv, n, Lk)
        # KV heads (of every sequence) act as the batch, their query heads as heads
        chunk_out = torch.nn.functional.scaled_dot_product_attention(
            query[..., rows, :].float().reshape(-1, group, rows.numel(), d),
            keys_f.reshape(-1, 1, lk, d).expand(-1, group, -1, -1),
            values_f.reshape(-1, 1, lk, d).expand(-1, group, -1, -1),
            attn_mask=mask.reshape(-1, 1, rows.numel(), lk),
            scale=scaling,
        )  # (... x Hkv, group, n, D)
        out[..., rows, :, :] = chunk_out.reshape(*lead, hkv, group, -1, d).movedim(-2, -4).reshape(
            *lead, -1, hq, d).to(query.dtype)
    return out
