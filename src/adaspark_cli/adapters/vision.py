"""A fast Qwen2.5-VL vision tower, attached reversibly without changing checkpoint keys (issue 6, part 1).

Without the flash-attn package, transformers runs the vision tower's windowed attention as one small
SDPA call per window in a Python loop (thousands of calls per block for a long video), recomputes the
window / rotary index work on every call with several host syncs, and round-trips q, k and the RMSNorm
inputs through float32. `fast_vision` binds a `forward` on the vision tower *instance* that:

- runs each block's attention as ONE call over the packed sequence with `cu_seqlens`:
  `torch.nn.attention.varlen.varlen_attn` on CUDA in bf16/fp16 when this torch has it ("varlen");
  elsewhere one SDPA call with a block-diagonal mask built from `cu_seqlens` ("masked", small inputs,
  the CPU tests) or, for long inputs without varlen_attn, the stock per-window loop with precomputed
  split sizes ("loop");
- computes the window permutation, `cu_seqlens`, maximum lengths (Python ints) and the permuted
  rotary cos/sin once per video grid (a small cache keyed by the grid tuple), so the per-block hot path
  has no `.item()` / `.tolist()`; the only host read per call is `grid_thw.tolist()` for the cache key
  (none when `grid_thw` is on the CPU, as the processor returns it);
- applies the rotary embedding in the activations' dtype (cos/sin cast once per grid and dtype) and uses
  `F.rms_norm`, instead of float32 round trips; outputs stay within bf16 rounding of the stock path.

Parameters, buffers and so `state_dict` keys are untouched; `restore_vision` deletes the instance
attributes and the class's forward comes back. Calls that ask for what only the stock forward provides
(`output_attentions`, `output_hidden_states`, precomputed index kwargs, gradient checkpointing in training)
go to the stock forward.
"""

from __future__ import annotations

import inspect
import types
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import AdasparkError
from .arch.base import HFModule

STATE_ATTR = "adaspark_vision"
VISION_CLASS = "Qwen2_5_VisionTransformerPretrainedModel"
BACKENDS = ("auto", "varlen", "masked", "loop")
MASKED_MAX_TOKENS = 1024  # "auto" builds an (L, L) block-diagonal mask only up to this many patches
CACHE_SIZE = 8  # video grids whose index work is kept per tower
# kwargs for which the stock forward is used (it records outputs with hooks or reads precomputed indices)
_STOCK_ONLY = ("output_attentions", "output_hidden_states")
_PRECOMPUTED = ("cu_seqlens", "max_seqlen", "position_ids", "window_index", "cu_window_seqlens", "max_window_seqlen")


def _find_varlen_attn() -> tuple[Callable[..., Any] | None, bool]:
    """torch.nn.attention.varlen.varlen_attn and whether it takes `scale=`; (None, False) if this torch lacks it."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None, False
    try:
        takes_scale = "scale" in inspect.signature(varlen_attn).parameters
    except (TypeError, ValueError):
        takes_scale = False
    return varlen_attn, takes_scale


_VARLEN_ATTN, _VARLEN_TAKES_SCALE = _find_varlen_attn()


def has_varlen_attn() -> bool:
    """Whether this torch has torch.nn.attention.varlen.varlen_attn (the CUDA fast path)."""
    return _VARLEN_ATTN is not None


@dataclass
class Segments:
    """One attention partition of the packed (window-ordered) patch sequence."""

    cu_seqlens: torch.Tensor  # (n + 1,) int32, on the tower's device
    lengths: list[int]  # n segment lengths (host), for the loop backend
    max_len: int
    _masks: dict[torch.device, torch.Tensor] = field(default_factory=dict)

    def mask(self, device: torch.device) -> torch.Tensor:
        """(L, L) bool block-diagonal mask, True inside a segment; built once."""
        if device not in self._masks:
            lengths = torch.tensor(self.lengths, device=device)
            seg = torch.repeat_interleave(torch.arange(len(self.lengths), device=device), lengths)
            self._masks[device] = seg[:, None] == seg[None, :]
        return self._masks[device]


@dataclass
class GridPlan:
    """Everything about one `grid_thw` that does not depend on the pixels."""

    seq_len: int  # patches
    window_index: torch.Tensor  # (seq_len / merge_unit,) long: merge units in window order
    reverse_index: torch.Tensor  # its inverse permutation
    window: Segments
    full: Segments
    cos: torch.Tensor  # (seq_len, head_dim) float32, window order
    sin: torch.Tensor
    _rope: dict[torch.dtype, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    def rope(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and signed sin as (seq_len, 1, head_dim) in `dtype`: x_rot = x * cos + swap_halves(x) * sin_signed."""
        if dtype not in self._rope:
            half = self.sin.shape[-1] // 2
            sin_signed = torch.cat([-self.sin[:, :half], self.sin[:, half:]], dim=-1)
            self._rope[dtype] = (self.cos.to(dtype)[:, None, :], sin_signed.to(dtype)[:, None, :])
        return self._rope[dtype]


