"""Checkpoint loading (local directory or hub id), conversion to AdaSpark, and a tiny random Qwen2.5-VL for tests."""

from .convert import ConvertResult, check_convert_paths, convert_checkpoint, is_converted, read_calibration
from .hub import resolve_model_path
from .load import (
    SUPPORTED_MODEL_TYPES,
    default_dtype,
    load_model,
    quiet_hf_output,
    read_config_json,
    verify_checkpoint,
)
from .tiny import CHAT_TEMPLATE, SPECIAL_TOKENS, build_tiny_checkpoint, build_tiny_processor, build_tiny_tokenizer

__all__ = [
    "CHAT_TEMPLATE",
    "ConvertResult",
    "SPECIAL_TOKENS",
    "SUPPORTED_MODEL_TYPES",
    "build_tiny_checkpoint",
    "build_tiny_processor",
    "build_tiny_tokenizer",
    "check_convert_paths",
    "convert_checkpoint",
    "default_dtype",
    "is_converted",
    "load_model",
    "quiet_hf_output",
    "read_calibration",
    "read_config_json",
    "resolve_model_path",
    "verify_checkpoint",
]
