"""Choose attn_top_p and ffn_top_p for a target prefill FLOPs reduction on calibration videos.

Two methods. `calibrate` (global values, a grid search; the default of `convert --target-reduction`):
1. each calibration video is prepared once (the cube and sparse layers of the base config are kept) and
   prefilled densely with a fixed question to get reference logits;
2. for every (attn_top_p, ffn_top_p) pair of the grid it is prefilled with AdaSpark, recording the analytic
   prefill FLOPs (dense and sparse, `stats.prefill_flops`) and the logits;
3. a pair's reduction is 1 - sum(sparse FLOPs) / sum(dense FLOPs) over the videos, its distortion the mean
   over videos of KL(dense || sparse) of the first answer token (see `profile.Fidelity`);
4. among the pairs whose reduction reaches the target, the one with the least KL wins (ties: higher top-1
   agreement, then higher reduction). If none reaches it, AdasparkError names the best reduction found.

`calibrate_per_layer` (per-layer values, `convert --per-layer`), a separable approximation:
1. as above, dense reference logits per video;
2. for each sparse layer l and each grid pair (a, f), only layer l is made sparse with (a, f): its
   reduction r_l(a, f) (FLOPs saved / dense FLOPs, over all videos) and its KL k_l(a, f) are recorded;
   (1, 1) is always a candidate, so a layer can stay (effectively) dense;
3. assuming savings and KL add up over layers, choose per layer the pair minimising k_l - lambda * r_l,
   with the smallest lambda >= 0 (bisection) whose predicted total reduction sum_l r_l reaches the target
   (a Lagrangian relaxation of "least total KL subject to reduction >= target"), then greedily move single
   layers to lower-KL pairs while the predicted total still reaches the target;
4. the chosen per-layer setting is run on the videos; if its measured reduction falls short (layers interact),
   the predicted target is raised by the shortfall and step 3 repeated, at most 3 times.
Cost: videos x (1 + sparse layers x grid^2 + up to 4) prefills.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from .. import __version__
from ..config import AdaSparkConfig, validate_top_p
from ..errors import AdasparkError
from ..stats import PrefillStats, prefill_flops
from ..video import DecodedVideo
from .profile import DEFAULT_QUESTION, Progress, logit_fidelity
from .session import DEFAULT_MAX_PIXELS, VideoQA

DEFAULT_GRID = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.3)  # 49 pairs


@dataclass(frozen=True)
class CalibrationPoint:
    attn_top_p: float
    ffn_top_p: float
    reduction: float  # of prefill FLOPs, over all calibration videos
    kl: float  # mean over videos of KL(dense || sparse) of the first answer token, nats
    kl_mean: float  # mean over videos and question positions
    top1_agreement: float  # mean over videos

    def to_dict(self) -> dict[str, float]:
        return asdict(self)  # every field, in order


@dataclass(frozen=True)
class Calibration:
    target_reduction: float
    question: str
    videos: tuple[dict[str, Any], ...]
    grid: tuple[float, ...]
    points: tuple[CalibrationPoint, ...]  # every pair tried, in grid order
    chosen: CalibrationPoint
    config: AdaSparkConfig  # the base config with the chosen top-p values

    def record(self) -> dict[str, Any]:
        """The `"calibration"` record written into the checkpoint's adaspark block."""
        return {
            "method": "grid",
            "target_reduction": self.target_reduction,
            "question": self.question,
            "videos": [dict(v) for v in self.videos],
            "grid": list(self.grid),
            "chosen": self.chosen.to_dict(),
            "table": [p.to_dict() for p in self.points],
            "adaspark_version": __version__,
        }


