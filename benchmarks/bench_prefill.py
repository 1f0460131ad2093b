"""Whole language-model prefill, dense against AdaSpark in the same run (issue 12, part 5).

The full 28-layer Qwen2.5-VL-7B-shaped language model (hidden 3584, 28 query / 4 KV heads, head dim
128, FFN 18944, bf16, random weights, built on the GPU), fed 64 text tokens, a video of 16x16 merged
tokens per frame pair (448x448 frames) and 64 more text tokens, with the official M-RoPE positions.
Time to first token of the language model = embeddings to the last position's logits, one call, no
cache. Every run of a size uses the same model object: `state.override(enabled=False)` is dense.

Runs per size (each: 1 warm-up, then --repeats timed calls, medians):
  dense            adaspark dense (SDPA, transformers' own attention)
  forced a/f       sparse with a benchmark-only hook that replaces each layer's selection by random cube
                   sets of density a (attention) and FFN top-p f (random weights: keep ~ f); the selection
                   step itself is skipped, so this isolates the kernels
  top-p p          real selection at attention top-p p, FFN top-p p (and the default 0.9 / 0.7)
Per run: the attention block's and FFN block's time (CUDA events in module hooks, no sync), FLOPs and
their cut (analytic, stats/flops.py), which layers fell back to dense, peak memory over the weights.
Before timing: the fast kernels against the reference on the same Selection (max error printed), and
p = 1 against dense logits. Kernel table: one layer's attention alone at forced densities, dense SDPA,
FA4 dense, FA4 and FlexAttention sparse, with "fraction of ideal" = best dense x kept fraction / time.

--arch qwen3_vl (issue 14, part 4): the 36-layer Qwen3-VL-8B language model instead (hidden 4096, 32 query /
8 KV heads, head dim 128, FFN 12288, interleaved M-RoPE), its prompt laid out as Qwen3VLProcessor does
(per frame pair a timestamp text, <|vision_start|>, 16x16 video tokens, <|vision_end|>), positions from
the model's own get_rope_index, random DeepStack features added after layers 0-2 (whose FFN stays dense,
docs/method.md), plus one run with those FFNs sparse too. Defaults then: --sizes 32,64, 2 repeats, no
kernel table, deadline 200 s (the whole script about 3-4 minutes on an H200).

Usage (GPU machine; FA4 optional, found by import):
    PYTHONPATH=src python3 benchmarks/bench_prefill.py --out $OUT --sizes 16,32,64,128
    PYTHONPATH=src python3 benchmarks/bench_prefill.py --arch qwen3_vl --out $OUT
CPU smoke run (tiny shapes, no timing claims): python benchmarks/bench_prefill.py --smoke [--arch qwen3_vl]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch

from _common import (  # this folder is on sys.path when run as a script; it puts src/ there too
    elapsed,
    environment,
    log_stamped,
    out_file,
    wall_seconds,
    write_json,
)
from _kernel_table import check_kernels, kernel_table
from _prefill_model import (  # noqa: F401  (GRID_HW, TEXT_*: bench_decode_step and profile_selection take them from here)
    CUBE,
    GRID_HW,
    TEXT_AFTER,
    TEXT_BEFORE,
    Inputs,
    build_model,
    make_inputs,
    prefill,
)

from adaspark_cli.adapters import sparsify
from adaspark_cli.attention.fa4 import fa4_available
from adaspark_cli.config import AdaSparkConfig
from adaspark_cli.selection import random_selection
from adaspark_cli.stats import ModelDims, PrefillStats, prefill_flops, reduction

FORCED = [(0.5, 0.5), (0.3, 0.3), (0.2, 0.3)]
TOP_P = [(0.9, 0.7), (0.3, 0.3)]
log = log_stamped


class BlockTimer:
    """CUDA events before and after every layer's attention and FFN module (no sync while running)."""

    def __init__(self, model: Any) -> None:
        self.events: dict[str, list[tuple[Any, Any]]] = {"attention": [], "ffn": []}
        self.handles = []
        self.on = False
        for layer in model.model.language_model.layers:
            for name, module in (("attention", layer.self_attn), ("ffn", layer.mlp)):
                self.handles.append(module.register_forward_pre_hook(self._pre(name)))
                self.handles.append(module.register_forward_hook(self._post(name)))

    def _pre(self, name: str):
        def hook(*_: Any) -> None:
            if self.on:
                e = torch.cuda.Event(enable_timing=True)
                e.record()
                self.events[name].append((e, None))
        return hook

    def _post(self, name: str):
        def hook(*_: Any) -> None:
            if self.on:
                e = torch.cuda.Event(enable_timing=True)
                e.record()
                start, _ = self.events[name][-1]
                self.events[name][-1] = (start, e)
        return hook

    def take(self) -> dict[str, float]:
        torch.cuda.synchronize()
        out = {name: sum(s.elapsed_time(e) for s, e in pairs) for name, pairs in self.events.items()}
        self.events = {"attention": [], "ffn": []}
        return out


