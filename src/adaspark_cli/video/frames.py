"""Decoding with PyAV as a player does: frames in display order, damaged packets skipped, wanted frames
picked by pts (a frame lost in a damaged stretch replaced by the nearest decodable one), and RGB conversion."""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import VideoError
from .checks import reason, video_error
from .probe import open_container, video_stream

# A damaged stretch is skipped while at most this fraction of the sampled frames falls in one; past it
# the video is mostly unreadable and an answer about it would be about the replacements.
MAX_REPLACED_FRACTION = 0.5


def decoded_frames(container: Any, stream: Any) -> Iterator[Any]:
    """The frames of `stream` in display order, leaving out packets the decoder rejects, as a player does.

    The demuxer breaking off (a cut or garbled container) ends the stream there.
    """
    import av

    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except av.error.FFmpegError:
            return
        try:
            frames = stream.decode(packet)
        except av.error.FFmpegError:  # InvalidDataError: a damaged packet
            continue
        yield from frames


@contextmanager
def opened(path: Path, threads: str) -> Iterator[tuple[Any, Any]]:
    """The container and its video stream, decoding with FFmpeg thread type `threads` ("AUTO": frame and slice
    threads; "NONE"), closed afterwards. A failure outside decoding proper (conversion, an odd frame) is one line."""
    container = open_container(path)
    try:
        stream = video_stream(container, path)
        stream.codec_context.thread_type = threads
        yield container, stream
    except VideoError:
        raise
    except Exception as exc:
        raise video_error(f"video is corrupt: {path} cannot be decoded ({reason(exc)}); re-encode it") from exc
    finally:
        container.close()


def read_counted(
    path: Path, wanted: list[int], convert: Callable[[Any, tuple[int, int]], np.ndarray]
) -> tuple[list[np.ndarray], int]:
    """Packets without usable pts: decode from the start counting frames (a damaged packet is an error, as
    skipping it would shift the count). Returns the wanted frames found (a repeated index repeats the frame;
    `convert` gets each frame and the first frame's size) and the frames counted before the stream ended."""
    out: list[np.ndarray] = []
    count = 0
    size: tuple[int, int] | None = None
    container = open_container(path)
    try:
        stream = video_stream(container, path)
        stream.codec_context.thread_type = "AUTO"
        for frame in container.decode(stream):
            size = size or (frame.width, frame.height)
            while len(out) < len(wanted) and wanted[len(out)] == count:
                out.append(out[-1] if out and wanted[len(out) - 1] == count else convert(frame, size))
            if len(out) == len(wanted):
                break
            count += 1
    except VideoError:
        raise
    except Exception as exc:  # av.error.InvalidDataError from a damaged packet, ...
        raise video_error(
            f"video is corrupt: {path} cannot be decoded after frame {count} ({reason(exc)}); re-encode it"
        ) from exc
    finally:
        container.close()
    return out, count


