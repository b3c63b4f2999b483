"""Presets: settings sized to a dataset, for text and image runs alike.

``preset_overrides(kind, preset, n_examples, ...)`` returns the knobs a preset sets for a
dataset of that size: ``steps``, ``rank``, ``alpha``, ``lr``, ``lora_dropout`` and ``augment``.
``balanced`` is what a run uses when nobody names a preset (both trainers' ``size_defaults``,
in ``trainer.text.presets`` and ``trainer.image.presets``, call this function to fill the knobs
a user left empty, whether the run came from the bot or the CLI); ``quick`` trades
quality for a run a few times shorter, ``best`` spends more steps and capacity for the last
bit of validation loss. The reasoning and sources behind every number are in
``docs/presets.md``; a change here belongs there too.
"""

from __future__ import annotations

import math
from typing import Literal

from .errors import ConfigError

Preset = Literal["quick", "balanced", "best"]
Kind = Literal["text", "image"]
PRESETS: tuple[Preset, ...] = ("quick", "balanced", "best")


def preset_overrides(kind: Kind, preset: Preset | None, n_examples: int, *, train_tokens: int | None = None,
                     tokens_per_step: int | None = None) -> dict:
    """The knobs ``preset`` sets for a ``kind`` dataset of ``n_examples`` training examples.

    Text needs ``train_tokens`` (tokens in the training split) and ``tokens_per_step``
    (batch x sequence length x accumulation) to size steps by epochs; image steps are sized
    per image. ``None`` means ``balanced``. Raises ``ConfigError`` for an unknown kind or preset.
    """
    preset = preset or "balanced"
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if n_examples < 1:
        raise ConfigError("a preset needs at least one training example")
    if kind == "text":
        if train_tokens is None or tokens_per_step is None:
            raise ConfigError("text presets need train_tokens and tokens_per_step")
        return _text(preset, n_examples, train_tokens, tokens_per_step)
    if kind == "image":
        return _image(preset, n_examples)
    raise ConfigError(f"unknown kind {kind!r}; choose 'text' or 'image'")


def _text(preset: Preset, n: int, train_tokens: int, tokens_per_step: int) -> dict:
    # Epochs over the packed tokens: tiny sets need more passes to move the model at all.
    steps_per_epoch = max(1, math.ceil(train_tokens / tokens_per_step))
    epochs = 8 if n < 30 else 5 if n < 100 else 3
    small, mid = n < 50, n < 200
    if preset == "quick":
        # Half the epochs at a slightly higher rate; no augmentation (it pays off over many passes).
        steps = min(200, max(10, math.ceil(epochs / 2) * steps_per_epoch))
        rank, lr = 8, 1e-3
        dropout, augment = (0.1 if small else 0.05), 0.0
    elif preset == "balanced":
        steps = min(500, max(20, epochs * steps_per_epoch))
        rank, lr = (8 if mid else 16), 8e-4
        dropout = 0.1 if small else 0.05
        augment = 0.3 if small else 0.15 if mid else 0.0
    else:  # best: twice the passes, twice the rank, a lower rate; more regularisation against overfit
        steps = min(1500, max(40, 2 * epochs * steps_per_epoch))
        rank, lr = (16 if mid else 32), 4e-4
        dropout = 0.15 if small else 0.1
        augment = 0.4 if small else 0.25 if mid else 0.1
    return {"steps": steps, "rank": rank, "alpha": float(2 * rank), "lr": lr, "lora_dropout": dropout,
            "augment": augment}


def _image(preset: Preset, n: int) -> dict:
    # Steps per training image, as DreamBooth-LoRA recipes count them; alpha = rank (scale 1).
    if preset == "quick":
        steps, rank, lr, dropout, augment = min(600, max(100, 50 * n)), 4, 2e-4, 0.0, 0.3
    elif preset == "balanced":
        steps, rank, lr, dropout, augment = min(1500, max(200, 100 * n)), 8, 1e-4, 0.0, 0.5
    else:
        steps, rank, lr, dropout, augment = min(3000, max(400, 150 * n)), 16, 1e-4, 0.1, 0.6
    return {"steps": steps, "rank": rank, "alpha": float(rank), "lr": lr, "lora_dropout": dropout,
            "augment": augment}
