"""FLUX.1 (schnell and dev) as an image family: everything the trainer asks of a ``FluxPipeline``.

- Denoiser: ``pipe.transformer`` (``FluxTransformer2DModel``: double-stream blocks, then
  single-stream blocks). LoRA targets: the defaults of diffusers' ``train_dreambooth_lora_flux.py``
  (attention q/k/v/out of both streams and both feed-forwards; the ``attn.to_q/k/v`` names also
  reach the single-stream blocks' attention).
- Prompts: CLIP's pooled output and T5's last hidden state (``pipe.encode_prompt``, exactly as at
  inference), cached per caption; ``text_ids`` are zeros of the sequence length. After caching,
  ``free_after_caching`` frees the T5 encoder (the biggest part) and ``sample`` takes the cached embeddings.
- Latents: 16 channels, ``(z - shift_factor) * scaling_factor``, packed into 2x2-patch tokens with
  their position ids (``latent_image_ids``), as the pipeline packs them. Sides must be multiples
  of 16 px (8x VAE, 2x2 patches).
- Objective: flow matching (``flow.py``); dev (``guidance_embeds``) gets a constant guidance of
  3.5 during training, the example's ``--guidance_scale``. Timesteps are drawn uniformly by
  default, the Flux example's ``--weighting_scheme none``.
- Native size: 1024 px, ``FluxPipeline.default_sample_size`` (128, fixed in the pipeline; the
  transformer config has no sample size) times the VAE's downscale.
- Single file: kohya sd-scripts layout (see ``kohya_state_dict``).

Nothing here imports torch or diffusers at module level, so ``native_size`` and
``sampling_defaults`` can be read by the bot.
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

NAME = "flux"
LOAD_KWARGS: dict = {}  # nothing beyond safetensors (adapters.open_pipeline)
PIPELINE_CLASSES = ("FluxPipeline",)
DENOISER = "transformer"
LORA_TARGETS = ("attn.to_k", "attn.to_q", "attn.to_v", "attn.to_out.0",
                "attn.add_k_proj", "attn.add_q_proj", "attn.add_v_proj", "attn.to_add_out",
                "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2")
LATENT_CHANNELS = 16
SIDE_MULTIPLE = 16
CAPTION_TOKENS = 256  # T5 tokens FLUX.1 schnell reads (dev reads 512; CLIP's pooled 77 only summarise)
DEFAULT_SAMPLE_SIZE = 128  # FluxPipeline.default_sample_size, in latent pixels
TRAIN_GUIDANCE = 3.5  # train_dreambooth_lora_flux.py --guidance_scale, fed to dev's guidance embedding
SINGLE_FILE = "lora_kohya.safetensors"
PRESET = {"rank": 16}  # ai-toolkit's FLUX.1 LoRA example config (network linear 16, lr 1e-4, the table's lr)
GPU_BATCH = 1  # images a step on a GPU at the native side
STEP_NATIVE = 1024
STEP_S = {"gpu": 2.0, "cpu": 900.0}  # rough guesses (12B transformer) at STEP_NATIVE px, one image; not measured
HUB_TAG = "flux"


# --------------------------------------------------------------------------------------------
# what a folder is, without torch


def label(prediction_type: str = "flow") -> str:
    return "FLUX.1"


def guess_from_name(name: str) -> tuple[int, str] | None:
    """(native side, prediction type) when a hub name says FLUX."""
    return (DEFAULT_SAMPLE_SIZE * 8, "flow") if "flux" in name.lower() else None  # the 8x VAE of every FLUX.1


def guidance_distilled(folder: Path) -> bool:
    """True for FLUX.1-dev-like bases (a guidance embedding), False for schnell-like ones."""
    return bool(read_json(Path(folder) / "transformer" / "config.json").get("guidance_embeds"))


def native_size(folder: Path) -> int:
    """The side the pipeline draws at by default: ``default_sample_size`` (128) times the VAE's downscale."""
    return DEFAULT_SAMPLE_SIZE * vae_scale(folder)


def sampling_defaults(folder: Path) -> dict:
    """Denoising steps, guidance and T5 length for samples, per variant.

    schnell: 4 steps, guidance 0 and at most 256 T5 tokens (the FluxPipeline docs' schnell
    example; schnell is timestep-distilled and has no guidance input). dev: the pipeline's
    defaults, 28 steps, embedded guidance 3.5, 512 tokens.
    """
    if guidance_distilled(folder):
        return {"steps": 28, "guidance_scale": 3.5, "max_sequence_length": 512}
    return {"steps": 4, "guidance_scale": 0.0, "max_sequence_length": 256}


