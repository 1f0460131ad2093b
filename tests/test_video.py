"""Tests of adaspark_cli.video: frame sampling, both decoder backends, auto fallback, errors.

Videos are encoded on the fly by tests/video_factory.py; each frame carries its index as a binary
bar code, so every test checks WHICH source frame came back, not just how many.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest

import video_factory as vf

from adaspark_cli.errors import AdasparkError, VideoError
from adaspark_cli.video import BACKENDS, DecodedVideo, decode_video, sample_indices
from adaspark_cli.video import decode as decode_mod
from adaspark_cli.video.probe import Probe, probe_video

DECODERS = ("decord", "pyav")
NTSC = 30000 / 1001  # what a "29.97 fps" stream really runs at


def _single_line(exc: pytest.ExceptionInfo[VideoError]) -> str:
    message = str(exc.value)
    assert message and "\n" not in message and "\r" not in message, repr(message)
    return message


def _assert_matches_source(video: DecodedVideo, *, width: int, height: int) -> None:
    """Shape, dtype, and that frame k shows source frame indices[k] (read from the bar code)."""
    assert video.frames.shape == (len(video.indices), height, width, 3)
    assert video.frames.dtype == np.uint8
    assert [vf.read_frame_index(f) for f in video.frames] == video.indices.tolist()


# --------------------------------------------------------------------------------------------
# sample_indices


@pytest.mark.parametrize(
    ("total", "source_fps", "fps", "max_frames", "expected"),
    [
        # 2 s at 24 fps, 2 fps -> 4 intervals of 12 frames, centres at 6, 18, 30, 42
        pytest.param(48, 24.0, 2.0, 256, [6, 18, 30, 42], id="48f-24fps-at-2fps-centres"),
        # 1 fps -> 2 intervals of 24 frames, centres at 12 and 36
        pytest.param(48, 24.0, 1.0, 256, [12, 36], id="48f-24fps-at-1fps"),
        # 40 s at 25 fps at 2 fps = 80 frames, capped to 16: interval 62.5 frames, centres 31.25 + 62.5k
        pytest.param(
            1000, 25.0, 2.0, 16,
            [31, 93, 156, 218, 281, 343, 406, 468, 531, 593, 656, 718, 781, 843, 906, 968],
            id="capped-80-to-16",
        ),
        # 10.01 s at 29.97 fps at 2 fps -> 20 intervals of 15 frames, centres 7.5 + 15k
        pytest.param(300, NTSC, 2.0, 256, [7 + 15 * k for k in range(20)], id="ntsc-29.97fps-no-off-by-one"),
        # 12.5 fps, 25 frames = 2 s at 2 fps -> 4 intervals of 6.25 frames, centres 3.125 + 6.25k
        pytest.param(25, 12.5, 2.0, 256, [3, 9, 15, 21], id="12.5fps-fractional-interval"),
        pytest.param(1, 24.0, 2.0, 256, [0], id="single-frame-video"),
        # 5 frames = 0.167 s: floor(0.33) = 0 -> at least one frame, the centre one
        pytest.param(5, 30.0, 2.0, 256, [2], id="shorter-than-one-interval"),
        # asking for more fps than the source has: every frame once, no repeats
        pytest.param(10, 10.0, 30.0, 256, list(range(10)), id="fps-above-source-fps"),
        pytest.param(48, 24.0, 2.0, 1, [24], id="max-frames-1-takes-middle"),
    ],
)
def test_sample_indices_hand_computed(
    total: int, source_fps: float, fps: float, max_frames: int, expected: list[int]
) -> None:
    got = sample_indices(total, source_fps, fps=fps, max_frames=max_frames)
    assert got.dtype == np.int64
    assert got.tolist() == expected


def test_sample_indices_distinct_sorted_in_range() -> None:
    grid = itertools.product(
        [1, 2, 3, 7, 24, 97, 1000, 1801, 108_000],  # frames
        [12.5, 24.0, NTSC, 60.0],  # source fps
        [0.1, 1.0, 2.0, 7.3, 120.0],  # sampling fps
        [1, 5, 64, 256],  # max_frames
    )
    for total, source_fps, fps, max_frames in grid:
        case = (total, source_fps, fps, max_frames)
        got = sample_indices(total, source_fps, fps=fps, max_frames=max_frames)
        n = max(1, min(math.floor(total / source_fps * fps + 1e-9), max_frames, total))
        assert len(got) == n, case
        assert np.all(np.diff(got) > 0), case  # strictly increasing = sorted and distinct
        assert got[0] >= 0 and got[-1] < total, case
        # index k is the frame shown at the centre (k + 0.5) * total / n of interval k (frame i spans [i, i+1))
        k = np.arange(n)
        assert np.all(got * 2 * n <= (2 * k + 1) * total) and np.all((2 * k + 1) * total < (got + 1) * 2 * n), case


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        pytest.param(dict(total_frames=0, source_fps=24.0, fps=2.0, max_frames=8), "total_frames", id="zero-total"),
        pytest.param(dict(total_frames=10, source_fps=0.0, fps=2.0, max_frames=8), "source_fps", id="zero-source-fps"),
        pytest.param(dict(total_frames=10, source_fps=24.0, fps=0.0, max_frames=8), "fps", id="zero-fps"),
        pytest.param(dict(total_frames=10, source_fps=24.0, fps=2.0, max_frames=0), "--max-frames", id="zero-max-frames"),
    ],
)
def test_sample_indices_bad_arguments(kwargs: dict, needle: str) -> None:
    total, source_fps = kwargs.pop("total_frames"), kwargs.pop("source_fps")
    with pytest.raises(VideoError) as exc:
        sample_indices(total, source_fps, **kwargs)
    assert needle in _single_line(exc)


# --------------------------------------------------------------------------------------------
# decoding real files

# (codec, fps, n_frames, width, height); libx264 + yuv420p refuses odd sizes, so H.264 cases use
# even non-multiple-of-16 sizes and the odd sizes go to VP9 and MPEG-4, which accept them. Sizes run by
# both decoders avoid the widths decord cannot convert on some CPUs (test_decord_row_padding_sizes).
CASES = [
    pytest.param("h264", 24.0, 48, 128, 64, id="h264-mp4-24fps-128x64"),
    pytest.param("h264", 29.97, 60, 98, 62, id="h264-mp4-29.97fps-98x62"),
    pytest.param("h264", 12.5, 25, 128, 64, id="h264-mp4-12.5fps"),
    pytest.param("vp9", 24.0, 48, 128, 64, id="vp9-webm-24fps-128x64"),
    pytest.param("vp9", 29.97, 60, 97, 61, id="vp9-webm-29.97fps-97x61-odd"),
    pytest.param("mpeg4", 12.5, 25, 97, 61, id="mpeg4-avi-12.5fps-97x61-odd"),
    pytest.param("mpeg4", 29.97, 60, 128, 64, id="mpeg4-avi-29.97fps"),
]


@pytest.mark.parametrize("backend", DECODERS)
@pytest.mark.parametrize(("codec", "fps", "n_frames", "width", "height"), CASES)
def test_decode_codecs_sizes_rates(
    make_video, backend: str, codec: str, fps: float, n_frames: int, width: int, height: int
) -> None:
    path = make_video(codec=codec, fps=fps, n_frames=n_frames, width=width, height=height)
    video = decode_video(path, fps=2.0, backend=backend)

    true_fps = NTSC if fps == 29.97 else fps
    expected = sample_indices(n_frames, true_fps, fps=2.0, max_frames=256)
    assert video.backend == backend
    assert video.path == path
    assert video.total_frames == n_frames
    assert video.source_fps == pytest.approx(true_fps, rel=1e-6)
    assert video.duration == pytest.approx(n_frames / true_fps, rel=1e-6)
    assert video.indices.dtype == np.int64 and video.indices.tolist() == expected.tolist()
    assert video.timestamps.dtype == np.float64
    np.testing.assert_allclose(video.timestamps, expected / true_fps, rtol=0, atol=1e-9)
    _assert_matches_source(video, width=width, height=height)


@pytest.mark.parametrize("backend", DECODERS)
@pytest.mark.parametrize(
    ("fps", "max_frames", "n_frames", "expected"),
    [
        # 2 s at 24 fps asked at 10 fps = 20 frames, capped to 5 spread over the whole video
        pytest.param(10.0, 5, 48, [4, 14, 24, 33, 43], id="capped-to-5"),
        pytest.param(60.0, 256, 12, list(range(12)), id="fps-above-source-every-frame"),
        pytest.param(2.0, 256, 1, [0], id="one-frame-video"),
        pytest.param(0.25, 256, 48, [24], id="video-shorter-than-one-interval"),
    ],
)
def test_decode_sampling_on_real_video(
    make_video, backend: str, fps: float, max_frames: int, n_frames: int, expected: list[int]
) -> None:
    path = make_video(codec="h264", fps=24.0, n_frames=n_frames, width=128, height=64)
    video = decode_video(path, fps=fps, max_frames=max_frames, backend=backend)
    assert video.indices.tolist() == expected
    np.testing.assert_allclose(video.timestamps, np.array(expected) / 24.0)
    _assert_matches_source(video, width=128, height=64)


@pytest.mark.parametrize(
    ("codec", "width", "height"),
    [
        pytest.param("h264", 128, 64, id="h264"),
        pytest.param("vp9", 97, 61, id="vp9-odd"),
        pytest.param("mpeg4", 97, 61, id="mpeg4-odd"),
    ],
)
def test_backends_agree_on_pixels(make_video, codec: str, width: int, height: int) -> None:
    # same source frames; pixels may differ a little where the two RGB converters round chroma differently
    path = make_video(codec=codec, fps=24.0, n_frames=48, width=width, height=height)
    a = decode_video(path, backend="decord")
    b = decode_video(path, backend="pyav")
    assert a.indices.tolist() == b.indices.tolist()
    np.testing.assert_array_equal(a.timestamps, b.timestamps)
    assert np.abs(a.frames.astype(np.int16) - b.frames.astype(np.int16)).mean() < 4.0
    source = np.stack([vf.frame_pattern(int(i), width=width, height=height) for i in a.indices])
    assert np.abs(b.frames.astype(np.int16) - source).mean() < 12.0


@pytest.mark.parametrize(("width", "height"), [(96, 64), (16, 16), (2, 2)])
def test_decord_row_padding_sizes(make_video, width: int, height: int) -> None:
    # decord cannot convert frames whose RGB rows FFmpeg pads, which depends on the width and on the
    # CPU (these sizes fail on AVX-512 machines): auto still reads them, a forced decord either reads
    # them right or says in one line what happened and which flag to use, never "corrupt"
    path = make_video(codec="h264", fps=24.0, n_frames=12, width=width, height=height)
    video = decode_video(path, fps=60.0)
    assert video.indices.tolist() == list(range(12))
    if width >= 16:
        _assert_matches_source(video, width=width, height=height)
    else:
        assert video.frames.shape == (12, height, width, 3)
    try:
        forced = decode_video(path, fps=60.0, backend="decord")
    except VideoError as exc:
        message = str(exc)
        assert "\n" not in message and "decord bug" in message and "--decoder pyav" in message and "corrupt" not in message
    else:
        np.testing.assert_array_equal(forced.indices, video.indices)
        assert np.abs(forced.frames.astype(np.int16) - video.frames.astype(np.int16)).mean() < 4.0


def test_pyav_counts_frames_when_container_has_no_count(make_video) -> None:
    # webm stores no frame count (stream.frames == 0): PyAV must count packets, not guess
    path = make_video(codec="vp9", fps=12.5, n_frames=37, width=96, height=64)
    video = decode_video(path, fps=4.0, backend="pyav")
    assert video.total_frames == 37
    assert video.indices.tolist() == sample_indices(37, 12.5, fps=4.0, max_frames=256).tolist()
    _assert_matches_source(video, width=96, height=64)


@pytest.mark.parametrize("backend", DECODERS)
def test_header_overcounting_by_one_frame_is_tolerated(
    make_video, monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    # some muxers store a count one or two frames too high; the frames that exist are sampled instead
    path = make_video(codec="h264", fps=24.0, n_frames=12, width=128, height=64)
    real_probe = decode_mod.probe_video

    def overcounting_probe(p: Path):
        probe, scan = real_probe(p)
        return dataclasses.replace(probe, header_frames=probe.header_frames + 1,
                                   expected_frames=probe.expected_frames + 1), scan

    monkeypatch.setattr(decode_mod, "probe_video", overcounting_probe)
    video = decode_video(path, fps=60.0, backend=backend)  # every frame, so the phantom 13th is wanted
    assert video.total_frames == 12
    assert video.indices.tolist() == list(range(12))
    _assert_matches_source(video, width=128, height=64)


def test_decode_accepts_str_path(make_video) -> None:
    path = make_video(codec="h264", fps=24.0, n_frames=48, width=96, height=64)
    video = decode_video(str(path), backend="pyav")
    assert isinstance(video.path, Path) and video.path == path


# --------------------------------------------------------------------------------------------
# backend "auto"


def test_auto_reads_sequentially_when_wanted_frames_share_keyframe_intervals(make_video) -> None:
    path = make_video(codec="h264", fps=24.0, n_frames=48, width=96, height=64)  # one keyframe (x264's g=250)
    assert BACKENDS == ("auto", "decord", "pyav")
    assert probe_video(path)[0].keyframe_interval is None
    assert decode_video(path).backend == "pyav"


def test_auto_seeks_when_wanted_frames_are_keyframe_intervals_apart(make_video) -> None:
    path = make_video(codec="h264", fps=24.0, n_frames=96, width=128, height=64, gop=8)
    assert probe_video(path)[0].keyframe_interval == 8
    video = decode_video(path, fps=0.5)  # 2 frames, 48 apart > 2 x 8
    assert video.backend == "decord" and video.indices.tolist() == [24, 72]
    _assert_matches_source(video, width=128, height=64)
    assert decode_video(path, fps=4.0).backend == "pyav"  # 16 frames, 6 apart: sequential


@pytest.mark.parametrize(
    "expected,interval,wanted,first",
    [
        pytest.param(18000, 250, 256, "pyav", id="10-min-256-frames"),
        pytest.param(1800, 30, 16, "decord", id="1-min-16-frames-1s-gop"),
        pytest.param(1800, None, 16, "pyav", id="no-second-keyframe"),
        pytest.param(None, 30, 0, "pyav", id="unknown-length"),
    ],
)
def test_auto_order_decision(expected, interval, wanted, first) -> None:
    probe = Probe(fps=30.0, header_frames=expected or 0, expected_frames=expected,
                              pixel_format_known=True, keyframe_interval=interval, format_name="mov,mp4,m4a,3gp,3g2,mj2")
    order = decode_mod.auto_order(probe, wanted)
    assert order[0] == first and set(order) == set(DECODERS)


@pytest.mark.parametrize("format_name", ["mpegts", "mpeg", "flv"])
def test_auto_never_uses_decord_without_a_seek_index(format_name: str) -> None:
    # decord returns wrong frames for MPEG-TS and MPEG-PS without an error (test_video_real.py shows it)
    probe = Probe(fps=30.0, header_frames=1800, expected_frames=1800, pixel_format_known=True,
                              keyframe_interval=30, format_name=format_name)
    assert decode_mod.auto_order(probe, 16) == ("pyav",)


@pytest.fixture
def decord_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fallback tests start from decord whatever the file's keyframes say."""
    monkeypatch.setattr(decode_mod, "auto_order", lambda probe, wanted: ("decord", "pyav"))


