"""Defaults sized to the dataset for text runs.

Why these numbers (see docs/presets.md for sources):
- LoRA rank 8 with alpha = 2 x rank is the common starting point (Hu et al. 2021 found ranks
  as low as 4-8 enough for attention projections; alpha/rank = 2 is peft's and Unsloth's
  recommended scaling). Larger sets (200+ examples) get rank 16: more to learn.
- A peak learning rate of 2e-4 with short warm-up is the standard LoRA rate for models of
  this size (QLoRA, Dettmers et al. 2023, used 2e-4 for models up to 13B).
- Few examples overfit fast: dropout 0.1 and augmentation 0.3 below 50 examples, tapering
  off as the set grows; early stopping on validation loss is the safety net.
- Steps: a few epochs over the packed tokens (more epochs for tiny sets, which need more
  passes to move the model at all), between 20 and 500 steps so a run stays short on a CPU.
"""

from __future__ import annotations

import math

from .config import TextTrainConfig


def size_defaults(config: TextTrainConfig, *, n_train: int, train_tokens: int) -> TextTrainConfig:
    """Return a copy of ``config`` with every ``None`` knob filled from the dataset's size."""
    tokens_per_step = config.batch_size * config.seq_len * config.grad_accum
    steps_per_epoch = max(1, math.ceil(train_tokens / tokens_per_step))
    epochs = 8 if n_train < 30 else 5 if n_train < 100 else 3
    steps = config.steps or min(500, max(20, epochs * steps_per_epoch))
    rank = config.rank or (8 if n_train < 200 else 16)
    filled = {
        "steps": steps,
        "rank": rank,
        "alpha": config.alpha or float(2 * rank),
        "lr": config.lr or 2e-4,
        "lora_dropout": config.lora_dropout if config.lora_dropout is not None else (0.1 if n_train < 50 else 0.05),
        "augment": config.augment if config.augment is not None else (0.3 if n_train < 50 else 0.15 if n_train < 200 else 0.0),
        "eval_every": config.eval_every or max(1, steps // 8),
    }
    if filled["eval_every"] > steps:
        filled["eval_every"] = steps
    return config.model_copy(update=filled)