class VisionState:
    """Per-tower settings and the per-grid cache."""

    def __init__(self, backend: str = "auto") -> None:
        self.backend = backend
        self.plans: OrderedDict[tuple[Any, ...], GridPlan] = OrderedDict()
        self.last_backend: str | None = None  # what the last fast call ran ("varlen", "masked", "loop")

    def choose_backend(self, device: torch.device, dtype: torch.dtype, seq_len: int) -> str:
        if self.backend not in BACKENDS:
            raise AdasparkError(f"unknown vision attention backend {self.backend!r}; use one of {', '.join(BACKENDS)}")
        if self.backend == "varlen" and not self.varlen_ok(device, dtype):
            raise AdasparkError(
                "the varlen vision attention needs CUDA, bf16/fp16 and torch.nn.attention.varlen (torch >= 2.10); "
                "use backend 'auto'"
            )
        if self.backend != "auto":
            return self.backend
        if self.varlen_ok(device, dtype):
            return "varlen"
        return "masked" if seq_len <= MASKED_MAX_TOKENS else "loop"

    @staticmethod
    def varlen_ok(device: torch.device, dtype: torch.dtype) -> bool:
        return _VARLEN_ATTN is not None and device.type == "cuda" and dtype in (torch.float16, torch.bfloat16)


def vision_tower(model: HFModule) -> nn.Module:
    """The Qwen2.5-VL vision tower of a full model (model.model.visual), or the tower itself."""
    tower = model if type(model).__name__ == VISION_CLASS else getattr(getattr(model, "model", None), "visual", None)
    if tower is None or type(tower).__name__ != VISION_CLASS:
        found = type(tower).__name__ if tower is not None else f"{type(model).__name__} without model.visual"
        raise AdasparkError(f"fast_vision supports the Qwen2.5-VL vision tower ({VISION_CLASS}); got {found}")
    return tower


def fast_vision(model: HFModule, backend: str = "auto") -> None:
    """Make the vision tower of `model` (a Qwen2.5-VL model or its tower) run the fast forward; idempotent.

    `backend`: "auto" (varlen_attn on CUDA in bf16/fp16, else a masked SDPA up to 1024 patches, else the
    per-window loop), or one of "varlen", "masked", "loop" to force it.
    """
    tower = vision_tower(model)
    if backend not in BACKENDS:
        raise AdasparkError(f"unknown vision attention backend {backend!r}; use one of {', '.join(BACKENDS)}")
    state = getattr(tower, STATE_ATTR, None)
    if state is None:
        state = VisionState(backend)
        setattr(tower, STATE_ATTR, state)
    state.backend = backend
    tower.forward = types.MethodType(fast_vision_forward, tower)


def restore_vision(model: HFModule) -> None:
    """Undo `fast_vision`: the class's forward (and its per-call index work) comes back."""
    tower = vision_tower(model)
    tower.__dict__.pop("forward", None)
    tower.__dict__.pop(STATE_ATTR, None)


def vision_state(model: HFModule) -> VisionState | None:
    return getattr(vision_tower(model), STATE_ATTR, None)


# ----------------------------------------------------------------------------------------------
# per-grid index work (host side, once per grid); the same layout as transformers' vision_utils


