"""Qwen2.5-VL multimodal RoPE position ids, computed the way the original model was trained.

transformers 5.x advances the text counter after a video by max(H', W') (see
docs/architecture.md), so the question after a long video gets positions that overlap the video's
temporal positions; the official Qwen2.5-VL code (and transformers 4.57) starts the next text at
max(previous positions) + 1. We compute the official rule ourselves and pass the ids explicitly,
which also avoids 5.17's truncation of fractional seconds-per-grid.
"""

from __future__ import annotations

import torch

from ..cubes import video_spans


def mrope_position_ids(
    mm_token_type_ids: torch.Tensor,
    video_grid_thw: torch.Tensor,
    second_per_grid_ts: torch.Tensor | list[float] | None,
    *,
    spatial_merge_size: int,
    tokens_per_second: float,
) -> tuple[torch.Tensor, int]:
    """Position ids (3, seq_len) int64 (time, height, width) and the decode delta.

    mm_token_type_ids: (seq_len,) 0 text, 2 video. Video token (t, h, w) of a video starting at text
    counter p gets (p + floor(t * tokens_per_second * seconds_per_grid), p + h, p + w); text after it
    resumes at max + 1. delta = max position + 1 - seq_len, so that a decode step at cache length n
    has position n + delta on all three axes.
    """
    types = mm_token_type_ids.flatten()
    seq_len = types.numel()
    spans = video_spans(types, video_grid_thw, spatial_merge_size)
    if second_per_grid_ts is None:
        seconds = [1.0] * len(spans)
    else:
        seconds = [float(s) for s in torch.as_tensor(second_per_grid_ts).flatten()]
    pos = torch.zeros(3, seq_len, dtype=torch.long)
    next_pos = 0
    cursor = 0
    for span, sec in zip(spans, seconds):
        n_text = span.start - cursor
        pos[:, cursor : span.start] = torch.arange(next_pos, next_pos + n_text)
        next_pos += n_text
        t, h, w = span.grid
        tt = (torch.arange(t, dtype=torch.float64) * tokens_per_second * sec).long()
        grid_t, grid_h, grid_w = torch.meshgrid(tt, torch.arange(h), torch.arange(w), indexing="ij")
        pos[:, span.start : span.end] = torch.stack([grid_t.flatten(), grid_h.flatten(), grid_w.flatten()]) + next_pos
        next_pos = int(pos[:, span.start : span.end].max()) + 1
        cursor = span.end
    pos[:, cursor:] = torch.arange(next_pos, next_pos + seq_len - cursor)
    delta = int(pos.max()) + 1 - seq_len if seq_len else 0
    return pos, delta
