"""What the training loop computes on a batch: the dense and the AdaSpark loss, and the accuracy checks."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import torch

from ..synth.render import render_frames
from ..synth.suite import iter_training_items
from .aux import AuxHeads, aux_loss, layer_inputs, pop_aux
from .data import IGNORE, Encoder, Example, collate, model_inputs
from .presets import TrainConfig


def dense_loss(model: Any, batch: Sequence[Example] | dict[str, torch.Tensor], pad_id: int,
               device: torch.device, *, heads: AuxHeads | None = None, aux_weight: float = 0.0,
               parts: dict[str, float] | None = None) -> torch.Tensor:
    """Mean cross-entropy over the answer tokens of a padded batch (the model unmodified), plus
    ``aux_weight`` x the `AuxHeads` loss where ``heads`` are given and the batch has dense targets.

    ``batch``: examples, or what `collate` made of them; ``parts`` receives the two terms' values."""
    batch = model_inputs(batch if isinstance(batch, dict) else collate(batch, pad_id), device)
    targets = pop_aux(batch)
    use_aux = heads is not None and aux_weight > 0 and bool(targets)
    layers = model.model.language_model.layers if use_aux else []
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"), layer_inputs(layers) as inputs:
        out = model(**batch, use_cache=False)
    loss = out.loss
    if parts is not None:
        parts["answer"] = float(loss.detach())
    if use_aux:
        assert heads is not None
        extra = aux_loss(heads, inputs, batch["input_ids"] == model.config.video_token_id, targets, parts)
        if parts is not None:
            parts["aux"] = float(extra.detach())
        loss = loss + aux_weight * extra
    return loss  # type: ignore[no-any-return]


def sparse_loss(model: Any, encoder: Encoder, examples: Sequence[Example], state: Any, cube: tuple[int, int, int],
                device: torch.device, *, backward: bool = True) -> float:
    """AdaSpark active, one forward per video length (the reference kernels take a right-padded batch whose
    videos share one layout); gradients accumulated; the mean over answer tokens of all examples."""
    total_tokens = sum(int((e.labels != IGNORE).sum()) for e in examples)
    loss_sum = 0.0
    for group in _same_video_length(examples):
        collated = collate(group, encoder.tok.pad_token_id, raw_frames=True)  # patched on the device
        layout = encoder.batch_layout(collated["input_ids"], collated["video_grid_thw"], cube).to(device)
        batch = model_inputs(collated, device)
        pop_aux(batch)
        batch.pop("attention_mask")  # right padding after every real token: causal attention never reaches it
        labels = batch.pop("labels")
        with state.forward_context(layout=layout, offset=0, stats=None), \
                torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(**batch, use_cache=False).logits
        shift = logits[:, :-1].float().flatten(0, 1)
        target = labels[:, 1:].flatten()
        loss = torch.nn.functional.cross_entropy(shift, target, ignore_index=IGNORE, reduction="sum") / total_tokens
        if backward:
            loss.backward()
        loss_sum += float(loss.detach())
    return loss_sum


def _same_video_length(examples: Sequence[Example]) -> list[list[Example]]:
    """The examples grouped by video length, first appearance first (a batch of `example_stream` is one group)."""
    groups: dict[int, list[Example]] = {}
    for e in examples:
        groups.setdefault(int(e.frames.shape[0]), []).append(e)
    return list(groups.values())


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
    knobs: dict[str, Any] = {"needle_share": cfg.needle_share, "clutter": cfg.clutter} if curriculum else {}
    stream = iter(iter_training_items(seed, lengths=lengths or cfg.lengths, tasks=cfg.tasks, **knobs))
    try:
        for _ in range(items):
            scene, q, a = next(stream)
            e = encoder.encode(render_frames(scene), q, a)  # type: ignore[arg-type]
            batch = model_inputs(collate([e], encoder.tok.pad_token_id), dev)
            batch.pop("attention_mask")
            labels = batch.pop("labels")
            ctx = state.forward_context(layout=encoder.layout(e, cfg.cube).to(dev), offset=0, stats=None) \
                if state is not None else nullcontext()
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
