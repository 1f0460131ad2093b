"""`--device-map`: one model spread over several devices through accelerate (issue 15).

- `DeviceMapSpec`, `parse_device_map`, `parse_max_memory` (no torch: flags are checked before it loads):
  the strategy and the per-device memory caps.
- `plan_device_map`: the module -> device map for a checkpoint, computed by accelerate on an empty
  (meta) model with the decoder layers and the whole vision tower kept on one device each (its fast
  forward reads its weights directly, so it cannot follow a split).
- `Placement`: where a loaded model's pieces run (the prompt's device, the layers' devices, offload).
- `pin_cuda_devices`: each block of a spread model makes its own GPU the current one while it runs,
  since Triton and FlashAttention-4 launch on the current device, not on their tensors'.

Accelerate's hooks move each block's inputs to its device; the sparse kernels build their plans,
selections and statistics on their tensors' device (cubes/plan.py is cached per device), and each
layer's KV cache lives beside its layer (qa/cache.py allocates like the keys it is given).
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import AdasparkError

if TYPE_CHECKING:
    import torch
    from torch import nn

STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")  # accelerate's names ("auto" = "balanced")
ACCELERATE_INSTALL = "pip install accelerate"
OFFLOADED = ("cpu", "disk")  # map values whose weights are streamed to the execution device per forward
# module names in transformers 5's Qwen2.5-VL (and Qwen3-VL): where the prompt enters, the tower, the layers
EMBEDDING = "model.language_model.embed_tokens"
VISION = "model.visual"
LAYER = "model.language_model.layers.{}"
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]I?B|B)?", re.IGNORECASE)
_MEMORY_KEY = re.compile(r"(?:cuda:)?(\d+)|cpu", re.IGNORECASE)


class PlacementError(AdasparkError):
    """A --device-map / --max-memory value that cannot be used, or accelerate is missing."""


@dataclass(frozen=True)
class DeviceMapSpec:
    """How to spread the model: an accelerate strategy and optional caps (GPU index or "cpu" -> bytes)."""

    strategy: str = "auto"
    max_memory: tuple[tuple[int | str, int], ...] = ()  # a tuple: hashable and picklable (worker settings)

    def max_memory_dict(self) -> dict[int | str, int] | None:
        return dict(self.max_memory) if self.max_memory else None


def parse_device_map(value: str) -> str:
    """The strategy named by --device-map; a device name or anything else is refused with the fix."""
    if value in STRATEGIES:
        return value
    if re.fullmatch(r"cpu|mps|cuda(:\d+)?", value):
        raise PlacementError(f"--device-map {value!r} is one device; use --device {value} for that, or --device-map "
                             "auto to spread the layers over every visible GPU")
    raise PlacementError(f"--device-map {value!r} is not a strategy; use --device-map {', '.join(STRATEGIES)}")


def parse_max_memory(text: str) -> tuple[tuple[int | str, int], ...]:
    """'0=60GiB,1=70GiB,cpu=200GB' -> ((0, bytes), (1, bytes), ("cpu", bytes)); a unit-less number is bytes."""
    caps: dict[int | str, int] = {}
    for part in (p.strip() for p in text.split(",")):
        key, sep, size = (s.strip() for s in part.partition("="))
        key_match, size_match = _MEMORY_KEY.fullmatch(key), _SIZE.fullmatch(size)
        if not sep or key_match is None or size_match is None:
            raise PlacementError(f"--max-memory {text!r}: {part!r} is not DEVICE=SIZE; write e.g. --max-memory "
                                 "'0=60GiB,1=70GiB,cpu=200GiB' (a GPU index or cpu, then a size)")
        device: int | str = int(key_match.group(1)) if key_match.group(1) is not None else "cpu"
        if device in caps:
            raise PlacementError(f"--max-memory {text!r} names {device!r} twice; give each device once")
        caps[device] = int(float(size_match.group(1)) * _UNITS[(size_match.group(2) or "").upper()])
    return tuple(caps.items())


def require_accelerate() -> None:
    """accelerate importable, or a one-line error with the install command."""
    if importlib.util.find_spec("accelerate") is None:
        raise PlacementError(f"--device-map needs accelerate, which is not installed; install it with "
                             f"{ACCELERATE_INSTALL} (or pip install 'adaspark-cli[multi-gpu]')")


# ------------------------------------------------------------------------------------ with torch


def whole_modules(model: nn.Module) -> set[str]:
    """Class names that must stay on one device: the model's own no-split blocks and the vision tower."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    visual = getattr(getattr(model, "model", None), "visual", None)
    if visual is not None:
        names.add(type(visual).__name__)
    return names