def test_auto_falls_back_to_pyav_when_decord_cannot_open(make_video, decord_first, monkeypatch: pytest.MonkeyPatch) -> None:
    path = make_video(codec="h264", fps=24.0, n_frames=48, width=96, height=64)

    def broken_open(_path: Path):
        raise RuntimeError("Error reading video...")  # what decord raises when FFmpeg cannot open a file

    monkeypatch.setattr(decode_mod, "open_decord", broken_open)
    video = decode_video(path, backend="auto")
    assert video.backend == "pyav"
    assert video.indices.tolist() == [6, 18, 30, 42]
    _assert_matches_source(video, width=96, height=64)
    # asked for explicitly, the decord failure is a one-line VideoError, not a RuntimeError
    with pytest.raises(VideoError) as exc:
        decode_video(path, backend="decord")
    assert "decord cannot open" in _single_line(exc)


def test_auto_falls_back_to_pyav_when_decord_cannot_read(make_video, decord_first, monkeypatch: pytest.MonkeyPatch) -> None:
    path = make_video(codec="vp9", fps=24.0, n_frames=48, width=96, height=64)
    decord = decode_mod.import_decord()

    class FailingReader:
        def __len__(self) -> int:
            return 48

        def get_batch(self, indices):
            raise decord.DECORDError("[13:02:10] /src/threaded_decoder.cc:218: Check failed: Error sending packet.")

    monkeypatch.setattr(decode_mod, "open_decord", lambda _path: FailingReader())
    assert decode_video(path).backend == "pyav"
    with pytest.raises(VideoError) as exc:
        decode_video(path, backend="decord")
    message = _single_line(exc)
    # decord's own failure is not called corruption: PyAV may read the same file
    assert "decord cannot read" in message and "Error sending packet" in message and ".cc:" not in message
    assert "--decoder pyav" in message and "corrupt" not in message


