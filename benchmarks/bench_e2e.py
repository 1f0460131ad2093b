"""End-to-end time to the first answer token (issue 6, part 4): stock transformers against adaspark, dense and sparse.

A Qwen2.5-VL-7B-shaped model with random weights (language model: hidden 3584, 28 layers, 28 / 4 heads,
FFN 18944; vision tower: as benchmarks/bench_vision.py), built directly on the GPU in bf16. Its tokenizer
is the tiny BPE of `adaspark_cli.checkpoint.tiny` (no download), with the special-token ids set in the
config to match; the video processor is Qwen2.5-VL's (patch 14, merge 2, temporal patch 2).

Videos are generated once (PyAV, H.264, 448x448, 8 fps, a drifting blocky texture) and sampled at 8 fps,
every frame: 448x448 is 32x32 patches = 256 language-model tokens per frame pair, so
128 / 256 / 512 frames give 16K / 32K / 64K video tokens (--sizes 16,32,64).

Pipelines, each on the same model object, same video, same question, one new token:
  stock   decode_video (one array), the processor on all frames, `model.generate(max_new_tokens=1)` with
          transformers' own vision tower (per-window loop) and SDPA attention; `unsparsify` + `restore_vision`.
  dense   adaspark VideoQA with sparsity off: pipelined decode (open_video_stream, chunks of 32 frames
          decoded and resized in 2 worker threads) overlapping the fast vision tower, then the prefill.
  sparse  the same with AdaSpark on (--kernel auto: FA4 where installed, else FlexAttention; default top-p).
Stages: decode_s (decoding not hidden behind other work), preprocess_s (the processor), vision_s (vision
tower), prefill_s (language model: video prefix and question), first_token_s (their sum); wall_s is the
wall clock of the whole call. Each (size, pipeline) runs once as warm-up (kernels, torch.compile for the
length, the fast tower's index cache) and then --repeats times; medians are reported.

Usage (GPU machine, ~5-7 minutes):
    PYTHONPATH=src python3 benchmarks/bench_e2e.py --out $OUT/bench_e2e.json
CPU smoke run of the code paths (tiny model, tiny videos, no timing claims):
    python benchmarks/bench_e2e.py --quick --out /tmp/bench_e2e_quick.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from _common import (  # this folder is on sys.path when run as a script; it puts src/ there too
    TEXT_7B,
    TEXT_TINY,
    VISION_7B,
    VISION_TINY,
    cuda_or_smoke,
    elapsed,
    environment,
    log,
    random_model,
    sync,
    write_json,
    write_panning_video,
)

from adaspark_cli.adapters import sparsify, unsparsify
from adaspark_cli.adapters.vision import fast_vision, restore_vision
from adaspark_cli.checkpoint.tiny import SPECIAL_TOKENS, build_tiny_processor
from adaspark_cli.config import AdaSparkConfig
from adaspark_cli.qa import VideoQA
from adaspark_cli.qa.session import MIN_PIXELS
from adaspark_cli.video import decode_video
from adaspark_cli.video.stream import open_video_stream

QUESTION = "What happens in the video?"
FPS = 8.0
# ---- model, processor, videos ------------------------------------------------------------------


def build_model(quick: bool, device: torch.device, dtype: torch.dtype) -> tuple[Any, Any]:
    """A random-weight Qwen2.5-VL of the 7B shapes (or the tiny ones), built on `device` directly."""
    processor = build_tiny_processor()
    # the processor's own pixel limits are never used: every call passes --max-pixels explicitly
    tok = processor.tokenizer
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    model = random_model(
        TEXT_TINY if quick else TEXT_7B, VISION_TINY if quick else VISION_7B, device=device, dtype=dtype,
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
    )
    model.generation_config.do_sample = False
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    return model, processor


def write_video(path: Path, frames: int, size: int) -> Path:
    """`frames` frames of size x size at 8 fps: a blocky random texture drifting right (x264 ultrafast, crf 28)."""
    return write_panning_video(path, width=size, height=size, fps=int(FPS), frames=frames, shift=3, options={"g": "250"})


# ---- the three pipelines -------------------------------------------------------------------------


def run_stock(model: Any, processor: Any, path: Path, frames: int, max_pixels: int, device: torch.device) -> dict:
    """decode_video -> processor -> model.generate(max_new_tokens=1), transformers' own modules."""
    from transformers.video_utils import VideoMetadata

    unsparsify(model)
    restore_vision(model)
    vision: list[float] = []
    started: list[float] = []

    def before(*_: Any) -> None:  # hooks must return None, or they replace the tower's inputs / output
        sync(device)
        started.append(time.perf_counter())

    def after(*_: Any) -> None:
        sync(device)
        vision.append(time.perf_counter() - started.pop())

    hooks = [model.model.visual.register_forward_pre_hook(before), model.model.visual.register_forward_hook(after)]
    try:
        sync(device)
        start = time.perf_counter()
        video = decode_video(path, fps=FPS, max_frames=frames, backend="auto")
        decoded = time.perf_counter()
        messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": QUESTION}]}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        meta = VideoMetadata(total_num_frames=video.total_frames, fps=video.source_fps,
                             frames_indices=[int(i) for i in video.indices])
        inputs = processor(text=[text], videos=[video.frames], video_metadata=[meta], do_sample_frames=False,
                           size={"shortest_edge": MIN_PIXELS, "longest_edge": max_pixels}, cap_pixels_per_frame=True,
                           return_tensors="pt").to(device)
        preprocessed = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=1, do_sample=False)
        sync(device)
        end = time.perf_counter()
    finally:
        for hook in hooks:
            hook.remove()
    assert out.shape[1] == inputs["input_ids"].shape[1] + 1
    stages = {"decode_s": decoded - start, "preprocess_s": preprocessed - decoded, "vision_s": sum(vision),
              "prefill_s": end - preprocessed - sum(vision)}
    return {**stages, "first_token_s": sum(stages.values()), "wall_s": end - start,
            "video_tokens": int((inputs["input_ids"] == model.config.video_token_id).sum()), "frames": len(video.indices)}