def timed_runs(model: Any, state: Any, inp: Inputs, repeats: int, timer: BlockTimer | None) -> dict[str, Any]:
    device = inp.embeds.device
    cuda = device.type == "cuda"
    stats = PrefillStats()
    first = wall_seconds(lambda: prefill(model, state, inp, stats), device)  # warm-up (first call: compiles), statistics
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() if cuda else 0
    times, blocks = [], []
    for _ in range(repeats):
        if timer:
            timer.on = True
        times.append(wall_seconds(lambda: prefill(model, state, inp), device))
        if timer:
            timer.on = False
            blocks.append(timer.take())
    dims = ModelDims.from_text_config(model.config.text_config)
    dense_f, sparse_f = prefill_flops(stats, dims)
    layers = stats.layers
    row = {
        "ms": statistics.median(times) * 1e3,
        "ms_all": [x * 1e3 for x in times],
        "first_call_s": first,
        "peak_extra_gib": (torch.cuda.max_memory_allocated() - base) / 2**30 if cuda else None,
        "flops_dense": dense_f.total,
        "flops_sparse": sparse_f.total,
        "flops_cut": reduction(dense_f, sparse_f),
        "attn_density": sum(r.attention.attended_keys for r in layers.values())
        / max(1, sum(r.attention.causal_keys for r in layers.values())),
        "ffn_kept": sum(r.ffn_kept for r in layers.values()) / max(1, sum(r.ffn_total for r in layers.values())),
        "dense_fallback_layers": [i for i, r in sorted(layers.items()) if r.dense_fallback],
        "kernels": sorted({r.kernel for r in layers.values() if r.kernel}),
    }
    if blocks:
        row["attention_ms"] = statistics.median(b["attention"] for b in blocks)
        row["ffn_ms"] = statistics.median(b["ffn"] for b in blocks)
    return row


# ---- checks --------------------------------------------------------------------------------------


# ---- main ------------------------------------------------------------------------------------------


