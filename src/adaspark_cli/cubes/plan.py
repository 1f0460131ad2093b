"""Block plan: the video in cube-major order, cut into kernel tiles (shared by sparse attention and FFN).

A block-sparse kernel works on tiles of BLOCK tokens. The plan regroups the tokens of one sequence so
that every tile holds whole cubes of one time slab: a cube of BLOCK tokens is one tile; smaller cubes
(e.g. 2x4x4 = 32 tokens, the first bundled model's) are *packed* several to a tile, consecutive cubes of the same
slab, instead of each being padded to BLOCK rows (4x the work at 32 tokens); a partial tile is padded
(padded keys are masked, padded query rows dropped). Text runs are cut into tiles of their own. Tiles
are ordered by their first position, so tile order follows slab order. RoPE is already applied to q
and k, so only causality has to be kept, and it is, in ORIGINAL positions (`q_pos`, `kv_pos`).

Everything here depends on the layout and the lengths only, never on the data: one plan serves all the
layers of a forward call (it is cached).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .layout import CubeLayout

BLOCK = 128
PAD_POS = 1 << 30  # position of a padded key: after every query


@dataclass
class TileGroups:
    """Tokens of [lo, hi) regrouped into BLOCK-token tiles. index: (NB*BLOCK,) absolute position or -1."""

    index: torch.Tensor
    block_tile: torch.Tensor  # (NB,) cube tile id, -1 for text
    block_slab: torch.Tensor  # (NB,) slab id, -1 for text
    block_min: torch.Tensor  # (NB,) smallest valid position
    block_max: torch.Tensor  # (NB,) largest valid position
    block_has_pad: torch.Tensor  # (NB,) bool
    num_blocks: int


@dataclass
class BlockPlan:
    """The permutation and data-independent block structure of one (layout, Lq, Lk, block, packing)."""

    layout: CubeLayout
    block: int
    lq: int
    lk: int
    past: int
    tile_of_cube: torch.Tensor  # (C,) tile id of each cube (= the cube id when not packed)
    num_tiles: int
    q: TileGroups
    k: TileGroups
    q_gather: torch.Tensor  # (Lqp,) index into query's token dim (clamped; padded rows arbitrary)
    k_gather: torch.Tensor  # (Lkp,)
    q_unperm: torch.Tensor  # (Lq,) row of the permuted query for each query token
    q_pos: torch.Tensor  # (Lqp,) int32 absolute position, -1 for padding
    kv_pos: torch.Tensor  # (Lkp,) int32 absolute position, PAD_POS for padding
    always_full: torch.Tensor  # (NQB, NKB) bool, head-independent full blocks (text, own slab, below diagonal)
    always_partial: torch.Tensor  # (NQB, NKB) bool, head-independent blocks needing the causal mask
    cand_blocks: torch.Tensor  # (NQB, NKB) bool, earlier-slab cube blocks open to selection
    k_block_tile: torch.Tensor  # (NKB,) tile of each key block (clamped to 0 for text)
    # query blocks that are video and have candidate cubes: the rows of a per-block Selection
    sel_blocks: torch.Tensor  # (NS,) permuted query-block ids
    sel_cand: torch.Tensor  # (NS,) number of candidate cubes (a prefix of the cube ids: earlier slabs)
    sel_cand_host: list[int] = field(default_factory=list)
    cache: dict[str, Any] = field(default_factory=dict)  # derived tensors, built once per plan

    @property
    def num_cubes(self) -> int:
        return self.layout.num_cubes

    @property
    def packed(self) -> bool:
        return self.num_tiles != self.num_cubes


def cubes_per_tile(layout: CubeLayout, block: int) -> int:
    """How many whole cubes of the layout's cube size share one tile (1: a cube per tile)."""
    ct, ch, cw = layout.cube
    return max(1, block // (ct * ch * cw))


def tile_of_cube(layout: CubeLayout, per_tile: int) -> torch.Tensor:
    """(C,) tile id: consecutive cubes of one slab, `per_tile` at a time (never across slabs)."""
    slab = layout.slab_of_cube
    if per_tile == 1 or slab.numel() == 0:
        return torch.arange(slab.numel(), dtype=torch.long)
    first_of_slab = torch.searchsorted(slab, slab)  # slabs are sorted: index of each slab's first cube
    rank = torch.arange(slab.numel()) - first_of_slab
    new_tile = (rank % per_tile) == 0
    return torch.cumsum(new_tile.long(), 0) - 1


def _group_blocks(layout: CubeLayout, tiles: torch.Tensor, lo: int, hi: int, block: int, device: torch.device) -> TileGroups:
    pos = torch.arange(lo, hi, device=device)
    n = hi - lo
    cube = layout.cube_of_token[lo:hi].to(device)
    video = cube >= 0
    tile = torch.full_like(cube, -1)
    tile[video] = tiles.to(device)[cube[video]]
    # Every token gets the first position of its group: cube tile (within [lo, hi)) or text block.
    first = torch.empty(n, dtype=torch.long, device=device)
    if bool(video.any()):
        tile_first = torch.full((int(tiles.max()) + 1,), PAD_POS, dtype=torch.long, device=device)
        tile_first.scatter_reduce_(0, tile[video], pos[video], reduce="amin")
        first[video] = tile_first[tile[video]]
    text = ~video
    if bool(text.any()):
        # text tokens fill blocks in position order across runs: Qwen3-VL's short timestamp runs between
        # frame pairs, each padded to its own block, made the sparse prefill slower than dense (256 text
        # blocks of ~8 tokens at 64K video tokens, attended by every query and attending every key)
        tpos = pos[text]
        rank = torch.arange(tpos.numel(), device=device)
        first[text] = tpos[rank // block * block]
    # within a group, tokens keep cube order then position order: a packed tile lists cube by cube
    order = torch.argsort((first * (layout.num_cubes + 1) + cube.clamp(min=-1) + 1) * (n + 1) + (pos - lo))
    sorted_first = first[order]
    groups, counts = torch.unique_consecutive(sorted_first, return_counts=True)
    nblk = (counts + block - 1) // block
    pad_start = torch.cumsum(nblk * block, 0) - nblk * block
    sorted_start = torch.cumsum(counts, 0) - counts
    gidx = torch.repeat_interleave(torch.arange(groups.numel(), device=device), counts)
    dest = pad_start[gidx] + (torch.arange(n, device=device) - sorted_start[gidx])
    total = int(nblk.sum())
    index = torch.full((total * block,), -1, dtype=torch.long, device=device)
    index[dest] = pos[order]
    blocks = index.view(total, block)
    valid = blocks >= 0
    bmin = torch.where(valid, blocks, PAD_POS).amin(1)
    bmax = blocks.amax(1)
    head = bmin.clamp(max=layout.seq_len - 1)
    head_cube = layout.cube_of_token.to(device)[head]
    return TileGroups(
        index=index,
        block_tile=torch.where(head_cube >= 0, tiles.to(device)[head_cube.clamp(min=0)], -1),
        block_slab=layout.slab_of_token.to(device)[head],
        block_min=bmin,
        block_max=bmax,
        block_has_pad=~valid.all(1),
        num_blocks=total,
    )


_PLAN_CACHE: dict[tuple, BlockPlan] = {}


def build_plan(
    layout: CubeLayout, lq: int, lk: int, *, block: int = BLOCK, pack: bool = True, device: torch.device | str = "cpu"
) -> BlockPlan:
    """Permutation and data-independent block structure for queries [lk-lq, lk) and keys [0, lk).

    pack: put several small cubes of one slab into a tile (attention); False keeps one cube per tile
    (the FFN's per-cube rows). Cached per layout object, lengths, block, packing and device (the layers
    of one forward share it).
    """
    device = torch.device(device)
    cache_key = (id(layout), lq, lk, block, pack, str(device))
    hit = _PLAN_CACHE.get(cache_key)
    if hit is not None and hit.layout is layout:
        return hit
    past = lk - lq
    tiles = tile_of_cube(layout, cubes_per_tile(layout, block) if pack else 1)
    kg = _group_blocks(layout, tiles, 0, lk, block, device)
    qg = kg if past == 0 else _group_blocks(layout, tiles, past, lk, block, device)
    q_valid = qg.index >= 0
    q_pos = torch.where(q_valid, qg.index, -1).to(torch.int32)
    kv_pos = torch.where(kg.index >= 0, kg.index, PAD_POS).to(torch.int32)
    q_unperm = torch.empty(lq, dtype=torch.long, device=device)
    rows = torch.arange(qg.index.numel(), device=device)
    q_unperm[qg.index[q_valid] - past] = rows[q_valid]

    qtile, ktile = qg.block_tile[:, None], kg.block_tile[None, :]
    qslab, kslab = qg.block_slab[:, None], kg.block_slab[None, :]
    q_text, k_text = qtile < 0, ktile < 0
    before = kg.block_max[None, :] < qg.block_min[:, None]
    after = kg.block_min[None, :] > qg.block_max[:, None]
    k_pad = kg.block_has_pad[None, :]
    always = q_text | k_text | (qslab == kslab)  # text query, text key, own slab: causal only
    always_full = always & before & ~k_pad
    always_partial = always & ~after & ~always_full

    slab_of_cube = layout.slab_of_cube.to(device)
    cand = torch.searchsorted(slab_of_cube, qg.block_slab.clamp(min=0))  # cubes with slab < s
    is_sel = (qg.block_tile >= 0) & (cand > 0)
    sel_blocks = is_sel.nonzero().squeeze(1)
    sel_cand = cand[sel_blocks]
    plan = BlockPlan(
        layout=layout,
        block=block,
        lq=lq,
        lk=lk,
        past=past,
        tile_of_cube=tiles.to(device),
        num_tiles=int(tiles.max()) + 1 if tiles.numel() else 0,
        q=qg,
        k=kg,
        q_gather=(qg.index - past).clamp(min=0),
        k_gather=kg.index.clamp(min=0),
        q_unperm=q_unperm,
        q_pos=q_pos,
        kv_pos=kv_pos,
        always_full=always_full,
        always_partial=always_partial,
        cand_blocks=~q_text & ~k_text & (kslab < qslab),
        k_block_tile=kg.block_tile.clamp(min=0),
        sel_blocks=sel_blocks,
        sel_cand=sel_cand,
        sel_cand_host=sel_cand.tolist(),
    )
    if len(_PLAN_CACHE) > 16:
        _PLAN_CACHE.clear()
    _PLAN_CACHE[cache_key] = plan
    return plan


def permute(plan: BlockPlan, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor):
    """(H, L, D) tensors in sequence order -> tile order, padded: (H, Lqp, D), (H, Lkp, D), (H, Lkp, D)."""
    return query.index_select(1, plan.q_gather), key.index_select(1, plan.k_gather), value.index_select(1, plan.k_gather)


def unpermute(plan: BlockPlan, out_perm: torch.Tensor) -> torch.Tensor:
    """(Hq, Lqp, D) in tile order -> (Lq, Hq, D) in sequence order, contiguous."""
    return out_perm.transpose(0, 1).index_select(0, plan.q_unperm)


def block_of_query_token(plan: BlockPlan) -> torch.Tensor:
    """(Lq,) the permuted query block of each query token."""
    if "block_of_token" not in plan.cache:
        plan.cache["block_of_token"] = plan.q_unperm // plan.block
    return plan.cache["block_of_token"]


def sel_row_of_block(plan: BlockPlan) -> torch.Tensor:
    """(NQB,) row of each query block in a per-block Selection, -1 for blocks without candidates."""
    if "sel_row" not in plan.cache:
        row = torch.full((plan.q.num_blocks,), -1, dtype=torch.long, device=plan.q_pos.device)
        row[plan.sel_blocks] = torch.arange(plan.sel_blocks.numel(), device=row.device)
        plan.cache["sel_row"] = row
    return plan.cache["sel_row"]
