"""Exact reference AdaS-Attn: per query token, top-p over preceding cubes (method.md section 2).

For a video query q in time slab s:
  - candidate cubes: every cube of an earlier slab (earlier frames, or an earlier video);
  - P = mean over the KV group's query heads of softmax_j(q . kbar_j * scale) over the candidates;
  - attended keys: all text keys, every key of q's own slab (this holds q's own cube; the slab's
    other cubes share q's frames and are kept too, so selection never looks at a future token),
    and every key of the nucleus (top-p) cubes of P; always causal in original token order.
Text queries attend densely. Queries are processed in chunks so that memory stays bounded by
``chunk x Lk`` scores rather than an Lq x Lk mask.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..cubes import CubeLayout
from .selection import cube_mean_keys, cube_probabilities, nucleus_mask

# Scores of one chunk hold Hq x chunk x Lk floats; 2**24 keeps a chunk near 64 MB in float32.
SCORE_BUDGET = 1 << 24


@dataclass
class AttentionStats:
    """Totals over the video queries of one forward call (summed over KV heads)."""

    video_queries: int = 0
    kv_heads: int = 0
    cubes_total: int = 0  # sum over (query, kv head) of cubes at or before the query's slab
    cubes_attended: int = 0
    cubes_attended_min: int | None = None
    cubes_attended_max: int | None = None
    attended_keys: int = 0  # sum over (query, kv head)
    causal_keys: int = 0
    scored_cubes: int = 0  # (video query, candidate cube) pairs scored; each costs 2*D FLOPs per query head
    selected_cubes_per_query: list[torch.Tensor] = field(default_factory=list)

    def add(self, attended: torch.Tensor, total: torch.Tensor, keys: torch.Tensor, causal: torch.Tensor, scored: int) -> None:
        """attended/keys: (Hkv, n) per head and query; total/causal: (n,) per query."""
        hkv, n = attended.shape
        if n == 0:
            return
        self.add_counts(
            queries=n,
            kv_heads=hkv,
            cubes_total=int(total.sum()) * hkv,
            cubes_attended=int(attended.sum()),
            attended_min=int(attended.min()),
            attended_max=int(attended.max()),
            attended_keys=int(keys.sum()),
            causal_keys=int(causal.sum()) * hkv,
            scored=scored,
        )

    def add_counts(
        self,
        *,
        queries: int,
        kv_heads: int,
        cubes_total: int,
        cubes_attended: int,
        attended_min: int,
        attended_max: int,
        attended_keys: int,
        causal_keys: int,
        scored: int,
    ) -> None:
        """Add totals (summed over KV heads) of `queries` video queries."""
        if queries == 0:
            return
        self.video_queries += queries
        self.kv_heads = kv_heads
        self.cubes_total += cubes_total
        self.cubes_attended += cubes_attended
        lo, hi = attended_min, attended_max
        self.cubes_attended_min = lo if self.cubes_attended_min is None else min(lo, self.cubes_attended_min)
        self.cubes_attended_max = hi if self.cubes_attended_max is None else max(hi, self.cubes_attended_max)
        self.attended_keys += attended_keys
        self.causal_keys += causal_keys
        self.scored_cubes += scored


def allowed_keys(
    query_pos: torch.Tensor, layout: CubeLayout, num_keys: int, selected: torch.Tensor | None
) -> torch.Tensor:
    """Boolean key mask for a chunk of queries.

    query_pos: (n,) absolute positions. selected: (Hkv, n, C) chosen cubes, or None for dense.
    Returns (Hkv or 1, n, num_keys) bool.
    """
    key_pos = torch.arange(num_keys, device=query_pos.device)
    causal = key_pos[None, :] <= query_pos[:, None]  # (n, Lk)
    if selected is None:
        return causal[None]
    # Decide per cube first, then expand to keys with one gather: text keys use an extra
    # always-true column; text queries allow every cube.
    query_slab = layout.slab_of_token[query_pos]
    own_slab = (layout.slab_of_cube[None, :] == query_slab[:, None]) | (query_slab < 0)[:, None]  # (n, C)
    always = torch.ones(*selected.shape[:2], 1, dtype=torch.bool, device=selected.device)
    cube_ok = torch.cat([selected | own_slab[None], always], dim=-1)  # (Hkv, n, C + 1)
    key_cube = layout.cube_of_token[:num_keys]
    column = torch.where(key_cube >= 0, key_cube, layout.num_cubes)
    return cube_ok[:, :, column] & causal[None]


def adas_attention_reference(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    layout: CubeLayout,
    *,
    top_p: float,
    scaling: float,
    stats: AttentionStats | None = None,
    keep_selection: bool = False,
) -> torch.Tensor:
    """AdaS-Attn for one sequence.

    query: (Hq, Lq, D) for positions [Lk - Lq, Lk); key, value: (Hkv, Lk, D), RoPE applied.
    Returns (Lq, Hq, D) in query's dtype.
    """
    hq, lq, d = query.shape
    hkv, lk, _ = key.shape
    group = hq // hkv
    past = lk - lq
    device = query.device
    layout = layout.to(device) if layout.cube_of_token.device != device else layout
    mean_keys = cube_mean_keys(key, layout)  # (Hkv, C, D)
    out = torch.empty(lq, hq, d, dtype=query.dtype, device=device)
    chunk = max(1, SCORE_BUDGET // max(1, hq * lk))
    keys_f, values_f = key.float(), value.float()
    for start in range(0, lq, chunk):
        pos = torch.arange(past + start, past + min(lq, start + chunk), device=device)
        q = query[:, pos - past]  # (Hq, n, D)
        q_slab = layout.slab_of_token[pos]
        is_video_q = q_slab >= 0
        candidates = (layout.slab_of_cube[None, :] < q_slab[:, None]) & is_video_q[:, None]  # (n, C)
        probs = cube_probabilities(q, mean_keys, candidates, scaling)
        selected = nucleus_mask(probs, top_p, candidates[None].expand(hkv, -1, -1))
        mask = allowed_keys(pos, layout, lk, selected)  # (Hkv, n, Lk)
        # Masked softmax attention in float32; KV heads act as the batch, their query heads as heads.
        chunk_out = torch.nn.functional.scaled_dot_product_attention(
            q.float().reshape(hkv, group, -1, d),
            keys_f[:, None].expand(-1, group, -1, -1),
            values_f[:, None].expand(-1, group, -1, -1),
            attn_mask=mask[:, None],
            scale=scaling,
        )  # (Hkv, group, n, D)
        out[pos - past] = chunk_out.permute(2, 0, 1, 3).reshape(-1, hq, d).to(query.dtype)
        if stats is not None:
            v = is_video_q
            own_slab_cubes = (layout.slab_of_cube[None, :] == q_slab[:, None]).sum(-1)  # (n,)
            total = candidates.sum(-1) + own_slab_cubes
            attended = selected.sum(-1) + own_slab_cubes[None]
            stats.add(
                attended[:, v], total[v], mask[:, v].sum(-1), (pos[v] + 1), int(candidates[v].sum())
            )
            if keep_selection:
                stats.selected_cubes_per_query.append(selected[:, v].cpu())
    return out
