"""AdaS-Attn implementations: one signature, (query, key, value, plan, selection, scaling) -> output.

`reference` is the obviously correct one; `gathered` (CPU), `flex` and `fa4` (CUDA) are its fast
forms; `kernels` picks one and decides when a layer runs dense instead. Decode steps attend densely.
"""

from .kernels import IMPLEMENTATIONS, KERNELS, check_kernel, resolve_kernel
from .reference import allowed_keys, attention_reference

__all__ = ["IMPLEMENTATIONS", "KERNELS", "allowed_keys", "attention_reference", "check_kernel", "resolve_kernel"]
