"""Profile one prefill dense and with AdaSpark on the same model object and the same prompt.

What is compared (method.md section 5):
- per layer: cubes available and attended per video query, attention density, FFN rows kept, and the
  analytic FLOPs (attention, FFN, rest, scoring) of the dense model and of AdaSpark on this input;
- totals: FLOPs reduction, measured prefill time (video prefix + question, vision encoder included),
  peak memory, and fidelity of the logits (see `Fidelity`);
- for one layer, how often each cube was selected (a time x space heatmap of where the model looked).

Dense runs use `state.override(enabled=False)` on the same sparsified model, so nothing is loaded twice.
"""

from __future__ import annotations

import math
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from ..config import AdaSparkConfig
from ..cubes import CubeLayout
from ..errors import AdasparkError
from ..stats import ModelDims, PrefillStats, flops_summary, layer_flops
from ..video import DecodedVideo
from .preprocess import sync_device
from .session import DEFAULT_MAX_PIXELS, VideoPrompt, VideoQA, layer_rows

DEFAULT_QUESTION = "Describe the video."
# (warm-up, timed) runs per mode; the first warm-up is the run that collects statistics and logits.
CUDA_WARMUP, CUDA_REPEATS = 3, 5
CPU_WARMUP, CPU_REPEATS = 1, 1

Progress = Callable[[str, int, int], None]  # (what runs now, runs done, runs in all)


@dataclass(frozen=True)
class Fidelity:
    """How far AdaSpark moved the logits from dense on the same prompt.

    Compared positions: the n tokens of the question part of the prompt (everything after
    <|vision_end|>: the question text, <|im_end|> and the assistant header); row i predicts token i + 1,
    so the last row is the distribution of the first answer token.
    kl: KL(dense || sparse) in nats of the first answer token's distribution.
    kl_mean: the same KL averaged over the n positions.
    top1_agreement: fraction of the n positions whose argmax token is the same dense and sparse.
    """

    kl: float
    kl_mean: float
    top1_agreement: float
    positions: int
    first_token_dense: int
    first_token_sparse: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # every field, in order


def logit_fidelity(dense: torch.Tensor, sparse: torch.Tensor) -> Fidelity:
    """dense, sparse: (n, V) logits at the same positions (see `Fidelity`)."""
    if dense.shape != sparse.shape or dense.ndim != 2 or dense.shape[0] == 0:
        raise AdasparkError(f"cannot compare logits of shapes {tuple(dense.shape)} and {tuple(sparse.shape)}")
    log_d = torch.log_softmax(dense.double(), dim=-1)
    log_s = torch.log_softmax(sparse.double(), dim=-1)
    kl = (log_d.exp() * (log_d - log_s)).sum(-1).clamp(min=0.0)  # (n,)
    top_d, top_s = dense.argmax(-1), sparse.argmax(-1)
    return Fidelity(
        kl=float(kl[-1]),
        kl_mean=float(kl.mean()),
        top1_agreement=float((top_d == top_s).double().mean()),
        positions=int(dense.shape[0]),
        first_token_dense=int(top_d[-1]),
        first_token_sparse=int(top_s[-1]),
    )


@dataclass(frozen=True)
class CubeSelection:
    """How often each cube of one layer was selected by the video queries that could select it.

    fraction: (slabs, cubes per slab) float, selections / (candidate queries x KV heads); NaN where no
    query could select the cube (the last slab: a query's own slab is always attended, never selected).
    Rows are time (slabs of cube[0] tokens = 2*cube[0] frames), columns space (cube rows x cube columns).
    """

    layer: int
    cube: tuple[int, int, int]
    space_grid: tuple[int, int]  # cube rows x cube columns of one slab
    slab_start_s: tuple[float, ...]  # timestamp of the first frame of each slab
    fraction: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "cube": list(self.cube),
            "space_grid": list(self.space_grid),
            "slab_start_s": list(self.slab_start_s),
            "fraction": [[None if math.isnan(v) else float(v) for v in row] for row in self.fraction],
        }


