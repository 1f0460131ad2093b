"""Dense auxiliary supervision: small heads on the video tokens, trained with the answer loss, never saved.

The answer gives a video of thousands of tokens one or two labelled tokens; ordering, counting and motion
stayed at their prior with that alone (docs/training.md). These heads read targets drawn from the scene
(`synth.labels`) at every video token:

- the *patch* heads read the video embeddings the language model receives (the merger's output) and
  predict the needle shape and color in each token's 2 x 28 x 28 px: this teaches the vision tower to see;
- the *state* head reads the hidden state entering the last decoder layer at the last token of each frame
  pair and predicts what the video has shown so far (counts, first colors, first-appearance ranks, the
  ball's direction): the running memory that the question's tokens then attend to. The last layer's own
  output at video tokens is read by nothing, so the state is asked one layer earlier.

`dense_loss` adds ``aux_weight`` x (patch + state) to the answer loss; the heads live beside the model
(their own optimizer group) and `save_checkpoint` never sees them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ..synth.labels import COLOR_CLASSES, PATCH_CLASSES, STATE_FIELDS

AUX_HEADS_FILE = "aux_heads.pt"  # the heads' weights, beside (never inside) a run's checkpoint folders
AUX_KEYS = ("aux_patch_shape", "aux_patch_color", "aux_state", "aux_state_index")


class AuxHeads(nn.Module):
    """Linear read-outs of the patch targets (from the video embeddings) and the state row (from a hidden state)."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.patch_shape = nn.Linear(hidden, PATCH_CLASSES)
        self.patch_color = nn.Linear(hidden, COLOR_CLASSES)
        self.state = nn.Linear(hidden, sum(k for _, k in STATE_FIELDS))

    def loss(self, embeds: torch.Tensor, state_hidden: torch.Tensor, targets: dict[str, torch.Tensor],
             parts: dict[str, float] | None = None) -> torch.Tensor:
        """Patch loss plus state loss; ``embeds``: (video tokens, hidden), ``state_hidden``: (frame pairs, hidden),
        ``targets``: the collated ``aux_*`` tensors. ``parts`` receives each term and two accuracies."""
        embeds, state_hidden = embeds.float(), state_hidden.float()
        shape_logits = self.patch_shape(embeds)
        patch = _balanced_ce(shape_logits, targets["aux_patch_shape"]) \
            + _balanced_ce(self.patch_color(embeds), targets["aux_patch_color"])
        logits = self.state(state_hidden).split([k for _, k in STATE_FIELDS], dim=-1)
        state = sum(_balanced_ce(lg, targets["aux_state"][:, i]) for i, lg in enumerate(logits)) / len(STATE_FIELDS)
        if parts is not None:
            with torch.no_grad():
                needle = targets["aux_patch_shape"] > 0
                hit = shape_logits.argmax(-1) == targets["aux_patch_shape"]
                pred = torch.stack([lg.argmax(-1) for lg in logits], dim=-1)
                shown = targets["aux_state"] > 0
                parts.update(aux_patch=float(patch), aux_state=float(state),
                             needle_token_acc=float(hit[needle].float().mean()) if needle.any() else float("nan"),
                             state_acc=float((pred == targets["aux_state"])[shown].float().mean())
                             if shown.any() else float("nan"))
        return patch + state  # type: ignore[no-any-return]


def _balanced_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy averaged separately over the 0 targets (nothing there) and the others, then summed: the
    few tokens that show a needle weigh as much as the many that do not."""
    loss = nn.functional.cross_entropy(logits, target, reduction="none")
    empty = target == 0
    out = loss[empty].mean() if empty.any() else loss.new_zeros(())
    return out + loss[~empty].mean() if (~empty).any() else out


@contextmanager
def layer_inputs(layers: Sequence[nn.Module]) -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, a forward leaves the hidden states entering the first and the last decoder layer
    in the yielded dict ("embeds": the embeddings, video scattered in; "last": what the last layer reads);
    no layers, nothing kept.

    Hooks rather than ``output_hidden_states=True``: that flag reaches the vision tower too, whose fast
    path then gives way to transformers' loop over attention windows (65,000 SDPA calls in 30 s of
    training: 0.5 steps/s against 6-7 without the heads, H200, 2026-12-02)."""
    captured: dict[str, torch.Tensor] = {}

    def keep(name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            captured[name] = args[0] if args else kwargs["hidden_states"]
        return hook

    handles = [layers[0].register_forward_pre_hook(keep("embeds"), with_kwargs=True),
               layers[-1].register_forward_pre_hook(keep("last"), with_kwargs=True)] if len(layers) else []
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def aux_loss(heads: AuxHeads, inputs: dict[str, torch.Tensor], video_mask: torch.Tensor, targets: dict[str, torch.Tensor],
             parts: dict[str, float] | None = None) -> torch.Tensor:
    """The heads' loss on the hidden states `layer_inputs` kept during the forward."""
    embeds = inputs["embeds"][video_mask]  # video tokens of every sequence, in batch then time order
    mid = inputs["last"][video_mask]  # what enters the last decoder layer
    return heads.loss(embeds, mid[targets["aux_state_index"]], targets, parts)


def pop_aux(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Take the ``aux_*`` targets out of a collated batch (the model must not see them)."""
    return {k: batch.pop(k) for k in AUX_KEYS if k in batch}
