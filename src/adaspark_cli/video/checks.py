"""Checks of the video arguments and paths, and the one-line `VideoError`s every reader raises."""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import VideoError


def video_error(message: str) -> VideoError:
    """A VideoError whose message is one line even if a path or FFmpeg text held line breaks."""
    return VideoError(" ".join(message.splitlines()).strip())


# "https://host/v.mp4" arrives as Path("https:/host/v.mp4"): pathlib folds the double slash
_URL = re.compile(r"^(?:https?|ftp|ftps|rtsp|rtmp|rtmps|srt|udp|tcp|s3|gs|file):/", re.IGNORECASE)


def check_path(path: str | Path) -> Path:
    if isinstance(path, str) and not path.strip():
        raise video_error("video path is empty; pass the path of a video file")
    try:
        p = Path(path)
    except TypeError as exc:
        raise video_error(f"video path must be a str or Path, got {type(path).__name__}; pass a file path") from exc
    if not p.exists():
        if _URL.match(str(path)):
            url = re.sub(r"^([A-Za-z]+):/+", r"\1://", str(path))
            raise video_error(f"URLs are not supported: {url}; download the video first and pass the file's path")
        raise video_error(f"video not found: {p}; check the path")
    if p.is_dir():
        raise video_error(f"video path is a directory: {p}; pass a video file, not a folder")
    if not p.is_file():
        raise video_error(f"video path is not a regular file: {p}; pass a video file")
    try:
        size = p.stat().st_size
    except OSError as exc:
        raise video_error(f"cannot read {p} ({exc.strerror or exc}); check the file's permissions") from exc
    if size == 0:
        raise video_error(f"video file is empty (0 bytes): {p}; re-download or re-export it")
    return p


# decord prefixes its C++ errors with "[13:04:42] /project/src/video/ffmpeg/filter_graph.cc:55: "
_DECORD_LOG_PREFIX = re.compile(r"\[\d\d:\d\d:\d\d\]\s*\S+\.(?:cc|h|cpp):\d+:\s*")


def reason(exc: BaseException) -> str:
    """FFmpeg's or decord's short reason ("Invalid data found when processing input"), one line."""
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    text = _DECORD_LOG_PREFIX.sub("", str(text))
    text = " ".join(text.split())
    return text if len(text) <= 160 else text[:157] + "..."
