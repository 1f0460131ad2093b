"""AdaS-FFN over the cube-major blocks of the block plan (cubes/plan.py, one cube per tile).

Same result as `adas_ffn_gathered` (up to float summation order), fewer passes over the hidden
states: the per-cube top-p runs on a (cubes, BLOCK) table of norms (one small row sort instead of
two global argsorts), kept rows come out grouped by cube, and the per-cube mean of their FFN
outputs is one (cubes x kept) one-hot matrix product on the tensor cores instead of float32 atomics.
Applies when every cube fits one block (the default 2x8x8 = 128-token cube does) and the call
covers the whole layout (prefill); `adas_ffn_auto` falls back to `adas_ffn_gathered` otherwise.
"""

from __future__ import annotations

import torch

from ..cubes import CubeLayout
from ..cubes.plan import BLOCK, BlockPlan, build_plan
from .reference import FFN, adas_ffn_gathered


def _video_blocks(plan: BlockPlan) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """(video block positions (NV, B) or -1, their cube ids (NV,), text positions) or None when a
    cube spans several blocks."""
    if "ffn_blocks" not in plan.cache:
        b = plan.block
        vb = (plan.k.block_tile >= 0).nonzero().squeeze(1)
        cubes = plan.k.block_tile[vb]  # an unpacked plan: one cube per tile
        every_cube = torch.arange(plan.num_cubes, device=cubes.device)
        ok = cubes.numel() == plan.num_cubes and (cubes.numel() == 0 or bool((cubes.sort().values == every_cube).all()))
        idx = plan.k.index.view(-1, b)
        text = idx[plan.k.block_tile < 0].flatten()
        plan.cache["ffn_blocks"] = (idx[vb], cubes, text[text >= 0]) if ok else None
    return plan.cache["ffn_blocks"]


def select_ffn_blocks(norms_blk: torch.Tensor, valid: torch.Tensor, top_p: float) -> torch.Tensor:
    """Per row (one cube): the fewest highest-norm tokens whose share of the row's norm sum reaches
    top_p (at least one). norms_blk: (NV, B) float32, 0 where not valid. Returns (NV, B) bool."""
    if top_p >= 1.0:
        return valid.clone()
    sorted_n, order = torch.sort(norms_blk, dim=1, descending=True, stable=True)
    total = norms_blk.sum(1, keepdim=True).clamp(min=torch.finfo(torch.float32).tiny)
    share = sorted_n / total
    before = torch.cumsum(share, 1) - share
    keep_sorted = before < top_p
    return torch.zeros_like(keep_sorted).scatter(1, order, keep_sorted) & valid


def apply_ffn_blocks(
    ffn: FFN, x: torch.Tensor, pos_blk: torch.Tensor, text_pos: torch.Tensor, keep_blk: torch.Tensor
) -> torch.Tensor:
    """FFN on text rows and kept video rows; every skipped row of a cube gets the mean output of the
    cube's kept rows. pos_blk: (NV, B) positions (-1 padding); keep_blk: (NV, B) bool, >= 1 per row.

    One host sync (the number of kept rows, which sizes the FFN's input); the kept and skipped rows
    come out of one stable sort, in row-major order, instead of a boolean index each."""
    nv, b = pos_blk.shape
    pos = pos_blk.flatten()
    n_kept = int(keep_blk.sum())
    rank = torch.where(keep_blk.flatten(), 0, torch.where(pos >= 0, 1, 2)).to(torch.int8)
    order = torch.sort(rank, stable=True).indices  # kept, then skipped, then padding
    kept_idx = order[:n_kept]
    kept_pos = pos[kept_idx]
    rows = torch.cat([text_pos, kept_pos])
    y = ffn(x[rows])
    out = y.new_empty(x.shape[0] + 1, y.shape[-1])  # the last row: scratch for padding, dropped
    out[rows] = y
    skip_idx = order[n_kept:]
    skip_pos = pos[skip_idx]
    seg = kept_idx // b  # cube row of each kept row
    onehot = (seg[None, :] == torch.arange(nv, device=x.device)[:, None]).to(y.dtype)  # (NV, kept)
    yk = y[text_pos.numel() :]
    if y.device.type == "cuda" and y.dtype in (torch.bfloat16, torch.float16):
        sums = torch.mm(onehot, yk, out_dtype=torch.float32)
    else:
        sums = onehot.float() @ yk.float()
    means = (sums / keep_blk.sum(1).clamp(min=1)[:, None].float()).to(y.dtype)
    out[torch.where(skip_pos >= 0, skip_pos, x.shape[0])] = means[skip_idx // b]
    return out[: x.shape[0]]


def adas_ffn_blocks(
    ffn: FFN, x: torch.Tensor, layout: CubeLayout, top_p: float, *, block: int = BLOCK
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """x: (L, D) FFN inputs of the whole sequence (L == layout.seq_len). Returns (FFN output (L, D),
    kept mask over the video tokens in sequence order), or None where this path does not apply."""
    if x.shape[0] != layout.seq_len:
        return None
    plan = build_plan(layout, x.shape[0], x.shape[0], block=block, pack=False, device=x.device)
    vb = _video_blocks(plan)
    if vb is None:
        return None
    pos_blk, _, text_pos = vb
    valid = pos_blk >= 0
    norms = torch.linalg.vector_norm(x, dim=-1, dtype=torch.float32)
    norms_blk = norms[pos_blk.clamp(min=0)].masked_fill(~valid, 0.0)
    keep_blk = select_ffn_blocks(norms_blk, valid, top_p)
    out = apply_ffn_blocks(ffn, x, pos_blk, text_pos, keep_blk)
    # kept mask over the video tokens in sequence order, without a boolean index (no sync)
    keep_tok = torch.zeros(x.shape[0] + 1, dtype=torch.bool, device=x.device)
    keep_tok[torch.where(keep_blk, pos_blk, x.shape[0]).flatten()] = True
    if "ffn_video_pos" not in plan.cache:
        plan.cache["ffn_video_pos"] = (layout.cube_of_token >= 0).nonzero().squeeze(1).to(x.device)
    return out, keep_tok[plan.cache["ffn_video_pos"]]


def adas_ffn_auto(
    ffn: FFN, x: torch.Tensor, layout: CubeLayout, token_cube: torch.Tensor, top_p: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """adas_ffn_blocks where it applies, else adas_ffn_gathered (same contract as the latter; token_cube
    may stay on the host: it is moved only for the gathered path, which needs it)."""
    got = adas_ffn_blocks(ffn, x, layout, top_p) if x.shape[0] == layout.seq_len else None
    if got is not None:
        return got
    return adas_ffn_gathered(ffn, x, token_cube.to(x.device), layout.num_cubes, top_p)
