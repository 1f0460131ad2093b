"""adapters.patches: the processor's rescale / normalise / patching of already-resized frames, on any device."""

import copy

import numpy as np
import pytest
import torch

from adaspark_cli.adapters.patches import PatchSpec, patch_spec, video_patches
from adaspark_cli.checkpoint.tiny import build_tiny_processor


@pytest.fixture(scope="module")
def video_processor():
    return build_tiny_processor().video_processor


@pytest.mark.parametrize("n, height, width", [(4, 56, 56), (5, 112, 84), (1, 28 * 3, 28 * 5), (8, 140, 56)])
def test_matches_the_processor(video_processor, n, height, width):
    frames = np.random.default_rng(n + height).integers(0, 256, size=(n, height, width, 3), dtype=np.uint8)
    size = {"shortest_edge": 1, "longest_edge": height * width}  # no resize: the frames are at their size
    ref = video_processor(videos=[frames], do_sample_frames=False, return_tensors="pt", size=size)
    spec = patch_spec(video_processor)
    assert spec == PatchSpec()
    pixels, grid = video_patches(torch.from_numpy(frames), spec)
    assert torch.equal(grid, ref["video_grid_thw"])
    torch.testing.assert_close(pixels, ref["pixel_values_videos"], rtol=0, atol=1e-5)


def test_settings_it_does_not_reproduce_fall_back(video_processor):
    p = copy.copy(video_processor)
    p.do_normalize = False
    assert patch_spec(p) is None


def test_sizes_off_the_patch_grid_are_refused():
    with pytest.raises(ValueError, match="multiples of 28"):
        video_patches(torch.zeros(2, 56, 50, 3, dtype=torch.uint8))
