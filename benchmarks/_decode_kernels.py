"""bench_decode_step.py's kernel-level parts: attention/decode.py's kernels on one layer's real cache,
against their float32 reference and against the best dense alternative (SDPA on the exact length for a
decode step; the batched-GEMM path used before for a question's prefill), with the launch sweeps that
pick attention/decode.py's LAUNCH on the card."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from _common import log_stamped as log  # this folder is on sys.path; puts src/ there too

from adaspark_cli.qa import VideoQA
from adaspark_cli.qa.session import VideoPrefix


def decode_kernel_error(qa: VideoQA, prefix: VideoPrefix) -> float:
    """attention/decode.py's kernel against its float32 reference on layer 0's real cache buffer, with the
    buffer's unfilled tail masked as the graphed step masks it."""
    from adaspark_cli.attention.decode import decode_attention, decode_attention_reference

    layer = prefix.cache.layers[0]
    keys, values = layer._keys[0], layer._values[0]
    hq = qa.model.config.text_config.num_attention_heads
    q = torch.randn(hq, 1, keys.shape[-1], device=qa.device, dtype=keys.dtype)
    mask = (torch.arange(keys.shape[1], device=qa.device) < prefix.cache.length)[None]
    scale = keys.shape[-1] ** -0.5
    fast = decode_attention(q, keys, values, mask, scale).float()
    return float((fast - decode_attention_reference(q, keys, values, mask, scale).float()).abs().max())


LAUNCHES = [dict(block=b, programs=p, warps=w, stages=st)
            for b in (64, 128) for p in (264, 528, 1056, 2112) for w in (4, 8) for st in (2, 3, 4)]
QUESTION_LAUNCHES = [dict(prefill_rows=r, prefill_warps=w) for r in (16, 32, 64) for w in (4, 8)]


def decode_kernel_sweep(qa: VideoQA, prefix: VideoPrefix, reps: int = 30) -> dict[str, Any]:
    """One layer's decode attention alone on layer 0's cache buffer (the filled prefix under the mask, as the
    graphed step runs it): each launch choice of attention/decode.py against transformers' SDPA on the exact
    length (flash, GQA). The fastest choice is kept (decode.LAUNCH) for the step runs that follow."""
    import torch.nn.functional as F

    from adaspark_cli.attention import decode

    layer = prefix.cache.layers[0]
    keys, values = layer._keys[0], layer._values[0]
    hq = qa.model.config.text_config.num_attention_heads
    q = torch.randn(hq, 1, keys.shape[-1], device=qa.device, dtype=keys.dtype)
    n = prefix.cache.length
    mask = torch.arange(keys.shape[1], device=qa.device) < n
    scale = keys.shape[-1] ** -0.5

    def cuda_us(fn) -> float:
        return cuda_mean_us(fn, reps)

    k, v = keys[:, :n][None], values[:, :n][None]
    sdpa_us = cuda_us(lambda: F.scaled_dot_product_attention(q[None], k, v, scale=scale, enable_gqa=True))
    out: dict[str, Any] = {"sdpa_exact_us": sdpa_us,
                           "kv_gb_per_layer": 2 * keys[:, :n].numel() * keys.element_size() / 1e9}
    mask = mask[None]
    out.update(sweep_launches(LAUNCHES, lambda: {"us": cuda_us(lambda: decode.decode_attention(q, keys, values, mask, scale))}))
    best = out["best"]
    log(f"  decode attention, one layer: SDPA on the exact length {out['sdpa_exact_us']:.1f} us; ours default "
        f"{out['default']['us']:.1f} us, best {best['us']:.1f} us ({best}); {out['kv_gb_per_layer'] * 1e3:.0f} MB of K/V")
    return out