# --------------------------------------------------------------------------------------------
# loading, LoRA, prompts, latents


def max_sequence_length(pipe) -> int:
    """T5 tokens per prompt: the variant's length, or the T5 tokenizer's own limit when smaller."""
    default = 512 if pipe.transformer.config.guidance_embeds else 256
    return min(default, pipe.tokenizer_2.model_max_length) if pipe.tokenizer_2 is not None else default


def encode_prompts(pipe, prompts: list[str], device=None, max_length: int | None = None) -> flow.Conditioning:
    """CLIP pooled + T5 sequence for ``prompts``, through the pipeline's own ``encode_prompt``."""
    import torch

    if pipe.text_encoder_2 is None:
        raise ValueError("The T5 encoder was dropped after caching; use the cached embeddings.")
    with torch.no_grad():
        prompt, pooled, _ = pipe.encode_prompt(prompt=prompts, prompt_2=None, device=device or pipe.transformer.device,
                                               max_sequence_length=max_length or max_sequence_length(pipe))
    return flow.Conditioning(prompt, pooled)


def free_after_caching(pipe) -> None:
    """Free the T5 encoder and its tokenizer once the training loop has cached its captions and sample prompts."""
    drop_module(pipe, "text_encoder_2", "tokenizer_2")


def pack(latents):
    """[B, C, H, W] latents as [B, H/2 * W/2, 4C] tokens, the pipeline's ``_pack_latents``."""
    from diffusers import FluxPipeline

    b, c, h, w = latents.shape
    return FluxPipeline._pack_latents(latents, b, c, h, w)


def unpack(tokens, height: int, width: int):
    """Tokens back to [B, C, height, width] latents (``height``/``width`` in latent pixels)."""
    from diffusers import FluxPipeline

    return FluxPipeline._unpack_latents(tokens, height, width, vae_scale_factor=1)  # 1: sides are latent already


def image_ids(height: int, width: int, device=None, dtype=None):
    """Position ids of the packed tokens for a latent of ``height`` x ``width``."""
    from diffusers import FluxPipeline

    return FluxPipeline._prepare_latent_image_ids(None, height // 2, width // 2, device, dtype)


# --------------------------------------------------------------------------------------------
# the objective


def objective(pipe, *, timestep_sampling: str = "none", loss_weighting: str = "none",
              guidance: float = TRAIN_GUIDANCE, **density) -> flow.FlowObjective:
    """The flow-matching objective for this pipeline; ``guidance`` only reaches dev-like transformers."""
    guidance = guidance if pipe.transformer.config.guidance_embeds else None
    return flow.flow_objective(pipe.scheduler.config, timestep_sampling=timestep_sampling,
                               loss_weighting=loss_weighting, guidance=guidance, **density)


def predict(transformer, noisy, sigmas, cond: flow.Conditioning, objective: flow.FlowObjective):
    """The transformer's velocity for ``noisy`` [B, 16, H, W] latents at ``sigmas``, unpacked to their
    shape; a dev-like transformer gets the objective's constant guidance."""
    import torch

    guidance = objective.guidance
    b, _, h, w = noisy.shape
    dtype = noisy.dtype
    out = transformer(hidden_states=pack(noisy), timestep=sigmas.to(dtype),  # the pipeline's t / 1000
                      guidance=torch.full((b,), guidance, device=noisy.device, dtype=torch.float32)
                      if guidance is not None else None,
                      pooled_projections=cond.pooled.to(dtype), encoder_hidden_states=cond.prompt.to(dtype),
                      txt_ids=torch.zeros(cond.prompt.shape[1], 3, device=noisy.device, dtype=dtype),
                      img_ids=image_ids(h, w, noisy.device, dtype), return_dict=False)[0]
    return unpack(out, h, w)


training_scheduler = objective  # what the training loop draws timesteps from: this family's defaults
noise_loss = functools.partial(flow.noise_loss, predict)  # the training loop's loss of a cached batch


# --------------------------------------------------------------------------------------------
# sampling


def sample(pipe, prompt: str, *, seed: int, steps: int, guidance_scale: float, size,
           cache: dict[str, flow.Conditioning] | None = None):
    """One image for ``prompt`` through the pipeline (its own scheduler), leaving torch's RNG untouched.

    With ``cache`` the prompt's cached embeddings are used (required once T5 is dropped).
    """
    if cache is None and pipe.text_encoder_2 is None:
        raise ValueError("The T5 encoder was dropped after caching; pass the cached embeddings.")
    kwargs: dict[str, Any] = {"prompt": prompt, "max_sequence_length": max_sequence_length(pipe)}
    if cache is not None:
        if prompt not in cache:
            raise ValueError(f"No cached embeddings for the sample prompt {prompt!r}.")
        cond = flow.Conditioning(*cache[prompt]).to(pipe.transformer.device)
        kwargs = {"prompt_embeds": cond.prompt[None], "pooled_prompt_embeds": cond.pooled[None]}
    return flow.generate(pipe, kwargs, seed=seed, steps=steps, guidance_scale=guidance_scale, size=size)


# --------------------------------------------------------------------------------------------
# exports

# kohya sd-scripts names a LoRA after BFL's original FLUX.1 modules, where q, k and v (and in the
# single-stream blocks also the MLP input) are one fused Linear. Each entry: the BFL module and the
# diffusers modules it fuses, in order. diffusers' reader (_convert_kohya_flux_lora_to_diffusers)
# splits them back the same way.
_DOUBLE = {"img_attn_qkv": ("attn.to_q", "attn.to_k", "attn.to_v"), "img_attn_proj": ("attn.to_out.0",),
           "img_mlp_0": ("ff.net.0.proj",), "img_mlp_2": ("ff.net.2",), "img_mod_lin": ("norm1.linear",),
           "txt_attn_qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
           "txt_attn_proj": ("attn.to_add_out",), "txt_mlp_0": ("ff_context.net.0.proj",),
           "txt_mlp_2": ("ff_context.net.2",), "txt_mod_lin": ("norm1_context.linear",)}
_SINGLE = {"linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"), "linear2": ("proj_out",),
           "modulation_lin": ("norm.linear",)}
