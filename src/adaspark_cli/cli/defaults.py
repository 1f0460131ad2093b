"""Library defaults and choices that the help texts show and that flags are checked against early.

Values whose library module is torch- and numpy-free (adaspark_cli.limits) are imported; the others are
copied here so that `adaspark --help`, `--version` and usage errors load neither torch nor numpy (qa/,
adapters/, video/ and synth/ import them when loaded). tests/test_cli_boundary.py checks that every value
equals the library's.
"""

from __future__ import annotations

from ..api import DECODERS, DEFAULT_MAX_PIXELS, KERNELS, MIN_PIXELS  # noqa: F401  (torch-free: imported, not copied)

DEFAULT_QUESTION = "Describe the video."  # qa.profile.DEFAULT_QUESTION
DEFAULT_GRID = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.3)  # qa.calibrate.DEFAULT_GRID
TASKS = ("retrieval", "ordering", "counting", "motion")  # synth.scene.TASKS
MIN_FRAMES, MAX_FRAMES = 16, 4096  # synth.scene.MIN_FRAMES, MAX_FRAMES
DEFAULT_LENGTHS = (16, 64, 256, 1024)  # synth.suite.DEFAULT_LENGTHS
DEFAULT_DEPTHS = (0.1, 0.5, 0.9)  # synth.suite.DEFAULT_DEPTHS
MAX_SEED = 2**63 - 1  # qa.decode.MAX_SEED