def run_adaspark(qa: VideoQA, path: Path, frames: int, max_pixels: int, device: torch.device) -> dict:
    """open_video_stream -> prepare_video_stream (pipelined decode + fast tower) -> prefill -> first token."""
    sync(device)
    start = time.perf_counter()
    stream = open_video_stream(path, fps=FPS, max_frames=frames)
    prompt = qa.prepare_video_stream(stream, max_pixels=max_pixels)
    prefix = qa.prefill_video(prompt)
    answer = qa.answer(prefix, QUESTION, max_new_tokens=1)
    list(answer)
    sync(device)
    end = time.perf_counter()
    timing = dict(answer.result.timing)
    return {**timing, "wall_s": end - start, "video_tokens": prompt.video_tokens, "frames": prompt.frames,
            "decode_busy_s": stream.seconds, "flops_reduction": answer.result.flops().get("reduction")}


def pipeline_config(pipeline: str) -> AdaSparkConfig:
    """'sparse@P' sets both top-p values to P (random weights give flat relevance: P keeps about P of the
    cubes and FFN rows); 'sparse' and 'dense' use the defaults."""
    if pipeline.startswith("sparse@"):
        p = float(pipeline.split("@", 1)[1])
        return AdaSparkConfig(attn_top_p=p, ffn_top_p=p)
    return AdaSparkConfig()


def setup(model: Any, processor: Any, pipeline: str, kernel: str) -> VideoQA | None:
    if pipeline == "stock":
        return None
    state = sparsify(model, pipeline_config(pipeline), enabled=pipeline.startswith("sparse"), kernel=kernel)
    fast_vision(model)
    return VideoQA(model, processor, state)


