"""Defaults sized to the dataset for image runs.

The numbers live in ``trainer.presets`` (one table for text and image runs) and are explained,
with sources, in docs/presets.md. Every knob a user left as ``None`` is filled from
``config.preset`` (``balanced`` when none is named), sized to the number of training images;
what the user set is kept as is.
"""

from __future__ import annotations

from ..presets import preset_overrides
from .config import ImageTrainConfig


def size_defaults(config: ImageTrainConfig, n_train: int) -> ImageTrainConfig:
    """Return a copy of ``config`` with every ``None`` knob filled from its preset and the data's size."""
    preset = preset_overrides("image", config.preset, n_train)
    steps = config.steps or preset["steps"]
    filled = {
        "steps": steps,
        "rank": config.rank or preset["rank"],
        "lr": config.lr or preset["lr"],
        "lora_dropout": config.lora_dropout if config.lora_dropout is not None else preset["lora_dropout"],
        "augment": config.augment if config.augment is not None else preset["augment"],
        "eval_every": min(config.eval_every or max(1, steps // 8), steps),
        "sample_every": config.sample_every if config.sample_every is not None else max(1, steps // 4),
    }
    return config.model_copy(update=filled)
