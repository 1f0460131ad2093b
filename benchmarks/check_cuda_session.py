"""GPU check of the `ask` path through the whole model, every CUDA attention kernel.

    PYTHONPATH=src python benchmarks/check_cuda_session.py

With the stock and then the fast vision tower (adapters.vision.fast_vision, as `ask` uses on
CUDA). For a tiny (hidden 64, 2 layers) and a medium (hidden 512, head_dim 128, 4 layers) random
Qwen2.5-VL in bf16 on CUDA, with a random video: first-token logits at p = 1 against --dense for the
reference, FlexAttention and FA4 (where installed) kernels, and at p = 0.5 the statistics and prefill
time of each; then `profile_prefill` on the medium model (CUDA timing and memory).
Random weights: the numbers check correctness and plumbing, not the
speed of a real model (see bench_prefill.py for 7B shapes). Exits non-zero on a failed check.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _common import environment  # this folder is on sys.path when run as a script

from adaspark_cli.adapters import fast_vision, sparsify, vision_state
from adaspark_cli.checkpoint import build_tiny_checkpoint, load_model
from adaspark_cli.config import AdaSparkConfig
from adaspark_cli.qa import VideoQA
from adaspark_cli.video import DecodedVideo


def run(qa: VideoQA, video: DecodedVideo) -> tuple[torch.Tensor, dict, float]:
    """First answer-token logits, the answer's stats, and the video prefill time (second of two runs)."""
    prompt = qa.prepare_video(video, max_pixels=448 * 448)
    qa.prefill_video(prompt)  # warm-up (compiles flex for this length)
    prefix = qa.prefill_video(prompt)
    seen = {}
    stream = qa.answer(prefix, "what color was the star?", max_new_tokens=2,
                       on_step=lambda i, logits: seen.setdefault(i, logits.float().clone()))
    list(stream)
    return seen[0], stream.result.to_json(), prefix.seconds


def check(name: str, hidden: int, layers: int, frames: int, *, profile: bool = False) -> bool:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(frames, 448, 448, 3), dtype=np.uint8)
    idx = np.arange(frames) * 4
    video = DecodedVideo(Path("synthetic"), pixels, idx / 8.0, idx, 8.0, frames * 4, frames / 2.0, "numpy")
    with tempfile.TemporaryDirectory() as tmp:
        ck = build_tiny_checkpoint(Path(tmp) / name, hidden_size=hidden, text_layers=layers)
        model, processor = load_model(str(ck), device="cuda")
    state = sparsify(model, AdaSparkConfig(attn_top_p=1.0, ffn_top_p=1.0))
    qa = VideoQA(model, processor, state)
    with state.override(enabled=False):
        stock_dense, _, stock_s = run(qa, video)
        fast_vision(model)  # what load_video_qa does on CUDA; everything below runs with it
        dense, dense_res, dense_s = run(qa, video)
    vision_diff = (stock_dense - dense).abs().max().item()
    ok = vision_diff <= 2e-2 * max(1.0, stock_dense.abs().max().item())
    print(f"\n{name}: hidden {hidden}, {layers} layers, {dense_res['video_tokens']} video tokens, {dense_res['cubes']} cubes")
    print(f"  dense prefill {stock_s * 1e3:.1f} ms with the stock vision tower, {dense_s * 1e3:.1f} ms with fast_vision "
          f"({vision_diff:.2e} max logit diff, {vision_state(model).last_backend}) {'ok' if ok else 'FAILED'}")
    from adaspark_cli.attention.fa4 import fa4_available

    for kernel in ("reference", "flex") + (("fa4",) if fa4_available() else ()):
        # fallback off: the kernel itself runs at p = 1
        with state.override(kernel=kernel, dense_fallback=False, config=AdaSparkConfig(attn_top_p=1.0, ffn_top_p=1.0)):
            p1, _, _ = run(qa, video)
        diff = (p1 - dense).abs().max().item()
        scale = dense.abs().max().item()
        good = diff <= 2e-2 * max(1.0, scale)
        ok &= good
        with state.override(kernel=kernel, config=AdaSparkConfig(attn_top_p=0.5, ffn_top_p=0.5)):
            sparse, res, secs = run(qa, video)
        ok &= bool(torch.isfinite(sparse).all())
        layer0 = res["layers"][0]
        print(
            f"  {kernel:11s} p=1 vs dense max|diff| {diff:.2e} (max|logit| {scale:.2e}) {'ok' if good else 'FAILED'}; "
            f"p=0.5: prefill {secs * 1e3:.1f} ms, FLOPs -{res['flops']['reduction']:.1%}, layer 0 density "
            f"{layer0['attn_density']:.3f}, cubes {layer0['cubes_attended_mean']:.1f}/{layer0['cubes_total']:.1f}, "
            f"FFN {layer0['ffn_kept']}/{layer0['ffn_total']}"
        )
    if profile:
        from adaspark_cli.qa import profile_prefill

        with state.override(kernel="auto", config=AdaSparkConfig(attn_top_p=0.5, ffn_top_p=0.5)):
            report = profile_prefill(qa, video, max_pixels=448 * 448).to_json()
        t, m, f = report["time"], report["memory"], report["fidelity"]
        print(
            f"  profile (auto kernel, p=0.5): dense {t['dense_s'] * 1e3:.1f} ms, adaspark {t['sparse_s'] * 1e3:.1f} ms "
            f"({t['speedup']:.2f}x, {t['clock']}, {t['warmup']} warm-up + {t['repeats']} repeats); memory "
            f"{m['dense_bytes'] / 2**20:.0f} / {m['sparse_bytes'] / 2**20:.0f} MiB ({m['measure']}); KL {f['kl']:.2e}, "
            f"top-1 agreement {f['top1_agreement']:.2f}; FLOPs -{report['flops']['reduction']:.1%}"
        )
    del model
    torch.cuda.empty_cache()
    return ok


def main() -> int:
    assert torch.cuda.is_available(), "needs a CUDA GPU"
    print(", ".join(f"{k} {v}" for k, v in environment(True).items()))
    t = time.perf_counter()
    ok = check("tiny", 64, 2, 64) and check("medium", 512, 4, 128, profile=True)
    print(f"\n{'OK' if ok else 'FAILED'} in {time.perf_counter() - t:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
