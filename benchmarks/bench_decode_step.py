"""Decode-step benchmark for issue 4, part 3: dense against sparse (top-p cubes) answer decoding.

One whole decode step (batch 1, one new token) of Qwen2.5-VL-7B's language model at its real shapes:
28 layers, hidden 3584, 28 query / 4 KV heads, head_dim 128, FFN 18944, vocab 152064, bf16, random
weights. The context is a video prefix (64 text tokens, then T' x 16 x 16 merged video tokens in
2 x 8 x 8 cubes) followed by 63 text tokens (question and earlier answer tokens). Per layer: RMSNorm,
QKV projection (with bias), the new K/V row written into a preallocated cache, attention, O projection,
RMSNorm, SwiGLU MLP; then the final norm and lm_head. RoPE is left out (elementwise, the same for all).

Settings, timed in the same process on the same card (wall time of a step, synchronised, median):
  - dense: SDPA over every key (the GQA call transformers makes, and the grouped form the sparse
    path uses; the faster one is the dense baseline);
  - no attention: attention skipped, no KV read at all: the weights-only floor, i.e. the most any
    decode sparsity could give;
  - sparse dD: `attention.decode` with a forced random cube set of fraction D per KV head (the real
    top-p selection still runs, its result replaced), so the density is what is asked;
  - sparse topP: `decode_attention_gathered` end to end (random cached keys give flat cube scores,
    so the density it reaches is about P; it says nothing about a real model);
  - "cat" rows: as the session's transformers DynamicCache does, the layer's K and V are appended
    with torch.cat, which copies the whole cache every step.
Also: per-layer attention alone, the selection/gather split, one copy bandwidth, CUDA-graph dense
and no-attention steps (the GPU floor without Python launch overhead), and correctness on the device.

Usage (GPU machine, repository root):
    PYTHONPATH=src python3 benchmarks/bench_decode_step.py --out $OUT
CPU smoke test (tiny dims, numbers meaningless):
    PYTHONPATH=src python3 benchmarks/bench_decode_step.py --smoke
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
import traceback

import torch
import torch.nn.functional as F

from adaspark_cli.attention.decode import (
    DecodeStats,
    attend_selected_gathered,
    decode_attention_gathered,
    decode_attention_reference,
    select_decode_cubes,
    video_cube_keys,
)
from adaspark_cli.cubes import VideoSpan, cube_layout

HIDDEN, HQ, HKV, D, FFN_DIM, LAYERS, VOCAB = 3584, 28, 4, 128, 18944, 28, 152064
TEXT_BEFORE, TEXT_AFTER = 64, 63
GRID_HW = (16, 16)
CUBE = (2, 8, 8)
DENSITIES = (0.5, 0.3, 0.2, 0.1, 0.05)
TOP_P = (0.5, 0.9)

RESULTS: dict = {"env": {}, "checks": {}, "sizes": {}, "skipped": []}
OUT: str | None = None
SMOKE = False


def save() -> None:
    if OUT:
        with open(os.path.join(OUT, "bench_decode_step.json"), "w") as f:
            json.dump(RESULTS, f, indent=1, default=str)


def sync() -> None:
    if not SMOKE:
        torch.cuda.synchronize()


def wall_ms(fn, reps: int, warmup: int = 3) -> float:
    """Median wall milliseconds of fn(), synchronised before and after each call (what a user waits)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


# ------------------------------------------------------------------------------------------------
# the model


class Layer:
    def __init__(self, device, g):
        def w(*shape, fan_in):
            return torch.randn(*shape, device=device, dtype=torch.bfloat16, generator=g) * fan_in**-0.5

        self.ln1 = torch.ones(HIDDEN, device=device, dtype=torch.bfloat16)
        self.ln2 = torch.ones(HIDDEN, device=device, dtype=torch.bfloat16)
        self.wqkv = w(HQ * D + 2 * HKV * D, HIDDEN, fan_in=HIDDEN)
        self.bqkv = w(HQ * D + 2 * HKV * D, fan_in=HIDDEN)
        self.wo = w(HIDDEN, HQ * D, fan_in=HQ * D)
        self.w_gate_up = w(2 * FFN_DIM, HIDDEN, fan_in=HIDDEN)
        self.w_down = w(HIDDEN, FFN_DIM, fan_in=FFN_DIM)

    def bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in vars(self).values())