def cube_selection(
    stats: PrefillStats, layer: int, layout: CubeLayout, timestamps: np.ndarray | None = None
) -> CubeSelection | None:
    """The layer's kept selections (Settings.heatmap_layer) as a time x space grid; None if none kept."""
    rec = stats.layers.get(layer)
    if rec is None or not rec.attention.selected_cubes_per_query:
        return None
    selected = torch.cat(rec.attention.selected_cubes_per_query, dim=1)  # (Hkv, Nv, C) bool
    layout = layout.to("cpu")
    query_slab = layout.slab_of_token[layout.is_video]  # video queries in sequence order
    if selected.shape[1] != query_slab.numel() or selected.shape[2] != layout.num_cubes:
        return None  # not one whole video prefill (should not happen)
    candidates = layout.slab_of_cube[None, :] < query_slab[:, None]  # (Nv, C)
    chosen = selected.sum(dim=(0, 1)).double()
    possible = candidates.sum(0).double() * selected.shape[0]
    frac = torch.where(possible > 0, chosen / possible.clamp(min=1), torch.full_like(chosen, float("nan")))
    slabs = int(layout.slab_of_cube.max()) + 1 if layout.num_cubes else 0
    first = torch.full((slabs,), layout.num_cubes, dtype=torch.long).scatter_reduce(
        0, layout.slab_of_cube, torch.arange(layout.num_cubes), reduce="amin"
    )
    space = layout.num_cubes and int(torch.bincount(layout.slab_of_cube).max())
    grid = np.full((slabs, space), np.nan)
    cube_ids = torch.arange(layout.num_cubes)
    grid[layout.slab_of_cube.numpy(), (cube_ids - first[layout.slab_of_cube]).numpy()] = frac.numpy()
    ct, ch, cw = layout.cube
    _, h, w = layout.spans[0].grid
    starts: tuple[float, ...] = ()
    if timestamps is not None and len(timestamps) and len(layout.spans) == 1:
        # slab s starts at token row s*ct, i.e. frame 2*ct*s (one token row covers 2 frames)
        starts = tuple(float(timestamps[min(2 * ct * s, len(timestamps) - 1)]) for s in range(slabs))
    return CubeSelection(
        layer=layer, cube=layout.cube, space_grid=(-(-h // ch), -(-w // cw)), slab_start_s=starts, fraction=grid
    )


@dataclass
class ProfileResult:
    """Everything `adaspark profile` reports; `to_json()` is the stable `profile --json` object."""

    question: str
    frames: int
    video_tokens: int
    cubes: int
    device: str
    dtype: str
    config: AdaSparkConfig
    dims: ModelDims
    stats: PrefillStats  # of the AdaSpark run (its dense FLOPs are the dense model's on the same input)
    fidelity: Fidelity
    dense_times: list[float]
    sparse_times: list[float]
    warmup: int
    memory: dict[str, Any]
    selection: CubeSelection | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # more top-level keys (the CLI adds model, config_source)

    @property
    def clock(self) -> str:
        return "cuda" if self.device.startswith("cuda") else "cpu"

    def layers(self) -> list[dict[str, Any]]:
        rows = layer_rows(self.stats)
        for row in rows:
            idx = row["layer"]
            rec = self.stats.layers[idx]
            sparse = self.config.is_layer_sparse(idx)
            row["attn_top_p"] = self.config.attn_top_p_for(idx) if sparse else None
            row["ffn_top_p"] = self.config.ffn_top_p_for(idx) if sparse else None
            row["flops"] = {
                "dense": layer_flops(rec, self.dims, sparse=False).to_dict(),
                "sparse": layer_flops(rec, self.dims, sparse=True).to_dict(),
            }
        return rows

    def flops(self) -> dict[str, Any]:
        return flops_summary(self.stats, self.dims)

    def timing(self) -> dict[str, Any]:
        dense_s, sparse_s = statistics.median(self.dense_times), statistics.median(self.sparse_times)
        return {
            "dense_s": dense_s,
            "sparse_s": sparse_s,
            "speedup": dense_s / sparse_s if sparse_s > 0 else None,
            "clock": self.clock,  # "cpu": CPU wall-clock times, not comparable to GPU numbers
            "warmup": self.warmup,
            "repeats": len(self.dense_times),
            "dense_runs_s": list(self.dense_times),
            "sparse_runs_s": list(self.sparse_times),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "question": self.question,
            "frames": self.frames,
            "video_tokens": self.video_tokens,
            "cubes": self.cubes,
            "device": self.device,
            "dtype": self.dtype,
            "config": self.config.to_dict(),
            "layers": self.layers(),
            "flops": self.flops(),
            "time": self.timing(),
            "memory": dict(self.memory),
            "fidelity": self.fidelity.to_dict(),
            "selection": None if self.selection is None else self.selection.to_dict(),
            **self.extra,
        }


def default_heatmap_layer(config: AdaSparkConfig, num_layers: int) -> int | None:
    """The middle one of the sparse layers (None when no layer is sparse)."""
    sparse = [i for i in range(num_layers) if config.is_layer_sparse(i)]
    return sparse[len(sparse) // 2] if sparse else None


def run_counts(device: torch.device, warmup: int | None, repeats: int | None) -> tuple[int, int]:
    """(warm-up, timed) runs per mode: given values, else 3 + 5 on CUDA and 1 + 1 on the CPU."""
    cuda = device.type == "cuda"
    warmup = (CUDA_WARMUP if cuda else CPU_WARMUP) if warmup is None else warmup
    repeats = (CUDA_REPEATS if cuda else CPU_REPEATS) if repeats is None else repeats
    if warmup < 1:
        raise AdasparkError(f"--warmup must be at least 1 (the first warm-up collects the statistics), got {warmup}")
    if repeats < 1:
        raise AdasparkError(f"--repeats must be at least 1, got {repeats}")
    return warmup, repeats


def _peak_rss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)  # bytes on macOS, KiB on Linux


def profile_prefill(
    qa: VideoQA,
    video: DecodedVideo | VideoPrompt,
    question: str = DEFAULT_QUESTION,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    warmup: int | None = None,
    repeats: int | None = None,
    heatmap_layer: int | None = None,
    progress: Progress | None = None,
) -> ProfileResult:
    """Prefill `video` + `question` densely and with AdaSpark on `qa`'s model; compare stats, time and logits.

    Per mode: `warmup` untimed runs (the first collects statistics and logits) then `repeats` timed runs;
    the reported time is the median. Memory: torch.cuda.max_memory_allocated per mode on CUDA; on the CPU
    the process's peak resident set size after each mode (a running maximum, so the AdaSpark figure, measured
    second, is never below the dense one). `qa.state.enabled` is restored afterwards.
    """
    if not question.strip():
        raise AdasparkError("the question is empty; pass a question or leave it out for the default")
    state, device = qa.state, qa.device
    layers = qa.dims.layers
    if heatmap_layer is None:
        heatmap_layer = default_heatmap_layer(state.config, layers)
    elif not 0 <= heatmap_layer < layers:
        raise AdasparkError(f"--heatmap-layer {heatmap_layer} is not a layer of this model; use 0-{layers - 1}")
    warmup, repeats = run_counts(device, warmup, repeats)
    prompt = video if isinstance(video, VideoPrompt) else qa.prepare_video(video, max_pixels=max_pixels)
    timestamps = None if isinstance(video, VideoPrompt) else video.timestamps
    total = 2 * (warmup + repeats)
    done = 0
    logits: dict[str, torch.Tensor] = {}
    times: dict[str, list[float]] = {}
    memory: dict[str, Any] = (
        {"measure": "cuda_max_allocated", "device": str(device)}
        if device.type == "cuda"
        else {"measure": "process_peak_rss", "device": "cpu", "note": "running maximum of the whole process"}
    )
    stats = PrefillStats()
    for mode in ("dense", "sparse"):
        sparse = mode == "sparse"
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        # the first warm-up keeps the heatmap layer's per-query selections (that layer runs the reference)
        with state.override(enabled=sparse, heatmap_layer=heatmap_layer if sparse else None):
            for i in range(warmup):
                if progress:
                    progress(f"{mode}: warm-up {i + 1}/{warmup}", done, total)
                out = qa.prefill_logits(prompt, question, stats=stats if (i == 0 and sparse) else None)
                if i == 0:
                    logits[mode] = out.cpu()
                done += 1
        runs = []
        with state.override(enabled=sparse):
            for i in range(repeats):
                if progress:
                    progress(f"{mode}: timed run {i + 1}/{repeats}", done, total)
                sync_device(device)
                start = time.perf_counter()
                qa.prefill_logits(prompt, question)
                sync_device(device)
                runs.append(time.perf_counter() - start)
                done += 1
        times[mode] = runs
        if device.type == "cuda":
            memory[f"{mode}_bytes"] = int(torch.cuda.max_memory_allocated(device))
        else:
            memory[f"{mode}_bytes"] = _peak_rss_bytes()
    if progress:
        progress("done", done, total)
    selection = cube_selection(stats, heatmap_layer, prompt.layout, timestamps) if heatmap_layer is not None else None
    return ProfileResult(
        question=question,
        frames=prompt.frames,
        video_tokens=prompt.video_tokens,
        cubes=prompt.layout.num_cubes,
        device=str(device),
        dtype=str(qa.model.dtype).removeprefix("torch."),
        config=state.config,
        dims=qa.dims,
        stats=stats,
        fidelity=logit_fidelity(logits["dense"], logits["sparse"]),
        dense_times=times["dense"],
        sparse_times=times["sparse"],
        warmup=warmup,
        memory=memory,
        selection=selection,
    )
