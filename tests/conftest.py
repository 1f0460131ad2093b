"""Shared fixtures: offline Hugging Face hub in a throw-away HF_HOME, seeded torch, one tiny checkpoint per session."""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

import pytest

try:
    import adaspark_cli  # noqa: F401
except ImportError:  # not pip-installed: use the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch

from adaspark_cli.checkpoint import build_tiny_checkpoint


def pytest_report_header(config: pytest.Config) -> list[str]:
    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    return [
        f"torch {torch.__version__}, transformers {version('transformers')}, "
        f"decord {version('decord2')} (decord2), av {version('av')}"
    ]


@pytest.fixture(autouse=True)
def _offline_hf_and_seed(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """No hub traffic and an empty HF cache for every test; huggingface_hub reads both at import, so patch it too."""
    import huggingface_hub.constants as hf_constants

    hf_home = tmp_path_factory.mktemp("hf_home")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HOME", str(hf_home))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(hf_home / "hub"))
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen2.5-VL checkpoint (seed 0, default sizes), built once per session; treat as read-only."""
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny_qwen2_5_vl"))


@pytest.fixture(scope="session")
def tiny_qwen3_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen3-VL checkpoint laid out like the hub's (seed 0), built once per session; read-only."""
    from adaspark_cli.checkpoint.tiny_qwen3 import build_tiny_qwen3_checkpoint

    return build_tiny_qwen3_checkpoint(tmp_path_factory.mktemp("tiny_qwen3_vl"))


@pytest.fixture(scope="session")
def runner():
    from typer.testing import CliRunner

    return CliRunner()


@pytest.fixture(scope="module")
def make_video(tmp_path_factory: pytest.TempPathFactory):
    """`make(**kwargs)` -> a video_factory.write_video file; each distinct video is encoded once per module and
    shared by its tests (they only read it)."""
    from video_factory import write_video

    cache: dict[tuple, Path] = {}
    folder = tmp_path_factory.mktemp("videos")

    def make(**kwargs) -> Path:
        key = tuple(sorted(kwargs.items()))
        if key not in cache:
            name = "_".join(f"{k}-{v}" for k, v in key).replace(".", "p")
            cache[key] = write_video(folder / name, **kwargs)
        return cache[key]

    return make


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2 s, 8 fps, 112x112 H.264 clip written with PyAV."""
    from video_factory import write_video

    return write_video(tmp_path_factory.mktemp("clip") / "clip.mp4", n_frames=16, fps=8.0, width=112, height=112)
