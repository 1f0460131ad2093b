"""Batch input and output, without torch (usage errors must not load it): the jobs and the answers file.

- `read_manifest` / `find_videos`: the jobs (one per video) from a JSONL manifest or a folder / glob.
- `AnswersFile`: the output JSONL, one record per video, each line written with flush + fsync; on
  resume the ids already there are skipped and a torn last line (a crash mid-write) is dropped.

qa/batch.py runs the jobs; cli/batch.py is the command.
"""

from __future__ import annotations

import glob
import json
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import AdasparkError

MANIFEST_KEYS = ("id", "video", "questions", "fps", "max_frames", "max_pixels")


class ManifestError(AdasparkError):
    """The manifest (or the folder / glob) cannot give a list of jobs; the message names the line."""


class AnswersFileError(AdasparkError):
    """The answers file cannot be read back for a resume, or written."""


@dataclass(frozen=True)
class VideoJob:
    """One video and its questions, with its sampling settings."""

    id: str
    video: str  # as the user wrote it (manifest) or as found (folder / glob): the record's "video"
    path: Path  # where it is read from
    questions: tuple[str, ...]
    fps: float
    max_frames: int
    max_pixels: int


@dataclass(frozen=True)
class Sampling:
    """The command's --fps, --max-frames and --max-pixels: the defaults of every video."""

    fps: float
    max_frames: int
    max_pixels: int
    min_pixels: int = 1  # the processor's minimum, checked for per-video values


@dataclass
class VideoOutcome:
    """What became of one job: the `ask --json` object per question, or the one-line error."""

    job: VideoJob
    answers: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0

    def record(self) -> dict[str, Any]:
        """The answers file's line for this video (docs/cli.md lists the keys)."""
        return {"id": self.job.id, "video": self.job.video, "answers": self.answers, "error": self.error}


# ---------------------------------------------------------------------------------------------- input


def read_manifest(path: Path, sampling: Sampling, check_question: Callable[[str, str], str]) -> list[VideoJob]:
    """The jobs of a JSONL manifest: one object per line (blank lines skipped), `video` relative to the
    manifest's folder. `check_question(text, where)` returns the question cleaned or raises.
    Every problem is a ManifestError naming the line."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"cannot read the manifest {path}: {getattr(exc, 'strerror', None) or exc}") from None
    jobs: list[VideoJob] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        job = _manifest_job(line, where, path.parent, sampling, check_question)
        if job.id in seen:
            raise ManifestError(f"{where}: id {job.id!r} is already used on line {seen[job.id]}; give each video "
                                "its own \"id\"")
        seen[job.id] = number
        jobs.append(job)
    if not jobs:
        raise ManifestError(f"the manifest {path} lists no videos; write one JSON object per line, e.g. "
                            '{"video": "clip.mp4", "questions": ["What happens?"]}')
    return jobs


def _manifest_job(line: str, where: str, folder: Path, sampling: Sampling,
                  check_question: Callable[[str, str], str]) -> VideoJob:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{where} is not JSON ({exc.msg}); write one JSON object per line") from None
    if not isinstance(obj, dict):
        raise ManifestError(f"{where} is not a JSON object; write e.g. "
                            '{"video": "clip.mp4", "questions": ["What happens?"]}')
    unknown = sorted(set(obj) - set(MANIFEST_KEYS))
    if unknown:
        raise ManifestError(f"{where}: unknown key {unknown[0]!r}; the keys are {', '.join(MANIFEST_KEYS)}")
    video = obj.get("video")
    if not isinstance(video, str) or not video.strip():
        raise ManifestError(f"{where}: \"video\" is missing or not a path; add e.g. \"video\": \"clip.mp4\"")
    questions = obj.get("questions")
    if not isinstance(questions, list) or not questions or not all(isinstance(q, str) for q in questions):
        raise ManifestError(f"{where}: \"questions\" must be a non-empty list of strings, e.g. "
                            "\"questions\": [\"What happens?\"]")
    video_id = obj.get("id", video)
    if not isinstance(video_id, str) or not video_id:
        raise ManifestError(f"{where}: \"id\" must be a non-empty string")
    return VideoJob(
        id=video_id,
        video=video,
        path=folder / video,
        questions=tuple(check_question(q, f"{where}: question {i + 1}") for i, q in enumerate(questions)),
        fps=_number(obj, "fps", sampling.fps, where, minimum=0.0, integer=False),
        max_frames=int(_number(obj, "max_frames", sampling.max_frames, where, minimum=1, integer=True)),
        max_pixels=int(_number(obj, "max_pixels", sampling.max_pixels, where, minimum=sampling.min_pixels,
                               integer=True)),
    )


def _number(obj: dict[str, Any], key: str, default: float, where: str, *, minimum: float, integer: bool) -> float:
    """A per-video option: absent means the command's flag; fps > 0, the others >= minimum."""
    if key not in obj:
        return default
    value = obj[key]
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if integer:
        ok = is_number and float(value).is_integer() and value >= minimum
        want = f"an integer >= {int(minimum)}"
    else:
        ok = is_number and value > minimum
        want = f"a number > {minimum:g}"
    if not ok:
        raise ManifestError(f"{where}: \"{key}\" must be {want}, got {json.dumps(value)}")
    return value


