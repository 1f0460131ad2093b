"""Rendering: answers to stdout, notes and tables to stderr."""

from __future__ import annotations

import errno
import json
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from rich.console import Console, RenderableType
from rich.markup import escape
from rich.table import Table

from ..api import format_bytes


class PipeConsole(Console):
    """A Rich console whose broken pipe reaches the error boundary (Rich itself would exit 1 on the spot)."""

    def on_broken_pipe(self) -> None:
        self.quiet = True  # nothing more is written to that pipe
        raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))


err_console = PipeConsole(stderr=True, highlight=False)  # notes, progress and tables

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


class StdoutError(Exception):
    """Writing to stdout failed (`error`: the OSError); the error boundary turns it into an exit code."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


def printable(text: str) -> str:
    """Escape control characters (a model can emit ESC and friends) except newline and tab."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


_line_open = False  # stdout holds a partial line (an answer still streaming)


def write_stdout(text: str) -> None:
    """Every answer and JSON line goes through here (a StdoutError when stdout cannot take it)."""
    global _line_open
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except OSError as exc:  # a closed pipe, a full disk: the boundary tells them apart
        raise StdoutError(exc) from None
    if text:
        _line_open = not text.endswith("\n")


def end_partial_line() -> None:
    """End a partial answer line (after Ctrl-C), so that the shell prompt starts on its own line."""
    if _line_open:
        write_stdout("\n")


def write_answer_piece(text: str) -> None:
    write_stdout(printable(text))


def write_json(obj: Any) -> None:
    write_stdout(json.dumps(obj) + "\n")


def write_line(text: str) -> None:
    write_stdout(text + "\n")


def write_report(data: Any, tables: Sequence[RenderableType], *, json_out: bool, quiet: bool) -> None:
    """A report command's output: with --json the JSON on stdout and the tables as notes on stderr
    (hidden by -q); otherwise the tables are the output, on stdout."""
    if json_out:
        write_json(data)
        if not quiet:
            for table in tables:
                err_console.print(table)
    else:
        for table in tables:
            print_stdout(table)


def print_stdout(renderable: RenderableType) -> None:
    """A table as the command's output, on stdout (at 100 columns when stdout is not a terminal)."""
    console = PipeConsole(file=sys.stdout, highlight=False, width=None if sys.stdout.isatty() else 100)
    try:
        console.print(renderable)
        sys.stdout.flush()
    except OSError as exc:
        raise StdoutError(exc) from None


