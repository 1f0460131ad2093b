"""Model adapters: attaching AdaSpark to transformers' video LLMs (one module per architecture in arch/)."""

from .arch import ARCHITECTURES, SUPPORTED_CLASSES, Architecture, architecture_of
from .positions import mrope_position_ids
from .sparse import SparseState, adaspark_attention, sparse_state, sparsify, unsparsify
from .vision import fast_vision, restore_vision, vision_state

__all__ = [
    "ARCHITECTURES",
    "SUPPORTED_CLASSES",
    "Architecture",
    "SparseState",
    "adaspark_attention",
    "architecture_of",
    "fast_vision",
    "mrope_position_ids",
    "restore_vision",
    "sparse_state",
    "sparsify",
    "unsparsify",
    "vision_state",
]