_TOP = {"img_in": "x_embedder", "txt_in": "context_embedder",
        "time_in_in_layer": "time_text_embed.timestep_embedder.linear_1",
        "time_in_out_layer": "time_text_embed.timestep_embedder.linear_2",
        "vector_in_in_layer": "time_text_embed.text_embedder.linear_1",
        "vector_in_out_layer": "time_text_embed.text_embedder.linear_2",
        "guidance_in_in_layer": "time_text_embed.guidance_embedder.linear_1",
        "guidance_in_out_layer": "time_text_embed.guidance_embedder.linear_2"}
# diffusers' reader splits a single block's linear1 at FLUX.1's widths (3 x 3072 + 12288), whatever the model.
_READER_LINEAR1 = (3072, 3072, 3072, 12288)


def _kohya_groups(names, block_counts: tuple[int, int]) -> dict[str, tuple[str, ...]]:
    """``{kohya module: diffusers modules it fuses}`` for every group that holds one of ``names``."""
    groups = {f"lora_unet_{bfl}": (diffusers,) for bfl, diffusers in _TOP.items()}
    for i in range(block_counts[0]):
        groups |= {f"lora_unet_double_blocks_{i}_{bfl}": tuple(f"transformer_blocks.{i}.{m}" for m in members)
                   for bfl, members in _DOUBLE.items()}
    for i in range(block_counts[1]):
        groups |= {f"lora_unet_single_blocks_{i}_{bfl}": tuple(f"single_transformer_blocks.{i}.{m}" for m in members)
                   for bfl, members in _SINGLE.items()}
    unmapped = set(names) - {m for members in groups.values() for m in members}
    if unmapped:
        raise ValueError(f"No kohya name for the LoRA layer(s) {sorted(unmapped)[:3]}: kohya export covers "
                         "the double/single blocks and the input embedders.")
    return {key: members for key, members in groups.items() if any(m in names for m in members)}


