"""The prefill benchmarks' model and prompts: a random-weight language model of Qwen2.5-VL-7B's shapes (or
Qwen3-VL-8B's), and a prompt of text, a video of 16x16 merged tokens per frame pair and more text, as
embeddings, M-RoPE positions and the cube layout; `prefill` runs it to the last position's logits.

Used by bench_prefill.py (and, through it, bench_decode_step.py and profile_selection.py).
"""

from __future__ import annotations

from typing import Any

import torch

from _common import TEXT_7B, TEXT_TINY, VISION_TINY, random_model  # this folder is on sys.path; puts src/ there too

from adaspark_cli.adapters.positions import mrope_position_ids
from adaspark_cli.cubes import VideoSpan, cube_layout, frame_pair_spans
from adaspark_cli.stats import PrefillStats

# positions past 7B's 128000: the longest prompt here has 131K video tokens (the default rope ignores the field)
TEXT_LONG = dict(TEXT_7B, max_position_embeddings=262144)
VISION_ONE_BLOCK = dict(VISION_TINY, depth=1, fullatt_block_indexes=[0])  # unused: the language model alone is timed
TEXT_8B = dict(vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
               num_attention_heads=32, num_key_value_heads=8, head_dim=128, hidden_act="silu",
               max_position_embeddings=262144, rms_norm_eps=1e-6, tie_word_embeddings=False,
               rope_parameters={"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [24, 20, 20],
                                "mrope_interleaved": True})
TEXT_8B_SMOKE = dict(TEXT_8B, vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                     rope_parameters={"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [4, 2, 2],
                                      "mrope_interleaved": True})
VISION_TINY_QWEN3 = dict(depth=3, hidden_size=32, num_heads=2, intermediate_size=64, in_channels=3, patch_size=16,
                         spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=64,
                         deepstack_visual_indexes=[0, 1, 2])  # 8B: [8, 16, 24] of 27 blocks: LM layers 0-2
TIMESTAMP_TOKENS = 6  # "<12.3 seconds>" in Qwen's BPE: "<", "1", "2", ".", "3", " seconds>" (about)
TEXT_BEFORE, TEXT_AFTER = 64, 64
GRID_HW = (16, 16)
CUBE = (2, 8, 8)


def build_model(smoke: bool, device: torch.device, dtype: torch.dtype, arch: str = "qwen2_5_vl") -> Any:
    """The 7B-shaped (or, smoke, tiny) random language model (arch qwen3_vl: Qwen3-VL-8B-shaped); the special
    token ids are the vocabulary's last four."""
    if arch == "qwen3_vl":
        return build_qwen3(smoke, device, dtype)
    text = TEXT_TINY if smoke else TEXT_LONG
    vocab = text["vocab_size"]
    return random_model(text, {**VISION_ONE_BLOCK, "out_hidden_size": text["hidden_size"]}, device=device, dtype=dtype,
                        image_token_id=vocab - 4, video_token_id=vocab - 3, vision_start_token_id=vocab - 2,
                        vision_end_token_id=vocab - 1)


def build_qwen3(smoke: bool, device: torch.device, dtype: torch.dtype) -> Any:
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    text = TEXT_8B_SMOKE if smoke else TEXT_8B
    v = text["vocab_size"]
    config = Qwen3VLConfig(text_config=text, vision_config={**VISION_TINY_QWEN3, "out_hidden_size": text["hidden_size"]},
                           image_token_id=v - 4, video_token_id=v - 3, vision_start_token_id=v - 2, vision_end_token_id=v - 1)
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen3VLForConditionalGeneration._from_config(
            config, dtype=dtype, attn_implementation={"text_config": "sdpa", "vision_config": "sdpa"})
    return model.eval()


