"""Per-layer counters filled during a prefill: what each layer attended and passed through its FFN.

Counting reads the layer's `Selection` after the attention ran; the kernels never count. Counts are
kept as device tensors while the forward runs and turned into numbers once, when `PrefillStats.layers`
is first read afterwards, so statistics add no host sync per layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..cubes import CubeLayout
from ..cubes.plan import BlockPlan, block_of_query_token, sel_row_of_block
from ..selection import Selection, attended_cubes

# order of the counts in one pending tensor (min/max are reduced with min/max, the rest summed)
_FIELDS = ("video_queries", "cubes_total", "cubes_attended", "cubes_attended_min", "cubes_attended_max",
           "attended_keys", "causal_keys", "scored_cubes", "text_query_keys")


@dataclass
class AttentionStats:
    """Totals over the video queries of one layer (summed over KV heads)."""

    video_queries: int = 0
    kv_heads: int = 0
    cubes_total: int = 0  # sum over (query, kv head) of cubes at or before the query's slab
    cubes_attended: int = 0
    cubes_attended_min: int | None = None
    cubes_attended_max: int | None = None
    attended_keys: int = 0  # sum over (query, kv head)
    causal_keys: int = 0
    scored_cubes: int = 0  # (video query, candidate cube) pairs scored; each costs 2*D FLOPs per query head
    selected_cubes_per_query: list[torch.Tensor] = field(default_factory=list)  # heatmap layer only


@dataclass
class LayerRecord:
    """Counts for one language-model layer over one or more forward calls."""

    layer: int
    sparse: bool = False
    dense_fallback: bool = False  # a sparse layer whose selection was so dense that it ran dense SDPA
    kernel: str | None = None  # the attention implementation of its last sparse call
    queries: int = 0
    text_query_keys: int = 0  # sum over text queries of causal keys (always dense)
    attention: AttentionStats = field(default_factory=AttentionStats)
    ffn_rows: int = 0  # rows that went through the FFN (text + kept video)
    ffn_kept: int = 0  # video rows kept
    ffn_total: int = 0  # video rows
    pending: list[torch.Tensor] = field(default_factory=list, repr=False)
    pending_ffn_kept: list[torch.Tensor] = field(default_factory=list, repr=False)

    def add_ffn(self, *, rows: int, video: int, kept: int | torch.Tensor) -> None:
        """One FFN call: `rows` text rows (always through the FFN), `video` video rows, `kept` of them
        through the FFN (a device count stays pending until settled)."""
        self.ffn_rows += rows
        self.ffn_total += video
        if isinstance(kept, torch.Tensor):
            self.pending_ffn_kept.append(kept.reshape(()).to(torch.long))
        else:
            self.ffn_kept += kept
            self.ffn_rows += kept

    def add_attention(
        self, plan: BlockPlan, selection: Selection | None, kv_heads: int, *, keep_selection: bool = False
    ) -> None:
        """Count one call's queries: video queries from the selection (None: they attended densely)."""
        self.queries += plan.lq
        self.attention.kv_heads = kv_heads
        self.pending.append(attention_counts(plan, selection, kv_heads))
        if keep_selection and selection is not None and not selection.per_block:
            video = plan.layout.slab_of_token.to(selection.cubes.device)[plan.past : plan.lk] >= 0
            self.attention.selected_cubes_per_query.append(selection.cubes[:, video].cpu())

    def settle(self) -> None:
        """Turn the pending device counts into numbers (one host sync for the whole record)."""
        if self.pending_ffn_kept:
            kept = int(torch.stack(self.pending_ffn_kept).sum())
            self.pending_ffn_kept.clear()
            self.ffn_kept += kept
            self.ffn_rows += kept
        if not self.pending:
            return
        rows = torch.stack(self.pending).tolist()
        self.pending.clear()
        a = self.attention
        for row in rows:
            values = dict(zip(_FIELDS, (int(v) for v in row)))
            if values["video_queries"]:
                lo, hi = values["cubes_attended_min"], values["cubes_attended_max"]
                a.cubes_attended_min = lo if a.cubes_attended_min is None else min(lo, a.cubes_attended_min)
                a.cubes_attended_max = hi if a.cubes_attended_max is None else max(hi, a.cubes_attended_max)
            for name in ("video_queries", "cubes_total", "cubes_attended", "attended_keys", "causal_keys", "scored_cubes"):
                setattr(a, name, getattr(a, name) + values[name])
            self.text_query_keys += values["text_query_keys"]


