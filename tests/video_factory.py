"""Writes small real videos (and broken ones) for the video tests; a plain module, no fixtures.

Every frame carries its own index as a binary code so a test can read back WHICH source frame a
decoder returned: the top half of the frame is split into ``CODE_BITS`` vertical bars, bar b is white
when bit b (most significant first) of the frame index is set and black otherwise. Black/white bars
survive lossy coding far better than a brightness ramp, so ``read_frame_index`` is exact even for
odd sizes. The bottom half is the "pattern": a horizontal gradient that moves with i (``gradient``),
or the same gradient with per-frame grain (``noise``: costs real bits, like camera footage, for
benchmarks).
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from adaspark_cli.synth.encode import encode_frames

CODE_BITS = 12  # up to 4096 distinct frames: a 60 s 30 fps benchmark clip still fits

# codec name -> (container suffix, FFmpeg encoder, pixel format)
CODECS: dict[str, tuple[str, str, str]] = {
    "h264": (".mp4", "libx264", "yuv420p"),
    "vp9": (".webm", "libvpx-vp9", "yuv420p"),
    "mpeg4": (".avi", "mpeg4", "yuv420p"),
    "h264-ts": (".ts", "libx264", "yuv420p"),  # MPEG-TS: no index, seeks by dts, pts from 1.4 s
    "h264-mkv": (".mkv", "libx264", "yuv420p"),  # Matroska: millisecond timestamps, no frame count
    "h264-mov": (".mov", "libx264", "yuv420p"),
    "mpeg2-ps": (".mpg", "mpeg2video", "yuv420p"),  # MPEG program stream (DVD-style), no index
}


def frame_pattern(i: int, *, width: int, height: int, pattern: str = "gradient", seed: int = 0) -> np.ndarray:
    """The RGB uint8 (height, width, 3) image of source frame ``i``."""
    if not 0 <= i < 2**CODE_BITS:
        raise ValueError(f"frame index {i} does not fit in {CODE_BITS} bits")
    img = np.zeros((height, width, 3), dtype=np.uint8)
    code_h = height // 2
    bar_w = width // CODE_BITS
    for b in range(CODE_BITS):
        if (i >> (CODE_BITS - 1 - b)) & 1:
            img[:code_h, b * bar_w : (b + 1) * bar_w] = 255
    if pattern not in ("gradient", "noise"):
        raise ValueError(f"unknown pattern {pattern!r}; use 'gradient' or 'noise'")
    ramp = ((np.arange(width) * 4 + i * 8) % 256).astype(np.uint8)
    img[code_h:, :, 0] = ramp
    img[code_h:, :, 1] = ramp[::-1]
    img[code_h:, :, 2] = 128
    if pattern == "noise":
        rng = np.random.default_rng(seed * 100_003 + i)
        grain = rng.integers(-24, 25, size=(height - code_h, width, 3), dtype=np.int16)
        img[code_h:] = np.clip(img[code_h:].astype(np.int16) + grain, 0, 255).astype(np.uint8)
    return img


def read_frame_index(frame: np.ndarray) -> int:
    """The source frame index encoded by ``frame_pattern`` in a decoded (H, W, 3) RGB frame."""
    height, width = frame.shape[:2]
    code_h = height // 2
    bar_w = width // CODE_BITS
    gray = frame[: code_h, :, :].astype(np.float64).mean(axis=2)
    i = 0
    for b in range(CODE_BITS):
        # sample the middle of each bar, away from edges blurred by coding and chroma subsampling
        x0, x1 = b * bar_w + bar_w // 4, (b + 1) * bar_w - bar_w // 4
        y0, y1 = code_h // 4, code_h - code_h // 4
        bit = gray[y0:y1, x0 : max(x1, x0 + 1)].mean() > 128
        i = (i << 1) | int(bit)
    return i


def write_video(
    path: str | Path,
    *,
    codec: str = "h264",
    fps: float = 24.0,
    n_frames: int = 48,
    width: int = 96,
    height: int = 64,
    pattern: str = "gradient",
    faststart: bool = False,
    gop: int | None = None,
    rotation: int = 0,
) -> Path:
    """Encode ``n_frames`` pattern frames with PyAV; returns the path (suffix fixed by ``codec``).

    libx264 with yuv420p needs even width and height (it refuses odd ones); VP9 and MPEG-4 Part 2
    take odd sizes. ``fps`` may be fractional (29.97 is stored as 30000/1001). ``n_frames=0`` writes
    a container whose video stream has no frames (only .avi keeps such a stream visible: FFmpeg
    drops an empty mp4 track and cannot reopen an empty webm). ``faststart`` (mp4 only) puts the index
    before the data, so a truncated copy still opens and claims the full frame count. ``gop`` (h264
    and h264-ts) puts a keyframe every ``gop`` frames. ``rotation`` (degrees counterclockwise) tags the
    stream with a display matrix, as a phone does for a portrait clip (mp4, mov).
    """
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}; use one of {sorted(CODECS)}")
    suffix, encoder, pix_fmt = CODECS[codec]
    if encoder == "libx264" and (width % 2 or height % 2):
        raise ValueError(f"libx264 with {pix_fmt} needs even dimensions, got {width}x{height}")
    path = Path(path).with_suffix(suffix)
    rate = Fraction(30000, 1001) if abs(fps - 29.97) < 1e-6 else Fraction(fps).limit_denominator(1001)
    if encoder == "libx264":
        options = {"crf": "18", "preset": "veryfast"}
        if gop is not None:  # a keyframe every `gop` frames exactly
            options.update({"g": str(gop), "keyint_min": str(gop), "sc_threshold": "0"})
    elif codec == "vp9":
        options = {"crf": "20", "b:v": "0", "deadline": "realtime", "cpu-used": "8"}
    else:
        options = {"qscale": "2"}
    frames = (frame_pattern(i, width=width, height=height, pattern=pattern) for i in range(n_frames))
    return encode_frames(
        path, frames, rate=rate, width=width, height=height, encoder=encoder, pix_fmt=pix_fmt, options=options,
        container_options={"movflags": "+faststart"} if faststart and suffix == ".mp4" else None,
        rotation=rotation, start_empty=n_frames == 0,
    )


def write_vfr(
    path: str | Path, times: list[float], *, width: int = 128, height: int = 64, time_base: int = 1000
) -> Path:
    """An H.264 mp4 whose frame i is shown at ``times[i]`` seconds (variable frame rate, like a phone
    recording in low light or a screen capture); frame i carries index i as in ``write_video``."""
    path = Path(path).with_suffix(".mp4")
    tb = Fraction(1, time_base)
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.time_base = tb
        stream.time_base = tb
        stream.options = {"crf": "18", "preset": "veryfast"}
        for i, t in enumerate(times):
            frame = av.VideoFrame.from_ndarray(frame_pattern(i, width=width, height=height), format="rgb24")
            frame.pts = round(t * time_base)
            frame.time_base = tb
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def write_still_image(path: str | Path, *, width: int = 128, height: int = 64) -> Path:
    """A JPEG picture (frame 0's pattern) under whatever name ``path`` has, e.g. photo.mp4."""
    path = Path(path)
    with av.open(str(path), mode="w", format="image2") as out:
        stream = out.add_stream("mjpeg", rate=1)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuvj420p"
        frame = av.VideoFrame.from_ndarray(frame_pattern(0, width=width, height=height), format="rgb24")
        for packet in stream.encode(frame.reformat(format="yuvj420p")):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def packet_spans(path: str | Path) -> list[tuple[int, int]]:
    """(byte offset, size) of each video packet in file order (decode order), from the demuxer."""
    with av.open(str(path)) as container:
        return [(p.pos, p.size) for p in container.demux(video=0) if p.size and p.pos is not None and p.pos >= 0]


def damage_packets(src: str | Path, dst: str | Path, packets: range | list[int], *, seed: int = 0) -> Path:
    """Copy ``src`` to ``dst`` with random bytes over the payload of the given video packets (decode order):
    a damaged stretch of a file whose container (index, headers) is intact, as a bad sector or a broken
    download range makes."""
    data = bytearray(Path(src).read_bytes())
    spans = packet_spans(src)
    rng = np.random.default_rng(seed)
    for i in packets:
        pos, size = spans[i]
        data[pos : pos + size] = rng.integers(0, 256, size=size, dtype=np.uint8).tobytes()
    dst = Path(dst)
    dst.write_bytes(bytes(data))
    return dst


def write_audio_only(path: str | Path, *, seconds: float = 1.0, sample_rate: int = 16000) -> Path:
    """A file with one audio stream (a sine tone) and no video stream; suffix decides the container."""
    path = Path(path)
    codec = {".wav": "pcm_s16le", ".m4a": "aac", ".mka": "pcm_s16le"}.get(path.suffix)
    if codec is None:
        raise ValueError(f"use a .wav, .m4a or .mka path, got {path.name}")
    n = int(seconds * sample_rate)
    tone = (np.sin(2 * np.pi * 440 * np.arange(n) / sample_rate) * 8000).astype(np.int16)
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream(codec, rate=sample_rate)
        stream.layout = "mono"
        chunk = 1024
        for start in range(0, n, chunk):
            samples = tone[start : start + chunk]
            fmt = "s16" if codec == "pcm_s16le" else "fltp"
            data = samples[None, :] if fmt == "s16" else (samples.astype(np.float32) / 32768)[None, :]
            frame = av.AudioFrame.from_ndarray(data, format=fmt, layout="mono")
            frame.sample_rate = sample_rate
            frame.pts = start
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def truncate(src: str | Path, dst: str | Path, *, keep: float = 0.5) -> Path:
    """Copy the first ``keep`` fraction of ``src``'s bytes to ``dst`` (a download cut short)."""
    data = Path(src).read_bytes()
    dst = Path(dst)
    dst.write_bytes(data[: max(1, int(len(data) * keep))])
    return dst


def corrupt(src: str | Path, dst: str | Path, *, start: float = 0.05, fraction: float = 0.9, seed: int = 0) -> Path:
    """Copy ``src`` to ``dst`` with random bytes over ``fraction`` of it from offset ``start``."""
    data = bytearray(Path(src).read_bytes())
    lo = int(len(data) * start)
    hi = min(len(data), lo + int(len(data) * fraction))
    rng = np.random.default_rng(seed)
    data[lo:hi] = rng.integers(0, 256, size=hi - lo, dtype=np.uint8).tobytes()
    dst = Path(dst)
    dst.write_bytes(bytes(data))
    return dst


def write_garbage(path: str | Path, *, size: int = 4096, seed: int = 0) -> Path:
    """A file of random bytes with whatever suffix ``path`` has (e.g. a fake .mp4)."""
    path = Path(path)
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, size=size, dtype=np.uint8).tobytes())
    return path


def write_text(path: str | Path, text: str = "this is not a video\n") -> Path:
    """A plain text file (e.g. notes.mp4) to check not-a-video errors."""
    path = Path(path)
    path.write_text(text)
    return path
