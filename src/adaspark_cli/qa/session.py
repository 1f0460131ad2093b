"""Video question answering: prefill a video once, then answer questions from copies of its cache.

The prompt puts the video before the question, so the prefix (system prompt + video) and its
sparsity do not depend on the question: it is prefilled once under AdaSpark and its KV cache is
deep-copied for each question, whose tokens attend densely (method.md section 2). Answer tokens
attend densely too, or, with `decode_top_p` set, their top-p cubes of the video, scored against cube
mean keys computed once per prefix. Decoding is greedy and streamed piece by piece.
"""

from __future__ import annotations

import copy
import inspect
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..adapters.patches import patch_spec, video_patches
from ..adapters.positions import mrope_position_ids
from ..adapters.qwen2_5_vl import SparseState, cached_layer_keys
from ..attention.decode import DecodeContext, DecodeStats, VideoCubeKeys, video_cube_keys
from ..cubes import CubeLayout, cube_layout, video_spans
from ..errors import AdasparkError
from ..stats import ModelDims, PrefillStats, prefill_flops, reduction
from ..video import DecodedVideo
from ..video.stream import DEFAULT_CHUNK_FRAMES, DEFAULT_WORKERS, VideoStream

DEFAULT_MAX_PIXELS = 448 * 448  # per frame: a 16 x 16 token grid per frame pair
MIN_PIXELS = 4 * 28 * 28  # never upscale small frames beyond the 2 x 2 token minimum
PLACEHOLDER_QUESTION = "?"


@dataclass
class VideoPrompt:
    """A processed video prefix: token ids, vision inputs, positions and cube layout."""

    frames: int
    input_ids: torch.Tensor  # (1, P) prefix ids, up to and including <|vision_end|>
    pixel_values_videos: torch.Tensor | None  # None when video_embeds were computed chunk by chunk
    video_grid_thw: torch.Tensor  # (1, 3)
    positions: torch.Tensor  # (3, 1, P)
    next_position: int  # first text position after the prefix
    layout: CubeLayout
    decode_seconds: float = 0.0  # decoding (DecodedVideo.seconds); pipelined: opening + time waited for frames
    preprocess_seconds: float = 0.0  # the processor: resize, normalise, patchify, tokenize
    video_embeds: torch.Tensor | None = None  # (video tokens, hidden) vision-tower output, on the model's device
    vision_seconds: float = 0.0  # the vision tower, when it ran in prepare_video_stream

    @property
    def video_tokens(self) -> int:
        return self.layout.num_video_tokens

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[1])


@dataclass
class VideoPrefix:
    """The prefilled video: its KV cache (never mutated), statistics and cost."""

    prompt: VideoPrompt
    cache: Any
    stats: PrefillStats
    seconds: float  # vision tower + language-model prefill of the prefix
    vision_seconds: float = 0.0
    uses: int = 0
    cube_keys: VideoCubeKeys | None = None  # for sparse decoding; computed from `cache` on first use


@dataclass
class AnswerResult:
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
    decode_top_p: float | None = None  # None: dense decoding
    decode_steps: int = 0  # forward calls after the question (one per answer token that needed one)
    decode_stats: DecodeStats = field(default_factory=DecodeStats)

    def layer_rows(self) -> list[dict[str, Any]]:
        return layer_rows(self.stats)

    def flops(self) -> dict[str, Any]:
        if self.dims is None:
            return {}
        dense, sparse = prefill_flops(self.stats, self.dims)
        return {"dense": dense.to_dict(), "sparse": sparse.to_dict(), "reduction": reduction(dense, sparse)}

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
            "decode": self.decode_stats.to_json(top_p=self.decode_top_p, steps=self.decode_steps, num_cubes=self.cubes),
        }


