"""Vision tower benchmark for issue 6 part 1: transformers' stock Qwen2.5-VL vision tower against `fast_vision`.

A random-weight Qwen2.5-VL-7B vision tower (depth 32, hidden 1280, 16 heads of 80, MLP 3420, out 3584,
window 112 px, full attention in blocks 7/15/23/31, patch 14, merge 2, temporal patch 2), bf16 on CUDA.
Input: a video grid of T x 32 x 32 patches (448 x 448 frames, 256 language-model tokens per T);
T = 128 gives 131072 patches = 32K LM tokens. First an accuracy check on a short video against a float32
copy of the tower (stock path), then per size: relative error fast vs stock, and median CUDA-event times
of both paths (the same module, `fast_vision` / `restore_vision` toggled).

Usage (GPU machine):  PYTHONPATH=src python3 benchmarks/bench_vision.py [--sizes 32,16,64] [--out DIR]
CPU smoke run of the code paths (tiny dims, no timing claims):  python3 benchmarks/bench_vision.py --smoke
"""

from __future__ import annotations

import argparse
import copy
import inspect
import json
import os
import statistics
import sys
import traceback

import torch

from _common import VISION_7B, cuda_or_smoke, elapsed, environment, log, out_file, time_ms, write_json  # puts src/ on sys.path

from adaspark_cli.adapters import vision as V

CONFIG_SMOKE = dict(VISION_7B, depth=4, hidden_size=64, num_heads=2, intermediate_size=96, out_hidden_size=48,
                    fullatt_block_indexes=[1, 3])
HW = 32  # patches per side (448 px frames)
def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    return float((a - b).norm() / b.norm())