def parse_grid(text: str) -> tuple[float, ...]:
    """'1,0.9,0.5' -> (1.0, 0.9, 0.5), each in (0, 1], sorted high to low without repeats."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise AdasparkError(f"--grid: cannot read {text!r}; expected top-p values like 1,0.9,0.7,0.5") from None
    if not values:
        raise AdasparkError("--grid is empty; give top-p values like 1,0.9,0.7,0.5")
    for v in values:
        validate_top_p("--grid", v)
    return tuple(sorted(set(values), reverse=True))


def choose(points: Sequence[CalibrationPoint], target: float) -> CalibrationPoint:
    """The least-KL point that reaches `target` (ties: higher top-1 agreement, then higher reduction)."""
    reaching = [p for p in points if p.reduction >= target]
    if not reaching:
        best = max(points, key=lambda p: p.reduction)
        raise AdasparkError(
            f"no setting on the grid reaches a {target:.0%} FLOPs reduction on the calibration videos; the best is "
            f"{best.reduction:.1%} (attn top-p {best.attn_top_p}, ffn top-p {best.ffn_top_p}); lower "
            "--target-reduction or add smaller values to --grid"
        )
    return min(reaching, key=lambda p: (p.kl, -p.top1_agreement, -p.reduction))


def _check_inputs(
    target_reduction: float, videos: Sequence[DecodedVideo], question: str, grid: Sequence[float]
) -> tuple[float, ...]:
    """Validate the common arguments; returns the grid sorted high to low without repeats."""
    if not 0.0 < target_reduction < 1.0:
        raise AdasparkError(f"--target-reduction must be between 0 and 1 (0.57 = 57% fewer FLOPs), got {target_reduction}")
    if not videos:
        raise AdasparkError("calibration needs at least one video; pass --calibrate VIDEO (repeatable)")
    if not question.strip():
        raise AdasparkError("the calibration question is empty")
    for g in grid:
        validate_top_p("grid", g)
    return tuple(sorted(set(float(g) for g in grid), reverse=True))


def calibrate(
    qa: VideoQA,
    videos: Sequence[DecodedVideo],
    *,
    target_reduction: float,
    question: str = DEFAULT_QUESTION,
    grid: Sequence[float] = DEFAULT_GRID,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: Progress | None = None,
) -> Calibration:
    """Grid-search global attn/ffn top-p on `videos` (see the module docstring); `qa.state` is restored after."""
    grid = _check_inputs(target_reduction, videos, question, grid)
    state = qa.state
    base = state.config.replace(layer_top_p=None)  # global values for every layer
    pairs = list(itertools.product(grid, grid))
    total = len(videos) * (1 + len(pairs))
    done = 0
    prompts = [qa.prepare_video(v, max_pixels=max_pixels) for v in videos]
    measured: dict[tuple[float, float], list[tuple[float, float, Any]]] = {pair: [] for pair in pairs}
    for n, prompt in enumerate(prompts):
        if progress:
            progress(f"video {n + 1}/{len(prompts)}: dense", done, total)
        with state.override(enabled=False):
            dense_logits = qa.prefill_logits(prompt, question)
        done += 1
        for attn_p, ffn_p in pairs:
            if progress:
                progress(f"video {n + 1}/{len(prompts)}: attn {attn_p}, ffn {ffn_p}", done, total)
            stats = PrefillStats()
            with state.override(enabled=True, config=base.replace(attn_top_p=attn_p, ffn_top_p=ffn_p)):
                logits = qa.prefill_logits(prompt, question, stats=stats)
            dense, sparse = prefill_flops(stats, qa.dims)
            measured[(attn_p, ffn_p)].append((dense.total, sparse.total, logit_fidelity(dense_logits, logits)))
            done += 1
    if progress:
        progress("done", done, total)
    points = []
    for (attn_p, ffn_p), rows in measured.items():
        dense_sum = sum(r[0] for r in rows)
        sparse_sum = sum(r[1] for r in rows)
        fids = [r[2] for r in rows]
        points.append(
            CalibrationPoint(
                attn_top_p=attn_p,
                ffn_top_p=ffn_p,
                reduction=0.0 if dense_sum == 0 else 1.0 - sparse_sum / dense_sum,
                kl=sum(f.kl for f in fids) / len(fids),
                kl_mean=sum(f.kl_mean for f in fids) / len(fids),
                top1_agreement=sum(f.top1_agreement for f in fids) / len(fids),
            )
        )
    chosen = choose(points, target_reduction)
    return Calibration(
        target_reduction=target_reduction,
        question=question,
        videos=tuple(
            {"name": v.path.name, "frames": p.frames, "video_tokens": p.video_tokens} for v, p in zip(videos, prompts)
        ),
        grid=grid,
        points=tuple(points),
        chosen=chosen,
        config=base.replace(attn_top_p=chosen.attn_top_p, ffn_top_p=chosen.ffn_top_p),
    )


@dataclass(frozen=True)
class LayerChoice:
    """One layer's setting and what it does alone (only this layer sparse)."""

    layer: int
    attn_top_p: float
    ffn_top_p: float
    reduction: float  # FLOPs saved by this layer alone / dense FLOPs, over all videos
    kl: float  # mean over videos of the first answer token's KL with only this layer sparse

    def to_dict(self) -> dict[str, float | int]:
        return {
            "layer": self.layer,
            "attn_top_p": self.attn_top_p,
            "ffn_top_p": self.ffn_top_p,
            "reduction_alone": self.reduction,
            "kl_alone": self.kl,
        }


