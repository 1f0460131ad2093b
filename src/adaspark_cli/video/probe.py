"""One look at a video file before decoding: one open, its header, and one demux pass over its packets.

`probe_video` reads the header (frame rate, frame count, coded size, container) and then demuxes every packet
of the video stream once, without decoding (0.1 s for a 10-minute 854x480 H.264 file): every packet's pts,
dts, keyframe flag and duration in decode order (`Scan`), from which the sampling plan (`plan.py`) and the
pipelined reader's seek points (`packets.py`) are built. The same pass finds the keyframe interval (packet
flags) and the display rotation (the first frame that decodes: FFmpeg attaches the stream's display matrix
to every frame).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import VideoError
from .checks import reason, video_error

# A header may over-count a stream by a frame or two (muxer rounding, a dropped trailing frame);
# more missing frames than this means the file was cut short or damaged.
_MIN_SLACK_FRAMES = 2
_SLACK_FRACTION = 0.02

# Frames smaller than one merged vision patch (2 x 14 px) on a side carry almost nothing for the model.
_TINY_SIDE = 28

# Containers with a seek index, searched by pts. Without one (MPEG-TS, MPEG-PS) FFmpeg seeks by a binary
# search over dts, and decord 3.4 returns wrong frames without an error: on a 48-frame H.264 .ts it drops the
# first group of pictures and repeats the last frame; on a 72-frame MPEG-2 .mpg it returns frames 3, 9, 3,
# 9, ... for 3, 9, 15, 21, ... So decord reads only these.
INDEXED_FORMATS = {"mov", "mp4", "matroska", "webm", "avi"}

# FFmpeg demuxers of single pictures: a JPEG or PNG renamed .mp4 opens as a one-frame "video".
_STILL_FORMATS = ("image2", "image2pipe")

_KEYFRAME_SCAN = 1000  # packets looked at for the second keyframe and the first frame's rotation


@dataclass(frozen=True)
class Probe:
    fps: float
    header_frames: int  # frame count the container stores, 0 when it stores none (webm, mkv)
    expected_frames: int | None  # header_frames, else header duration * fps, else None
    pixel_format_known: bool  # False when FFmpeg's stream probe decoded no frame (an empty stream)
    keyframe_interval: int | None = None  # frames between the first two keyframes; None: none within the scan
    rotation: int = 0  # degrees counterclockwise to turn decoded frames (display matrix): 0, 90, 180, 270
    format_name: str = ""  # FFmpeg's demuxer, e.g. "mov,mp4,m4a,3gp,3g2,mj2", "mpegts"
    width: int = 0  # coded size, before rotation
    height: int = 0

    @property
    def indexed(self) -> bool:
        """Whether the container has a seek index (see INDEXED_FORMATS): decord reads it right, and a seek
        by a keyframe's pts finds that keyframe."""
        return bool(INDEXED_FORMATS & set(self.format_name.split(",")))

    def notes(self, path: Path) -> tuple[str, ...]:
        """What the user should know about this file before its frames reach the model."""
        notes = []
        if self.rotation:
            notes.append(f"{path.name}: turned {self.rotation} degrees counterclockwise, as its display matrix asks")
        if self.width and self.height and min(self.width, self.height) < _TINY_SIDE:
            notes.append(
                f"{path.name} is only {self.width}x{self.height} pixels; frames are enlarged to the model's minimum"
                " size, so there is little for it to see"
            )
        return tuple(notes)


def open_container(path: Path) -> Any:
    try:
        import av
    except ImportError as exc:  # a broken install, not the user's video
        raise video_error("PyAV (the av package, adaspark's video reader) is not installed; pip install av") from exc
    try:
        return av.open(str(path), mode="r")
    except PermissionError as exc:
        raise video_error(f"cannot read {path} (permission denied); check the file's permissions") from exc
    except Exception as exc:  # av.error.* or OSError: FFmpeg could not parse it as a media file
        raise video_error(
            f"cannot open {path} as a video ({reason(exc)}); it is not a video or it is truncated or corrupt"
            " - check that it plays, then re-download or re-encode it"
        ) from exc


def video_stream(container: Any, path: Path) -> Any:
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        raise video_error(
            f"no video stream in {path} (streams: {', '.join(kinds)}); pass a file that contains video"
        )
    return container.streams.video[0]


def _frame_rate(stream: Any) -> float | None:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and rate > 0:
            return float(rate)
    return None


def _stream_duration(container: Any, stream: Any) -> float | None:
    """Seconds of the video stream from the header, or None when the header does not say."""
    if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
        return float(stream.duration * stream.time_base)
    tag = stream.metadata.get("DURATION") or stream.metadata.get("duration")  # Matroska per-track tag
    if tag:
        try:
            h, m, s = tag.split(":")
            return int(h) * 3600 + int(m) * 60 + float(s)
        except ValueError:
            pass
    # the container's duration is the longest stream's; only trust it for a video-only file
    if container.duration is not None and container.duration > 0 and len(container.streams) == 1:
        return container.duration / 1_000_000
    return None


def _is_still_image(container: Any) -> bool:
    name = str(container.format.name or "")
    return name in _STILL_FORMATS or name.endswith("_pipe")  # jpeg_pipe, png_pipe, webp_pipe, ...


