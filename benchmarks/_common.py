"""What the benchmarks share: the library on the path, logging, the environment block, timers, JSON results,
the Qwen2.5-VL-7B shapes with a random-weight model of them, and the generated test video.

Each benchmark is a script (``python benchmarks/bench_x.py``), so this folder is on ``sys.path`` and
``import _common`` finds this module; importing it puts ``src/`` on the path too.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))

T0 = time.perf_counter()  # the script's start, for elapsed times and budgets


# ---- logging and the environment -----------------------------------------------------------------


def elapsed() -> float:
    """Seconds since the benchmark started."""
    return time.perf_counter() - T0


def log(msg: str = "") -> None:
    print(msg, flush=True)


def log_stamped(msg: str) -> None:
    """`log` with the seconds since the start in front (for long runs read as they go)."""
    print(f"[{elapsed():7.1f}s] {msg}", flush=True)


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO)
    except OSError:
        return None
    return out.stdout.strip() or None


def environment(cuda: bool, *, packages: Iterable[str] = (), cpu_note: str = "cpu") -> dict[str, Any]:
    """Date, command, machine, versions (torch, transformers and `packages`; None where not installed), commit."""
    import importlib.metadata as md

    import torch

    env: dict[str, Any] = {
        "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "host": platform.node(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(0) if cuda else cpu_note,
        "commit": git_commit(),
    }
    for dist in ("transformers", *packages):
        try:
            env[dist] = md.version(dist)
        except md.PackageNotFoundError:
            env[dist] = None
    return env


# ---- timers and results ----------------------------------------------------------------------------


def cuda_or_smoke(smoke: bool, flag: str) -> bool | None:
    """Whether to run on CUDA: never for a smoke run (`flag`, on the CPU); None, after saying so, when there is
    no CUDA device for a real run (the caller exits 2)."""
    import torch

    cuda = torch.cuda.is_available() and not smoke
    if not cuda and not smoke:
        log(f"no CUDA device: run with {flag} for a CPU smoke run of the code paths")
        return None
    return cuda


def sync(device: Any) -> None:
    """Wait for the device (CUDA runs asynchronously), so that wall times measure the work."""
    from adaspark_cli.qa.preprocess import sync_device

    sync_device(device)


def time_ms(fn: Callable[[], Any], *, reps: int, warmup: int = 0, cuda: bool) -> list[float]:
    """Milliseconds of each of `reps` calls of `fn` after `warmup` untimed ones (CUDA events on CUDA)."""
    import torch

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if cuda:
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
    return times


def wall_seconds(fn: Callable[[], Any], device: Any) -> float:
    """Seconds of one call of `fn`, the device synchronised before and after."""
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def write_json(results: dict[str, Any], path: str | Path | None) -> None:
    """The raw results (indent 1; what JSON cannot hold as its string), where a path is given."""
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1, default=str) + "\n", encoding="utf-8")


def out_file(folder: str | None, name: str) -> Path | None:
    """`folder`/`name` for an --out folder (the device machine's $OUT), or None without one."""
    return None if not folder else Path(folder) / name


# ---- model shapes ----------------------------------------------------------------------------------

# Qwen2.5-VL-7B-Instruct's language model and vision tower
TEXT_7B = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
               num_attention_heads=28, num_key_value_heads=4, hidden_act="silu", max_position_embeddings=128000,
               rms_norm_eps=1e-6, use_sliding_window=False, sliding_window=32768, max_window_layers=28,
               rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
               tie_word_embeddings=False)
HEAD_DIM_7B = TEXT_7B["hidden_size"] // TEXT_7B["num_attention_heads"]  # 128
VISION_7B = dict(depth=32, hidden_size=1280, num_heads=16, intermediate_size=3420, out_hidden_size=3584,
                 hidden_act="silu", in_channels=3, patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                 window_size=112, fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2)
# the tiny checkpoint's shapes (smoke runs on the CPU)
TEXT_TINY = dict(TEXT_7B, vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192, max_window_layers=2,
                 rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]})
VISION_TINY = dict(VISION_7B, depth=2, hidden_size=32, num_heads=2, intermediate_size=64, out_hidden_size=64,
                   fullatt_block_indexes=[1])


def random_model(text: dict[str, Any], vision: dict[str, Any], *, device: Any, dtype: Any,
                 **token_ids: int) -> Any:
    """A random-weight Qwen2.5-VL of these shapes, built on `device` directly (seed 0, SDPA, eval mode).

    `token_ids`: Qwen2_5_VLConfig's *_token_id arguments; bos / eos / pad go into the text config too."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    special = {k: v for k, v in token_ids.items() if k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    config = Qwen2_5_VLConfig(text_config={**text, **special}, vision_config=vision, tie_word_embeddings=False,
                              **token_ids)
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(
            config, dtype=dtype, attn_implementation={"text_config": "sdpa", "vision_config": "sdpa"})
    return model.eval()


# ---- videos ----------------------------------------------------------------------------------------


def write_panning_video(path: Path, *, width: int, height: int, fps: int, frames: int, shift: int,
                        options: dict[str, str]) -> Path:
    """H.264 (x264 ultrafast, crf 28, plus `options`) of a blocky random texture panning right by `shift` px a
    frame; seeded, so the same arguments give the same frames. Frames are made one at a time (a 10-minute
    video never sits in memory)."""
    from adaspark_cli.synth.encode import encode_frames

    rng = np.random.default_rng(0)
    texture = rng.integers(40, 215, size=(height // 16 + 1, (width + 400) // 16 + 1, 3), dtype=np.uint8)
    texture = texture.repeat(16, 0).repeat(16, 1)[:height, : width + 400]
    shown = (texture[:, (i * shift) % 400 : (i * shift) % 400 + width] for i in range(frames))
    return encode_frames(path, shown, rate=Fraction(fps), width=width, height=height,
                         options={"preset": "ultrafast", "crf": "28", **options})
