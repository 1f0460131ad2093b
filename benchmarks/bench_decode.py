"""Decode a long H.264 video to 256 frames with each backend: wall time and peak RSS, fresh processes.

    python benchmarks/bench_decode.py [--video PATH] [--runs 3]

Rows: `decode_video` with each backend (full-size frames, one array), and the pipelined reader
(`adaspark_cli.video.stream`: chunks of 32 frames decoded by 1 or 2 worker threads, resized in the decoder
to the processor's target size for --max-pixels 448*448, i.e. 588x336 for 854x480). The stream rows import
torch (its resize), as the real pipeline has anyway; "RSS before" is the process before decoding starts.

Without --video it writes (once) /tmp/adaspark-bench/ten_min.mp4: 10 minutes of 854x480 at 30 fps,
a keyframe every 250 frames, a drifting blocky texture (x264 ultrafast, crf 28).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
from pathlib import Path

from _common import environment, write_panning_video

CHILD = """
import json, resource, sys, time
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
backend = sys.argv[2]
if backend.startswith("stream"):
    import torch, torchvision  # noqa: F401  (loaded in the real pipeline before decoding starts)
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import smart_resize
    from adaspark_cli.video.stream import open_video_stream
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    s = open_video_stream(sys.argv[1], fps=2.0, max_frames=256)
    size = smart_resize(s.height, s.width, factor=28, min_pixels=4 * 28 * 28, max_pixels=448 * 448)
    frames = sum(len(c.frames) for c in s.chunks(size=size, chunk_frames=32, workers=int(backend[-1])))
    out = {"backend": backend, "frames": frames, "seconds": time.perf_counter() - start, "size": list(size)}
else:
    from adaspark_cli.video import decode_video
    v = decode_video(sys.argv[1], fps=2.0, max_frames=256, backend=backend)
    out = {"backend": v.backend, "frames": len(v.indices), "seconds": v.seconds, "size": list(v.frames.shape[1:3])}
ru = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({**out, "peak_rss_mb": ru.ru_maxrss / 1024, "rss_before_mb": before,
                  "cpu_s": ru.ru_utime + ru.ru_stime}))
"""


def write_long_video(path: Path, *, width: int = 854, height: int = 480, fps: int = 30, seconds: int = 600) -> Path:
    """The issue's test file: a keyframe every 250 frames exactly (x264 ultrafast, crf 28)."""
    return write_panning_video(path, width=width, height=height, fps=fps, frames=fps * seconds, shift=2,
                               options={"g": "250", "keyint_min": "250", "sc_threshold": "0"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", type=Path)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--backends", default="auto,decord,pyav,stream1,stream2",
                        help="comma-separated: decode_video backends, stream1/stream2 (pipelined, 1 or 2 workers)")
    args = parser.parse_args()
    video = args.video or Path("/tmp/adaspark-bench/ten_min.mp4")
    if not video.exists():
        write_long_video(video)
    env = environment(False, packages=("av", "decord2"), cpu_note=platform.processor() or platform.machine())
    print(", ".join(f"{k} {v}" for k, v in env.items()))
    print(f"video {video} ({video.stat().st_size / 1e6:.1f} MB)")
    print("| backend | chosen | frames | frame size | seconds (median; min-max) | peak RSS MB (max) | RSS before MB |")
    print("|---|---|---|---|---|---|---|")
    backends = args.backends.split(",")
    runs: dict[str, list[dict]] = {b: [] for b in backends}
    for _ in range(args.runs):  # interleaved, so load changes on a shared machine hit every row alike
        for backend in backends:
            runs[backend].append(json.loads(subprocess.run([sys.executable, "-c", CHILD, str(video), backend], check=True,
                                                           capture_output=True, text=True).stdout))
    for backend, rs in runs.items():
        secs = [r["seconds"] for r in rs]
        print(f"| {backend} | {rs[0]['backend']} | {rs[0]['frames']} | {rs[0]['size'][1]}x{rs[0]['size'][0]} "
              f"| {statistics.median(secs):.2f}; {min(secs):.2f}-{max(secs):.2f} "
              f"| {max(r['peak_rss_mb'] for r in rs):.0f} | {max(r['rss_before_mb'] for r in rs):.0f} |")


if __name__ == "__main__":
    main()
