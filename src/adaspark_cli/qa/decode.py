"""The decode loop: answer tokens one forward at a time, greedy or sampled, with a public per-step hook.

The loop knows nothing of videos or caches: it is given the logits after the question and a `step`
function (one token in, the next logits out). `on_step(index, logits)` sees every distribution the
answer is chosen from: index 0 the question's last position, index i the i-th decode step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from ..errors import AdasparkError

StepHook = Callable[[int, torch.Tensor], None]
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes a 64-bit value


@dataclass(frozen=True)
class Sampling:
    """How each answer token is picked. temperature 0 (the default): greedy, the most likely token.
    temperature T > 0: drawn from softmax(logits / T), from a generator seeded with `seed` (None: a random seed)."""

    temperature: float = 0.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise AdasparkError(f"temperature must be a number >= 0 (0 = greedy), got {self.temperature}")
        if self.seed is not None and not 0 <= self.seed <= MAX_SEED:
            raise AdasparkError(f"seed must be between 0 and {MAX_SEED}, got {self.seed}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def generator(self, device: torch.device) -> torch.Generator | None:
        """A fresh generator for one answer (None when greedy): the same seed gives the same answer."""
        if self.greedy:
            return None
        generator = torch.Generator(device=device)
        if self.seed is None:
            generator.seed()
        else:
            generator.manual_seed(self.seed)
        return generator

    def choose(self, logits: torch.Tensor, generator: torch.Generator | None) -> int:
        """The next token from the (V,) logits."""
        if self.greedy:
            return int(torch.argmax(logits))
        probs = torch.softmax(logits.float() / self.temperature, dim=-1)
        return int(torch.multinomial(probs, 1, generator=generator))


@dataclass
class DecodeOutcome:
    """What the loop did: tokens generated, forwards run after the question, and why it stopped."""

    tokens: list[int]
    steps: int = 0
    stopped: str = "max_new_tokens"  # or "eos"


def decode_tokens(
    first_logits: torch.Tensor,
    step: Callable[[int], torch.Tensor],
    *,
    stop_ids: set[int],
    max_new_tokens: int,
    sampling: Sampling,
    generator: torch.Generator | None = None,
    on_step: StepHook | None = None,
    outcome: DecodeOutcome | None = None,
) -> Iterator[int]:
    """Yield answer tokens (stop tokens excluded) until a stop token or `max_new_tokens`.

    step(token) runs one forward with `token` after everything before it and returns the next logits;
    it is not called for the last token (no forward is needed after it). `outcome`, if given, is filled in
    as the loop goes (complete once the iterator ends)."""
    if max_new_tokens < 1:
        raise AdasparkError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    outcome = outcome if outcome is not None else DecodeOutcome(tokens=[])
    logits = first_logits
    if on_step is not None:
        on_step(0, logits)
    for _ in range(max_new_tokens):
        token = sampling.choose(logits, generator)
        if token in stop_ids:
            outcome.stopped = "eos"
            return
        outcome.tokens.append(token)
        yield token
        if len(outcome.tokens) == max_new_tokens:
            break
        logits = step(token)
        outcome.steps += 1
        if on_step is not None:
            on_step(outcome.steps, logits)
    outcome.stopped = "max_new_tokens"
