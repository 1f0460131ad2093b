"""AdaS-Attn for decode steps: an answer token attends its top-p cubes of the cached video (issue 4, part 3).

A decode query comes after every video token, so the prefill's rule (method.md section 2) applies with
every cube of the video as a candidate and no own slab (nothing of the video is in its future):
  - score: P = mean over the KV group's query heads of softmax_j(q . kbar_j * scale), with the cube
    mean keys kbar taken after RoPE from the cached keys once, after the video prefill
    (`video_cube_keys`), and kept beside the cache;
  - select: the nucleus (top-p) of P, by the prefill's own `cube_probabilities` and `nucleus_mask`;
  - attend: the selected cubes' keys plus every non-video key (system prompt, text between videos,
    question, earlier answer tokens), causally.

Two implementations, tested equal on random inputs:
  - `decode_attention_reference`: masked float32 attention over all keys, any number of queries
    after the video (the test oracle);
  - `decode_attention_gathered`: one query (a decode step); each KV head's kept key/value rows are
    gathered by index and a single SDPA call attends them, with the KV group's query heads as the
    queries of one head, so the gathered rows are read once per KV head.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ..cubes import CubeLayout
from ..errors import AdasparkError
from ..selection.scoring import cube_mean_keys, cube_probabilities, nucleus_mask


@dataclass
class DecodeStats:
    """Totals over the sparse decode attention calls (one per layer and step), summed over KV heads."""

    calls: int = 0  # (decode query, sparse layer) pairs
    kv_heads: int = 0
    cubes_total: int = 0  # sum over (query, layer, KV head) of the video's cubes
    cubes_attended: int = 0
    attended_keys: int = 0  # sum over (query, layer, KV head)
    causal_keys: int = 0

    def add(self, cubes_attended: int, attended_keys: int, *, queries: int, kv_heads: int, num_cubes: int, causal_keys: int) -> None:
        """Counts of `queries` decode queries of one layer; cubes_attended / attended_keys summed over KV heads."""
        self.calls += queries
        self.kv_heads = kv_heads
        self.cubes_total += queries * kv_heads * num_cubes
        self.cubes_attended += cubes_attended
        self.attended_keys += attended_keys
        self.causal_keys += causal_keys * kv_heads

    def add_dense(self, *, kv_heads: int, num_cubes: int, num_keys: int) -> None:
        """One decode query of one layer that attended every key (p = 1)."""
        self.add(kv_heads * num_cubes, kv_heads * num_keys, queries=1, kv_heads=kv_heads, num_cubes=num_cubes, causal_keys=num_keys)

    def to_json(self, *, top_p: float | None, steps: int, num_cubes: int) -> dict[str, Any]:
        """The `decode` object of `ask --json`. Dense decoding (top_p None) attends every cube."""
        n = self.calls * max(1, self.kv_heads)
        sparse = top_p is not None and self.calls > 0
        return {
            "sparse": top_p is not None,
            "top_p": top_p,
            "steps": steps,
            "cubes_total": num_cubes,
            "cubes_attended_mean": self.cubes_attended / n if sparse else float(num_cubes),
            "attn_density": self.attended_keys / self.causal_keys if sparse and self.causal_keys else 1.0,
        }


@dataclass
class VideoCubeKeys:
    """Cube mean keys of a prefilled video, per sparse layer: (Hkv, C, D) float32, after RoPE.

    Computed once from the prefix cache (whose video keys never change) and shared by every question
    that decodes from a copy of that cache.
    """

    layout: CubeLayout
    mean_keys: dict[int, torch.Tensor] = field(default_factory=dict)


@dataclass
class DecodeContext:
    """What a sparse decode step reads (set on the SparseState for the step's forward call)."""

    video: VideoCubeKeys
    top_p: float
    stats: DecodeStats | None = None


def video_cube_keys(layer_keys: Mapping[int, torch.Tensor], layout: CubeLayout) -> VideoCubeKeys:
    """Cube mean keys from each layer's cached keys, (1, Hkv, Lk, D) with Lk >= layout.seq_len."""
    layout = layout.to(next(iter(layer_keys.values())).device) if layer_keys else layout
    means = {}
    for layer, keys in layer_keys.items():
        if keys.dim() != 4 or keys.shape[0] != 1 or keys.shape[2] < layout.seq_len:
            raise AdasparkError(
                f"layer {layer}: cached keys of shape {tuple(keys.shape)} do not hold the video prefix of "
                f"{layout.seq_len} tokens (batch 1); prefill the video before decoding"
            )
        means[layer] = cube_mean_keys(keys[0, :, : layout.seq_len], layout)
    return VideoCubeKeys(layout=layout, mean_keys=means)


def select_decode_cubes(query: torch.Tensor, mean_keys: torch.Tensor, *, top_p: float, scaling: float) -> torch.Tensor:
    """Nucleus cubes of queries after the video, one set per KV group.

    query: (Hq, Lq, D); mean_keys: (Hkv, C, D). Returns (Hkv, Lq, C) bool.
    """
    hkv, num_cubes = mean_keys.shape[:2]
    candidates = torch.ones(query.shape[1], num_cubes, dtype=torch.bool, device=query.device)  # every cube is in the past
    probs = cube_probabilities(query, mean_keys, candidates, scaling)
    return nucleus_mask(probs, top_p, candidates[None].expand(hkv, -1, -1))


def kept_keys(selected: torch.Tensor, layout: CubeLayout, num_keys: int) -> torch.Tensor:
    """(Hkv, Lq, num_keys) bool: keys of the selected cubes and every non-video key (causality not applied)."""
    # one extra always-true column for text keys, then one gather from cubes to keys
    always = torch.ones(*selected.shape[:2], 1, dtype=torch.bool, device=selected.device)
    cube_ok = torch.cat([selected, always], dim=-1)
    key_cube = torch.full((num_keys,), layout.num_cubes, dtype=torch.long, device=selected.device)
    prefix_cube = layout.cube_of_token.to(selected.device)
    key_cube[: layout.seq_len] = torch.where(prefix_cube >= 0, prefix_cube, layout.num_cubes)
    return cube_ok[:, :, key_cube]


def _check_after_video(lq: int, lk: int, layout: CubeLayout) -> None:
    if lk - lq < layout.seq_len:
        raise AdasparkError(
            f"decode attention needs queries after the video prefix ({layout.seq_len} tokens); the first query "
            f"is at position {lk - lq}"
        )


def decode_attention_reference(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    layout: CubeLayout,
    mean_keys: torch.Tensor,
    *,
    top_p: float,
    scaling: float,
    stats: DecodeStats | None = None,
) -> torch.Tensor:
    """Exact decode AdaS-Attn by a masked attention over all keys, in float32.

    query: (Hq, Lq, D) for positions [Lk - Lq, Lk), all after the video; key, value: (Hkv, Lk, D), RoPE
    applied; mean_keys: (Hkv, C, D) of the video's cubes. Returns (Lq, Hq, D) in query's dtype.
    """
    hq, lq, d = query.shape
    hkv, lk, _ = key.shape
    group = hq // hkv
    _check_after_video(lq, lk, layout)
    selected = select_decode_cubes(query, mean_keys, top_p=top_p, scaling=scaling)  # (Hkv, Lq, C)
    pos = torch.arange(lk - lq, lk, device=query.device)
    causal = torch.arange(lk, device=query.device)[None, :] <= pos[:, None]  # (Lq, Lk)
    mask = kept_keys(selected, layout, lk) & causal[None]  # (Hkv, Lq, Lk)
    # KV heads act as the batch, their query heads as heads
    out = torch.nn.functional.scaled_dot_product_attention(
        query.float().reshape(hkv, group, lq, d),
        key.float()[:, None].expand(-1, group, -1, -1),
        value.float()[:, None].expand(-1, group, -1, -1),
        attn_mask=mask[:, None],
        scale=scaling,
    )  # (Hkv, group, Lq, D)
    if stats is not None:
        stats.add(
            int(selected.sum()),
            int(mask.sum()),
            queries=lq,
            kv_heads=hkv,
            num_cubes=layout.num_cubes,
            causal_keys=int((pos + 1).sum()),
        )
    return out.permute(2, 0, 1, 3).reshape(lq, hq, d).to(query.dtype)


def gather_index(keep: torch.Tensor, counts: torch.Tensor, counts_host: list[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Positions of each row's kept keys, in order, padded to the longest row.

    keep: (Hkv, Lk) bool; counts: its row sums, on the device and (counts_host) on the host. Returns
    index (Hkv, W) long and, when the rows differ in length, valid (Hkv, W) bool (padded slots point
    at key 0 and must be masked).
    """
    hkv, lk = keep.shape
    width = max(counts_host)
    slot = torch.cumsum(keep, dim=-1) - 1
    slot = torch.where(keep, slot, width)  # dropped keys land in a spare last column
    index = torch.zeros(hkv, width + 1, dtype=torch.long, device=keep.device)
    index.scatter_(1, slot, torch.arange(lk, device=keep.device).expand(hkv, -1))
    index = index[:, :width]
    if min(counts_host) == width:
        return index, None
    return index, torch.arange(width, device=keep.device)[None, :] < counts[:, None]


def decode_attention_gathered(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    layout: CubeLayout,
    mean_keys: torch.Tensor,
    *,
    top_p: float,
    scaling: float,
    stats: DecodeStats | None = None,
) -> torch.Tensor:
    """Decode AdaS-Attn for one query: select its cubes, gather each KV head's kept rows, one SDPA call.

    Same arguments and result as `decode_attention_reference` with Lq = 1, computed in query's dtype.
    Costs one host synchronisation (the gathered length) per call.
    """
    if query.shape[1] != 1:
        raise AdasparkError(f"the gathered decode attention takes one query, got {query.shape[1]}")
    _check_after_video(1, key.shape[1], layout)
    selected = select_decode_cubes(query, mean_keys, top_p=top_p, scaling=scaling)  # (Hkv, 1, C)
    return attend_selected_gathered(query, key, value, layout, selected[:, 0], scaling=scaling, stats=stats)


def attend_selected_gathered(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    layout: CubeLayout,
    selected: torch.Tensor,
    *,
    scaling: float,
    stats: DecodeStats | None = None,
) -> torch.Tensor:
    """One query after the video attends, per KV head, the `selected` (Hkv, C) cubes plus every text key.

    query: (Hq, 1, D); key, value: (Hkv, Lk, D). Returns (1, Hq, D) in query's dtype.
    """
    hq, _, d = query.shape
    hkv, lk, _ = key.shape
    group = hq // hkv
    keep = kept_keys(selected[:, None], layout, lk)[:, 0]  # (Hkv, Lk); causal already: every key precedes the query
    counts = keep.sum(-1)
    sizes = torch.stack([counts, selected.sum(-1)]).tolist()  # the call's one host sync
    index, valid = gather_index(keep, counts, sizes[0])
    rows = index[..., None].expand(-1, -1, d)
    k_kept = torch.gather(key, 1, rows)[:, None]  # (Hkv, 1, W, D)
    v_kept = torch.gather(value, 1, rows)[:, None]
    # the group's query heads become the queries of one head: each KV head's rows are read once
    q = query.reshape(hkv, 1, group, d)
    mask = None if valid is None else valid[:, None, None, :]
    out = torch.nn.functional.scaled_dot_product_attention(q, k_kept, v_kept, attn_mask=mask, scale=scaling)
    if stats is not None:
        stats.add(sum(sizes[1]), sum(sizes[0]), queries=1, kv_heads=hkv, num_cubes=layout.num_cubes, causal_keys=lk)
    return out.reshape(1, hq, d)
