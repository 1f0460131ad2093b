"""Dense attention for a few queries over a long cache: a question's prefill after the video (CUDA).

transformers' SDPA path, given a mask, repeats every KV head for its query heads first (7 copies of
the whole cache at Qwen2.5-VL-7B's 28 / 4 heads): a second question's prefill at 64K video tokens
took 0.8-1.1 s (H200, 2026-12-01). Here the group's query heads share their KV head through the batch
of one matrix product: each cached key and value is read once and the scores (few queries x keys)
are small: the same prefill took 45-83 ms. For a single decode step it measured slower than SDPA
without a mask (71 against 56 ms at 64K; its long reduction over the keys is a skinny GEMM), so decode
steps do not use it.
"""

from __future__ import annotations

import torch

MAX_QUERIES = 64  # beyond this the scores (Hq x queries x keys) outgrow what a flash kernel keeps on chip


def attention_small_query(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None, scaling: float
) -> torch.Tensor:
    """query: (Hq, n, D) for the last n positions; key, value: (Hkv, L, D); mask: (n, L) bool (True:
    attend) or None for causal. Returns (n, Hq, D) in query's dtype; scores and softmax in float32."""
    hq, n, d = query.shape
    hkv, length, _ = key.shape
    group = hq // hkv
    if mask is None:
        positions = torch.arange(length, device=query.device)
        mask = positions[None, :] <= positions[length - n :, None]
    q = query.reshape(hkv, group * n, d)  # rows (head in group, query)
    if query.device.type == "cuda":
        scores = torch.bmm(q, key.transpose(1, 2), out_dtype=torch.float32)
    else:
        scores = torch.bmm(q.float(), key.float().transpose(1, 2))
    scores = (scores * scaling).masked_fill_(~mask.repeat(group, 1)[None], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    out = torch.bmm(probs.to(value.dtype), value)  # (Hkv, G*n, D)
    return out.reshape(hq, n, d).transpose(0, 1)
