"""The four task families: a question in natural language and its short answer, computed from a `Scene`.

- retrieval (V-NIAH): a needle shape is on screen for a few frames at some depth; "What color was the star?"
  -> a color word.
- ordering (VNBench "order"): two needles at different times; "Which came first, the heart or the cross?"
  -> a shape word.
- counting (VNBench "count"): a needle shape appears 1-4 times (plus maybe a decoy shape);
  "How many times did the star appear?" -> a digit.
- motion: a ball crosses the frame during a short interval; "Which way did the ball move?"
  -> left / right / up / down.

Answers come from a closed vocabulary (`ANSWER_VOCAB`). The answer is derived from the needles' tracks
only; `tests/test_synth.py` also recomputes it from the rendered pixels.
"""

from __future__ import annotations

import re

import numpy as np

from .scene import COLORS, DIRECTIONS, MAX_COUNT, NEEDLE_SHAPES, TASKS, Scene

ANSWER_VOCAB = (*COLORS, *NEEDLE_SHAPES, *(str(i) for i in range(1, MAX_COUNT + 1)), *DIRECTIONS)

TEMPLATES: dict[str, tuple[str, ...]] = {
    "retrieval": (
        "What color was the {a}?",
        "What color is the {a} in the video?",
        "Which color did the {a} have?",
    ),
    "ordering": (
        "Which came first, the {a} or the {b}?",
        "Which appeared earlier: the {a} or the {b}?",
        "Did the {a} or the {b} appear first?",
    ),
    "counting": (
        "How many times did the {a} appear?",
        "How many times was a {a} shown?",
        "Count how often the {a} appears.",
    ),
    "motion": (
        "Which way did the {a} move?",
        "In which direction did the {a} move?",
        "Where did the {a} go: left, right, up or down?",
    ),
}

_NUMBER_WORDS = {"zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6"}
_SYNONYMS = {"circle": "ball", "disc": "ball", "leftward": "left", "rightward": "right", "upward": "up",
             "downward": "down", "upwards": "up", "downwards": "down", "violet": "purple"}


def answer(scene: Scene) -> str:
    """The correct short answer, from the needles' tracks."""
    if scene.task not in TASKS:
        raise ValueError(f"unknown task {scene.task!r}")
    if scene.task == "retrieval":
        (target,) = scene.target
        colors = {n.color for n in scene.needles if n.shape == target}
        assert len(colors) == 1, "a retrieval target has exactly one color"
        return colors.pop()
    if scene.task == "ordering":
        first = {s: min(n.start for n in scene.needles if n.shape == s) for s in scene.target}
        return min(first, key=first.__getitem__)
    if scene.task == "counting":
        (target,) = scene.target
        return str(sum(1 for n in scene.needles if n.shape == target))
    (ball,) = [n for n in scene.needles if n.shape == "ball"]
    if abs(ball.vx) >= abs(ball.vy):
        return "right" if ball.vx > 0 else "left"
    return "down" if ball.vy > 0 else "up"


def question(scene: Scene) -> str:
    """A question phrased from one of the task's templates, chosen by the scene's seed."""
    rng = np.random.default_rng([scene.seed, 3])
    template = TEMPLATES[scene.task][int(rng.integers(len(TEMPLATES[scene.task])))]
    a = scene.target[0]
    b = scene.target[1] if len(scene.target) > 1 else ""
    return template.format(a=a, b=b)


def question_answer(scene: Scene) -> tuple[str, str]:
    return question(scene), answer(scene)


def normalize_answer(text: str) -> str:
    """The form in which answers are compared (exact match after this):

    lower case; everything but letters, digits and spaces removed; a leading "the"/"a"/"an" and the
    words "it", "moved", "to", "the" dropped; number words zero..six as digits; a few synonyms
    (circle -> ball, upward -> up, ...); only the first remaining word kept (answers are one word).
    "The STAR." -> "star", "It moved to the left" -> "left", "Three" -> "3".
    """
    words = re.sub(r"[^a-z0-9 ]+", " ", text.lower()).split()
    words = [w for w in words if w not in ("the", "a", "an", "it", "moved", "to", "was", "is")]
    if not words:
        return ""
    w = words[0]
    w = _NUMBER_WORDS.get(w, w)
    return _SYNONYMS.get(w, w)
