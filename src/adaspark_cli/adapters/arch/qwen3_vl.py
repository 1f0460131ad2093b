"""Qwen3-VL (`Qwen3VLForConditionalGeneration`, and the MoE `Qwen3VLMoeForConditionalGeneration`).

What differs from Qwen2.5-VL (transformers 5.24, models/qwen3_vl):
- each frame pair is its own run of H' x W' video tokens, after a timestamp text `<{t:.1f} seconds>` and
  `<|vision_start|>`, before `<|vision_end|>` (Qwen3VLProcessor.replace_video_token); the cube layout
  is built from the token types and the grid (cubes.frame_pair_spans), a cube gathering its tokens
  from several runs;
- 1 token = 2 frames x 32 x 32 px (patch 16, merge 2);
- M-RoPE: each frame pair is a one-step time grid, time is carried by the timestamp text; positions
  are the model's own `get_rope_index` (text after each frame run resumes at max + 1, as the original);
- DeepStack: vision features of a few tower blocks are added to the video positions after the first
  language-model layers (one per feature level); their FFNs stay dense (`dense_ffn_layers`).
- frames: adaspark sizes each frame itself (its --max-pixels is per frame, the processor's `size` is a
  whole-video budget) and the processor does not resize again.
No vision fast path: the stock tower already runs one attention call per block.
"""

from __future__ import annotations

from typing import Any

import torch

from ...cubes import VideoSpan, frame_pair_spans
from ...errors import AdasparkError
from .base import Architecture, HFModule


class Qwen3_VL(Architecture):
    name = "Qwen3-VL"
    classes = ("Qwen3VLForConditionalGeneration", "Qwen3VLMoeForConditionalGeneration")
    model_types = ("qwen3_vl", "qwen3_vl_moe")
    token_px = 32
    resizes_frames_first = True

    def dense_ffn_layers(self, model: HFModule) -> frozenset[int]:
        """The layers after which DeepStack adds vision features (layer i gets level i)."""
        return frozenset(range(len(model.config.vision_config.deepstack_visual_indexes)))

    def video_spans(self, model: HFModule, types: torch.Tensor, grid: torch.Tensor) -> list[VideoSpan]:
        return frame_pair_spans(types, grid, model.config.vision_config.spatial_merge_size)

    def positions(
        self, model: HFModule, ids: torch.Tensor, types: torch.Tensor, grid: torch.Tensor, second_per_grid_ts: Any
    ) -> torch.Tensor:
        pos, _ = model.model.get_rope_index(ids.flatten()[None], types.flatten()[None], video_grid_thw=grid.clone())
        return pos[:, 0].long()

    def stream_prompt_ids(self, qa: Any, grid: torch.Tensor, metadata: Any) -> torch.Tensor:
        """The processor's own placeholder (timestamps and vision tokens per frame pair) built for one
        pad per frame pair, tokenized, then each pad repeated to the frame's H' x W' tokens."""
        from transformers.video_utils import VideoMetadata

        processor = qa.processor
        merge = processor.video_processor.merge_size
        t, h, w = (int(x) for x in grid[0])
        per_frame = h * w // (merge * merge)
        meta = VideoMetadata(  # a copy: the processor pads frames_indices in place
            total_num_frames=metadata.total_num_frames, fps=metadata.fps, frames_indices=list(metadata.frames_indices)
        )
        one_pad_grid = torch.tensor([[t, merge, merge]])
        placeholder = processor.replace_video_token({"video_grid_thw": one_pad_grid, "video_metadata": [meta]}, 0)
        text = qa.prompt_format.chat_text()  # the placeholder question
        if text.count(processor.video_token) != 1:
            raise AdasparkError(
                f"the chat template gave {text.count(processor.video_token)} video placeholders, expected one; this is a bug"
            )
        text = text.replace(processor.video_token, placeholder, 1)
        ids = processor.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
        is_pad = ids == processor.video_token_id
        if int(is_pad.sum()) != t:
            raise AdasparkError(f"the prompt has {int(is_pad.sum())} frame placeholders for {t} frame pairs; this is a bug")
        return torch.repeat_interleave(ids, torch.where(is_pad, per_frame, 1))

    def processor_kwargs(self, processor: Any, max_pixels: int) -> dict[str, Any]:
        # the frames arrive at frame_size already; cap_pixels_per_frame only silences 5.2x's warning
        cap = {"cap_pixels_per_frame": True} if hasattr(processor.video_processor, "cap_pixels_per_frame") else {}
        return {"do_resize": False, **cap}

    def frame_size(self, processor: Any, height: int, width: int, frames: int, max_pixels: int) -> tuple[int, int]:
        """smart_resize per frame to multiples of 32 px within [4 tokens, max_pixels], max_pixels capped at
        the processor's per-frame token ceiling (max_video_tokens, qwen-vl-utils' VIDEO_MAX_TOKEN_NUM)."""
        from transformers.models.qwen2_vl.video_processing_qwen2_vl import smart_resize

        vp = processor.video_processor
        factor = vp.patch_size * vp.merge_size
        limit = max_pixels
        ceiling = getattr(vp, "max_video_tokens", None)
        if ceiling:
            limit = min(limit, int(ceiling) * factor * factor)
        floor = 4 * factor * factor
        return smart_resize(height, width, factor=factor, min_pixels=floor, max_pixels=max(limit, floor))  # type: ignore[no-any-return]

    def min_pixels(self) -> int:
        return 4 * 32 * 32


QWEN3_VL = Qwen3_VL()
