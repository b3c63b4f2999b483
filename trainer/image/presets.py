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

from .. import kinds
from ..errors import ConfigError
from ..presets import preset_overrides
from .config import ImageTrainConfig
from .sizes import SIZE_KEYS, ImageFamily, RunSizes, guess_family, read_family, resolve_sizes


def size_defaults(config: ImageTrainConfig, n_train: int, sizes: RunSizes | None = None) -> ImageTrainConfig:
    """Return a copy of ``config`` with every ``None`` knob filled from its preset, the data's size,
    the base and the device. ``sizes``: the run's sizes when it resolved them already (``run_sizes``,
    once per run), else they are resolved here."""
    sizes = sizes or run_sizes(config)
    family = sizes.family
    preset = preset_overrides(kinds.IMAGE.name, config.preset, n_train) | family.part.PRESET
    steps = config.steps or preset["steps"]
    filled = {
        **sizes.settings(),
        "steps": steps,
        "rank": config.rank or preset["rank"],
        "lr": config.lr or preset["lr"],
        "lora_dropout": config.lora_dropout if config.lora_dropout is not None else preset["lora_dropout"],
        "augment": config.augment if config.augment is not None else preset["augment"],
        "eval_every": min(config.eval_every or max(1, steps // 8), steps),
        "guidance_scale": config.guidance_scale if config.guidance_scale is not None else family.guidance,
        "sample_every": config.sample_every if config.sample_every is not None else max(1, steps // 4),
    }
    return config.model_copy(update=filled)


def run_sizes(config: ImageTrainConfig) -> RunSizes:
    """The sizes this run trains at on this machine: ``trainer.image.sizes.resolve_sizes`` (the one
    resolver, which the bot reads too) with the family of the base as it loads and this process's
    device. Raises ``ConfigError`` when the resolution does not suit the base.

    A base that is not a readable pipeline is sized by its name and not checked: loading it fails
    next, with the loader's own message, so sizing never hides that error behind another."""
    family = base_family(config.base)
    sizes = resolve_sizes(family or guess_family(str(config.base)), device(), config.model_dump(include=set(SIZE_KEYS)))
    if family and sizes.problem:
        raise ConfigError(f"invalid training settings: {sizes.problem}")
    return sizes


@lru_cache(maxsize=16)
def base_family(base: str) -> ImageFamily | None:
    """The family of ``base`` (resolved as the trainer loads it: local folder or hub snapshot), or
    None when it does not resolve to a pipeline folder. ``ModelError`` for a family the loop does
    not train yet, before its sizes could say anything else."""
    from ..errors import ModelError
    from ..models import resolve_base
    from .families import require_trained

    try:
        path = resolve_base(str(base))
    except ModelError:
        return None
    family = read_family(path)
    if family:
        require_trained(family.part, str(path))
    return family


def device() -> str:
    """'gpu' when this process trains on a CUDA device, else 'cpu'."""
    import torch

    return "gpu" if torch.cuda.is_available() else "cpu"