def test_auto_uses_pyav_when_decord_is_not_installed(make_video, decord_first, monkeypatch: pytest.MonkeyPatch) -> None:
    path = make_video(codec="h264", fps=24.0, n_frames=48, width=96, height=64)

    def no_decord():
        raise VideoError("the decord backend is unavailable (No module named 'decord'); pip install decord2")

    monkeypatch.setattr(decode_mod, "import_decord", no_decord)
    assert decode_video(path).backend == "pyav"
    with pytest.raises(VideoError) as exc:
        decode_video(path, backend="decord")
    assert "pip install decord2" in _single_line(exc)


# --------------------------------------------------------------------------------------------
# bad inputs: one-line VideoError, nothing printed, never a raw decord/av exception


def _missing(tmp: Path) -> Path:
    return tmp / "missing.mp4"


def _newline_name(tmp: Path) -> Path:
    return tmp / "two\nlines.mp4"  # the message must stay one line even for such a name


def _directory(tmp: Path) -> Path:
    (tmp / "clips.mp4").mkdir()
    return tmp / "clips.mp4"


def _empty(tmp: Path) -> Path:
    (tmp / "empty.mp4").touch()
    return tmp / "empty.mp4"


def _text(tmp: Path) -> Path:
    return vf.write_text(tmp / "notes.mp4")


