"""Dense attention for a few queries over a long cache, each cached key and value read once (CUDA):
decode steps and a question's prefill after the video.

A decode step at batch 1 is bound by memory: the weights and the whole KV cache are read once per
token. transformers' SDPA path, given a mask (the CUDA-graph step attends its whole preallocated buffer
under one), first repeats every KV head for its query heads (7 copies of the cache at Qwen2.5-VL-7B's
28 / 4 heads), which made the graphed step grow from 17 ms at 16K to 82 ms at 128K on an H200. A
question's prefill (a few dozen queries after 64K video tokens) took 0.8-1.1 s the same way.

Here (split-K, as flash-decoding does): the keys are cut into chunks; one program per (tile of query
rows, chunk, KV head) computes the online softmax of its rows over the chunk, and a second kernel
merges the chunks' partial results. A row is one (query, query head of the group): the group's heads
share each K/V read, and the row tiles of one chunk run side by side, so the chunk is read from memory
once. With a mask, each program first finds the last key its rows attend in its chunk and stops
there: the unfilled part of a preallocated buffer costs no reads, and the step has fixed shapes (a
CUDA graph replays it at every position). Loads are bounded by positions alone; the mask only
zeroes scores, so that the loads stay independent of each other and pipeline (with loads predicated
on the mask, the kernel read a 64K-token cache at 1.2 TB/s; now 2.6 TB/s, and 3.1 at 128K: H200).
`decode_attention_reference` (float32, heads repeated) is what it computes.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..selection.triton_union import triton_available

MAX_QUERIES = 64  # a question's prefill up to this many tokens runs here; longer ones take SDPA
# launch choices: keys per inner step, programs to aim at, warps, pipeline stages; rows per program for a
# decode step (one query: the group's heads padded) and for a question's prefill;
# benchmarks/bench_decode_step.py times alternatives on the card
LAUNCH = {"block": 128, "programs": 264, "warps": 4, "stages": 2, "prefill_rows": 64, "prefill_warps": 4}  # H200, 2026-12-02
_TRITON: dict[str, Any] = {}


def decode_attention_reference(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None, scaling: float
) -> torch.Tensor:
    """query: (Hq, n, D), the last n positions; key, value: (Hkv, L, D); mask: (n, L) bool (True:
    attend) or None (causal: query i sees keys up to L - n + i). Returns (n, Hq, D) in query's dtype;
    computed in float32."""
    hq, n, _ = query.shape
    hkv, length, _ = key.shape
    k = key.float().repeat_interleave(hq // hkv, 0)
    v = value.float().repeat_interleave(hq // hkv, 0)
    scores = (query.float() @ k.transpose(1, 2)) * scaling  # (Hq, n, L)
    if mask is None:
        mask = causal_mask(n, length, query.device)
    scores = scores.masked_fill(~mask[None], float("-inf"))
    out = torch.softmax(scores, dim=-1) @ v  # (Hq, n, D)
    return out.transpose(0, 1).to(query.dtype)


def causal_mask(n: int, length: int, device: torch.device) -> torch.Tensor:
    """(n, L) bool: the last n positions of L, each attending itself and every key before it."""
    return torch.arange(length, device=device)[None, :] <= torch.arange(length - n, length, device=device)[:, None]


def decode_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None, scaling: float
) -> torch.Tensor:
    """The split-K Triton kernels; same arguments and result as `decode_attention_reference`, for
    n <= MAX_QUERIES. Shapes only decide the launch, so one CUDA graph serves every step."""
    hq, n, d = query.shape
    hkv, length, _ = key.shape
    group = hq // hkv
    rows = group * n  # row r: query r // group, head r % group of the KV head's group
    tile = max(16, min(LAUNCH["prefill_rows"], 1 << (rows - 1).bit_length()))
    if query.stride(-1) != 1:
        query = query.contiguous()
    key, value = (t if t.stride(-1) == 1 else t.contiguous() for t in (key, value))
    tiles = _ceil_div(rows, tile)
    block = LAUNCH["block"]
    # chunks sized from the rows of the buffer behind the keys (a cache view's head stride), not from the
    # view's length: a view of the filled part and the whole masked buffer are then cut at the same keys,
    # so an eager step and a graphed one add up the same partial sums (the same greedy answers)
    basis = max(length, key.stride(0) // max(1, key.stride(1)))
    chunks = max(1, min(_ceil_div(basis, block), _ceil_div(LAUNCH["programs"], hkv * tiles)))
    chunk = _ceil_div(_ceil_div(basis, chunks), block) * block  # keys per chunk: a multiple of the block
    chunks = _ceil_div(length, chunk)
    part_out = torch.empty(hkv, chunks, rows, d, dtype=torch.float32, device=query.device)
    part_max = torch.empty(hkv, chunks, rows, dtype=torch.float32, device=query.device)
    part_sum = torch.empty(hkv, chunks, rows, dtype=torch.float32, device=query.device)
    out = torch.empty(n, hq, d, dtype=query.dtype, device=query.device)
    if mask is None:
        # materialised (n x L bytes) rather than a causal variant of the kernel: an eager step (no mask) and
        # a graphed one (its buffer's mask) then run the same compiled code and give the same sums
        mask = causal_mask(n, length, query.device)
    partial_kernel, combine_kernel = _kernels()
    dpad = max(16, 1 << (d - 1).bit_length())
    partial_kernel[(tiles, chunks, hkv)](
        query, key, value, mask.view(torch.uint8), part_out, part_max, part_sum,
        n, length, chunk, scaling * math.log2(math.e),
        query.stride(0), query.stride(1), key.stride(0), key.stride(1), value.stride(0), value.stride(1),
        mask.stride(0), mask.stride(1),
        G=group, D=d, DPAD=dpad, ROWS=tile, BLOCK=LAUNCH["block"],
        num_warps=LAUNCH["warps" if n == 1 else "prefill_warps"], num_stages=LAUNCH["stages"],
    )
    combine_kernel[(hkv * rows,)](
        part_out, part_max, part_sum, out, chunks, rows, out.stride(0), G=group, D=d, DPAD=dpad, CSTEP=16, num_warps=4,
    )
    return out


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def decode_kernel_available(device: torch.device) -> bool:
    return device.type == "cuda" and triton_available()


def _kernels():
    if "kernels" in _TRITON:
        return _TRITON["kernels"]
    import triton
    import triton.language as tl

    # lengths, strides and chunk sizes change with every video and step: one compiled kernel for all of them
    @triton.jit(do_not_specialize=["n_queries", "length", "chunk", "m_stride_q", "m_stride_l"])
    def partial_kernel(
        q_ptr, k_ptr, v_ptr, mask_ptr, out_ptr, max_ptr, sum_ptr,
        n_queries, length, chunk, scale_log2,
        q_stride_h, q_stride_n, k_stride_h, k_stride_l, v_stride_h, v_stride_l, m_stride_q, m_stride_l,
        G: tl.constexpr, D: tl.constexpr, DPAD: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr,
    ):
        t = tl.program_id(0)
        c = tl.program_id(1)
        h = tl.program_id(2)
        chunks = tl.num_programs(1)
        n_rows = n_queries * G
        rows = t * ROWS + tl.arange(0, ROWS)
        row_ok = rows < n_rows
        qi = tl.where(row_ok, rows // G, 0)
        head = h * G + rows % G
        dims = tl.arange(0, DPAD)
        dim_ok = dims < D
        q = tl.load(q_ptr + head[:, None] * q_stride_h + qi[:, None] * q_stride_n + dims[None, :],
                    mask=row_ok[:, None] & dim_ok[None, :], other=0.0)
        start = c * chunk
        stop = tl.minimum(start + chunk, length)
        m_rows = mask_ptr + qi[:, None].to(tl.int64) * m_stride_q
        # the last key these rows attend in the chunk (start: none); the main loop stops there
        last = start
        for n0 in range(start, stop, BLOCK):
            cols = n0 + tl.arange(0, BLOCK)
            keep = tl.load(m_rows + cols[None, :].to(tl.int64) * m_stride_l,
                           mask=row_ok[:, None] & (cols < stop)[None, :], other=0) != 0
            last = tl.maximum(last, tl.max(tl.max(tl.where(keep, cols[None, :] + 1, 0), 1), 0))
        stop = last
        m_i = tl.full([ROWS], float("-inf"), tl.float32)
        l_i = tl.zeros([ROWS], tl.float32)
        acc = tl.zeros([ROWS, DPAD], tl.float32)
        k_base = k_ptr + h.to(tl.int64) * k_stride_h
        v_base = v_ptr + h.to(tl.int64) * v_stride_h
        for n0 in range(start, stop, BLOCK):
            cols = n0 + tl.arange(0, BLOCK)
            in_range = cols < stop
            kv_mask = in_range[:, None] & dim_ok[None, :]
            k = tl.load(k_base + cols.to(tl.int64)[:, None] * k_stride_l + dims[None, :], mask=kv_mask, other=0.0)
            v = tl.load(v_base + cols.to(tl.int64)[:, None] * v_stride_l + dims[None, :], mask=kv_mask, other=0.0)
            s = tl.dot(q, tl.trans(k)) * scale_log2  # (ROWS, BLOCK) float32, base-2 logits
            keep = tl.load(m_rows + cols[None, :].to(tl.int64) * m_stride_l,
                           mask=row_ok[:, None] & in_range[None, :], other=0) != 0
            s = tl.where(keep, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.exp2(s - m_safe[:, None])
            alpha = tl.exp2(m_i - m_safe)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            l_i = l_i * alpha + tl.sum(p, 1)
            m_i = m_new
        base = (h * chunks + c) * n_rows
        tl.store(out_ptr + (base + rows)[:, None] * D + dims[None, :], acc, mask=row_ok[:, None] & dim_ok[None, :])
        tl.store(max_ptr + base + rows, m_i, mask=row_ok)
        tl.store(sum_ptr + base + rows, l_i, mask=row_ok)

    @triton.jit(do_not_specialize=["chunks", "n_rows", "out_stride_n"])
    def combine_kernel(
        out_part_ptr, max_ptr, sum_ptr, out_ptr, chunks, n_rows, out_stride_n,
        G: tl.constexpr, D: tl.constexpr, DPAD: tl.constexpr, CSTEP: tl.constexpr,
    ):
        # one row (KV head, query, head of its group): merges its chunks' partial softmaxes (base-2
        # log-sum-exp), CSTEP chunks at a time
        pid = tl.program_id(0)
        h = pid // n_rows
        r = pid % n_rows
        dims = tl.arange(0, DPAD)
        dim_ok = dims < D
        m_all = float("-inf")
        for c0 in range(0, chunks, CSTEP):
            cs = c0 + tl.arange(0, CSTEP)
            m = tl.load(max_ptr + (h * chunks + cs) * n_rows + r, mask=cs < chunks, other=float("-inf"))
            m_all = tl.maximum(m_all, tl.max(m, 0))
        m_safe = tl.where(m_all == float("-inf"), 0.0, m_all)
        total = 0.0
        acc = tl.zeros([DPAD], tl.float32)
        for c0 in range(0, chunks, CSTEP):
            cs = c0 + tl.arange(0, CSTEP)
            ok = cs < chunks
            row = (h * chunks + cs) * n_rows + r
            w = tl.exp2(tl.load(max_ptr + row, mask=ok, other=float("-inf")) - m_safe)
            total += tl.sum(w * tl.load(sum_ptr + row, mask=ok, other=0.0), 0)
            part = tl.load(out_part_ptr + row[:, None] * D + dims[None, :], mask=ok[:, None] & dim_ok[None, :], other=0.0)
            acc += tl.sum(w[:, None] * part, 0)
        res = acc / tl.where(total > 0, total, 1.0)
        query, head = r // G, h * G + r % G
        tl.store(out_ptr + query * out_stride_n + head * D + dims, res.to(out_ptr.dtype.element_ty), mask=dim_ok)

    _TRITON["kernels"] = (partial_kernel, combine_kernel)
    return partial_kernel, combine_kernel