def to_rgb(frame: Any, rotation: int, size: tuple[int, int] | None = None) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a decoded frame at coded size `size` (width, height), turned `rotation` degrees."""
    if size is not None and (frame.width, frame.height) != size:  # resolution changed mid-stream: keep the first
        frame = frame.reformat(width=size[0], height=size[1])
    image = frame.to_ndarray(format="rgb24")
    return np.ascontiguousarray(np.rot90(image, rotation // 90)) if rotation else image


class Picker:
    """Collects the wanted frames from decoded frames arriving in display order, each identified by its pts.

    A wanted pts that never arrives lies in a damaged stretch: it gets the nearer in time of the last frame
    decoded before it and the first one after (a player shows one of them there). `lost` counts the frames
    of `timeline_pts` the decoder skipped from `start_pts` (where decoding began, None after a seek: what a seek
    skips is not lost) to the last frame seen.
    """

    def __init__(
        self, wanted: list[int], timeline_pts: list[int], start_pts: int | None, convert: Callable[[Any], np.ndarray]
    ) -> None:
        self.pending = sorted((pts, slot) for slot, pts in enumerate(wanted))
        self.chosen = list(wanted)  # pts that fills each slot
        self.images: list[np.ndarray | None] = [None] * len(wanted)
        self.replaced = 0
        self.lost = 0
        self.first_pts: int | None = None  # of the first frame that decoded
        self._timeline = timeline_pts
        self._known = set(timeline_pts)
        # frames after this pts and before the next decoded frame are lost
        self._last_pts: int | None = None if start_pts is None else start_pts - 1
        self._prev: tuple[int, Any] | None = None
        self._convert = convert
        self._converted: dict[int, np.ndarray] = {}

    @property
    def done(self) -> bool:
        return not self.pending

    def offer(self, frame: Any) -> bool:
        """Take `frame` if it is wanted or the nearest to a skipped wanted frame; True once all are filled."""
        pts = frame.pts
        # no pts, a pts no packet had (MPEG-PS right after a seek), or the decoder repeating itself after damage
        if pts is None or pts not in self._known or (self._last_pts is not None and pts <= self._last_pts):
            return self.done
        if self.first_pts is None:
            self.first_pts = pts
        if self._last_pts is not None:
            self.lost += self._between(self._last_pts, pts)
        while self.pending and self.pending[0][0] <= pts:
            want, slot = self.pending.pop(0)
            if want == pts:
                self._fill(slot, pts, frame)
            else:
                before = self._prev
                use = before if before is not None and want - before[0] <= pts - want else (pts, frame)
                self._fill(slot, *use)
                self.replaced += 1
        self._prev = (pts, frame)
        self._last_pts = pts
        return self.done

    def read(self, frames: Iterable[Any]) -> Picker:
        """Offer `frames` (display order) until every wanted frame is filled, else `finish` at their end."""
        for frame in frames:
            if self.offer(frame):
                return self
        self.finish()
        return self

    def finish(self) -> bool:
        """The stream ended: the frames still wanted get the last frame decoded. False if there was none."""
        if self._prev is None:
            return self.done
        self.lost += self._between(self._prev[0], None)
        while self.pending:
            _, slot = self.pending.pop(0)
            self._fill(slot, *self._prev)
            self.replaced += 1
        return True

    def _between(self, after: int, before: int | None) -> int:
        lo = bisect.bisect_right(self._timeline, after)
        hi = len(self._timeline) if before is None else bisect.bisect_left(self._timeline, before)
        return max(0, hi - lo)

    def _fill(self, slot: int, pts: int, frame: Any) -> None:
        if pts not in self._converted:
            self._converted = {k: v for k, v in self._converted.items() if k >= pts}  # older ones are never reused
            self._converted[pts] = self._convert(frame)
        self.images[slot] = self._converted[pts]
        self.chosen[slot] = pts

    def frames(self) -> np.ndarray:
        return np.stack(self.images)  # type: ignore[arg-type]


def damage_note(path: Path, replaced: int, sampled: int, lost: int) -> str:
    """The note for frames skipped in damaged stretches, e.g. "clip.mp4: skipped 12 damaged frames; ..."."""
    skipped = f"{path.name}: skipped {lost} damaged frame{'s' if lost != 1 else ''}"
    if not replaced:
        return f"{skipped}; none of the {sampled} sampled frames was among them"
    return f"{skipped}; {replaced} of {sampled} sampled frames fell there and are the nearest decodable frames instead"


def check_replaced(path: Path, replaced: int, sampled: int, lost: int) -> None:
    """Refuse a video whose sampled frames mostly fall in damaged stretches (see MAX_REPLACED_FRACTION)."""
    if replaced > MAX_REPLACED_FRACTION * sampled:
        raise video_error(
            f"video is corrupt: {path} has {lost} damaged frames, and {replaced} of {sampled} sampled frames"
            " cannot be decoded; re-download or re-encode it"
        )
