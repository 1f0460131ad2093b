"""Attach AdaSpark to a transformers video LLM (adapters/arch/), reversibly, without changing checkpoint keys.

- Attention: a function registered with transformers' AttentionInterface under "adaspark" (with
  sdpa's mask function under the same name, or causality would be silently dropped), set for the
  language model only; the vision tower keeps its own implementation.
- FFN: each language-model MLP instance (a routed expert block in an MoE model, taken as a whole) gets
  a `forward` bound on the instance, so parameter names (and so `save_pretrained` / `from_pretrained`)
  are unchanged; deleting it restores the class's.
- Where the layers are, and which FFNs stay dense, is the architecture's (`arch.architecture_of`).
- Per-request data (cube layout, position offset, statistics) lives on one `SparseState` that every layer
  holds as a plain attribute, because `generate` rejects unknown forward kwargs.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..attention.decode import MAX_QUERIES, decode_attention, decode_kernel_available
from ..attention.kernels import IMPLEMENTATIONS, check_kernel, per_token, resolve_kernel, runs_dense
from ..config import AdaSparkConfig
from ..cubes import CubeLayout
from ..cubes.plan import BlockPlan, build_plan
from ..errors import AdasparkError
from ..ffn.fast import adas_ffn_auto
from ..ffn.reference import adas_ffn_gathered
from ..selection import Selection, select_per_block, select_per_token, with_blocks
from ..stats.collect import PrefillStats
from .arch import SUPPORTED_CLASSES, architecture_of
from .arch.base import HFModule

ATTN_NAME = "adaspark"
STATE_ATTR = "adaspark_state"
__all__ = ["SUPPORTED_CLASSES", "Settings", "SparseState", "adaspark_attention", "sparse_state", "sparsify", "unsparsify"]


@dataclass(frozen=True)
class Settings:
    """How the patched layers run: replaced as a whole, only through `SparseState.override`."""

    config: AdaSparkConfig
    enabled: bool = True  # False: the unmodified model (dense statistics are still recorded)
    kernel: str = "auto"  # attention.kernels.KERNELS
    heatmap_layer: int | None = None  # this layer runs the reference and keeps its per-query selections
    dense_fallback: bool = True  # a layer whose selection comes out near-dense runs dense SDPA
    # benchmarks only: replaces each sparse layer's top-p selection, (plan, layer index, KV heads) -> Selection
    selection_hook: Callable[[BlockPlan, int, int], Selection] | None = None
    # layers whose FFN stays dense in a sparse layer (the architecture's: Qwen3-VL's DeepStack layers)
    dense_ffn_layers: frozenset[int] = frozenset()


class SparseState:
    """What the patched layers read during a forward: the settings, the current layout and counters."""

    def __init__(self, settings: Settings, vision_attn: str) -> None:
        check_kernel(settings.kernel)
        self.settings = settings
        self.vision_attn = vision_attn
        self.layout: CubeLayout | None = None
        self.offset = 0  # absolute position of the first token of the current forward
        self.stats: PrefillStats | None = None

    @property
    def config(self) -> AdaSparkConfig:
        return self.settings.config

    @property
    def enabled(self) -> bool:
        return self.settings.enabled

    @contextmanager
    def override(self, **changes: Any) -> Iterator[Settings]:
        """Run the block with some settings replaced (`Settings` field names); restored afterwards."""
        before = self.settings
        if "kernel" in changes:
            check_kernel(changes["kernel"])
        self.settings = dataclasses.replace(before, **changes)
        try:
            yield self.settings
        finally:
            self.settings = before

    def kernel_for(self, device: torch.device) -> str:
        """The attention implementation the settings mean on `device` (attention.kernels)."""
        return resolve_kernel(self.settings.kernel, device)

    def fast_path(self, device: torch.device) -> bool:
        """Whether the prefill takes the block FFN (any kernel but the reference)."""
        return self.kernel_for(device) != "reference"

    def layer_is_sparse(self, layer_idx: int) -> bool:
        return self.enabled and self.config.is_layer_sparse(layer_idx)

    def ffn_is_sparse(self, layer_idx: int) -> bool:
        return self.layer_is_sparse(layer_idx) and layer_idx not in self.settings.dense_ffn_layers

    @contextmanager
    def forward_context(
        self,
        *,
        layout: CubeLayout | None,
        offset: int,
        stats: PrefillStats | None,
    ) -> Iterator[None]:
        """Set what the next forward call covers; always cleared afterwards."""
        self.layout, self.offset, self.stats = layout, offset, stats
        try:
            yield
        finally:
            self.layout, self.offset, self.stats = None, 0, None


def language_layers(model: HFModule) -> nn.ModuleList:
    return architecture_of(model).language_layers(model)


def check_supported(model: HFModule) -> None:
    architecture_of(model)  # a one-line CheckpointError naming the supported classes


def register_attention() -> None:
    """Register the attention and mask functions (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTN_NAME, adaspark_attention)
    AttentionMaskInterface.register(ATTN_NAME, sdpa_mask)


