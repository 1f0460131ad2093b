"""`profile --plot`: per-layer attention density and FFN-keep bars, and a cube-selection heatmap.

matplotlib is an optional extra (`pip install 'adaspark-cli[plot]'`), imported only here and only when
a plot is drawn. The figure is drawn with the object-oriented API on an Agg canvas, so no global
backend is switched and no window opens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import AdasparkError

INSTALL_HINT = "pip install 'adaspark-cli[plot]'"


def matplotlib_figure() -> tuple[Any, Any]:
    """matplotlib's Figure and Agg canvas classes, imported only for --plot."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise AdasparkError(f"--plot needs matplotlib, which is not installed; run: {INSTALL_HINT}") from None
    return Figure, FigureCanvasAgg


def check_plot_path(path: str | Path) -> Path:
    """Fail early (before a long profile) on a bad --plot file name, a missing folder or no matplotlib."""
    path = Path(path)
    if path.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise AdasparkError(f"--plot {path}: use a .png, .svg or .pdf file name")
    if not path.parent.is_dir():
        raise AdasparkError(f"--plot {path}: the folder {path.parent} does not exist")
    matplotlib_figure()
    return path


def plot_profile(report: dict[str, Any], path: str | Path) -> Path:
    """Draw `report` (a `ProfileResult.to_json()` object) to `path` (.png, .svg or .pdf); returns the path.

    Top: attention density and FFN rows kept per layer (dense layers drawn at 1.0, hatched).
    Bottom: for the report's selection layer, the fraction of (video query, KV head) pairs that picked
    each cube, time slabs down and cubes of a slab (row-major over the frame) across.
    """
    path = check_plot_path(path)
    Figure, FigureCanvasAgg = matplotlib_figure()
    layers = report["layers"]
    selection = report.get("selection")
    fig = Figure(figsize=(9, 7.5 if selection else 3.5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2 if selection else 1, 1, squeeze=False)[:, 0]
    _bars(axes[0], layers, report)
    if selection:
        _heatmap(fig, axes[1], selection)
    try:
        fig.savefig(path, dpi=120)
    except OSError as exc:
        raise AdasparkError(f"--plot {path}: cannot write the file ({exc.strerror or exc})") from None
    return path


def _bars(ax: Any, layers: list[dict[str, Any]], report: dict[str, Any]) -> None:
    idx = [row["layer"] for row in layers]
    density = [row["attn_density"] for row in layers]
    keep = [row["ffn_kept"] / row["ffn_total"] if row["ffn_total"] else 1.0 for row in layers]
    hatch = ["" if row["sparse"] else "//" for row in layers]
    width = 0.4
    for offset, values, label in ((-width / 2, density, "attention density"), (width / 2, keep, "FFN rows kept")):
        bars = ax.bar([i + offset for i in idx], values, width, label=label)
        for bar, h in zip(bars, hatch):
            bar.set_hatch(h)
    ax.set_xlabel("layer (hatched: dense)")
    ax.set_ylabel("fraction of dense")
    ax.set_ylim(0, 1.05)
    ax.set_xticks(idx)
    flops = report.get("flops") or {}
    cfg = report.get("config") or {}
    title = f"{report.get('video_tokens', '?')} video tokens, {report.get('cubes', '?')} cubes"
    if cfg:
        title += f"; cube {'x'.join(map(str, cfg['cube']))}, " + (
            "per-layer top-p" if cfg.get("layer_top_p") else f"attn p {cfg['attn_top_p']}, ffn p {cfg['ffn_top_p']}"
        )
    if flops:
        title += f"; {flops['reduction']:.1%} fewer prefill FLOPs"
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right", fontsize=8)


def _heatmap(fig: Any, ax: Any, selection: dict[str, Any]) -> None:
    import numpy as np

    data = np.array([[np.nan if v is None else v for v in row] for row in selection["fraction"]], dtype=float)
    if data.size == 0:
        ax.set_axis_off()
        return
    image = ax.imshow(data, aspect="auto", interpolation="nearest", vmin=0.0, vmax=1.0, cmap="viridis")
    rows, cols = selection["space_grid"]
    ct, ch, cw = selection["cube"]
    ax.set_title(
        f"layer {selection['layer']}: share of video queries that selected each cube "
        f"(blank: never a candidate)",
        fontsize=10,
    )
    ax.set_xlabel(f"space: cube (row, col) of a {rows}x{cols} grid of {ch}x{cw}-token cubes")
    xstep = max(1, data.shape[1] // 32)
    xticks = list(range(0, data.shape[1], xstep))
    ax.set_xticks(xticks)
    ax.set_xticklabels([f"{i // cols},{i % cols}" for i in xticks], fontsize=7, rotation=90)
    starts = selection.get("slab_start_s") or []
    ax.set_ylabel(f"time: slab of {2 * ct} frames" + (" (start, s)" if starts else ""))
    step = max(1, data.shape[0] // 20)
    ticks = list(range(0, data.shape[0], step))
    ax.set_yticks(ticks)
    if starts:
        ax.set_yticklabels([f"{starts[i]:.2f}" for i in ticks], fontsize=7)
    fig.colorbar(image, ax=ax, label="selected / could select")
