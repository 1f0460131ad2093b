"""`adaspark eval`: dense against AdaSpark on a synthetic long-video QA suite, same model, same items.

For each item the video is decoded through `decode_video` (every frame: ``fps`` = the suite's frame rate,
``max_frames`` = the item's length), processed once, then prefilled and answered twice on the same
loaded model object: with ``state.override(enabled=False)`` (the unmodified model) and with AdaSpark. Decoding is
greedy. An answer is correct when ``normalize_answer(answer) == normalize_answer(expected)`` (exact match
after lower-casing, stripping punctuation and articles, number words -> digits, first word only; see
`adaspark_cli.synth.tasks.normalize_answer`).

FLOPs are the language model's prefill FLOPs from the AdaSpark run's statistics (`AnswerResult.flops()`:
the dense model's cost on the same input against the sparse one, scoring included); a group's reduction is
``1 - sum(sparse) / sum(dense)`` over its items. Times are the prefill + decode seconds of each mode.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import AdasparkError
from ..synth.suite import Suite, SuiteItem
from ..synth.tasks import normalize_answer
from ..video import decode_video
from .session import DEFAULT_MAX_PIXELS, VideoQA

MODES = ("dense", "adaspark")
Progress = Callable[[str, int, int], None]


@dataclass
class ItemResult:
    id: str
    task: str
    n_frames: int
    depth: float
    question: str
    expected: str
    video_tokens: int = 0
    answers: dict[str, str] = field(default_factory=dict)  # mode -> raw answer
    correct: dict[str, bool] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    flops_dense: float = 0.0
    flops_sparse: float = 0.0


def _group(results: Sequence[ItemResult]) -> dict[str, Any]:
    n = len(results)
    dense_f = sum(r.flops_dense for r in results)
    sparse_f = sum(r.flops_sparse for r in results)
    out: dict[str, Any] = {"items": n}
    for mode in MODES:
        acc = sum(r.correct.get(mode, False) for r in results) / n if n else 0.0
        out[mode] = {"accuracy": acc, "seconds": sum(r.seconds.get(mode, 0.0) for r in results)}
    out["adaspark"]["flops_reduction"] = 1.0 - sparse_f / dense_f if dense_f else 0.0
    return out


@dataclass
class EvalReport:
    suite: dict[str, Any]
    results: list[ItemResult]
    model: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """The `eval --json` object: suite, items, dense{accuracy, seconds},
        adaspark{accuracy, seconds, flops_reduction, flops_dense, flops_sparse}, by_task{task: group},
        by_length_depth{"<frames>x<depth>": group}, results[...]; a group is
        {items, dense{accuracy, seconds}, adaspark{accuracy, seconds, flops_reduction}}."""
        total = _group(self.results)
        total["adaspark"]["flops_dense"] = sum(r.flops_dense for r in self.results)
        total["adaspark"]["flops_sparse"] = sum(r.flops_sparse for r in self.results)
        by_task = {t: _group([r for r in self.results if r.task == t]) for t in dict.fromkeys(r.task for r in self.results)}
        cells = sorted({(r.n_frames, r.depth) for r in self.results})
        by_cell = {
            f"{n}x{d:g}": _group([r for r in self.results if (r.n_frames, r.depth) == (n, d)]) for n, d in cells
        }
        lengths = sorted({r.n_frames for r in self.results})
        by_length = {str(n): _group([r for r in self.results if r.n_frames == n]) for n in lengths}
        return {
            "suite": self.suite,
            "items": len(self.results),
            "model": self.model,
            "config": self.config,
            "device": self.device,
            "seconds": self.seconds,
            "dense": total["dense"],
            "adaspark": total["adaspark"],
            "by_task": by_task,
            "by_length": by_length,
            "by_length_depth": by_cell,
            "results": [asdict(r) for r in self.results],
        }


def evaluate(
    qa: VideoQA,
    suite: Suite,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_new_tokens: int = 8,
    decoder: str = "auto",
    progress: Progress | None = None,
) -> EvalReport:
    """Run every item of ``suite`` (written to disk) dense and with AdaSpark on ``qa``'s model.

    ``qa.state``'s settings are left as they were."""
    if not suite.items:
        raise AdasparkError("the suite has no items; generate one with more --lengths/--depths/--tasks")
    state = qa.state
    results: list[ItemResult] = []
    start = time.perf_counter()
    for i, item in enumerate(suite.items):
        if progress is not None:
            progress(f"{item.id}", i, len(suite.items))
        results.append(_run_item(qa, suite, item, max_pixels=max_pixels, max_new_tokens=max_new_tokens, decoder=decoder))
    if progress is not None:
        progress("done", len(suite.items), len(suite.items))
    return EvalReport(
        suite={"seed": suite.seed, "path": str(suite.root) if suite.root else None, "fps": suite.fps,
               "size": list(suite.size), "items": len(suite.items)},
        results=results,
        config=state.config.to_dict(),
        device=str(qa.device),
        seconds=time.perf_counter() - start,
    )