def attention_counts(plan: BlockPlan, selection: Selection | None, kv_heads: int) -> torch.Tensor:
    """(9,) int64 counts of one call in `_FIELDS` order, on the layout's device, without a host sync.

    A video query attends its own slab's cubes plus its selected (or, per block, attended) candidate
    cubes; its attended keys are its causal keys minus the keys of the candidate cubes it skipped
    (candidates lie wholly before it). selection None: every candidate attended (dense).
    """
    layout: CubeLayout = plan.layout
    device = plan.q_pos.device
    pos = torch.arange(plan.past, plan.lk, device=device)
    slab = layout.slab_of_token.to(device)[pos]
    video = slab >= 0
    slab_of_cube = layout.slab_of_cube.to(device)
    cand_count = torch.searchsorted(slab_of_cube, slab.clamp(min=0))  # candidates: a prefix of the cubes
    own = torch.searchsorted(slab_of_cube, slab.clamp(min=0), right=True) - cand_count
    cand_count = torch.where(video, cand_count, 0)
    causal = pos + 1
    if selection is None:
        attended = (cand_count + own)[None].expand(kv_heads, -1)
        skipped_keys = torch.zeros(kv_heads, pos.numel(), dtype=torch.long, device=device)
    else:
        sizes = layout.cube_sizes.to(device)
        cand_keys = torch.cumsum(sizes, 0)
        cand_keys = torch.where(cand_count > 0, cand_keys[(cand_count - 1).clamp(min=0)], 0)
        chosen, chosen_keys = _attended_per_query(plan, selection, sizes)
        attended = chosen + own[None]
        skipped_keys = cand_keys[None] - chosen_keys
    v = video[None].expand(kv_heads, -1)
    big = torch.iinfo(torch.long).max
    return torch.stack([
        video.sum(),
        ((cand_count + own) * video).sum() * kv_heads,
        (attended * v).sum(),
        torch.where(v, attended, big).amin() if pos.numel() else torch.zeros((), dtype=torch.long, device=device),
        torch.where(v, attended, -1).amax() if pos.numel() else torch.zeros((), dtype=torch.long, device=device),
        ((causal[None] - skipped_keys) * v).sum(),
        (causal * video).sum() * kv_heads,
        (cand_count * video).sum(),
        (causal * ~video).sum(),
    ]).to(torch.long)


def _attended_per_query(plan: BlockPlan, selection: Selection, sizes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Hkv, Lq) attended candidate cubes and their keys for each query token; a per-block selection is
    counted per row first (memory O(rows x cubes), not O(tokens x cubes))."""
    cubes = attended_cubes(selection, plan) if selection.per_block else selection.cubes
    n = cubes.sum(-1)
    keys = (cubes.to(torch.float32) @ sizes.to(torch.float32)).round().long()  # exact: sizes sum < 2**24
    if not selection.per_block:
        return n, keys
    row = sel_row_of_block(plan)[block_of_query_token(plan)]  # (Lq,) -1: no candidates
    if cubes.shape[1] == 0:  # no query block has candidates (a video of one slab)
        zeros = torch.zeros(cubes.shape[0], row.numel(), dtype=torch.long, device=row.device)
        return zeros, zeros
    ok = (row >= 0)[None]
    return n[:, row.clamp(min=0)] * ok, keys[:, row.clamp(min=0)] * ok


@dataclass
class PrefillStats:
    """Records of every layer of one prefill (video prefix plus question)."""

    records: dict[int, LayerRecord] = field(default_factory=dict)

    @property
    def layers(self) -> dict[int, LayerRecord]:
        """Every layer's record, its counts settled (the first read after a forward syncs once)."""
        for rec in self.records.values():
            rec.settle()
        return self.records

    def layer(self, idx: int) -> LayerRecord:
        """The record that layer `idx` adds to during a forward (counts may still be pending)."""
        if idx not in self.records:
            self.records[idx] = LayerRecord(layer=idx)
        return self.records[idx]

    def merged_with(self, other: PrefillStats) -> PrefillStats:
        """Counts of both prefills added, layer by layer (prefix + question)."""
        out = PrefillStats()
        for src in (self, other):
            for idx, rec in src.layers.items():
                dst = out.layer(idx)
                dst.sparse = dst.sparse or rec.sparse
                dst.dense_fallback = dst.dense_fallback or rec.dense_fallback
                dst.kernel = dst.kernel or rec.kernel
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
