"""Train a small Qwen2.5-VL from scratch on synthetic long-video QA, then fine-tune it with AdaSpark active.

Reproduce a bundled checkpoint (the exact command of each is in its model card)::

    python -m adaspark_cli.train --out runs/small --preset small --steps 3000 --sparse-steps 300

``--init DIR`` continues from a saved checkpoint, so a curriculum (short videos first) or a run longer
than one 10-minute device call can be split into several invocations, e.g.::

    python -m adaspark_cli.train --out runs/s1 --lengths 16,32,64 --sparse-steps 0 --time-budget 400
    python -m adaspark_cli.train --out runs/s2 --init runs/s1/dense --lengths 16,64,256,512 --time-budget 400

What the two phases do and what they write: `loop.py`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from ..synth.scene import TASKS
from .loop import train
from .presets import PRESETS, TrainConfig


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m adaspark_cli.train", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--preset", default="small", choices=sorted(PRESETS))
    d = TrainConfig()
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--sparse-steps", type=int, default=d.sparse_steps)
    p.add_argument("--batch", type=int, default=d.batch)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--sparse-lr", type=float, default=d.sparse_lr)
    p.add_argument("--warmup", type=int, default=d.warmup)
    p.add_argument("--lengths", default=",".join(map(str, d.lengths)))
    p.add_argument("--length-weights", default=None)
    p.add_argument("--tasks", default=",".join(d.tasks), help=f"task families to train on (of {', '.join(TASKS)})")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--cube", default="x".join(map(str, d.cube)))
    p.add_argument("--attn-top-p", type=float, default=d.attn_top_p)
    p.add_argument("--ffn-top-p", type=float, default=d.ffn_top_p)
    p.add_argument("--time-budget", type=float, default=None,
                   help="seconds for both phases (dense gets --dense-share of them, all without an AdaSpark phase)")
    p.add_argument("--dense-share", type=float, default=d.dense_share)
    p.add_argument("--workers", type=int, default=d.workers)
    p.add_argument("--device", default=None)
    p.add_argument("--save-dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--check-items", type=int, default=0)
    p.add_argument("--check-every", type=int, default=0, help="also check every this many dense steps")
    p.add_argument("--log-every", type=int, default=d.log_every)
    p.add_argument("--needle-share", default=None,
                   help="curriculum: training needles stay on screen for about this share of the frames (0-1; "
                        "at most 1/4 for ordering and counting); several, comma-separated: each video draws one, "
                        "0 = the held-out duration. Checks report held-out-like items and training-like ones")
    p.add_argument("--no-clutter", action="store_true",
                   help="curriculum: no distractor shapes and no decoy needles in training videos")
    p.add_argument("--look-alike", type=float, default=d.look_alike,
                   help="share (0-1) of training retrieval items redrawn until the heart and the ball are both in "
                        "the video and the question asks for one of them (the pair a checkpoint confused)")
    p.add_argument("--aux-weight", type=float, default=d.aux_weight,
                   help="dense auxiliary targets at every video token (what each token shows, what the video "
                        "has shown so far) at this weight beside the answer loss; 0 = off (train/aux.py)")
    p.add_argument("--sparse-lengths", default=None)
    p.add_argument("--sparse-batch", type=int, default=None, help="videos per AdaSpark step (default: --batch)")
    p.add_argument("--init", default=None, help="continue from this checkpoint folder (its sizes; --preset ignored)")
    p.add_argument("--no-batched-vision", action="store_true",
                   help="keep transformers' per-window vision attention loop (what the first H100 run used)")
    args = p.parse_args(argv)
    tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    if not tasks or any(t not in TASKS for t in tasks):
        p.error(f"--tasks takes a comma-separated subset of {', '.join(TASKS)}, got {args.tasks!r}")
    if not 0 <= args.look_alike <= 1:
        p.error(f"--look-alike takes a share in [0, 1], got {args.look_alike}")
    if args.look_alike and args.no_clutter:
        p.error("--look-alike needs decoys in the videos: drop --no-clutter")
    shares = None if args.needle_share is None else tuple(float(x) for x in args.needle_share.split(","))
    if shares is not None and not all(0 <= x <= 1 for x in shares):
        p.error(f"--needle-share takes shares in [0, 1], got {args.needle_share!r}")
    cfg = replace(
        d, preset=args.preset, steps=args.steps, sparse_steps=args.sparse_steps, batch=args.batch, lr=args.lr,
        sparse_lr=args.sparse_lr, warmup=args.warmup, lengths=tuple(int(x) for x in args.lengths.split(",")),
        length_weights=None if args.length_weights is None else tuple(float(x) for x in args.length_weights.split(",")),
        seed=args.seed, cube=tuple(int(x) for x in args.cube.split("x")),  # type: ignore[arg-type]
        attn_top_p=args.attn_top_p, ffn_top_p=args.ffn_top_p, time_budget_s=args.time_budget,
        dense_share=args.dense_share, workers=args.workers,
        save_dtype=args.save_dtype, check_items=args.check_items, check_every=args.check_every, log_every=args.log_every,
        needle_share=shares, clutter=not args.no_clutter, look_alike=args.look_alike, tasks=tasks,
        aux_weight=args.aux_weight,
        batched_vision=not args.no_batched_vision,
        init=args.init, sparse_batch=args.sparse_batch,
        sparse_lengths=None if args.sparse_lengths is None else tuple(int(x) for x in args.sparse_lengths.split(",")),
    )
    train(cfg, args.out, device=args.device, log=lambda s: print(s, flush=True))


if __name__ == "__main__":
    main()

