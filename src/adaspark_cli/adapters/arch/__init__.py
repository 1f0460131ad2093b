"""The supported architectures, by transformers class (one module each; the interface is base.py)."""

from __future__ import annotations

from ...errors import CheckpointError
from .base import Architecture, HFModule
from .qwen2_5_vl import QWEN2_5_VL
from .qwen3_vl import QWEN3_VL

ARCHITECTURES: tuple[Architecture, ...] = (QWEN2_5_VL, QWEN3_VL)
SUPPORTED_CLASSES = tuple(c for arch in ARCHITECTURES for c in arch.classes)
# config.json model_type -> transformers class name
MODEL_CLASSES = {t: c for arch in ARCHITECTURES for t, c in zip(arch.model_types, arch.classes)}


def supported_text() -> str:
    """'Qwen2.5-VL (Qwen2_5_VLForConditionalGeneration) and Qwen3-VL (...)', for messages."""
    return " and ".join(f"{arch.name} ({', '.join(arch.classes)})" for arch in ARCHITECTURES)


def architecture_of(model: HFModule) -> Architecture:
    """The architecture of a transformers model, or a one-line CheckpointError naming the supported classes."""
    name = type(model).__name__
    for arch in ARCHITECTURES:
        if name in arch.classes:
            return arch
    raise CheckpointError(f"{name} is not supported; adaspark works with {supported_text()} checkpoints")


__all__ = [
    "ARCHITECTURES", "MODEL_CLASSES", "SUPPORTED_CLASSES", "Architecture", "HFModule", "architecture_of", "supported_text",
]