def _garbage(tmp: Path) -> Path:
    return vf.write_garbage(tmp / "random.webm")


def _audio(suffix: str):
    return lambda tmp: vf.write_audio_only(tmp / f"speech{suffix}")


def _truncated(codec: str, keep: float, faststart: bool = False):
    def make(tmp: Path) -> Path:
        src = vf.write_video(tmp / "full", codec=codec, faststart=faststart)
        return vf.truncate(src, tmp / f"cut{src.suffix}", keep=keep)

    return make


def _corrupt(codec: str):
    def make(tmp: Path) -> Path:
        src = vf.write_video(tmp / "full", codec=codec)
        return vf.corrupt(src, tmp / f"bad{src.suffix}")

    return make


def _damaged_packets(tmp: Path) -> Path:
    # index intact, the payload of packets 8-47 of 48 overwritten: opens, then most frames cannot be decoded
    # (a short damaged stretch is skipped instead: see test_video_real.py)
    src = vf.write_video(tmp / "full", codec="h264", width=128)
    return vf.damage_packets(src, tmp / "damaged.mp4", range(8, 48))


def _zero_frames(tmp: Path) -> Path:
    return vf.write_video(tmp / "empty_stream", codec="mpeg4", n_frames=0)


BAD_FILES = [
    pytest.param(_missing, r"^video not found: .*missing\.mp4; check the path$", id="missing-file"),
    pytest.param(_newline_name, r"^video not found: .*two lines\.mp4; check the path$", id="missing-newline-in-name"),
    pytest.param(_directory, r"is a directory", id="directory"),
    pytest.param(_empty, r"empty \(0 bytes\)", id="empty-file"),
    pytest.param(_text, r"cannot open .*notes\.mp4 as a video .*not a video", id="text-file-named-mp4"),
    pytest.param(_garbage, r"cannot open .*random\.webm as a video", id="random-bytes-webm"),
    pytest.param(_audio(".wav"), r"no video stream in .*\(streams: audio\)", id="audio-only-wav"),
    pytest.param(_audio(".m4a"), r"no video stream in .*\(streams: audio\)", id="audio-only-m4a"),
    pytest.param(_audio(".mka"), r"no video stream in .*\(streams: audio\)", id="audio-only-mka"),
    # an mp4 whose index (moov, written last) was cut off cannot even be opened
    pytest.param(_truncated("h264", 0.5), r"cannot open .* truncated or corrupt", id="truncated-mp4-no-index"),
    pytest.param(
        _truncated("h264", 0.5, faststart=True), r"truncated .*header says 48 frames", id="truncated-mp4-faststart"
    ),
    pytest.param(_truncated("vp9", 0.5), r"truncated .*header says 48 frames", id="truncated-webm"),
    pytest.param(_truncated("mpeg4", 0.5), r"truncated .*header says 48 frames", id="truncated-avi"),
    pytest.param(_corrupt("h264"), r"cannot open|corrupt|damaged", id="corrupt-mp4"),
    pytest.param(_corrupt("vp9"), r"cannot open|corrupt|damaged", id="corrupt-webm"),
    pytest.param(_corrupt("mpeg4"), r"cannot open|corrupt|damaged", id="corrupt-avi"),
    pytest.param(_damaged_packets, r"corrupt|decord cannot read", id="damaged-packets-mp4"),
    pytest.param(_zero_frames, r"no decodable frames", id="zero-frame-avi"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("make_bad", "pattern"), BAD_FILES)
def test_bad_file_raises_one_line_video_error(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], make_bad, pattern: str, backend: str
) -> None:
    path = make_bad(tmp_path)
    capfd.readouterr()  # drop anything the factory's encoders wrote
    with pytest.raises(VideoError) as exc:
        decode_video(path, backend=backend)
    assert isinstance(exc.value, AdasparkError)
    message = _single_line(exc)
    assert re.search(pattern, message), message
    assert "; " in message  # every message names the problem, then a fix after "; "
    out, err = capfd.readouterr()  # file-descriptor level: catches FFmpeg's and decord's C logging too
    assert out == "" and err == ""


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        pytest.param(dict(fps=0), "--fps must be", id="fps-zero"),
        pytest.param(dict(fps=-2.0), "--fps must be", id="fps-negative"),
        pytest.param(dict(fps=float("nan")), "--fps must be", id="fps-nan"),
        pytest.param(dict(fps=float("inf")), "--fps must be", id="fps-inf"),
        pytest.param(dict(fps="2"), "--fps must be", id="fps-string"),
        pytest.param(dict(fps=True), "--fps must be", id="fps-bool"),
        pytest.param(dict(max_frames=0), "--max-frames must be", id="max-frames-zero"),
        pytest.param(dict(max_frames=-5), "--max-frames must be", id="max-frames-negative"),
        pytest.param(dict(max_frames=2.5), "--max-frames must be", id="max-frames-float"),
        pytest.param(dict(backend="opencv"), "unknown --decoder 'opencv'; use --decoder auto, decord or pyav",
                     id="backend-unknown"),
        pytest.param(dict(backend="PyAV"), "unknown --decoder", id="backend-wrong-case"),
        pytest.param(dict(backend=None), "unknown --decoder", id="backend-none"),
    ],
)
def test_bad_arguments_checked_before_opening(tmp_path: Path, kwargs: dict, needle: str) -> None:
    # the file does not exist: the argument error must win, so arguments are checked first
    with pytest.raises(VideoError) as exc:
        decode_video(tmp_path / "missing.mp4", **kwargs)
    message = _single_line(exc)
    assert needle in message and "not found" not in message


def test_empty_path_string() -> None:
    with pytest.raises(VideoError) as exc:
        decode_video("")
    assert "path is empty" in _single_line(exc)


def test_numpy_numbers_are_accepted(make_video) -> None:
    path = make_video(codec="h264", fps=24.0, n_frames=48, width=96, height=64)
    video = decode_video(path, fps=np.float32(2.0), max_frames=np.int64(3), backend="pyav")
    assert video.indices.tolist() == [8, 24, 40]


def test_missing_pyav_is_one_line_naming_the_install(make_video, monkeypatch: pytest.MonkeyPatch) -> None:
    path = make_video(codec="h264", fps=24.0, n_frames=12, width=128, height=64)
    monkeypatch.setitem(sys.modules, "av", None)  # import av raises ImportError
    with pytest.raises(VideoError) as exc:
        decode_video(path)
    assert _single_line(exc) == "PyAV (the av package, adaspark's video reader) is not installed; pip install av"
