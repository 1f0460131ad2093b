"""Training examples: synthetic scenes rendered in memory, encoded as the QA session prompts the model, batched.

Frames are rendered with numpy (no H.264 files) and turned into the model's inputs by `Encoder.encode`, which
builds the prompt with the session's own `PromptFormat` and the processor's patching (`adapters.patches`) for
frames of a multiple of 28 px (tests/test_train.py checks it against `VideoQA.prepare_video`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..adapters.patches import video_patches
from ..adapters.positions import mrope_position_ids
from ..cubes import CubeLayout, cube_layout, video_spans
from ..qa.prompt import PromptFormat
from ..synth.labels import SceneLabels, scene_labels
from ..synth.render import render_frames
from ..synth.suite import iter_training_items
from .presets import TrainConfig

IGNORE = -100  # the label of tokens outside the answer


@dataclass
class Example:
    """One training sequence: prefix (system + video) + question + answer + <|im_end|>."""

    input_ids: torch.Tensor  # (L,) int64
    labels: torch.Tensor  # (L,) int64, IGNORE outside the answer
    types: torch.Tensor  # (L,) mm_token_type_ids: 2 on video tokens
    positions: torch.Tensor  # (3, L) official M-RoPE ids
    frames: torch.Tensor  # (N, H, W, 3) uint8: a quarter of the float patches' bytes to ship from a worker
    grid: torch.Tensor  # (1, 3) video_grid_thw
    prefix_len: int  # up to and including <|vision_end|>
    answer: str = ""
    aux: dict[str, torch.Tensor] | None = None  # dense targets (`train.aux`): patch_shape, patch_color, state

    @property
    def pixel_values(self) -> torch.Tensor:
        """(t*h*w patches, 3*2*14*14) float32, as the processor gives them."""
        return pixel_values(self.frames)[0]


def pixel_values(frames: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Qwen2.5-VL patches of (N, H, W, 3) uint8 frames whose sides are multiples of 28: (patches, 1176), grid (1, 3),
    as Qwen2VLVideoProcessor gives them (`adapters.patches.video_patches`; a tensor stays on its device)."""
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(np.ascontiguousarray(frames))
    return video_patches(frames)


