"""3D cube layout of the video tokens in a language-model sequence (method.md section 1).

Qwen2.5-VL places each video as one contiguous run of tokens in (t, h, w) raster order over the
merged grid (T', H', W') = (grid_t, grid_h / 2, grid_w / 2): token (t, h, w) sits at
``start + t*H'*W' + h*W' + w``. A cube is a block of (ct, ch, cw) tokens; edge cubes may be partial.
A *slab* is the set of cubes that share the same frames (same video, same t-block); slab ids grow with
sequence order, so "slab < s" means "entirely before the frames of slab s".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import AdasparkError

TEXT = -1  # cube / slab id of a text token


@dataclass(frozen=True)
class VideoSpan:
    """One video's token run: first token index and merged grid (T', H', W')."""

    start: int
    grid: tuple[int, int, int]

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1] * self.grid[2]

    @property
    def end(self) -> int:
        return self.start + self.num_tokens


@dataclass(frozen=True)
class CubeLayout:
    """Per-token cube and slab ids for one sequence (batch size 1).

    cube_of_token: (seq_len,) int64, global cube id or -1 for text.
    slab_of_token: (seq_len,) int64, global slab id or -1 for text.
    slab_of_cube:  (num_cubes,) int64.
    cube_sizes:    (num_cubes,) int64 tokens per cube (partial edge cubes are smaller).
    """

    seq_len: int
    cube: tuple[int, int, int]
    spans: tuple[VideoSpan, ...]
    cube_of_token: torch.Tensor
    slab_of_token: torch.Tensor
    slab_of_cube: torch.Tensor
    cube_sizes: torch.Tensor

    @property
    def num_cubes(self) -> int:
        return int(self.slab_of_cube.numel())

    @property
    def num_video_tokens(self) -> int:
        return sum(s.num_tokens for s in self.spans)

    @property
    def is_video(self) -> torch.Tensor:
        return self.cube_of_token >= 0

    def to(self, device: torch.device | str) -> CubeLayout:
        return CubeLayout(
            seq_len=self.seq_len,
            cube=self.cube,
            spans=self.spans,
            cube_of_token=self.cube_of_token.to(device),
            slab_of_token=self.slab_of_token.to(device),
            slab_of_cube=self.slab_of_cube.to(device),
            cube_sizes=self.cube_sizes.to(device),
        )

    def __repr__(self) -> str:
        ct, ch, cw = self.cube
        grids = ",".join(f"{t}x{h}x{w}@{s.start}" for s, (t, h, w) in ((s, s.grid) for s in self.spans))
        return f"CubeLayout(cube={ct}x{ch}x{cw}, videos=[{grids}], cubes={self.num_cubes}, seq_len={self.seq_len})"


def video_spans(
    mm_token_type_ids: torch.Tensor, video_grid_thw: torch.Tensor, spatial_merge_size: int = 2
) -> list[VideoSpan]:
    """Find each video's contiguous token run and pair it with its grid.

    mm_token_type_ids: (seq_len,) with 2 marking video tokens (transformers' convention).
    video_grid_thw: (num_videos, 3) pre-merge patch grid as returned by the processor.
    """
    is_video = (mm_token_type_ids.flatten() == 2).tolist()
    runs: list[tuple[int, int]] = []
    i = 0
    while i < len(is_video):
        if is_video[i]:
            j = i
            while j < len(is_video) and is_video[j]:
                j += 1
            runs.append((i, j))
            i = j
        else:
            i += 1
    grids = [tuple(int(v) for v in g) for g in video_grid_thw.reshape(-1, 3).tolist()] if video_grid_thw is not None else []
    if len(runs) != len(grids):
        raise AdasparkError(
            f"prompt has {len(runs)} video token runs but {len(grids)} video grids; "
            "pass the processor's input_ids and video_grid_thw together"
        )
    spans = []
    for (start, end), (t, h, w) in zip(runs, grids):
        grid = (t, h // spatial_merge_size, w // spatial_merge_size)
        span = VideoSpan(start=start, grid=grid)
        if span.num_tokens != end - start:
            raise AdasparkError(
                f"video run at token {start} has {end - start} tokens but grid {grid} needs {span.num_tokens}; "
                "the processor's merge size does not match the model's"
            )
        spans.append(span)
    return spans


def token_coordinates(span: VideoSpan) -> torch.Tensor:
    """(num_tokens, 3) int64 (t, h, w) of each token of the span, in sequence order."""
    t, h, w = span.grid
    tt, hh, ww = torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack([tt.flatten(), hh.flatten(), ww.flatten()], dim=1)


def cube_layout(spans: list[VideoSpan] | tuple[VideoSpan, ...], seq_len: int, cube: tuple[int, int, int]) -> CubeLayout:
    """Assign every video token its cube and slab; cubes are numbered in (t, h, w) block raster order
    within a video and videos in sequence order, so cube and slab ids grow with position."""
    ct, ch, cw = cube
    cube_of_token = torch.full((seq_len,), TEXT, dtype=torch.long)
    slab_of_token = torch.full((seq_len,), TEXT, dtype=torch.long)
    slab_of_cube: list[torch.Tensor] = []
    cube_sizes: list[torch.Tensor] = []
    cube_offset = slab_offset = 0
    for span in sorted(spans, key=lambda s: s.start):
        if span.end > seq_len:
            raise AdasparkError(f"video span {span} runs past the sequence length {seq_len}")
        t, h, w = span.grid
        nt, nh, nw = -(-t // ct), -(-h // ch), -(-w // cw)  # ceil: partial edge cubes
        coords = token_coordinates(span)
        bt, bh, bw = coords[:, 0] // ct, coords[:, 1] // ch, coords[:, 2] // cw
        local_cube = (bt * nh + bh) * nw + bw
        cube_of_token[span.start : span.end] = local_cube + cube_offset
        slab_of_token[span.start : span.end] = bt + slab_offset
        slab_of_cube.append(torch.arange(nt).repeat_interleave(nh * nw) + slab_offset)
        cube_sizes.append(torch.bincount(local_cube, minlength=nt * nh * nw))
        cube_offset += nt * nh * nw
        slab_offset += nt
    empty = torch.zeros(0, dtype=torch.long)
    return CubeLayout(
        seq_len=seq_len,
        cube=(ct, ch, cw),
        spans=tuple(sorted(spans, key=lambda s: s.start)),
        cube_of_token=cube_of_token,
        slab_of_token=slab_of_token,
        slab_of_cube=torch.cat(slab_of_cube) if slab_of_cube else empty,
        cube_sizes=torch.cat(cube_sizes) if cube_sizes else empty,
    )
