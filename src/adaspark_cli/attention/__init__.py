"""AdaS-Attn: cube scoring, top-p selection and the exact reference attention."""

from .reference import AttentionStats, adas_attention_reference, allowed_keys
from .selection import cube_mean_keys, cube_probabilities, nucleus_mask

__all__ = [
    "AttentionStats",
    "adas_attention_reference",
    "allowed_keys",
    "cube_mean_keys",
    "cube_probabilities",
    "nucleus_mask",
]
