"""A decode step with fixed shapes, captured once in a CUDA graph on CUDA (issue 13, part 2).

An eager decode step at batch 1 is mostly kernel launches from Python; a CUDA graph replays the
whole step's kernels at once. A graph needs every shape and address fixed, so the static step attends
the cache's whole buffer (`SharedCache.static_writes`: K/V written at a device-tensor index, the full
buffer returned) under a boolean mask of the filled positions, and takes the token, its M-RoPE
position and the write index from device tensors that are filled before each call. Eagerly (the CPU,
and the tests) it computes what the dynamic step does, the masked keys contributing exactly zero.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .cache import SharedCache

if TYPE_CHECKING:
    from .session import VideoQA

WARMUP_RUNS = 2  # eager runs on a side stream before capture (CUDA graph rules: lazy inits, allocator warm-up)


class StaticDecodeStep:
    """step(token) -> next logits (V,) for one answer token after `cache`, with the shapes of `cache`'s
    buffer. graphed: capture on the first call, replay afterwards (CUDA only)."""

    def __init__(self, qa: VideoQA, cache: SharedCache, *, graphed: bool) -> None:
        device = qa.device
        self.qa, self.cache, self.graphed = qa, cache, graphed
        self.capacity = cache.capacity
        self.token = torch.zeros((1, 1), dtype=torch.long, device=device)
        self.position = torch.zeros((3, 1, 1), dtype=torch.long, device=device)
        self.index = torch.zeros((1,), dtype=torch.long, device=device)
        self.mask = torch.zeros((1, 1, 1, self.capacity), dtype=torch.bool, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: torch.Tensor | None = None  # the graph's output buffer
        self.prompt_length = self.next_position = 0  # set by start()
        self.capture_error: str | None = None  # why capture failed; the step then runs eagerly

    def fits(self, cache: SharedCache) -> bool:
        """Whether this step (and its graph) still matches `cache`'s buffers (they grow for a long question)."""
        return cache is self.cache and cache.capacity == self.capacity

    def start(self, prompt_length: int, next_position: int) -> None:
        """Before an answer's first step: the mask covers what the cache holds (prefix and question);
        token i of the sequence (i >= prompt_length) has text position next_position + i - prompt_length."""
        self.prompt_length, self.next_position = prompt_length, next_position
        self.mask.zero_()
        self.mask[..., : self.cache.length] = True

    def _forward(self) -> torch.Tensor:
        qa = self.qa
        with self.cache.static_writes(self.index), qa.state.forward_context(layout=None, offset=0, stats=None):
            out = qa.model(
                input_ids=self.token,
                position_ids=self.position,
                attention_mask={"full_attention": self.mask},  # prepared masks: used as given, no host-side sizes
                use_cache=True,
                logits_to_keep=1,
                **{qa._cache_kw: self.cache},
            )
        return out.logits[0, -1]

    def _capture(self) -> None:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(WARMUP_RUNS):  # each writes the same K/V at the same index: harmless
                self._forward()
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = self._forward()

    def __call__(self, token: int) -> torch.Tensor:
        at = self.cache.length
        self.token.fill_(token)
        self.position.fill_(self.next_position + at - self.prompt_length)
        self.index.fill_(at)
        self.mask[..., at] = True
        if self.graphed and self.graph is None and self.capture_error is None:
            try:
                self._capture()
            except RuntimeError as exc:  # never lose the answer to a capture problem: same step, eager
                self.graph, self.logits = None, None
                self.capture_error = f"{type(exc).__name__}: {exc}"[:300]
        if self.graph is not None and self.logits is not None:
            self.graph.replay()
            logits = self.logits.clone()  # the next replay overwrites the output buffer
        else:
            logits = self._forward()
        self.cache.advance(1)
        return logits
