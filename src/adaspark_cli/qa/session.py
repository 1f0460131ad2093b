"""The session: prefill a video once into one shared KV cache, then answer questions after it.

The prompt puts the video before the question, so the prefix (system prompt + video) and its sparsity
do not depend on the question: it is prefilled once under AdaSpark into a `SharedCache` (method.md
section 2). Each question writes its tokens after the prefix, attends densely, and its answer is
decoded densely (`decode.py`: greedy, or sampled with a seed); when the answer ends the cache is
rolled back to the prefix, which is never copied or changed.
"""

from __future__ import annotations

import dataclasses
import inspect
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from ..adapters.arch import HFModule, architecture_of
from ..adapters.sparse import SparseState
from ..attention.decode import decode_kernel_available
from ..errors import AdasparkError
from ..limits import check_max_new_tokens
from ..stats import ModelDims, PrefillStats
from .cache import DEFAULT_TAIL_TOKENS, SharedCache
from .decode import DecodeOutcome, Sampling, StepHook, decode_tokens
from .graph import StaticDecodeStep
from .preprocess import (  # noqa: F401  (re-exported: the names callers import from here)
    DEFAULT_MAX_PIXELS,
    MIN_PIXELS,
    VideoPreprocessing,
    VideoPrompt,
    check_max_pixels,
    sync_device,
)
from .result import AnswerResult, StageTimes, answer_timing, layer_rows  # noqa: F401  (layer_rows: re-exported)


@dataclass
class VideoPrefix:
    """The prefilled video: its shared KV cache (tokens past `prompt.length` belong to the answer in
    progress, and are gone when it ends), statistics and cost."""

    prompt: VideoPrompt
    cache: SharedCache
    stats: PrefillStats
    timing: StageTimes  # the prompt's, with the vision tower and the prefix prefill filled in
    uses: int = 0
    answering: bool = False  # an answer is being decoded into `cache`
    static_step: StaticDecodeStep | None = None  # the fixed-shape (on CUDA: graphed) decode step, kept across answers

    @property
    def seconds(self) -> float:
        """Vision tower + language-model prefill of the prefix."""
        return self.timing.video_s

    @property
    def vision_seconds(self) -> float:
        return self.timing.vision_s


def question_positions(prompt: VideoPrompt, n: int) -> torch.Tensor:
    """(3, 1, n) M-RoPE ids of n text tokens right after the video prefix (same on all three axes)."""
    return torch.arange(prompt.next_position, prompt.next_position + n).view(1, 1, -1).expand(3, 1, -1)


