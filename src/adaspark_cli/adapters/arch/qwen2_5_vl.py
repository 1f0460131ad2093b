"""Qwen2.5-VL (`Qwen2_5_VLForConditionalGeneration`): one contiguous run of video tokens per video,
1 token = 2 frames x 28 x 28 px, the official M-RoPE rule (adapters/positions.py), the varlen vision fast
path (adapters/vision.py)."""

from __future__ import annotations

from typing import Any

import torch

from ...cubes import VideoSpan, video_spans
from ...limits import MIN_PIXELS
from ..positions import mrope_position_ids
from .base import Architecture, HFModule


class Qwen2_5_VL(Architecture):
    name = "Qwen2.5-VL"
    classes = ("Qwen2_5_VLForConditionalGeneration",)
    model_types = ("qwen2_5_vl",)
    token_px = 28

    def enable_fast_vision(self, model: HFModule) -> bool:
        from ..vision import fast_vision

        fast_vision(model)  # one varlen attention call per vision block: 4.1x at 32K tokens on an H100
        return True

    def video_spans(self, model: HFModule, types: torch.Tensor, grid: torch.Tensor) -> list[VideoSpan]:
        return video_spans(types, grid, model.config.vision_config.spatial_merge_size)

    def positions(
        self, model: HFModule, ids: torch.Tensor, types: torch.Tensor, grid: torch.Tensor, second_per_grid_ts: Any
    ) -> torch.Tensor:
        vision = model.config.vision_config
        pos, _ = mrope_position_ids(
            types, grid, second_per_grid_ts, spatial_merge_size=vision.spatial_merge_size,
            tokens_per_second=vision.tokens_per_second,
        )
        return pos

    def stream_prompt_ids(self, qa: Any, grid: torch.Tensor, metadata: Any) -> torch.Tensor:
        merge = qa.processor.video_processor.merge_size
        t, h, w = (int(x) for x in grid[0])
        return qa.prompt_format.prompt_ids(t * h * w // (merge * merge))  # type: ignore[no-any-return]

    def processor_kwargs(self, processor: Any, max_pixels: int) -> dict[str, Any]:
        # qwen-vl-utils (the reference preprocessing) also caps the video's total tokens; transformers
        # 5.17-5.2x apply that only when asked, and warn when not told either way
        cap = {"cap_pixels_per_frame": True} if hasattr(processor.video_processor, "cap_pixels_per_frame") else {}
        return {"size": {"shortest_edge": MIN_PIXELS, "longest_edge": max_pixels}, **cap}

    def frame_size(self, processor: Any, height: int, width: int, frames: int, max_pixels: int) -> tuple[int, int]:
        """The same rule as transformers' Qwen2-VL video processor: smart_resize to multiples of
        patch x merge px within [MIN_PIXELS, max_pixels], with max_pixels first lowered to the video's even
        share of the total-token budget when the processor caps pixels per frame (qwen-vl-utils' rule)."""
        from transformers.models.qwen2_vl.video_processing_qwen2_vl import smart_resize

        vp = processor.video_processor
        factor = vp.patch_size * vp.merge_size
        limit = max_pixels
        if self.processor_kwargs(processor, max_pixels).get("cap_pixels_per_frame"):
            total_pixels = int(vp.max_video_tokens * factor * factor * 0.9)
            limit = max(min(limit, total_pixels * vp.temporal_patch_size // frames), int(MIN_PIXELS * 1.05))
        return smart_resize(height, width, factor=factor, min_pixels=MIN_PIXELS, max_pixels=limit)  # type: ignore[no-any-return]


QWEN2_5_VL = Qwen2_5_VL()
