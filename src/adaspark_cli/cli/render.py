"""Rendering: answers to stdout, notes and tables to stderr."""

from __future__ import annotations

import json
import re
import sys
from typing import Any

from rich.console import Console
from rich.table import Table

err_console = Console(stderr=True, highlight=False)

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def printable(text: str) -> str:
    """Escape control characters (a model can emit ESC and friends) except newline and tab."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def write_answer_piece(text: str) -> None:
    sys.stdout.write(printable(text))
    sys.stdout.flush()


def write_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def note(message: str) -> None:
    err_console.print(f"[dim]{message}[/]", markup=True, soft_wrap=True)


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
            str(row["layer"]) + ("" if row["sparse"] else " (dense)"),
            f"{row['cubes_total']:.1f}",
            f"{row['cubes_attended_mean']:.1f} / {row['cubes_attended_min']} / {row['cubes_attended_max']}",
            f"{row['attn_density']:.1%}",
            f"{row['ffn_kept']}/{row['ffn_total']}"
            + (f" ({row['ffn_kept'] / row['ffn_total']:.0%})" if row["ffn_total"] else ""),
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
    reuse = "reused video prefill" if result["video_prefill_reused"] else f"video prefill {result['video_prefill_seconds']:.2f} s"
    table.caption = (table.caption or "") + f"\nprefill {result['prefill_seconds']:.2f} s ({reuse}), " + (
        f"{result['generated_tokens']} tokens in {result['decode_seconds']:.2f} s"
    )
    return table
