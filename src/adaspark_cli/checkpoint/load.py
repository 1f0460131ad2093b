"""Load a Qwen2.5-VL or Qwen3-VL checkpoint (found by hub.py: a local directory or a hub id) for the CLI.

Every failure the user can fix (wrong path, not downloaded, wrong architecture, missing or damaged weights)
raises :class:`~adaspark_cli.errors.CheckpointError` with a one-line message naming the problem and a fix;
exceptions from transformers/safetensors/huggingface_hub for these cases never escape. Nothing is printed:
transformers' progress bars and warnings are off while loading (downloads of hub ids keep huggingface_hub's
own progress bars; set HF_HUB_DISABLE_PROGRESS_BARS=1 to hide them).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..adapters.arch import ARCHITECTURES, MODEL_CLASSES, supported_text
from ..errors import CheckpointError
from .hub import CONFIG_NAME, EXAMPLE_ID, resolve_model_path
from .messages import first_items, one_line, summary

if TYPE_CHECKING:
    from transformers import PreTrainedModel, ProcessorMixin

    from ..placement import DeviceMapSpec

__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "default_dtype",
    "load_model",
    "quiet_hf_output",
    "read_config_json",
    "verify_checkpoint",
]

SUPPORTED_MODEL_TYPES = tuple(MODEL_CLASSES)  # "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe"

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
_SUPPORTED = f"adaspark supports {supported_text()} checkpoints"


@contextmanager
def quiet_hf_output() -> Iterator[None]:
    """For the block: no transformers/huggingface_hub progress bars, transformers logs only errors; then restore.

    Keeps "Loading weights" bars and the load report off the terminal; the problems the report shows
    (missing tensors) become CheckpointError instead.
    """
    import logging

    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity(max(verbosity, hf_logging.ERROR))
    accelerate_log = logging.getLogger("accelerate")  # --device-map: its "offloaded to the disk" warning
    accelerate_level = accelerate_log.level
    accelerate_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        accelerate_log.setLevel(accelerate_level)
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


# --- locating the checkpoint -------------------------------------------------------------------------


def read_config_json(path: Path) -> dict[str, Any]:
    """The parsed ``config.json`` of a checkpoint directory (or the file itself); CheckpointError if unusable."""
    path = Path(path)
    config_file = path / CONFIG_NAME if path.is_dir() else path
    if not config_file.is_file():
        raise CheckpointError(
            f"{path} has no {CONFIG_NAME}; pass a Hugging Face checkpoint directory (config.json, *.safetensors, "
            "tokenizer and processor files), e.g. one downloaded with `hf download "
            f"{EXAMPLE_ID}`"
        )
    try:
        data = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            f"{config_file} is not valid JSON ({summary(exc)}); restore it from the original checkpoint "
            "(re-download it)"
        ) from None
    if not isinstance(data, dict):
        raise CheckpointError(
            f"{config_file} holds a JSON {type(data).__name__}, not an object; restore it from the original "
            "checkpoint (re-download it)"
        )
    return data


def _family(model_type: str) -> str:
    """'Qwen2.5-VL' for 'qwen2_5_vl', for messages."""
    return next(arch.name for arch in ARCHITECTURES if model_type in arch.model_types)


def _check_model_type(path: Path, config: dict[str, Any]) -> str:
    """The transformers class of the checkpoint's model_type, or a CheckpointError naming what is supported."""
    model_type = config.get("model_type")
    if model_type in SUPPORTED_MODEL_TYPES:
        return MODEL_CLASSES[model_type]
    if model_type is None:
        raise CheckpointError(
            f"{path / CONFIG_NAME} has no model_type; {_SUPPORTED}, e.g. {EXAMPLE_ID}"
        )
    raise CheckpointError(f"{path} is a {model_type} checkpoint; {_SUPPORTED}, e.g. {EXAMPLE_ID}")


