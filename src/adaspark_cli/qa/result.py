"""The `ask --json` / `profile --json` contract, built in one place: the answer's record and its rows."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..stats import ModelDims, PrefillStats, flops_summary

if TYPE_CHECKING:
    from .session import VideoPrefix


@dataclass
class StageTimes:
    """Where the time before the first answer token goes, in seconds, one value carried from the
    preprocessing (decode_s, preprocess_s, vision_s) to the prefill (prefill_s) and the answer.

    decode_s: video decoding (pipelined: opening plus the time waited for frames); preprocess_s: the
    processor (resize, normalise, patchify, tokenize); vision_s: the vision tower; prefill_s: the
    language-model prefill of the video prefix."""

    decode_s: float = 0.0
    preprocess_s: float = 0.0
    vision_s: float = 0.0
    prefill_s: float = 0.0

    @property
    def video_s(self) -> float:
        """The video's share of the wait once decoded and preprocessed: vision tower + prefix prefill."""
        return self.vision_s + self.prefill_s

    def first_token(self, question_seconds: float, reused: bool) -> dict[str, float]:
        """`ask --json`'s `timing`: the stages of this answer's wait and first_token_s, their sum (model
        loading excluded). A question that reuses the video prefill pays only its own prefill."""
        if reused:
            stages = {"decode_s": 0.0, "preprocess_s": 0.0, "vision_s": 0.0, "prefill_s": question_seconds}
        else:
            stages = {"decode_s": self.decode_s, "preprocess_s": self.preprocess_s, "vision_s": self.vision_s,
                      "prefill_s": self.prefill_s + question_seconds}
        return {**stages, "first_token_s": sum(stages.values())}


@dataclass
class AnswerResult:
    """One answer and where its time went; `to_json` is the `ask --json` object."""

    question: str
    answer: str = ""
    frames: int = 0
    video_tokens: int = 0
    cubes: int = 0
    prefill_seconds: float = 0.0
    video_prefill_seconds: float = 0.0
    video_prefill_reused: bool = False
    decode_seconds: float = 0.0
    generated_tokens: int = 0
    stopped: str = "eos"  # "eos" or "max_new_tokens"
    sparse: bool = True
    stats: PrefillStats = field(default_factory=PrefillStats)
    dims: ModelDims | None = None
    timing: dict[str, float] = field(default_factory=dict)
    decode_steps: int = 0  # forward calls after the question (one per answer token that needed one)
    temperature: float = 0.0  # 0: greedy
    seed: int | None = None  # sampled answers only
    decode_step: str = "dynamic"  # "dynamic", "static" or "graph" (VideoQA.decode_step)
    decode_note: str | None = None  # why the step is not the one asked for

    def layer_rows(self) -> list[dict[str, Any]]:
        return layer_rows(self.stats)

    def flops(self) -> dict[str, Any]:
        return {} if self.dims is None else flops_summary(self.stats, self.dims)

    def to_json(self) -> dict[str, Any]:
        """The stable `ask --json` object (docs/cli.md lists the keys)."""
        return {
            "question": self.question,
            "answer": self.answer,
            "mode": "adaspark" if self.sparse else "dense",
            "frames": self.frames,
            "video_tokens": self.video_tokens,
            "cubes": self.cubes,
            "prefill_seconds": self.prefill_seconds,
            "video_prefill_seconds": self.video_prefill_seconds,
            "video_prefill_reused": self.video_prefill_reused,
            "decode_seconds": self.decode_seconds,
            "generated_tokens": self.generated_tokens,
            "stopped": self.stopped,
            "timing": self.timing,
            "layers": self.layer_rows(),
            "flops": self.flops(),
            "decode": {"steps": self.decode_steps, "temperature": self.temperature, "seed": self.seed,
                       "cuda_graph": self.decode_step == "graph", **({"note": self.decode_note} if self.decode_note else {})},
        }


def layer_rows(stats: PrefillStats) -> list[dict[str, Any]]:
    """Per-layer rows of `ask --json` / `profile --json`: cubes available and attended per video query
    (mean over queries and KV heads), attention density over the video queries' causal keys, FFN rows kept."""
    rows = []
    for idx in sorted(stats.layers):
        rec = stats.layers[idx]
        a = rec.attention
        n = max(1, a.video_queries * max(1, a.kv_heads))
        rows.append(
            {
                "layer": idx,
                "sparse": rec.sparse,
                # the attention that ran: a sparse kernel, or "sdpa" (a dense layer, or a sparse layer whose
                # selection came out near-dense: dense_fallback)
                "kernel": rec.kernel or "sdpa",
                "dense_fallback": rec.dense_fallback,
                "cubes_total": a.cubes_total / n,
                "cubes_attended_mean": a.cubes_attended / n,
                "cubes_attended_min": a.cubes_attended_min or 0,
                "cubes_attended_max": a.cubes_attended_max or 0,
                "attn_density": a.attended_keys / a.causal_keys if a.causal_keys else 1.0,
                "ffn_kept": rec.ffn_kept,
                "ffn_total": rec.ffn_total,
            }
        )
    return rows



def answer_timing(prefix: VideoPrefix, question_seconds: float, reused: bool) -> dict[str, float]:
    """Where the wait for the first answer token went, in seconds (`StageTimes.first_token`)."""
    return prefix.timing.first_token(question_seconds, reused)
