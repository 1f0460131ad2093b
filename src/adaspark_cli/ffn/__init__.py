"""AdaS-FFN: per-cube token selection by norm with mean compensation."""

from .reference import adas_ffn_gathered, adas_ffn_reference, cube_mean_of_kept, select_ffn_tokens

__all__ = ["adas_ffn_gathered", "adas_ffn_reference", "cube_mean_of_kept", "select_ffn_tokens"]