def _cache_kwarg(model: torch.nn.Module) -> str:
    """transformers 5.24 renamed `past_key_values` to `cache` (the old name warns until 5.40)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


DECODE_STEPS = ("auto", "dynamic", "static", "graph")
GRAPH_MAX_TOKENS = 98_304  # without the decode kernel, "auto" graphs the step up to this cache size (measured crossover)


class VideoQA(VideoPreprocessing):
    """Answers questions about one video at a time with a (sparsified) video LLM (adapters/arch).

    decode_step: how each answer token runs. "dynamic": eager, attention over the filled cache;
    "static": the fixed-shape step (qa/graph.py), eager; "graph": that step captured once per video in
    a CUDA graph and replayed (CUDA only); "auto" (the default): "graph" on CUDA (without Triton's decode
    kernel only for a cache of up to GRAPH_MAX_TOKENS tokens), else "dynamic"."""

    decode_step = "auto"

    def __init__(self, model: HFModule, processor: Any, state: SparseState) -> None:
        self.model = model
        self.processor = processor
        self.state = state
        self.arch = architecture_of(model)
        self.device = next(model.parameters()).device
        self.dims = ModelDims.from_text_config(model.config.text_config)
        self._cache_kw = _cache_kwarg(model)
        self.stop_ids = self._stop_token_ids()

    def _stop_token_ids(self) -> set[int]:
        ids: set[int] = set()
        for source in (getattr(self.model, "generation_config", None), self.model.config, self.processor.tokenizer):
            eos = getattr(source, "eos_token_id", None)
            if isinstance(eos, int):
                ids.add(eos)
            elif isinstance(eos, (list, tuple)):
                ids.update(int(i) for i in eos)
        im_end = self.processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
        if isinstance(im_end, int) and im_end >= 0:
            ids.add(im_end)
        return ids


    def tail_tokens_for(self, questions: list[str], max_new_tokens: int) -> int:
        """Room after the prefix that `questions` and their answers need (at least the default): given to
        `prefill_video`, no answer grows (and so copies) the cache."""
        longest = max((int(self.question_ids(q).numel()) for q in questions), default=0)
        return max(DEFAULT_TAIL_TOKENS, longest + max_new_tokens)

    def new_cache(self, tail_tokens: int = DEFAULT_TAIL_TOKENS) -> SharedCache:
        """An empty cache for this model: filled by `prefill_video`, with `tail_tokens` of room after the prefix."""
        return SharedCache(self.dims.layers, tail_tokens)

    def _forward_prefix(self, prompt: VideoPrompt, cache: Any, stats: PrefillStats | None) -> None:
        """System prompt + video into `cache`, with the cube layout active (the sparse part)."""
        if prompt.deepstack_embeds is not None:  # Qwen3-VL's tower already run: its outputs, DeepStack included
            inputs: dict[str, Any] = {
                "input_ids": prompt.input_ids.to(self.device), "mm_encoder_outputs": self._encoder_outputs(prompt)
            }
        elif prompt.video_embeds is not None:  # vision tower already run (prepare_video_stream)
            inputs = {"inputs_embeds": self._embed_with_video(prompt)}
        else:
            assert prompt.pixel_values_videos is not None
            inputs = {
                "input_ids": prompt.input_ids.to(self.device),
                "pixel_values_videos": prompt.pixel_values_videos.to(self.device, self.model.dtype),
                "video_grid_thw": prompt.video_grid_thw.to(self.device),
            }
        with self.state.forward_context(layout=prompt.layout.to(self.device), offset=0, stats=stats):
            self.model(
                **inputs,
                position_ids=prompt.positions.to(self.device),
                use_cache=True,
                logits_to_keep=1,
                **{self._cache_kw: cache},
            )

    def _embed_with_video(self, prompt: VideoPrompt) -> torch.Tensor:
        """(1, P, hidden) token embeddings with the video tokens replaced by the vision tower's output,
        as the model's own forward does with pixel values."""
        ids = prompt.input_ids.to(self.device)
        embeds = self.model.get_input_embeddings()(ids)
        mask = (ids == self.model.config.video_token_id)[..., None].expand_as(embeds)
        video = prompt.video_embeds
        assert video is not None
        if int(mask[0, :, 0].sum()) != video.shape[0]:
            raise AdasparkError(f"{video.shape[0]} video embeddings for {int(mask[0, :, 0].sum())} video tokens; this is a bug")
        return embeds.masked_scatter(mask, video.to(embeds.device, embeds.dtype))


    def _encoder_outputs(self, prompt: VideoPrompt) -> dict[str, Any]:
        """`mm_encoder_outputs` for a Qwen3-VL forward: the streamed tower outputs as `get_video_features`
        returns them, so the model scatters the video embeddings and adds the DeepStack levels itself."""
        from transformers.models.qwen3_vl.modeling_qwen3_vl import BaseModelOutputWithDeepstackFeatures

        assert prompt.video_embeds is not None and prompt.deepstack_embeds is not None
        # tuples, as get_video_features returns them (one entry per video); the dataclass annotates Tensor
        return {"video": BaseModelOutputWithDeepstackFeatures(
            pooler_output=(prompt.video_embeds,),  # type: ignore[arg-type]
            deepstack_features=[(level,) for level in prompt.deepstack_embeds],  # type: ignore[misc]
        )}

    def _forward_text(
        self, ids: torch.Tensor, positions: torch.Tensor, cache: Any, offset: int, stats: PrefillStats | None, *,
        all_logits: bool = False,
    ) -> torch.Tensor:
        """Text tokens (question or one decoded token) after the cache, dense; logits of the last position
        (V,), or of every position (n, V) with all_logits."""
        with self.state.forward_context(layout=None, offset=offset, stats=stats):
            out = self.model(
                input_ids=ids.to(self.device),
                position_ids=positions.to(self.device),
                use_cache=True,
                logits_to_keep=0 if all_logits else 1,
                **{self._cache_kw: cache},
            )
        return out.logits[0] if all_logits else out.logits[0, -1]

    @torch.inference_mode()
    def prefill_video(
        self,
        prompt: VideoPrompt,
        *,
        progress: Callable[[int, int], None] | None = None,
        tail_tokens: int = DEFAULT_TAIL_TOKENS,
    ) -> VideoPrefix:
        """Prefill system prompt + video once into a shared cache that every question reuses.

        progress(done, total) is called after each language-model layer (a long prefill on the CPU
        takes many seconds). tail_tokens: room reserved after the prefix for a question and its answer
        (a longer one grows the cache once)."""
        stats = PrefillStats()
        cache = self.new_cache(tail_tokens)
        vision: list[float] = []
        hooks = self._time_module(self.arch.vision_tower(self.model), vision)
        if progress is not None:
            hooks += self._layer_progress(progress)
        sync_device(self.device)
        start = time.perf_counter()
        try:
            self._forward_prefix(prompt, cache, stats)
        finally:
            for hook in hooks:
                hook.remove()
        sync_device(self.device)
        # the tower ran inside the forward (one-shot prompt) or before it (streamed prompt: already in timing)
        elapsed = time.perf_counter() - start
        timing = dataclasses.replace(
            prompt.timing, vision_s=prompt.timing.vision_s + sum(vision), prefill_s=elapsed - sum(vision)
        )
        return VideoPrefix(prompt=prompt, cache=cache, stats=stats, timing=timing)

    def _layer_progress(self, progress: Callable[[int, int], None]) -> list[Any]:
        """Forward hooks reporting each finished language-model layer to `progress(done, total)`."""
        layers = self.arch.language_layers(self.model)

        def reporter(done: int) -> Callable[..., None]:
            return lambda *_: progress(done, len(layers))

        return [layer.register_forward_hook(reporter(i + 1)) for i, layer in enumerate(layers)]

    def _time_module(self, module: torch.nn.Module, out: list[float]) -> list[Any]:
        """Hooks that append the wall time of each call of `module` (synchronised on CUDA) to `out`."""
        started: list[float] = []

        def before(*_: Any) -> None:
            sync_device(self.device)
            started.append(time.perf_counter())

        def after(*_: Any) -> None:
            sync_device(self.device)
            out.append(time.perf_counter() - started.pop())

        return [module.register_forward_pre_hook(before), module.register_forward_hook(after)]


    @torch.inference_mode()
    def prefill_logits(self, prompt: VideoPrompt, question: str, *, stats: PrefillStats | None = None) -> torch.Tensor:
        """One whole prefill (video prefix, then the question) in the current mode, cache discarded.

        Returns the float32 logits (n, V) at every position of the question part (the n tokens after
        <|vision_end|>: question text, <|im_end|> and the assistant header); row i predicts token i + 1,
        and the last row is the distribution of the first answer token. `stats` (if given) collects both calls.
        """
        ids = self.question_ids(question)
        cache = self.new_cache(tail_tokens=int(ids.numel()))
        self._forward_prefix(prompt, cache, stats)
        positions = question_positions(prompt, int(ids.numel()))
        return self._forward_text(ids[None], positions, cache, prompt.length, stats, all_logits=True).float()

    def answer(
        self,
        prefix: VideoPrefix,
        question: str,
        *,
        max_new_tokens: int = 128,
        sampling: Sampling | None = None,
        on_step: StepHook | None = None,
    ) -> AnswerStream:
        """The answer to `question`, streamed: iterate for text pieces. sampling: greedy by default.
        on_step(index, logits) sees every distribution a token is chosen from (decode.py)."""
        return AnswerStream(self, prefix, question, max_new_tokens, sampling or Sampling(), on_step)