def _check_safetensors_file(file: Path) -> None:
    """Parse the safetensors header and check the file is as long as it says (catches truncated downloads)."""
    try:
        size = file.stat().st_size
        with file.open("rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise ValueError(f"{size} bytes, shorter than the 8-byte header length")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > size - 8:
                raise ValueError(f"header of {header_len} bytes does not fit in {size} bytes")
            header = json.loads(handle.read(header_len))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        data_end = max(
            (int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"),
            default=0,
        )
    except (OSError, ValueError, KeyError, TypeError, IndexError, UnicodeDecodeError) as exc:
        raise CheckpointError(
            f"weights file {file} is corrupt ({one_line(exc, 160)}); re-download the checkpoint"
        ) from None
    expected = 8 + header_len + data_end
    if size < expected:
        raise CheckpointError(
            f"weights file {file} is truncated ({size} of {expected} bytes); re-download the checkpoint "
            "(an interrupted download leaves partial files)"
        )


def _weight_files(path: Path) -> list[Path]:
    """The safetensors files the checkpoint declares (index) or holds; CheckpointError when there are none."""
    index = path / SAFE_WEIGHTS_INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            names = sorted(set(weight_map.values()))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(
                f"{index} is not a valid safetensors index ({summary(exc)}); re-download the checkpoint"
            ) from None
        missing = [name for name in names if not (path / name).is_file()]
        if missing:
            raise CheckpointError(
                f"{path} is missing weight shards listed in {SAFE_WEIGHTS_INDEX_NAME}: {first_items(missing)}; "
                "re-download the checkpoint"
            )
        return [path / name for name in names]
    single = path / SAFE_WEIGHTS_NAME
    if single.is_file():
        return [single]
    others = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt*"))
    hint = f" (found {', '.join(others[:3])}: convert them to safetensors)" if others else ""
    raise CheckpointError(
        f"{path} has no model weights ({SAFE_WEIGHTS_NAME} or {SAFE_WEIGHTS_INDEX_NAME}){hint}; re-download "
        "the checkpoint with its *.safetensors files"
    )


def verify_checkpoint(path: Path) -> list[Path]:
    """Check a checkpoint directory without loading it: a supported config.json and whole safetensors files.

    Returns the weight files (the shards the index lists, or model.safetensors); CheckpointError otherwise.
    """
    path = Path(path)
    _check_model_type(path, read_config_json(path))
    files = _weight_files(path)
    for file in files:
        _check_safetensors_file(file)
    return files


# --- loading -----------------------------------------------------------------------------------------


def default_dtype(device: str | torch.device) -> torch.dtype:
    """bfloat16 on CUDA, float32 elsewhere (CPU)."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def load_model(
    model: str,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    device_map: DeviceMapSpec | None = None,
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """Load a supported checkpoint (local dir or hub id) and its processor; the model is on ``device`` in eval mode.

    dtype defaults to bfloat16 on CUDA and float32 on CPU; attention is SDPA in both the language model and
    the vision tower. `device_map` (instead of `device`): the layers spread over the visible devices by
    accelerate (placement.py); the map is the model's `hf_device_map`. Raises CheckpointError for a
    missing/unsupported/incomplete/corrupt checkpoint.
    """
    import transformers
    from safetensors import SafetensorError
    from transformers import AutoProcessor

    path = resolve_model_path(model)
    config_json = read_config_json(path)
    model_class = getattr(transformers, _check_model_type(path, config_json))
    family = _family(config_json["model_type"])
    for file in _weight_files(path):
        _check_safetensors_file(file)
    if dtype is None:
        dtype = default_dtype("cuda" if device_map is not None and torch.cuda.is_available() else device)
    placement = {} if device_map is None else {"device_map": _plan(path, device_map, dtype)}

    load_errors = (OSError, ValueError, KeyError, RuntimeError, SafetensorError)
    with quiet_hf_output():
        try:
            net, info = model_class.from_pretrained(
                path,
                dtype=dtype,
                attn_implementation={"text_config": "sdpa", "vision_config": "sdpa"},
                use_safetensors=True,
                output_loading_info=True,
                ignore_mismatched_sizes=True,  # reported below as a CheckpointError naming the tensors
                **placement,
            )
        except load_errors as exc:
            raise CheckpointError(
                f"could not load the weights of {path} ({summary(exc)}); re-download the checkpoint"
            ) from None
        try:
            processor = AutoProcessor.from_pretrained(path)
        except load_errors as exc:
            raise CheckpointError(
                f"could not load the processor of {path} ({summary(exc)}); re-download the checkpoint with "
                "its tokenizer, preprocessor and chat-template files"
            ) from None

    missing = sorted(info.get("missing_keys") or ())
    if missing:
        raise CheckpointError(
            f"{path} lacks {len(missing)} weight tensor(s) of {family} ({first_items(missing)}); re-download the "
            "checkpoint"
        )
    mismatched = sorted(info.get("mismatched_keys") or (), key=str)
    if mismatched:
        shapes = [f"{key} {list(got)} vs {list(want)}" for key, got, want in mismatched]
        raise CheckpointError(
            f"{path} has {len(shapes)} weight tensor(s) whose shape does not match its config.json "
            f"({first_items(shapes)}); re-download the checkpoint, config and weights from the same source"
        )
    if not hasattr(processor, "video_processor") or not hasattr(processor, "tokenizer"):
        raise CheckpointError(
            f"{path} has no {family} video processor (got {type(processor).__name__}); re-download the "
            "checkpoint with its preprocessor/processor config files"
        )
    _check_tokenizer_matches(path, net.config, processor)
    if placement:
        net.hf_device_map = placement["device_map"]  # accelerate sets it only where it attached hooks
        return net.eval(), processor
    return net.to(device).eval(), processor


def _plan(path: Path, spec: DeviceMapSpec, dtype: torch.dtype) -> dict[str, int | str]:
    from transformers import AutoConfig, Qwen2_5_VLForConditionalGeneration

    from ..placement import plan_device_map

    return plan_device_map(Qwen2_5_VLForConditionalGeneration, AutoConfig.from_pretrained(path), spec, dtype)


def _check_tokenizer_matches(path: Path, config: Any, processor: Any) -> None:
    """The tokenizer must map <|video_pad|>/<|image_pad|> to the model's ids (transformers happily builds an
    empty tokenizer when the tokenizer files are missing)."""
    for name in ("video", "image"):
        expected = getattr(config, f"{name}_token_id", None)
        got = getattr(processor, f"{name}_token_id", None)
        if expected is not None and got != expected:
            files = ("tokenizer.json", "vocab.json", "tokenizer.model")
            hint = "" if any((path / f).is_file() for f in files) else " (no tokenizer.json or vocab.json)"
            raise CheckpointError(
                f"the tokenizer of {path} does not match the model{hint}: {name} token id {got}, config.json "
                f"says {expected}; re-download the checkpoint with its tokenizer files"
            )

