"""Block-gathered AdaS-Attn: the CPU fast path (same signature and function as `attention_reference`).

Per KV head and query tile of the plan, the key tiles its block structure allows are gathered and one
SDPA call runs on them; tiles that need the causal mask get it from original positions. The work is
proportional to the attended keys, and memory to one tile's keys, never to tokens squared (the masked
reference holds chunk x Lk scores).
"""

from __future__ import annotations

import torch

from ..cubes.plan import BlockPlan, permute, unpermute
from ..selection import Selection, block_structure


def attention_gathered(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    plan: BlockPlan,
    selection: Selection,
    scaling: float,
) -> torch.Tensor:
    """Returns (Lq, Hq, D) in query's dtype."""
    hq, _, d = query.shape
    hkv = key.shape[0]
    group = hq // hkv
    b = plan.block
    q_perm, k_perm, v_perm = permute(plan, query, key, value)
    full, partial = block_structure(plan, selection)
    k_tiles, v_tiles = k_perm.view(hkv, -1, b, d), v_perm.view(hkv, -1, b, d)
    q_pos, kv_pos = plan.q_pos.view(-1, b), plan.kv_pos.view(-1, b)
    out = q_perm.new_zeros(hq, q_perm.shape[1], d)
    allowed = (full | partial).cpu()  # the loop below reads it on the host
    for h in range(hkv):
        heads = slice(h * group, (h + 1) * group)
        for qb in range(plan.q.num_blocks):
            tiles = allowed[h, qb].nonzero().squeeze(1).to(query.device)
            if tiles.numel() == 0:  # a tile of padding only
                continue
            causal = kv_pos[tiles][None] <= q_pos[qb][:, None, None]  # (B, n, B) in original positions
            mask = full[h, qb, tiles][None, :, None] | causal
            rows = slice(qb * b, (qb + 1) * b)
            out[heads, rows] = torch.nn.functional.scaled_dot_product_attention(
                q_perm[heads, rows],
                k_tiles[h, tiles].reshape(1, -1, d),
                v_tiles[h, tiles].reshape(1, -1, d),
                attn_mask=mask.reshape(b, -1)[None],
                scale=scaling,
            ).nan_to_num(0.0)  # padded query rows have no key
    return unpermute(plan, out)
