"""The selection's query rows in tile order, cast to float16, in one pass (CUDA, Triton).

`select._select_triton` scores the selectable query rows in the block plan's tile order with one
float16 GEMM per chunk. torch gathers the rows (`index_select`) and casts them (`.to`) in two passes
over the projections; the cast alone took 1.4 ms of a 10.4 ms selection at 128K video tokens (H200,
2026-12-01), more than the gather. Here each program copies whole token rows (all heads) once.
"""

from __future__ import annotations

from typing import Any

import torch

_TRITON: dict[str, Any] = {}
ROW_BLOCK = 4096  # elements a program copies per step (a 7B model's row: 28 heads x 128 = 3,584)


def gather_rows_fp16_reference(rows_major: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """rows_major: (L, ...) token-major; rows: (N,) int64 indices. Returns (N, ...) float16."""
    return rows_major.index_select(0, rows).to(torch.float16)


def gather_rows_fp16(rows_major: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """`gather_rows_fp16_reference` in one Triton pass; rows_major's rows must be contiguous (any row stride)."""
    width = rows_major[0].numel()
    try:
        flat = rows_major.view(rows_major.shape[0], width)
    except RuntimeError:  # rows not contiguous in memory (a head-major tensor): torch's two passes
        return gather_rows_fp16_reference(rows_major, rows)
    out = torch.empty(rows.numel(), width, dtype=torch.float16, device=rows_major.device)
    _kernel()[(rows.numel(),)](flat, rows, out, flat.stride(0), width, BLOCK=min(ROW_BLOCK, 1 << (width - 1).bit_length()))
    return out.view(rows.numel(), *rows_major.shape[1:])


def _kernel():
    if "kernel" in _TRITON:
        return _TRITON["kernel"]
    import triton
    import triton.language as tl

    @triton.jit
    def gather_cast_kernel(src_ptr, rows_ptr, out_ptr, src_stride, width, BLOCK: tl.constexpr):
        i = tl.program_id(0)
        src = src_ptr + tl.load(rows_ptr + i).to(tl.int64) * src_stride
        dst = out_ptr + i.to(tl.int64) * width
        for start in range(0, width, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            ok = cols < width
            tl.store(dst + cols, tl.load(src + cols, mask=ok).to(tl.float16), mask=ok)

    _TRITON["kernel"] = gather_cast_kernel
    return gather_cast_kernel
