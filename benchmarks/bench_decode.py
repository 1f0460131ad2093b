"""Decode a long H.264 video to 256 frames with each backend: wall time and peak RSS, fresh processes.

    python benchmarks/bench_decode.py [--video PATH] [--runs 3]

Without --video it writes (once) /tmp/adaspark-bench/ten_min.mp4: 10 minutes of 854x480 at 30 fps,
a keyframe every 250 frames, a drifting blocky texture (x264 ultrafast, crf 28).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np

CHILD = """
import json, resource, sys
from adaspark_cli.video import decode_video
v = decode_video(sys.argv[1], fps=2.0, max_frames=256, backend=sys.argv[2])
print(json.dumps({"backend": v.backend, "frames": len(v.indices), "seconds": v.seconds,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def write_long_video(path: Path, *, width: int = 854, height: int = 480, fps: int = 30, seconds: int = 600) -> Path:
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    texture = rng.integers(40, 215, size=(height // 16 + 1, (width + 400) // 16 + 1, 3), dtype=np.uint8)
    texture = texture.repeat(16, 0).repeat(16, 1)[:height, : width + 400]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "28", "g": "250", "keyint_min": "250", "sc_threshold": "0"}
        for i in range(fps * seconds):
            x = (i * 2) % 400
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(texture[:, x : x + width]), format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", type=Path)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    video = args.video or Path("/tmp/adaspark-bench/ten_min.mp4")
    if not video.exists():
        write_long_video(video)
    print(f"date {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}, "
          f"python {platform.python_version()}; command: {' '.join(sys.argv)}")
    print(f"video {video} ({video.stat().st_size / 1e6:.1f} MB)")
    print("| backend | chosen | frames | seconds (median) | peak RSS MB (max) |\n|---|---|---|---|---|")
    for backend in ("auto", "decord", "pyav"):
        runs = [json.loads(subprocess.run([sys.executable, "-c", CHILD, str(video), backend], check=True,
                                          capture_output=True, text=True).stdout) for _ in range(args.runs)]
        print(f"| {backend} | {runs[0]['backend']} | {runs[0]['frames']} | {statistics.median(r['seconds'] for r in runs):.2f} "
              f"| {max(r['peak_rss_mb'] for r in runs):.0f} |")


if __name__ == "__main__":
    main()
