"""AdaS-FFN: per-cube top-p token selection with mean compensation (method.md section 3).

Within each cube the FFN inputs' L2 norms, divided by their sum, form a distribution; the nucleus
(top-p) of it goes through the FFN, at least one token per cube. Every skipped token of a cube gets
the mean FFN output of that cube's kept tokens. Text tokens always go through the FFN.

Two implementations with identical results: `adas_ffn_reference` runs the FFN on every row and then
overwrites the skipped rows (obviously correct, no savings); `adas_ffn_gathered` runs it on the kept
rows only and scatters back (the one that saves FLOPs).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

FFN = Callable[[torch.Tensor], torch.Tensor]


def select_ffn_tokens(norms: torch.Tensor, cube_ids: torch.Tensor, num_cubes: int, top_p: float) -> torch.Tensor:
    """Kept mask over video tokens: per cube, the fewest highest-norm tokens whose share reaches top_p.

    norms: (N,) L2 norms; cube_ids: (N,) cube of each token in [0, num_cubes). Returns (N,) bool.
    """
    if top_p >= 1.0 or norms.numel() == 0:
        return torch.ones_like(norms, dtype=torch.bool)
    norms = norms.float()
    by_norm = torch.argsort(norms, descending=True, stable=True)
    order = by_norm[torch.argsort(cube_ids[by_norm], stable=True)]  # grouped by cube, norm descending
    sorted_norms, sorted_cubes = norms[order], cube_ids[order]
    cube_sum = torch.zeros(num_cubes, dtype=norms.dtype, device=norms.device).index_add_(0, cube_ids, norms)
    share = sorted_norms / cube_sum[sorted_cubes].clamp(min=torch.finfo(norms.dtype).tiny)
    running = torch.cumsum(share, 0)
    cube_start = torch.cumsum(torch.bincount(cube_ids, minlength=num_cubes), 0) - torch.bincount(cube_ids, minlength=num_cubes)
    offset = (running - share)[cube_start.clamp(max=max(0, running.numel() - 1))]  # cumsum before each cube
    share_before = running - share - offset[sorted_cubes]
    keep_sorted = share_before < top_p  # first token of each cube has 0 before it: always kept
    return torch.zeros_like(keep_sorted).scatter(0, order, keep_sorted)


def cube_mean_of_kept(ffn_out: torch.Tensor, cube_ids: torch.Tensor, keep: torch.Tensor, num_cubes: int) -> torch.Tensor:
    """(num_cubes, D) mean FFN output over each cube's kept tokens; ffn_out: (N_kept, D) rows of the kept tokens."""
    kept_cubes = cube_ids[keep]
    sums = torch.zeros(num_cubes, ffn_out.shape[-1], dtype=torch.float32, device=ffn_out.device)
    sums.index_add_(0, kept_cubes, ffn_out.float())
    counts = torch.bincount(kept_cubes, minlength=num_cubes).clamp(min=1)
    return sums / counts[:, None].to(sums.dtype)


def adas_ffn_reference(
    ffn: FFN, x: torch.Tensor, token_cube: torch.Tensor, num_cubes: int, top_p: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """x: (L, D) FFN inputs; token_cube: (L,) cube id or -1 for text. Returns (FFN output (L, D), kept (N_video,) bool)."""
    out = ffn(x)
    video = token_cube >= 0
    cubes = token_cube[video]
    keep = select_ffn_tokens(x[video].float().norm(dim=-1), cubes, num_cubes, top_p)
    means = cube_mean_of_kept(out[video][keep], cubes, keep, num_cubes)
    video_out = torch.where(keep[:, None], out[video], means[cubes].to(out.dtype))
    out = out.clone()
    out[video] = video_out
    return out, keep


def adas_ffn_gathered(
    ffn: FFN, x: torch.Tensor, token_cube: torch.Tensor, num_cubes: int, top_p: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same result as adas_ffn_reference, but the FFN runs on text rows and kept video rows only."""
    video = token_cube >= 0
    video_idx = video.nonzero().squeeze(1)
    cubes = token_cube[video_idx]
    keep = select_ffn_tokens(x[video_idx].float().norm(dim=-1), cubes, num_cubes, top_p)
    rows = torch.cat([(~video).nonzero().squeeze(1), video_idx[keep]])
    rows_out = ffn(x[rows])
    out = torch.empty(x.shape[0], rows_out.shape[-1], dtype=rows_out.dtype, device=x.device)
    out[rows] = rows_out
    skipped = video_idx[~keep]
    if skipped.numel():
        n_text = rows.numel() - int(keep.sum())
        means = cube_mean_of_kept(rows_out[n_text:], cubes, keep, num_cubes)
        out[skipped] = means[cubes[~keep]].to(out.dtype)
    return out, keep
