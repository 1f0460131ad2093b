"""Cube layout: golden layouts computed by hand."""

import pytest
import torch

from adaspark_cli.cubes import TEXT, VideoSpan, cube_layout, video_spans
from adaspark_cli.errors import AdasparkError


def test_hand_computed_layout_with_partial_edge_cubes():
    # 2 text tokens, then a video of T'=3, H'=2, W'=3 with cube 2x2x2, then 1 text token.
    span = VideoSpan(start=2, grid=(3, 2, 3))
    layout = cube_layout([span], seq_len=21, cube=(2, 2, 2))
    # blocks: t in {0,1}->0, {2}->1; h in {0,1}->0; w in {0,1}->0, {2}->1 => cubes (bt*1+0)*2+bw
    expected = []
    for t in range(3):
        for _h in range(2):
            for w in range(3):
                expected.append((t // 2) * 2 + (w // 2))
    assert layout.cube_of_token.tolist() == [TEXT, TEXT] + expected + [TEXT]
    assert layout.slab_of_token.tolist() == [TEXT, TEXT] + [t // 2 for t in range(3) for _ in range(6)] + [TEXT]
    assert layout.slab_of_cube.tolist() == [0, 0, 1, 1]
    assert layout.cube_sizes.tolist() == [8, 4, 4, 2]
    assert layout.num_video_tokens == 18


def test_two_videos_get_consecutive_cube_and_slab_ids():
    a = VideoSpan(start=1, grid=(2, 2, 2))
    b = VideoSpan(start=10, grid=(4, 1, 1))
    layout = cube_layout([b, a], seq_len=15, cube=(2, 2, 2))
    assert layout.cube_of_token.tolist() == [TEXT] + [0] * 8 + [TEXT] + [1, 1, 2, 2] + [TEXT]
    assert layout.slab_of_token.tolist() == [TEXT] + [0] * 8 + [TEXT] + [1, 1, 2, 2] + [TEXT]
    assert layout.slab_of_cube.tolist() == [0, 1, 2]


@pytest.mark.parametrize(
    "grid,cube",
    [
        pytest.param((5, 7, 3), (2, 8, 8), id="odd-grid-cube-larger-than-frame"),
        pytest.param((4, 6, 6), (1, 4, 4), id="1x4x4"),
        pytest.param((1, 1, 1), (2, 2, 2), id="single-token"),
    ],
)
def test_layout_partitions_every_video_token(grid, cube):
    span = VideoSpan(start=3, grid=grid)
    layout = cube_layout([span], seq_len=span.end + 2, cube=cube)
    ids = layout.cube_of_token[layout.is_video]
    assert ids.numel() == span.num_tokens
    assert torch.equal(torch.bincount(ids, minlength=layout.num_cubes), layout.cube_sizes)
    assert int(layout.cube_sizes.max()) <= cube[0] * cube[1] * cube[2]
    # cube ids never decrease across slabs: slab order is sequence order
    slabs = layout.slab_of_token[layout.is_video]
    assert torch.all(slabs[1:] >= slabs[:-1])


def test_video_spans_from_token_types():
    types = torch.tensor([0, 0, 2, 2, 2, 2, 0, 2, 2, 0])
    grids = torch.tensor([[1, 4, 4], [2, 2, 2]])  # merged: 1x2x2 = 4 tokens, 2x1x1 = 2 tokens
    spans = video_spans(types, grids, spatial_merge_size=2)
    assert spans == [VideoSpan(2, (1, 2, 2)), VideoSpan(7, (2, 1, 1))]


def test_video_spans_mismatch_is_an_error():
    types = torch.tensor([0, 2, 2, 0])
    with pytest.raises(AdasparkError, match="needs 4"):
        video_spans(types, torch.tensor([[1, 4, 4]]), spatial_merge_size=2)
    with pytest.raises(AdasparkError, match="video grids"):
        video_spans(types, torch.tensor([[1, 4, 4], [1, 2, 2]]), spatial_merge_size=2)