def captured_graph(fn: Callable[[], Any], warmup: int = 3) -> torch.cuda.CUDAGraph:
    """`fn` captured in a CUDA graph after `warmup` eager calls on a side stream (lazy inits, the
    allocator), replayed once."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    torch.cuda.synchronize()
    return graph


def cuda_mean_us(fn: Callable[[], Any], reps: int) -> float:
    """Mean device time of `fn` over `reps` calls, captured in one CUDA graph and replayed (as the graphed
    decode step runs it: without the host's launch overhead, which alone took ~110 us a call for the two
    Triton launches of a 64K-token layer and hid the kernels' time)."""
    graph = captured_graph(lambda: [fn() for _ in range(reps)])
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    graph.replay()
    e.record()
    e.synchronize()
    del graph
    return 1e3 * s.elapsed_time(e) / reps


def sweep_launches(launches: list[dict[str, Any]], time_one: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Each launch choice set in decode.LAUNCH and timed (`time_one` returns its row's measures), the current
    choice among them; the fastest is kept in decode.LAUNCH. Returns the rows, the default and the best."""
    from adaspark_cli.attention import decode

    default = {key: decode.LAUNCH[key] for key in launches[0]}
    rows = []
    for launch in launches if default in launches else [default, *launches]:
        decode.LAUNCH.update(launch)
        rows.append(dict(launch, **time_one()))
    best = min(rows, key=lambda r: r["us"])
    decode.LAUNCH.update({key: best[key] for key in default})
    return {"launches": rows, "default": next(r for r in rows if all(r[key] == default[key] for key in default)),
            "best": best}


def question_kernel_sweep(qa: VideoQA, prefix: VideoPrefix, n: int = 24, reps: int = 20) -> dict[str, Any]:
    """One layer's attention for a question's prefill (n causal queries after the video) on layer 0's cache:
    attention/decode.py's kernels at each row-tile choice against the batched-GEMM path used before
    (scores materialised in float32, `small_query_gemm`), with the error of each against the float32 reference.
    The fastest choice is kept (decode.LAUNCH)."""
    from adaspark_cli.attention import decode

    layer = prefix.cache.layers[0]
    length = prefix.cache.length
    keys, values = layer._keys[0, :, :length], layer._values[0, :, :length]
    hq = qa.model.config.text_config.num_attention_heads
    q = torch.randn(hq, n, keys.shape[-1], device=qa.device, dtype=keys.dtype)
    mask = decode.causal_mask(n, length, qa.device)
    scale = keys.shape[-1] ** -0.5
    want = decode.decode_attention_reference(q, keys, values, mask, scale).float()
    out: dict[str, Any] = {"queries": n, "keys": length}
    out["gemm_us"] = cuda_mean_us(lambda: small_query_gemm(q, keys, values, mask, scale), reps)
    out["gemm_max_abs_err"] = float((small_query_gemm(q, keys, values, mask, scale).float() - want).abs().max())

    def time_one() -> dict[str, Any]:
        err = float((decode.decode_attention(q, keys, values, mask, scale).float() - want).abs().max())
        return {"us": cuda_mean_us(lambda: decode.decode_attention(q, keys, values, mask, scale), reps), "max_abs_err": err}

    out.update(sweep_launches(QUESTION_LAUNCHES, time_one))
    best = out["best"]
    log(f"  question prefill attention ({n} queries, one layer): batched GEMMs {out['gemm_us']:.0f} us; ours default "
        f"{out['default']['us']:.0f} us, best {best['us']:.0f} us ({best})")
    return out


def small_query_gemm(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor, scaling: float
) -> torch.Tensor:
    """What a question's prefill ran before the kernels took it (2026-12-01): the group's heads through one
    batched GEMM against their KV head, the scores materialised in float32. A yardstick only."""
    hq, n, d = query.shape
    hkv = key.shape[0]
    group = hq // hkv
    scores = torch.bmm(query.reshape(hkv, group * n, d), key.transpose(1, 2), out_dtype=torch.float32)
    scores = (scores * scaling).masked_fill_(~mask.repeat(group, 1)[None], float("-inf"))
    out = torch.bmm(torch.softmax(scores, dim=-1).to(value.dtype), value)
    return out.reshape(hq, n, d).transpose(0, 1)