def _grid_plan(tower: HFModule, grid: tuple[tuple[int, int, int], ...], device: torch.device) -> GridPlan:
    merge = int(tower.spatial_merge_size)
    unit = merge * merge
    window_merge = int(tower.window_size) // merge // int(tower.patch_size)  # merge units per window side

    positions, window_index, window_lengths, full_lengths = [], [], [], []
    offset = 0
    for t, h, w in grid:
        if h % merge or w % merge:
            raise AdasparkError(f"video grid {t}x{h}x{w} is not a multiple of the spatial merge size {merge}")
        # (h, w) position of each patch, merge-block major, repeated per temporal slice
        hpos = torch.arange(h)[:, None].expand(h, w)
        wpos = torch.arange(w)[None, :].expand(h, w)
        block = (h // merge, merge, w // merge, merge)
        hw = torch.stack([p.reshape(block).transpose(1, 2).flatten() for p in (hpos, wpos)], -1)
        positions.append(hw.repeat(t, 1))
        # merge units of each frame regrouped into windows of window_merge x window_merge (edge windows smaller)
        lh, lw = h // merge, w // merge
        index = torch.arange(t * lh * lw).reshape(t, lh, lw)
        pad_h, pad_w = -lh % window_merge, -lw % window_merge
        nh, nw = (lh + pad_h) // window_merge, (lw + pad_w) // window_merge
        padded = F.pad(index, (0, pad_w, 0, pad_h), value=-1)
        padded = padded.reshape(t, nh, window_merge, nw, window_merge).permute(0, 1, 3, 2, 4).reshape(t, nh * nw, -1)
        counts = (padded >= 0).sum(-1).flatten()
        flat = padded.flatten()
        window_index.append(flat[flat >= 0] + offset)
        window_lengths += [int(c) * unit for c in counts.tolist() if c > 0]
        full_lengths += [h * w] * t
        offset += t * lh * lw

    win_index = torch.cat(window_index)
    seq_len = offset * unit

    def segments(lengths: list[int]) -> Segments:
        cu = torch.tensor([0, *lengths], dtype=torch.int64).cumsum(0).to(torch.int32)
        return Segments(cu.to(device), lengths, max(lengths))

    rotary = tower.rotary_pos_emb
    inv_freq = rotary.inv_freq.to(device=device, dtype=torch.float32)
    pos = torch.cat(positions).to(device)
    freqs = pos[..., None].float() * inv_freq  # (L, 2, head_dim / 4): rows h and w
    freqs = torch.cat([freqs[:, 0], freqs[:, 1]], dim=-1)
    freqs = torch.cat([freqs, freqs], dim=-1)  # (L, head_dim)
    scaling = float(getattr(rotary, "attention_scaling", 1.0))
    win_index = win_index.to(device)

    def permute(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(seq_len // unit, unit, -1)[win_index].reshape(seq_len, -1)

    return GridPlan(
        seq_len=seq_len,
        window_index=win_index,
        reverse_index=torch.argsort(win_index),
        window=segments(window_lengths),
        full=segments(full_lengths),
        cos=permute(freqs.cos() * scaling),
        sin=permute(freqs.sin() * scaling),
    )


def _cached_plan(tower: HFModule, state: VisionState, grid_thw: torch.Tensor, device: torch.device) -> GridPlan:
    grid = tuple((int(t), int(h), int(w)) for t, h, w in grid_thw.tolist())  # the one host read per call
    key = (grid, device)
    plan = state.plans.get(key)
    if plan is None:
        plan = _grid_plan(tower, grid, device)
        state.plans[key] = plan
        while len(state.plans) > CACHE_SIZE:
            state.plans.popitem(last=False)
    else:
        state.plans.move_to_end(key)
    return plan


# ----------------------------------------------------------------------------------------------
# the forward


def fast_vision_forward(self: HFModule, hidden_states: torch.Tensor, grid_thw: torch.Tensor, **kwargs: Any) -> Any:
    """Bound on the vision tower: the stock forward's result (BaseModelOutputWithPooling), fewer launches and syncs."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    state: VisionState = getattr(self, STATE_ATTR)
    needs_stock = (
        any(kwargs.get(k) for k in _STOCK_ONLY)
        or any(kwargs.get(k) is not None for k in _PRECOMPUTED)
        or any(getattr(self.config, k, False) for k in _STOCK_ONLY)
        or (self.gradient_checkpointing and self.training and torch.is_grad_enabled())
    )
    if needs_stock:
        return type(self).forward(self, hidden_states, grid_thw, **kwargs)
    return_dict = kwargs.get("return_dict")
    if return_dict is None:
        return_dict = getattr(self.config, "return_dict", True)

    embed = self.patch_embed
    weight = embed.proj.weight  # (hidden, C, T, P, P): a Conv3d whose stride is its kernel is a matmul
    device, dtype = weight.device, weight.dtype
    x = F.linear(hidden_states.to(device=device, dtype=dtype).reshape(-1, weight[0].numel()), weight.flatten(1))
    plan = _cached_plan(self, state, grid_thw, device)
    if x.shape[0] != plan.seq_len:
        raise AdasparkError(f"{x.shape[0]} patches given for video grids holding {plan.seq_len}")
    unit = plan.seq_len // plan.window_index.numel()
    x = x.reshape(-1, unit * x.shape[-1])[plan.window_index].reshape(plan.seq_len, -1)

    compute = _compute_dtype(device, dtype)
    backend = state.choose_backend(device, compute, plan.seq_len)
    state.last_backend = backend
    cos, sin = plan.rope(compute)
    full_blocks = set(self.fullatt_block_indexes)
    for i, block in enumerate(self.blocks):
        segments = plan.full if i in full_blocks else plan.window
        attn = block.attn
        x = x + attn.proj(_attention(attn, _rms_norm(block.norm1, x), segments, cos, sin, backend))
        x = x + block.mlp(_rms_norm(block.norm2, x))

    merged = self.merger(x)[plan.reverse_index]
    out = BaseModelOutputWithPooling(last_hidden_state=x, pooler_output=merged)
    return out if return_dict else out.to_tuple()


def _compute_dtype(device: torch.device, weight_dtype: torch.dtype) -> torch.dtype:
    """The dtype the blocks really run in: autocast's where it is on (training keeps float32 weights and
    autocasts to bf16, so the tower's activations are bf16 and varlen attention applies)."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return weight_dtype


def _rms_norm(norm: HFModule, x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.shape[-1],), norm.weight, norm.variance_epsilon)


def _attention(
    attn: HFModule, x: torch.Tensor, segments: Segments, cos: torch.Tensor, sin_signed: torch.Tensor, backend: str
) -> torch.Tensor:
    """Rotary + block-diagonal attention of one block over the packed sequence; (L, hidden) before `proj`."""
    n = x.shape[0]
    heads = attn.num_heads
    qkv = attn.qkv(x).view(n, 3, heads, -1)
    d = qkv.shape[-1]
    half = d // 2
    qk = qkv[:, :2].transpose(0, 1)  # (2, L, H, D) view
    # rotary in the activations' dtype: out = qk * cos + swap_halves(qk) * sin_signed
    if torch.is_grad_enabled() and qk.requires_grad:  # autograd: no out= / in-place writes
        swapped = torch.cat([qk[..., half:], qk[..., :half]], dim=-1)
        rot = (qk * cos + swapped * sin_signed).contiguous()
    else:  # three kernels into one (2, L, H, D) buffer, no copies of qk
        rot = torch.empty((2, n, heads, d), device=x.device, dtype=x.dtype)
        torch.mul(qk, cos, out=rot)
        rot[..., :half].addcmul_(qk[..., half:], sin_signed[..., :half])
        rot[..., half:].addcmul_(qk[..., :half], sin_signed[..., half:])
    q, k, v = rot[0], rot[1], qkv[:, 2]
    scale = float(attn.scaling)

    if backend == "varlen":
        cu = segments.cu_seqlens
        v = v.contiguous()
        if _VARLEN_TAKES_SCALE:
            out = _VARLEN_ATTN(q, k, v, cu, cu, segments.max_len, segments.max_len, scale=scale)  # type: ignore[misc]
        else:  # older varlen_attn: always head_dim ** -0.5 (the tower's own scale)
            if abs(scale * d**0.5 - 1.0) > 1e-6:
                q = q * (scale * d**0.5)
            out = _VARLEN_ATTN(q, k, v, cu, cu, segments.max_len, segments.max_len)  # type: ignore[misc]
        return out.reshape(n, -1)
    if backend == "masked":
        q, k, v = (t.transpose(0, 1)[None] for t in (q, k, v))  # (1, H, L, D)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=segments.mask(x.device), scale=scale)
        return out[0].transpose(0, 1).reshape(n, -1)
    # loop: the stock per-window SDPA calls, with split sizes from the cache
    q, k, v = (t.transpose(0, 1)[None] for t in (q, k, v))  # (1, H, L, D)
    outs = [
        F.scaled_dot_product_attention(qs, ks, vs, scale=scale)
        for qs, ks, vs in zip(*(t.split(segments.lengths, dim=2) for t in (q, k, v)), strict=True)
    ]
    return torch.cat(outs, dim=2)[0].transpose(0, 1).reshape(n, -1)
