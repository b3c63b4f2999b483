"""Stable Diffusion families: load a pipeline from a resolved folder and encode prompts as it does.

Two families are supported, told apart by ``model_index.json``:

- ``sd``: ``StableDiffusionPipeline`` (1.x and 2.x; epsilon or v-prediction, read from the
  scheduler config), one CLIP text encoder, its last hidden state as conditioning.
- ``sdxl``: ``StableDiffusionXLPipeline``, two text encoders whose penultimate hidden states
  are concatenated, plus the second encoder's pooled embedding and six "added time ids"
  (original size, crop top-left, target size) as extra conditioning.

Weights load from safetensors only; no custom pipeline code is ever run.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ModelError
from ..models import resolve_base

FAMILIES = {"StableDiffusionPipeline": "sd", "StableDiffusionXLPipeline": "sdxl"}


@dataclass
class LoadedPipeline:
    pipe: Any
    family: str  # "sd" or "sdxl"
    path: Path

    @property
    def text_encoders(self) -> list:
        return [e for e in (self.pipe.text_encoder, getattr(self.pipe, "text_encoder_2", None)) if e is not None]

    @property
    def prediction_type(self) -> str:
        return self.pipe.scheduler.config.get("prediction_type", "epsilon")


def pipeline_family(path: Path) -> str:
    """'sd' or 'sdxl' from the folder's model_index.json; ``ModelError`` for anything else."""
    index = path / "model_index.json"
    if not index.exists():
        raise ModelError(f"{path} has no model_index.json: image training needs a diffusers pipeline folder "
                         "(for example 'stable-diffusion-v1-5/stable-diffusion-v1-5').")
    name = json.loads(index.read_text()).get("_class_name", "")
    if name not in FAMILIES:
        raise ModelError(f"{path} holds a {name or 'unknown'} pipeline; loracord trains Stable Diffusion 1.x/2.x "
                         "(StableDiffusionPipeline) and SDXL (StableDiffusionXLPipeline) bases.")
    return FAMILIES[name]


def load_pipeline(base: str | Path, dtype=None) -> LoadedPipeline:
    """Resolve ``base`` (hub id or local folder) and load its pipeline, without a safety checker."""
    import diffusers

    path = resolve_base(str(base))
    family = pipeline_family(path)
    cls = diffusers.StableDiffusionXLPipeline if family == "sdxl" else diffusers.StableDiffusionPipeline
    extra = {} if family == "sdxl" else {"safety_checker": None, "feature_extractor": None,
                                         "requires_safety_checker": False}
    try:
        with _quiet_loading():
            pipe = cls.from_pretrained(path, use_safetensors=True, torch_dtype=dtype, **extra)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"Could not load a {cls.__name__} from {path}: {exc}") from exc
    pipe.set_progress_bar_config(disable=True)
    return LoadedPipeline(pipe, family, path)


@contextlib.contextmanager
def _quiet_loading():
    """No per-component loading bars from diffusers and transformers (the CLI draws its own progress)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    restore = [m.enable_progress_bar for m in (diffusers_logging, transformers_logging)
               if m.is_progress_bar_enabled()]
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        for enable in restore:
            enable()


def encode_prompts(loaded: LoadedPipeline, prompts: list[str], device=None):
    """Conditioning for ``prompts`` exactly as the pipeline computes it at inference.

    Returns ``(prompt_embeds, pooled)``; ``pooled`` is ``None`` for SD 1.x/2.x. Gradients flow
    when the caller has not disabled them (text-encoder LoRA).
    """
    import torch

    pipe = loaded.pipe
    device = device or pipe.text_encoder.device
    if loaded.family == "sd":
        ids = _tokenize(pipe.tokenizer, prompts).to(device)
        return pipe.text_encoder(ids)[0], None
    hidden, pooled = [], None
    for tokenizer, encoder in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
        out = encoder(_tokenize(tokenizer, prompts).to(encoder.device), output_hidden_states=True)
        pooled = out[0]  # the last encoder's (text_encoder_2) projected pooled output is what SDXL uses
        hidden.append(out.hidden_states[-2])
    return torch.cat(hidden, dim=-1).to(device), pooled.to(device)


def _tokenize(tokenizer, prompts: list[str]):
    return tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def add_time_ids(original_sizes, crops_top_left, resolution: int):
    """SDXL's micro-conditioning per image: (orig_h, orig_w, crop_top, crop_left, target_h, target_w)."""
    import torch

    rows = [list(o) + list(c) + [resolution, resolution] for o, c in zip(original_sizes, crops_top_left)]
    return torch.tensor(rows, dtype=torch.float32)