class Model:
    def __init__(self, device):
        g = torch.Generator(device=device).manual_seed(0)
        self.layers = [Layer(device, g) for _ in range(LAYERS)]
        self.ln_f = torch.ones(HIDDEN, device=device, dtype=torch.bfloat16)
        self.lm_head = torch.randn(VOCAB, HIDDEN, device=device, dtype=torch.bfloat16, generator=g) * HIDDEN**-0.5

    def weight_bytes_read_per_step(self) -> int:
        """Every layer's weights and lm_head (the embedding is one row, not counted)."""
        return sum(layer.bytes() for layer in self.layers) + self.lm_head.numel() * 2


class Cache:
    """Per layer K and V of shape (HKV, capacity, D); positions [0, length) are filled."""

    def __init__(self, length: int, device, g):
        self.length = length
        self.k = [torch.randn(HKV, length + 1, D, device=device, dtype=torch.bfloat16, generator=g) for _ in range(LAYERS)]
        self.v = [torch.randn(HKV, length + 1, D, device=device, dtype=torch.bfloat16, generator=g) for _ in range(LAYERS)]

    def bytes(self) -> int:
        return 2 * LAYERS * HKV * self.length * D * 2


def rms(x, w):
    return F.rms_norm(x, (HIDDEN,), w, eps=1e-6)


def decode_step(model: Model, cache: Cache, x: torch.Tensor, attention, *, cat: bool) -> torch.Tensor:
    """One token through all layers; attention(layer, q (HQ, 1, D), K, V (HKV, L+1, D)) -> (1, HQ, D) or (HQ, 1, D)."""
    n = cache.length
    for i, layer in enumerate(model.layers):
        h = rms(x, layer.ln1)
        qkv = F.linear(h, layer.wqkv, layer.bqkv)[0]
        q = qkv[: HQ * D].view(HQ, 1, D)
        k_new = qkv[HQ * D : HQ * D + HKV * D].view(HKV, 1, D)
        v_new = qkv[HQ * D + HKV * D :].view(HKV, 1, D)
        if cat:  # what transformers' DynamicCache does: a new tensor holding the whole cache
            keys = torch.cat([cache.k[i][:, :n], k_new], dim=1)
            values = torch.cat([cache.v[i][:, :n], v_new], dim=1)
        else:
            cache.k[i][:, n : n + 1] = k_new
            cache.v[i][:, n : n + 1] = v_new
            keys, values = cache.k[i], cache.v[i]
        o = attention(i, q, keys, values)
        x = x + F.linear(o.reshape(1, HQ * D), layer.wo)
        h = rms(x, layer.ln2)
        gate, up = F.linear(h, layer.w_gate_up).chunk(2, dim=-1)
        x = x + F.linear(F.silu(gate) * up, layer.w_down)
    return F.linear(rms(x, model.ln_f), model.lm_head)


# ------------------------------------------------------------------------------------------------
# attention variants: (layer, q (HQ, 1, D), K, V (HKV, L, D)) -> (.., HQ, D)

SCALE = D**-0.5


def dense_gqa(_, q, k, v):
    """transformers' call for a decode step (no mask): batch 1, HQ heads, enable_gqa."""
    return F.scaled_dot_product_attention(q[None], k[None], v[None], scale=SCALE, enable_gqa=True)


