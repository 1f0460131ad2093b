"""The sizes of the models trained here and the training settings (`TrainConfig`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..checkpoint.tiny import ModelSpec
from ..checkpoint.tiny import build_model as build_random_model
from ..config import AdaSparkConfig
from ..synth.scene import TASKS

PRESETS: dict[str, ModelSpec] = {
    # the size of the tests' tiny checkpoint (build_tiny_checkpoint): for CPU smoke tests only
    "tiny": ModelSpec(2, 64, 4, 2, 128, 2, 32, 2, 64, max_positions=32768, full_attention_blocks=(0, 1)),
    # ~1 M parameters: CPU learnability experiments (docs/training.md), a vision tower wide enough to tell shapes
    "mini": ModelSpec(3, 128, 4, 2, 384, 2, 96, 2, 256, max_positions=32768, full_attention_blocks=(0, 1)),
    # ~6 M parameters (12 MB in bf16): the bundled trained model
    "small": ModelSpec(4, 256, 4, 2, 768, 4, 192, 3, 512, max_positions=32768, full_attention_blocks=(1, 3)),
    # ~7.6 M parameters (15.2 MB in bf16: one safetensors file under 16 MiB): small with 6 decoder layers, so
    # that the running state (`train.aux`) has layers to be built in before the last one reads it
    "base": ModelSpec(6, 256, 4, 2, 768, 4, 192, 3, 512, max_positions=32768, full_attention_blocks=(1, 3)),
}


@dataclass(frozen=True)
class TrainConfig:
    preset: str = "small"
    steps: int = 2000  # dense optimizer steps
    sparse_steps: int = 200  # AdaSpark fine-tune optimizer steps (0: none)
    batch: int = 16  # videos per optimizer step
    lr: float = 1e-3
    sparse_lr: float = 2e-4
    warmup: int = 100
    weight_decay: float = 0.05
    lengths: tuple[int, ...] = (16, 32, 64, 128, 256)
    length_weights: tuple[float, ...] | None = None  # None: uniform
    tasks: tuple[str, ...] = TASKS
    seed: int = 0
    cube: tuple[int, int, int] = (8, 4, 4)  # 8 frame pairs x the 4x4 tokens of 112 px: one 128-token kernel tile
    attn_top_p: float = 0.9
    ffn_top_p: float = 0.7
    time_budget_s: float | None = None  # stop each phase early when the wall clock says so
    dense_share: float = 0.85  # of time_budget_s, for the dense phase when an AdaSpark phase follows (else all)
    workers: int = 0  # DataLoader worker processes (0: render in the training process)
    save_dtype: str = "float32"  # "bfloat16" halves the files (they load as float32 on the CPU)
    sparse_lengths: tuple[int, ...] | None = None  # lengths of the AdaSpark phase (None: as lengths)
    sparse_batch: int | None = None  # videos per AdaSpark step (None: batch); it runs one video per forward
    batched_vision: bool = True  # adapters.vision.fast_vision: one attention call per vision block, not one per window
    init: str | None = None  # a checkpoint folder to continue from instead of a fresh `preset` model
    check_items: int = 0  # after each phase, teacher-forced greedy accuracy on this many fresh items (0: skip)
    check_every: int = 0  # also during the dense phase, every this many steps (0: only at the end)
    needle_share: tuple[float, ...] | None = None  # curriculum: needles on screen this share of the frames (0: as held out)
    clutter: bool = True  # curriculum: False leaves distractors and decoy needles out of training videos
    look_alike: float = 0.0  # share of retrieval items redrawn to show the heart and the ball (synth.suite)
    log_every: int = 20
    aux_weight: float = 0.0  # dense auxiliary targets (`train.aux`) at this weight beside the answer loss (0: off)

    @property
    def curriculum(self) -> bool:
        """Training videos differ from the held-out distribution (checks then report both)."""
        return any(self.needle_share or ()) or not self.clutter

    def adaspark(self) -> AdaSparkConfig:
        return AdaSparkConfig(cube=self.cube, attn_top_p=self.attn_top_p, ffn_top_p=self.ffn_top_p)


def build_model(spec: ModelSpec, *, seed: int = 0) -> tuple[Any, Any]:
    """A freshly initialised Qwen2.5-VL of `spec` (float32, SDPA attention) and the tiny checkpoint's processor."""
    model, processor = build_random_model(spec, seed=seed)
    model.config._attn_implementation = "sdpa"
    return model, processor
