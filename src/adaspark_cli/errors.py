"""Error types of the adaspark library: each message names the problem and a fix.

The CLI turns these into one line on stderr and a non-zero exit; the library never prints.
"""


class AdasparkError(Exception):
    """Base class of every error the library raises on purpose."""


class VideoError(AdasparkError):
    """The video cannot be opened, has no video stream or yields no frames."""


class CheckpointError(AdasparkError):
    """The model path or hub id is missing, not cached, or not a supported checkpoint."""


class ConfigError(AdasparkError):
    """An AdaSpark setting (cube shape, top-p, layer list, ...) is invalid."""