@dataclass(frozen=True)
class LayerCalibration:
    target_reduction: float
    question: str
    videos: tuple[dict[str, Any], ...]
    grid: tuple[float, ...]
    layers: tuple[LayerChoice, ...]
    predicted_reduction: float  # sum of the layers' reductions alone
    measured: CalibrationPoint  # the chosen per-layer setting run on the videos (attn/ffn: means over layers)
    config: AdaSparkConfig  # the base config with layer_top_p set

    def record(self) -> dict[str, Any]:
        """The `"calibration"` record written into the checkpoint's adaspark block."""
        return {
            "method": "per_layer",
            "target_reduction": self.target_reduction,
            "question": self.question,
            "videos": [dict(v) for v in self.videos],
            "grid": list(self.grid),
            "layers": [c.to_dict() for c in self.layers],
            "predicted_reduction": self.predicted_reduction,
            "measured": {k: v for k, v in self.measured.to_dict().items() if k not in ("attn_top_p", "ffn_top_p")},
            "adaspark_version": __version__,
        }


def solve_per_layer(options: dict[int, list[LayerChoice]], target: float) -> list[LayerChoice] | None:
    """Per layer, the option minimising kl - lam * reduction for the least lam whose total reaches `target`.

    None when even the largest reduction of every layer does not reach it.
    """

    def pick(lam: float) -> list[LayerChoice]:
        return [min(opts, key=lambda o: (o.kl - lam * o.reduction, -o.reduction)) for _, opts in sorted(options.items())]

    def total(choices: list[LayerChoice]) -> float:
        return sum(c.reduction for c in choices)

    if sum(max(o.reduction for o in opts) for opts in options.values()) < target:
        return None
    lo, hi = 0.0, 1.0
    for _ in range(200):
        if total(pick(hi)) >= target:
            break
        lo, hi = hi, hi * 4
    else:
        return None
    for _ in range(100):
        mid = (lo + hi) / 2
        if total(pick(mid)) >= target:
            hi = mid
        else:
            lo = mid
    choices = pick(hi)
    # The relaxation only finds points on the convex hull and may overshoot: greedily move any layer to a
    # lower-KL option while the predicted total still reaches the target (largest KL drop first).
    improved = True
    while improved:
        improved = False
        slack = total(choices) - target
        moves = [
            (c.kl - o.kl, i, o)
            for i, (c, (_, opts)) in enumerate(zip(choices, sorted(options.items())))
            for o in opts
            if o.kl < c.kl and c.reduction - o.reduction <= slack
        ]
        if moves:
            _, i, o = max(moves, key=lambda m: (m[0], m[2].reduction))
            choices[i] = o
            improved = True
    return choices


def _measure(
    qa: VideoQA, prompts: list[Any], question: str, dense_logits: list[Any]
) -> tuple[float, float, float, float]:
    """(reduction, kl, kl_mean, top1) of qa.state.config over the prompts."""
    dense_sum = sparse_sum = 0.0
    fids = []
    for prompt, ref in zip(prompts, dense_logits):
        stats = PrefillStats()
        logits = qa.prefill_logits(prompt, question, stats=stats)
        dense, sparse = prefill_flops(stats, qa.dims)
        dense_sum, sparse_sum = dense_sum + dense.total, sparse_sum + sparse.total
        fids.append(logit_fidelity(ref, logits))
    n = len(fids)
    return (
        0.0 if dense_sum == 0 else 1.0 - sparse_sum / dense_sum,
        sum(f.kl for f in fids) / n,
        sum(f.kl_mean for f in fids) / n,
        sum(f.top1_agreement for f in fids) / n,
    )