def kohya_state_dict(factors: dict[str, tuple], out_features: dict[str, int],
                     block_counts: tuple[int, int]) -> dict[str, Any]:
    """The kohya sd-scripts FLUX.1 LoRA for ``factors`` (``{diffusers module: (A, B, scale)}``).

    A fused group gets ``down = cat(A_i)`` and a block-diagonal ``up`` (zeros where a member was
    not trained, e.g. the single blocks' MLP input; ``out_features`` gives those members' widths),
    and ``alpha = scale * fused rank``, since readers scale by ``alpha / rank``. diffusers' reader
    recognises this block-sparse form and splits it back into the same per-module rank.
    ``block_counts`` is (double blocks, single blocks).
    """
    import torch

    out = {}
    for key, members in _kohya_groups(factors, block_counts).items():
        present = [factors[m] for m in members if m in factors]
        rank, width, scale = present[0][0].shape[0], present[0][0].shape[1], present[0][2]
        if any(a.shape[0] != rank for a, _, _ in present):
            raise ValueError(f"The layers fused into {key} have different LoRA ranks.")
        downs, ups = [], []
        for m in members:
            a, b, s = factors.get(m) or (torch.zeros(rank, width), torch.zeros(out_features[m], rank), scale)
            downs.append(a.float())
            ups.append(b.float() * (s / scale))  # a member with another scale keeps its own update
        out[f"{key}.lora_down.weight"] = torch.cat(downs).contiguous()
        out[f"{key}.lora_up.weight"] = torch.block_diag(*ups).contiguous()
        out[f"{key}.alpha"] = torch.tensor(scale * rank * len(members))
    return out


def single_file_problem(transformer) -> str | None:
    """Why a kohya file of this transformer's LoRA would not load back into diffusers, or None."""
    factors = lora_factors(transformer)
    if not any(name.startswith("single_transformer_blocks.") for name in factors):
        return None
    block = transformer.single_transformer_blocks[0]
    widths = (block.attn.to_q.out_features,) * 3 + (block.proj_mlp.out_features,)
    if widths != _READER_LINEAR1:
        return (f"diffusers reads a kohya FLUX.1 LoRA's single-block linear1 only at FLUX.1's widths "
                f"{_READER_LINEAR1}; this transformer's are {widths}")
    return None


def save_single_file(pipe, folder: Path) -> Path:
    """Write ``folder/lora_kohya.safetensors`` in kohya sd-scripts' FLUX.1 layout.

    Why kohya: it is what sd-scripts writes and what ComfyUI, Forge and diffusers all read
    (``lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight`` and so on, with ``.alpha``).
    ComfyUI's own ``diffusion_model.double_blocks.0.img_attn.qkv`` layout names the same BFL
    modules; diffusers reads it by rewriting it into this one, so it adds nothing, and fewer
    tools know it. Raises ``ValueError`` when diffusers could not read the file back
    (``single_file_problem``).
    """
    from safetensors.torch import save_file

    transformer = pipe.transformer
    problem = single_file_problem(transformer)
    if problem:
        raise ValueError(f"No kohya file for this FLUX.1 transformer: {problem}.")
    factors = lora_factors(transformer)
    counts = (len(transformer.transformer_blocks), len(transformer.single_transformer_blocks))
    groups = _kohya_groups(factors, counts)
    widths = {m: transformer.get_submodule(m).out_features for members in groups.values() for m in members}
    state = kohya_state_dict(factors, widths, counts)
    rank = next(iter(factors.values()))[0].shape[0]
    config = transformer.peft_config["default"]
    metadata = {"ss_network_module": "networks.lora_flux", "ss_network_dim": str(rank),
                "ss_network_alpha": str(config.lora_alpha), "ss_base_model_version": "flux1"}
    path = Path(folder) / SINGLE_FILE
    save_file(state, str(path), metadata=metadata)
    return path


def export_adapter(trained, fresh, folder: Path, *, rank: int, alpha: float) -> dict[str, Path]:
    """The training loop's export: the diffusers file, and the kohya file wherever diffusers can
    read it back (``single_file_problem``; always at FLUX.1's own widths) and the adapter is not
    DoRA (``single_file_skipped``), each proven to load into ``fresh``. Rank and alpha travel in the files."""
    skip = single_file_skipped(trained.denoiser) or single_file_problem(trained.denoiser)
    writers = {} if skip else {"kohya": save_single_file}
    return export_files(trained.pipe, fresh.pipe, folder, **writers)


def export(pipe, fresh, folder: Path) -> dict[str, Path]:
    """Write the diffusers file and the kohya file into ``folder`` and prove both load into ``fresh``.

    Raises ``TrainingError`` when a file does not load back with the same updates.
    """
    return export_files(pipe, fresh, folder, kohya=save_single_file)
