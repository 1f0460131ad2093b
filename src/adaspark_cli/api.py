"""The library's public face: what a Python program (and adaspark's own CLI) imports.

    from adaspark_cli.api import load_video_qa, open_video

    loaded = load_video_qa("Qwen/Qwen2.5-VL-7B-Instruct", overrides={"attn_top_p": 0.3})
    qa = loaded.qa
    prefix = qa.prefill_video(qa.prepare_video(open_video("clip.mp4")))
    print("".join(qa.answer(prefix, "What happens?")))

Names load on first use (PEP 562), so importing this module, its error types, limits and config helpers
costs no torch import; `load_video_qa` and the other model-side names import torch when first touched.
Everything else in the package is internal and may move.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import __version__
from .errors import AdasparkError, CheckpointError, ConfigError, VideoError

# public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    # a model for video QA, and the session that answers
    "load_video_qa": "qa.load", "LoadedModel": "qa.load", "is_bundled_demo": "qa.load",
    "bundled_model_dir": "qa.load", "default_model": "qa.load",
    "VideoQA": "qa.session", "VideoPrompt": "qa.session", "VideoPrefix": "qa.session",
    "AnswerStream": "qa.session", "AnswerResult": "qa.result", "Sampling": "qa.decode",
    # settings
    "AdaSparkConfig": "config", "MAX_CUBE_SIDE": "config", "config_from_checkpoint": "config",
    "merged_config": "config", "parse_cube": "config", "parse_layers": "config", "validate_top_p": "config",
    "DEFAULT_MAX_PIXELS": "limits", "MIN_PIXELS": "limits", "check_fps": "limits", "check_max_frames": "limits",
    "check_max_pixels": "limits", "check_max_new_tokens": "limits", "format_bytes": "limits",
    "DECODERS": "limits", "check_decoder": "limits", "check_device": "limits", "KERNELS": "limits",
    # videos
    "open_video": "video.stream", "open_video_stream": "video.stream", "VideoStream": "video.stream",
    "decode_video": "video.decode", "DecodedVideo": "video.decode",
    # profile, calibrate, convert
    "profile_prefill": "qa.profile", "ProfileResult": "qa.profile", "calibrate": "qa.calibrate",
    "calibrate_per_layer": "qa.calibrate", "parse_grid": "qa.calibrate", "check_plot_path": "qa.plot",
    "plot_profile": "qa.plot", "convert_checkpoint": "checkpoint.convert", "check_convert_paths": "checkpoint.convert",
    "is_converted": "checkpoint.convert", "read_config_json": "checkpoint.load",
    # many videos (batch) and the synthetic evaluation
    "ManifestError": "jobs", "AnswersFile": "jobs", "FrameSampling": "jobs", "find_videos": "jobs",
    "read_manifest": "jobs", "ModelSettings": "qa.batch", "run_local": "qa.batch", "run_ray": "qa.batch",
    "run_workers": "qa.batch", "evaluate": "qa.eval", "plot_eval": "qa.eval", "make_suite": "synth.suite",
    "read_suite": "synth.suite", "write_suite": "synth.suite",
    # a model spread over several devices (--device-map)
    "DeviceMapSpec": "placement", "parse_device_map": "placement", "parse_max_memory": "placement",
    "require_accelerate": "placement",
}
_RENAMED = {"FrameSampling": "Sampling"}  # jobs.Sampling (fps, frames, pixels), not the answers' Sampling

__all__ = ["AdasparkError", "CheckpointError", "ConfigError", "VideoError", "__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f"{__package__}.{_EXPORTS[name]}")
    value = getattr(module, _RENAMED.get(name, name))
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # what type checkers and editors see ("as": re-exported); at run time the names load lazily
    from .checkpoint.convert import check_convert_paths as check_convert_paths
    from .checkpoint.convert import convert_checkpoint as convert_checkpoint
    from .checkpoint.convert import is_converted as is_converted
    from .checkpoint.load import read_config_json as read_config_json
    from .config import MAX_CUBE_SIDE as MAX_CUBE_SIDE
    from .config import AdaSparkConfig as AdaSparkConfig
    from .config import config_from_checkpoint as config_from_checkpoint
    from .config import merged_config as merged_config
    from .config import parse_cube as parse_cube
    from .config import parse_layers as parse_layers
    from .config import validate_top_p as validate_top_p
    from .jobs import AnswersFile as AnswersFile
    from .jobs import ManifestError as ManifestError
    from .jobs import Sampling as FrameSampling  # noqa: F401  (in __all__ through _EXPORTS; renamed, so not seen as a re-export)
    from .jobs import find_videos as find_videos
    from .jobs import read_manifest as read_manifest
    from .limits import DECODERS as DECODERS
    from .limits import DEFAULT_MAX_PIXELS as DEFAULT_MAX_PIXELS
    from .limits import KERNELS as KERNELS
    from .limits import MIN_PIXELS as MIN_PIXELS
    from .limits import check_decoder as check_decoder
    from .limits import check_device as check_device
    from .limits import check_fps as check_fps
    from .limits import check_max_frames as check_max_frames
    from .limits import check_max_new_tokens as check_max_new_tokens
    from .limits import check_max_pixels as check_max_pixels
    from .limits import format_bytes as format_bytes
    from .placement import DeviceMapSpec as DeviceMapSpec
    from .placement import parse_device_map as parse_device_map
    from .placement import parse_max_memory as parse_max_memory
    from .placement import require_accelerate as require_accelerate
    from .qa.batch import ModelSettings as ModelSettings
    from .qa.batch import run_local as run_local
    from .qa.batch import run_ray as run_ray
    from .qa.batch import run_workers as run_workers
    from .qa.calibrate import calibrate as calibrate
    from .qa.calibrate import calibrate_per_layer as calibrate_per_layer
    from .qa.calibrate import parse_grid as parse_grid
    from .qa.decode import Sampling as Sampling
    from .qa.eval import evaluate as evaluate
    from .qa.eval import plot_eval as plot_eval
    from .qa.load import LoadedModel as LoadedModel
    from .qa.load import bundled_model_dir as bundled_model_dir
    from .qa.load import default_model as default_model
    from .qa.load import is_bundled_demo as is_bundled_demo
    from .qa.load import load_video_qa as load_video_qa
    from .qa.plot import check_plot_path as check_plot_path
    from .qa.plot import plot_profile as plot_profile
    from .qa.profile import ProfileResult as ProfileResult
    from .qa.profile import profile_prefill as profile_prefill
    from .qa.result import AnswerResult as AnswerResult
    from .qa.session import AnswerStream as AnswerStream
    from .qa.session import VideoPrefix as VideoPrefix
    from .qa.session import VideoPrompt as VideoPrompt
    from .qa.session import VideoQA as VideoQA
    from .synth.suite import make_suite as make_suite
    from .synth.suite import read_suite as read_suite
    from .synth.suite import write_suite as write_suite
    from .video.decode import DecodedVideo as DecodedVideo
    from .video.decode import decode_video as decode_video
    from .video.stream import VideoStream as VideoStream
    from .video.stream import open_video as open_video
    from .video.stream import open_video_stream as open_video_stream