def calibrate_per_layer(
    qa: VideoQA,
    videos: Sequence[DecodedVideo],
    *,
    target_reduction: float,
    question: str = DEFAULT_QUESTION,
    grid: Sequence[float] = DEFAULT_GRID,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: Progress | None = None,
    max_rounds: int = 3,
) -> LayerCalibration:
    """Per-layer (attn, ffn) top-p for `target_reduction` (see the module docstring); `qa.state` is restored after."""
    grid = _check_inputs(target_reduction, videos, question, tuple(grid) + (1.0,))
    state = qa.state
    base = state.config.replace(layer_top_p=None)
    layers = [i for i in range(qa.dims.layers) if base.is_layer_sparse(i)]
    if not layers:
        raise AdasparkError("no layer is sparse (--layers); per-layer calibration needs at least one")
    pairs = list(itertools.product(grid, grid))
    total = len(videos) * (1 + len(layers) * len(pairs) + 1 + max_rounds)
    done = 0
    prompts = [qa.prepare_video(v, max_pixels=max_pixels) for v in videos]
    options: dict[int, list[LayerChoice]] = {}
    dense_logits = []
    for n, prompt in enumerate(prompts):
        if progress:
            progress(f"video {n + 1}/{len(prompts)}: dense", done, total)
        with state.override(enabled=False):
            dense_logits.append(qa.prefill_logits(prompt, question))
        done += 1
    for layer in layers:
        options[layer] = []
        for attn_p, ffn_p in pairs:
            if progress:
                progress(f"layer {layer}: attn {attn_p}, ffn {ffn_p}", done, total)
            with state.override(enabled=True, config=base.replace(sparse_layers=(layer,), attn_top_p=attn_p, ffn_top_p=ffn_p)):
                red, kl, _, _ = _measure(qa, prompts, question, dense_logits)
            options[layer].append(LayerChoice(layer, attn_p, ffn_p, red, kl))
            done += len(videos)
    goal = target_reduction
    best: tuple[list[LayerChoice], tuple[float, float, float, float]] | None = None
    for round_ in range(1 + max_rounds):
        choices = solve_per_layer(options, goal)
        if choices is None:
            break
        if progress:
            progress(f"checking the per-layer setting ({round_ + 1})", done, total)
        per_layer = base.replace(layer_top_p=tuple((c.layer, c.attn_top_p, c.ffn_top_p) for c in choices))
        with state.override(enabled=True, config=per_layer):
            measured = _measure(qa, prompts, question, dense_logits)
        done += len(videos)
        if measured[0] >= target_reduction:
            best = (choices, measured)
            break
        goal += target_reduction - measured[0] + 1e-6
    if progress:
        progress("done", total, total)
    if best is None:
        reachable = sum(max(o.reduction for o in opts) for opts in options.values())
        raise AdasparkError(
            f"no per-layer setting on the grid reaches a {target_reduction:.0%} FLOPs reduction on the calibration "
            f"videos (the layers alone add up to at most {reachable:.1%}); lower --target-reduction or add smaller "
            "values to --grid"
        )
    choices, (red, kl, kl_mean, top1) = best
    n = len(choices)
    return LayerCalibration(
        target_reduction=target_reduction,
        question=question,
        videos=tuple(
            {"name": v.path.name, "frames": p.frames, "video_tokens": p.video_tokens} for v, p in zip(videos, prompts)
        ),
        grid=grid,
        layers=tuple(choices),
        predicted_reduction=sum(c.reduction for c in choices),
        measured=CalibrationPoint(
            attn_top_p=sum(c.attn_top_p for c in choices) / n,
            ffn_top_p=sum(c.ffn_top_p for c in choices) / n,
            reduction=red,
            kl=kl,
            kl_mean=kl_mean,
            top1_agreement=top1,
        ),
        config=base.replace(layer_top_p=tuple((c.layer, c.attn_top_p, c.ffn_top_p) for c in choices)),
    )
