"""Video input: decode a file into uniformly time-sampled RGB frames (decord or PyAV backend)."""

from .decode import BACKENDS, MAX_REPLACED_FRACTION, DecodedVideo, decode_video, sample_indices, sample_times

__all__ = ["BACKENDS", "MAX_REPLACED_FRACTION", "DecodedVideo", "decode_video", "sample_indices", "sample_times"]