def forced_hook(density: float) -> Callable[[Any, int, int], Any]:
    """A selection hook: a random selection of `density` per layer, seeded by the layer."""
    return lambda plan, layer, kv: random_selection(plan, kv, density, seed=layer)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", choices=("qwen2_5_vl", "qwen3_vl"), default="qwen2_5_vl",
                    help="language-model shapes: Qwen2.5-VL-7B or Qwen3-VL-8B")
    ap.add_argument("--sizes", default=None, help="video tokens in thousands (1024s); default 16,32,64,128 (qwen3_vl: 32,64)")
    ap.add_argument("--repeats", type=int, default=None, help="timed calls per run; default 3 (qwen3_vl: 2)")
    ap.add_argument("--deadline", type=float, default=None,
                    help="seconds; later runs are skipped past it; default 540 (qwen3_vl: 200)")
    ap.add_argument("--out", default=None, help="folder for bench_prefill.json")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU: exercise the code paths only")
    ap.add_argument("--no-kernel-table", action="store_true")
    args = ap.parse_args()
    qwen3 = args.arch == "qwen3_vl"
    args.sizes = args.sizes or ("32,64" if qwen3 else "16,32,64,128")
    args.repeats = args.repeats or (2 if qwen3 else 3)
    args.deadline = args.deadline or (200.0 if qwen3 else 540.0)
    args.no_kernel_table = args.no_kernel_table or qwen3  # the kernel table is the 7B's (28 / 4 heads)
    device = torch.device("cpu" if args.smoke else "cuda")
    env = environment(device.type == "cuda", packages=("triton", "flash-attn-4", "nvidia-cutlass-dsl"))
    results: dict[str, Any] = {"env": {**env, "fa4": fa4_available()}, "arch": args.arch, "sizes": {}, "kernel_table": {},
                               "errors": []}
    out_path = out_file(args.out, "bench_prefill_qwen3_vl.json" if qwen3 else "bench_prefill.json")

    def save() -> None:
        write_json(results, out_path)

    log(json.dumps(results["env"]))
    kernels = ["gathered"] if args.smoke else (["fa4", "flex"] if fa4_available() else ["flex"])
    if not args.smoke:
        check_kernels(device, kernels, results)
        save()
        if not kernels:
            return 1
    sparse_kernel = kernels[0]
    results["env"]["sparse_kernel"] = sparse_kernel
    t = time.perf_counter()
    model = build_model(args.smoke, device, torch.float32 if args.smoke else torch.bfloat16, arch=args.arch)
    log(f"{args.arch} model built in {time.perf_counter() - t:.1f} s, "
        f"{sum(p.numel() for p in model.model.language_model.parameters()) / 1e9:.2f} B language-model parameters")
    state = sparsify(model, AdaSparkConfig(cube=CUBE), kernel=sparse_kernel)
    results["env"]["dense_ffn_layers"] = sorted(state.settings.dense_ffn_layers)
    timer = None if args.smoke else BlockTimer(model)
    sizes = [int(s) * 1024 for s in ("1" if args.smoke else args.sizes).split(",")]  # smoke: one small size
    # p = 1 reproduces dense (fallback off, so the sparse kernels themselves run)
    inp = make_inputs(args.arch, model, sizes[0], device)
    with state.override(enabled=False):
        dense_logits = prefill(model, state, inp)
    with state.override(config=AdaSparkConfig(cube=CUBE, attn_top_p=1.0, ffn_top_p=1.0), dense_fallback=False):
        p1 = prefill(model, state, inp)
    results["p1_vs_dense"] = {
        "max_abs_logit_diff": float((p1 - dense_logits).abs().max()),
        "rel_l2": float((p1 - dense_logits).norm() / dense_logits.norm()),
        "top1_same": bool(p1.argmax() == dense_logits.argmax()),
        "top10_overlap": len(set(p1.topk(10).indices.tolist()) & set(dense_logits.topk(10).indices.tolist())),
    }
    log(f"p = 1 against dense (sparse kernels, fallback off), {inp.seq} tokens: {results['p1_vs_dense']}")
    for size in sizes:
        inp = make_inputs(args.arch, model, size, device)
        per = results["sizes"][str(size)] = {"seq": inp.seq, "video_tokens": inp.video_tokens, "runs": {}}
        runs: list[tuple[str, dict[str, Any]]] = [("dense", {"enabled": False})]
        for a, f in FORCED:
            hook = forced_hook(a)
            runs.append((f"forced {a}/{f}", {"config": AdaSparkConfig(cube=CUBE, ffn_top_p=f), "selection_hook": hook,
                                             "dense_fallback": False}))
        if qwen3:  # the DeepStack decision's cost: the same forced run with those layers' FFN sparse too
            # (before the top-p runs, which the deadline may skip at 64K)
            a, f = FORCED[1]
            hook = forced_hook(a)
            runs.append((f"forced {a}/{f} deepstack-ffn-sparse", {"config": AdaSparkConfig(cube=CUBE, ffn_top_p=f),
                                                                  "selection_hook": hook, "dense_fallback": False,
                                                                  "dense_ffn_layers": frozenset()}))
        for a, f in TOP_P:
            runs.append((f"top-p {a}/{f}", {"config": AdaSparkConfig(cube=CUBE, attn_top_p=a, ffn_top_p=f)}))
        if not args.smoke and "flex" in kernels and sparse_kernel != "flex":
            hook = forced_hook(0.3)
            runs.append(("forced 0.3/0.3 flex", {"config": AdaSparkConfig(cube=CUBE, ffn_top_p=0.3), "selection_hook": hook,
                                                 "dense_fallback": False, "kernel": "flex"}))
        for name, changes in runs:
            if elapsed() > args.deadline:
                per.setdefault("skipped", []).append(name)
                continue
            try:
                with state.override(**changes):
                    row = timed_runs(model, state, inp, 1 if args.smoke else args.repeats, timer)
            except Exception as exc:
                results["errors"].append(f"{size} {name}: {exc!r}")
                traceback.print_exc()
                continue
            per["runs"][name] = row
            dense_ms = per["runs"].get("dense", {}).get("ms")
            if dense_ms:
                row["speedup_vs_dense"] = dense_ms / row["ms"]
            log(f"{inp.seq} tokens {name}: {row['ms']:.1f} ms" + (f" ({row.get('speedup_vs_dense', 1):.2f}x)" if dense_ms else "")
                + f", FLOPs cut {row['flops_cut']:.1%}, attn density {row['attn_density']:.2f}, ffn kept {row['ffn_kept']:.2f}, "
                f"attention {row.get('attention_ms', 0):.1f} ms, ffn {row.get('ffn_ms', 0):.1f} ms, "
                f"first {row['first_call_s']:.1f} s, "
                f"peak +{row['peak_extra_gib'] or 0:.1f} GiB, dense layers {row['dense_fallback_layers']}")
            save()
        if not args.smoke and not args.no_kernel_table and elapsed() < args.deadline:
            try:
                results["kernel_table"][str(size)] = kernel_table(device, size, kernels, 5)
            except Exception as exc:
                results["errors"].append(f"kernel table {size}: {exc!r}")
                traceback.print_exc()
            save()
        torch.cuda.empty_cache() if device.type == "cuda" else None
    report(results)
    save()
    return 0


