"""Stable Diffusion 1.x/2.x as an image family: everything the trainer asks of a ``StableDiffusionPipeline``.

- Denoiser: ``pipe.unet`` (``UNet2DConditionModel``); LoRA on its attention projections.
- Prompts: one CLIP text encoder, its last hidden state as conditioning (no pooled embedding).
- Objective: DDPM noise prediction, epsilon or v-prediction as the scheduler config says, with
  optional min-SNR weighting (``noise_loss``); SDXL (``sdxl.py``) shares it.
- Native size: the UNet's ``sample_size`` times the VAE's downscale (512 for 1.x, 768 for the
  2.x v-prediction bases when the configs are missing).
- Single file: kohya keys, the single text encoder named ``lora_te_`` as SD 1.x/2.x UIs expect.
- Merged checkpoint (``single_checkpoint``): UNet, VAE and text encoder in the original SD layout
  (``trainer.image.ldm``), the text encoder as OpenAI CLIP (1.x) or OpenCLIP (2.x).

Nothing here imports torch or diffusers at module level: the bot reads the sizes.
"""

from __future__ import annotations

from pathlib import Path

from .adapters import read_json, sides, vae_scale

NAME = "sd"
PIPELINE_CLASSES = ("StableDiffusionPipeline",)
DENOISER = "unet"
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
LOAD_KWARGS = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
TEXT_ENCODER_LORA = True  # train_text_encoder puts LoRA on its CLIP encoder(s) too
PREDICTION_TYPE = None  # the scheduler config's prediction_type (epsilon or v_prediction)
PRECISION_PROBE = True  # a copy of the UNet is cheap to time in both precisions (trainer.precision.image_probe)
SIDE_MULTIPLE = 8  # sides are multiples of the VAE's downscale
CAPTION_TOKENS = 77  # what CLIP's text encoder reads of a caption, start and end included
PRESET: dict = {}  # the preset table's numbers as they are (trainer.presets, docs/presets.md)
GPU_BATCH = 2  # images a step on a GPU at the native side
STEP_S = {"gpu": 0.25, "cpu": 30.0}  # rough seconds a step at STEP_NATIVE px, one image; not promises
STEP_NATIVE = 512
HUB_TAG = "stable-diffusion"
KOHYA_BASE_VERSION = "sd_v1"


# --------------------------------------------------------------------------------------------
# what a folder is, without torch


def label(prediction_type: str = "epsilon") -> str:
    return "SD 2.x (v-prediction)" if prediction_type == "v_prediction" else "SD 1.x/2.x"


def fallback_size(prediction_type: str) -> int:
    """The native side when the configs do not say: 768 for the 2.x v-prediction bases, else 512."""
    return 768 if prediction_type == "v_prediction" else 512


def native_size(folder: Path, fallback=fallback_size) -> int:
    """The UNet's ``sample_size`` times the VAE's downscale, else ``fallback`` of the scheduler's prediction type."""
    folder = Path(folder)
    sample_size = read_json(folder / "unet" / "config.json").get("sample_size")
    if isinstance(sample_size, list):
        sample_size = sample_size[0]
    if isinstance(sample_size, int) and read_json(folder / "vae" / "config.json").get("block_out_channels"):
        return sample_size * vae_scale(folder)
    scheduler = read_json(folder / "scheduler" / "scheduler_config.json")
    return fallback(scheduler.get("prediction_type") or "epsilon")


def sampling_defaults(folder: Path | None = None) -> dict:
    """Denoising steps and classifier-free guidance of samples: 25 steps (trainer.image.sizes'
    GPU default) and guidance 7.0, near the pipelines' own 7.5."""
    return {"steps": 25, "guidance_scale": 7.0}


def guess_from_name(name: str) -> tuple[int, str] | None:
    """(native side, prediction type) when a hub name says so: SD 2.x 768 bases say "2" without
    "base". Other names get the registry's default, SD 1.x at 512 px."""
    name = name.lower()
    if "stable-diffusion-2" in name and "base" not in name:
        return 768, "v_prediction"
    return None


# --------------------------------------------------------------------------------------------
# prompts and conditioning


def encode_prompts(pipe, prompts: list[str], device=None):
    """``(prompt_embeds, None)`` exactly as the pipeline computes it at inference; gradients flow
    when the caller has not disabled them (text-encoder LoRA)."""
    device = device or pipe.text_encoder.device
    return pipe.text_encoder(tokenize(pipe.tokenizer, prompts).to(device))[0], None


def tokenize(tokenizer, prompts: list[str]):
    return tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def image_conditioning(original_sizes, crops_top_left, target: tuple[int, int]) -> dict:
    """Per-image conditioning besides the prompt: none for SD 1.x/2.x."""
    return {}


def denoiser_kwargs(pooled, batch: dict) -> dict:
    """Extra keyword arguments of the UNet's forward: none for SD 1.x/2.x."""
    return {}