def sparsify(model: HFModule, config: AdaSparkConfig, *, enabled: bool = True, kernel: str = "auto") -> SparseState:
    """Make the language model of `model` sparse with `config`; returns the shared state.

    Calling it again replaces the settings. `enabled=False` (or `state.override(enabled=False)`) runs
    the unmodified model. kernel: one of attention.kernels.KERNELS.
    """
    arch = architecture_of(model)
    settings = Settings(config=config, enabled=enabled, kernel=kernel, dense_ffn_layers=arch.dense_ffn_layers(model))
    existing = sparse_state(model)
    if existing is not None:
        check_kernel(kernel)
        existing.settings = settings
        return existing
    layers: HFModule = arch.language_layers(model)  # decoder layers: .self_attn, .mlp
    if config.sparse_layers is not None and any(i >= len(layers) for i in config.sparse_layers):
        raise AdasparkError(
            f"sparse layers {list(config.sparse_layers)} include an index past the model's {len(layers)} layers; "
            f"use indices 0-{len(layers) - 1}"
        )
    register_attention()
    vision_attn = model.config.vision_config._attn_implementation or "sdpa"
    state = SparseState(settings, vision_attn)
    for i, layer in enumerate(layers):
        setattr(layer.self_attn, STATE_ATTR, state)
        setattr(layer.mlp, STATE_ATTR, state)
        layer.mlp.adaspark_layer_idx = i
        layer.mlp.forward = types.MethodType(sparse_mlp_forward, layer.mlp)
    model.set_attn_implementation({"text_config": ATTN_NAME, "vision_config": vision_attn})
    setattr(model, STATE_ATTR, state)
    return state


def unsparsify(model: HFModule) -> None:
    """Undo `sparsify`: the class's own MLP forward and SDPA attention come back."""
    state = sparse_state(model)
    if state is None:
        return
    for layer in language_layers(model):
        layer.mlp.__dict__.pop("forward", None)
        layer.mlp.__dict__.pop("adaspark_layer_idx", None)
        for module in (layer.self_attn, layer.mlp):
            module.__dict__.pop(STATE_ATTR, None)
    model.set_attn_implementation({"text_config": "sdpa", "vision_config": state.vision_attn})
    model.__dict__.pop(STATE_ATTR, None)


def sparse_state(model: HFModule) -> SparseState | None:
    return getattr(model, STATE_ATTR, None)


def _sdpa(module: HFModule, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: Any, **kwargs: Any) -> Any:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(module, query, key, value, mask, **kwargs)


