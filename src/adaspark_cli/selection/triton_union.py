"""Fused CUDA selection kernel (Triton): softmax over candidate cubes, KV-group head mean, nucleus by
bisection on the probability threshold, union over the query block's rows, in one pass over the
float16 scores; each program ORs its rows' union into the result once. The exact sort-based
selection in `select.py` is its reference.

Bisection aims at mass p + 1e-4 so that float rounding errs towards more cubes, and keeps the lower
end of its last interval (12 halvings: within max p / 4096 of the threshold), so it never keeps fewer
cubes than the nucleus needs; float16 scores can still move a cube that sits exactly on the nucleus
boundary (H200 checks, 32K-128K tokens: 0 missing, 0 extra against the float32 exact union; one cube
in 315 missing in a CPU-interpreter test, which allows 1%).
"""

from __future__ import annotations

from typing import Any

TOP_P_SLACK = 1e-4  # the bisection nucleus aims at mass p + slack, so float rounding errs towards more cubes

# Up to 512 candidate cubes, one warp per program keeps a row's reductions (softmax, each bisection step)
# within the warp and many programs per SM hide their latency: 1.00 / 2.99 ms a selection against 1.07 /
# 3.58 ms with 4 warps and 4,096 programs at 32K / 64K video tokens; at 1,024 cubes (128K tokens) a row no
# longer fits one warp's registers: 15.2 ms against 9.0 (H200, benchmarks/profile_selection.py, 2026-12-02)
ONE_WARP_MAX_CUBES = 512
MIN_PROGRAMS = 4096  # about 30 per SM of an H200: keeps every SM busy while each program keeps its union
_TRITON: dict[str, Any] = {}


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:  # pragma: no cover - no triton
        return False
    return True


def _get_kernel():
    if "kernel" in _TRITON:
        return _TRITON["kernel"]
    import triton
    import triton.language as tl

    @triton.jit
    def nucleus_union_kernel(
        logits_ptr, cand_ptr, valid_ptr, out_ptr, top_p, n_tok, ccp, out_stride_h, out_stride_b,
        G: tl.constexpr, BLOCK: tl.constexpr, ROWS: tl.constexpr, BLOCK_T: tl.constexpr, CPAD: tl.constexpr,
        ITERS: tl.constexpr,
    ):
        # one program: ROWS rows of one query block, one KV head, BLOCK_T rows at a time; the union stays
        # in registers and is OR-ed into out once (one atomic per program and column: an atomic per
        # BLOCK_T rows made the atomics the kernel's bottleneck)
        blk = tl.program_id(0)
        h = tl.program_id(1)
        part = tl.program_id(2)
        cand = tl.load(cand_ptr + blk)
        cols = tl.arange(0, CPAD)
        cmask = cols < cand
        union = tl.zeros([CPAD], dtype=tl.int32)
        for sub in range(0, ROWS // BLOCK_T):
            rows = blk * BLOCK + part * ROWS + sub * BLOCK_T + tl.arange(0, BLOCK_T)
            valid = tl.load(valid_ptr + rows) != 0
            p = tl.zeros([BLOCK_T, CPAD], dtype=tl.float32)
            for g in tl.static_range(G):
                base = (h * G + g).to(tl.int64) * n_tok
                ptrs = logits_ptr + (base + rows[:, None]) * ccp + cols[None, :]
                x = tl.load(ptrs, mask=cmask[None, :], other=float("-inf")).to(tl.float32)
                m = tl.max(x, 1)
                e = tl.exp(x - m[:, None])
                e = tl.where(cmask[None, :], e, 0.0)
                p += e * (1.0 / tl.sum(e, 1))[:, None]
            p = p * (1.0 / G)
            lo = tl.zeros([BLOCK_T], dtype=tl.float32)
            hi = tl.max(p, 1)
            for _ in range(ITERS):
                mid = (lo + hi) * 0.5
                s = tl.sum(tl.where(p >= mid[:, None], p, 0.0), 1)
                ok = s >= top_p
                lo = tl.where(ok, mid, lo)
                hi = tl.where(ok, hi, mid)
            s_hi = tl.sum(tl.where(p >= hi[:, None], p, 0.0), 1)
            thr = tl.where(s_hi >= top_p, hi, lo)
            keep = (p >= thr[:, None]) & cmask[None, :] & valid[:, None]
            union = tl.maximum(union, tl.max(keep.to(tl.int32), 0))
        dst = out_ptr + h.to(tl.int64) * out_stride_h + blk.to(tl.int64) * out_stride_b + cols
        tl.atomic_or(dst, union, mask=cmask & (union != 0))

    _TRITON["kernel"] = nucleus_union_kernel
    return nucleus_union_kernel


def launch_union(
    logits, cand, valid, out, top_p: float, group: int, block: int, *,
    rows_per_step: int = 1, num_warps: int | None = None, iters: int = 12, min_programs: int | None = None,
) -> None:
    """logits: (Hq, n, ccp) float16 scaled, n = nb*block; cand: (nb,) int32; valid: (n,) int8;
    out: (Hkv, nb, >= ccp) int32 view, zeros, OR-ed into. The keywords are launch choices (benchmarks
    sweep them: benchmarks/profile_selection.py); the defaults are the measured best (one row per step at
    any width; warps and programs by width, ONE_WARP_MAX_CUBES)."""
    import triton

    kernel = _get_kernel()
    hq, n, ccp = logits.shape
    hkv, nb = out.shape[0], out.shape[1]
    cpad = triton.next_power_of_2(max(ccp, 16))
    one_warp = cpad <= ONE_WARP_MAX_CUBES
    if num_warps is None:
        num_warps = 1 if one_warp else 4
    if min_programs is None:
        min_programs = 4 * MIN_PROGRAMS if one_warp else MIN_PROGRAMS
    block_t = max(1, min(16, rows_per_step, block & -block))  # a power of two that divides block
    parts = 1  # programs per block: enough of them to fill the card, each with as many rows as it can
    while parts * 2 * block_t <= block and nb * hkv * parts < min_programs:
        parts *= 2
    kernel[(nb, hkv, parts)](
        logits, cand, valid, out, min(1.0, float(top_p) + TOP_P_SLACK), n, ccp, out.stride(0), out.stride(1),
        G=group, BLOCK=block, ROWS=block // parts, BLOCK_T=block_t, CPAD=cpad, ITERS=iters, num_warps=num_warps,
    )
