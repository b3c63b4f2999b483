"""SDXL as an image family: what differs from SD 1.x/2.x (``sd.py``) for a ``StableDiffusionXLPipeline``.

- Prompts: two text encoders whose penultimate hidden states are concatenated, plus the second
  encoder's pooled embedding.
- Conditioning: six "added time ids" per image (original size, crop top-left, target size) and
  the pooled embedding, passed to the UNet as ``added_cond_kwargs``.
- Objective, LoRA targets, denoiser: SD's (``sd.noise_loss``), DDPM noise prediction.
- Native size: the UNet's ``sample_size`` times the VAE's downscale, 1024 when the configs are missing.
- Single file: kohya keys as converted (``lora_te1_``/``lora_te2_``), base version ``sdxl_base_v1-0``.
- Merged checkpoint (``single_checkpoint``): SD's UNet and VAE layout, the first text encoder as
  OpenAI CLIP and the second as OpenCLIP, under ``conditioner.embedders.0``/``.1``.

Nothing here imports torch or diffusers at module level: the bot reads the sizes.
"""

from __future__ import annotations

from pathlib import Path

from .sd import (CAPTION_TOKENS, DENOISER, LORA_TARGETS, PRECISION_PROBE, PREDICTION_TYPE, PRESET, SIDE_MULTIPLE, TEXT_ENCODER_LORA,  # noqa: F401 - SD's
                 draw_timesteps, export_adapter, free_after_caching, noise_loss, sample, sampling_defaults,
                 tokenize, training_scheduler, val_timesteps)
from .sd import native_size as sd_native_size
from .sd import probe_inputs as sd_probe_inputs
from .sd import unet_and_vae

NAME = "sdxl"
PIPELINE_CLASSES = ("StableDiffusionXLPipeline",)
LOAD_KWARGS: dict = {}
GPU_BATCH = 1
STEP_S = {"gpu": 0.8, "cpu": 120.0}  # rough seconds a step at STEP_NATIVE px, one image; not promises
STEP_NATIVE = 1024
HUB_TAG = "stable-diffusion-xl"
KOHYA_BASE_VERSION = "sdxl_base_v1-0"


def label(prediction_type: str = "epsilon") -> str:
    return "SDXL"


def fallback_size(prediction_type: str) -> int:
    return 1024


def native_size(folder: Path) -> int:
    """The UNet's ``sample_size`` times the VAE's downscale, else 1024."""
    return sd_native_size(folder, fallback=fallback_size)


def guess_from_name(name: str) -> tuple[int, str] | None:
    """SDXL hub names say "xl"."""
    return (1024, "epsilon") if "xl" in name.lower() else None


def encode_prompts(pipe, prompts: list[str], device=None):
    """``(prompt_embeds, pooled)`` exactly as the pipeline computes them at inference."""
    import torch

    device = device or pipe.text_encoder.device
    hidden, pooled = [], None
    for tokenizer, encoder in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
        out = encoder(tokenize(tokenizer, prompts).to(encoder.device), output_hidden_states=True)
        pooled = out[0]  # the last encoder's (text_encoder_2) projected pooled output is what SDXL uses
        hidden.append(out.hidden_states[-2])
    return torch.cat(hidden, dim=-1).to(device), pooled.to(device)


def add_time_ids(original_sizes, crops_top_left, target: tuple[int, int]):
    """SDXL's micro-conditioning per image: (orig_h, orig_w, crop_top, crop_left, target_h, target_w),
    ``target`` the (height, width) it trains at (its bucket)."""
    import torch

    rows = [list(o) + list(c) + list(target) for o, c in zip(original_sizes, crops_top_left)]
    return torch.tensor(rows, dtype=torch.float32)


def image_conditioning(original_sizes, crops_top_left, target: tuple[int, int]) -> dict:
    """Per-image conditioning besides the prompt, cached with the latents: the added time ids."""
    return {"time_ids": add_time_ids(original_sizes, crops_top_left, target)}


def denoiser_kwargs(pooled, batch: dict) -> dict:
    """The UNet's ``added_cond_kwargs``: the pooled prompt embedding and the batch's time ids."""
    return {"added_cond_kwargs": {"text_embeds": pooled, "time_ids": batch["time_ids"]}}


def probe_inputs(unet_config, *, side: int, resolution: int, batch_size: int, device) -> dict:
    """SD's random UNet inputs for the precision probe, plus pooled embeddings and full-size time ids."""
    import torch

    cfg = unet_config
    pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
    time_ids = [[resolution, resolution, 0, 0, resolution, resolution]] * batch_size
    return sd_probe_inputs(cfg, side=side, resolution=resolution, batch_size=batch_size, device=device) | {
        "added_cond_kwargs": {"text_embeds": torch.randn(batch_size, pooled, device=device),
                              "time_ids": torch.tensor(time_ids, dtype=torch.float32, device=device)}}


def kohya_key(key: str) -> str:
    """SDXL keeps the converter's lora_te1_/lora_te2_ names."""
    return key


def single_checkpoint(pipe) -> dict:
    """The pipeline's UNet, VAE and both text encoders as one original-layout state dict (``trainer.image.merged``)."""
    from .. import ldm

    return (unet_and_vae(pipe)
            | ldm.prefixed("conditioner.embedders.0.transformer.", ldm.clip(pipe.text_encoder.state_dict()))
            | ldm.prefixed("conditioner.embedders.1.model.", ldm.open_clip(pipe.text_encoder_2.state_dict())))
