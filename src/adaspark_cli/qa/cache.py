"""One KV cache per video, shared by every question: the prefix written once, each question rolled back.

Why our own cache and not transformers' `StaticCache`: a StaticCache hands attention the whole
preallocated buffer (padding included, masked), so the sparse video prefill would see keys past the
prompt (its block plan is sized from the key length) and every dense step would attend a mask over the
full buffer. `SharedCache` preallocates the same way but hands attention a view of exactly the filled
length, so each forward computes what it did with the growing `DynamicCache` (the same answers, token
for token), without `torch.cat` copying the whole cache every step and without a copy per question.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import cast

import torch
from transformers.cache_utils import Cache, DynamicLayer

DEFAULT_TAIL_TOKENS = 1024  # room after the prefix for a question and its answer before the buffers grow


class SharedLayer(DynamicLayer):
    """One layer's keys and values in a preallocated (1, Hkv, capacity, D) buffer filled up to `length`.

    `keys` / `values` are views of the filled part, as `DynamicLayer` keeps them, so code reading them
    (attention, statistics) sees the same tensors' shape and content."""

    def __init__(self, tail_tokens: int = DEFAULT_TAIL_TOKENS) -> None:
        super().__init__()
        self.tail_tokens = tail_tokens
        self.length = 0
        self._keys: torch.Tensor | None = None
        self._values: torch.Tensor | None = None
        # set in static mode (SharedCache.static_writes): the write index as a device tensor, the whole
        # buffer returned, so that a step has fixed shapes (qa/graph.py)
        self.write_index: torch.Tensor | None = None

    @property
    def capacity(self) -> int:
        return 0 if self._keys is None else int(self._keys.shape[-2])

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if self.write_index is not None:
            assert self._keys is not None and self._values is not None
            self._keys.index_copy_(-2, self.write_index, key_states)
            self._values.index_copy_(-2, self.write_index, value_states)
            return self._keys, self._values
        end = self.length + key_states.shape[-2]
        if end > self.capacity:
            self._grow(key_states, value_states, end + self.tail_tokens)
        assert self._keys is not None and self._values is not None
        self._keys[..., self.length : end, :].copy_(key_states)
        self._values[..., self.length : end, :].copy_(value_states)
        self.length = end
        self._expose()
        assert self.keys is not None and self.values is not None
        return self.keys, self.values

    def _grow(self, key_like: torch.Tensor, value_like: torch.Tensor, capacity: int) -> None:
        """New buffers of `capacity` tokens. The first call (the prefix) copies nothing; a later one (a question
        longer than the tail) copies the filled part once."""
        shape = (*key_like.shape[:-2], capacity, key_like.shape[-1])
        # zeros, not empty: a static step attends the whole buffer with the unfilled part masked, and a NaN
        # left there by the allocator would survive the mask (0 * NaN)
        keys = torch.zeros(shape, dtype=key_like.dtype, device=key_like.device)
        values = torch.zeros((*shape[:-1], value_like.shape[-1]), dtype=value_like.dtype, device=value_like.device)
        if self._keys is not None and self._values is not None and self.length:
            keys[..., : self.length, :].copy_(self._keys[..., : self.length, :])
            values[..., : self.length, :].copy_(self._values[..., : self.length, :])
        self._keys, self._values = keys, values

    def _expose(self) -> None:
        assert self._keys is not None and self._values is not None
        self.keys = self._keys[..., : self.length, :]
        self.values = self._values[..., : self.length, :]

    def reserve(self, total: int) -> None:
        """Make room for `total` tokens now, so that no step of the coming answer reallocates."""
        if self._keys is not None and self._values is not None and total > self.capacity:
            self._grow(self._keys, self._values, total)
            self._expose()

    def truncate(self, length: int) -> None:
        """Forget every token from `length` on; the tokens before it are not touched."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a cache of {self.length} tokens to {length}")
        self.length = length
        if self._keys is not None:
            self._expose()

    def advance(self, n: int) -> None:
        """Count `n` tokens written by static steps (at length, length + 1, ...)."""
        if self.length + n > self.capacity:
            raise ValueError(f"{self.length + n} tokens do not fit a cache of {self.capacity}")
        self.length += n
        self._expose()

    def get_seq_length(self) -> int:
        return self.length

    def crop(self, tokens_to_remove: int) -> None:  # transformers' name; negative: keep that many
        self.truncate(self.length - tokens_to_remove if tokens_to_remove >= 0 else -tokens_to_remove)

    def reset(self) -> None:
        self.truncate(0)


class SharedCache(Cache):
    """A transformers cache of `SharedLayer`s: `truncate` rolls every layer back to a length (a question's end)."""

    def __init__(self, num_layers: int, tail_tokens: int = DEFAULT_TAIL_TOKENS) -> None:
        super().__init__(layers=[SharedLayer(tail_tokens) for _ in range(num_layers)])

    @property
    def shared_layers(self) -> list[SharedLayer]:
        return cast("list[SharedLayer]", self.layers)  # __init__ gives only SharedLayers; Cache types them generally

    @property
    def length(self) -> int:
        return self.shared_layers[0].length  # every layer holds the same tokens between forwards

    def reserve(self, total: int) -> None:
        for layer in self.shared_layers:
            layer.reserve(total)

    def truncate(self, length: int) -> None:
        for layer in self.shared_layers:
            layer.truncate(length)

    @property
    def capacity(self) -> int:
        return self.shared_layers[0].capacity

    def advance(self, n: int) -> None:
        for layer in self.shared_layers:
            layer.advance(n)

    @contextmanager
    def static_writes(self, write_index: torch.Tensor) -> Iterator[None]:
        """Inside: each layer writes at `write_index` (a (1,) device tensor) and returns its whole buffer."""
        for layer in self.shared_layers:
            layer.write_index = write_index
        try:
            yield
        finally:
            for layer in self.shared_layers:
                layer.write_index = None

    def nbytes(self) -> int:
        """Bytes of the preallocated buffers (tail included)."""
        return sum(
            t.numel() * t.element_size() for layer in self.shared_layers for t in (layer._keys, layer._values) if t is not None
        )
