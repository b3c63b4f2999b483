"""Stable Diffusion 3 / 3.5 as an image family: everything the trainer asks of a ``StableDiffusion3Pipeline``.

- Denoiser: ``pipe.transformer`` (``SD3Transformer2DModel``, MMDiT joint blocks; 3.5 adds RMS
  q/k norm and, in medium, a second attention in the first blocks). LoRA targets: the defaults of
  diffusers' ``train_dreambooth_lora_sd3.py``, the joint attention of both streams.
- Prompts: both CLIPs' penultimate hidden states side by side, padded to T5's width and followed
  by T5's sequence; pooled: both CLIPs' projections side by side (``pipe.encode_prompt``, exactly
  as at inference). Cached per caption; ``free_after_caching`` frees T5 afterwards.
- Latents: 16 channels, ``(z - shift_factor) * scaling_factor``; the transformer patchifies
  2x2 itself, so sides must be multiples of 16 px.
- Objective: flow matching (``flow.py``) with the scheduler's ``shift`` (3.0 in SD3/3.5);
  timesteps from a logit-normal(0, 1) by default, the SD3 example's ``--weighting_scheme``;
  loss weighting none by default, or ``"sigma_sqrt"``/``"cosmap"``.
- Native size: the transformer's ``sample_size`` times the VAE's downscale (128 x 8 = 1024).
- Single file: the diffusers layout with alpha folded into the weights (see ``save_single_file``).

Nothing here imports torch or diffusers at module level.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import trainer.image.families.flow as flow  # not "from . import": the registry in __init__ imports this module
from trainer.image.families.flow import (PRECISION_PROBE, PREDICTION_TYPE, TEXT_ENCODER_LORA, denoiser_kwargs,  # noqa: F401
                                         image_conditioning)
from trainer.image.families.flow import draw_sigmas as draw_timesteps  # noqa: F401
from trainer.image.families.flow import val_sigmas as val_timesteps  # noqa: F401
from .adapters import drop_module, export_files, lora_factors, read_json, vae_scale
from ..export import single_file_skipped

NAME = "sd3"
LOAD_KWARGS: dict = {}  # nothing beyond safetensors (adapters.open_pipeline)
PIPELINE_CLASSES = ("StableDiffusion3Pipeline",)
DENOISER = "transformer"
LORA_TARGETS = ("attn.add_k_proj", "attn.add_q_proj", "attn.add_v_proj", "attn.to_add_out",
                "attn.to_k", "attn.to_out.0", "attn.to_q", "attn.to_v")
LATENT_CHANNELS = 16
SIDE_MULTIPLE = 16
T5_TOKENS = 256  # StableDiffusion3Pipeline's max_sequence_length default
CAPTION_TOKENS = T5_TOKENS  # what T5 reads of a caption (CLIP's pooled 77 only summarise)
SINGLE_FILE = "lora_comfyui.safetensors"
PRESET: dict = {}  # the preset table's numbers (trainer.presets); no SD 3.5 source asks for others
GPU_BATCH = 1  # images a step on a GPU at the native side
STEP_NATIVE = 1024
STEP_S = {"gpu": 1.0, "cpu": 450.0}  # rough guesses (2.5B-8B transformer) at STEP_NATIVE px, one image; not measured
HUB_TAG = "sd3"


# --------------------------------------------------------------------------------------------
# what a folder is, without torch


def label(prediction_type: str = "flow") -> str:
    return "SD 3.5"


def guess_from_name(name: str) -> tuple[int, str] | None:
    """(native side, prediction type) when a hub name says SD 3 / 3.5."""
    return (1024, "flow") if "stable-diffusion-3" in name.lower() else None


def native_size(folder: Path) -> int:
    """``transformer.config.sample_size`` times the VAE's downscale (the pipeline's default side)."""
    sample_size = read_json(Path(folder) / "transformer" / "config.json").get("sample_size") or 128
    return int(sample_size) * vae_scale(folder)


def sampling_defaults(folder: Path) -> dict:
    """Denoising steps, classifier-free guidance and T5 length for samples.

    28 steps and 256 T5 tokens are ``StableDiffusion3Pipeline``'s defaults (and the SD 3.5 Large
    card's steps). Guidance 4.5 is the SD 3.5 Medium card's; the Large card uses 3.5 and the
    pipeline's default of 7.0 was chosen for SD3 Medium.
    """
    return {"steps": 28, "guidance_scale": 4.5, "max_sequence_length": T5_TOKENS}


# --------------------------------------------------------------------------------------------
# loading, LoRA, prompts, latents


def max_sequence_length(pipe) -> int:
    """T5 tokens per prompt: the pipeline's 256, or the T5 tokenizer's own limit when smaller."""
    return min(T5_TOKENS, pipe.tokenizer_3.model_max_length) if pipe.tokenizer_3 is not None else T5_TOKENS


def encode_prompts(pipe, prompts: list[str], device=None, max_length: int | None = None) -> flow.Conditioning:
    """CLIP-L + CLIP-G + T5 sequence and the two CLIPs' pooled projections, via ``pipe.encode_prompt``."""
    import torch

    if pipe.text_encoder_3 is None:
        # The pipeline would silently put zeros where T5's sequence goes.
        raise ValueError("The T5 encoder was dropped after caching; use the cached embeddings.")
    with torch.no_grad():
        prompt, _, pooled, _ = pipe.encode_prompt(prompt=prompts, prompt_2=None, prompt_3=None,
                                                  device=device or pipe.transformer.device,
                                                  do_classifier_free_guidance=False,
                                                  max_sequence_length=max_length or max_sequence_length(pipe))
    return flow.Conditioning(prompt, pooled)


