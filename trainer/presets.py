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

from . import kinds
from .errors import ConfigError

Preset = Literal["quick", "balanced", "best"]
PRESETS: tuple[Preset, ...] = ("quick", "balanced", "best")


# What augmentation and LoRA dropout bought, per kind of text (``trainer.text.kinds``), in the
# ablation of bench/data_efficiency.py (docs/benchmarks.md, "Ablation"): held-out perplexity of the
# balanced preset against the same run without either, 3 seeds. A kind listed here gained less
# than 2% from them at 32 examples, so from ``UNREGULARISED_FROM`` training examples ``quick`` and
# ``balanced`` train it without both, and the report card and metrics.json say so. Below that they
# stay on: at 8 examples they did help (2.8% to 4.7% on all four corpora, on every seed; at 16,
# on Shakespeare, only 0.3%). ``best`` keeps them: it trains twice as long, which the ablation
# did not measure. A kind absent from the table (verse: no corpus of it was measured) keeps the
# size-keyed defaults.
UNREGULARISED_FROM = 16
UNREGULARISED_TEXT: dict[str, str] = {
    "code": "augmentation and dropout together changed held-out perplexity on code by +0.1% (3 seeds)",
    "prose": "augmentation and dropout together changed held-out perplexity on technical prose by +0.0% (3 seeds)",
    "dialogue": ("augmentation and dropout together changed held-out perplexity on two dialogue corpora by "
                 "-0.2% and +0.2% (3 seeds each)"),
}


def regularisation_off(text_kind: str | None, preset: Preset | None = None, n_train: int | None = None) -> str | None:
    """Why ``preset`` trains ``n_train`` examples of text of kind ``text_kind`` without
    augmentation and LoRA dropout (the measurement, in a member's words), or ``None`` where the
    preset keeps them. ``n_train`` ``None``: a set of the size the ablation measured."""
    if text_kind not in UNREGULARISED_TEXT or (preset or "balanced") == "best":
        return None
    if n_train is not None and n_train < UNREGULARISED_FROM:
        return None
    return (f"at 32 examples, {UNREGULARISED_TEXT[text_kind]}, under the 2% they must earn "
            f"(docs/benchmarks.md); they stay on below {UNREGULARISED_FROM} training examples, where they helped")


def preset_overrides(kind: str, preset: Preset | None, n_examples: int, **sizing) -> dict:
    """The knobs ``preset`` sets for a ``kind`` dataset of ``n_examples`` training examples.

    Text needs ``train_tokens`` (tokens in the training split) and ``tokens_per_step``
    (batch x sequence length x accumulation) to size steps by epochs; image steps are sized
    per image. ``text_kind`` (``trainer.text.kinds``: what the text is) switches augmentation
    and LoRA dropout off where the ablation found they do not help (``regularisation_off``).
    ``None`` means ``balanced``. Each kind's row is its ``RunKind.presets`` (``text_presets``,
    ``image_presets``). Raises ``ConfigError`` for an unknown kind or preset.
    """
    sized = kinds.get(kind).part("presets")
    preset = preset or "balanced"
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if n_examples < 1:
        raise ConfigError("a preset needs at least one training example")
    return sized(preset, n_examples, **sizing)


def text_presets(preset: Preset, n: int, *, train_tokens: int | None = None, tokens_per_step: int | None = None,
                 text_kind: str | None = None) -> dict:
    """Text runs' row of the table: epochs over the packed tokens, sized by the data's size."""
    if train_tokens is None or tokens_per_step is None:
        raise ConfigError("text presets need train_tokens and tokens_per_step")
    knobs = _text(preset, n, train_tokens, tokens_per_step)
    if regularisation_off(text_kind, preset, n):
        knobs.update(lora_dropout=0.0, augment=0.0)
    return knobs


def image_presets(preset: Preset, n: int, **_text_sizing) -> dict:
    """Image runs' row of the table: steps per training image, as DreamBooth-LoRA recipes count them
    (the token counts that size text runs do not apply)."""
    return _image(preset, n)


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
