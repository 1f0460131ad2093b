"""Dense attention for one decode step over a long cache: each cached key and value read once (CUDA).

A decode step at batch 1 is bound by memory: the weights and the whole KV cache are read once per
token. transformers' SDPA path, given a mask (the CUDA-graph step attends its whole preallocated buffer
under one), first repeats every KV head for its query heads (7 copies of the cache at Qwen2.5-VL-7B's
28 / 4 heads), which made the graphed step grow from 17 ms at 16K to 82 ms at 128K on an H200.

Here (split-K, as flash-decoding does): the keys are cut into chunks; one program per (KV head, chunk)
computes the online softmax of the group's query heads over its chunk, up to the last attended key
(the unfilled part of the buffer costs no reads), and a second kernel merges the chunks' partial
results. The mask is read on the device, so the step has fixed shapes and can be captured in
a CUDA graph. `decode_attention_reference` (SDPA on repeated heads) is what it computes.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..selection.triton_union import triton_available

# launch choices: keys per inner step, (KV heads x chunks) programs to aim at, warps, pipeline stages;
# benchmarks/bench_decode_step.py times alternatives (decode_attention_launches) on the card
LAUNCH = {"block": 64, "programs": 1024, "warps": 4, "stages": 3}  # the fastest at 128K (H200, 2026-12-01)
_TRITON: dict[str, Any] = {}


def decode_attention_reference(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None, scaling: float
) -> torch.Tensor:
    """query: (Hq, 1, D); key, value: (Hkv, L, D); mask: (L,) bool (True: attend) or None (every key).
    Returns (1, Hq, D) in query's dtype; computed in float32."""
    hq, hkv = query.shape[0], key.shape[0]
    k = key.float().repeat_interleave(hq // hkv, 0)
    v = value.float().repeat_interleave(hq // hkv, 0)
    scores = (query.float() @ k.transpose(1, 2)) * scaling  # (Hq, 1, L)
    if mask is not None:
        scores = scores.masked_fill(~mask[None, None], float("-inf"))
    out = torch.softmax(scores, dim=-1) @ v  # (Hq, 1, D)
    return out.transpose(0, 1).to(query.dtype)


def decode_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None, scaling: float
) -> torch.Tensor:
    """The split-K Triton kernel; same arguments and result as `decode_attention_reference`.
    Shapes only decide the launch (chunk size from L), so one CUDA graph serves every step."""
    hq, _, d = query.shape
    hkv, length, _ = key.shape
    group = hq // hkv
    if mask is None:
        mask = torch.ones(length, dtype=torch.bool, device=query.device)
        n_keys = torch.full((1,), length, dtype=torch.int32, device=query.device)
    else:
        # keys up to the last attended one, on the device: the loops stop there, so the unfilled part of a
        # preallocated buffer is never read, and no host sync or branch per block is needed
        positions = torch.arange(1, length + 1, dtype=torch.int32, device=query.device)
        n_keys = torch.where(mask, positions, 0).amax().reshape(1)
    chunks = max(1, min(-(-length // LAUNCH["block"]), -(-LAUNCH["programs"] // hkv)))
    per_chunk = -(-length // chunks)  # ceil division
    chunk = -(-per_chunk // LAUNCH["block"]) * LAUNCH["block"]  # keys per chunk, rounded up to a multiple of the block
    chunks = -(-length // chunk)
    q = query.reshape(hq, d).contiguous()
    part_out = torch.empty(hkv, chunks, group, d, dtype=torch.float32, device=query.device)
    part_max = torch.empty(hkv, chunks, group, dtype=torch.float32, device=query.device)
    part_sum = torch.empty(hkv, chunks, group, dtype=torch.float32, device=query.device)
    out = torch.empty(hq, d, dtype=query.dtype, device=query.device)
    partial_kernel, combine_kernel = _kernels()
    gpad = max(16, 1 << (group - 1).bit_length())
    dpad = max(16, 1 << (d - 1).bit_length())
    partial_kernel[(chunks, hkv)](
        q, key, value, mask.view(torch.uint8), n_keys, part_out, part_max, part_sum,
        chunk, scaling * math.log2(math.e),
        key.stride(0), key.stride(1), value.stride(0), value.stride(1),
        G=group, D=d, GPAD=gpad, DPAD=dpad, BLOCK=LAUNCH["block"], num_warps=LAUNCH["warps"], num_stages=LAUNCH["stages"],
    )
    combine_kernel[(hq,)](part_out, part_max, part_sum, out, chunks, G=group, D=d, DPAD=dpad, CSTEP=16, num_warps=4)
    return out[None]


def decode_kernel_available(device: torch.device) -> bool:
    return device.type == "cuda" and triton_available()


def _kernels():
    if "kernels" in _TRITON:
        return _TRITON["kernels"]
    import triton
    import triton.language as tl

    @triton.jit
    def partial_kernel(
        q_ptr, k_ptr, v_ptr, mask_ptr, n_keys_ptr, out_ptr, max_ptr, sum_ptr,
        chunk, scale_log2, k_stride_h, k_stride_l, v_stride_h, v_stride_l,
        G: tl.constexpr, D: tl.constexpr, GPAD: tl.constexpr, DPAD: tl.constexpr, BLOCK: tl.constexpr,
    ):
        c = tl.program_id(0)
        h = tl.program_id(1)
        chunks = tl.num_programs(0)
        rows = tl.arange(0, GPAD)
        dims = tl.arange(0, DPAD)
        row_ok = rows < G
        dim_ok = dims < D
        q = tl.load(q_ptr + (h * G + rows)[:, None] * D + dims[None, :], mask=row_ok[:, None] & dim_ok[None, :], other=0.0)
        m_i = tl.full([GPAD], float("-inf"), tl.float32)
        l_i = tl.zeros([GPAD], tl.float32)
        acc = tl.zeros([GPAD, DPAD], tl.float32)
        start = c * chunk
        end = tl.minimum(start + chunk, tl.load(n_keys_ptr))
        k_base = k_ptr + h.to(tl.int64) * k_stride_h
        v_base = v_ptr + h.to(tl.int64) * v_stride_h
        for n0 in range(start, end, BLOCK):
            cols = n0 + tl.arange(0, BLOCK)
            keep = (tl.load(mask_ptr + cols, mask=cols < end, other=0) != 0) & (cols < end)
            kv_mask = keep[:, None] & dim_ok[None, :]
            k = tl.load(k_base + cols.to(tl.int64)[:, None] * k_stride_l + dims[None, :], mask=kv_mask, other=0.0)
            s = tl.dot(q, tl.trans(k)) * scale_log2  # (GPAD, BLOCK) float32, base-2 logits
            s = tl.where(keep[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.exp2(s - m_safe[:, None])
            alpha = tl.exp2(m_i - m_safe)
            v = tl.load(v_base + cols.to(tl.int64)[:, None] * v_stride_l + dims[None, :], mask=kv_mask, other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            l_i = l_i * alpha + tl.sum(p, 1)
            m_i = m_new
        base = (h * chunks + c) * G
        tl.store(out_ptr + (base + rows)[:, None] * D + dims[None, :], acc, mask=row_ok[:, None] & dim_ok[None, :])
        tl.store(max_ptr + base + rows, m_i, mask=row_ok)
        tl.store(sum_ptr + base + rows, l_i, mask=row_ok)

    @triton.jit
    def combine_kernel(
        out_part_ptr, max_ptr, sum_ptr, out_ptr, chunks,
        G: tl.constexpr, D: tl.constexpr, DPAD: tl.constexpr, CSTEP: tl.constexpr,
    ):
        # one query head: merges its chunks' partial softmaxes (base-2 log-sum-exp), CSTEP chunks at a time
        hq = tl.program_id(0)
        h = hq // G
        g = hq % G
        dims = tl.arange(0, DPAD)
        dim_ok = dims < D
        m_all = float("-inf")
        for c0 in range(0, chunks, CSTEP):
            cs = c0 + tl.arange(0, CSTEP)
            m = tl.load(max_ptr + (h * chunks + cs) * G + g, mask=cs < chunks, other=float("-inf"))
            m_all = tl.maximum(m_all, tl.max(m, 0))
        m_safe = tl.where(m_all == float("-inf"), 0.0, m_all)
        total = 0.0
        acc = tl.zeros([DPAD], tl.float32)
        for c0 in range(0, chunks, CSTEP):
            cs = c0 + tl.arange(0, CSTEP)
            ok = cs < chunks
            row = (h * chunks + cs) * G + g
            w = tl.exp2(tl.load(max_ptr + row, mask=ok, other=float("-inf")) - m_safe)
            total += tl.sum(w * tl.load(sum_ptr + row, mask=ok, other=0.0), 0)
            part = tl.load(out_part_ptr + row[:, None] * D + dims[None, :], mask=ok[:, None] & dim_ok[None, :], other=0.0)
            acc += tl.sum(w[:, None] * part, 0)
        res = acc / tl.where(total > 0, total, 1.0)
        tl.store(out_ptr + hq * D + dims, res.to(out_ptr.dtype.element_ty), mask=dim_ok)

    _TRITON["kernels"] = (partial_kernel, combine_kernel)
    return partial_kernel, combine_kernel
