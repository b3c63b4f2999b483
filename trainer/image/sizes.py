"""How big an image run is: resolution, batch and sampling steps, per base family and per device.

A base pipeline was trained at one side (its *native* resolution: SD 1.x 512, SD 2.x 768 for
its v-prediction bases, SDXL 1024), read from the pipeline's own configs (the UNet's
``sample_size`` times the VAE's downscale) so that any diffusers folder, tiny test pipelines
included, gets its own numbers. A run that nobody sized trains at:

- on a GPU: the native side, 2 images a step (1 for SDXL, FLUX.1 and SD 3.5), the family's
  denoising steps per sample (25 for the UNet families, 4 for FLUX.1 schnell, 28 for dev and SD 3.5);
- on a CPU: a small side (half the native one, at most 256 px), 1 image a step, at most 8
  denoising steps, so that a step takes seconds rather than minutes.

Somebody may choose any side from a quarter to twice the native one (a multiple of the family's
``SIDE_MULTIPLE``: 8, 16 for FLUX.1 and SD 3.5); ``resolution_problem`` says the allowed range otherwise. ``resolve_sizes`` is the one resolver of
a run's sizes: the trainer calls it once per run with the family of the base it loads and its own
device (``trainer.image.presets.run_sizes``); the bot, which never imports torch, calls it with
the family the base's name or configs say and the device it expects its jobs to run on
(``bot.config.BotSettings.worker_device``), to check uploads and say what a run will train at.

Nothing here imports torch or diffusers: the bot reads the same table.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Literal

from . import families
from .families.adapters import read_json

Device = Literal["cpu", "gpu"]
SIZE_KEYS = ("resolution", "batch_size", "sample_steps")  # what somebody may choose; the table sizes the rest
GPU_SAMPLE_STEPS, CPU_SAMPLE_STEPS = 25, 8
CPU_MAX_RESOLUTION = 256
DEFAULT_GUIDANCE = 7.0  # a base's configs unread (sized by its name): the UNet families' guidance


@dataclass(frozen=True)
class ImageFamily:
    """What a base pipeline is, as far as sizes go."""

    part: ModuleType  # its family module in trainer.image.families
    native: int  # the side it was trained at, in pixels
    prediction_type: str = "epsilon"
    sampling: dict = field(default_factory=dict)  # the family's sampling defaults for this base (steps, guidance_scale)

    @property
    def family(self) -> str:
        """The family's name, as runs record it."""
        return self.part.NAME

    @property
    def label(self) -> str:
        return self.part.label(self.prediction_type)

    @property
    def guidance(self) -> float:
        """The guidance scale samples of this base draw with by default."""
        return self.sampling.get("guidance_scale", DEFAULT_GUIDANCE)

    @property
    def min_resolution(self) -> int:
        m = self.part.SIDE_MULTIPLE
        return max(m, self.native // 4 // m * m)

    @property
    def max_resolution(self) -> int:
        return min(2048, self.native * 2)

    def defaults(self, device: Device) -> dict:
        """Resolution, batch size and sampling steps of a run nobody sized, on ``device``."""
        steps = self.sampling.get("steps", GPU_SAMPLE_STEPS)
        if device == "gpu":
            return {"resolution": self.native, "batch_size": self.part.GPU_BATCH, "sample_steps": steps}
        m = self.part.SIDE_MULTIPLE
        side = max(self.min_resolution, min(CPU_MAX_RESOLUTION, self.native // 2) // m * m)
        return {"resolution": side, "batch_size": 1, "sample_steps": min(CPU_SAMPLE_STEPS, steps)}


def resolution_problem(family: ImageFamily, resolution: int) -> str | None:
    """Why ``resolution`` does not suit ``family`` (with the allowed range), or None."""
    low, high = family.min_resolution, family.max_resolution
    if resolution % family.part.SIDE_MULTIPLE or not low <= resolution <= high:
        return (f"resolution {resolution} px does not suit this {family.label} base (trained at {family.native} px): "
                f"choose a multiple of {family.part.SIDE_MULTIPLE} from {low} to {high} px")
    return None


def sizes_for(family: ImageFamily, device: Device, chosen: dict) -> dict:
    """``resolution``, ``batch_size`` and ``sample_steps``: what is in ``chosen`` (not None), else the
    family's default on ``device``."""
    defaults = family.defaults(device)
    return {key: chosen.get(key) if chosen.get(key) is not None else value for key, value in defaults.items()}


@dataclass(frozen=True)
class RunSizes:
    """What an image run trains at (``resolve_sizes``): the sizes somebody chose, the rest the
    family's defaults on the device."""

    family: ImageFamily
    device: Device
    resolution: int
    batch_size: int
    sample_steps: int
    chosen: dict  # the sizes somebody chose, in the order they were given; the others are the device's

    @property
    def problem(self) -> str | None:
        """Why the resolution does not suit the base's family (with the allowed range), or None."""
        return resolution_problem(self.family, self.resolution)

    @property
    def step_s(self) -> float:
        """A rough guess of one training step's seconds at these sizes (``rough_step_seconds``)."""
        return rough_step_seconds(self.family, self.device, self.resolution, self.batch_size)

    def settings(self) -> dict:
        """The three sizes as training settings (``ImageTrainConfig`` fields)."""
        return {key: getattr(self, key) for key in SIZE_KEYS}


def resolve_sizes(family: ImageFamily, device: Device, chosen: dict) -> RunSizes:
    """The sizes of a run of a ``family`` base on ``device``: the ones in ``chosen`` (other keys and
    None values are ignored), else the family's defaults there. The caller decides what a
    ``problem`` means: the bot refuses the run, the trainer raises ``ConfigError``."""
    chosen = {key: value for key, value in chosen.items() if key in SIZE_KEYS and value is not None}
    return RunSizes(family, device, **sizes_for(family, device, chosen), chosen=chosen)


def rough_step_seconds(family: ImageFamily, device: Device, resolution: int, batch_size: int) -> float:
    """A rough guess of one training step's seconds (real pipelines; tiny test ones are faster): the
    family's seconds at its reference side with one image on ``device``, scaled by pixels and batch."""
    part = family.part
    return part.STEP_S[device] * (resolution / part.STEP_NATIVE) ** 2 * batch_size


def describe_step_time(seconds: float) -> str:
    """'about 2 s', 'about 0.3 s', 'about 4 min'."""
    if seconds >= 90:
        return f"about {seconds / 60:.0f} min"
    return f"about {seconds:.0f} s" if seconds >= 2 else f"about {seconds:.1g} s"


def read_family(folder: str | Path) -> ImageFamily | None:
    """The family of a diffusers pipeline folder from its JSON configs; None when it is not one."""
    folder = Path(folder)
    part = families.find(read_json(folder / "model_index.json").get("_class_name", ""))
    if part is None:
        return None
    scheduler = read_json(folder / "scheduler" / "scheduler_config.json")
    prediction_type = scheduler.get("prediction_type") or "epsilon"
    return ImageFamily(part, part.native_size(folder), prediction_type, part.sampling_defaults(folder))


def guess_family(base: str) -> ImageFamily:
    """The family of ``base`` without fetching anything: its local folder or the hub cache when
    they hold its configs, else its name (``families.guess_from_name``)."""
    if os.path.isdir(base):
        found = read_family(base)
        if found:
            return found
    cached = _cached_configs(base)
    if cached:
        return cached
    return ImageFamily(*families.guess_from_name(base))


def _cached_configs(repo_id: str) -> ImageFamily | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - a dependency of the trainer stack
        return None
    try:
        index = try_to_load_from_cache(repo_id, "model_index.json")
    except Exception:  # noqa: BLE001 - not a hub id: nothing cached to read
        return None
    if not isinstance(index, str):
        return None
    return read_family(Path(index).parent)



# --------------------------------------------------------------------------------------------
# aspect-ratio buckets

MAX_ASPECT = 2.0  # a bucket's long side is at most twice its short one (kohya's and SimpleTuner's usual bound)


def bucket_step(resolution: int, multiple: int) -> int:
    """How far apart bucket sides are: 64 px at 512 px and up (kohya's ``bucket_reso_steps``),
    an eighth of the side below that, never finer than the family's side multiple."""
    return max(multiple, min(64, resolution // 8) // multiple * multiple)


def bucket_sizes(resolution: int, multiple: int, max_aspect: float = MAX_ASPECT) -> list[tuple[int, int]]:
    """Every (width, height) of about ``resolution`` squared pixels (never more), sides a multiple of
    ``bucket_step``, from 1:``max_aspect`` to ``max_aspect``:1; the square first."""
    step = bucket_step(resolution, multiple)
    area, sizes = resolution * resolution, {(resolution, resolution)}
    for width in range(step, int(resolution * max_aspect) + 1, step):
        height = area // width // step * step
        if height >= step and max(width, height) <= max_aspect * min(width, height):
            sizes |= {(width, height), (height, width)}  # a portrait for every landscape
    return sorted(sizes, key=lambda s: (s != (resolution, resolution), s[0] / s[1]))


def bucket_for(width: int, height: int, resolution: int, multiple: int, square: bool = False) -> tuple[int, int]:
    """The bucket (width, height) an image of ``width`` x ``height`` trains at: the one whose aspect
    is closest to the image's (the larger on a tie), or the square with ``square``."""
    import math

    if square:
        return resolution, resolution
    aspect = math.log(width / height)
    return min(bucket_sizes(resolution, multiple),
               key=lambda s: (round(abs(math.log(s[0] / s[1]) - aspect), 9), -s[0] * s[1]))


def aspect_size(aspect: str | None, resolution: int, multiple: int) -> tuple[int, int]:
    """(width, height) of samples drawn at ``aspect`` ("3:4", "16:9"; None or "1:1": the square)."""
    if not aspect:
        return resolution, resolution
    w, h = parse_aspect(aspect)
    return bucket_for(w, h, resolution, multiple)


def parse_aspect(aspect: str) -> tuple[int, int]:
    """'3:4' -> (3, 4); ``ValueError`` saying the form for anything else."""
    try:
        w, h = (int(part) for part in aspect.strip().split(":"))
    except ValueError:
        raise ValueError(f"aspect {aspect!r} is not W:H (for example 3:4 or 16:9)") from None
    if w <= 0 or h <= 0 or max(w, h) > MAX_ASPECT * min(w, h) + 1e-9:
        raise ValueError(f"aspect {aspect!r} must be positive, at most {MAX_ASPECT:g}:1 either way")
    return w, h
