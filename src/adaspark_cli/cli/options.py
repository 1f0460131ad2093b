"""Option bundles shared by the commands (model, device, sparsity, video sampling, output)."""

from __future__ import annotations

from typing import Any

import typer

from ..config import parse_cube, parse_layers, validate_top_p
from ..qa import DEFAULT_MAX_PIXELS

MODEL = typer.Option(
    None, "--model", "-m", help="Qwen2.5-VL checkpoint: a local directory or a Hugging Face hub id (cache and "
    "HF_HUB_OFFLINE honoured). Default: $ADASPARK_MODEL, else the bundled model.", show_default=False
)
DEVICE = typer.Option("auto", "--device", help="auto (CUDA when present, else CPU), cpu, cuda or cuda:N.")
DENSE = typer.Option(False, "--dense", help="Run the unmodified dense model (same weights, no sparsity).")
CUBE = typer.Option(None, "--cube", help="Cube size TxHxW in language-model tokens (1 token = 2 frames x 28x28 px). "
                    "Default: the checkpoint's, else 2x8x8.", show_default=False)
TOP_P = typer.Option(None, "--top-p", help="Set both --attn-top-p and --ffn-top-p (0 < p <= 1; 1 = dense).", show_default=False)
ATTN_TOP_P = typer.Option(None, "--attn-top-p", help="Mass of cube relevance each video query attends. Default: "
                          "the checkpoint's, else 0.9.", show_default=False)
FFN_TOP_P = typer.Option(None, "--ffn-top-p", help="Mass of token norms per cube that goes through the FFN. "
                         "Default: the checkpoint's, else 0.7.", show_default=False)
DECODE_TOP_P = typer.Option(None, "--decode-top-p", help="Answer tokens attend only this mass of cube relevance "
                            "of the video (plus all text); 1 = dense. Default: the checkpoint's, else dense decoding.",
                            show_default=False)
LAYERS = typer.Option(None, "--layers", help="Sparse layers: 'all' or e.g. '4-27' or '0,2,5'. Default: the "
                      "checkpoint's, else all.", show_default=False)
FPS = typer.Option(2.0, "--fps", help="Frames sampled per second of video.")
MAX_FRAMES = typer.Option(256, "--max-frames", help="At most this many frames, spread over the whole video.")
MAX_PIXELS = typer.Option(DEFAULT_MAX_PIXELS, "--max-pixels", help="Pixels per frame after resizing (multiples of "
                          "28x28 px; 448x448 = 16x16 tokens per frame pair). As in qwen-vl-utils, a very long video "
                          "also gets at most ~115K video tokens in all.")
DECODER = typer.Option("auto", "--decoder", help="Video decoder: auto (decord where seeking to keyframes pays, else "
                       "PyAV reading sequentially; each falls back to the other), decord or pyav.")
ASK_DECODER = typer.Option("auto", "--decoder", help="Video decoder: auto (pipelined: 2 worker threads decode and "
                           "resize 32 frames at a time, seeking by timestamp, while the vision tower runs on the "
                           "previous chunk; a file without usable timestamps is read in one go instead, with decord "
                           "where seeking to keyframes pays, else PyAV), decord or pyav (every sampled frame is read "
                           "first with that library, then the vision tower runs; no fallback).")
KERNEL = typer.Option("auto", "--kernel", help="Sparse attention kernel: auto (on CUDA FlashAttention-4 where "
                      "installed, else FlexAttention; on the CPU the gathered block kernel; all select per 128-token "
                      "query tile), reference (the exact per-token method), gathered, flex or fa4.")
JSON = typer.Option(False, "--json", help="Print one JSON object per question on stdout instead of the streamed answer.")
QUIET = typer.Option(False, "--quiet", "-q", help="No notes or tables on stderr.")


def sparsity_overrides(
    cube: str | None,
    top_p: float | None,
    attn_top_p: float | None,
    ffn_top_p: float | None,
    layers: str | None,
    decode_top_p: float | None = None,
) -> dict[str, Any]:
    """The given flags as AdaSparkConfig field overrides; raises ConfigError on bad values."""
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
    if decode_top_p is not None:
        validate_top_p("--decode-top-p", decode_top_p)
        overrides["decode_top_p"] = decode_top_p
    if cube is not None:
        overrides["cube"] = parse_cube(cube)
    if layers is not None:
        overrides["sparse_layers"] = parse_layers(layers)
    return overrides