def probe_inputs(unet_config, *, side: int, resolution: int, batch_size: int, device) -> dict:
    """Random inputs of one UNet forward for the precision probe, latents ``side`` x ``side``."""
    import torch

    cfg, b = unet_config, batch_size
    return {"sample": torch.randn(b, cfg.in_channels, side, side, device=device),
            "timestep": torch.randint(0, 1000, (b,), device=device),
            "encoder_hidden_states": torch.randn(b, 77, cfg.cross_attention_dim, device=device)}


def free_after_caching(pipe) -> None:
    """Nothing to free once captions are cached: the CLIP encoders are small and samples use them."""


# --------------------------------------------------------------------------------------------
# the objective: DDPM noise prediction


def training_scheduler(pipe):
    """The noise schedule training adds noise with (DDPM, from the pipeline's scheduler config)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(pipe.scheduler.config)


def draw_timesteps(noise_scheduler, count: int, generator):
    """One training timestep per image, uniform over the schedule, from ``generator``."""
    import torch

    return torch.randint(0, noise_scheduler.config.num_train_timesteps, (count,), generator=generator)


def val_timesteps(noise_scheduler, count: int):
    """``count`` fixed timesteps from 10% to 90% of the schedule, for the validation loss."""
    import torch

    total = noise_scheduler.config.num_train_timesteps
    return torch.linspace(total * 0.1, total * 0.9, count).long()


def noise_loss(noise_scheduler, unet, batch: dict, embeds, extra: dict, *, vae_config,
               prediction_type: str, min_snr_gamma: float | None, weighted: bool):
    """Noise the latents, predict with the UNet, and take the (min-SNR weighted) MSE to the target."""
    import torch
    import torch.nn.functional as F

    ns = noise_scheduler
    latents = batch["latents"] * vae_config.scaling_factor
    noisy = ns.add_noise(latents, batch["noise"], batch["timesteps"])
    if prediction_type == "v_prediction":
        target = ns.get_velocity(latents, batch["noise"], batch["timesteps"])
    else:
        target = batch["noise"]
    pred = unet(noisy, batch["timesteps"], embeds, return_dict=False, **extra)[0]
    per_image = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    if weighted and min_snr_gamma:
        from diffusers.training_utils import compute_snr

        snr = compute_snr(ns, batch["timesteps"])
        weight = torch.clamp(snr, max=min_snr_gamma)
        weight = weight / (snr + 1) if prediction_type == "v_prediction" else weight / snr
        per_image = per_image * weight
    return per_image.mean()


# --------------------------------------------------------------------------------------------
# sampling and export


def sample(pipe, prompt: str, *, seed: int, steps: int, guidance_scale: float, size, cache=None):
    """One image for ``prompt`` through the pipeline, ``size`` a side or (width, height), from a CPU
    generator seeded ``seed``. The prompt goes through the pipeline's own text encoders (with their
    LoRA, if trained); ``cache`` is not needed."""
    import torch

    width, height = sides(size)
    return pipe(prompt=prompt, num_inference_steps=steps, guidance_scale=guidance_scale, height=height, width=width,
                generator=torch.Generator("cpu").manual_seed(seed), output_type="pil").images[0]


def export_adapter(trained, fresh, folder: Path, *, rank: int, alpha: float) -> dict[str, Path]:
    """The diffusers file and the kohya file (``trainer.image.export``), each proven to load into ``fresh``."""
    from ..export import export_adapter as export_unet_adapter

    return export_unet_adapter(trained, fresh, folder, rank=rank, alpha=alpha)


def kohya_key(key: str) -> str:
    """SD 1.x/2.x UIs name the single text encoder lora_te_, not lora_te1_."""
    return key.replace("lora_te1_", "lora_te_")


def single_checkpoint(pipe) -> dict:
    """The pipeline's UNet, VAE and text encoder as one original-layout state dict (``trainer.image.merged``).
    SD 2.x's encoder is OpenCLIP ViT-H less its last layer (23 or more layers), kept in OpenCLIP's names."""
    from .. import ldm

    encoder = pipe.text_encoder
    text = (ldm.prefixed("cond_stage_model.model.", ldm.open_clip(encoder.state_dict()))
            if encoder.config.num_hidden_layers >= 23 else
            ldm.prefixed("cond_stage_model.transformer.", ldm.clip(encoder.state_dict())))
    return unet_and_vae(pipe) | text


def unet_and_vae(pipe) -> dict:
    """The UNet under ``model.diffusion_model.`` and the VAE under ``first_stage_model.`` (SD's and SDXL's layout)."""
    from .. import ldm

    return (ldm.prefixed("model.diffusion_model.", ldm.unet(pipe.unet.state_dict(), pipe.unet.config))
            | ldm.prefixed("first_stage_model.", ldm.vae(pipe.vae.state_dict(), pipe.vae.config)))
