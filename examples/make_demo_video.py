"""Write examples/demo.mp4: a deterministic 24 s synthetic scene (H.264, 448x448, 8 fps).

A red square crosses the frame from left to right; a yellow disc appears in the top-right
corner from 10 s to 13 s; the background is a slowly drifting gray texture.

    python examples/make_demo_video.py [OUT.mp4]
"""

from __future__ import annotations

import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

SIZE, FPS, SECONDS = 448, 8, 24


def frame(i: int, texture: np.ndarray) -> np.ndarray:
    t = i / FPS
    shift = int(t * 4) % SIZE
    img = np.roll(texture, shift, axis=1).copy()
    x = int(16 + (SIZE - 96) * t / SECONDS)
    img[176:240, x : x + 64] = (220, 30, 30)
    if 10 <= t < 13:
        yy, xx = np.mgrid[:SIZE, :SIZE]
        img[(yy - 90) ** 2 + (xx - 350) ** 2 < 40**2] = (240, 220, 40)
    return img


def main(out: Path) -> None:
    rng = np.random.default_rng(0)
    texture = (rng.integers(90, 140, size=(SIZE // 16, SIZE // 16, 1)).repeat(16, 0).repeat(16, 1)).repeat(3, 2)
    texture = texture.astype(np.uint8)
    with av.open(str(out), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(FPS))
        stream.width = stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "28", "preset": "veryslow", "g": "80"}
        for i in range(FPS * SECONDS):
            video_frame = av.VideoFrame.from_ndarray(frame(i, texture), format="rgb24")
            video_frame.pts = i
            for packet in stream.encode(video_frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("demo.mp4"))
