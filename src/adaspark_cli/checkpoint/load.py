"""Find and load a Qwen2.5-VL or Qwen3-VL checkpoint (local directory or Hugging Face hub id) for the CLI.

Every failure the user can fix (wrong path, not downloaded, wrong architecture, missing or damaged weights)
raises :class:`~adaspark_cli.errors.CheckpointError` with a one-line message naming the problem and a fix;
exceptions from transformers/safetensors/huggingface_hub for these cases never escape. Nothing is printed:
transformers' progress bars and warnings are off while loading (downloads of hub ids keep huggingface_hub's
own progress bars; set HF_HUB_DISABLE_PROGRESS_BARS=1 to hide them).
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..adapters.arch import ARCHITECTURES, MODEL_CLASSES, supported_text
from ..errors import CheckpointError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, ProcessorMixin

    from ..placement import DeviceMapSpec

__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "default_dtype",
    "load_model",
    "quiet_hf_output",
    "read_config_json",
    "resolve_model_path",
    "verify_checkpoint",
]

SUPPORTED_MODEL_TYPES = tuple(MODEL_CLASSES)  # "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe"

CONFIG_NAME = "config.json"
SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
# Files of a checkpoint snapshot_download fetches: config, weights, tokenizer, processor, chat template.
HUB_ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken"]

_EXAMPLE_ID = "Qwen/Qwen2.5-VL-7B-Instruct"
_SUPPORTED = f"adaspark supports {supported_text()} checkpoints"
_MAX_DETAIL = 300


def _one_line(text: object, limit: int = _MAX_DETAIL) -> str:
    """Collapse whitespace (tracebacks, multi-line hub messages) and cap the length."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _first(items: list[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def _summary(exc: BaseException) -> str:
    detail = _one_line(exc)
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


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


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _hub_offline() -> bool:
    """HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE, read now (huggingface_hub reads them once, at import)."""
    from huggingface_hub import constants

    return _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE") or bool(constants.HF_HUB_OFFLINE)


def _hub_cache_dir() -> str | None:
    """The hub cache as huggingface_hub resolves it (HF_HUB_CACHE > HUGGINGFACE_HUB_CACHE > HF_HOME/hub), read now."""
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(name):
            return os.path.expanduser(os.path.expandvars(os.environ[name]))
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.path.expandvars(os.environ["HF_HOME"])), "hub")
    return None  # huggingface_hub's default (~/.cache/huggingface/hub)


