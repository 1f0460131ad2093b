"""Where the selection step's time goes: CUDA time per kernel of `select_per_block` (torch.profiler).

One layer's selection at 7B shapes (28 query / 4 KV heads, head dim 128, bf16 random Q/K in
transformers' token-major memory, the benchmark's cube 2x8x8 and 16x16-token frame pairs), at each
size of --sizes: the wall time of the whole step (CUDA events, median of 5), then one profiled call
with its kernels' CUDA time grouped by name. Random inputs select almost every cube, the worst case for
the union. Also checks the fused selection against the exact one on the same inputs.

Usage (GPU machine):  PYTHONPATH=src python3 benchmarks/profile_selection.py --out $OUT
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import torch

from _common import environment, time_ms  # this folder is on sys.path when run as a script; it puts src/ there too
from _prefill_model import CUBE, GRID_HW, TEXT_AFTER, TEXT_BEFORE

from adaspark_cli.cubes import VideoSpan, cube_layout
from adaspark_cli.cubes.plan import build_plan
from adaspark_cli.selection import select_per_block


def inputs(video_tokens: int, device: torch.device):
    layout = cube_layout([VideoSpan(TEXT_BEFORE, (video_tokens // 256, *GRID_HW))], TEXT_BEFORE + video_tokens + TEXT_AFTER, CUBE)
    n = layout.seq_len
    g = torch.Generator(device=device).manual_seed(3)
    q = torch.randn(n, 28, 128, generator=g, device=device).to(torch.bfloat16).transpose(0, 1)
    k = torch.randn(n, 4, 128, generator=g, device=device).to(torch.bfloat16).transpose(0, 1)
    return q, k, build_plan(layout, n, n, device=device)


def cuda_ms(fn, reps: int = 5) -> float:
    return statistics.median(time_ms(fn, reps=reps, warmup=2, cuda=True))


def kernel_breakdown(fn) -> dict[str, float]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    per: dict[str, float] = defaultdict(float)
    for ev in prof.events():
        if ev.device_type.name == "CUDA":
            per[ev.name[:90]] += ev.device_time / 1e3  # us -> ms
    return dict(sorted(per.items(), key=lambda kv: -kv[1]))


SWEEP = [dict()] + [
    dict(rows_scale=r, num_warps=w, min_programs=m)
    for r in (0.5, 1, 2, 4) for w in (4, 8) for m in (1, 4096, 16384)
] + [dict(iters=12), dict(iters=10)] + [
    # one or two warps per program: a row's reductions (softmax, each bisection step) stay within a warp
    dict(rows_per_step=r, num_warps=w, min_programs=m)
    for r, w in ((1, 1), (2, 1), (1, 2), (2, 2), (4, 2)) for m in (4096, 16384, 65536)
]


SWEEP_SHORT = [dict(), dict(num_warps=4, min_programs=4096)]  # --short: the default against 4 warps at every width


def sweep(fn, exact: torch.Tensor, choices: list[dict] = SWEEP) -> list[dict]:
    """The union kernel's launch choices (triton_union.launch_union's keywords), each timed on the same
    selection; the first row is the default. rows_scale: rows per step = scale x 2048 // the padded width
    (the rule before 2026-12-02)."""
    from adaspark_cli.selection import select as select_module
    from adaspark_cli.selection import triton_union

    original = select_module.launch_union
    rows = []
    try:
        for choice in choices:
            kw = dict(choice)
            scale = kw.pop("rows_scale", None)

            def launch(logits, *a, _kw=kw, _scale=scale, **k):
                if _scale is not None:
                    cpad = 1 << max(4, (logits.shape[2] - 1).bit_length())
                    _kw = dict(_kw, rows_per_step=max(1, int(_scale * 2048 // cpad)))
                return triton_union.launch_union(logits, *a, **k, **_kw)

            select_module.launch_union = launch
            ms = cuda_ms(fn)
            got = fn().cubes
            rows.append(dict(choice, ms=ms, missing=int((exact & ~got).sum()), extra=int((got & ~exact).sum())))
    finally:
        select_module.launch_union = original
    return rows


def one_size(size: int, top_p: float, device: torch.device, short: bool = False) -> dict:
    q, k, plan = inputs(size, device)
    scale = 128**-0.5
    fn = lambda: select_per_block(q, k, plan, top_p, scale)  # noqa: E731
    row = {"select_ms": cuda_ms(fn), "kernels_ms": kernel_breakdown(fn)}
    exact = select_per_block(q, k, plan, top_p, scale, method="exact").cubes
    fused = fn().cubes
    row["fused_vs_exact"] = {"missing": int((exact & ~fused).sum()), "extra": int((fused & ~exact).sum()),
                             "exact_total": int(exact.sum())}
    top = ", ".join(f"{name} {ms:.2f}" for name, ms in list(row["kernels_ms"].items())[:6])
    print(f"{size} video tokens: selection {row['select_ms']:.2f} ms; kernels (ms): {top}; "
          f"fused vs exact {row['fused_vs_exact']}", file=sys.stderr)
    row["sweep"] = sweep(fn, exact, SWEEP_SHORT if short else SWEEP)
    best = min(row["sweep"], key=lambda r: r["ms"])
    print(f"  launch sweep: best {best}; default {row['sweep'][0]}", file=sys.stderr)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="32,64,128", help="video tokens in thousands (1024s)")
    ap.add_argument("--top-p", type=float, default=0.5)
    ap.add_argument("--out", default=os.environ.get("OUT"))
    ap.add_argument("--short", action="store_true", help="time only the default launch and the previous one (each "
                    "launch choice compiles its kernels: the whole sweep takes minutes)")
    args = ap.parse_args()
    device = torch.device("cuda")
    res = {"env": environment(True, packages=("triton",)), "top_p": args.top_p, "sizes": {}}
    print(json.dumps(res["env"]), file=sys.stderr)
    for size in (int(s) * 1024 for s in args.sizes.split(",")):
        res["sizes"][str(size)] = one_size(size, args.top_p, device, args.short)
        torch.cuda.empty_cache()
        if args.out:
            Path(args.out, "profile_selection.json").write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
