"""The model-adapter interface: what differs between the video LLM architectures adaspark supports.

One `Architecture` object per model family (one module each: qwen2_5_vl.py, qwen3_vl.py). The sparse
machinery (adapters/sparse.py) and the session (qa/) are the same for all of them; they ask the
architecture where the language model's layers and MLPs are, where the video tokens sit in a prompt
(the cube layout is built from that), the M-RoPE positions, how frames are sized and what the processor
is given, the prompt ids of a video whose vision tower ran chunk by chunk, and the vision tower's fast
path. A new family is one more module and one more entry in `arch/__init__.py`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ...cubes import VideoSpan
from ...errors import AdasparkError

# A transformers model or one of its modules: its attributes (config, layers, visual, spatial_merge_size, ...)
# come from the transformers class, and torch's stubs type every module attribute `Tensor | Module`.
HFModule = Any

if TYPE_CHECKING:
    from transformers.video_utils import VideoMetadata


class Architecture:
    """Defaults shared by the Qwen-VL families; each module overrides what its family does differently."""

    name: str = ""  # the family, for messages: "Qwen2.5-VL"
    classes: tuple[str, ...] = ()  # transformers classes of the family (the model's type name)
    model_types: tuple[str, ...] = ()  # config.json model_type of each class, same order
    token_px: int = 28  # side in px of one language-model token (patch x spatial merge)

    # ---- the model ------------------------------------------------------------------------------

    def language_layers(self, model: HFModule) -> nn.ModuleList:
        """The language model's decoder layers (each has `.self_attn` with `layer_idx` and `.mlp`)."""
        return model.model.language_model.layers

    def vision_tower(self, model: HFModule) -> nn.Module:
        return model.model.visual

    def dense_ffn_layers(self, model: HFModule) -> frozenset[int]:
        """Layers whose FFN stays dense even when the layer is sparse (docs/method.md)."""
        return frozenset()

    def enable_fast_vision(self, model: HFModule) -> bool:
        """Switch the vision tower to adaspark's fast forward where there is one; whether it did."""
        return False

    # ---- the prompt ---------------------------------------------------------------------------

    def video_spans(self, model: HFModule, types: torch.Tensor, grid: torch.Tensor) -> list[VideoSpan]:
        """Where each video's tokens are. types: (P,) mm_token_type_ids (2 = video); grid: (videos, 3)."""
        raise NotImplementedError

    def positions(
        self, model: HFModule, ids: torch.Tensor, types: torch.Tensor, grid: torch.Tensor, second_per_grid_ts: Any
    ) -> torch.Tensor:
        """(3, P) int64 M-RoPE position ids (time, height, width) of the prompt ids (P,)."""
        raise NotImplementedError

    def stream_prompt_ids(self, qa: Any, grid: torch.Tensor, metadata: VideoMetadata) -> torch.Tensor:
        """(P,) ids of the whole chat prompt (placeholder question) for a video of `grid` whose vision tower
        already ran (qa.prepare_video_stream): the processor's expansion, without the pixels."""
        raise NotImplementedError

    # ---- frames -------------------------------------------------------------------------------

    def min_pixels(self) -> int:
        """Smallest frame area: a 2 x 2 token grid."""
        return 4 * self.token_px * self.token_px

    def check_max_pixels(self, max_pixels: int) -> None:
        if max_pixels < self.min_pixels():
            raise AdasparkError(
                f"--max-pixels {max_pixels} is below the minimum {self.min_pixels()} for {self.name} (2x2 tokens of "
                f"{self.token_px}x{self.token_px} px); e.g. --max-pixels 200704"
            )

    def frame_size(self, processor: Any, height: int, width: int, frames: int, max_pixels: int) -> tuple[int, int]:
        """(height, width) every frame of a `frames`-frame video is resized to for the vision tower."""
        raise NotImplementedError

    def processor_kwargs(self, processor: Any, max_pixels: int) -> dict[str, Any]:
        """Resize settings for the processor's video call (frames come at source size unless
        `resizes_frames_first`)."""
        raise NotImplementedError

    resizes_frames_first: bool = False  # True: prepare_video resizes to frame_size itself, the processor does not resize
