"""Model adapters: attaching AdaSpark to transformers' Qwen2.5-VL."""

from .positions import mrope_position_ids
from .qwen2_5_vl import SparseState, adaspark_attention, sparse_state, sparsify, unsparsify
from .vision import fast_vision, restore_vision, vision_state

__all__ = [
    "SparseState",
    "adaspark_attention",
    "fast_vision",
    "mrope_position_ids",
    "restore_vision",
    "sparse_state",
    "sparsify",
    "unsparsify",
    "vision_state",
]
