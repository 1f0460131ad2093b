"""Train a small Qwen2.5-VL from scratch on synthetic long-video QA, then fine-tune it with AdaSpark active.

Reproduce a bundled checkpoint (the exact command of each is in its model card)::

    python -m adaspark_cli.synth.train --out runs/small --preset small --steps 3000 --sparse-steps 300

Phase 1 (dense) trains every weight with teacher forcing on the answer tokens only (the answer and its
``<|im_end|>``; the prompt's labels are -100), AdamW, bf16 autocast on CUDA, batches of videos of one length
(right-padded). Phase 2 (AdaSpark, method.md section 4: "light fine-tuning with the sparsity active")
continues from phase 1 with `sparsify(model, config)` enabled in every training forward: the reference
AdaS-Attn (masked SDPA over the selected cubes) and the gathered AdaS-FFN with mean compensation are
differentiable in the kept paths (selection itself is a hard, gradient-free choice), one sequence per
forward (AdaS-Attn runs batch 1), gradients accumulated over the batch.

Training data is generated on the fly in memory (`iter_training_items`, seeds disjoint from every
`make_suite` seed): frames are rendered with numpy and turned into the model's inputs by `encode_example`,
which reproduces `VideoQA.prepare_video` + `question_ids` exactly for frames of a multiple of 28 px
(tests/test_train.py checks it against the processor), without writing H.264 files.

``--init DIR`` continues from a saved checkpoint, so a curriculum (short videos first) or a run longer
than one 10-minute device call can be split into several invocations, e.g.::

    python -m adaspark_cli.synth.train --out runs/s1 --lengths 16,32,64 --sparse-steps 0 --time-budget 400
    python -m adaspark_cli.synth.train --out runs/s2 --init runs/s1/dense --lengths 16,64,256,512 --time-budget 400

Writes ``OUT/dense/`` and ``OUT/adaspark/`` (safetensors, float32 or --save-dtype, processor files, the
AdaSpark block in the second one's config.json) and ``OUT/train_log.json`` (losses per step).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..adapters.patches import video_patches
from ..adapters.positions import mrope_position_ids
from ..config import AdaSparkConfig
from ..cubes import CubeLayout, cube_layout, video_spans
from .render import render_frames
from .scene import TASKS
from .suite import iter_training_items

IGNORE = -100


@dataclass(frozen=True)
class ModelSpec:
    """Sizes of the language model and the vision tower (Qwen2.5-VL-7B values in `_model_config` comments)."""

    text_layers: int = 4
    hidden: int = 256
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 768
    vision_depth: int = 4
    vision_hidden: int = 192
    vision_heads: int = 3
    vision_intermediate: int = 512


PRESETS: dict[str, ModelSpec] = {
    # the size of the tests' tiny checkpoint (build_tiny_checkpoint): for CPU smoke tests only
    "tiny": ModelSpec(2, 64, 4, 2, 128, 2, 32, 2, 64),
    # ~6 M parameters (12 MB in bf16): the bundled trained model
    "small": ModelSpec(),
}


@dataclass(frozen=True)
class TrainConfig:
    preset: str = "small"
    steps: int = 2000  # dense optimizer steps
    sparse_steps: int = 200  # AdaSpark fine-tune optimizer steps (0: none)
    batch: int = 16  # videos per optimizer step
    lr: float = 1e-3
    sparse_lr: float = 2e-4
    warmup: int = 100
    weight_decay: float = 0.05
    lengths: tuple[int, ...] = (16, 32, 64, 128, 256)
    length_weights: tuple[float, ...] | None = None  # None: uniform
    tasks: tuple[str, ...] = TASKS
    seed: int = 0
    cube: tuple[int, int, int] = (2, 4, 4)
    attn_top_p: float = 0.9
    ffn_top_p: float = 0.7
    time_budget_s: float | None = None  # stop each phase early (dense gets 85 %) when the wall clock says so
    workers: int = 0  # DataLoader worker processes (0: render in the training process)
    save_dtype: str = "float32"  # "bfloat16" halves the files (they load as float32 on the CPU)
    sparse_lengths: tuple[int, ...] | None = None  # lengths of the AdaSpark phase (None: as lengths)
    batched_vision: bool = True  # adapters.vision.fast_vision: one attention call per vision block, not one per window
    init: str | None = None  # a checkpoint folder to continue from instead of a fresh `preset` model
    check_items: int = 0  # after each phase, teacher-forced greedy accuracy on this many fresh items (0: skip)
    check_every: int = 0  # also during the dense phase, every this many steps (0: only at the end)
    needle_share: tuple[float, ...] | None = None  # curriculum: needles on screen this share of the frames (0: as held out)
    clutter: bool = True  # curriculum: False leaves distractors and decoy needles out of training videos
    log_every: int = 20

    @property
    def curriculum(self) -> bool:
        """Training videos differ from the held-out distribution (checks then report both)."""
        return any(self.needle_share or ()) or not self.clutter

    def adaspark(self) -> AdaSparkConfig:
        return AdaSparkConfig(cube=self.cube, attn_top_p=self.attn_top_p, ffn_top_p=self.ffn_top_p)


# ----------------------------------------------------------------------------------------------
# model


def _model_config(tokenizer: Any, spec: ModelSpec) -> Any:
    from transformers import Qwen2_5_VLConfig

    from ..checkpoint.tiny import _VOCAB_MULTIPLE, SPECIAL_TOKENS

    if spec.hidden % spec.heads or (spec.hidden // spec.heads) % 2:
        raise ValueError(f"hidden {spec.hidden} must split into {spec.heads} heads of even size")
    head_dim = spec.hidden // spec.heads
    half = head_dim // 2
    t = half // 4 or 1
    h = (half - t) // 2
    ids = {s: tokenizer.convert_tokens_to_ids(s) for s in SPECIAL_TOKENS}
    vocab = -(-len(tokenizer) // _VOCAB_MULTIPLE) * _VOCAB_MULTIPLE
    text = {
        "vocab_size": vocab,  # 152064
        "hidden_size": spec.hidden,  # 3584
        "intermediate_size": spec.intermediate,  # 18944
        "num_hidden_layers": spec.text_layers,  # 28
        "num_attention_heads": spec.heads,  # 28
        "num_key_value_heads": spec.kv_heads,  # 4
        "hidden_act": "silu",
        "max_position_embeddings": 32768,  # 128000
        "rms_norm_eps": 1e-6,
        "use_sliding_window": False,
        "sliding_window": 32768,
        "max_window_layers": spec.text_layers,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [t, h, half - t - h]},
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
        "tie_word_embeddings": False,
    }
    vision = {
        "depth": spec.vision_depth,  # 32
        "hidden_size": spec.vision_hidden,  # 1280
        "num_heads": spec.vision_heads,  # 16
        "intermediate_size": spec.vision_intermediate,  # 3420
        "hidden_act": "silu",
        "out_hidden_size": spec.hidden,
        "in_channels": 3,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 112,
        "fullatt_block_indexes": [spec.vision_depth // 2 - 1, spec.vision_depth - 1],  # [7, 15, 23, 31]
        "tokens_per_second": 2,
    }
    return Qwen2_5_VLConfig(
        text_config=text, vision_config=vision,
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=False,
    )


def build_model(spec: ModelSpec, *, seed: int = 0) -> tuple[Any, Any]:
    """A freshly initialised Qwen2.5-VL of `spec` (float32) and the tiny checkpoint's processor."""
    from transformers import GenerationConfig, Qwen2_5_VLForConditionalGeneration

    from ..checkpoint.tiny import build_tiny_processor

    processor = build_tiny_processor()
    tok = processor.tokenizer
    config = _model_config(tok, spec)
    config.dtype = torch.float32
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config).to(torch.float32)
    model.config._attn_implementation = "sdpa"
    im_end, pad = tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")
    model.generation_config = GenerationConfig(bos_token_id=pad, eos_token_id=[im_end, pad], pad_token_id=pad, do_sample=False)
    return model, processor