@dataclass(frozen=True)
class Scan:
    """What one demux pass (no decoding) tells about the video stream, per packet in DECODE order."""

    pts: list[int | None]
    dts: list[int | None]
    keys: list[bool]
    durations: list[int]  # packet durations in time_base units, 0 when unknown
    time_base: float  # seconds per pts unit; 0.0 when the stream has none
    width: int
    height: int


def probe_video(path: Path) -> tuple[Probe, Scan]:
    """The header's facts and every packet's timing, from one open and one demux pass.

    Raises the one-line errors for a file that is no readable video: not a media file, a still image, no
    video stream, an unknown frame rate, a corrupt container, no packets."""
    container = open_container(path)
    try:
        probe, stream = _header(container, path)
        scan, interval, rotation = _demux(container, stream, path)
    finally:
        container.close()
    return dataclasses.replace(probe, keyframe_interval=interval, rotation=rotation), scan


def _header(container: Any, path: Path) -> tuple[Probe, Any]:
    """What the header says (no packet read yet), and the video stream."""
    try:
        if _is_still_image(container):
            raise video_error(
                f"{path} is a still image ({container.format.name}), not a video; pass a video file, or make a"
                " clip of the picture first, e.g. ffmpeg -loop 1 -t 2 -i IMAGE clip.mp4"
            )
        stream = video_stream(container, path)
        header_frames = max(0, int(stream.frames or 0))
        duration = _stream_duration(container, stream)
        fps = _frame_rate(stream)
        if fps is None and header_frames and duration:
            fps = header_frames / duration
        if fps is None or not math.isfinite(fps) or fps <= 0:
            raise video_error(
                f"cannot tell the frame rate of {path}; re-encode it at a constant rate,"
                " e.g. ffmpeg -i IN -r 30 OUT.mp4"
            )
        expected = header_frames or (round(duration * fps) if duration else None)
        probe = Probe(
            fps=fps,
            header_frames=header_frames,
            expected_frames=expected or None,
            pixel_format_known=stream.codec_context.pix_fmt is not None,
            format_name=str(container.format.name or ""),
            width=int(stream.codec_context.width or 0),
            height=int(stream.codec_context.height or 0),
        )
    except VideoError:
        raise
    except Exception as exc:
        raise video_error(f"cannot read the header of {path} ({reason(exc)}); re-download or re-encode it") from exc
    return probe, stream


def _demux(container: Any, stream: Any, path: Path) -> tuple[Scan, int | None, int]:
    """Every packet of the video stream (decode order), the frames between the first two keyframes (None:
    no second one within the first packets) and the display rotation of the first frame that decodes (0 when
    none does there). A container that breaks off keeps the packets before."""
    pts: list[int | None] = []
    dts: list[int | None] = []
    keys: list[bool] = []
    durations: list[int] = []
    first_key: int | None = None
    interval: int | None = None
    rotation: int | None = None
    try:
        width, height = int(stream.codec_context.width or 0), int(stream.codec_context.height or 0)
        time_base = float(stream.time_base) if stream.time_base else 0.0
        try:
            for packet in container.demux(stream):
                seen = len(pts)
                size, key = packet.size, bool(packet.is_keyframe)
                if size:
                    pts.append(packet.pts)
                    dts.append(packet.dts)
                    keys.append(key)
                    durations.append(int(packet.duration or 0))
                if seen >= _KEYFRAME_SCAN:
                    continue
                if rotation is None:
                    rotation = _first_rotation(stream, packet)
                if size and key and interval is None:
                    if first_key is None:
                        first_key = seen
                    else:
                        interval = seen - first_key
        except Exception:  # the container breaks off here (a damaged or cut file): the packets so far count
            if not pts:
                raise
    except VideoError:
        raise
    except Exception as exc:
        raise video_error(f"video is corrupt: cannot read {path} ({reason(exc)}); re-download or re-encode it") from exc
    if not pts:
        raise no_frames_error(path)
    scan = Scan(pts=pts, dts=dts, keys=keys, durations=durations, time_base=time_base, width=width, height=height)
    return scan, interval, rotation or 0


def _first_rotation(stream: Any, packet: Any) -> int | None:
    """The quarter turn of the first frame `packet` decodes to, or None while no frame has come out."""
    try:
        frames = stream.decode(packet)
    except Exception:  # a damaged packet: try the next one
        return None
    return _quarter_turns(frames[0].rotation) * 90 if frames else None


def _quarter_turns(degrees: float) -> int:
    """FFmpeg's display rotation (counterclockwise degrees, -180..180) as 0-3 quarter turns, as decord rounds."""
    return int(math.floor(degrees / 90 + 0.5)) % 4


def _slack(expected: int) -> int:
    return max(_MIN_SLACK_FRAMES, int(expected * _SLACK_FRACTION))


def check_frame_count(path: Path, probe: Probe, counted: int) -> None:
    """Frames counted from packets: none is an empty stream, fewer than the header promises is a cut file."""
    if counted < 1:
        raise no_frames_error(path, probe.expected_frames)
    expected = probe.expected_frames
    if expected is not None and counted < expected - _slack(expected):
        raise truncated_error(path, expected, counted)


def truncated_error(path: Path, expected: int, found: int) -> VideoError:
    return video_error(
        f"video is truncated or corrupt: {path} (header says {expected} frames, only {found} readable);"
        " re-download or re-encode it"
    )


def no_frames_error(path: Path, expected: int | None = None) -> VideoError:
    claim = f" (header says {expected} frames)" if expected else ""
    return video_error(f"no decodable frames in {path}{claim}; the video stream is empty or damaged - re-encode it")
