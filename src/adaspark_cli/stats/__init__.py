"""Statistics: per-layer counters and analytic FLOPs."""

from .collect import LayerRecord, PrefillStats
from .flops import Flops, ModelDims, flops_summary, layer_flops, prefill_flops, reduction

__all__ = ["Flops", "LayerRecord", "ModelDims", "PrefillStats", "flops_summary", "layer_flops", "prefill_flops", "reduction"]