def _is_hub_id(model: str) -> bool:
    """``name`` or ``owner/name`` that is not written like a filesystem path."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if model.startswith((".", "~", "/")) or "\\" in model or model.endswith("/"):
        return False
    try:
        validate_repo_id(model)
    except HFValidationError:
        return False
    return True


def _not_cached(model: str, why: str) -> CheckpointError:
    return CheckpointError(
        f"{model} is not a local directory and not in the Hugging Face cache ({why}); download it first with "
        f"`hf download {model}` on a connected machine (same HF_HOME / HF_HUB_CACHE), or pass a local checkpoint "
        "directory"
    )


def resolve_model_path(model: str) -> Path:
    """A local checkpoint directory for ``model``: an existing path, or a hub id via the HF cache / download.

    Hub ids go through ``huggingface_hub.snapshot_download`` (config, weights, tokenizer and processor files
    only), which uses the HF cache and honours HF_HUB_OFFLINE; when offline, or the Hub cannot be reached, and
    the id is not cached, a CheckpointError tells how to fetch it. Does not check the directory's contents.
    """
    model = str(model).strip()
    if not model:
        raise CheckpointError(f"no model given; pass a local checkpoint directory or a hub id like {_EXAMPLE_ID}")
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(
                f"{model} is a file, not a checkpoint directory; pass the directory that holds {CONFIG_NAME} "
                "and the *.safetensors weights"
            )
        return path
    if not _is_hub_id(model):
        raise CheckpointError(
            f"model directory {model} does not exist; pass an existing checkpoint directory or a hub id "
            f"like {_EXAMPLE_ID}"
        )
    return _snapshot(model)


def _snapshot(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = _hub_offline()
    try:
        folder = snapshot_download(
            repo_id,
            cache_dir=_hub_cache_dir(),
            allow_patterns=HUB_ALLOW_PATTERNS,
            local_files_only=offline,
        )
    except LocalEntryNotFoundError as exc:  # includes IncompleteSnapshotError
        if offline:
            why = "HF_HUB_OFFLINE is set"
        elif "incomplete" in str(exc).lower():
            why = "its cached snapshot is incomplete and the Hub cannot be reached"
        else:
            why = "the Hub cannot be reached"
        raise _not_cached(repo_id, why) from None
    except OfflineModeIsEnabled:
        raise _not_cached(repo_id, "HF_HUB_OFFLINE is set") from None
    except GatedRepoError:
        raise CheckpointError(
            f"{repo_id} is a gated repository on the Hub; accept its terms on huggingface.co and log in with "
            "`hf auth login`, or pass a local checkpoint directory"
        ) from None
    except RepositoryNotFoundError:
        raise CheckpointError(
            f"{repo_id} is neither a local directory nor a repository on the Hugging Face Hub (or it is private); "
            f"check the spelling (e.g. {_EXAMPLE_ID}), log in with `hf auth login` for a private repository, or "
            "pass a local checkpoint directory"
        ) from None
    except RevisionNotFoundError as exc:
        raise CheckpointError(f"{repo_id}: revision not found on the Hub ({_summary(exc)})") from None
    except HFValidationError as exc:
        raise CheckpointError(
            f"{repo_id} is not a valid hub id ({_one_line(exc)}); pass owner/name or a local directory"
        ) from None
    except (HfHubHTTPError, OSError) as exc:
        raise CheckpointError(
            f"could not download {repo_id} from the Hugging Face Hub ({_summary(exc)}); retry, or download it "
            f"with `hf download {repo_id}` and pass the local directory"
        ) from None
    return Path(folder)


# --- checking the checkpoint -------------------------------------------------------------------------


def read_config_json(path: Path) -> dict[str, Any]:
    """The parsed ``config.json`` of a checkpoint directory (or the file itself); CheckpointError if unusable."""
    path = Path(path)
    config_file = path / CONFIG_NAME if path.is_dir() else path
    if not config_file.is_file():
        raise CheckpointError(
            f"{path} has no {CONFIG_NAME}; pass a Hugging Face checkpoint directory (config.json, *.safetensors, "
            "tokenizer and processor files), e.g. one downloaded with `hf download "
            f"{_EXAMPLE_ID}`"
        )
    try:
        data = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            f"{config_file} is not valid JSON ({_summary(exc)}); restore it from the original checkpoint "
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
            f"{path / CONFIG_NAME} has no model_type; {_SUPPORTED}, e.g. {_EXAMPLE_ID}"
        )
    raise CheckpointError(f"{path} is a {model_type} checkpoint; {_SUPPORTED}, e.g. {_EXAMPLE_ID}")


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
            f"weights file {file} is corrupt ({_one_line(exc, 160)}); re-download the checkpoint"
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
                f"{index} is not a valid safetensors index ({_summary(exc)}); re-download the checkpoint"
            ) from None
        missing = [name for name in names if not (path / name).is_file()]
        if missing:
            raise CheckpointError(
                f"{path} is missing weight shards listed in {SAFE_WEIGHTS_INDEX_NAME}: {_first(missing)}; "
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
                f"could not load the weights of {path} ({_summary(exc)}); re-download the checkpoint"
            ) from None
        try:
            processor = AutoProcessor.from_pretrained(path)
        except load_errors as exc:
            raise CheckpointError(
                f"could not load the processor of {path} ({_summary(exc)}); re-download the checkpoint with "
                "its tokenizer, preprocessor and chat-template files"
            ) from None

    missing = sorted(info.get("missing_keys") or ())
    if missing:
        raise CheckpointError(
            f"{path} lacks {len(missing)} weight tensor(s) of {family} ({_first(missing)}); re-download the "
            "checkpoint"
        )
    mismatched = sorted(info.get("mismatched_keys") or (), key=str)
    if mismatched:
        shapes = [f"{key} {list(got)} vs {list(want)}" for key, got, want in mismatched]
        raise CheckpointError(
            f"{path} has {len(shapes)} weight tensor(s) whose shape does not match its config.json "
            f"({_first(shapes)}); re-download the checkpoint, config and weights from the same source"
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