def flops_per_patch(c: dict) -> float:
    """Multiply-adds x 2 of one patch through the tower (GEMMs + attention), for an achieved-rate estimate."""
    h, m, blocks = c["hidden_size"], c["intermediate_size"], c["depth"]
    win = (c["window_size"] // c["patch_size"]) ** 2  # patches per window (64)
    full = HW * HW  # patches per frame
    gemm = 2 * (h * 3 * h + h * h + 3 * h * m)
    attn_win, attn_full = 4 * win * h, 4 * full * h
    n_full = len(c["fullatt_block_indexes"])
    embed = 2 * c["in_channels"] * c["temporal_patch_size"] * c["patch_size"] ** 2 * h
    merger = 2 * (4 * h * 4 * h + 4 * h * c["out_hidden_size"]) / 4
    return blocks * gemm + (blocks - n_full) * attn_win + n_full * attn_full + embed + merger


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="32,16,64", help="LM tokens in K, in the order run (first is the target)")
    ap.add_argument("--budget-s", type=float, default=140.0, help="skip further sizes past this many seconds")
    ap.add_argument("--out", default=os.environ.get("OUT"))
    ap.add_argument("--smoke", action="store_true", help="tiny tower on the CPU, float32: exercises the code only")
    args = ap.parse_args()

    from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

    cuda = cuda_or_smoke(args.smoke, "--smoke")
    if cuda is None:
        return 2
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    results: dict = {"env": {}, "config": {}, "accuracy": {}, "sizes": []}
    env = results["env"] = environment(cuda, cpu_note="cpu (smoke run)")
    env["varlen_attn"] = V.has_varlen_attn()
    if V.has_varlen_attn():
        env["varlen_attn_signature"] = str(inspect.signature(V._VARLEN_ATTN))
    for k, v in env.items():
        log(f"{k}: {v}")
    if cuda and not V.has_varlen_attn():
        log("NOTE: this torch has no torch.nn.attention.varlen.varlen_attn; fast_vision falls back to the per-window loop")

    conf = CONFIG_SMOKE if args.smoke else VISION_7B
    defaults = Qwen2_5_VLVisionConfig().to_dict()
    diffs = {k: (defaults.get(k), v) for k, v in conf.items() if defaults.get(k) != v}
    log(f"vision config: {conf}")
    log(f"differs from Qwen2_5_VLVisionConfig() defaults in (default, used): {diffs}")
    results["config"] = {"used": conf, "differs_from_defaults": diffs}
    cfg = Qwen2_5_VLVisionConfig(**conf)
    with torch.device(device):
        torch.manual_seed(0)
        tower = Qwen2_5_VisionTransformerPretrainedModel._from_config(cfg, attn_implementation="sdpa", dtype=dtype)
    tower = tower.to(device=device, dtype=dtype).eval()
    log(f"tower: {sum(p.numel() for p in tower.parameters()) / 1e6:.1f} M parameters, {dtype}, "
        f"attn {tower.config._attn_implementation}, built at {elapsed():.1f} s")
    width = conf["in_channels"] * conf["temporal_patch_size"] * conf["patch_size"] ** 2

    def make_input(t: int, hw: int = HW):
        grid = torch.tensor([[t, hw, hw]], device=device)
        return torch.randn(t * hw * hw, width, device=device, dtype=dtype), grid

    backend = {"name": "auto"}

    def stock(x, grid):
        V.restore_vision(tower)
        return tower(x, grid_thw=grid, return_dict=True).pooler_output

    def fast(x, grid):
        V.fast_vision(tower, backend=backend["name"])
        return tower(x, grid_thw=grid, return_dict=True).pooler_output

    def run_size(k_tokens: int, t: int, hw: int) -> None:
        x, grid = make_input(t, hw)
        row: dict = {"lm_tokens": x.shape[0] // 4, "patches": x.shape[0], "grid": [t, hw, hw]}
        s_out = stock(x, grid)
        V.fast_vision(tower, backend=backend["name"])
        V.vision_state(tower).plans.clear()
        if cuda:
            torch.cuda.synchronize()
        cold = time_ms(lambda: fast(x, grid), reps=1, warmup=0, cuda=cuda)[0]  # plan built inside
        f_out = fast(x, grid)
        row["backend"] = V.vision_state(tower).last_backend
        row["rel_err_fast_vs_stock"] = rel(f_out, s_out)
        row["max_abs_err"] = float((f_out.float() - s_out.float()).abs().max())
        row["fast_finite"] = bool(torch.isfinite(f_out).all())
        del s_out, f_out
        reps_stock, reps_fast = (3, 7) if cuda else (1, 1)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        row["stock_ms"] = time_ms(lambda: stock(x, grid), reps=reps_stock, warmup=1, cuda=cuda)
        if cuda:
            row["stock_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
            torch.cuda.reset_peak_memory_stats()
        row["fast_ms"] = time_ms(lambda: fast(x, grid), reps=reps_fast, warmup=2, cuda=cuda)
        if cuda:
            row["fast_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        row["fast_cold_ms"] = cold
        row["stock_median_ms"] = statistics.median(row["stock_ms"])
        row["fast_median_ms"] = statistics.median(row["fast_ms"])
        row["speedup"] = row["stock_median_ms"] / row["fast_median_ms"]
        row["fast_tflops"] = flops_per_patch(conf) * row["patches"] / (row["fast_median_ms"] * 1e-3) / 1e12
        results["sizes"].append(row)
        log(f"{k_tokens}K: " + json.dumps({k: (float(f"{v:.4g}") if isinstance(v, float) else v) for k, v in row.items()}))

    with torch.inference_mode():
        try:  # probe: if the varlen path fails on this torch, say so and measure the loop fallback instead
            fast(*make_input(2))
        except Exception:  # noqa: BLE001
            traceback.print_exc()
            log("WARNING: the fast path failed with backend 'auto' (above); falling back to backend 'loop'")
            backend["name"] = "loop"
            results["fallback"] = "loop"
        # accuracy against float32 (stock path), on a short video and a two-video call with odd sizes
        V.restore_vision(tower)  # (a deep copy would keep a forward bound to `tower`)
        ref_tower = copy.deepcopy(tower).float()
        assert "forward" not in ref_tower.__dict__
        checks = {"8x32x32": [(8, 32, 32)], "2x20x28+3x12x36": [(2, 20, 28), (3, 12, 36)]}
        if args.smoke:
            checks = {"2x16x16": [(2, 16, 16)], "2x10x14+1x6x18": [(2, 10, 14), (1, 6, 18)]}
        for name, grids in checks.items():
            grid = torch.tensor(grids, device=device)
            n = sum(t * h * w for t, h, w in grids)
            x = torch.randn(n, width, device=device, dtype=dtype)
            ref = ref_tower(x.float(), grid_thw=grid, return_dict=True).pooler_output
            s, f = stock(x, grid), fast(x, grid)
            acc = {"stock_vs_fp32": rel(s, ref), "fast_vs_fp32": rel(f, ref), "fast_vs_stock": rel(f, s),
                   "backend": V.vision_state(tower).last_backend, "finite": bool(torch.isfinite(f).all())}
            results["accuracy"][name] = acc
            log(f"accuracy {name}: " + ", ".join(f"{k} {v:.2e}" if isinstance(v, float) else f"{k} {v}" for k, v in acc.items()))
        del ref_tower
        if cuda:
            torch.cuda.empty_cache()

        sizes = [int(s) for s in args.sizes.split(",") if s]
        if args.smoke:
            sizes = [1]
        for k_tokens in sizes:
            spent = elapsed()
            if results["sizes"] and spent > args.budget_s:
                log(f"skipping {k_tokens}K: {spent:.0f} s elapsed (budget {args.budget_s:.0f} s)")
                results.setdefault("skipped", []).append(k_tokens)
                continue
            hw = HW if not args.smoke else 16
            t = k_tokens * 1024 * 4 // (hw * hw)
            try:
                run_size(k_tokens, t, hw)
            except Exception:  # noqa: BLE001
                traceback.print_exc()
                log(f"{k_tokens}K: FAILED (above)")
                results.setdefault("failed", []).append(k_tokens)
            if cuda:
                torch.cuda.empty_cache()

    write_json(results, out_file(args.out, "bench_vision.json"))
    report(results, env, cuda)
    return 0


def report(results: dict, env: dict, cuda: bool) -> None:
    log("")
    log(f"# {env['device']}, torch {env['torch']}, transformers {env['transformers']}, {env['date_utc']} UTC")
    log("| LM tokens | patches | stock (median) | fast (median) | speed-up | fast, 1st call | rel err fast vs stock | backend |")
    log("|---|---|---|---|---|---|---|---|")
    for r in results["sizes"]:
        log(f"| {r['lm_tokens']} | {r['patches']} | {r['stock_median_ms']:.0f} ms | {r['fast_median_ms']:.0f} ms | "
            f"{r['speedup']:.2f}x | {r['fast_cold_ms']:.0f} ms | {r['rel_err_fast_vs_stock']:.2e} | {r['backend']} |")
    target = [r for r in results["sizes"] if r["lm_tokens"] == 32768]
    if target and cuda:
        # Within bf16 tolerance = the fast path is as close to the float32 tower as the stock bf16 path is. Two bf16
        # runs differ from each other by about as much as each differs from float32 (~2.5e-2 over 32 random-weight
        # blocks), so a fixed bound on fast-vs-stock is no test; the first run here used one (< 2e-2) and so
        # printed "NOT met" for numbers that meet the target.
        acc = results["accuracy"].values()
        accurate = bool(acc) and all(a["finite"] and a["fast_vs_fp32"] <= 1.05 * a["stock_vs_fp32"] + 1e-4 for a in acc)
        met = target[0]["speedup"] >= 3.5 and accurate and target[0]["fast_finite"]
        log(f"target (>= 3.5x at 32K; fast as close to float32 as stock, within 5%): {'MET' if met else 'NOT met'} "
            f"({target[0]['speedup']:.2f}x; fast vs float32 / stock vs float32: "
            + ", ".join(f"{a['fast_vs_fp32']:.3e} / {a['stock_vs_fp32']:.3e}" for a in acc) + ")")
    log(f"total {elapsed():.0f} s")


if __name__ == "__main__":
    sys.exit(main())