class AnswerStream:
    """Iterate to get the answer text piece by piece; `.result` is complete once iteration ends.

    One answer at a time per prefix (they share its cache); leaving the iteration early (break, an
    exception) rolls the cache back all the same."""

    def __init__(
        self, qa: VideoQA, prefix: VideoPrefix, question: str, max_new_tokens: int, sampling: Sampling, on_step: StepHook | None
    ) -> None:
        check_max_new_tokens(max_new_tokens)
        self.qa, self.prefix, self.question, self.max_new_tokens = qa, prefix, question, max_new_tokens
        self.sampling, self.on_step = sampling, on_step
        self.result = AnswerResult(
            question=question,
            frames=prefix.prompt.frames,
            video_tokens=prefix.prompt.video_tokens,
            cubes=prefix.prompt.layout.num_cubes,
            video_prefill_seconds=prefix.seconds,
            video_prefill_reused=prefix.uses > 0,
            sparse=qa.state.enabled,
            dims=qa.dims,
            temperature=sampling.temperature,
            seed=None if sampling.greedy else sampling.seed,
        )

    @torch.inference_mode()
    def __iter__(self) -> Iterator[str]:
        prefix = self.prefix
        if prefix.answering:
            raise AdasparkError(
                "another answer from this video is still being decoded; finish it before asking the next question"
            )
        if prefix.cache.length != prefix.prompt.length:
            raise AdasparkError(
                f"the video cache holds {prefix.cache.length} tokens, expected {prefix.prompt.length}; this is a bug"
            )
        prefix.answering = True
        try:
            yield from self._answer()
        finally:
            prefix.cache.truncate(prefix.prompt.length)  # roll back: the next question starts after the video again
            prefix.answering = False

    @property
    def step_kind(self) -> str:
        kind = self.qa.decode_step
        if kind not in DECODE_STEPS:
            raise AdasparkError(f"VideoQA.decode_step {kind!r} is not one of {', '.join(DECODE_STEPS)}")
        if kind == "auto":
            # the graphed step attends its whole buffer under a mask: with the decode kernel that skips the
            # unfilled part (attention/decode.py) it wins at every length; through SDPA (which repeats
            # the KV heads) it lost to eager decoding past GRAPH_MAX_TOKENS (H200, 7B shapes: 17 / 44 /
            # 81 ms graphed against 62 / 56 / 56 ms eager at 16K / 64K / 128K)
            device = self.qa.device
            if device.type != "cuda":
                return "dynamic"
            return "graph" if decode_kernel_available(device) or self.prefix.cache.capacity <= GRAPH_MAX_TOKENS else "dynamic"
        if kind == "graph" and self.qa.device.type != "cuda":
            raise AdasparkError(f"CUDA-graph decoding needs a CUDA device, the model is on {self.qa.device.type}")
        return kind

    def _step_function(self) -> Callable[[int], torch.Tensor]:
        """step(token) -> next logits, after everything the cache holds (called once the question is in it)."""
        qa, prefix, kind = self.qa, self.prefix, self.step_kind
        prompt, cache = prefix.prompt, prefix.cache
        if kind == "dynamic":

            def step(token: int) -> torch.Tensor:
                at = cache.length  # the token's index in the sequence; its text position is after the video's
                position = torch.full((3, 1, 1), prompt.next_position + at - prompt.length)
                return qa._forward_text(torch.tensor([[token]]), position, cache, at, None)

            return step
        static = prefix.static_step
        if static is None or not static.fits(cache) or static.graphed != (kind == "graph"):
            # once per video (again only if a long question grew the cache): a graph is captured on its first call
            static = prefix.static_step = StaticDecodeStep(qa, cache, graphed=kind == "graph")
        static.start(prompt.length, prompt.next_position)
        return static

    def _answer(self) -> Iterator[str]:
        qa, prefix, res = self.qa, self.prefix, self.result
        prompt, cache = prefix.prompt, prefix.cache
        reused = prefix.uses > 0
        prefix.uses += 1
        ids = qa.question_ids(self.question)
        n = int(ids.numel())
        cache.reserve(prompt.length + n + self.max_new_tokens)  # no reallocation in the middle of the answer
        question_stats = PrefillStats()
        sync_device(qa.device)
        start = time.perf_counter()
        logits = qa._forward_text(ids[None], question_positions(prompt, n), cache, prompt.length, question_stats)
        sync_device(qa.device)
        question_seconds = time.perf_counter() - start
        res.prefill_seconds = question_seconds + (0.0 if reused else prefix.seconds)
        res.timing = answer_timing(prefix, question_seconds, reused)
        res.stats = prefix.stats.merged_with(question_stats)

        step = self._step_function()
        outcome = DecodeOutcome(tokens=[])
        tokens = decode_tokens(
            logits,
            step,
            stop_ids=qa.stop_ids,
            max_new_tokens=self.max_new_tokens,
            sampling=self.sampling,
            generator=self.sampling.generator(qa.device),
            on_step=self.on_step,
            outcome=outcome,
        )
        tokenizer = qa.processor.tokenizer
        text = ""
        start = time.perf_counter()
        for _ in tokens:
            new_text = tokenizer.decode(outcome.tokens, skip_special_tokens=True)
            if not new_text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
                piece, text = new_text[len(text) :], new_text
                if piece:
                    yield piece
        sync_device(qa.device)
        res.decode_seconds = time.perf_counter() - start
        res.decode_steps, res.stopped = outcome.steps, outcome.stopped
        res.decode_step = self.step_kind
        if isinstance(step, StaticDecodeStep) and step.capture_error is not None:
            res.decode_step, res.decode_note = "static", f"CUDA graph capture failed, decoded eagerly: {step.capture_error}"
        res.generated_tokens = len(outcome.tokens)
        res.answer = tokenizer.decode(outcome.tokens, skip_special_tokens=True)
        if len(res.answer) > len(text):
            yield res.answer[len(text) :]
