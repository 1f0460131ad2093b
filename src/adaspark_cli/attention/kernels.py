"""Which AdaS-Attn implementation runs, and when a layer runs dense instead.

Every implementation has the signature of `attention_reference` and computes its function for the
Selection it is given:
  reference  exact masked float32 attention; with per-token selection it is the method itself
  gathered   per tile, SDPA over the gathered attended key tiles (the CPU fast path)
  flex       FlexAttention's Triton block-sparse kernel (CUDA)
  fa4        FlashAttention-4's CuTe block-sparse kernel (CUDA, compute capability >= 9.0)
`auto` takes fa4 on CUDA where flash-attn-4 is installed, else flex; gathered on the CPU.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .. import limits
from ..cubes.plan import BlockPlan
from ..errors import ConfigError
from ..limits import KERNELS
from ..selection import Selection
from .fa4 import attention_fa4, fa4_available
from .flex import attention_flex
from .gathered import attention_gathered
from .reference import attention_reference

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, BlockPlan, Selection, float], torch.Tensor]
IMPLEMENTATIONS: dict[str, AttentionFn] = {
    "reference": attention_reference,
    "gathered": attention_gathered,
    "flex": attention_flex,
    "fa4": attention_fa4,
}
assert KERNELS == ("auto", *IMPLEMENTATIONS), "limits.KERNELS lists the --kernel choices: keep it in step"
CUDA_ONLY = ("flex", "fa4")

# A layer whose selection keeps more than this fraction of the causal key blocks runs dense SDPA
# instead: the sparse path's fixed costs (selection, permutation, block lists) would not be paid back.
# By device type; measured crossovers in docs/benchmarks.md ("dense fallback").
DENSE_ABOVE = {"cuda": 0.85, "cpu": 0.75}


def check_kernel(kernel: str) -> None:
    """Raise ConfigError unless `kernel` is one of KERNELS (the --kernel choices)."""
    limits.check_kernel(kernel, ConfigError)


def resolve_kernel(kernel: str, device: torch.device) -> str:
    """The implementation `kernel` means on `device` ("auto": the fastest one available there)."""
    check_kernel(kernel)
    if kernel == "auto":
        if device.type != "cuda":
            return "gathered"
        return "fa4" if fa4_available() else "flex"
    if kernel in CUDA_ONLY and device.type != "cuda":
        raise ConfigError(f"--kernel {kernel} needs a CUDA GPU; on the CPU use --kernel auto (gathered) or reference")
    if kernel == "fa4" and not fa4_available():
        raise ConfigError(
            "--kernel fa4 needs FlashAttention-4 on a GPU of compute capability 9.0 or newer: "
            "pip install 'adaspark-cli[fa4]', or use --kernel auto"
        )
    return kernel


def per_token(kernel: str) -> bool:
    """Whether the resolved implementation takes the reference's per-token selection."""
    return kernel == "reference"


def kept_block_fraction(plan: BlockPlan, selection: Selection) -> torch.Tensor:
    """0-dim float tensor: attended key blocks over causal key blocks (partial blocks count half), on
    the selection's device, without a host sync."""
    assert selection.full is not None and selection.partial is not None
    kept = selection.full.sum() + 0.5 * selection.partial.sum()
    if "causal_blocks" not in plan.cache:  # every block a dense selection would list, weighted the same way
        cand_partial = plan.cand_blocks & plan.k.block_has_pad[None, :]
        causal = plan.always_full.sum() + 0.5 * plan.always_partial.sum() + plan.cand_blocks.sum() - 0.5 * cand_partial.sum()
        plan.cache["causal_blocks"] = causal.float() * selection.kv_heads
    return kept / plan.cache["causal_blocks"]


def runs_dense(plan: BlockPlan, selection: Selection, device: torch.device) -> bool:
    """The dense-fallback decision for one layer: one host sync for one scalar."""
    return bool(kept_block_fraction(plan, selection) > DENSE_ABOVE.get(device.type, 1.0))
