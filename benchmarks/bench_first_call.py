"""First-call time of the FA4 block-sparse attention in a fresh process, twice (issue 12, part 3).

FA4 compiles its kernel on the first call (4-5 s on an H200) and never again for a new sequence
length; adaspark turns on FA4's on-disk cache of compiled kernels (attention/fa4.py), so a second
process should load it instead of compiling. This script runs itself as two child processes and
prints, for each, the import time and the first and second call (a new length) of `attention_fa4`.

Usage (GPU machine with flash-attn-4): PYTHONPATH=src python3 benchmarks/bench_first_call.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

CHILD = "--child"


def child() -> None:
    t0 = time.perf_counter()
    import torch

    from _common import wall_seconds

    from adaspark_cli.attention.fa4 import attention_fa4, fa4_available
    from adaspark_cli.cubes import VideoSpan, cube_layout
    from adaspark_cli.cubes.plan import build_plan
    from adaspark_cli.selection import random_selection

    assert fa4_available()
    out = {"import_s": time.perf_counter() - t0, "cache_dir": os.environ.get("FLASH_ATTENTION_CUTE_DSL_CACHE_DIR")}
    for name, frames in (("first_call_s", 64), ("new_length_s", 128)):
        layout = cube_layout([VideoSpan(64, (frames, 16, 16))], 64 + frames * 256 + 64, (2, 8, 8))
        L = layout.seq_len
        q = torch.randn(28, L, 128, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(4, L, 128, device="cuda", dtype=torch.bfloat16)
        plan = build_plan(layout, L, L, device="cuda")
        sel = random_selection(plan, 4, 0.3)
        out[name] = wall_seconds(lambda: attention_fa4(q, k, k, plan, sel, 128**-0.5), q.device)
    print(json.dumps(out), flush=True)


def main() -> None:
    for run in (1, 2):
        res = subprocess.run([sys.executable, __file__, CHILD], capture_output=True, text=True, env=os.environ)
        print(f"process {run}: {res.stdout.strip() or res.stderr[-2000:]}", flush=True)


if __name__ == "__main__":
    child() if CHILD in sys.argv else main()
