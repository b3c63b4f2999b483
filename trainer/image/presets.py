"""Defaults sized to the dataset, the base and the device for image runs.

The dataset-sized numbers live in ``trainer.presets`` (one table for text and image runs) and
are explained, with sources, in docs/presets.md. Every knob a user left as ``None`` is filled
from ``config.preset`` (``balanced`` when none is named), sized to the number of training
images; resolution, batch size and sampling steps are sized to the base pipeline's family and
the device this process trains on (``trainer.image.sizes``). What the user set is kept as is,
but a resolution the base cannot take is refused, saying the allowed range.
"""

from __future__ import annotations

from functools import lru_cache

from ..errors import ConfigError
from ..presets import preset_overrides
from .config import ImageTrainConfig
from .sizes import ImageFamily, guess_family, read_family, resolution_problem, sizes_for


def size_defaults(config: ImageTrainConfig, n_train: int) -> ImageTrainConfig:
    """Return a copy of ``config`` with every ``None`` knob filled from its preset, the data's size,
    the base and the device."""
    preset = preset_overrides("image", config.preset, n_train)
    steps = config.steps or preset["steps"]
    filled = {
        **hardware_sizes(config),
        "steps": steps,
        "rank": config.rank or preset["rank"],
        "lr": config.lr or preset["lr"],
        "lora_dropout": config.lora_dropout if config.lora_dropout is not None else preset["lora_dropout"],
        "augment": config.augment if config.augment is not None else preset["augment"],
        "eval_every": min(config.eval_every or max(1, steps // 8), steps),
        "sample_every": config.sample_every if config.sample_every is not None else max(1, steps // 4),
    }
    return config.model_copy(update=filled)


def hardware_sizes(config: ImageTrainConfig) -> dict:
    """``resolution``, ``batch_size`` and ``sample_steps`` of this run: what the config chose, else
    the defaults of its base's family on this machine's device. Raises ``ConfigError`` when the
    resolution does not suit the base.

    A base that is not a readable pipeline is sized by its name and not checked: loading it fails
    next, with the loader's own message, so sizing never hides that error behind another."""
    family = base_family(config.base)
    sizes = sizes_for(family or guess_family(str(config.base)), device(),
                      config.model_dump(include={"resolution", "batch_size", "sample_steps"}))
    problem = family and resolution_problem(family, sizes["resolution"])
    if problem:
        raise ConfigError(f"invalid training settings: {problem}")
    return sizes


@lru_cache(maxsize=16)
def base_family(base: str) -> ImageFamily | None:
    """The family of ``base`` (resolved as the trainer loads it: local folder or hub snapshot), or
    None when it does not resolve to a pipeline folder."""
    from ..errors import ModelError
    from ..models import resolve_base

    try:
        path = resolve_base(str(base))
    except ModelError:
        return None
    return read_family(path)


def device() -> str:
    """'gpu' when this process trains on a CUDA device, else 'cpu'."""
    import torch

    return "gpu" if torch.cuda.is_available() else "cpu"