# ---- main ----------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="16,32,64", help="video tokens in K (256 per frame pair of 448x448)")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per (size, pipeline) after one warm-up")
    ap.add_argument("--pipelines", default="stock,dense,sparse",
                    help="stock, dense, sparse (default top-p) and sparse@P (both top-p values P)")
    ap.add_argument("--kernel", default="auto", help="adaspark kernel for the sparse pipeline")
    ap.add_argument("--budget-s", type=float, default=400.0, help="skip further sizes past this many seconds")
    ap.add_argument("--video-dir", type=Path, default=None, help="where to write the test videos (default: a temp dir)")
    ap.add_argument("--out", type=Path, default=None, help="JSON results file")
    ap.add_argument("--quick", action="store_true", help="tiny model and videos on the CPU: a smoke run of the code")
    args = ap.parse_args()

    try:
        import av  # noqa: F401  (PyAV: writes and decodes the test videos)
    except ImportError:
        log("PyAV is missing: pip install av (wheels are self-contained), then run again")
        return 2
    cuda = cuda_or_smoke(args.quick, "--quick")
    if cuda is None:
        return 2
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    frame_px = 448 if not args.quick else 112
    max_pixels = frame_px * frame_px
    tokens_per_pair = (frame_px // 28) ** 2
    env = {**environment(cuda, packages=("av",), cpu_note="cpu (quick smoke run, no timing claims)"), "dtype": str(dtype)}
    for k, v in env.items():
        log(f"{k}: {v}")
    results: dict[str, Any] = {"env": env, "setup": {}, "sizes": [], "skipped": [], "failed": []}

    model, processor = build_model(args.quick, device, dtype)
    n_params = sum(p.numel() for p in model.parameters())
    results["setup"] = {"params": n_params, "frame_px": frame_px, "fps": FPS, "tokens_per_frame_pair": tokens_per_pair,
                        "adaspark_config": AdaSparkConfig().to_dict(),
                        "kernel": args.kernel, "repeats": args.repeats}
    log(f"model: {n_params / 1e9:.2f} B parameters, {dtype}, built at {elapsed():.1f} s")

    sizes = [int(s) for s in args.sizes.split(",") if s] if not args.quick else [1, 2]
    pipelines = args.pipelines.split(",")
    video_dir = args.video_dir or Path(tempfile.mkdtemp(prefix="bench_e2e_"))
    video_dir.mkdir(parents=True, exist_ok=True)
    for k in sizes:
        spent = elapsed()
        if results["sizes"] and spent > args.budget_s:
            log(f"skipping {k}K: {spent:.0f} s elapsed (budget {args.budget_s:.0f} s)")
            results["skipped"].append(k)
            continue
        frames = (k * 1024 if not args.quick else k * 64) // tokens_per_pair * 2
        path = video_dir / f"video_{frames}f_{frame_px}px.mp4"
        if not path.exists():
            write_video(path, frames, frame_px)
        row: dict[str, Any] = {"k_tokens": k, "frames": frames, "video_mb": path.stat().st_size / 1e6}
        log(f"\n{k}K: {frames} frames of {frame_px}x{frame_px} ({row['video_mb']:.1f} MB), at {elapsed():.0f} s")
        for name in pipelines:
            try:
                qa = setup(model, processor, name, args.kernel)
                runs = []
                for i in range(1 + args.repeats):
                    if cuda:
                        torch.cuda.empty_cache()
                        torch.cuda.reset_peak_memory_stats()
                    r = (run_stock(model, processor, path, frames, max_pixels, device) if qa is None
                         else run_adaspark(qa, path, frames, max_pixels, device))
                    if cuda:
                        r["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
                    log(f"  {name} {'warm-up' if i == 0 else f'run {i}'}: "
                        + ", ".join(f"{key} {v:.3f}" if isinstance(v, float) else f"{key} {v}" for key, v in r.items()))
                    runs.append(r)
                timed = runs[1:] or runs
                row[name] = {key: statistics.median(r[key] for r in timed) for key in
                             ("decode_s", "preprocess_s", "vision_s", "prefill_s", "first_token_s", "wall_s")}
                row[name].update(video_tokens=timed[0]["video_tokens"], flops_reduction=timed[0].get("flops_reduction"),
                                 warmup=runs[0], runs=timed)
                if "peak_gib" in timed[0]:
                    row[name]["peak_gib"] = max(r["peak_gib"] for r in timed)
            except Exception:  # noqa: BLE001
                traceback.print_exc()
                log(f"  {name}: FAILED (above)")
                results["failed"].append(f"{k}K {name}")
            if cuda:
                torch.cuda.empty_cache()
        results["sizes"].append(row)
        write_json(results, args.out)

    report(results)
    write_json(results, args.out)
    return 0


def report(results: dict) -> None:
    env = results["env"]
    log(f"\n# {env['device']}, torch {env['torch']}, transformers {env['transformers']}, {env['date_utc']} UTC")
    log("| video tokens | pipeline | decode s | preprocess s | vision s | prefill s | first token s | wall s "
        "| LM FLOPs cut | vs stock | vs adaspark dense |")
    log("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in results["sizes"]:
        stock = row.get("stock", {}).get("first_token_s")
        dense = row.get("dense", {}).get("first_token_s")
        for name, r in row.items():
            if not isinstance(r, dict):
                continue
            cut = "-" if r.get("flops_reduction") is None else f"{100 * r['flops_reduction']:.0f}%"
            vs_stock = f"{stock / r['first_token_s']:.2f}x" if stock else "-"
            vs_dense = f"{dense / r['first_token_s']:.2f}x" if dense else "-"
            log(f"| {r['video_tokens']} | {name} | {r['decode_s']:.2f} | {r['preprocess_s']:.2f} | {r['vision_s']:.2f} "
                f"| {r['prefill_s']:.2f} | {r['first_token_s']:.2f} | {r['wall_s']:.2f} | {cut} | {vs_stock} | {vs_dense} |")
    log(f"total {elapsed():.0f} s")


if __name__ == "__main__":
    sys.exit(main())
