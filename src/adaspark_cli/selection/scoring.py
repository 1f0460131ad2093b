"""Cube scoring and top-p (nucleus) math for AdaS-Attn (method.md section 2): the one place it lives."""

from __future__ import annotations

import torch

from ..cubes import CubeLayout


def nucleus_mask(probs: torch.Tensor, top_p: float, candidates: torch.Tensor) -> torch.Tensor:
    """The fewest candidates, highest probability first, whose mass reaches top_p.

    probs: (..., n) non-negative, zero outside `candidates`. candidates: (..., n) bool.
    Returns (..., n) bool, a subset of candidates. top_p >= 1 keeps every candidate, so that p = 1
    reproduces dense attention even where a probability underflowed to zero.
    """
    if top_p >= 1.0:
        return candidates.clone()
    sorted_p, order = torch.sort(probs, dim=-1, descending=True, stable=True)
    mass_before = torch.cumsum(sorted_p, dim=-1) - sorted_p
    keep_sorted = mass_before < top_p  # the entry that crosses top_p is kept
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    return keep & candidates


def cube_mean_keys(key: torch.Tensor, layout: CubeLayout) -> torch.Tensor:
    """Mean key of every cube, after RoPE (what attention sees).

    key: (..., Hkv, Lk, D) with Lk >= the layout's last video token (a leading batch dim: sequences sharing
    the layout). Returns (..., Hkv, num_cubes, D) float32.
    """
    lk, d = key.shape[-2:]
    cube_ids = layout.cube_of_token[:lk]
    video = (cube_ids >= 0).nonzero().squeeze(1)
    sums = torch.zeros(*key.shape[:-2], layout.num_cubes, d, dtype=torch.float32, device=key.device)
    sums.index_add_(-2, cube_ids[video], key.index_select(-2, video).float())
    counts = torch.bincount(cube_ids[video], minlength=layout.num_cubes).clamp(min=1)
    return sums / counts.to(sums.dtype)[:, None]


def cube_probabilities(
    query: torch.Tensor, mean_keys: torch.Tensor, candidates: torch.Tensor, scaling: float
) -> torch.Tensor:
    """Relevance distribution over candidate cubes, averaged over the query heads of each KV group.

    query: (..., Hq, Lq, D); mean_keys: (..., Hkv, C, D); candidates: (Lq, C) bool.
    Returns (..., Hkv, Lq, C) float32; a row with no candidate is all zero.
    """
    *lead, hq, lq, d = query.shape
    hkv = mean_keys.shape[-3]
    q = query.float().reshape(*lead, hkv, hq // hkv, lq, d)
    logits = torch.einsum("...kgqd,...kcd->...kgqc", q, mean_keys) * scaling
    logits = logits.masked_fill(~candidates, float("-inf"))
    probs = torch.softmax(logits, dim=-1).nan_to_num(0.0)  # all -inf row -> zeros
    return probs.mean(dim=-3)
