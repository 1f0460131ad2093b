"""Accuracy against language-model prefill FLOPs reduction as top-p varies, from `adaspark eval --json` files.

Each file is one eval run (one model, one attn/FFN top-p pair) on the same suite. Points of one model are
joined in order of FLOPs reduction; the dense accuracy of each model (the same in every run of it, the
same weights with sparsity off) is drawn as a dashed line. Prints the points as a Markdown table.

    python benchmarks/plot_eval_curve.py docs/img/synth-small-topp-curve.png results/*.json
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path


def load_points(paths: list[str]) -> dict[str, list[dict[str, float]]]:
    by_model: dict[str, list[dict[str, float]]] = defaultdict(list)
    for p in paths:
        d = json.loads(Path(p).read_text(encoding="utf-8"))
        cfg = d["config"]
        by_model[Path(d["model"]).name].append({
            "attn_top_p": cfg["attn_top_p"], "ffn_top_p": cfg["ffn_top_p"], "items": d["items"],
            "dense": d["dense"]["accuracy"], "adaspark": d["adaspark"]["accuracy"],
            "flops_reduction": d["adaspark"]["flops_reduction"],
        })
    for points in by_model.values():
        points.sort(key=lambda q: q["flops_reduction"])
    return by_model


def main(out: str, paths: list[str]) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    by_model = load_points(paths)
    fig = Figure(figsize=(7, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    print("| model | attn top-p | FFN top-p | items | dense | AdaSpark | FLOPs cut |\n|---|---:|---:|---:|---:|---:|---:|")
    for (name, points), color in zip(sorted(by_model.items()), ("#d9480f", "#1c7ed6", "#2b8a3e")):
        xs = [100 * q["flops_reduction"] for q in points]
        ax.plot(xs, [100 * q["adaspark"] for q in points], "o-", color=color, label=f"{name} (AdaSpark)")
        for q, x in zip(points, xs):
            ax.annotate(f"{q['attn_top_p']:g}/{q['ffn_top_p']:g}", (x, 100 * q["adaspark"]), fontsize=7,
                        textcoords="offset points", xytext=(3, 4))
            print(f"| {name} | {q['attn_top_p']:g} | {q['ffn_top_p']:g} | {q['items']} | {q['dense']:.1%} | "
                  f"{q['adaspark']:.1%} | {q['flops_reduction']:.1%} |")
        ax.axhline(100 * points[0]["dense"], color=color, linestyle="--", linewidth=1, label=f"{name} (dense)")
    accs = [100 * q[k] for points in by_model.values() for q in points for k in ("dense", "adaspark")]
    ax.set_ylim(min(accs) - 5, max(accs) + 5)  # a few points either side: one item of a small suite is ~1 point
    items = max(q["items"] for points in by_model.values() for q in points)
    ax.set_xlabel("language-model prefill FLOPs reduction (%)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"accuracy against FLOPs reduction, {items} items (one item = {100 / items:.1f} points)\n"
                 "labels: attention / FFN top-p", fontsize=10)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(out)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: plot_eval_curve.py OUT.png EVAL.json [EVAL.json ...]")
    main(sys.argv[1], sys.argv[2:])
