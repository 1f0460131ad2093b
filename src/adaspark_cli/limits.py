"""The limits of the inputs a user sets, each checked in one place (by the library and at the CLI boundary).

This module imports neither torch nor numpy, so the CLI can check its flags with these very functions
before it loads anything; the messages name the flag and a fix.
"""

from __future__ import annotations

import math
import numbers
import re
from typing import Any

from .errors import AdasparkError

DEFAULT_MAX_PIXELS = 448 * 448  # per frame: a 16 x 16 token grid per frame pair
MIN_PIXELS = 4 * 28 * 28  # never upscale small frames beyond the 2 x 2 token minimum
DECODERS = ("auto", "decord", "pyav")  # the video decoders (--decoder)
KERNELS = ("auto", "reference", "gathered", "flex", "fa4")  # --kernel: "auto" and attention.kernels.IMPLEMENTATIONS
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")  # what --device takes


def is_real(x: Any) -> bool:
    """A real number, not a bool."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _shown(x: Any) -> str:
    return f"{x:g}" if is_real(x) else repr(x)


def check_fps(fps: Any, error: type[AdasparkError] = AdasparkError) -> None:
    if not is_real(fps) or not math.isfinite(fps) or fps <= 0:
        raise error(f"--fps must be a number > 0, got {_shown(fps)}; e.g. --fps 2")


def check_max_frames(max_frames: Any, error: type[AdasparkError] = AdasparkError) -> None:
    if not isinstance(max_frames, numbers.Integral) or isinstance(max_frames, bool):
        raise error(f"--max-frames must be a whole number, got {max_frames!r}; e.g. --max-frames 256")
    if max_frames < 1:
        raise error(f"--max-frames must be at least 1, got {max_frames}; e.g. --max-frames 256")


def check_max_pixels(max_pixels: int, error: type[AdasparkError] = AdasparkError) -> None:
    if max_pixels < MIN_PIXELS:
        raise error(f"--max-pixels {max_pixels} is below the minimum {MIN_PIXELS} (2x2 tokens of 28x28 px); "
                    f"e.g. --max-pixels {DEFAULT_MAX_PIXELS}")


def check_max_new_tokens(max_new_tokens: int, error: type[AdasparkError] = AdasparkError) -> None:
    if max_new_tokens < 1:
        raise error(f"--max-new-tokens must be at least 1, got {max_new_tokens}")


def check_decoder(decoder: Any, error: type[AdasparkError] = AdasparkError) -> None:
    if not isinstance(decoder, str) or decoder not in DECODERS:
        raise error(f"unknown --decoder {decoder!r}; use --decoder {', '.join(DECODERS[:-1])} or {DECODERS[-1]}")


def check_kernel(kernel: Any, error: type[AdasparkError] = AdasparkError) -> None:
    if not isinstance(kernel, str) or kernel not in KERNELS:
        raise error(f"unknown attention kernel {kernel!r}; use --kernel {' / '.join(KERNELS)}")


def check_device(device: Any, error: type[AdasparkError] = AdasparkError) -> None:
    """auto, cpu, mps, cuda or cuda:N (whether that device exists is known only once torch loads)."""
    if not isinstance(device, str) or not _DEVICE.fullmatch(device):
        raise error(f"--device {device!r} is not a device; use --device auto, cpu, mps, cuda or cuda:N")


def format_bytes(n: float) -> str:
    """1536 -> "1.5 KiB" (whole bytes below 1 KiB, TiB at most)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
