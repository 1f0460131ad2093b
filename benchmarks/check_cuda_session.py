"""GPU check of the `ask` path: the tiny model on CUDA in bf16, p = 1 against dense, sparse stats.

    PYTHONPATH=src python benchmarks/check_cuda_session.py
Prints device, versions and the max |logit| difference; exits non-zero if p = 1 differs from dense
by more than bf16 noise or the sparse run produces non-finite logits.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import transformers

from adaspark_cli.adapters import sparsify
from adaspark_cli.checkpoint import build_tiny_checkpoint, load_model
from adaspark_cli.config import AdaSparkConfig
from adaspark_cli.qa import VideoQA
from adaspark_cli.video import DecodedVideo


def first_logits(qa: VideoQA, video: DecodedVideo) -> tuple[torch.Tensor, dict]:
    prefix = qa.prefill_video(qa.prepare_video(video, max_pixels=448 * 448))
    seen = {}
    step = qa._step

    def spy(*a, **k):
        out = step(*a, **k)
        seen.setdefault("logits", out.float().clone())
        return out

    qa._step = spy
    stream = qa.answer(prefix, "what color was the star?", max_new_tokens=4)
    answer = "".join(stream)
    del qa._step
    return seen["logits"], {"answer": answer, **{k: v for k, v in stream.result.to_json().items() if k != "layers"}}


def main() -> int:
    assert torch.cuda.is_available(), "needs a CUDA GPU"
    print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}, transformers {transformers.__version__}")
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(64, 448, 448, 3), dtype=np.uint8)
    idx = np.arange(64) * 4
    video = DecodedVideo(Path("synthetic"), frames, idx / 8.0, idx, 8.0, 256, 32.0, "numpy")
    with tempfile.TemporaryDirectory() as tmp:
        ck = build_tiny_checkpoint(Path(tmp) / "tiny")
        model, processor = load_model(str(ck), device="cuda")
    print(f"dtype {model.dtype}")
    state = sparsify(model, AdaSparkConfig(attn_top_p=1.0, ffn_top_p=1.0))
    qa = VideoQA(model, processor, state)
    p1, _ = first_logits(qa, video)
    state.enabled = False
    dense, dense_info = first_logits(qa, video)
    state.enabled = True
    state.config = AdaSparkConfig(attn_top_p=0.5, ffn_top_p=0.5)
    t = time.perf_counter()
    sparse, info = first_logits(qa, video)
    diff = (p1 - dense).abs().max().item()
    scale = dense.abs().max().item()
    print(f"video tokens {info['video_tokens']}, cubes {info['cubes']}")
    print(f"p=1 vs dense: max |diff| {diff:.3e} (max |logit| {scale:.3e})")
    print(f"p=0.5: finite {bool(torch.isfinite(sparse).all())}, FLOPs reduction {info['flops']['reduction']:.3f}, "
          f"prefill {info['prefill_seconds']:.3f} s (dense {dense_info['prefill_seconds']:.3f} s, tiny model: not a speed claim)")
    ok = diff <= 2e-2 * max(1.0, scale) and bool(torch.isfinite(sparse).all())
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
