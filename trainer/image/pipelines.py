"""Load a base pipeline from a resolved folder as its family (``trainer.image.families``) says.

The folder's ``model_index.json`` names the pipeline class; the family module recognising it
gives the class's load options, the denoiser, prompt encoding and the objective. Weights load
from safetensors only; no custom pipeline code is ever run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from ..errors import ModelError
from ..models import resolve_base
from . import families
from .families.adapters import open_pipeline


@dataclass
class LoadedPipeline:
    pipe: Any
    part: ModuleType  # its family module in trainer.image.families
    path: Path
    dtype: Any = None  # the torch dtype it was loaded in (None: as saved, float32 for the tiny and most bases)
    quantize: str = "none"  # its denoiser's quantisation (trainer.quantize); the other components never are

    @property
    def family(self) -> str:
        """The family's name, as runs record it."""
        return self.part.NAME

    @property
    def denoiser(self):
        """The model LoRA trains (the pipeline component the family names, e.g. its UNet)."""
        return getattr(self.pipe, self.part.DENOISER)

    @property
    def text_encoders(self) -> list:
        """The pipeline's text encoders still loaded (one to three; a flow family's T5 goes once cached)."""
        names = ("text_encoder", "text_encoder_2", "text_encoder_3")
        return [e for e in (getattr(self.pipe, name, None) for name in names) if e is not None]

    @property
    def prediction_type(self) -> str:
        """'epsilon' or 'v_prediction' as the scheduler says, or the family's own ('flow')."""
        return self.part.PREDICTION_TYPE or self.pipe.scheduler.config.get("prediction_type", "epsilon")


def pipeline_family(path: Path) -> ModuleType:
    """The family module of the folder's model_index.json class; ``ModelError`` for any other class."""
    index = path / "model_index.json"
    if not index.exists():
        raise ModelError(f"{path} has no model_index.json: image training needs a diffusers pipeline folder "
                         "(for example 'stable-diffusion-v1-5/stable-diffusion-v1-5').")
    return families.family_for(json.loads(index.read_text()).get("_class_name", ""), str(path))


def load_pipeline(base: str | Path, dtype=None, quantize: str = "none") -> LoadedPipeline:
    """Resolve ``base`` (hub id or local folder) and load its pipeline, without a safety checker;
    ``quantize`` ('8bit', '4bit'; ``trainer.quantize``) loads its denoiser quantised."""
    from ..quantize import image_config, keep_training_layout

    path = resolve_base(str(base))
    part = pipeline_family(path)
    if quantize != "none":
        import torch

        dtype = dtype or torch.float32  # diffusers' torchao quantizer would otherwise pick bf16
    config = image_config(quantize, part.DENOISER, dtype)
    pipe = open_pipeline(part, path, dtype, config)
    if quantize == "4bit":
        keep_training_layout(getattr(pipe, part.DENOISER))  # the run trains it between samples and validations
    return LoadedPipeline(pipe, part, path, dtype, quantize)


def encode_prompts(loaded: LoadedPipeline, prompts: list[str], device=None):
    """Conditioning for ``prompts`` exactly as the pipeline computes it at inference: ``(prompt_embeds,
    pooled)``, ``pooled`` None where the family has none. Gradients flow when the caller has not
    disabled them (text-encoder LoRA)."""
    return loaded.part.encode_prompts(loaded.pipe, prompts, device)