def dense_grouped(_, q, k, v):
    """KV heads as the batch, each group's query heads as its queries (the sparse path's form)."""
    return F.scaled_dot_product_attention(q.reshape(HKV, 1, HQ // HKV, D), k[:, None], v[:, None], scale=SCALE)


def no_attention(_, q, k, v):
    return torch.zeros_like(q)


def forced_sparse(layout, mean_keys, selections, stats=None):
    """The library's decode path with the selection replaced by a forced cube set (selection still runs)."""

    def attention(i, q, k, v):
        select_decode_cubes(q, mean_keys[i], top_p=0.5, scaling=SCALE)
        return attend_selected_gathered(q, k, v, layout, selections[i], scaling=SCALE, stats=stats)

    return attention


def top_p_sparse(layout, mean_keys, top_p, stats=None):
    def attention(i, q, k, v):
        return decode_attention_gathered(q, k, v, layout, mean_keys[i], top_p=top_p, scaling=SCALE, stats=stats)

    return attention


def random_selection(num_cubes: int, density: float, device, seed: int) -> torch.Tensor:
    """(HKV, C) bool, round(density * C) random cubes per KV head."""
    g = torch.Generator(device=device).manual_seed(seed)
    rank = torch.rand(HKV, num_cubes, device=device, generator=g).argsort(-1).argsort(-1)
    return rank < max(1, round(density * num_cubes))


# ------------------------------------------------------------------------------------------------
# correctness on the device


def check_correctness(device) -> None:
    print("== correctness (random inputs, gathered fast path vs float32 reference) ==", flush=True)
    g = torch.Generator(device=device).manual_seed(1)
    spans = [VideoSpan(40, (8, 12, 12)), VideoSpan(40 + 8 * 144 + 20, (4, 10, 6))]  # partial cubes, two videos
    layout = cube_layout(spans, spans[-1].end + 1, CUBE).to(device)
    lk = layout.seq_len + 30
    checks = {}
    for p in (1.0, 0.9, 0.5, 0.2):
        q = torch.randn(HQ, 1, D, device=device, generator=g) * 2
        k = torch.randn(HKV, lk, D, device=device, generator=g) * 2
        v = torch.randn(HKV, lk, D, device=device, generator=g)
        mk = video_cube_keys({0: k[None]}, layout).mean_keys[0]
        ref_stats, fast_stats = DecodeStats(), DecodeStats()
        ref = decode_attention_reference(q, k, v, layout, mk, top_p=p, scaling=SCALE, stats=ref_stats)
        fp32 = decode_attention_gathered(q, k, v, layout, mk, top_p=p, scaling=SCALE, stats=fast_stats)
        bf16 = decode_attention_gathered(q.bfloat16(), k.bfloat16(), v.bfloat16(), layout, mk, top_p=p, scaling=SCALE)
        entry = {
            "max_abs_err_fp32": float((fp32 - ref).abs().max()),
            "max_abs_err_bf16": float((bf16.float() - ref).abs().max()),
            "same_selection_counts": ref_stats == fast_stats,
            "cubes_attended_per_head": fast_stats.cubes_attended / HKV,
            "cubes": layout.num_cubes,
        }
        checks[f"p{p}"] = entry
        print(f"  top_p={p}: {entry}", flush=True)
    RESULTS["checks"] = checks
    save()


# ------------------------------------------------------------------------------------------------
# one context size


def bench_size(n_video: int, model: Model, args, device) -> dict:
    t = n_video // (GRID_HW[0] * GRID_HW[1])
    span = VideoSpan(TEXT_BEFORE, (t, *GRID_HW))
    layout = cube_layout([span], span.end + 1, CUBE).to(device)  # the prefix ends with <|vision_end|>
    length = layout.seq_len + TEXT_AFTER - 1  # keys before the new token
    g = torch.Generator(device=device).manual_seed(2)
    cache = Cache(length, device, g)
    res: dict = {"video_tokens": n_video, "context_keys": length + 1, "cubes": layout.num_cubes,
                 "kv_bytes": cache.bytes(), "weight_bytes": model.weight_bytes_read_per_step()}
    sync()
    t0 = time.perf_counter()
    cube_keys = video_cube_keys({i: cache.k[i][None, :, :length] for i in range(LAYERS)}, layout)
    sync()
    res["mean_keys_all_layers_ms_once"] = (time.perf_counter() - t0) * 1e3
    mean_keys = cube_keys.mean_keys
    x = torch.randn(1, HIDDEN, device=device, dtype=torch.bfloat16, generator=g)
    reps = args.reps

    # full-size check: every cube selected through the gathered path equals dense SDPA
    q = torch.randn(HQ, 1, D, device=device, dtype=torch.bfloat16, generator=g)
    k, v = cache.k[0], cache.v[0]
    all_cubes = torch.ones(HKV, layout.num_cubes, dtype=torch.bool, device=device)
    full = attend_selected_gathered(q, k, v, layout, all_cubes, scaling=SCALE)
    res["max_abs_err_all_cubes_vs_dense_sdpa"] = float((full.float() - dense_gqa(0, q, k, v)[0].transpose(0, 1).float()).abs().max())

    # attention alone, all layers (one per layer's cache), wall time
    attn: dict = {}

    def all_layers(fn):
        return lambda: [fn(i, q, cache.k[i], cache.v[i]) for i in range(LAYERS)]

    for name, fn in (("dense_gqa", dense_gqa), ("dense_grouped", dense_grouped)):
        attn[name] = wall_ms(all_layers(fn), reps)
    selections = {d: [random_selection(layout.num_cubes, d, device, seed=i) for i in range(LAYERS)] for d in DENSITIES}
    for d in DENSITIES:
        attn[f"sparse_d{d}"] = wall_ms(all_layers(forced_sparse(layout, mean_keys, selections[d])), reps)
    attn["select_only"] = wall_ms(all_layers(lambda i, q_, k_, v_: select_decode_cubes(q_, mean_keys[i], top_p=0.5, scaling=SCALE)), reps)
    attn["gather_sdpa_d0.1"] = wall_ms(
        all_layers(lambda i, q_, k_, v_: attend_selected_gathered(q_, k_, v_, layout, selections[0.1][i], scaling=SCALE)), reps)
    res["attention_all_layers_ms"] = attn
    print(f"  attention, all layers (ms): { {k_: round(v_, 3) for k_, v_ in attn.items()} }", flush=True)

    # whole decode steps
    dense_name = min(("dense_gqa", "dense_grouped"), key=attn.get)
    dense_fn = dense_gqa if dense_name == "dense_gqa" else dense_grouped
    steps: dict = {}

    def step(fn, cat=False):
        return lambda: decode_step(model, cache, x, fn, cat=cat)

    steps["dense"] = wall_ms(step(dense_fn), reps)
    steps["no_attention"] = wall_ms(step(no_attention), reps)
    for d in DENSITIES:
        steps[f"sparse_d{d}"] = wall_ms(step(forced_sparse(layout, mean_keys, selections[d])), reps)
    density = {}
    for p in TOP_P:
        steps[f"sparse_top{p}"] = wall_ms(step(top_p_sparse(layout, mean_keys, p)), reps)
        stats = DecodeStats()
        decode_step(model, cache, x, top_p_sparse(layout, mean_keys, p, stats), cat=False)
        density[f"sparse_top{p}"] = stats.attended_keys / stats.causal_keys
    steps["dense_cat"] = wall_ms(step(dense_fn, cat=True), reps)
    steps["sparse_d0.1_cat"] = wall_ms(step(forced_sparse(layout, mean_keys, selections[0.1]), cat=True), reps)
    res["dense_attention"] = dense_name
    res["step_ms"] = steps
    res["top_p_density"] = density
    res["speedup_vs_dense"] = {k_: steps["dense"] / v_ for k_, v_ in steps.items() if not k_.endswith("_cat")}
    res["speedup_vs_dense_cat"] = {"sparse_d0.1_cat": steps["dense_cat"] / steps["sparse_d0.1_cat"]}
    print(f"  decode step (ms): { {k_: round(v_, 3) for k_, v_ in steps.items()} }", flush=True)

    if not SMOKE and args.graphs:
        res["graph_step_ms"] = graph_steps(model, cache, x, dense_fn, reps)
        print(f"  CUDA-graph step (ms): {res['graph_step_ms']}", flush=True)
    del cache
    return res


def graph_steps(model, cache, x, dense_fn, reps) -> dict:
    """Dense and no-attention steps replayed from CUDA graphs: the GPU time without launch overhead.
    (The sparse path synchronises once per layer, so it cannot be captured.)"""
    out = {}
    for name, fn in (("dense", dense_fn), ("no_attention", no_attention)):
        try:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):
                    decode_step(model, cache, x, fn, cat=False)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                decode_step(model, cache, x, fn, cat=False)
            out[name] = wall_ms(graph.replay, reps)
            del graph
        except Exception as e:  # noqa: BLE001
            out[name] = f"{type(e).__name__}: {str(e)[:200]}"
    return out


def copy_bandwidth_gbs(device) -> float:
    """Read + write GB/s of one 4 GiB device-to-device copy (the HBM rate a memory-bound step can reach)."""
    if SMOKE:
        return float("nan")
    a = torch.empty(2**31, dtype=torch.bfloat16, device=device)
    b = torch.empty_like(a)
    ms = wall_ms(lambda: b.copy_(a), 5, warmup=2)
    del a, b
    torch.cuda.empty_cache()
    return 2 * 2**32 / ms / 1e6


def main() -> None:
    global OUT, SMOKE, HIDDEN, HQ, HKV, D, FFN_DIM, LAYERS, VOCAB, SCALE, TEXT_BEFORE, TEXT_AFTER
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="65536,131072", help="video tokens (multiples of 256)")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--no-graphs", dest="graphs", action="store_false", help="skip the CUDA-graph steps")
    ap.add_argument("--out", default=os.environ.get("OUT"))
    ap.add_argument("--smoke", action="store_true", help="tiny dims on the CPU (code paths only, numbers meaningless)")
    args = ap.parse_args()
    OUT = args.out
    device = torch.device("cuda")
    if args.smoke:
        SMOKE, HIDDEN, HQ, HKV, D, FFN_DIM, LAYERS, VOCAB = True, 64, 4, 2, 16, 128, 2, 1000
        TEXT_BEFORE, TEXT_AFTER = 8, 7
        SCALE = D**-0.5
        device = torch.device("cpu")
        if args.sizes == ap.get_default("sizes"):
            args.sizes = "2048"
        args.reps = min(args.reps, 3)
    env = {
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": "cpu (smoke)" if SMOKE else torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "shapes": {"layers": LAYERS, "hidden": HIDDEN, "q_heads": HQ, "kv_heads": HKV, "head_dim": D, "ffn": FFN_DIM, "vocab": VOCAB},
    }
    RESULTS["env"] = env
    print("== environment ==")
    for k_, v_ in env.items():
        print(f"  {k_}: {v_}")
    start = time.time()
    check_correctness(device)
    model = Model(device)
    RESULTS["copy_bandwidth_gbs"] = copy_bandwidth_gbs(device)
    print(f"  weights read per step: {model.weight_bytes_read_per_step() / 1e9:.2f} GB; copy bandwidth "
          f"{RESULTS['copy_bandwidth_gbs']:.0f} GB/s  [{time.time() - start:.0f} s]", flush=True)
    for n in [int(s) for s in args.sizes.split(",")]:
        print(f"== {n} video tokens ==", flush=True)
        try:
            RESULTS["sizes"][str(n)] = bench_size(n, model, args, device)
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            RESULTS["skipped"].append({"video_tokens": n, "why": f"{type(e).__name__}: {str(e)[:300]}"})
        if not SMOKE:
            torch.cuda.empty_cache()
        save()
        print(f"  [{time.time() - start:.0f} s]", flush=True)
    save()
    print_table()


