"""Preprocessing of the video prefix: frame sizing, patches, the pipelined vision tower, the prompt ids.

Everything here runs before the language model: `VideoPreprocessing.prepare_video` turns decoded frames
(or a `VideoStream`, chunk by chunk while the vision tower runs) into a `VideoPrompt` with the seconds
each stage took. The session (`session.py`) mixes it in.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..adapters.arch import Architecture, HFModule
from ..adapters.patches import patch_spec, video_patches
from ..cubes import CubeLayout, cube_layout
from ..errors import AdasparkError
from ..limits import DEFAULT_MAX_PIXELS, MIN_PIXELS, check_max_pixels  # noqa: F401  (MIN_PIXELS: re-exported)
from ..video import DecodedVideo
from ..video.stream import DEFAULT_CHUNK_FRAMES, DEFAULT_WORKERS, VideoStream, resize_frames
from .prompt import PLACEHOLDER_QUESTION, PromptFormat
from .result import StageTimes


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
    video_embeds: torch.Tensor | None = None  # (video tokens, hidden) vision-tower output, on the model's device
    # Qwen3-VL, with video_embeds: one (video tokens, hidden) per DeepStack level
    deepstack_embeds: list[torch.Tensor] | None = None
    timing: StageTimes = field(default_factory=StageTimes)  # decode, processor, and (pipelined) vision tower

    @property
    def decode_seconds(self) -> float:
        return self.timing.decode_s

    @property
    def preprocess_seconds(self) -> float:
        return self.timing.preprocess_s

    @property
    def vision_seconds(self) -> float:
        """The vision tower, when it ran in prepare_video_stream (else 0: it runs in the prefill)."""
        return self.timing.vision_s

    @property
    def video_tokens(self) -> int:
        return self.layout.num_video_tokens

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[1])



def sync_device(device: torch.device) -> None:
    """Wait for the device (CUDA runs asynchronously), so that wall times measure the work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class VideoPreprocessing:
    """The preprocessing half of `VideoQA` (mixed in): needs `model`, `processor`, `state` and `device`."""

    model: HFModule
    processor: Any
    state: Any
    device: torch.device
    arch: Architecture

    @property
    def prompt_format(self) -> PromptFormat:
        """The prompt's text and ids (qa/prompt.py; training builds its examples with the same one)."""
        return PromptFormat(self.processor, self.model.config)


    def prepare_video(self, video: DecodedVideo | VideoStream, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> VideoPrompt:
        """Run the processor on the sampled frames (with their real timing) and build the cube layout.

        A `VideoStream` (from `open_video_stream` / `open_video`) goes to `prepare_video_stream` with its default
        chunks and workers: decoded chunk by chunk while the vision tower runs, the prompt carrying `video_embeds`.
        """
        from transformers.video_utils import VideoMetadata

        check_max_pixels(max_pixels)
        self.arch.check_max_pixels(max_pixels)
        if isinstance(video, VideoStream):
            return self.prepare_video_stream(video, max_pixels=max_pixels)
        meta = VideoMetadata(
            total_num_frames=int(video.total_frames),
            fps=float(video.source_fps),
            frames_indices=[int(i) for i in video.indices],
        )
        frames = np.ascontiguousarray(video.frames)
        start = time.perf_counter()
        if self.arch.resizes_frames_first:  # --max-pixels per frame, as the pipelined path resizes
            frames = resize_frames(frames, self.frame_size(frames.shape[1], frames.shape[2], len(frames), max_pixels=max_pixels))
        inputs = self.processor(
            text=[self.prompt_format.chat_text(PLACEHOLDER_QUESTION)],
            videos=[frames],
            video_metadata=[meta],
            do_sample_frames=False,
            return_tensors="pt",
            **self._processor_size_kwargs(max_pixels),
        )
        prompt = self.video_prompt(
            inputs["input_ids"][0], inputs["mm_token_type_ids"][0], inputs["video_grid_thw"], inputs.get("second_per_grid_ts")
        )
        prompt.frames = len(video.indices)
        prompt.pixel_values_videos = inputs["pixel_values_videos"]
        prompt.timing = StageTimes(decode_s=video.seconds, preprocess_s=time.perf_counter() - start)
        return prompt

    def video_prompt(
        self, ids: torch.Tensor, types: torch.Tensor, grid: torch.Tensor, second_per_grid_ts: Any
    ) -> VideoPrompt:
        """The prefix up to <|vision_end|> with its M-RoPE positions and cube layout (no pixels yet)."""
        prefix_len = self.prompt_format.prefix_length(ids)
        types = types[:prefix_len]
        positions = self.arch.positions(self.model, ids[:prefix_len], types, grid, second_per_grid_ts)
        layout = cube_layout(self.arch.video_spans(self.model, types, grid), prefix_len, self.state.config.cube)
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
        return self.arch.processor_kwargs(self.processor, max_pixels)

    def frame_size(self, height: int, width: int, frames: int, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
        """(height, width) `frames` frames of height x width are resized to in `prepare_video`.

        The architecture's rule (adapters/arch): for Qwen2.5-VL the one its processor applies (a frame
        already at this size passes through the processor unchanged), for Qwen3-VL adaspark's per-frame
        rule (the frames are resized to it before the processor, which does not resize them).
        """
        check_max_pixels(max_pixels)
        self.arch.check_max_pixels(max_pixels)
        return self.arch.frame_size(self.processor, height, width, frames, max_pixels)

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
        deepstack: list[list[torch.Tensor]] = []  # per DeepStack level (Qwen3-VL), the chunks' features
        grid_t = 0
        grid_hw: tuple[int, int] | None = None
        preprocess = vision = 0.0
        spec = patch_spec(self.processor.video_processor)  # None: a processor we do not reproduce
        for chunk in stream.chunks(size=size, chunk_frames=chunk_frames, workers=workers):
            start = time.perf_counter()
            pixels, chunk_grid = self._chunk_patches(chunk.frames, spec, size_kwargs)
            sync_device(self.device)
            preprocess += time.perf_counter() - start
            (t, h, w) = (int(x) for x in chunk_grid[0])
            if grid_hw not in (None, (h, w)):
                raise AdasparkError(f"frame chunks of different sizes ({grid_hw} and {(h, w)} patches); this is a bug")
            grid_hw = (h, w)
            grid_t += t
            start = time.perf_counter()
            out = base.get_video_features(pixels, chunk_grid.to(self.device), return_dict=True)
            embeds.append(torch.cat(list(out.pooler_output)))
            for level, features in enumerate(getattr(out, "deepstack_features", None) or ()):
                if level == len(deepstack):
                    deepstack.append([])
                deepstack[level].append(torch.cat(list(features)))
            sync_device(self.device)
            vision += time.perf_counter() - start
        assert grid_hw is not None  # a stream has at least one frame
        start = time.perf_counter()
        grid = torch.tensor([[grid_t, *grid_hw]])
        meta = VideoMetadata(
            total_num_frames=int(stream.total_frames),
            fps=float(stream.source_fps),
            frames_indices=[int(i) for i in stream.indices],
        )
        ids = self.arch.stream_prompt_ids(self, grid, meta)
        types = (ids == self.processor.video_token_id).to(torch.int64) * 2  # 2 marks video tokens, as the processor
        seconds_per_grid = [self.processor.video_processor.temporal_patch_size / meta.sampled_fps]
        prompt = self.video_prompt(ids, types, grid, seconds_per_grid)
        prompt.frames = len(stream.indices)
        prompt.video_embeds = torch.cat(embeds)
        prompt.deepstack_embeds = [torch.cat(chunks) for chunks in deepstack] or None
        prompt.timing = StageTimes(decode_s=stream.open_seconds + stream.wait_seconds,
                                   preprocess_s=preprocess + time.perf_counter() - start, vision_s=vision)
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

    def question_ids(self, question: str) -> torch.Tensor:
        """Token ids after <|vision_end|> for `question` (question text and the assistant header)."""
        return self.prompt_format.question_ids(question)
