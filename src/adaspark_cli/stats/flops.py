"""Analytic prefill FLOPs of the language model, dense and sparse (method.md section 5).

A multiply-add counts 2 FLOPs. Per layer and query token:
  rest      = q, k, v, o projections 2*h*(2*Hq*D + 2*Hkv*D) + two RMSNorms (~4*h each)
  attention = 4*D per (query head, attended key): scores q.k and the weighted sum of values
  ffn       = 6*h*I per row through the SwiGLU MLP (gate, up, down)
  scoring   = sparse overhead: cube mean keys (Hkv*D adds per video key), cube scores
              (2*D per query head and candidate cube), token norms (2*h) and mean compensation (2*h)
              per video row.
The lm_head runs once per prefill (on the last token): 2*h*V, counted in rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .collect import LayerRecord, PrefillStats


@dataclass(frozen=True)
class ModelDims:
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    layers: int

    @classmethod
    def from_text_config(cls, cfg: Any) -> ModelDims:
        heads = cfg.num_attention_heads
        # an MoE layer (Qwen3-VL-MoE) runs num_experts_per_tok experts of moe_intermediate_size per row
        # (the router's 2h x experts and mlp_only_layers are left out)
        per_tok, moe_size = getattr(cfg, "num_experts_per_tok", None), getattr(cfg, "moe_intermediate_size", None)
        return cls(
            hidden=cfg.hidden_size,
            heads=heads,
            kv_heads=cfg.num_key_value_heads,
            head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // heads,
            intermediate=per_tok * moe_size if per_tok and moe_size else cfg.intermediate_size,
            vocab=cfg.vocab_size,
            layers=cfg.num_hidden_layers,
        )


@dataclass(frozen=True)
class Flops:
    attention: float = 0.0
    ffn: float = 0.0
    rest: float = 0.0
    scoring: float = 0.0

    @property
    def total(self) -> float:
        return self.attention + self.ffn + self.rest + self.scoring

    def __add__(self, other: Flops) -> Flops:
        return Flops(
            self.attention + other.attention,
            self.ffn + other.ffn,
            self.rest + other.rest,
            self.scoring + other.scoring,
        )

    def to_dict(self) -> dict[str, float]:
        return {"attention": self.attention, "ffn": self.ffn, "rest": self.rest, "scoring": self.scoring, "total": self.total}


def rest_flops(queries: int, d: ModelDims) -> float:
    return queries * (2.0 * d.hidden * (2 * d.heads * d.head_dim + 2 * d.kv_heads * d.head_dim) + 8.0 * d.hidden)


def layer_flops(rec: LayerRecord, d: ModelDims, *, sparse: bool) -> Flops:
    """FLOPs of one layer's recorded prefill; sparse=False gives the dense model on the same input."""
    a = rec.attention
    group = d.heads // d.kv_heads
    video_causal_keys = a.causal_keys / max(1, a.kv_heads)  # per query head group
    rest = rest_flops(rec.queries, d)
    text_attn = 4.0 * d.head_dim * d.heads * rec.text_query_keys
    if not (sparse and rec.sparse):
        return Flops(
            attention=text_attn + 4.0 * d.head_dim * d.heads * video_causal_keys,
            ffn=6.0 * d.hidden * d.intermediate * rec.queries,
            rest=rest,
        )
    scoring = (
        2.0 * d.head_dim * d.heads * a.scored_cubes + d.kv_heads * d.head_dim * rec.ffn_total + 4.0 * d.hidden * rec.ffn_total
    )
    return Flops(
        attention=text_attn + 4.0 * d.head_dim * group * a.attended_keys,
        ffn=6.0 * d.hidden * d.intermediate * rec.ffn_rows,
        rest=rest,
        scoring=scoring,
    )


def prefill_flops(stats: PrefillStats, d: ModelDims) -> tuple[Flops, Flops]:
    """(dense, sparse) FLOPs of a whole prefill, including one lm_head row."""
    head = Flops(rest=2.0 * d.hidden * d.vocab)
    dense = sum((layer_flops(r, d, sparse=False) for r in stats.layers.values()), head)
    sparse = sum((layer_flops(r, d, sparse=True) for r in stats.layers.values()), head)
    return dense, sparse


def reduction(dense: Flops, sparse: Flops) -> float:
    """Fraction of dense FLOPs saved (0.57 = 57% fewer)."""
    return 0.0 if dense.total == 0 else 1.0 - sparse.total / dense.total


def flops_summary(stats: PrefillStats, d: ModelDims) -> dict[str, Any]:
    """The `flops` object of `ask --json` and `profile --json`: dense and sparse totals per part, the reduction."""
    dense, sparse = prefill_flops(stats, d)
    return {"dense": dense.to_dict(), "sparse": sparse.to_dict(), "reduction": reduction(dense, sparse)}
