"""3D cube layout of the video tokens in a language-model sequence (method.md section 1).

Qwen2.5-VL places each video as one contiguous run of tokens in (t, h, w) raster order over the
merged grid (T', H', W') = (grid_t, grid_h / 2, grid_w / 2): token (t, h, w) sits at
``start + t*H'*W' + h*W' + w``. Qwen3-VL gives each frame pair (each t) a run of its own, between a
timestamp text and <|vision_start|> / <|vision_end|>: token (t, h, w) sits at
``frame_starts[t] + h*W' + w`` (`frame_pair_spans`). Either way a cube is a block of (ct, ch, cw)
tokens of the grid, wherever they sit in the sequence; edge cubes may be partial.
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
    """One video's tokens: first token index and merged grid (T', H', W').

    frame_starts: None for one contiguous run (Qwen2.5-VL); else the first token index of each of the
    T' frame-pair runs (Qwen3-VL), each H'*W' tokens long, frame_starts[0] == start."""

    start: int
    grid: tuple[int, int, int]
    frame_starts: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        starts = self.frame_starts
        if starts is not None:
            t, h, w = self.grid
            if len(starts) != t or starts[0] != self.start or any(b - a < h * w for a, b in zip(starts, starts[1:])):
                raise AdasparkError(f"frame runs at {list(starts)} do not fit a video grid {self.grid} starting at {self.start}")

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1] * self.grid[2]

    @property
    def end(self) -> int:
        """One past the last video token (text between frame runs included)."""
        if self.frame_starts is None:
            return self.start + self.num_tokens
        return self.frame_starts[-1] + self.grid[1] * self.grid[2]

    def positions(self) -> torch.Tensor:
        """(num_tokens,) int64 sequence index of each video token, in (t, h, w) raster order."""
        t, h, w = self.grid
        if self.frame_starts is None:
            return torch.arange(self.start, self.end)
        return (torch.tensor(self.frame_starts)[:, None] + torch.arange(h * w)[None, :]).flatten()


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


def video_runs(mm_token_type_ids: torch.Tensor) -> list[tuple[int, int]]:
    """(start, end) of each maximal run of video tokens (type 2, transformers' convention)."""
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
    return runs


def _grids(video_grid_thw: torch.Tensor | None) -> list[tuple[int, ...]]:
    return [tuple(int(v) for v in g) for g in video_grid_thw.reshape(-1, 3).tolist()] if video_grid_thw is not None else []


def video_spans(
    mm_token_type_ids: torch.Tensor, video_grid_thw: torch.Tensor, spatial_merge_size: int = 2
) -> list[VideoSpan]:
    """Find each video's contiguous token run and pair it with its grid (Qwen2.5-VL).

    mm_token_type_ids: (seq_len,) with 2 marking video tokens (transformers' convention).
    video_grid_thw: (num_videos, 3) pre-merge patch grid as returned by the processor.
    """
    runs = video_runs(mm_token_type_ids)
    grids = _grids(video_grid_thw)
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


def frame_pair_spans(
    mm_token_type_ids: torch.Tensor, video_grid_thw: torch.Tensor, spatial_merge_size: int = 2
) -> list[VideoSpan]:
    """Qwen3-VL: each video is T' runs of H'*W' video tokens, one per frame pair (a timestamp and the
    vision start/end tokens, all text, sit between them); the runs are taken in order, T' per video."""
    runs = video_runs(mm_token_type_ids)
    grids = _grids(video_grid_thw)
    needed = sum(g[0] for g in grids)
    if len(runs) != needed:
        raise AdasparkError(
            f"prompt has {len(runs)} video token runs but its {len(grids)} video grid(s) have {needed} frame pairs; "
            "pass the processor's input_ids and video_grid_thw together"
        )
    spans = []
    at = 0
    for t, h, w in grids:
        grid = (t, h // spatial_merge_size, w // spatial_merge_size)
        frame_runs = runs[at : at + t]
        at += t
        for start, end in frame_runs:
            if end - start != grid[1] * grid[2]:
                raise AdasparkError(
                    f"frame run at token {start} has {end - start} tokens but grid {grid} needs {grid[1] * grid[2]} "
                    "per frame pair; the processor's merge size does not match the model's"
                )
        spans.append(VideoSpan(start=frame_runs[0][0], grid=grid, frame_starts=tuple(s for s, _ in frame_runs)))
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
        where = span.positions()
        cube_of_token[where] = local_cube + cube_offset
        slab_of_token[where] = bt + slab_offset
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