def report(results: dict) -> None:
    print("\n| tokens | run | ms | vs dense | FLOPs cut | attn density | FFN kept | attention ms | FFN ms | first call s "
          "| peak +GiB | dense layers |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for per in results["sizes"].values():
        for name, r in per["runs"].items():
            print(f"| {per['seq']} | {name} | {r['ms']:.1f} | {r.get('speedup_vs_dense', 1):.2f}x | {r['flops_cut']:.1%} | "
                  f"{r['attn_density']:.2f} | {r['ffn_kept']:.2f} | {r.get('attention_ms', float('nan')):.1f} | "
                  f"{r.get('ffn_ms', float('nan')):.1f} | {r['first_call_s']:.1f} | {r['peak_extra_gib'] or 0:.1f} | "
                  f"{len(r['dense_fallback_layers'])} |")
    for t in results["kernel_table"].values():
        print(f"\nkernel, {t['tokens']} tokens: best dense {t['best_dense_ms']:.2f} ms (sdpa {t['sdpa_dense_ms']:.2f}"
              + (f", fa4 {t['fa4_dense_ms']:.2f}" if "fa4_dense_ms" in t else "") + ")")
        for dens, row in t["sparse"].items():
            print(f"  density {dens}: kept {row['kept_fraction']:.2f}, " + ", ".join(
                f"{k} {v:.3f}" for k, v in row.items() if k != "kept_fraction" and isinstance(v, float)))
    if results["errors"]:
        print("errors:", results["errors"])


if __name__ == "__main__":
    sys.exit(main())