def discard_stdout() -> None:
    """Point stdout's file descriptor at /dev/null, so that the interpreter's last flush of what is still
    buffered cannot fail again (a closed pipe, a full disk) with an 'Exception ignored' message."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (AttributeError, OSError, ValueError):  # no real stdout (closed, or a test's capture)
        pass


BUNDLED_MODEL_NOTE = (
    "the bundled model knows only adaspark's synthetic scenes (colored shapes on a drifting texture, 112x112 px, "
    "2 fps): on other videos its answers mean nothing. For real videos pass --model with a Qwen2.5-VL or Qwen3-VL checkpoint, "
    "a local directory or a hub id such as Qwen/Qwen2.5-VL-7B-Instruct"
)


def placement_note(loaded: Any, strategy: str | None) -> str:
    """Where --device-map put the model: its language-model layers by device, and the vision tower."""
    return f"--device-map {strategy}: {loaded.placement.describe(loaded.qa.dims.layers)}"


def note(message: str) -> None:
    err_console.print(f"[dim]{escape(message)}[/]", markup=True, soft_wrap=True)


def human_flops(value: float) -> str:
    for unit, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value:.0f} "


def layer_table(result: dict[str, Any]) -> Table:
    """Per-layer table of what was kept, with FLOPs totals in the caption."""
    title = f"{result['mode']}: {result['frames']} frames, {result['video_tokens']} video tokens, {result['cubes']} cubes"
    table = Table(title=title, title_justify="left")
    for name in ("layer", "cubes avail.", "cubes attended (mean/min/max)", "attn density", "FFN kept"):
        table.add_column(name, justify="right")
    for row in result["layers"]:
        table.add_row(
            str(row["layer"])
            + ("" if row["sparse"] else " (dense)")
            + (" (dense: near-dense selection)" if row.get("dense_fallback") else ""),
            *_kept_cells(row),
        )
    flops = result.get("flops") or {}
    if flops:
        d, s = flops["dense"], flops["sparse"]
        table.caption = (
            f"prefill FLOPs: dense {human_flops(d['total'])}, adaspark {human_flops(s['total'])} "
            f"(attention {human_flops(s['attention'])}, FFN {human_flops(s['ffn'])}, rest {human_flops(s['rest'])}, "
            f"scoring {human_flops(s['scoring'])}): {flops['reduction']:.1%} fewer"
        )
        table.caption_justify = "left"
    t = result["timing"]
    if result["video_prefill_reused"]:
        wait = f"first token after {t['first_token_s']:.2f} s (reused video prefill; question prefill {t['prefill_s']:.2f} s)"
    else:
        wait = (
            f"first token after {t['first_token_s']:.2f} s: decode {t['decode_s']:.2f} s, processor "
            f"{t['preprocess_s']:.2f} s, vision tower {t['vision_s']:.2f} s, prefill {t['prefill_s']:.2f} s"
        )
    table.caption = (table.caption or "") + f"\n{wait}; {result['generated_tokens']} tokens in {result['decode_seconds']:.2f} s"
    return table


def _kept_cells(row: dict[str, Any]) -> tuple[str, str, str, str]:
    """A per-layer row's cubes available, attended (mean / min / max), attention density and FFN rows kept."""
    ffn = f"{row['ffn_kept']}/{row['ffn_total']}" + (f" ({row['ffn_kept'] / row['ffn_total']:.0%})" if row["ffn_total"] else "")
    attended = f"{row['cubes_attended_mean']:.1f} / {row['cubes_attended_min']} / {row['cubes_attended_max']}"
    return f"{row['cubes_total']:.1f}", attended, f"{row['attn_density']:.1%}", ffn


def _compact(flops: float) -> str:
    return human_flops(flops).replace(" ", "")  # "4.90G": keeps "a -> b" cells on one line


def profile_tables(report: dict[str, Any]) -> list[Table]:
    """Per-layer tables of `profile`: what was kept, then FLOPs (attention, FFN, rest) dense and sparse."""
    title = (
        f"profile: {report['frames']} frames, {report['video_tokens']} video tokens, {report['cubes']} cubes; "
        f"{report['device']} {report['dtype']}"
    )
    kept = Table(title=title, title_justify="left")
    for name in ("layer", "top-p", "cubes", "attended (mean/min/max)", "attn density", "FFN kept"):
        kept.add_column(name, justify="right")
    flops = Table(title="prefill FLOPs per layer, dense -> adaspark", title_justify="left")
    for name in ("layer", "attention", "FFN", "rest", "scoring"):
        flops.add_column(name, justify="right")
    for row in report["layers"]:
        d, s = row["flops"]["dense"], row["flops"]["sparse"]
        layer = str(row["layer"]) + ("" if row["sparse"] else " (dense)")
        kept.add_row(
            layer,
            "-" if row.get("attn_top_p") is None else f"{row['attn_top_p']:g}/{row['ffn_top_p']:g}",
            *_kept_cells(row),
        )
        flops.add_row(
            layer,
            *(f"{_compact(d[k])} -> {_compact(s[k])}" for k in ("attention", "ffn", "rest")),
            _compact(s["scoring"]),
        )
    return [kept, flops]


