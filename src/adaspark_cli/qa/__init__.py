"""Video question answering on top of the sparsified model: prefill once, answer many questions."""

from .cache import SharedCache
from .calibrate import (
    DEFAULT_GRID,
    Calibration,
    CalibrationPoint,
    LayerCalibration,
    LayerChoice,
    calibrate,
    calibrate_per_layer,
    parse_grid,
)
from .decode import DecodeOutcome, Sampling, StepHook, decode_tokens
from .load import (
    BUNDLED_MODEL_NAME,
    LoadedModel,
    bundled_model_dir,
    default_model,
    is_bundled_demo,
    load_video_qa,
    pick_device,
)
from .profile import DEFAULT_QUESTION, CubeSelection, Fidelity, ProfileResult, logit_fidelity, profile_prefill
from .result import StageTimes
from .session import DEFAULT_MAX_PIXELS, AnswerResult, AnswerStream, VideoPrefix, VideoPrompt, VideoQA, layer_rows

__all__ = [
    "BUNDLED_MODEL_NAME",
    "DEFAULT_GRID",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_QUESTION",
    "AnswerResult",
    "AnswerStream",
    "Calibration",
    "CalibrationPoint",
    "CubeSelection",
    "DecodeOutcome",
    "Fidelity",
    "LayerCalibration",
    "LayerChoice",
    "LoadedModel",
    "ProfileResult",
    "Sampling",
    "SharedCache",
    "StageTimes",
    "StepHook",
    "VideoPrefix",
    "VideoPrompt",
    "VideoQA",
    "bundled_model_dir",
    "calibrate",
    "calibrate_per_layer",
    "decode_tokens",
    "default_model",
    "is_bundled_demo",
    "layer_rows",
    "load_video_qa",
    "logit_fidelity",
    "parse_grid",
    "pick_device",
    "profile_prefill",
]
