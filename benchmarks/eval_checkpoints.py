"""Held-out evaluation of trained checkpoints, on the GPU (the kernels users run) or the CPU (the reference).

What `adaspark eval` does, without the CLI's dependencies (the GPU machine has no Typer), for several
checkpoints on one suite: writes the suite once (or reads it), then for each `--run NAME=MODEL[:ATTN/FFN]`
loads MODEL (its own AdaSpark block, or attention / FFN top-p overrides with the training cube), runs every
item dense and with AdaSpark (`qa.eval.evaluate`), and writes `NAME.json` (the `eval --json` object) and
a summary line per task.

Items run in a seeded shuffled order, in chunks, and `NAME.json` is rewritten after each chunk: a run cut
short by `--deadline` (seconds since the start; no chunk starts after it) or a device call's time limit
leaves a uniform sample of the suite, which the summary says. `--shard K/N` runs every N-th item of that
order from the K-th (several processes on one GPU); `--merge` then joins the shards' files into one.

Usage:
  python benchmarks/eval_checkpoints.py --suite heldout --make 1000:16,32,64,128,256:9 --device cuda \
      --run dense=models/x-dense:0.3/0.1 --run adaspark=models/x --out $OUT
  python benchmarks/eval_checkpoints.py --merge $OUT/dense.shard0.json,$OUT/dense.shard1.json --out $OUT/dense.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
import time
from pathlib import Path

import torch

import _common  # noqa: F401  (puts src/ on the path)

from adaspark_cli.attention.kernels import resolve_kernel
from adaspark_cli.qa.eval import EvalReport, ItemResult, evaluate
from adaspark_cli.qa.load import load_video_qa, pick_device
from adaspark_cli.synth.suite import make_suite, read_suite, write_suite

TRAINING_CUBE = (8, 4, 4)  # the fine-tune's cube (benchmarks/train_gpu.sh), for a dense checkpoint's training-free runs
CHUNK = 30  # items between two writes of a run's file


def parse_run(text: str) -> tuple[str, str, dict]:
    name, _, rest = text.partition("=")
    model, _, ps = rest.partition(":")
    if not name or not model:
        raise SystemExit(f"--run {text!r}: expected NAME=MODEL[:ATTN/FFN], e.g. dense=models/x-dense:0.3/0.1")
    overrides: dict = {}
    if ps:
        attn, ffn = (float(v) for v in ps.split("/"))
        overrides = {"attn_top_p": attn, "ffn_top_p": ffn, "layer_top_p": None, "cube": TRAINING_CUBE}
    return name, model, overrides


def suite_for(args: argparse.Namespace):
    if args.make is None:
        return read_suite(args.suite)
    seed, lengths, per_cell = args.make.split(":")
    spec = make_suite(int(seed), lengths=[int(n) for n in lengths.split(",")], per_cell=int(per_cell))
    t0 = time.perf_counter()
    suite = write_suite(spec, args.suite, workers=args.workers)
    print(f"suite: {len(suite.items)} items written to {args.suite} in {time.perf_counter() - t0:.1f} s",
          file=sys.stderr, flush=True)
    return suite


def summary(name: str, data: dict) -> str:
    tasks = ", ".join(f"{t} {g['dense']['accuracy']:.1%}/{g['adaspark']['accuracy']:.1%}" for t, g in data["by_task"].items())
    cut = f" of {data['planned_items']} planned" if data.get("planned_items", data["items"]) != data["items"] else ""
    dense, sparse = data["dense"]["accuracy"], data["adaspark"]["accuracy"]
    return (f"{name}: {data['items']} items{cut}, dense {dense:.1%}, AdaSpark {sparse:.1%} "
            f"at {data['adaspark']['flops_reduction']:.1%} fewer prefill FLOPs ({tasks}; dense/AdaSpark); "
            f"{data['seconds']:.0f} s")


def run_checkpoint(name: str, model: str, overrides: dict, suite, args, env: dict, out: Path) -> None:
    loaded = load_video_qa(model, device=args.device, overrides=overrides, kernel=args.kernel)
    items = order(suite.items, args.shard)
    path = out / (f"{name}.shard{args.shard[0]}.json" if args.shard else f"{name}.json")
    results: list[ItemResult] = []
    first = None
    for i in range(0, len(items), CHUNK):
        if args.deadline is not None and _common.elapsed() > args.deadline:
            break
        report = evaluate(loaded.qa, dataclasses.replace(suite, items=tuple(items[i : i + CHUNK])))
        first = first or report
        results += report.results
        data = report_json(first, results, model, env, name, planned=len(items))
        path.write_text(json.dumps(data, indent=1))
    if first is None:
        print(f"{name}: no item ran before --deadline {args.deadline:g} s; nothing written", file=sys.stderr, flush=True)
    else:
        print(summary(name, data), file=sys.stderr, flush=True)


def order(items: list, shard: tuple[int, int] | None) -> list:
    """The suite's items in a fixed shuffled order (a run cut short keeps a uniform sample); one shard's share."""
    items = list(items)
    random.Random(0).shuffle(items)
    return items[shard[0] :: shard[1]] if shard else items


def report_json(first: EvalReport, results: list[ItemResult], model: str, env: dict, name: str, planned: int) -> dict:
    report = EvalReport(suite=dict(first.suite), results=results, model=model, config=first.config, device=first.device,
                        seconds=sum(sum(r.seconds.values()) for r in results))
    return dict(report.to_json(), env=env, run=name, planned_items=planned)


def merge(paths: list[str], out: Path) -> None:
    missing = [p for p in paths if not Path(p).is_file()]  # a shard that ran no chunk before its deadline
    if missing:
        print(f"merge: no file {', '.join(missing)}; joining the others", file=sys.stderr)
    parts = [json.loads(Path(p).read_text()) for p in paths if p not in missing]
    results = [ItemResult(**r) for part in parts for r in part["results"]]
    first = EvalReport(suite=parts[0]["suite"], results=[], config=parts[0]["config"], device=parts[0]["device"])
    data = report_json(first, results, parts[0]["model"], parts[0]["env"], parts[0]["run"],
                       planned=sum(p["planned_items"] for p in parts))
    out.write_text(json.dumps(data, indent=1))
    print(summary(data["run"], data), file=sys.stderr)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--suite", help="suite folder (read, or written with --make)")
    ap.add_argument("--make", help="SEED:LENGTHS:PER_CELL to write a fresh suite of all four tasks and the default depths")
    ap.add_argument("--workers", type=int, default=8, help="processes rendering the suite's videos")
    ap.add_argument("--run", action="append", default=[], help="NAME=MODEL[:ATTN/FFN], repeatable")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--kernel", default="auto", help="the sparse attention kernel (adaspark ask --kernel); "
                    "reference on the CPU for the exact method")
    ap.add_argument("--shard", help="K/N: every N-th item of the shuffled order, from the K-th")
    ap.add_argument("--deadline", type=float, help="start no chunk of items after this many seconds")
    ap.add_argument("--merge", help="comma-separated shard files to join into --out (a file)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if args.merge:
        merge(args.merge.split(","), Path(args.out))
        return 0
    if not args.suite:
        ap.error("--suite is needed (or --merge)")
    args.shard = tuple(int(v) for v in args.shard.split("/")) if args.shard else None
    runs = [parse_run(r) for r in args.run]
    suite = suite_for(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = _common.environment(args.device != "cpu" and torch.cuda.is_available(), packages=("triton", "flash-attn-4", "av"))
    env["kernel"] = resolve_kernel(args.kernel, pick_device(args.device))
    print(json.dumps(env), file=sys.stderr, flush=True)
    for name, model, overrides in runs:
        run_checkpoint(name, model, overrides, suite, args, env, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