def profile_summary(report: dict[str, Any]) -> Table:
    """Totals of `profile`: FLOPs, time, memory and fidelity, dense against adaspark."""
    flops, t, mem, fid = report["flops"], report["time"], report["memory"], report["fidelity"]
    table = Table(title="totals", title_justify="left")
    for name, justify in (("", "left"), ("dense", "right"), ("adaspark", "right"), ("change", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    table.add_row("prefill FLOPs", human_flops(flops["dense"]["total"]), human_flops(flops["sparse"]["total"]),
                  f"{flops['reduction']:.1%} fewer")
    clock = "CPU time" if t["clock"] == "cpu" else "CUDA time"
    speedup = f"{t['speedup']:.2f}x" if t["speedup"] else "-"
    table.add_row(f"prefill time ({clock}, median of {t['repeats']}, {t['warmup']} warm-up)",
                  f"{t['dense_s']:.3f} s", f"{t['sparse_s']:.3f} s", f"{speedup} speed-up")
    cuda = mem["measure"] == "cuda_max_allocated"
    label = "peak memory (CUDA max allocated)" if cuda else "peak memory (process RSS, running max)"
    table.add_row(label, format_bytes(mem["dense_bytes"]), format_bytes(mem["sparse_bytes"]), "")
    table.add_row("answer logits vs dense", "", "",
                  f"KL {fid['kl']:.3g} nats, top-1 agreement {fid['top1_agreement']:.0%} of {fid['positions']}")
    if t["clock"] == "cpu":
        table.caption = "times are CPU wall-clock times with the reference (unfused) sparse kernels; " \
                        "measure speed-ups on a GPU"
        table.caption_justify = "left"
    return table


def calibration_table(record: dict[str, Any]) -> Table:
    """Global: every (attn, ffn) top-p pair tried, highest reduction first, the chosen one marked.
    Per layer: each layer's chosen pair and what it saves alone, with the measured total in the caption."""
    if record["method"] == "per_layer":
        return _per_layer_table(record)
    chosen = record["chosen"]
    table = Table(title=f"calibration: target {record['target_reduction']:.0%} fewer prefill FLOPs on "
                  f"{len(record['videos'])} video(s)", title_justify="left")
    for name in ("", "attn top-p", "ffn top-p", "FLOPs reduction", "KL (nats)", "top-1 agreement"):
        table.add_column(name, justify="right")
    for row in sorted(record["table"], key=lambda r: (-r["reduction"], r["kl"])):
        mark = "*" if (row["attn_top_p"], row["ffn_top_p"]) == (chosen["attn_top_p"], chosen["ffn_top_p"]) else ""
        style = "bold" if mark else ("dim" if row["reduction"] < record["target_reduction"] else None)
        table.add_row(mark, f"{row['attn_top_p']:g}", f"{row['ffn_top_p']:g}", f"{row['reduction']:.1%}",
                      f"{row['kl']:.3g}", f"{row['top1_agreement']:.0%}", style=style)
    table.caption = "* chosen: least KL among the pairs reaching the target (dim: below the target)"
    table.caption_justify = "left"
    return table


class ProgressBar:
    """A Rich progress bar on stderr; `stage(text)` for steps of unknown length, `update` as a library callback.

    When stderr is not a terminal (a log file, a pipe, CI), the bar is off and a plain line says where the
    work is once every LOG_EVERY_S seconds instead, so that a long calibration or evaluation is not silent
    for minutes; work that ends sooner prints nothing."""

    LOG_EVERY_S = 30.0

    def __init__(self, enabled: bool = True, clock: Callable[[], float] = time.monotonic) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._bar = enabled and err_console.is_terminal
        self._log = enabled and not self._bar
        self._clock = clock
        self._start = self._last = self._clock()
        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=err_console, transient=True, disable=not self._bar,
        )
        self._task = self._progress.add_task("starting", total=None)

    def __enter__(self) -> ProgressBar:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def stage(self, text: str) -> None:
        self._progress.update(self._task, description=escape(text), total=None, completed=0)
        self._log_line(text)

    def update(self, text: str, done: int, total: int) -> None:
        self._progress.update(self._task, description=escape(text), completed=done, total=total)
        self._log_line(f"{text} ({done}/{total})")

    def _log_line(self, text: str) -> None:
        now = self._clock()
        if self._log and now - self._last >= self.LOG_EVERY_S:
            self._last = now
            print(f"{text}, {now - self._start:.0f} s", file=sys.stderr, flush=True)


class BatchProgress:
    """`batch`'s bar on stderr, on a terminal only: videos done of total, rate, elapsed and ETA."""

    def __init__(self, total: int, done: int, enabled: bool = True) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("videos"),
            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=err_console, transient=True, disable=not enabled or not err_console.is_terminal,
        )
        self._task = self._progress.add_task("starting", total=total, completed=done, rate="")
        self._first = done  # videos skipped as already done do not count for the rate
        self._start = 0.0

    def __enter__(self) -> BatchProgress:
        self._start = time.perf_counter()
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def stage(self, text: str) -> None:
        self._progress.update(self._task, description=escape(text))

    def advance(self, video: str) -> None:
        task = self._progress.tasks[0]
        done = task.completed + 1 - self._first
        minutes = (time.perf_counter() - self._start) / 60
        self._progress.update(self._task, advance=1, description=escape(f"last: {video}"),
                              rate=f"{done / minutes:.1f}/min" if minutes > 0 else "")


