"""Per-layer counters filled during a prefill: what each layer attended and passed through its FFN."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..attention.reference import AttentionStats
from ..cubes import CubeLayout


@dataclass
class LayerRecord:
    """Counts for one language-model layer over one or more forward calls."""

    layer: int
    sparse: bool = False
    queries: int = 0
    text_query_keys: int = 0  # sum over text queries of causal keys (always dense)
    attention: AttentionStats = field(default_factory=AttentionStats)
    ffn_rows: int = 0  # rows that went through the FFN (text + kept video)
    ffn_kept: int = 0  # video rows kept
    ffn_total: int = 0  # video rows

    def add_queries(self, query_pos: torch.Tensor, layout: CubeLayout | None) -> None:
        """Count queries and the dense keys of the text queries among them."""
        self.queries += int(query_pos.numel())
        if layout is None:
            self.text_query_keys += int((query_pos + 1).sum())
            return
        slab = layout.slab_of_token.to(query_pos.device)[query_pos]
        self.text_query_keys += int((query_pos[slab < 0] + 1).sum())

    def add_dense_video_queries(self, query_pos: torch.Tensor, layout: CubeLayout, kv_heads: int) -> None:
        """Video queries that attended densely: every causal key, every cube up to their slab."""
        slab_of_token = layout.slab_of_token.to(query_pos.device)
        slab = slab_of_token[query_pos]
        v = slab >= 0
        if not bool(v.any()):
            return
        slab_of_cube = layout.slab_of_cube.to(query_pos.device)
        total = (slab_of_cube[None, :] <= slab[v][:, None]).sum(-1)  # (n,)
        keys = (query_pos[v] + 1)[None].expand(kv_heads, -1)
        self.attention.add(total[None].expand(kv_heads, -1), total, keys, query_pos[v] + 1, 0)


@dataclass
class PrefillStats:
    """Records of every layer of one prefill (video prefix plus question)."""

    layers: dict[int, LayerRecord] = field(default_factory=dict)

    def layer(self, idx: int) -> LayerRecord:
        if idx not in self.layers:
            self.layers[idx] = LayerRecord(layer=idx)
        return self.layers[idx]

    def merged_with(self, other: PrefillStats) -> PrefillStats:
        """Counts of both prefills added, layer by layer (prefix + question)."""
        out = PrefillStats()
        for src in (self, other):
            for idx, rec in src.layers.items():
                dst = out.layer(idx)
                dst.sparse = dst.sparse or rec.sparse
                dst.queries += rec.queries
                dst.text_query_keys += rec.text_query_keys
                dst.ffn_rows += rec.ffn_rows
                dst.ffn_kept += rec.ffn_kept
                dst.ffn_total += rec.ffn_total
                a, b = dst.attention, rec.attention
                a.video_queries += b.video_queries
                a.kv_heads = a.kv_heads or b.kv_heads
                a.cubes_total += b.cubes_total
                a.cubes_attended += b.cubes_attended
                for name, pick in (("cubes_attended_min", min), ("cubes_attended_max", max)):
                    x, y = getattr(a, name), getattr(b, name)
                    setattr(a, name, y if x is None else x if y is None else pick(x, y))
                a.attended_keys += b.attended_keys
                a.causal_keys += b.causal_keys
                a.scored_cubes += b.scored_cubes
        return out