def print_table() -> None:
    bw = RESULTS["copy_bandwidth_gbs"]
    print("\n== summary: decode ms/token (wall, batch 1, eager PyTorch, static cache unless 'cat') ==")
    print("| video tokens | setting | step ms | speedup vs dense | attention density | attention, all layers ms |")
    print("|---|---|---|---|---|---|")
    for n, r in RESULTS["sizes"].items():
        attn, steps = r["attention_all_layers_ms"], r["step_ms"]
        for name, ms in steps.items():
            if name.startswith("sparse_d"):
                dens = name[len("sparse_d"):].removesuffix("_cat")
            elif name.startswith("sparse_top"):
                dens = f"{r['top_p_density'][name]:.2f}"
            else:
                dens = {"no_attention": "0", "dense": "1", "dense_cat": "1"}[name]
            base = steps["dense_cat"] if name.endswith("_cat") else steps["dense"]
            a = attn.get(name, attn.get(r["dense_attention"]) if name.startswith("dense") else None)
            print(f"| {n} | {name} | {ms:.2f} | {base / ms:.2f} | {dens} | {'-' if a is None else f'{a:.2f}'} |")
        w, kv = r["weight_bytes"] / 1e9, r["kv_bytes"] / 1e9
        print(f"analytic ({n}): weights {w:.2f} GB + KV {kv:.2f} GB; at the copy bandwidth {bw:.0f} GB/s: "
              f"{1e3 * w / bw:.2f} + {1e3 * kv / bw:.2f} ms; cap on the decode speedup (KV never read) "
              f"{(w + kv) / w:.2f}x; measured dense / no-attention {steps['dense'] / steps['no_attention']:.2f}x"
              + (f"; CUDA graphs: {r['graph_step_ms']}" if "graph_step_ms" in r else ""))
    for s in RESULTS["skipped"]:
        print(f"skipped: {s}")


if __name__ == "__main__":
    main()