def _per_layer_table(record: dict[str, Any]) -> Table:
    table = Table(title=f"per-layer calibration: target {record['target_reduction']:.0%} fewer prefill FLOPs on "
                  f"{len(record['videos'])} video(s)", title_justify="left")
    for name in ("layer", "attn top-p", "ffn top-p", "FLOPs saved alone", "KL alone (nats)"):
        table.add_column(name, justify="right")
    for row in record["layers"]:
        table.add_row(str(row["layer"]), f"{row['attn_top_p']:g}", f"{row['ffn_top_p']:g}",
                      f"{row['reduction_alone']:.1%}", f"{row['kl_alone']:.3g}")
    m = record["measured"]
    table.caption = (f"all layers together: {m['reduction']:.1%} fewer FLOPs (predicted "
                     f"{record['predicted_reduction']:.1%}), KL {m['kl']:.3g} nats, top-1 agreement "
                     f"{m['top1_agreement']:.0%}")
    table.caption_justify = "left"
    return table


def _pct(x: float) -> str:
    return f"{x:.1%}"


def eval_tables(data: dict[str, Any]) -> list[Table]:
    """Per task (plus overall) and per length x depth: accuracy dense / AdaSpark, FLOPs reduction, time."""
    tables = []
    for key, title in (("by_task", "task"), ("by_length_depth", "frames x depth")):
        table = Table(title=f"eval: {data['items']} items, accuracy by {title}", title_justify="left")
        for name in (title, "n", "dense", "adaspark", "change", "FLOPs cut", "dense s", "sparse s"):
            table.add_column(name, justify="left" if name == title else "right")
        rows = list(data[key].items())
        if key == "by_task":
            rows.append(("all", {"items": data["items"], "dense": data["dense"], "adaspark": data["adaspark"]}))
        for name, g in rows:
            d, a = g["dense"], g["adaspark"]
            table.add_row(name, str(g["items"]), _pct(d["accuracy"]), _pct(a["accuracy"]),
                          f"{(a['accuracy'] - d['accuracy']) * 100:+.1f} pt", _pct(a["flops_reduction"]),
                          f"{d['seconds']:.2f}", f"{a['seconds']:.2f}", style="bold" if name == "all" else None)
        tables.append(table)
    a = data["adaspark"]
    tables[0].caption = (f"prefill FLOPs (language model): dense {human_flops(a['flops_dense'])}, adaspark "
                         f"{human_flops(a['flops_sparse'])}; exact match after normalisation; {data['device']}, "
                         f"{data['seconds']:.1f} s in all")
    tables[0].caption_justify = "left"
    return tables
