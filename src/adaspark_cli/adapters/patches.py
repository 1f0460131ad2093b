"""Qwen2.5-VL video patches from frames already at their final size, on any device.

transformers' video processor resizes, rescales, normalises and cuts frames into patches on the CPU. When
the frames arrive already resized (the pipelined decoder resizes them in its worker threads, the training
data is drawn at a multiple of 28 px), only the cheap part is left, and it runs faster where the vision
tower runs: `video_patches` does it on the tensor's device. It reproduces `Qwen2VLVideoProcessor` for
frames whose sides are multiples of patch x merge (tests/test_patches.py checks it against the processor).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # Qwen2.5-VL's image_mean
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class PatchSpec:
    """What the processor does after resizing: rescale, normalise, and the patch geometry."""

    patch: int = 14
    merge: int = 2
    temporal: int = 2
    rescale: float = 1 / 255
    mean: tuple[float, ...] = OPENAI_CLIP_MEAN
    std: tuple[float, ...] = OPENAI_CLIP_STD


def patch_spec(video_processor: Any) -> PatchSpec | None:
    """The processor's settings, or None where it does something `video_patches` does not reproduce."""
    p = video_processor
    if not (getattr(p, "do_rescale", False) and getattr(p, "do_normalize", False)):
        return None
    try:
        return PatchSpec(
            patch=int(p.patch_size), merge=int(p.merge_size), temporal=int(p.temporal_patch_size),
            rescale=float(p.rescale_factor), mean=tuple(float(x) for x in p.image_mean),
            std=tuple(float(x) for x in p.image_std),
        )
    except (AttributeError, TypeError, ValueError):
        return None


DEFAULT_SPEC = PatchSpec()  # Qwen2.5-VL's processor


def video_patches(frames: torch.Tensor, spec: PatchSpec = DEFAULT_SPEC) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, H, W, 3) uint8 RGB frames, H and W multiples of patch x merge -> (patches, 3*T*P*P) float32 and the
    grid (1, 3) = (t, h, w) in patches, as `pixel_values_videos` / `video_grid_thw`.

    The last frame is repeated to a multiple of the temporal patch, as the processor does; patch order is
    (t, h/merge, w/merge, merge, merge) and each patch is (C, T, P, P), flattened."""
    n, height, width, _ = frames.shape
    side = spec.patch * spec.merge
    if height % side or width % side:
        raise ValueError(f"frames of {width}x{height} px are not multiples of {side} px")
    x = frames.permute(0, 3, 1, 2).float()  # (N, C, H, W)
    mean = torch.tensor(spec.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device=x.device).view(1, 3, 1, 1)
    x = (x * spec.rescale - mean) / std
    if pad := -n % spec.temporal:
        x = torch.cat([x, x[-1:].expand(pad, -1, -1, -1)])
    c = x.shape[1]
    gt, gh, gw = x.shape[0] // spec.temporal, height // spec.patch, width // spec.patch
    p = x.view(gt, spec.temporal, c, gh // spec.merge, spec.merge, spec.patch, gw // spec.merge, spec.merge, spec.patch)
    p = p.permute(0, 3, 6, 4, 7, 2, 1, 5, 8).reshape(gt * gh * gw, c * spec.temporal * spec.patch * spec.patch)
    return p, torch.tensor([[gt, gh, gw]])
