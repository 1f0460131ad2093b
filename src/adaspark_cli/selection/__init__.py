"""Selection: which cubes each video query attends (AdaS-Attn's top-p over cube mean keys), as data."""

from .scoring import cube_mean_keys, cube_probabilities, nucleus_mask
from .select import (
    Selection,
    attended_cubes,
    block_structure,
    random_selection,
    select_per_block,
    select_per_token,
    union_per_block,
    with_blocks,
)

__all__ = [
    "Selection",
    "attended_cubes",
    "block_structure",
    "cube_mean_keys",
    "cube_probabilities",
    "nucleus_mask",
    "random_selection",
    "select_per_block",
    "select_per_token",
    "union_per_block",
    "with_blocks",
]
