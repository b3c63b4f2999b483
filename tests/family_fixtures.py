"""Tiny FLUX.1 and SD 3.5 pipelines with random weights, built locally for the image-family tests.

Like ``tests/image_fixtures.py`` for SD and SDXL: small configs, random weights, saved with
``save_pretrained`` and loaded back through the same ``from_pretrained`` path that a hub id
takes. What makes them Flux- or SD3-like is kept: a 16-channel VAE with ``shift_factor`` and
``scaling_factor`` and an 8x downscale (four blocks), CLIP text encoders with a byte-level
vocabulary, a T5 encoder whose ``T5TokenizerFast`` is a ``tokenizers`` Unigram model (what
transformers rebuilds T5's tokenizer as when loading), and the family's
``FlowMatchEulerDiscreteScheduler`` settings:

- ``build_tiny_flux(folder)``: FLUX.1-schnell-like (no guidance embedding; shift 1, no dynamic
  shifting); ``guidance=True`` gives a FLUX.1-dev-like one (guidance embedding; dynamic
  shifting with base 0.5 / max 1.15, shift 3), as in the two hub repos' scheduler configs.
- ``build_tiny_sd3(folder)``: SD 3.5-like (two CLIPs with projection, T5, RMS q/k norm, one
  dual-attention block as in 3.5 medium; scheduler shift 3).

A training step (batch 2, 64 px) takes 10-13 ms on a CPU, and a 64 px pipeline call with 2
steps about 25 ms. Import the fixtures with ``from tests.family_fixtures import *``.
"""

from __future__ import annotations

import string
from pathlib import Path

import pytest

from tests.image_fixtures import MAX_TOKENS, _text_config, tiny_tokenizer

T5_TOKENS = 32  # the tiny T5 tokenizer's model_max_length (one token per character; real ones: 512)
T5_DIM = 32


def tiny_t5_tokenizer():
    """A T5TokenizerFast over one piece per printable character (a Unigram model, as T5's loads as)."""
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    for char in string.ascii_letters + string.digits + string.punctuation:
        pieces += [(char, -3.0), ("\u2581" + char, -3.5)]
    return T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=T5_TOKENS)


def tiny_t5(vocab_size: int = 256):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=vocab_size, d_model=T5_DIM, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                                   relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
                                   decoder_start_token_id=0))


def tiny_vae16(scaling_factor: float, shift_factor: float):
    """A 16-latent-channel VAE with four blocks (8x downscale), without quant convs, as Flux and SD3 use."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(8, 8, 16, 16), in_channels=3, out_channels=3, latent_channels=16,
                         layers_per_block=1, down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=8, sample_size=64,
                         scaling_factor=scaling_factor, shift_factor=shift_factor, use_quant_conv=False,
                         use_post_quant_conv=False)


def build_tiny_flux(folder: Path, *, guidance: bool = False, single_layers: int = 1) -> Path:
    """Save a tiny FLUX.1 pipeline: schnell-like, or dev-like with ``guidance=True``.

    ``single_layers=0`` leaves out the single-stream blocks (for the kohya export, whose
    reader in diffusers assumes FLUX.1's real widths for them).
    """
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=single_layers,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=T5_DIM,
                                         pooled_projection_dim=32, guidance_embeds=guidance, axes_dims_rope=(4, 6, 6))
    # The hub repos' scheduler configs: schnell has a fixed shift of 1; dev shifts by image size.
    if guidance:
        scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                                                    max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
    else:
        scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)
    pipe = FluxPipeline(scheduler=scheduler, vae=tiny_vae16(0.3611, 0.1159),
                        text_encoder=CLIPTextModel(_text_config()), tokenizer=tiny_tokenizer(),
                        text_encoder_2=tiny_t5(), tokenizer_2=tiny_t5_tokenizer(), transformer=transformer)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def build_tiny_sd3(folder: Path) -> Path:
    """Save a tiny SD 3.5-like pipeline (two CLIPs with projection, T5, MMDiT with RMS q/k norm)."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(0)
    # The two CLIPs' hidden states (16 + 16) are padded to T5's width, so they must not exceed it.
    clip = dict(hidden_size=16, intermediate_size=37, num_attention_heads=4, projection_dim=16)
    transformer = SD3Transformer2DModel(sample_size=32, patch_size=2, in_channels=16, num_layers=2,
                                        attention_head_dim=8, num_attention_heads=4, joint_attention_dim=T5_DIM,
                                        caption_projection_dim=32, pooled_projection_dim=32, out_channels=16,
                                        pos_embed_max_size=32, dual_attention_layers=(0,), qk_norm="rms_norm")
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=tiny_vae16(1.5305, 0.0609),
        text_encoder=CLIPTextModelWithProjection(_text_config(**clip)), tokenizer=tiny_tokenizer(),
        text_encoder_2=CLIPTextModelWithProjection(_text_config(**clip)), tokenizer_2=tiny_tokenizer(),
        text_encoder_3=tiny_t5(), tokenizer_3=tiny_t5_tokenizer())
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="session")
def tiny_flux_schnell(tmp_path_factory) -> Path:
    return build_tiny_flux(tmp_path_factory.mktemp("tiny-flux-schnell") / "pipe")


@pytest.fixture(scope="session")
def tiny_flux_dev(tmp_path_factory) -> Path:
    return build_tiny_flux(tmp_path_factory.mktemp("tiny-flux-dev") / "pipe", guidance=True)


@pytest.fixture(scope="session")
def tiny_sd3(tmp_path_factory) -> Path:
    return build_tiny_sd3(tmp_path_factory.mktemp("tiny-sd3") / "pipe")


__all__ = ["MAX_TOKENS", "T5_TOKENS", "build_tiny_flux", "build_tiny_sd3", "tiny_flux_dev", "tiny_flux_schnell",
           "tiny_sd3", "tiny_t5_tokenizer"]
