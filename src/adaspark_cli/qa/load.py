"""Open a model for video QA: resolve the checkpoint, merge its AdaSpark block with overrides, sparsify."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..adapters.arch import HFModule, architecture_of
from ..adapters.sparse import sparsify
from ..attention.kernels import check_kernel
from ..checkpoint import load_model, read_config_json, resolve_model_path
from ..config import AdaSparkConfig, config_from_checkpoint
from ..errors import AdasparkError, CheckpointError, ConfigError
from ..limits import check_device
from ..placement import EMBEDDING, VISION, DeviceMapSpec, Placement, pin_cuda_devices
from .session import VideoQA

BUNDLED_MODEL_NAME = "adaspark-synth-small"  # trained on synthetic scenes only (its model card)
MODEL_ENV = "ADASPARK_MODEL"


@dataclass(frozen=True)
class LoadedModel:
    qa: VideoQA
    path: Path
    device: torch.device
    dtype: torch.dtype
    config: AdaSparkConfig
    config_source: str  # "checkpoint", "defaults"
    bundled: bool
    placement: Placement | None = None  # with a device map: where each block runs (`device` gets the prompt)


def _checkout() -> Path:
    return Path(__file__).resolve().parents[3]


def bundled_model_dir() -> Path:
    """models/<name> of the source checkout this package runs from (editable install)."""
    return _checkout() / "models" / BUNDLED_MODEL_NAME


def is_bundled_demo(video: str | Path) -> bool:
    """Whether ``video`` is the checkout's examples/demo.mp4, the one real video the bundled model knows."""
    try:
        return Path(video).resolve() == (_checkout() / "examples" / "demo.mp4").resolve()
    except OSError:
        return False


def default_model() -> str:
    """$ADASPARK_MODEL, else the bundled model of the checkout."""
    env = os.environ.get(MODEL_ENV)
    if env:
        return env
    path = bundled_model_dir()
    if not (path / "config.json").is_file():
        raise CheckpointError(
            f"no --model given and the bundled model is not at {path} (adaspark was not installed from a "
            "source checkout); pass --model DIR_OR_HUB_ID or set ADASPARK_MODEL"
        )
    return str(path)


def _named_env(exc: CheckpointError | ConfigError, name: str) -> CheckpointError | ConfigError:
    """The same error, saying that the model came from $ADASPARK_MODEL."""
    return type(exc)(f"${MODEL_ENV} is {name!r} (no --model given): {exc}; fix or unset {MODEL_ENV}, or pass --model")


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    check_device(device)
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise AdasparkError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    return dev


def load_video_qa(
    model: str | None,
    *,
    device: str = "auto",
    overrides: dict[str, Any] | None = None,
    dense: bool = False,
    kernel: str = "auto",
    device_map: DeviceMapSpec | None = None,
) -> LoadedModel:
    """Load `model` (default: the bundled one), sparsify its language model and return a VideoQA.

    The AdaSpark settings are the checkpoint's "adaspark" block if it has one, else the defaults,
    with `overrides` (the fields the user set) applied; `dense` runs the unmodified model (same object, patch bypassed).
    `kernel`: one of attention.kernels.KERNELS ("auto": FA4 or FlexAttention on CUDA, the gathered
    block kernel on the CPU). `device_map` (instead of `device`): the layers spread over the visible
    devices through accelerate (placement.py); each sparse layer runs on its own device.
    """
    name = model or default_model()
    from_env = model is None and bool(os.environ.get(MODEL_ENV))  # the user may not remember setting it
    try:
        path = resolve_model_path(name)
        block = config_from_checkpoint(read_config_json(path))
    except (CheckpointError, ConfigError) as exc:
        if not from_env:
            raise
        raise _named_env(exc, name) from None
    config = (block or AdaSparkConfig()).replace(**(overrides or {}))
    check_kernel(kernel)
    if device_map is not None and device != "auto":
        raise AdasparkError(f"--device-map places the model's layers itself; drop --device {device}")
    dev = pick_device(device) if device_map is None else None
    net: HFModule  # hf_device_map: set by from_pretrained with a device map, not declared by the class
    try:
        net, processor = load_model(name, device=dev or "cpu", device_map=device_map)
    except CheckpointError as exc:
        if not from_env:
            raise
        raise _named_env(exc, name) from None
    placement = Placement(net.hf_device_map) if device_map is not None else None
    if placement is not None:
        dev = placement.device_of(EMBEDDING)  # the prompt's tensors go where the token embedding runs
    assert dev is not None
    state = sparsify(net, config, enabled=not dense, kernel=kernel)
    state.kernel_for(dev)  # --kernel fa4 / flex without what they need: say so now, not at the first prefill
    vision_on = dev if placement is None else placement.device_of(VISION)
    if vision_on.type == "cuda" and (placement is None or not placement.offloaded(VISION)):
        architecture_of(net).enable_fast_vision(net)  # Qwen2.5-VL: the varlen tower (4.1x at 32K tokens, H100)
    qa = VideoQA(net, processor, state)
    if placement is not None and placement.spread:
        pin_cuda_devices(net, placement)
        qa.device = dev  # not the first parameter's: that one may be on another GPU, or offloaded (meta)
        qa.decode_step = "dynamic"  # the fixed-shape step writes every layer's cache at one device's index tensor
    return LoadedModel(
        qa=qa,
        path=path,
        device=dev,
        dtype=next(net.parameters()).dtype,
        config=config,
        config_source="checkpoint" if block is not None else "defaults",
        bundled=path.resolve() == bundled_model_dir().resolve(),
        placement=placement,
    )
