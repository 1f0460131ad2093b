"""Whether a checkpoint's dense misses on an evaluated suite come from the video codec.

For each item a run (`eval_checkpoints.py`'s NAME.json, or `adaspark eval --json`) got wrong with
sparsity off, the model answers three times:
- from the suite's H.264 file, decoded as `ask` does;
- from the frames the generator renders in memory, as training sees them;
- from those frames after H.264's 4:2:0 chroma subsampling, simulated.

If the last two answers are right, the codec is the cause. The answers are printed one item a line.

Usage:  python benchmarks/check_codec_misses.py SUITE_DIR RUN.json MODEL [--task retrieval]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np

import _common  # noqa: F401  (puts src/ on the path)

from adaspark_cli.qa import load_video_qa
from adaspark_cli.synth import render_frames, sample_scene
from adaspark_cli.video import decode_video


def chroma_420(frames: np.ndarray) -> np.ndarray:
    """RGB frames with their chroma averaged over 2x2 pixels and spread back (BT.601), as H.264's 4:2:0 keeps it."""
    f = frames.astype(np.float32)
    y = 0.299 * f[..., 0] + 0.587 * f[..., 1] + 0.114 * f[..., 2]
    cb, cr = (f[..., 2] - y) * 0.564, (f[..., 0] - y) * 0.713

    def halve(c: np.ndarray) -> np.ndarray:
        n, h, w = c.shape
        return c.reshape(n, h // 2, 2, w // 2, 2).mean((2, 4)).repeat(2, 1).repeat(2, 2)

    cb, cr = halve(cb), halve(cr)
    r, b = y + cr / 0.713, y + cb / 0.564
    g = (y - 0.299 * r - 0.114 * b) / 0.587
    return np.clip(np.stack([r, g, b], -1) + 0.5, 0, 255).astype(np.uint8)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("suite", type=Path)
    ap.add_argument("run", type=Path)
    ap.add_argument("model")
    ap.add_argument("--task", default="retrieval")
    args = ap.parse_args()
    suite = json.loads((args.suite / "suite.json").read_text())
    run = json.loads(args.run.read_text())
    missed = {r["id"] for r in run["results"] if r["task"] == args.task and not r["correct"]["dense"]}
    qa = load_video_qa(args.model, device="cpu").qa

    def answer(video, question: str) -> str:
        with qa.state.override(enabled=False):
            stream = qa.answer(qa.prefill_video(qa.prepare_video(video)), question, max_new_tokens=8)
            for _ in stream:
                pass
        return stream.result.answer

    for item in (it for it in suite["items"] if it["id"] in missed):
        decoded = decode_video(args.suite / item["video"], fps=suite["fps"], max_frames=item["n_frames"])
        scene = sample_scene(item["task"], item["n_frames"], item["depth"], item["seed"], size=tuple(suite["size"]),
                             fps=suite["fps"])
        rendered = np.stack(list(render_frames(scene)))
        got = [answer(dataclasses.replace(decoded, frames=f), item["question"])
               for f in (decoded.frames, rendered, chroma_420(rendered))]
        print(f"{item['id']}: expected {item['answer']}; H.264 {got[0]}, rendered {got[1]}, rendered 4:2:0 {got[2]}",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
