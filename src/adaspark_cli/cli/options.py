"""Option bundles shared by the commands (model, device, sparsity, video sampling, output)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from .. import api
from ..api import MAX_CUBE_SIDE, parse_cube, parse_layers, validate_top_p
from .defaults import DECODERS, DEFAULT_MAX_PIXELS, KERNELS, MAX_SEED
from .errors import FlagError, UsageError, usage

# A question is prefilled densely after the video (before issue 13 its KV cache was copied per question):
# 100,000 characters took 1:41 and 6.4 GB with the bundled model on a 2-core CPU. 10,000 characters is roughly 2,500 tokens.
MAX_QUESTION_CHARS = 10_000
VIDEO_SUFFIXES = frozenset(
    ".mp4 .m4v .mov .mkv .webm .avi .ts .mts .m2ts .mpg .mpeg .flv .wmv .3gp .ogv .gif".split()
)
# A URL given as a path: the Path argument has already folded "https://" to "https:/"
_URL = re.compile(r"[a-z][a-z0-9+.-]+:/", re.IGNORECASE)


def choice(flag: str, noun: str, values: tuple[str, ...]) -> dict[str, Any]:
    """typer.Option arguments for a flag with a fixed set of values: Typer checks it while parsing (exit 2, a
    one-line error naming the flag and the values) and the help lists the values."""

    def parse(value: str) -> str:
        if value not in values:
            raise FlagError(f"{flag} {value!r} is not {noun}; use {flag} {', '.join(values)}")
        return value

    return {"parser": parse, "metavar": f"<{'|'.join(values)}>"}


def checked(check: Callable[[str], Any], metavar: str) -> dict[str, Any]:
    """typer.Option arguments for a flag that a library function checks (the same check a Python caller gets):
    its error is the one-line usage error."""

    def parse(value: str) -> str:
        try:
            check(value)
        except api.AdasparkError as exc:
            raise FlagError(str(exc)) from None
        return value

    return {"parser": parse, "metavar": metavar}


MODEL = typer.Option(
    None, "--model", "-m", help="Qwen2.5-VL or Qwen3-VL checkpoint: a local directory or a Hugging Face hub id (cache and "
    "HF_HUB_OFFLINE honoured). Default: $ADASPARK_MODEL, else the bundled model.", show_default=False
)
DEVICE = typer.Option("auto", "--device", help="auto (CUDA when present, else CPU), cpu, mps, cuda or cuda:N.",
                      **checked(lambda device: api.check_device(device), "<auto|cpu|mps|cuda|cuda:N>"))
DEVICE_MAP = typer.Option(None, "--device-map", **checked(lambda strategy: api.parse_device_map(strategy), "STRATEGY"),
                          help="Spread the model's layers over the visible GPUs through accelerate, for a model "
                          "too large for one: auto or balanced (even shares), balanced_low_0 (less on GPU 0) or "
                          "sequential (fill GPU 0 first). What fits no GPU stays in CPU memory, then on disk, and "
                          "is copied in for each forward (slow). Replaces --device; needs pip install accelerate.",
                          show_default=False)
MAX_MEMORY = typer.Option(None, "--max-memory", metavar="DEVICE=SIZE,...", help="With --device-map: the most "
                          "weights each device takes, e.g. '0=40GiB,1=70GiB,cpu=200GiB' (GPU index or cpu; KB, MB, "
                          "GB, KiB, MiB, GiB, TB). Default: what each device has free.", show_default=False)
DENSE = typer.Option(False, "--dense", help="Run the unmodified dense model (same weights, no sparsity).")
CUBE = typer.Option(None, "--cube", help="Cube size TxHxW in language-model tokens (1 token = 2 frames x 28x28 px). "
                    f"Each side at most {MAX_CUBE_SIDE}. Default: the checkpoint's, else 2x8x8.", show_default=False)
TOP_P = typer.Option(None, "--top-p", help="Set both --attn-top-p and --ffn-top-p (0 < p <= 1; 1 = dense).", show_default=False)
ATTN_TOP_P = typer.Option(None, "--attn-top-p", help="Mass of cube relevance each video query attends. Default: "
                          "the checkpoint's, else 0.9.", show_default=False)
FFN_TOP_P = typer.Option(None, "--ffn-top-p", help="Mass of token norms per cube that goes through the FFN. "
                         "Default: the checkpoint's, else 0.7.", show_default=False)
MAX_NEW_TOKENS = typer.Option(128, "--max-new-tokens", help="Stop an answer after this many tokens.")
TEMPERATURE = typer.Option(0.0, "--temperature", help="Sample each answer token from the softmax of logits / T; "
                           "0 (the default) picks the most likely token (greedy). Sparsity is unchanged.")
SEED = typer.Option(None, "--seed", help="Seed of the sampling with --temperature: the same seed gives the same "
                    "answers. Default: a fresh random seed.", show_default=False)
LAYERS = typer.Option(None, "--layers", help="Sparse layers: 'all' or e.g. '4-27' or '0,2,5'. Default: the "
                      "checkpoint's, else all.", show_default=False)
FPS = typer.Option(2.0, "--fps", help="Frames sampled per second of video.")
MAX_FRAMES = typer.Option(256, "--max-frames", help="At most this many frames, spread over the whole video.")
MAX_PIXELS = typer.Option(DEFAULT_MAX_PIXELS, "--max-pixels", help="Pixels per frame after resizing (multiples of "
                          "28x28 px; 448x448 = 16x16 tokens per frame pair). As in qwen-vl-utils, a very long video "
                          "also gets at most ~115K video tokens in all.")
DECODER = typer.Option("auto", "--decoder", **choice("--decoder", "a decoder", DECODERS),
                       help="Video decoder: auto (decord where seeking to keyframes pays, else PyAV reading "
                       "sequentially; each falls back to the other), decord or pyav.")
ASK_DECODER = typer.Option("auto", "--decoder", **choice("--decoder", "a decoder", DECODERS),
                           help="Video decoder: auto (pipelined: 2 worker threads decode and resize 32 frames at a "
                           "time, seeking by timestamp, while the vision tower runs on the previous chunk; a file "
                           "without usable timestamps is read in one go instead, with decord where seeking to "
                           "keyframes pays, else PyAV), decord or pyav (every sampled frame is read first with that "
                           "library, then the vision tower runs; no fallback).")
KERNEL = typer.Option("auto", "--kernel", **choice("--kernel", "a kernel", KERNELS),
                      help="Sparse attention kernel: auto (on CUDA FlashAttention-4 where installed, else "
                      "FlexAttention; on the CPU the gathered block kernel; all select per 128-token query tile), "
                      "reference (the exact per-token method), gathered, flex or fa4.")
JSON = typer.Option(False, "--json", help="Print one JSON object per question on stdout instead of the streamed answer.")
QUIET = typer.Option(False, "--quiet", "-q", help="No notes, progress or tables on stderr.")
REPORT_QUIET = typer.Option(False, "--quiet", "-q", help="No notes or progress on stderr; with --json, no tables "
                            "there either (without --json the tables are the output, on stdout).")


def sparsity_overrides(
    cube: str | None,
    top_p: float | None,
    attn_top_p: float | None,
    ffn_top_p: float | None,
    layers: str | None,
) -> dict[str, Any]:
    """The given flags as AdaSparkConfig field overrides; raises UsageError on bad values."""
    with usage():
        return _overrides(cube, top_p, attn_top_p, ffn_top_p, layers)


def _overrides(cube: str | None, top_p: float | None, attn_top_p: float | None, ffn_top_p: float | None,
               layers: str | None) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for flag, value, fields in (
        ("--top-p", top_p, ("attn_top_p", "ffn_top_p")),
        ("--attn-top-p", attn_top_p, ("attn_top_p",)),
        ("--ffn-top-p", ffn_top_p, ("ffn_top_p",)),
    ):
        if value is not None:
            validate_top_p(flag, value)
            overrides.update(dict.fromkeys(fields, value))
            overrides["layer_top_p"] = None  # a top-p flag sets every layer, also in a per-layer checkpoint
    if cube is not None:
        overrides["cube"] = parse_cube(cube, name="--cube")
    if layers is not None:
        overrides["sparse_layers"] = parse_layers(layers, name="--layers")
    return overrides


def check_at_least(flag: str, value: int | None, minimum: int) -> None:
    if value is not None and value < minimum:
        raise UsageError(f"{flag} must be at least {minimum}, got {value}")


def check_sampling(fps: float, max_frames: int) -> None:
    """--fps and --max-frames, checked before the video is opened (the library's checks)."""
    api.check_fps(fps, UsageError)
    api.check_max_frames(max_frames, UsageError)


def check_answer_sampling(temperature: float, seed: int | None) -> None:
    """--temperature and --seed (the library's limits, as flags)."""
    if not math.isfinite(temperature) or temperature < 0:
        raise UsageError(f"--temperature must be a number >= 0 (0 = greedy), got {temperature:g}; e.g. --temperature 0.7")
    if seed is not None:
        if temperature == 0:
            raise UsageError("--seed only applies to sampled answers; add --temperature, e.g. --temperature 0.7")
        if not 0 <= seed <= MAX_SEED:
            raise UsageError(f"--seed must be between 0 and {MAX_SEED}, got {seed}; e.g. --seed 0")


def device_map_spec(device_map: str | None, max_memory: str | None, device: str) -> Any:
    """--device-map (a strategy, checked while parsing) and --max-memory as a placement.DeviceMapSpec (None
    without --device-map); usage errors for bad values and combinations, a one-line library error when
    accelerate is missing."""
    if device_map is None:
        if max_memory is not None:
            raise UsageError("--max-memory caps the devices of --device-map; add --device-map auto")
        return None
    with usage():
        caps = api.parse_max_memory(max_memory) if max_memory is not None else ()
    if device != "auto":
        raise UsageError(f"--device-map places the model's layers itself; drop --device {device}")
    api.require_accelerate()
    return api.DeviceMapSpec(strategy=device_map, max_memory=caps)


def check_max_pixels(max_pixels: int) -> None:
    api.check_max_pixels(max_pixels, UsageError)


def check_max_new_tokens(max_new_tokens: int) -> None:
    api.check_max_new_tokens(max_new_tokens, UsageError)


def check_video_path(path: Path, where: str = "VIDEO") -> None:
    """A local file is wanted: a URL is refused with the fix."""
    if _URL.match(str(path)):
        raise UsageError(f"{where} must be a local file; URLs are not supported: download it first, e.g. "
                         "curl -L -o clip.mp4 URL")


def check_question(question: str, where: str = "QUESTION") -> str:
    """The question stripped; empty, whitespace-only or longer than MAX_QUESTION_CHARS is a UsageError."""
    text = question.strip()
    if not text:
        raise UsageError(f"{where} is empty; ask something, e.g. \"What happens in the video?\"")
    if len(text) > MAX_QUESTION_CHARS:
        raise UsageError(f"{where} has {len(text):,} characters; the limit is {MAX_QUESTION_CHARS:,}: shorten it")
    return text


def looks_like_video(text: str) -> bool:
    """A video file name rather than a question: a video suffix, and the file exists or the text has no space."""
    path = Path(text)
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        return False
    try:
        return path.is_file() or not any(c.isspace() for c in text)
    except OSError:  # a name too long for the filesystem is no file
        return False


def check_questions(questions: list[str], command: str) -> list[str]:
    """Each question checked (check_question); a video file name among them is refused: one video per run."""
    for question in questions:
        if looks_like_video(question):
            raise UsageError(f"{question!r} is a video file, not a question; {command} takes one VIDEO and then "
                             f"questions: run adaspark {command} once per video")
    return [check_question(q) for q in questions]
