"""Training the bundled model on the synthetic suite (docs/training.md): sizes, examples, losses, the loop.

Run it with ``python -m adaspark_cli.train --help``.
"""

from ..checkpoint.tiny import ModelSpec
from .data import IGNORE, Encoder, Example, batches, collate, model_inputs, pixel_values
from .loop import clipped_step, save_checkpoint, train
from .losses import answer_accuracy, dense_loss, sparse_loss
from .presets import PRESETS, TrainConfig, build_model

__all__ = [
    "IGNORE",
    "PRESETS",
    "Encoder",
    "Example",
    "ModelSpec",
    "TrainConfig",
    "answer_accuracy",
    "batches",
    "build_model",
    "clipped_step",
    "collate",
    "dense_loss",
    "model_inputs",
    "pixel_values",
    "save_checkpoint",
    "sparse_loss",
    "train",
]