# ----------------------------------------------------------------------------------------------
# examples


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

    """Turns (frames, question, answer) into an `Example` the way `VideoQA` would prompt the model."""

    def __init__(self, processor: Any, model_config: Any, *, fps: float = 2.0) -> None:
        self.tok = processor.tokenizer
        self.cfg = model_config
        self.fps = fps
        messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "\x00"}]}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        before_q, after_q = text.split("\x00")
        before_v, between = before_q.split("<|video_pad|>")
        self._ids_before = self._ids(before_v)  # ... <|vision_start|>
        self._vision_end = self._ids(between)  # <|vision_end|> (then the question text)
        self._after_q = after_q
        self.im_end = self.tok.convert_tokens_to_ids("<|im_end|>")
        self.video_pad = model_config.video_token_id

    def _ids(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def encode(self, frames: np.ndarray, question: str, answer: str = "") -> Example:
        merge = self.cfg.vision_config.spatial_merge_size
        patch, temporal = self.cfg.vision_config.patch_size, self.cfg.vision_config.temporal_patch_size
        n, height, width = frames.shape[:3]
        grid = torch.tensor([[-(-n // temporal), height // patch, width // patch]])
        n_video = int(grid.prod()) // (merge * merge)
        q_ids = self._ids(question + self._after_q)  # special tokens split the text, so this equals question_ids()
        a_ids = self._ids(answer) + [self.im_end] if answer else []
        prefix = self._ids_before + [self.video_pad] * n_video + self._vision_end
        ids = torch.tensor(prefix + q_ids + a_ids, dtype=torch.long)
        labels = torch.full_like(ids, IGNORE)
        if a_ids:
            labels[-len(a_ids) :] = torch.tensor(a_ids)
        types = (ids == self.video_pad).long() * 2
        # temporal_patch_size / sampled fps: every frame is kept, so 2 / fps seconds per frame pair
        positions, _ = mrope_position_ids(
            types, grid, [2.0 / self.fps], spatial_merge_size=merge,
            tokens_per_second=self.cfg.vision_config.tokens_per_second,
        )
        return Example(ids, labels, types, positions, torch.from_numpy(np.ascontiguousarray(frames)), grid,
                       len(prefix), answer)

    def layout(self, ex: Example, cube: tuple[int, int, int]) -> CubeLayout:
        """Cube layout over the whole sequence (question and answer tokens are text: dense)."""
        merge = self.cfg.vision_config.spatial_merge_size
        return cube_layout(video_spans(ex.types, ex.grid, merge), int(ex.input_ids.numel()), cube)


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
    if raw_frames:
        batch["frames"] = torch.cat([e.frames for e in examples])
        batch["frame_counts"] = torch.tensor([int(e.frames.shape[0]) for e in examples])
    else:
        batch["pixel_values_videos"] = torch.cat([e.pixel_values for e in examples])
    return batch


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
                                           needle_share=cfg.needle_share, clutter=cfg.clutter))
               for n in cfg.lengths}
    while True:
        n = int(rng.choice(cfg.lengths, p=weights))
        batch = []
        for _ in range(batch_size(cfg, n)):
            scene, q, a = next(streams[n])
            batch.append(encoder.encode(render_frames(scene), q, a))  # type: ignore[arg-type]
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


# ----------------------------------------------------------------------------------------------
# training


def _lr_at(step: int, total: int, base: float, warmup: int, time_fraction: float = 0.0) -> float:
    """Linear warm-up, then cosine to 10 %; progress is the larger of steps done and phase time used."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = max((step - warmup) / max(1, total - warmup), time_fraction)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def dense_loss(model: Any, batch: Sequence[Example] | dict[str, torch.Tensor], pad_id: int,
               device: torch.device) -> torch.Tensor:
    """Mean cross-entropy over the answer tokens of a padded batch (the model unmodified).

    ``batch``: examples, or what `collate` made of them."""
    batch = model_inputs(batch if isinstance(batch, dict) else collate(batch, pad_id), device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        out = model(**batch, use_cache=False)
    return out.loss  # type: ignore[no-any-return]


def sparse_loss(model: Any, encoder: Encoder, examples: Sequence[Example], state: Any, cube: tuple[int, int, int],
                device: torch.device, *, backward: bool = True) -> float:
    """AdaSpark active, one sequence per forward; gradients accumulated (mean over answer tokens of the batch)."""
    total_tokens = sum(int((e.labels != IGNORE).sum()) for e in examples)
    loss_sum = 0.0
    for e in examples:
        batch = model_inputs(collate([e], encoder.tok.pad_token_id), device)
        batch.pop("attention_mask")  # one unpadded sequence: causal SDPA / the sparse path
        labels = batch.pop("labels")
        layout = encoder.layout(e, cube).to(device)
        with state.forward_context(layout=layout, offset=0, stats=None), \
                torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(**batch, use_cache=False).logits
        shift = logits[0, :-1].float()
        target = labels[0, 1:]
        loss = torch.nn.functional.cross_entropy(shift, target, ignore_index=IGNORE, reduction="sum") / total_tokens
        if backward:
            loss.backward()
        loss_sum += float(loss.detach())
    return loss_sum


@torch.no_grad()
def answer_accuracy(model: Any, encoder: Encoder, cfg: TrainConfig, *, items: int = 64, seed: int = 99,
                    state: Any = None, lengths: Sequence[int] | None = None,
                    curriculum: bool = False) -> dict[str, float]:
    """Share of generated items whose whole answer (and <|im_end|>) is the argmax at every answer position.

    Under teacher forcing that is exactly what greedy decoding would produce. With ``state`` the
    forward runs with AdaSpark active (one sequence at a time); per task and overall. Items follow the
    held-out distribution, or with ``curriculum`` the training videos' (cfg.needle_share, cfg.clutter)."""
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    hits: dict[str, list[bool]] = {t: [] for t in cfg.tasks}
    knobs = {"needle_share": cfg.needle_share, "clutter": cfg.clutter} if curriculum else {}
    stream = iter(iter_training_items(seed, lengths=lengths or cfg.lengths, tasks=cfg.tasks, **knobs))
    try:
        for _ in range(items):
            scene, q, a = next(stream)
            e = encoder.encode(render_frames(scene), q, a)  # type: ignore[arg-type]
            batch = model_inputs(collate([e], encoder.tok.pad_token_id), dev)
            batch.pop("attention_mask")
            labels = batch.pop("labels")
            ctx = state.forward_context(layout=encoder.layout(e, cfg.cube).to(dev), offset=0, stats=None) \
                if state is not None else _null()
            with ctx, torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                logits = model(**batch, use_cache=False).logits
            pred = logits[0, :-1].argmax(-1)
            target = labels[0, 1:]
            keep = target != IGNORE
            hits[scene.task].append(bool((pred[keep] == target[keep]).all()))
    finally:
        model.train(was_training)
    out = {t: sum(v) / len(v) for t, v in hits.items() if v}
    out["all"] = sum(sum(v) for v in hits.values()) / max(1, sum(len(v) for v in hits.values()))
    return out


def _vision_backward_works(model: Any, device: torch.device) -> bool:
    """One tiny forward and backward through the (fast) vision tower under autocast."""
    tower = model.model.visual
    width = tower.patch_embed.proj.weight[0].numel()
    x = torch.randn(2 * 8 * 8, width, device=device)
    try:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = tower(x, grid_thw=torch.tensor([[2, 8, 8]], device=device), return_dict=True).pooler_output
        out.float().square().mean().backward()
    except RuntimeError:
        return False
    finally:
        model.zero_grad(set_to_none=True)
    return True


def _clipped_step(model: Any, opt: torch.optim.Optimizer) -> bool:
    """Clip the gradient norm to 1 and step, unless the gradient is not finite (then drop it)."""
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    if not torch.isfinite(norm):
        opt.zero_grad(set_to_none=True)
        return False
    opt.step()
    return True


def _optimizer_step(model: Any, opt: torch.optim.Optimizer, record: dict[str, Any], where: str,
                    log: Callable[[str], None]) -> bool:
    """`_clipped_step`, counting and logging a skipped one: one bad batch must not turn every weight into NaN."""
    if _clipped_step(model, opt):
        return True
    record["skipped_steps"] = record.get("skipped_steps", 0) + 1
    log(f"{where}: non-finite gradient, step skipped")
    return False


def _fmt(check: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.0%}" for k, v in check.items())


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def train(cfg: TrainConfig, out_dir: str | Path | None = None, *, device: str | None = None,
          log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run both phases; save checkpoints under out_dir (if given). Returns the log (losses per step)."""
    from ..adapters.sparse import sparsify

    start = time.perf_counter()
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if cfg.init:  # continue from a saved checkpoint (e.g. a curriculum stage or an earlier, time-limited run)
        from transformers import Qwen2_5_VLForConditionalGeneration

        from ..checkpoint.tiny import build_tiny_processor

        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(cfg.init, dtype=torch.float32)
        processor = build_tiny_processor()
        log(f"initialised from {cfg.init}")
    else:
        model, processor = build_model(PRESETS[cfg.preset], seed=cfg.seed)
    model.to(dev).train()
    if cfg.batched_vision:
        from ..adapters.vision import fast_vision

        fast_vision(model)
        if dev.type == "cuda" and not _vision_backward_works(model, dev):  # an older torch: no varlen backward
            fast_vision(model, backend="loop")
            log("varlen attention has no backward here: the vision tower loops over windows")
    encoder = Encoder(processor, model.config)
    pad_id = encoder.tok.pad_token_id
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model {cfg.init or cfg.preset}: {n_params:,} parameters on {dev}")
    record: dict[str, Any] = {"config": {**asdict(cfg)}, "parameters": n_params, "device": str(dev),
                              "dense": [], "adaspark": []}
    budget = cfg.time_budget_s

    def over(fraction: float) -> bool:
        return budget is not None and time.perf_counter() - start > budget * fraction

    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    stream = batches(encoder, cfg, cfg.seed, collated=True)
    dense_budget = None if budget is None else 0.85 * budget
    waited = 0.0  # seconds the GPU loop spent waiting for batches: is rendering the limit?
    try:
        for step in range(cfg.steps):
            if over(0.85):
                log(f"dense: time budget reached at step {step}")
                break
            frac = 0.0 if dense_budget is None else (time.perf_counter() - start) / dense_budget
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, cfg.steps, cfg.lr, cfg.warmup, frac)
            t0 = time.perf_counter()
            batch = next(stream)
            waited += time.perf_counter() - t0
            loss = dense_loss(model, batch, pad_id, dev)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if _optimizer_step(model, opt, record, f"dense step {step}", log):
                record["dense"].append(float(loss.detach()))
            if step % cfg.log_every == 0 or step == cfg.steps - 1:
                recent = record["dense"][-cfg.log_every :] or [float("nan")]
                elapsed = time.perf_counter() - start
                log(f"dense step {step}: loss {sum(recent) / len(recent):.4f} ({elapsed:.0f} s, "
                    f"{waited:.0f} s waiting for data)")
            if cfg.check_items and cfg.check_every and step and step % cfg.check_every == 0:
                check = answer_accuracy(model, encoder, cfg, items=cfg.check_items)
                record.setdefault("dense_checks", []).append({"step": step, **check})
                log(f"dense check at step {step}: {_fmt(check)}")
                if cfg.curriculum:
                    check = answer_accuracy(model, encoder, cfg, items=cfg.check_items, curriculum=True)
                    record.setdefault("dense_checks_curriculum", []).append({"step": step, **check})
                    log(f"dense check at step {step}, training videos: {_fmt(check)}")
    except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:  # keep what was learned: a one-shot GPU run
        if not record["dense"]:
            raise
        record["dense_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        log(f"dense phase stopped: {record['dense_error']}")
    record["dense_steps"] = len(record["dense"])
    record["dense_data_wait_seconds"] = waited
    record["dense_seconds"] = time.perf_counter() - start
    if out_dir is not None:  # saved before the checks: a run killed later keeps it
        save_checkpoint(model, processor, Path(out_dir) / "dense", adaspark=None, dtype=getattr(torch, cfg.save_dtype))
    if cfg.check_items:
        record["dense_check"] = answer_accuracy(model, encoder, cfg, items=cfg.check_items)
        log(f"dense check (teacher-forced greedy, {cfg.check_items} items): {record['dense_check']}")
        if cfg.curriculum:
            record["dense_check_curriculum"] = answer_accuracy(model, encoder, cfg, items=cfg.check_items,
                                                               curriculum=True)
            log(f"dense check on training videos (curriculum): {record['dense_check_curriculum']}")

    _write_log(out_dir, record)
    if cfg.sparse_steps > 0:
        # exact per-token selection, differentiable in the kept paths; fast kernels are for inference
        state = sparsify(model, cfg.adaspark(), kernel="reference")
        if cfg.check_items:  # the training-free baseline: dense weights, AdaSpark on
            record["training_free_check"] = answer_accuracy(model, encoder, cfg, items=cfg.check_items, state=state)
            log(f"training-free adaspark check: {record['training_free_check']}")
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.sparse_lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
        sparse_stream = batches(encoder, replace(cfg, lengths=cfg.sparse_lengths or cfg.lengths, length_weights=None),
                                cfg.seed + 1)
        phase_start = time.perf_counter()
        phase_budget = None if budget is None else max(1.0, budget - (phase_start - start))
        for step in range(cfg.sparse_steps):
            if over(1.0):
                log(f"adaspark: time budget reached at step {step}")
                break
            frac = 0.0 if phase_budget is None else (time.perf_counter() - phase_start) / phase_budget
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, cfg.sparse_steps, cfg.sparse_lr, min(cfg.warmup, cfg.sparse_steps // 10 + 1), frac)
            opt.zero_grad(set_to_none=True)
            loss_value = sparse_loss(model, encoder, next(sparse_stream), state, cfg.cube, dev)
            if _optimizer_step(model, opt, record, f"adaspark step {step}", log):
                record["adaspark"].append(loss_value)
            if step % cfg.log_every == 0 or step == cfg.sparse_steps - 1:
                recent = record["adaspark"][-cfg.log_every :]
                log(f"adaspark step {step}: loss {sum(recent) / len(recent):.4f} ({time.perf_counter() - start:.0f} s)")
        if out_dir is not None:
            save_checkpoint(model, processor, Path(out_dir) / "adaspark", adaspark=cfg.adaspark(),
                            dtype=getattr(torch, cfg.save_dtype))
        if cfg.check_items:
            record["adaspark_check"] = answer_accuracy(model, encoder, cfg, items=cfg.check_items, state=state)
            log(f"adaspark check (sparse, {cfg.check_items} items): {record['adaspark_check']}")
            with state.override(enabled=False):
                record["adaspark_dense_check"] = answer_accuracy(model, encoder, cfg, items=cfg.check_items)
            log(f"adaspark weights run dense: {record['adaspark_dense_check']}")
    record["adaspark_steps"] = len(record["adaspark"])
    record["seconds"] = time.perf_counter() - start
    _write_log(out_dir, record)
    return record


def _write_log(out_dir: str | Path | None, record: dict[str, Any]) -> None:
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "train_log.json").write_text(json.dumps(record) + "\n", encoding="utf-8")


def save_checkpoint(model: Any, processor: Any, out: Path, *, adaspark: AdaSparkConfig | None,
                    dtype: torch.dtype | None = None) -> Path:
    """save_pretrained (safetensors) + processor; the AdaSpark block goes into config.json when given.

    The patched MLP forwards are instance attributes, so parameter names are the stock ones."""
    from ..checkpoint.convert import adaspark_block
    from ..checkpoint.load import quiet_hf_output
    from ..config import CONFIG_KEY

    out.mkdir(parents=True, exist_ok=True)
    was = next(model.parameters()).dtype
    if dtype is not None:
        model.to(dtype)
    model.config.dtype = dtype or was
    with quiet_hf_output():
        model.save_pretrained(out)
        processor.save_pretrained(out)
    if dtype is not None:
        model.to(was)
    if adaspark is not None:
        path = out / "config.json"
        data = json.loads(path.read_text(encoding="utf-8"))
        data[CONFIG_KEY] = adaspark_block(adaspark, None)
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return out


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m adaspark_cli.synth.train", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--preset", default="small", choices=sorted(PRESETS))
    d = TrainConfig()
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--sparse-steps", type=int, default=d.sparse_steps)
    p.add_argument("--batch", type=int, default=d.batch)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--sparse-lr", type=float, default=d.sparse_lr)
    p.add_argument("--warmup", type=int, default=d.warmup)
    p.add_argument("--lengths", default=",".join(map(str, d.lengths)))
    p.add_argument("--length-weights", default=None)
    p.add_argument("--tasks", default=",".join(d.tasks), help=f"task families to train on (of {', '.join(TASKS)})")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--cube", default="x".join(map(str, d.cube)))
    p.add_argument("--attn-top-p", type=float, default=d.attn_top_p)
    p.add_argument("--ffn-top-p", type=float, default=d.ffn_top_p)
    p.add_argument("--time-budget", type=float, default=None, help="seconds for both phases (dense gets 85 %%)")
    p.add_argument("--workers", type=int, default=d.workers)
    p.add_argument("--device", default=None)
    p.add_argument("--save-dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--check-items", type=int, default=0)
    p.add_argument("--check-every", type=int, default=0, help="also check every this many dense steps")
    p.add_argument("--log-every", type=int, default=d.log_every)
    p.add_argument("--needle-share", default=None,
                   help="curriculum: training needles stay on screen for about this share of the frames (0-1; "
                        "at most 1/4 for ordering and counting); several, comma-separated: each video draws one, "
                        "0 = the held-out duration. Checks report held-out-like items and training-like ones")
    p.add_argument("--no-clutter", action="store_true",
                   help="curriculum: no distractor shapes and no decoy needles in training videos")
    p.add_argument("--sparse-lengths", default=None)
    p.add_argument("--init", default=None, help="continue from this checkpoint folder (its sizes; --preset ignored)")
    p.add_argument("--no-batched-vision", action="store_true",
                   help="keep transformers' per-window vision attention loop (what the first H100 run used)")
    args = p.parse_args(argv)
    tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    if not tasks or any(t not in TASKS for t in tasks):
        p.error(f"--tasks takes a comma-separated subset of {', '.join(TASKS)}, got {args.tasks!r}")
    shares = None if args.needle_share is None else tuple(float(x) for x in args.needle_share.split(","))
    if shares is not None and not all(0 <= x <= 1 for x in shares):
        p.error(f"--needle-share takes shares in [0, 1], got {args.needle_share!r}")
    cfg = replace(
        d, preset=args.preset, steps=args.steps, sparse_steps=args.sparse_steps, batch=args.batch, lr=args.lr,
        sparse_lr=args.sparse_lr, warmup=args.warmup, lengths=tuple(int(x) for x in args.lengths.split(",")),
        length_weights=None if args.length_weights is None else tuple(float(x) for x in args.length_weights.split(",")),
        seed=args.seed, cube=tuple(int(x) for x in args.cube.split("x")),  # type: ignore[arg-type]
        attn_top_p=args.attn_top_p, ffn_top_p=args.ffn_top_p, time_budget_s=args.time_budget, workers=args.workers,
        save_dtype=args.save_dtype, check_items=args.check_items, check_every=args.check_every, log_every=args.log_every,
        needle_share=shares, clutter=not args.no_clutter, tasks=tasks,
        batched_vision=not args.no_batched_vision,
        init=args.init,
        sparse_lengths=None if args.sparse_lengths is None else tuple(int(x) for x in args.sparse_lengths.split(",")),
    )
    train(cfg, args.out, device=args.device, log=lambda s: print(s, flush=True))


if __name__ == "__main__":
    main()
