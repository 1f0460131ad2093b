"""Video question answering on top of the sparsified model: prefill once, answer many questions."""

from .load import BUNDLED_MODEL_NAME, LoadedModel, bundled_model_dir, default_model, load_video_qa, pick_device
from .session import DEFAULT_MAX_PIXELS, AnswerResult, AnswerStream, VideoPrefix, VideoPrompt, VideoQA

__all__ = [
    "BUNDLED_MODEL_NAME",
    "DEFAULT_MAX_PIXELS",
    "AnswerResult",
    "AnswerStream",
    "LoadedModel",
    "VideoPrefix",
    "VideoPrompt",
    "VideoQA",
    "bundled_model_dir",
    "default_model",
    "load_video_qa",
    "pick_device",
]
