"""Where a checkpoint is: a local directory, or a Hugging Face hub id resolved through the hub cache
(downloaded when online; `HF_HUB_OFFLINE=1` and the cache variables are honoured). One-line
CheckpointErrors for every case the user can fix."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import CheckpointError
from .messages import one_line, summary

CONFIG_NAME = "config.json"
# Files of a checkpoint snapshot_download fetches: config, weights, tokenizer, processor, chat template.
HUB_ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken"]
EXAMPLE_ID = "Qwen/Qwen2.5-VL-7B-Instruct"


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
        raise CheckpointError(f"no model given; pass a local checkpoint directory or a hub id like {EXAMPLE_ID}")
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
            f"like {EXAMPLE_ID}"
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
            f"check the spelling (e.g. {EXAMPLE_ID}), log in with `hf auth login` for a private repository, or "
            "pass a local checkpoint directory"
        ) from None
    except RevisionNotFoundError as exc:
        raise CheckpointError(f"{repo_id}: revision not found on the Hub ({summary(exc)})") from None
    except HFValidationError as exc:
        raise CheckpointError(
            f"{repo_id} is not a valid hub id ({one_line(exc)}); pass owner/name or a local directory"
        ) from None
    except (HfHubHTTPError, OSError) as exc:
        raise CheckpointError(
            f"could not download {repo_id} from the Hugging Face Hub ({summary(exc)}); retry, or download it "
            f"with `hf download {repo_id}` and pass the local directory"
        ) from None
    return Path(folder)


# --- checking the checkpoint -------------------------------------------------------------------------
