"""Checkpoint loading (local directory or hub id) and a tiny random Qwen2.5-VL checkpoint for tests."""

from .load import (
    SUPPORTED_MODEL_TYPES,
    default_dtype,
    load_model,
    quiet_hf_output,
    read_config_json,
    resolve_model_path,
)
from .tiny import CHAT_TEMPLATE, SPECIAL_TOKENS, build_tiny_checkpoint, build_tiny_processor, build_tiny_tokenizer

__all__ = [
    "CHAT_TEMPLATE",
    "SPECIAL_TOKENS",
    "SUPPORTED_MODEL_TYPES",
    "build_tiny_checkpoint",
    "build_tiny_processor",
    "build_tiny_tokenizer",
    "default_dtype",
    "load_model",
    "quiet_hf_output",
    "read_config_json",
    "resolve_model_path",
]