def free_after_caching(pipe) -> None:
    """Free the T5 encoder and its tokenizer once the training loop has cached its captions and sample prompts."""
    drop_module(pipe, "text_encoder_3", "tokenizer_3")


# --------------------------------------------------------------------------------------------
# the objective


def objective(pipe, *, timestep_sampling: str = "logit_normal", loss_weighting: str = "none",
              **density) -> flow.FlowObjective:
    """The flow-matching objective for this pipeline (the scheduler's shift applies)."""
    return flow.flow_objective(pipe.scheduler.config, timestep_sampling=timestep_sampling,
                               loss_weighting=loss_weighting, **density)


def predict(transformer, noisy, sigmas, cond: flow.Conditioning, objective: flow.FlowObjective):
    """The transformer's velocity for ``noisy`` [B, 16, H, W] latents at ``sigmas`` (timestep = sigma x 1000)."""
    dtype = noisy.dtype
    return transformer(hidden_states=noisy, timestep=sigmas * objective.num_train_timesteps,
                       encoder_hidden_states=cond.prompt.to(dtype), pooled_projections=cond.pooled.to(dtype),
                       return_dict=False)[0]


training_scheduler = objective  # what the training loop draws timesteps from: this family's defaults
noise_loss = functools.partial(flow.noise_loss, predict)  # the training loop's loss of a cached batch


# --------------------------------------------------------------------------------------------
# sampling


def sample(pipe, prompt: str, *, seed: int, steps: int, guidance_scale: float, size,
           cache: dict[str, flow.Conditioning] | None = None):
    """One image for ``prompt`` through the pipeline (its own scheduler), leaving torch's RNG untouched.

    With ``cache`` the prompt's cached embeddings are used (required once T5 is dropped); with
    guidance above 1 the cache must also hold "" for the negative prompt.
    """
    if cache is None and pipe.text_encoder_3 is None:
        raise ValueError("The T5 encoder was dropped after caching; pass the cached embeddings.")
    kwargs: dict[str, Any] = {"prompt": prompt, "max_sequence_length": max_sequence_length(pipe)}
    if cache is not None:
        kwargs = _cached_kwargs(pipe, prompt, cache, guidance_scale > 1)
    return flow.generate(pipe, kwargs, seed=seed, steps=steps, guidance_scale=guidance_scale, size=size)


def _cached_kwargs(pipe, prompt: str, cache: dict, guided: bool) -> dict:
    needed = [prompt, ""] if guided else [prompt]
    missing = [p for p in needed if p not in cache]
    if missing:
        raise ValueError(f"No cached embeddings for {missing[0]!r} (sampling with guidance also needs '').")
    cond = flow.Conditioning(*cache[prompt]).to(pipe.transformer.device)
    kwargs = {"prompt_embeds": cond.prompt[None], "pooled_prompt_embeds": cond.pooled[None]}
    if guided:
        neg = flow.Conditioning(*cache[""]).to(pipe.transformer.device)
        kwargs |= {"negative_prompt_embeds": neg.prompt[None], "negative_pooled_prompt_embeds": neg.pooled[None]}
    return kwargs


# --------------------------------------------------------------------------------------------
# exports


def baked_state_dict(factors: dict[str, tuple]) -> dict[str, Any]:
    """``transformer.<module>.lora_A/B.weight`` with each layer's ``alpha / rank`` folded into ``lora_B``."""
    out = {}
    for name, (a, b, scale) in factors.items():
        out[f"transformer.{name}.lora_A.weight"] = a.float().contiguous()
        out[f"transformer.{name}.lora_B.weight"] = (b.float() * scale).contiguous()
    return out


def save_single_file(pipe, folder: Path) -> Path:
    """Write ``folder/lora_comfyui.safetensors``: diffusers module names, alpha folded in, no metadata.

    Why this layout: ``SD3LoraLoaderMixin.lora_state_dict`` converts nothing. It reads only
    ``transformer.<diffusers module>`` keys; kohya ``lora_unet_...`` or ComfyUI
    ``diffusion_model....`` keys are filtered out and load nothing, and ``.alpha`` keys are
    refused ("all LoRA param names must contain 'lora'"). ComfyUI maps these same
    ``transformer.<module>.lora_A/lora_B`` names for SD3 (its "regular diffusers sd3 lora
    format") but ignores the peft metadata that carries alpha in the diffusers file. With
    ``alpha / rank`` folded into ``lora_B`` both read the file at scale 1 with the trained update.
    """
    from safetensors.torch import save_file

    path = Path(folder) / SINGLE_FILE
    save_file(baked_state_dict(lora_factors(pipe.transformer)), str(path))
    return path


def export_adapter(trained, fresh, folder: Path, *, rank: int, alpha: float) -> dict[str, Path]:
    """The training loop's export: the diffusers file and the alpha-baked single file (not for a
    DoRA adapter: ``single_file_skipped``), each proven to load into ``fresh``."""
    if single_file_skipped(trained.denoiser):
        return export_files(trained.pipe, fresh.pipe, folder)
    return export(trained.pipe, fresh.pipe, folder)


def export(pipe, fresh, folder: Path) -> dict[str, Path]:
    """Write the diffusers file and the single file into ``folder`` and prove both load into ``fresh``.

    Raises ``TrainingError`` when a file does not load back with the same updates.
    """
    return export_files(pipe, fresh, folder, comfyui=save_single_file)