def find_videos(pattern: str, questions: list[str], sampling: Sampling, suffixes: Iterable[str]) -> list[VideoJob]:
    """The jobs of a folder (its video files, not recursive) or a glob (`**` recursive), sorted by path;
    each asks `questions`. The id is the path as found."""
    folder = Path(pattern)
    wanted = {s.lower() for s in suffixes}
    if folder.is_dir():
        paths = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in wanted]
        where = f"the folder {folder}"
    else:
        paths = [Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file()]
        where = f"the pattern {pattern!r}"
    if not paths:
        hint = f"video files ({', '.join(sorted(wanted)[:4])}, ...)" if folder.is_dir() else "files"
        raise ManifestError(f"{where} matches no {hint}; check the path, or quote a glob such as 'clips/*.mp4'")
    return [
        VideoJob(id=str(p), video=str(p), path=p, questions=tuple(questions), fps=sampling.fps,
                 max_frames=sampling.max_frames, max_pixels=sampling.max_pixels)
        for p in sorted(paths)
    ]


# ------------------------------------------------------------------------------------- answers file


class AnswersFile:
    """The answers JSONL: `done` holds the records already there by id (resume); `write` appends one.

    Nothing is changed on disk before the first `write` (a run that fails while the model loads leaves
    the file as it was, also with `force`). Each record is one write of one line, then flush and fsync,
    so a crash loses at most the video in flight and leaves at worst a torn last line, which the next
    resume drops (that video is redone).
    """

    def __init__(self, path: Path, *, force: bool, retry_failed: bool = False) -> None:
        self.path, self.force = path, force
        self.existed = path.exists()
        self.done: dict[str, dict[str, Any]] = {}
        self.retried: set[str] = set()  # ids whose failed record is dropped and the video redone
        self.dropped_torn = False
        self._good_bytes = 0
        if self.existed and not force:
            self.done, self._good_bytes, self.dropped_torn = _read_records(path)
        if retry_failed:
            self.retried = {key for key, record in self.done.items() if record.get("error") is not None}
            self.done = {key: record for key, record in self.done.items() if key not in self.retried}
        self._handle: Any = None

    @classmethod
    def open(cls, path: Path, *, force: bool, retry_failed: bool = False) -> AnswersFile:
        """Read `path` for a resume (unless `force`); it is opened for writing at the first record.
        `retry_failed`: the records with an error do not count as done (they are dropped at the first write)."""
        return cls(path, force=force, retry_failed=retry_failed)

    def failed_before(self) -> int:
        """Records already there that carry an error (skipped unless retry_failed)."""
        return sum(record.get("error") is not None for record in self.done.values())

    def write(self, record: dict[str, Any]) -> None:
        if self._handle is None:
            self._handle = self._open_for_writing()
        try:
            self._handle.write((json.dumps(record) + "\n").encode())  # one write: a line is whole or torn
            self._handle.flush()
            os.fsync(self._handle.fileno())
        except OSError as exc:
            raise AnswersFileError(f"cannot write {self.path}: {exc.strerror or exc}; free some space or choose "
                                   "another --out, then rerun the same command to resume") from None

    def written_this_run(self) -> int:
        """Records this run appended, read back from the file: exact even where an interrupt landed
        between a write and the caller's own count."""
        if self._handle is None:
            return 0
        records, _, _ = _read_records(self.path)
        return sum(key not in self.done for key in records)

    def _open_for_writing(self) -> Any:
        if self.force or not self.existed:
            return _open(self.path, "wb")
        if self.retried:
            self._drop_failed()
        handle = _open(self.path, "r+b")
        handle.truncate(self._good_bytes)  # drops a torn last line, so the next record starts a line
        handle.seek(self._good_bytes)
        return handle

    def _drop_failed(self) -> None:
        """Rewrite the file without the failed records being retried: a new file renamed over the old one,
        so a crash leaves either the old file or the new, never a mix."""
        lines = self.path.read_bytes()[: self._good_bytes].splitlines(keepends=True)
        keep = [line for line in lines if (_parse_record(line) or {}).get("id") not in self.retried]
        temporary = self.path.with_name(self.path.name + ".tmp")
        try:
            with open(temporary, "wb") as handle:
                handle.write(b"".join(keep))
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self.path)
        except OSError as exc:
            raise AnswersFileError(f"cannot rewrite {self.path} without its failed records: "
                                   f"{exc.strerror or exc}; free some space or drop --retry-failed") from None
        self._good_bytes = sum(map(len, keep))

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()


def _open(path: Path, mode: str) -> Any:
    try:
        return open(path, mode)
    except OSError as exc:
        raise AnswersFileError(f"cannot open {path} for writing: {exc.strerror or exc}; check --out") from None


def _read_records(path: Path) -> tuple[dict[str, dict[str, Any]], int, bool]:
    """The records by id, the byte length of the complete lines, and whether a torn last line follows them."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise AnswersFileError(f"cannot read {path} to resume: {exc.strerror or exc}") from None
    done: dict[str, dict[str, Any]] = {}
    offset = 0
    lines = data.split(b"\n")
    for number, raw in enumerate(lines, start=1):
        last = number == len(lines)  # the text after the final newline: empty, or a torn line
        record = _parse_record(raw)
        if last:
            return done, offset, bool(raw.strip())
        if record is None and raw.strip():
            raise AnswersFileError(f"{path} line {number} is not an answers record (was it written by adaspark "
                                   "batch?); pass --force to replace the file, or choose another --out")
        if record is not None:
            done[record["id"]] = record
        offset += len(raw) + 1
    return done, offset, False


def _parse_record(raw: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if isinstance(record, dict) and isinstance(record.get("id"), str) and "answers" in record:
        return record
    return None
