"""Defaults sized to the dataset for text runs.

The numbers live in ``trainer.presets`` (shared with image runs, one place for both) and are
explained, with sources, in docs/presets.md. In short: rank 8 (16 for 200+ examples) with
alpha = 2 x rank, a peak rate of 8e-4 (measured: docs/benchmarks.md), dropout and augmentation that taper off as the set
grows (and are off for the kinds of text where the ablation found they do not help), and a few epochs over the packed tokens, between 20 and 500 steps. ``config.preset``
picks ``quick``, ``balanced`` (the default) or ``best``.
"""

from __future__ import annotations

from ..kinds import TEXT
from ..presets import preset_overrides
from .config import TextTrainConfig


def size_defaults(config: TextTrainConfig, *, n_train: int, train_tokens: int,
                  text_kind: str | None = None) -> TextTrainConfig:
    """Return a copy of ``config`` with every ``None`` knob filled from its preset, the dataset's
    size and the kind of text (``text_kind``, which can switch augmentation and dropout off)."""
    tokens_per_step = config.batch_size * config.seq_len * config.grad_accum
    preset = preset_overrides(TEXT.name, config.preset, n_train, train_tokens=train_tokens,
                              tokens_per_step=tokens_per_step, text_kind=text_kind)
    steps = config.steps or preset["steps"]
    rank = config.rank or preset["rank"]
    filled = {
        "steps": steps,
        "rank": rank,
        "alpha": config.alpha or float(TEXT.alpha_per_rank * rank),  # trainer.kinds
        "lr": config.lr or preset["lr"],
        "lora_dropout": config.lora_dropout if config.lora_dropout is not None else preset["lora_dropout"],
        "augment": config.augment if config.augment is not None else preset["augment"],
        "eval_every": config.eval_every or max(1, steps // 8),
    }
    if filled["eval_every"] > steps:
        filled["eval_every"] = steps
    return config.model_copy(update=filled)