def plan_device_map(model_class: Any, config: Any, spec: DeviceMapSpec, dtype: torch.dtype) -> dict[str, int | str]:
    """accelerate's module -> device map for `model_class(config)` in `dtype` under `spec`: GPUs first
    (balanced, or filled in order for "sequential"), then CPU memory, then the disk."""
    require_accelerate()
    import torch
    from accelerate import infer_auto_device_map
    from accelerate.utils import get_balanced_memory, get_max_memory

    with torch.device("meta"):  # sizes only: no memory, no initialisation
        empty = model_class._from_config(config, dtype=dtype)
    no_split = sorted(whole_modules(empty))
    caps = spec.max_memory_dict()
    if caps is not None:
        _check_gpu_indices(caps)
    if spec.strategy == "sequential":
        budget = get_max_memory(caps)
    else:
        budget = get_balanced_memory(empty, max_memory=caps, no_split_module_classes=no_split, dtype=dtype,
                                     low_zero=spec.strategy == "balanced_low_0")
    return dict(infer_auto_device_map(empty, max_memory=budget, no_split_module_classes=no_split, dtype=dtype))


def _check_gpu_indices(caps: Mapping[int | str, int]) -> None:
    import torch

    visible = torch.cuda.device_count()
    wrong = sorted(k for k in caps if isinstance(k, int) and k >= visible)
    if wrong:
        raise PlacementError(f"--max-memory names GPU {wrong[0]}, but {visible} GPU(s) are visible (indices 0-"
                             f"{visible - 1})" if visible else f"--max-memory names GPU {wrong[0]}, but no GPU is "
                             "visible; cap only cpu, e.g. --max-memory cpu=8GiB")


@dataclass(frozen=True)
class Placement:
    """Where a model loaded with a device map runs. `device_map` is accelerate's (module name -> GPU
    index, "cpu" or "disk"); "cpu" and "disk" blocks run on the first GPU (on the CPU without one),
    their weights copied in for each forward."""

    device_map: dict[str, int | str]

    @property
    def main_device(self) -> torch.device:
        import torch

        gpus = [v for v in self.device_map.values() if v not in OFFLOADED]
        return _device(gpus[0]) if gpus else torch.device("cpu")

    def raw(self, module_name: str) -> int | str:
        """The map's value for `module_name`: its own entry or its closest enclosing one."""
        name = module_name
        while True:
            if name in self.device_map:
                return self.device_map[name]
            if not name:
                raise PlacementError(f"the device map places no module enclosing {module_name!r}; this is a bug")
            name = name.rpartition(".")[0]

    def device_of(self, module_name: str) -> torch.device:
        """The device `module_name` computes on."""
        value = self.raw(module_name)
        return self.main_device if value in OFFLOADED else _device(value)

    def offloaded(self, module_name: str) -> bool:
        return self.raw(module_name) in OFFLOADED and (self.raw(module_name) == "disk" or self.main_device.type != "cpu")

    @property
    def devices(self) -> list[torch.device]:
        """The devices that compute, in the map's (layer) order."""
        seen: list[torch.device] = []
        for name in self.device_map:
            device = self.device_of(name)
            if device not in seen:
                seen.append(device)
        return seen

    @property
    def spread(self) -> bool:
        """Whether accelerate's hooks move tensors between blocks (several devices, or streamed weights)."""
        return len(self.devices) > 1 or any(self.offloaded(name) for name in self.device_map)

    def layer_devices(self, layer_names: list[str]) -> list[str]:
        """Each layer's device as text, "(streamed)" where its weights are copied in per forward."""
        return [f"{self.device_of(n)}{' (streamed from ' + str(self.raw(n)) + ')' if self.offloaded(n) else ''}"
                for n in layer_names]

    def describe(self, num_layers: int) -> str:
        """'layers 0-13 on cuda:0, 14-27 on cuda:1; vision tower on cuda:0': runs of consecutive
        language-model layers on one device, then the vision tower's."""
        runs: list[tuple[int, int, str]] = []
        for i, where in enumerate(self.layer_devices([LAYER.format(i) for i in range(num_layers)])):
            if runs and runs[-1][2] == where:
                runs[-1] = (runs[-1][0], i, where)
            else:
                runs.append((i, i, where))
        parts = [f"{a}-{b} on {w}" if a != b else f"{a} on {w}" for a, b, w in runs]
        return f"layers {', '.join(parts)}; vision tower on {self.layer_devices([VISION])[0]}"


def _device(value: int | str) -> torch.device:
    import torch

    return torch.device("cuda", value) if isinstance(value, int) else torch.device(value)


def pin_cuda_devices(model: nn.Module, placement: Placement) -> None:
    """Forward hooks on each block of the map that make its GPU current while it runs (and restore the
    previous one after), so kernels that launch on the current device (Triton, FA4) use the block's."""
    import torch

    for name in placement.device_map:
        device = placement.device_of(name)
        if device.type == "cuda":
            _pin(model.get_submodule(name), device.index if device.index is not None else torch.cuda.current_device())


def _pin(module: nn.Module, index: int) -> None:
    import torch

    previous: list[int] = []

    def before(*_: Any) -> None:
        previous.append(torch.cuda.current_device())
        torch.cuda.set_device(index)

    def after(*_: Any) -> None:
        torch.cuda.set_device(previous.pop() if previous else index)

    module.register_forward_pre_hook(before)
    module.register_forward_hook(after)
