"""Fuzz test of the video readers (issue 11, part 5): seeded random truncations, byte flips and header edits of
small valid videos (mp4/H.264, webm/VP9, avi/MPEG-4, ts/H.264), each read by `decode_video` (backends auto,
pyav and decord) and by the pipelined stream `adaspark ask` uses, and a handful by `adaspark ask` itself.

Every case must either decode (frames of one shape, uint8 RGB, one per sampled index, timestamps in order) or
raise the library's one-line `VideoError` naming problem and fix ("...; ..."), print nothing, and finish
within `CASE_SECONDS` (a SIGALRM deadline raises in the test; faulthandler kills a run stuck inside C code).
"""

from __future__ import annotations

import faulthandler
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import video_factory as vf

from adaspark_cli.cli.app import app
from adaspark_cli.errors import VideoError
from adaspark_cli.video import decode_video
from adaspark_cli.video.stream import open_video

SEED = 11
CASES = 320  # 80 per container
CASE_SECONDS = 10.0  # a case takes ~0.05 s; far above that means a decoder loops
BASES = ("h264", "vp9", "mpeg4", "h264-ts")
MUTATIONS = ("truncate", "flip", "header", "splice")

pytestmark = pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs SIGALRM for the per-case deadline")


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The valid videos every case starts from: 24 frames at 12 fps, 64x64, a keyframe every 8 (H.264)."""
    folder = tmp_path_factory.mktemp("fuzz_bases")
    out = {}
    for codec in BASES:
        gop = 8 if codec.startswith("h264") else None
        path = vf.write_video(folder / codec, codec=codec, n_frames=24, fps=12.0, width=64, height=64, gop=gop)
        out[codec] = path.read_bytes()
    return out


def mutate(data: bytes, kind: str, rng: np.random.Generator) -> bytes:
    """One random edit of a valid file."""
    buf = bytearray(data)
    n = len(buf)
    if kind == "truncate":  # a download cut short, anywhere from the first bytes to the last packet
        return bytes(buf[: int(rng.integers(1, n))])
    if kind == "flip":  # bit rot: a few bytes anywhere
        for pos in rng.integers(0, n, size=int(rng.integers(1, 40))):
            buf[pos] ^= int(rng.integers(1, 256))
        return bytes(buf)
    if kind == "header":  # headers and indexes: the first and last 512 bytes (mp4 writes its index last)
        for _ in range(int(rng.integers(1, 12))):
            pos = int(rng.integers(0, min(512, n)))
            if rng.random() < 0.5:
                pos = n - 1 - pos
            buf[pos] = int(rng.integers(0, 256))
        return bytes(buf)
    # splice: a stretch zeroed, dropped or repeated (a broken copy or a bad sector)
    lo = int(rng.integers(0, n))
    hi = min(n, lo + int(rng.integers(1, max(2, n // 8))))
    choice = rng.integers(0, 3)
    if choice == 0:
        buf[lo:hi] = bytes(hi - lo)
        return bytes(buf)
    if choice == 1:
        return bytes(buf[:lo] + buf[hi:])
    return bytes(buf[:hi] + buf[lo:hi] + buf[hi:])


def case_file(bases: dict[str, bytes], case: int, folder: Path) -> Path:
    rng = np.random.default_rng([SEED, case])
    codec = BASES[case % len(BASES)]
    kind = MUTATIONS[int(rng.integers(0, len(MUTATIONS)))]
    suffix = vf.CODECS[codec][0]
    path = folder / f"case{case:03d}-{codec}-{kind}{suffix}"
    path.write_bytes(mutate(bases[codec], kind, rng))
    return path


class _Deadline(Exception):
    pass


def _alarm(signum, frame):
    raise _Deadline()


@pytest.fixture
def deadline():
    """Raise _Deadline in the test after CASE_SECONDS; kill the process (with tracebacks) after twice that."""
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, CASE_SECONDS)
    faulthandler.dump_traceback_later(2 * CASE_SECONDS, exit=True, file=sys.__stderr__)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        faulthandler.cancel_dump_traceback_later()
        signal.signal(signal.SIGALRM, previous)


def check_decoded(frames: np.ndarray, indices: np.ndarray, timestamps: np.ndarray, total: int) -> None:
    assert frames.dtype == np.uint8 and frames.ndim == 4 and frames.shape[3] == 3
    assert frames.shape[0] == len(indices) == len(timestamps) >= 1
    assert frames.shape[1] >= 1 and frames.shape[2] >= 1
    assert indices.min() >= 0 and indices.max() < total
    assert np.all(np.isfinite(timestamps)) and np.all(np.diff(timestamps) >= 0)


def check_refusal(exc: VideoError) -> None:
    message = str(exc)
    assert message and "\n" not in message and "\r" not in message, repr(message)
    assert "; " in message, f"no fix named: {message}"  # "<problem>; <what to do>"


def read_both(path: Path) -> list[str]:
    """decode_video (each backend) and the stream reader on `path`; the outcome of each: 'frames' or 'refused'."""
    outcomes = []
    for backend in ("auto", "pyav", "decord"):
        try:
            video = decode_video(path, fps=4.0, backend=backend)
            check_decoded(video.frames, video.indices, video.timestamps, video.total_frames)
            outcomes.append("frames")
        except VideoError as exc:
            check_refusal(exc)
            outcomes.append("refused")
    try:
        source = open_video(path, fps=4.0, decoder="auto")
        frames = source.frames if not hasattr(source, "read_all") else source.read_all()
        check_decoded(frames, source.indices, source.timestamps, source.total_frames)
        outcomes.append("frames")
    except VideoError as exc:
        check_refusal(exc)
        outcomes.append("refused")
    return outcomes


@pytest.mark.parametrize("case", range(CASES))
def test_fuzzed_video_decodes_or_is_refused_in_one_line(
    bases, tmp_path: Path, capfd: pytest.CaptureFixture[str], deadline, case: int
) -> None:
    path = case_file(bases, case, tmp_path)
    capfd.readouterr()
    start = time.perf_counter()
    try:
        read_both(path)
    except _Deadline:
        pytest.fail(f"{path.name}: no result within {CASE_SECONDS} s")
    assert time.perf_counter() - start < CASE_SECONDS
    out, err = capfd.readouterr()
    assert out == "" and err == "", f"{path.name} printed: {(out + err)[:300]!r}"


def test_fuzz_covers_both_outcomes(bases, tmp_path: Path) -> None:
    # the cases are not all trivially refused (or all harmless): both outcomes occur for every container
    seen: dict[str, set[str]] = {codec: set() for codec in BASES}
    for case in range(0, CASES, 3):
        path = case_file(bases, case, tmp_path)
        seen[BASES[case % len(BASES)]].update(read_both(path))
    assert all(outcomes == {"frames", "refused"} for outcomes in seen.values()), seen


CLI_CASES = [0, 1, 2, 3, 5, 6, 9, 14]


def test_fuzzed_videos_through_the_cli(bases, tmp_path: Path, runner, tiny_checkpoint) -> None:
    # `adaspark ask` on a few cases: exit 0 with an answer, or exit 1 with one "error: ..." line; never a traceback
    codes = set()
    for case in CLI_CASES:
        path = case_file(bases, case, tmp_path)
        args = ["ask", str(path), "what?", "--model", str(tiny_checkpoint), "--max-new-tokens", "1", "--dense", "-q",
                "--max-frames", "4"]
        res = runner.invoke(app, args, catch_exceptions=False)
        assert "Traceback" not in res.output, res.output
        codes.add(res.exit_code)
        if res.exit_code == 0:
            assert res.stdout.strip() and res.stderr == "", res.output
        else:
            assert res.exit_code == 1 and res.stdout == "", res.output
            lines = res.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert codes == {0, 1}, f"the CLI cases should include answered and refused files, got exit codes {codes}"