class Inputs:
    """One prompt of `video_tokens` video tokens: embeddings, M-RoPE positions, the cube layout."""

    deepstack: dict[str, Any] = {}  # Qwen3-VL: the language model's DeepStack inputs

    def __init__(self, model: Any, video_tokens: int, device: torch.device) -> None:
        t = max(1, video_tokens // (GRID_HW[0] * GRID_HW[1]))
        span = VideoSpan(TEXT_BEFORE, (t, *GRID_HW))
        self.seq = TEXT_BEFORE + span.num_tokens + TEXT_AFTER
        self.video_tokens = span.num_tokens
        self.layout = cube_layout([span], self.seq, CUBE)
        types = torch.zeros(self.seq, dtype=torch.long)
        types[span.start : span.end] = 2
        grid = torch.tensor([[t, GRID_HW[0] * 2, GRID_HW[1] * 2]])
        positions, _ = mrope_position_ids(types, grid, [1.0], spatial_merge_size=2, tokens_per_second=2)
        self.positions = positions[:, None].to(device)  # (3, 1, L)
        g = torch.Generator(device=device).manual_seed(video_tokens)
        hidden = model.config.text_config.hidden_size
        self.embeds = (torch.randn(1, self.seq, hidden, generator=g, device=device) * 0.5).to(next(model.parameters()).dtype)


class Qwen3Inputs(Inputs):
    """The same, laid out as Qwen3VLProcessor does: per frame pair TIMESTAMP_TOKENS of text, <|vision_start|>,
    16x16 video tokens, <|vision_end|>; positions from the model's get_rope_index; random DeepStack features."""

    def __init__(self, model: Any, video_tokens: int, device: torch.device) -> None:
        t = max(1, video_tokens // (GRID_HW[0] * GRID_HW[1]))
        per_frame = GRID_HW[0] * GRID_HW[1]
        segment = TIMESTAMP_TOKENS + 1 + per_frame + 1
        self.seq = TEXT_BEFORE + t * segment + TEXT_AFTER
        types = torch.zeros(self.seq, dtype=torch.long)
        for i in range(t):
            start = TEXT_BEFORE + i * segment + TIMESTAMP_TOKENS + 1
            types[start : start + per_frame] = 2
        grid = torch.tensor([[t, GRID_HW[0] * 2, GRID_HW[1] * 2]])
        self.layout = cube_layout(frame_pair_spans(types, grid, 2), self.seq, CUBE)
        self.video_tokens = self.layout.num_video_tokens
        positions, _ = model.model.get_rope_index(torch.zeros(1, self.seq, dtype=torch.long), types[None], video_grid_thw=grid)
        self.positions = positions.to(device)  # (3, 1, L)
        g = torch.Generator(device=device).manual_seed(video_tokens)
        hidden = model.config.text_config.hidden_size
        dtype = next(model.parameters()).dtype
        self.embeds = (torch.randn(1, self.seq, hidden, generator=g, device=device) * 0.5).to(dtype)
        levels = len(model.config.vision_config.deepstack_visual_indexes)
        self.deepstack = {
            "visual_pos_masks": (types == 2)[None].to(device),
            "deepstack_visual_embeds": [(torch.randn(self.video_tokens, hidden, generator=g, device=device) * 0.5).to(dtype)
                                        for _ in range(levels)],
        }


def make_inputs(arch: str, model: Any, video_tokens: int, device: torch.device) -> Inputs:
    return Qwen3Inputs(model, video_tokens, device) if arch == "qwen3_vl" else Inputs(model, video_tokens, device)


def prefill(model: Any, state: Any, inp: Inputs, stats: PrefillStats | None = None) -> torch.Tensor:
    """The language model over the prompt and the last position's logits (what a first token needs)."""
    lm = model.model.language_model
    with torch.no_grad(), state.forward_context(layout=inp.layout, offset=0, stats=stats):
        out = lm(inputs_embeds=inp.embeds, position_ids=inp.positions, use_cache=False, **inp.deepstack)
        return model.lm_head(out.last_hidden_state[:, -1:])[0, -1].float()