def _run_item(qa: VideoQA, suite: Suite, item: SuiteItem, *, max_pixels: int, max_new_tokens: int, decoder: str) -> ItemResult:
    path: Path = suite.video_path(item)
    video = decode_video(path, fps=suite.fps, max_frames=item.n_frames, backend=decoder)
    prompt = qa.prepare_video(video, max_pixels=max_pixels)
    res = ItemResult(item.id, item.task, item.n_frames, item.depth, item.question, item.answer,
                     video_tokens=prompt.video_tokens)
    for mode in MODES:
        with qa.state.override(enabled=mode == "adaspark"):
            prefix = qa.prefill_video(prompt)
            stream = qa.answer(prefix, item.question, max_new_tokens=max_new_tokens)
            for _ in stream:
                pass
        r = stream.result
        res.answers[mode] = r.answer
        res.correct[mode] = normalize_answer(r.answer) == normalize_answer(item.answer)
        res.seconds[mode] = r.prefill_seconds + r.decode_seconds
        if mode == "adaspark":
            flops = r.flops()
            if flops:
                res.flops_dense, res.flops_sparse = flops["dense"]["total"], flops["sparse"]["total"]
    return res


def plot_eval(report: dict[str, Any], path: str | Path) -> Path:
    """Accuracy heatmaps over length x depth, dense beside AdaSpark, and accuracy per task, to ``path``
    (.png, .svg or .pdf)."""
    from .plot import matplotlib_figure

    figure_cls, canvas_cls = matplotlib_figure()
    fig = figure_cls(figsize=(13, 4.2), dpi=120)
    canvas_cls(fig)
    cells = report["by_length_depth"]
    lengths = sorted({int(k.split("x")[0]) for k in cells})
    depths = sorted({float(k.split("x")[1]) for k in cells})
    for i, mode in enumerate(MODES):
        ax = fig.add_subplot(1, 3, i + 1)
        grid = [[cells.get(f"{n}x{d:g}", {}).get(mode, {}).get("accuracy", float("nan")) for d in depths]
                for n in lengths]
        image = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
        for r, row in enumerate(grid):
            for c, value in enumerate(row):
                if value == value:  # not NaN
                    ax.text(c, r, f"{value:.0%}", ha="center", va="center", color="white" if value < 0.6 else "black")
        ax.set_xticks(range(len(depths)))
        ax.set_xticklabels([f"{d:g}" for d in depths])
        ax.set_yticks(range(len(lengths)))
        ax.set_yticklabels([str(n) for n in lengths])
        ax.set_xlabel("needle depth")
        ax.set_ylabel("frames")
        ax.set_title(f"{mode} accuracy")
        if i == 1:
            fig.colorbar(image, ax=ax, fraction=0.046)
    ax = fig.add_subplot(1, 3, 3)
    groups = report["by_task"]
    names = list(groups)
    xs = range(len(names))
    for offset, mode, color in ((-0.2, "dense", "#888888"), (0.2, "adaspark", "#d9480f")):
        ax.bar([x + offset for x in xs], [groups[n][mode]["accuracy"] for n in names], width=0.4, label=mode,
               color=color)
    ax.set_xticks(list(xs))
    ax.set_xticklabels(names)
    ax.set_ylim(0, 1.05)
    ax.set_title("accuracy per task")
    ax.legend(loc="upper right")
    red = report["adaspark"]["flops_reduction"]
    fig.suptitle(f"{report['items']} items: dense {report['dense']['accuracy']:.1%}, adaspark "
                 f"{report['adaspark']['accuracy']:.1%} with {red:.1%} fewer prefill FLOPs")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path