def adaspark_attention(
    module: HFModule,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers attention function. query: (B, Hq, Lq, D); key/value: (B, Hkv, Lk, D), cache included.

    Sparse where the call's queries include video tokens of the current layout (the video prefill):
    one selection step, then the implementation the settings pick, both given the same block plan;
    the statistics count the selection afterwards. Question tokens and decode steps attend densely: on
    CUDA through kernels that read each cached key once (attention/decode.py),
    elsewhere through SDPA.
    Returns (B, Lq, Hq, D).
    """
    state: SparseState | None = getattr(module, STATE_ATTR, None)
    layout = state.layout if state is not None else None
    lq, lk = query.shape[2], key.shape[2]
    scaling = module.scaling if scaling is None else scaling
    record = state.stats.layer(module.layer_idx) if state is not None and state.stats is not None else None
    has_video = layout is not None and lk <= layout.seq_len and bool(layout.is_video[lk - lq : lk].any())

    def dense() -> tuple[torch.Tensor, None]:
        return _sdpa(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)

    if not has_video:
        if record is not None:
            record.queries += lq
            record.text_query_keys += lq * (2 * lk - lq + 1) // 2  # sum of causal keys of positions lk-lq .. lk-1
        # a decode step or a question's tokens over a long cache: each cached key read once (CUDA)
        if query.shape[0] == 1 and lq <= MAX_QUERIES and decode_kernel_available(query.device):
            out = decode_attention(query[0], key[0], value[0], _query_mask(attention_mask, lq, lk), scaling)
            return out[None], None
        return dense()
    plan = build_plan(layout, lq, lk, device=query.device)  # type: ignore[arg-type]
    if not state.layer_is_sparse(module.layer_idx):  # type: ignore[union-attr]
        if record is not None:
            record.add_attention(plan, None, key.shape[1])
        return dense()
    settings = state.settings  # type: ignore[union-attr]
    top_p = settings.config.attn_top_p_for(module.layer_idx)
    heatmap = settings.heatmap_layer == module.layer_idx
    kernel = "reference" if heatmap else state.kernel_for(query.device)  # type: ignore[union-attr]
    batched = query.shape[0] != 1
    if batched and not _batch_allowed(state, kernel, record):  # type: ignore[arg-type]
        raise AdasparkError(BATCH_ERROR.format(op="AdaS-Attn"))
    # the reference takes the batch as it is (training); every other path one sequence
    q, k, v = (query, key, value) if batched else (query[0], key[0], value[0])
    if settings.selection_hook is not None:
        selection = with_blocks(settings.selection_hook(plan, module.layer_idx, k.shape[0]), plan)
    elif per_token(kernel):
        selection = select_per_token(q, k, plan, top_p, scaling)
    else:
        selection = select_per_block(q, k, plan, top_p, scaling)
    fallback = kernel != "reference" and settings.dense_fallback and runs_dense(plan, selection, query.device)
    if record is not None:
        record.sparse, record.dense_fallback, record.kernel = True, fallback, "sdpa" if fallback else kernel
        # a dense-fallback layer attends every candidate: counted as such
        record.add_attention(plan, None if fallback else selection, key.shape[1], keep_selection=heatmap)
    if fallback:
        return dense()
    out = IMPLEMENTATIONS[kernel](q, k, v, plan, selection, scaling)
    return (out if batched else out[None]), None


# A batch shares one layout (right-padded sequences of one video length); statistics and the fast
# kernels count and run one sequence.
BATCH_ERROR = ("{op} runs one sequence at a time, except with the reference kernel and no statistics "
               "(the training fine-tune); got a batch of several")


def _batch_allowed(state: SparseState, kernel: str, record: Any) -> bool:
    return kernel == "reference" and record is None and state.settings.selection_hook is None


def _query_mask(attention_mask: Any, lq: int, lk: int) -> torch.Tensor | None:
    """transformers' boolean mask (B, 1, lq, lk) as (lq, lk), or None (causal)."""
    if attention_mask is None:
        return None
    if attention_mask.dtype != torch.bool:  # an additive float mask: 0 where attended
        attention_mask = attention_mask == 0
    return attention_mask[0, 0].expand(lq, lk)


def sparse_mlp_forward(self: HFModule, x: torch.Tensor) -> torch.Tensor:
    """Bound on each language-model MLP: AdaS-FFN over the video rows of the current layout."""
    class_forward = type(self).forward.__get__(self)

    def dense_forward(rows: torch.Tensor) -> torch.Tensor:
        # the AdaS-FFN paths pass (rows, hidden); an MoE block takes (batch, seq, hidden) only
        return class_forward(rows[None])[0] if rows.dim() == 2 else class_forward(rows)

    state: SparseState = getattr(self, STATE_ATTR)
    layout = state.layout
    layer_idx = getattr(self, "adaspark_layer_idx", None)
    record = state.stats.layer(layer_idx) if state.stats is not None and layer_idx is not None else None
    length = x.shape[1]
    start, end = state.offset, state.offset + length
    host_cube = layout.cube_of_token[start:end] if layout is not None and end <= layout.seq_len else None
    video_rows = int((host_cube >= 0).sum()) if host_cube is not None else 0  # the layout is on the host: no sync
    if video_rows == 0 or layer_idx is None or not state.ffn_is_sparse(layer_idx):
        if record is not None:
            record.add_ffn(rows=length * x.shape[0] - video_rows, video=video_rows, kept=video_rows)
        return dense_forward(x)
    top_p = state.config.ffn_top_p_for(layer_idx)
    if x.shape[0] != 1:
        if not _batch_allowed(state, state.kernel_for(x.device), record):
            raise AdasparkError(BATCH_ERROR.format(op="AdaS-FFN"))
        return _adas_ffn_batch(dense_forward, x, host_cube.to(x.device), layout.num_cubes, top_p)  # type: ignore[union-attr]
    if state.fast_path(x.device):
        out, keep = adas_ffn_auto(dense_forward, x[0], layout, host_cube, top_p)  # type: ignore[arg-type]
    else:
        out, keep = adas_ffn_gathered(dense_forward, x[0], host_cube.to(x.device), layout.num_cubes, top_p)  # type: ignore[union-attr]
    if record is not None:
        record.sparse = True
        record.add_ffn(rows=length - video_rows, video=video_rows, kept=keep.sum())
    return out[None]


def _adas_ffn_batch(ffn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, token_cube: torch.Tensor,
                    num_cubes: int, top_p: float) -> torch.Tensor:
    """AdaS-FFN over (B, L, D) sequences sharing one layout: the rows laid end to end with each sequence's
    cubes numbered apart, so that the gathered path keeps and compensates every sequence's cubes alone."""
    b, length, width = x.shape
    offsets = torch.arange(b, device=x.device)[:, None] * num_cubes
    cubes = torch.where(token_cube >= 0, token_cube[None, :] + offsets, -1).reshape(-1)
    out, _ = adas_ffn_gathered(ffn, x.reshape(b * length, width), cubes, b * num_cubes, top_p)
    return out.reshape(b, length, -1)
