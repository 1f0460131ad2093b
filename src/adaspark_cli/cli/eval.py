"""`adaspark eval`: accuracy of dense and AdaSpark on a synthetic long-video QA suite, with FLOPs and time."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import typer

from ..api import AdasparkError
from . import options as opt
from .defaults import DEFAULT_DEPTHS, DEFAULT_LENGTHS, MAX_FRAMES, MIN_FRAMES, TASKS
from .errors import UsageError, handle_errors, loading
from .render import ProgressBar, eval_tables, write_report

DEFAULT_WRITERS = min(8, os.cpu_count() or 1)  # encoding is CPU-bound; more rarely pays

HELD_OUT_SEED = 1000


def _split(text: str, flag: str) -> list[str]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise UsageError(f"{flag} is empty; give a comma-separated list")
    return parts


def parse_tasks(text: str) -> tuple[str, ...]:
    if text.strip() == "all":
        return TASKS
    tasks = _split(text, "--tasks")
    bad = [t for t in tasks if t not in TASKS]
    if bad:
        raise UsageError(f"--tasks: unknown task {bad[0]!r}; use 'all' or some of {','.join(TASKS)}")
    return tuple(dict.fromkeys(tasks))


def parse_lengths(text: str) -> tuple[int, ...]:
    out = []
    for p in _split(text, "--lengths"):
        if not p.isdigit() or not MIN_FRAMES <= int(p) <= MAX_FRAMES:
            raise UsageError(f"--lengths: {p!r} is not a frame count in {MIN_FRAMES}..{MAX_FRAMES}; e.g. --lengths 16,64,256")
        out.append(int(p))
    return tuple(dict.fromkeys(out))


def parse_depths(text: str) -> tuple[float, ...]:
    out = []
    for p in _split(text, "--depths"):
        try:
            d = float(p)
        except ValueError:
            d = -1.0
        if not 0.0 <= d <= 1.0:
            raise UsageError(f"--depths: {p!r} is not a depth in [0, 1]; e.g. --depths 0.1,0.5,0.9")
        out.append(d)
    return tuple(dict.fromkeys(out))


@handle_errors
def eval_command(
    suite_path: Path = typer.Argument(None, metavar="SUITE", help="A suite folder (or its suite.json) written by an "
                                      "earlier eval --out. Default: generate a fresh held-out suite.", show_default=False),
    model: str = opt.MODEL,
    cube: str = opt.CUBE,
    top_p: float = opt.TOP_P,
    attn_top_p: float = opt.ATTN_TOP_P,
    ffn_top_p: float = opt.FFN_TOP_P,
    layers: str = opt.LAYERS,
    seed: int = typer.Option(HELD_OUT_SEED, "--seed", help="Seed of a generated suite (training never uses suite seeds)."),
    tasks: str = typer.Option("all", "--tasks", help=f"Task families of a generated suite: 'all' or some of {','.join(TASKS)}."),
    lengths: str = typer.Option(",".join(map(str, DEFAULT_LENGTHS)), "--lengths",
                                help=f"Video lengths in frames ({MIN_FRAMES}..{MAX_FRAMES}) of a generated suite."),
    depths: str = typer.Option(",".join(f"{d:g}" for d in DEFAULT_DEPTHS), "--depths",
                               help="Needle depths in [0, 1] of a generated suite."),
    per_cell: int = typer.Option(1, "--per-cell", help="Items per (task, length, depth) cell of a generated suite."),
    workers: int = typer.Option(DEFAULT_WRITERS, "--workers",
                                help="Processes that render and encode a generated suite's videos (the same files for any "
                                     "number). Default: the CPU cores, at most 8.", show_default=False),
    out: Path = typer.Option(None, "--out", help="Keep the generated suite (videos + suite.json) in this folder. "
                             "Default: a temporary folder, deleted afterwards.", show_default=False),
    limit: int = typer.Option(None, "--limit", help="Evaluate only the first N items.", show_default=False),
    max_pixels: int = opt.MAX_PIXELS,
    decoder: str = opt.DECODER,
    max_new_tokens: int = typer.Option(8, "--max-new-tokens", help="Stop an answer after this many tokens."),
    device: str = opt.DEVICE,
    plot: Path = typer.Option(None, "--plot", help="Write accuracy heatmaps over length x depth (dense beside "
                              "AdaSpark) and bars per task to this .png (.svg, .pdf); needs pip install "
                              "'adaspark-cli[plot]'.", show_default=False),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object on stdout instead of the tables "
                                  "(they go to stderr)."),
    quiet: bool = opt.REPORT_QUIET,
) -> None:
    """Evaluate dense and AdaSpark on the same synthetic long-video QA items, with the same weights.

    Reports exact-match accuracy (after normalisation) per task and per length x depth, the language
    model's prefill FLOPs reduction and the time of each mode. Videos go through the same decoding path
    as `ask` (every frame of the suite's 2 fps H.264 files).

    Examples:

        adaspark eval --lengths 16,64 --depths 0.5 --json

        adaspark eval --out heldout/ --per-cell 2 --plot eval.png

        adaspark eval heldout/ --top-p 0.8
    """
    opt.check_max_new_tokens(max_new_tokens)
    opt.check_at_least("--limit", limit, 1)
    opt.check_at_least("--per-cell", per_cell, 1)
    opt.check_at_least("--workers", workers, 1)
    opt.check_max_pixels(max_pixels)
    overrides = opt.sparsity_overrides(cube, top_p, attn_top_p, ffn_top_p, layers)
    grid = (parse_tasks(tasks), parse_lengths(lengths), parse_depths(depths)) if suite_path is None else None

    with loading():  # torch: only once the flags are good
        from ..api import check_plot_path, evaluate, load_video_qa, make_suite, plot_eval, read_suite, write_suite

    if plot is not None:
        plot = check_plot_path(plot)
    with tempfile.TemporaryDirectory(prefix="adaspark-suite-") as tmp, ProgressBar(enabled=not quiet) as bar:
        if suite_path is not None:
            try:
                suite = read_suite(suite_path)
            except ValueError as exc:
                raise AdasparkError(str(exc)) from None
        else:
            assert grid is not None
            spec = make_suite(seed, tasks=grid[0], lengths=grid[1], depths=grid[2], per_cell=per_cell)
            if limit is not None:
                spec = type(spec)(spec.seed, spec.fps, spec.size, spec.items[:limit])
            suite = write_suite(spec, out if out is not None else Path(tmp), workers=workers,
                                progress=lambda done, total, item: bar.update(f"writing {item.id}", done, total))
        if limit is not None:
            suite = type(suite)(suite.seed, suite.fps, suite.size, suite.items[:limit], root=suite.root)
        bar.stage("loading the model")
        loaded = load_video_qa(model, device=device, overrides=overrides)  # not in loading(): tmp must be removed
        report = evaluate(loaded.qa, suite, max_pixels=max_pixels, max_new_tokens=max_new_tokens, decoder=decoder,
                          progress=lambda text, done, total: bar.update(f"answering {text}", done, total))
    report.model = str(loaded.path)
    data = report.to_json()
    if suite_path is None and out is None:
        data["suite"]["path"] = None  # it was a temporary folder
    if plot is not None:
        plot_eval(data, plot)
    write_report(data, eval_tables(data), json_out=json_out, quiet=quiet)
