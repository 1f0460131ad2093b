"""Golden M-RoPE position ids (the official Qwen2.5-VL rule: text after a video starts at max + 1)."""

import torch

from adaspark_cli.adapters import mrope_position_ids


def test_golden_positions_text_video_text():
    # 3 text, video grid_thw (4, 4, 6) -> merged (4, 2, 3) = 24 tokens, 2 text. 1 s per grid, 2 tokens/s.
    types = torch.tensor([0] * 3 + [2] * 24 + [0] * 2)
    pos, delta = mrope_position_ids(types, torch.tensor([[4, 4, 6]]), [1.0], spatial_merge_size=2, tokens_per_second=2)
    assert pos[:, :3].tolist() == [[0, 1, 2]] * 3
    video = pos[:, 3:27].reshape(3, 4, 2, 3)
    assert video[0, :, 0, 0].tolist() == [3, 5, 7, 9]  # time: 3 + t * 2
    assert video[1, 0, :, 0].tolist() == [3, 4]
    assert video[2, 0, 0, :].tolist() == [3, 4, 5]
    assert pos[:, 27:].tolist() == [[10, 11]] * 3  # max (9) + 1, not 3 + max(H', W')
    assert delta == 12 - 29


def test_fractional_seconds_per_grid_is_not_truncated():
    types = torch.tensor([2] * 4)
    pos, _ = mrope_position_ids(types, torch.tensor([[4, 2, 2]]), [0.5], spatial_merge_size=2, tokens_per_second=2)
    assert pos[0].tolist() == [0, 1, 2, 3]  # 0.5 s per grid * 2 tokens/s = 1 per step
    pos, _ = mrope_position_ids(types, torch.tensor([[4, 2, 2]]), [0.75], spatial_merge_size=2, tokens_per_second=2)
    assert pos[0].tolist() == [0, 1, 3, 4]  # floor(t * 1.5)
