"""Image model families, one module each: what the trainer asks of a family of base pipelines.

A family module names the pipeline class(es) it recognises and answers, for a loaded pipeline
of that class: the denoiser and its LoRA targets, prompt encoding (cacheable per caption), latent
preparation, the training objective with its deterministic validation loss, the native size,
the sampling defaults, and the adapter exports with their load-back check.

- ``sd``: Stable Diffusion 1.x/2.x (``StableDiffusionPipeline``), DDPM noise prediction.
- ``sdxl``: SDXL (``StableDiffusionXLPipeline``), SD's objective with two text encoders and
  added time ids.
- ``flux``: FLUX.1 schnell and dev (``FluxPipeline``), flow matching, kohya single-file export.
- ``sd3``: Stable Diffusion 3 / 3.5 (``StableDiffusion3Pipeline``), flow matching, alpha-baked
  diffusers-layout single file.
- ``flow``: the flow-matching objective both share; ``adapters``: LoRA on a transformer
  denoiser, its diffusers file and the load-back check.

This package's registry (``FAMILIES``) is the one place a pipeline class becomes a family:
``family_for`` picks the module for a ``model_index.json`` ``_class_name`` and refuses any other
(video, inpainting, ControlNet, ...) with a ``ModelError`` naming the families loracord trains.
The rest of the code asks the module it got and never compares family names. Nothing here
imports torch: the bot reads it through ``trainer.image.sizes``. ``TRAINED`` names the families the
training loop runs: a family being written can be registered for sizes first, and ``family_for``
refuses it until it is trained.
"""

from __future__ import annotations

from types import ModuleType

from ...errors import ModelError
from . import flux, sd, sd3, sdxl

FAMILIES: tuple[ModuleType, ...] = (sd, sdxl, flux, sd3)
TRAINED: tuple[ModuleType, ...] = FAMILIES  # the ones the training loop runs (a new family may start outside)
DEFAULT = sd  # what a base whose name and configs say nothing is taken for


def trained() -> str:
    """The families loracord trains, for messages: 'SD 1.x/2.x (StableDiffusionPipeline) and SDXL (...)'."""
    names = [f"{part.label()} ({', '.join(part.PIPELINE_CLASSES)})" for part in TRAINED]
    return ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0]


def find(class_name: str) -> ModuleType | None:
    """The family module recognising ``class_name``, or None."""
    return next((part for part in FAMILIES if class_name in part.PIPELINE_CLASSES), None)


def family_for(class_name: str, where: str = "this base") -> ModuleType:
    """The trained family module recognising ``class_name``; ``ModelError`` naming the trained ones otherwise."""
    part = find(class_name)
    if part is None:
        raise ModelError(f"{where} holds a {class_name or 'unknown'} pipeline; loracord trains {trained()} bases.")
    return require_trained(part, where)


def require_trained(part: ModuleType, where: str = "this base") -> ModuleType:
    """``part`` when the training loop runs it; ``ModelError`` naming the trained families otherwise."""
    if part not in TRAINED:
        raise ModelError(f"{where} is a {part.label()} base ({', '.join(part.PIPELINE_CLASSES)}), which loracord "
                         f"does not train yet; it trains {trained()} bases.")
    return part


def named(name: str) -> ModuleType | None:
    """The family module called ``name`` (its ``NAME``, as runs record it), or None."""
    return next((part for part in FAMILIES if part.NAME == name), None)


def guess_from_name(base: str) -> tuple[ModuleType, int, str]:
    """(family, native side, prediction type) that a hub name suggests, else ``DEFAULT``'s."""
    for part in (flux, sd3, sdxl, sd):  # a name saying "xl" is SDXL's even when it says "stable-diffusion-2"
        found = part.guess_from_name(base)
        if found:
            return (part, *found)
    return DEFAULT, DEFAULT.fallback_size("epsilon"), "epsilon"