class Encoder:
    """Turns (frames, question, answer) into an `Example` with the prompt `VideoQA` gives the model
    (`qa.prompt.PromptFormat`: the same chat text and token ids)."""

    def __init__(self, processor: Any, model_config: Any, *, fps: float = 2.0) -> None:
        self.prompt = PromptFormat(processor, model_config)
        self.tok = processor.tokenizer
        self.cfg = model_config
        self.fps = fps
        self.im_end = self.tok.convert_tokens_to_ids("<|im_end|>")
        self.video_pad = model_config.video_token_id

    def encode(self, frames: np.ndarray, question: str, answer: str = "", labels: SceneLabels | None = None) -> Example:
        merge = self.cfg.vision_config.spatial_merge_size
        patch, temporal = self.cfg.vision_config.patch_size, self.cfg.vision_config.temporal_patch_size
        n, height, width = frames.shape[:3]
        grid = torch.tensor([[-(-n // temporal), height // patch, width // patch]])
        n_video = int(grid.prod()) // (merge * merge)
        prefix = self.prompt.prefix_ids(n_video)
        q_ids = self.prompt.question_ids(question)
        a_ids = torch.tensor(list(self.tok(answer, add_special_tokens=False)["input_ids"]) + [self.im_end]
                             if answer else [], dtype=torch.long)
        ids = torch.cat([prefix, q_ids, a_ids]).long()
        token_labels = torch.full_like(ids, IGNORE)
        if a_ids.numel():
            token_labels[-a_ids.numel() :] = a_ids
        types = (ids == self.video_pad).long() * 2
        # temporal_patch_size / sampled fps: every frame is kept, so 2 / fps seconds per frame pair
        positions, _ = mrope_position_ids(
            types, grid, [2.0 / self.fps], spatial_merge_size=merge,
            tokens_per_second=self.cfg.vision_config.tokens_per_second,
        )
        aux = None
        if labels is not None:  # the model's video tokens run (pair, row, column) like the label arrays
            aux = {"patch_shape": torch.from_numpy(labels.patch_shape.reshape(-1)),
                   "patch_color": torch.from_numpy(labels.patch_color.reshape(-1)),
                   "state": torch.from_numpy(labels.state)}
            if aux["patch_shape"].numel() != n_video:
                raise ValueError(f"{aux['patch_shape'].numel()} patch labels for {n_video} video tokens")
        return Example(ids, token_labels, types, positions, torch.from_numpy(np.ascontiguousarray(frames)), grid,
                       int(prefix.numel()), answer, aux)

    def layout(self, ex: Example, cube: tuple[int, int, int]) -> CubeLayout:
        """Cube layout over the whole sequence (question and answer tokens are text: dense)."""
        return self.batch_layout(ex.input_ids[None], ex.grid, cube)

    def batch_layout(self, input_ids: torch.Tensor, grid: torch.Tensor, cube: tuple[int, int, int]) -> CubeLayout:
        """The one layout of a right-padded batch (B, L) whose videos sit at the same tokens (one video length:
        the prompt before the video is the same); padding counts as text."""
        video = input_ids == self.video_pad
        if not bool((video == video[:1]).all()) or not bool((grid == grid[:1]).all()):
            raise ValueError("a sparse training batch needs videos of one length (the same video tokens in every row)")
        merge = self.cfg.vision_config.spatial_merge_size
        types = video[0].long() * 2  # mm_token_type_ids, as `encode` makes them
        return cube_layout(video_spans(types, grid[:1], merge), int(input_ids.shape[1]), cube)


def collate(examples: Sequence[Example], pad_id: int, *, raw_frames: bool = False) -> dict[str, torch.Tensor]:
    """Right-pad a batch: input_ids/labels/attention_mask (B, L), position_ids (3, B, L), pixel values concatenated.

    With ``raw_frames`` the videos stay uint8 frames (``frames``, ``frame_counts``) for `model_inputs` to
    turn into pixel values on the GPU: a DataLoader worker then ships a quarter of the bytes."""
    length = max(int(e.input_ids.numel()) for e in examples)
    b = len(examples)
    ids = torch.full((b, length), pad_id, dtype=torch.long)
    labels = torch.full((b, length), IGNORE, dtype=torch.long)
    mask = torch.zeros((b, length), dtype=torch.long)
    pos = torch.zeros((3, b, length), dtype=torch.long)
    for i, e in enumerate(examples):
        n = int(e.input_ids.numel())
        ids[i, :n], labels[i, :n], mask[i, :n], pos[:, i, :n] = e.input_ids, e.labels, 1, e.positions
        if n < length:  # padding continues the positions (masked anyway)
            pos[:, i, n:] = torch.arange(int(e.positions.max()) + 1, int(e.positions.max()) + 1 + length - n)
    batch = {"input_ids": ids, "labels": labels, "attention_mask": mask, "position_ids": pos,
             "video_grid_thw": torch.cat([e.grid for e in examples])}
    if all(e.aux is not None for e in examples):
        batch.update(_collate_aux(examples))
    if raw_frames:
        batch["frames"] = torch.cat([e.frames for e in examples])
        batch["frame_counts"] = torch.tensor([int(e.frames.shape[0]) for e in examples])
    else:
        batch["pixel_values_videos"] = torch.cat([e.pixel_values for e in examples])
    return batch


def _collate_aux(examples: Sequence[Example]) -> dict[str, torch.Tensor]:
    """The dense targets of a batch, concatenated in the order of its video tokens (batch, then time); the state
    rows belong to the last video token of each frame pair (``aux_state_index`` into that order)."""
    index, offset = [], 0
    for e in examples:
        assert e.aux is not None
        n_video, pairs = int(e.aux["patch_shape"].numel()), int(e.aux["state"].shape[0])
        per_pair = n_video // pairs
        index.append(offset + torch.arange(1, pairs + 1) * per_pair - 1)
        offset += n_video
    cat = {k: torch.cat([e.aux[k] for e in examples]) for k in ("patch_shape", "patch_color", "state")}  # type: ignore[index]
    return {"aux_patch_shape": cat["patch_shape"], "aux_patch_color": cat["patch_color"], "aux_state": cat["state"],
            "aux_state_index": torch.cat(index)}


def model_inputs(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Move a collated batch to `device`; raw uint8 frames become pixel values there."""
    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    if "frames" in batch:
        counts = batch.pop("frame_counts").tolist()
        videos = batch.pop("frames").split(counts)
        batch["pixel_values_videos"] = torch.cat([pixel_values(v)[0] for v in videos])
    return batch


def batch_size(cfg: TrainConfig, n_frames: int) -> int:
    """Videos per batch: cfg.batch up to 128 frames, then fewer so a batch holds about as many tokens."""
    return max(2, min(cfg.batch, cfg.batch * 128 // n_frames))


def example_stream(encoder: Encoder, cfg: TrainConfig, seed: int) -> Iterator[list[Example]]:
    """Endless batches of `cfg.batch` examples, each batch of one video length (so padding is small)."""
    rng = np.random.default_rng([seed, 1])
    weights = np.asarray(cfg.length_weights or [1.0] * len(cfg.lengths), dtype=np.float64)
    weights = weights / weights.sum()
    streams = {n: iter(iter_training_items(seed * 1000 + n, lengths=[n], tasks=cfg.tasks,
                                           needle_share=cfg.needle_share, clutter=cfg.clutter,
                                           look_alike=cfg.look_alike))
               for n in cfg.lengths}
    while True:
        n = int(rng.choice(cfg.lengths, p=weights))
        batch = []
        for _ in range(batch_size(cfg, n)):
            scene, q, a = next(streams[n])
            labels = scene_labels(scene) if cfg.aux_weight > 0 else None
            batch.append(encoder.encode(render_frames(scene), q, a, labels))  # type: ignore[arg-type]
        yield batch


def collated_stream(encoder: Encoder, cfg: TrainConfig, seed: int) -> Iterator[dict[str, torch.Tensor]]:
    """`example_stream` collated with raw uint8 frames: what a DataLoader worker ships for a dense step."""
    pad_id = encoder.tok.pad_token_id
    for examples in example_stream(encoder, cfg, seed):
        yield collate(examples, pad_id, raw_frames=True)


class _BatchDataset(torch.utils.data.IterableDataset):  # type: ignore[type-arg]
    """Each DataLoader worker renders its own stream (worker id mixed into the seed)."""

    def __init__(self, encoder: Encoder, cfg: TrainConfig, seed: int, collated: bool) -> None:
        self.encoder, self.cfg, self.seed, self.collated = encoder, cfg, seed, collated

    def __iter__(self) -> Iterator[Any]:
        info = torch.utils.data.get_worker_info()
        wid = 0 if info is None else info.id + 1
        stream = collated_stream if self.collated else example_stream
        return stream(self.encoder, self.cfg, self.seed * 100 + wid)  # type: ignore[operator]


def batches(encoder: Encoder, cfg: TrainConfig, seed: int, *, collated: bool = False) -> Iterator[Any]:
    """Batches from `example_stream` (lists of examples) or, ``collated``, from `collated_stream`."""
    if cfg.workers <= 0:
        stream = collated_stream if collated else example_stream
        return stream(encoder, cfg, seed)  # type: ignore[operator]
    loader = torch.utils.data.DataLoader(
        _BatchDataset(encoder, cfg, seed, collated), batch_size=None, num_workers=cfg.workers, prefetch_factor=4,
        persistent_workers=False, pin_memory=torch.cuda.is_available(),
    )
    return iter(loader)