def check_max_pixels(max_pixels: int) -> None:
    if max_pixels < MIN_PIXELS:
        raise AdasparkError(
            f"--max-pixels {max_pixels} is below the minimum {MIN_PIXELS} (2x2 tokens of 28x28 px); e.g. --max-pixels 200704"
        )


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
    """Where the wait for the first answer token went, in seconds (model loading excluded).

    decode_s: video decoding; preprocess_s: the processor; vision_s: the vision tower; prefill_s: the
    language-model prefill (video prefix and question); first_token_s: their sum. A question that
    reuses the video prefill pays only its own prefill; the other stages are 0.
    """
    prompt = prefix.prompt
    if reused:
        stages = {"decode_s": 0.0, "preprocess_s": 0.0, "vision_s": 0.0, "prefill_s": question_seconds}
    else:
        stages = {
            "decode_s": prompt.decode_seconds,
            "preprocess_s": prompt.preprocess_seconds,
            "vision_s": prefix.vision_seconds,
            "prefill_s": prefix.seconds - prefix.vision_seconds + question_seconds,
        }
    return {**stages, "first_token_s": sum(stages.values())}


def question_positions(prompt: VideoPrompt, n: int) -> torch.Tensor:
    """(3, 1, n) M-RoPE ids of n text tokens right after the video prefix (same on all three axes)."""
    return torch.arange(prompt.next_position, prompt.next_position + n).view(1, 1, -1).expand(3, 1, -1)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cache_kwarg(model: torch.nn.Module) -> str:
    """transformers 5.24 renamed `past_key_values` to `cache` (the old name warns until 5.40)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


class VideoQA:
    """Answers questions about one video at a time with a (sparsified) Qwen2.5-VL model."""

    def __init__(self, model: torch.nn.Module, processor: Any, state: SparseState) -> None:
        self.model = model
        self.processor = processor
        self.state = state
        self.device = next(model.parameters()).device
        self.dims = ModelDims.from_text_config(model.config.text_config)
        self._cache_kw = _cache_kwarg(model)
        self.stop_ids = self._stop_token_ids()

    # ---- prompt -------------------------------------------------------------------------------

    def _chat_text(self, question: str) -> str:
        messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

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

    def prepare_video(self, video: DecodedVideo | VideoStream, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> VideoPrompt:
        """Run the processor on the sampled frames (with their real timing) and build the cube layout.

        A `VideoStream` (from `open_video_stream` / `open_video`) goes to `prepare_video_stream` with its default
        chunks and workers: decoded chunk by chunk while the vision tower runs, the prompt carrying `video_embeds`.
        """
        from transformers.video_utils import VideoMetadata

        check_max_pixels(max_pixels)
        if isinstance(video, VideoStream):
            return self.prepare_video_stream(video, max_pixels=max_pixels)
        meta = VideoMetadata(
            total_num_frames=int(video.total_frames),
            fps=float(video.source_fps),
            frames_indices=[int(i) for i in video.indices],
        )
        frames = np.ascontiguousarray(video.frames)
        start = time.perf_counter()
        inputs = self.processor(
            text=[self._chat_text(PLACEHOLDER_QUESTION)],
            videos=[frames],
            video_metadata=[meta],
            do_sample_frames=False,
            return_tensors="pt",
            **self._processor_size_kwargs(max_pixels),
        )
        prompt = self._video_prompt(
            inputs["input_ids"][0], inputs["mm_token_type_ids"][0], inputs["video_grid_thw"], inputs.get("second_per_grid_ts")
        )
        prompt.frames = len(video.indices)
        prompt.pixel_values_videos = inputs["pixel_values_videos"]
        prompt.decode_seconds = video.seconds
        prompt.preprocess_seconds = time.perf_counter() - start
        return prompt

    def _video_prompt(
        self, ids: torch.Tensor, types: torch.Tensor, grid: torch.Tensor, second_per_grid_ts: Any
    ) -> VideoPrompt:
        """The prefix up to <|vision_end|> with its M-RoPE positions and cube layout (no pixels yet)."""
        vision_end = self.model.config.vision_end_token_id
        ends = (ids == vision_end).nonzero().flatten()
        if ends.numel() == 0:
            raise AdasparkError("the chat template produced no <|vision_end|> token; the processor does not match the model")
        prefix_len = int(ends[-1]) + 1
        types = types[:prefix_len]
        merge = self.model.config.vision_config.spatial_merge_size
        positions, _ = mrope_position_ids(
            types,
            grid,
            second_per_grid_ts,
            spatial_merge_size=merge,
            tokens_per_second=self.model.config.vision_config.tokens_per_second,
        )
        layout = cube_layout(video_spans(types, grid, merge), prefix_len, self.state.config.cube)
        return VideoPrompt(
            frames=0,
            input_ids=ids[None, :prefix_len],
            pixel_values_videos=None,
            video_grid_thw=grid,
            positions=positions[:, None, :],
            next_position=int(positions.max()) + 1,
            layout=layout,
        )

    # ---- pipelined video input (issue 6, part 2) --------------------------------------------------

    def _processor_size_kwargs(self, max_pixels: int) -> dict[str, Any]:
        """The resize settings passed to the processor: --max-pixels, never the processor's image limit."""
        # qwen-vl-utils (the reference preprocessing) also caps the video's total tokens; transformers
        # 5.17-5.2x apply that only when asked, and warn when not told either way
        cap = {"cap_pixels_per_frame": True} if hasattr(self.processor.video_processor, "cap_pixels_per_frame") else {}
        return {"size": {"shortest_edge": MIN_PIXELS, "longest_edge": max_pixels}, **cap}

    def frame_size(self, height: int, width: int, frames: int, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
        """(height, width) the processor resizes `frames` frames of height x width to in `prepare_video`.

        The same rule as transformers' Qwen2-VL video processor: smart_resize to multiples of
        patch x merge px within [MIN_PIXELS, max_pixels], with max_pixels first lowered to the video's even
        share of the total-token budget when the processor caps pixels per frame (qwen-vl-utils' rule).
        A frame already at this size passes through the processor unchanged.
        """
        from transformers.models.qwen2_vl.video_processing_qwen2_vl import smart_resize

        check_max_pixels(max_pixels)
        vp = self.processor.video_processor
        factor = vp.patch_size * vp.merge_size
        limit = max_pixels
        if self._processor_size_kwargs(max_pixels).get("cap_pixels_per_frame"):
            total_pixels = int(vp.max_video_tokens * factor * factor * 0.9)
            limit = max(min(limit, total_pixels * vp.temporal_patch_size // frames), int(MIN_PIXELS * 1.05))
        return smart_resize(height, width, factor=factor, min_pixels=MIN_PIXELS, max_pixels=limit)

    @torch.inference_mode()
    def prepare_video_stream(
        self,
        stream: VideoStream,
        *,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        chunk_frames: int = DEFAULT_CHUNK_FRAMES,
        workers: int = DEFAULT_WORKERS,
    ) -> VideoPrompt:
        """`prepare_video` with the vision tower run chunk by chunk while the next frames decode.

        Frames arrive already resized to `frame_size` (decoded and resized in background threads); each
        chunk of frame pairs goes through the processor and the vision tower, and the embeddings are
        concatenated. This is exact: the processor works frame by frame, and every attention of the
        Qwen2.5-VL vision tower (window and full blocks) stays inside one frame pair (cu_seqlens are per
        temporal patch), so the result equals one call on the whole video (tests/test_pipeline.py).
        The returned prompt carries `video_embeds` instead of pixel values.
        """
        from transformers.video_utils import VideoMetadata

        size = self.frame_size(stream.height, stream.width, len(stream.indices), max_pixels=max_pixels)
        size_kwargs = self._processor_size_kwargs(max_pixels)
        base = self.model.model  # get_video_features: the same vision call (and dtype cast) as the model's forward
        embeds: list[torch.Tensor] = []
        grid_t = 0
        grid_hw: tuple[int, int] | None = None
        preprocess = vision = 0.0
        spec = patch_spec(self.processor.video_processor)  # None: a processor we do not reproduce
        for chunk in stream.chunks(size=size, chunk_frames=chunk_frames, workers=workers):
            start = time.perf_counter()
            pixels, chunk_grid = self._chunk_patches(chunk.frames, spec, size_kwargs)
            _sync(self.device)
            preprocess += time.perf_counter() - start
            (t, h, w) = (int(x) for x in chunk_grid[0])
            if grid_hw not in (None, (h, w)):
                raise AdasparkError(f"frame chunks of different sizes ({grid_hw} and {(h, w)} patches); this is a bug")
            grid_hw = (h, w)
            grid_t += t
            start = time.perf_counter()
            out = base.get_video_features(pixels, chunk_grid.to(self.device), return_dict=True)
            embeds.append(torch.cat(list(out.pooler_output)))
            _sync(self.device)
            vision += time.perf_counter() - start
        assert grid_hw is not None  # a stream has at least one frame
        start = time.perf_counter()
        grid = torch.tensor([[grid_t, *grid_hw]])
        merge = self.processor.video_processor.merge_size
        n_tokens = grid_t * grid_hw[0] * grid_hw[1] // (merge * merge)
        ids = self._prompt_ids(n_tokens)
        types = (ids == self.processor.video_token_id).to(torch.int64) * 2  # 2 marks video tokens, as the processor
        meta = VideoMetadata(
            total_num_frames=int(stream.total_frames),
            fps=float(stream.source_fps),
            frames_indices=[int(i) for i in stream.indices],
        )
        seconds_per_grid = [self.processor.video_processor.temporal_patch_size / meta.sampled_fps]
        prompt = self._video_prompt(ids, types, grid, seconds_per_grid)
        prompt.frames = len(stream.indices)
        prompt.video_embeds = torch.cat(embeds)
        prompt.decode_seconds = stream.open_seconds + stream.wait_seconds
        prompt.preprocess_seconds = preprocess + time.perf_counter() - start
        prompt.vision_seconds = vision
        return prompt

    def _chunk_patches(
        self, frames: np.ndarray, spec: Any, size_kwargs: dict[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixel values (on the model's device) and grid of frames already at their final size.

        Rescaling, normalising and patching run on the model's device (`adapters.patches`): on a GPU that is
        milliseconds against ~20 ms per frame pair for the processor on the CPU. Where the processor does
        something else (`spec` is None), it does the work."""
        if spec is not None:
            frames_t = torch.from_numpy(np.ascontiguousarray(frames))
            if self.device.type == "cuda":
                frames_t = frames_t.pin_memory().to(self.device, non_blocking=True)
            return video_patches(frames_t, spec)
        inputs = self.processor.video_processor(videos=[frames], do_sample_frames=False, return_tensors="pt", **size_kwargs)
        return inputs["pixel_values_videos"].to(self.device), inputs["video_grid_thw"]

    def _prompt_ids(self, n_video_tokens: int) -> torch.Tensor:
        """Token ids of the prompt up to the question with `n_video_tokens` video pads: the text is tokenized
        with one pad, which is then repeated (tokenizing 32K pads one by one costs a noticeable fraction of a second)."""
        text = self._chat_text(PLACEHOLDER_QUESTION)
        ids = self.processor.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
        at = (ids == self.processor.video_token_id).nonzero().flatten()
        if at.numel() != 1:
            raise AdasparkError(f"the chat template gave {at.numel()} video placeholders, expected one; this is a bug")
        i = int(at[0])
        pads = torch.full((n_video_tokens,), int(ids[i]), dtype=ids.dtype)
        return torch.cat([ids[:i], pads, ids[i + 1 :]])

    def question_ids(self, question: str) -> torch.Tensor:
        """Token ids after <|vision_end|> for `question` (question text and the assistant header)."""
        text = self._chat_text(question)
        ids = self.processor.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
        ends = (ids == self.model.config.vision_end_token_id).nonzero().flatten()
        return ids[int(ends[-1]) + 1 :]

    # ---- forward passes -------------------------------------------------------------------------

    def _forward_prefix(self, prompt: VideoPrompt, cache: Any, stats: PrefillStats | None) -> None:
        """System prompt + video into `cache`, with the cube layout active (the sparse part)."""
        if prompt.video_embeds is not None:  # vision tower already run (prepare_video_stream)
            inputs: dict[str, Any] = {"inputs_embeds": self._embed_with_video(prompt)}
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

    def _step(
        self,
        ids: torch.Tensor,
        positions: torch.Tensor,
        cache: Any,
        offset: int,
        stats: PrefillStats | None,
        *,
        all_logits: bool = False,
        decode: DecodeContext | None = None,
    ) -> torch.Tensor:
        """Text tokens (question or one decoded token) after the cache, dense unless `decode` is given
        (a decode step attending top-p cubes); logits of the last position (V,), or of every position
        (n, V) with all_logits."""
        with self.state.forward_context(layout=None, offset=offset, stats=stats, decode=decode):
            out = self.model(
                input_ids=ids.to(self.device),
                position_ids=positions.to(self.device),
                use_cache=True,
                logits_to_keep=0 if all_logits else 1,
                **{self._cache_kw: cache},
            )
        return out.logits[0] if all_logits else out.logits[0, -1]

    @torch.inference_mode()
    def prefill_video(self, prompt: VideoPrompt, *, progress: Callable[[int, int], None] | None = None) -> VideoPrefix:
        """Prefill system prompt + video once; the cache is reused by every question.

        progress(done, total) is called after each language-model layer (a long prefill on the CPU
        takes many seconds)."""
        from transformers import DynamicCache

        stats = PrefillStats()
        cache = DynamicCache()
        vision: list[float] = []
        hooks = self._time_module(self.model.model.visual, vision)
        if progress is not None:
            hooks += self._layer_progress(progress)
        _sync(self.device)
        start = time.perf_counter()
        try:
            self._forward_prefix(prompt, cache, stats)
        finally:
            for hook in hooks:
                hook.remove()
        _sync(self.device)
        # a streamed prompt ran the vision tower before: count it here, so timing stays decode + vision + prefill
        vision_seconds = sum(vision) + prompt.vision_seconds
        seconds = time.perf_counter() - start + prompt.vision_seconds
        return VideoPrefix(prompt=prompt, cache=cache, stats=stats, seconds=seconds, vision_seconds=vision_seconds)

    def _layer_progress(self, progress: Callable[[int, int], None]) -> list[Any]:
        """Forward hooks reporting each finished language-model layer to `progress(done, total)`."""
        layers = self.model.model.language_model.layers

        def reporter(done: int) -> Callable[..., None]:
            return lambda *_: progress(done, len(layers))

        return [layer.register_forward_hook(reporter(i + 1)) for i, layer in enumerate(layers)]

    def _time_module(self, module: torch.nn.Module, out: list[float]) -> list[Any]:
        """Hooks that append the wall time of each call of `module` (synchronised on CUDA) to `out`."""
        started: list[float] = []

        def before(*_: Any) -> None:
            _sync(self.device)
            started.append(time.perf_counter())

        def after(*_: Any) -> None:
            _sync(self.device)
            out.append(time.perf_counter() - started.pop())

        return [module.register_forward_pre_hook(before), module.register_forward_hook(after)]

    @torch.inference_mode()
    def prefill_logits(self, prompt: VideoPrompt, question: str, *, stats: PrefillStats | None = None) -> torch.Tensor:
        """One whole prefill (video prefix, then the question) in the current mode, cache discarded.

        Returns the float32 logits (n, V) at every position of the question part (the n tokens after
        <|vision_end|>: question text, <|im_end|> and the assistant header); row i predicts token i + 1,
        and the last row is the distribution of the first answer token. `stats` (if given) collects both calls.
        """
        from transformers import DynamicCache

        cache = DynamicCache()
        self._forward_prefix(prompt, cache, stats)
        ids = self.question_ids(question)
        positions = question_positions(prompt, int(ids.numel()))
        return self._step(ids[None], positions, cache, prompt.length, stats, all_logits=True).float()

    def decode_context(self, prefix: VideoPrefix, stats: DecodeStats) -> DecodeContext | None:
        """The sparse decode setting for answers from `prefix`, or None for dense decoding (--dense, or
        decode_top_p unset). The cube mean keys are computed once per prefix from its (unmutated) cache."""
        top_p = self.state.config.decode_top_p
        if not self.state.enabled or top_p is None:
            return None
        if prefix.cube_keys is None:
            prefix.cube_keys = VideoCubeKeys(layout=prefix.prompt.layout.to(self.device))
        video = prefix.cube_keys
        # the sparse layers can change between questions (state.config); add any not computed yet
        missing = [i for i in range(self.dims.layers) if self.state.layer_is_sparse(i) and i not in video.mean_keys]
        if missing:
            video.mean_keys.update(video_cube_keys(cached_layer_keys(prefix.cache, missing), video.layout).mean_keys)
        return DecodeContext(video=video, top_p=top_p, stats=stats)

    def answer(self, prefix: VideoPrefix, question: str, *, max_new_tokens: int = 128) -> AnswerStream:
        return AnswerStream(self, prefix, question, max_new_tokens)


class AnswerStream:
    """Iterate to get the answer text piece by piece; `.result` is complete once iteration ends."""

    def __init__(self, qa: VideoQA, prefix: VideoPrefix, question: str, max_new_tokens: int) -> None:
        if max_new_tokens < 1:
            raise AdasparkError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
        self.qa, self.prefix, self.question, self.max_new_tokens = qa, prefix, question, max_new_tokens
        self.result = AnswerResult(
            question=question,
            frames=prefix.prompt.frames,
            video_tokens=prefix.prompt.video_tokens,
            cubes=prefix.prompt.layout.num_cubes,
            video_prefill_seconds=prefix.seconds,
            video_prefill_reused=prefix.uses > 0,
            sparse=qa.state.enabled,
            dims=qa.dims,
            decode_top_p=qa.state.config.decode_top_p if qa.state.enabled else None,
        )

    @torch.inference_mode()
    def __iter__(self) -> Iterator[str]:
        qa, prefix, res = self.qa, self.prefix, self.result
        prompt = prefix.prompt
        reused = prefix.uses > 0
        prefix.uses += 1
        cache = copy.deepcopy(prefix.cache)
        ids = qa.question_ids(self.question)
        n = int(ids.numel())
        positions = question_positions(prompt, n)
        question_stats = PrefillStats()
        _sync(qa.device)
        start = time.perf_counter()
        logits = qa._step(ids[None], positions, cache, prompt.length, question_stats)
        _sync(qa.device)
        question_seconds = time.perf_counter() - start
        res.prefill_seconds = question_seconds + (0.0 if reused else prefix.seconds)
        res.timing = answer_timing(prefix, question_seconds, reused)
        res.stats = prefix.stats.merged_with(question_stats)
        tokenizer = qa.processor.tokenizer
        generated: list[int] = []
        text = ""
        position = prompt.next_position + n
        length = prompt.length + n
        start = time.perf_counter()
        decode = qa.decode_context(prefix, res.decode_stats)
        res.stopped = "max_new_tokens"
        for _ in range(self.max_new_tokens):
            token = int(torch.argmax(logits))
            if token in qa.stop_ids:
                res.stopped = "eos"
                break
            generated.append(token)
            new_text = tokenizer.decode(generated, skip_special_tokens=True)
            if not new_text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
                piece, text = new_text[len(text) :], new_text
                if piece:
                    yield piece
            if len(generated) == self.max_new_tokens:
                break
            step_pos = torch.full((3, 1, 1), position)
            logits = qa._step(torch.tensor([[token]]), step_pos, cache, length, None, decode=decode)
            res.decode_steps += 1
            position += 1
            length += 1
        _sync(qa.device)
        res.decode_seconds = time.perf_counter() - start
        res.generated_tokens = len(generated)
        res.answer = tokenizer.decode(generated, skip_special_tokens=True)
        if len(res.answer) > len(text):
            yield res.answer[len(text) :]
