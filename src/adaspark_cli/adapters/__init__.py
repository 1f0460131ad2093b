"""Model adapters: attaching AdaSpark to transformers' Qwen2.5-VL."""

from .positions import mrope_position_ids
from .qwen2_5_vl import SparseState, adaspark_attention, sparse_state, sparsify, unsparsify

__all__ = ["SparseState", "adaspark_attention", "mrope_position_ids", "sparse_state", "sparsify", "unsparsify"]
