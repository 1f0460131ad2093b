"""Synthetic long-video QA (issue 3): seeded scenes, numpy rendering, four task families, H.264 suites."""

from .render import render_frames, sprite
from .scene import COLORS, DIRECTIONS, NEEDLE_SHAPES, TASKS, Scene, Track, needle_duration, sample_scene
from .suite import Suite, SuiteItem, make_suite, read_suite, write_suite, write_video
from .tasks import ANSWER_VOCAB, answer, normalize_answer, question, question_answer

__all__ = [
    "ANSWER_VOCAB",
    "COLORS",
    "DIRECTIONS",
    "NEEDLE_SHAPES",
    "TASKS",
    "Scene",
    "Suite",
    "SuiteItem",
    "Track",
    "answer",
    "make_suite",
    "needle_duration",
    "normalize_answer",
    "question",
    "question_answer",
    "read_suite",
    "render_frames",
    "sample_scene",
    "sprite",
    "write_suite",
    "write_video",
]
