"""Video input: decode a file into uniformly time-sampled RGB frames (decord or PyAV backend)."""

from .decode import BACKENDS, DecodedVideo, decode_video, sample_indices

__all__ = ["BACKENDS", "DecodedVideo", "decode_video", "sample_indices"]
