"""Tiny Stable Diffusion pipelines and image folders, built locally for the image tests.

There is no model hub here, so the tests build SD 1.x and SDXL pipelines with random weights
and tiny configs, save them with ``save_pretrained`` and load them back through the same
``from_pretrained`` path that a hub id takes. The tokenizer is a CLIP byte-level BPE with no
merges (one token per character), which is all a random text encoder needs.

Import the fixtures into a test module with ``from tests.image_fixtures import *``.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

RESOLUTION = 32
MAX_TOKENS = 24


def tiny_tokenizer():
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in sorted(ByteLevel.alphabet()):
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=MAX_TOKENS)


def _text_config(**extra):
    from transformers import CLIPTextConfig

    shape = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2) | extra
    return CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, vocab_size=600,
                          max_position_embeddings=MAX_TOKENS, hidden_act="gelu", **shape)


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(16, 32), in_channels=3, out_channels=3, latent_channels=4,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         norm_num_groups=8, sample_size=RESOLUTION)


def build_sd(folder: Path, prediction_type: str = "epsilon", channels=(32, 64)) -> Path:
    """Save a tiny SD 1.x-style pipeline (``prediction_type='v_prediction'`` for a 2.x-style one)."""
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(block_out_channels=channels, layers_per_block=1, sample_size=RESOLUTION // 2,
                                in_channels=4, out_channels=4, cross_attention_dim=32, attention_head_dim=8,
                                norm_num_groups=16,
                                down_block_types=("CrossAttnDownBlock2D",) + ("DownBlock2D",) * (len(channels) - 1),
                                up_block_types=("UpBlock2D",) * (len(channels) - 1) + ("CrossAttnUpBlock2D",))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                              prediction_type=prediction_type)
    pipe = StableDiffusionPipeline(vae=_vae(), text_encoder=CLIPTextModel(_text_config()), tokenizer=tiny_tokenizer(),
                                   unet=unet, scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def build_sdxl(folder: Path) -> Path:
    """Save a tiny SDXL pipeline: two text encoders, pooled embeddings and added time ids."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=1, sample_size=RESOLUTION // 2,
                                in_channels=4, out_channels=4, cross_attention_dim=64, attention_head_dim=(2, 4),
                                use_linear_projection=True, addition_embed_type="text_time",
                                addition_time_embed_dim=8, transformer_layers_per_block=(1, 1),
                                projection_class_embeddings_input_dim=6 * 8 + 32, norm_num_groups=16,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       timestep_spacing="leading", steps_offset=1)
    pipe = StableDiffusionXLPipeline(vae=_vae(), text_encoder=CLIPTextModel(_text_config()),
                                     text_encoder_2=CLIPTextModelWithProjection(_text_config(projection_dim=32)),
                                     tokenizer=tiny_tokenizer(), tokenizer_2=tiny_tokenizer(), unet=unet,
                                     scheduler=scheduler, force_zeros_for_empty_prompt=True)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def pattern_image(seed: int, size=(48, 40), mode="RGB") -> Image.Image:
    """A smooth random pattern (blobs of colour), different for each seed."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    channels = []
    for _ in range(3):
        fx, fy, phase = rng.uniform(1, 6, 2).tolist() + [rng.uniform(0, 6.28)]
        channels.append(np.sin(fx * xx * 6.28 + phase) * np.cos(fy * yy * 6.28))
    array = ((np.stack(channels, -1) + 1) * 127.5).clip(0, 255).astype(np.uint8)
    return Image.fromarray(array).convert(mode)


def image_bytes(image: Image.Image, fmt="PNG", **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def write_image_folder(folder: Path, count: int = 6, captions: bool = True, size=(48, 40)) -> Path:
    """Write ``count`` pattern images (png/jpg/webp in turn) with sidecar captions."""
    folder.mkdir(parents=True, exist_ok=True)
    formats = [("png", "PNG"), ("jpg", "JPEG"), ("webp", "WEBP")]
    for i in range(count):
        ext, fmt = formats[i % 3]
        (folder / f"img{i}.{ext}").write_bytes(image_bytes(pattern_image(i, size), fmt, quality=95))
        if captions:
            (folder / f"img{i}.txt").write_text(f"a photo of sks pattern {i % 3}")
    return folder


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory) -> Path:
    return build_sd(tmp_path_factory.mktemp("tiny-sd") / "pipe")


@pytest.fixture(scope="session")
def tiny_sd_v(tmp_path_factory) -> Path:
    return build_sd(tmp_path_factory.mktemp("tiny-sd-v") / "pipe", prediction_type="v_prediction")


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory) -> Path:
    return build_sdxl(tmp_path_factory.mktemp("tiny-sdxl") / "pipe")


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("images") / "data")


def write_metadata(folder: Path, rows: list[dict]) -> None:
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def build_sd1_small(folder: Path) -> Path:
    """An SD 1.x pipeline shrunk evenly: the real layout at a tenth of the widths (an 8.8M-parameter UNet).

    Same blocks as Stable Diffusion 1.x (three cross-attention down blocks and one plain, two
    layers each, a four-block VAE that downsamples 8x), with the channels divided by about 10
    (UNet 32-64-128-128, VAE 16-32-64-64), so the VAE, text encoder and UNet keep roughly the
    real model's proportions of work. For throughput benchmarks at 128 px, not for tests.
    """
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(block_out_channels=(32, 64, 128, 128), layers_per_block=2, sample_size=16,
                                in_channels=4, out_channels=4, cross_attention_dim=64, attention_head_dim=8,
                                norm_num_groups=16,
                                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
    vae = AutoencoderKL(block_out_channels=(16, 32, 64, 64), in_channels=3, out_channels=3, latent_channels=4,
                        layers_per_block=2, down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=8, sample_size=128)
    text = _text_config(hidden_size=64, intermediate_size=256, num_hidden_layers=4)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=CLIPTextModel(text), tokenizer=tiny_tokenizer(), unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def build_clip(folder: Path) -> Path:
    """A tiny CLIP model with random weights and its processor (32 px images), saved for
    ``from_pretrained``: the image scorer of tests and of bench/steering.py's image simulation."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=600, hidden_size=32, intermediate_size=37, num_attention_heads=4,
                         num_hidden_layers=2, max_position_embeddings=24, bos_token_id=0, eos_token_id=1, pad_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                           image_size=32, patch_size=8),
        projection_dim=16)
    CLIPModel(config).save_pretrained(folder, safe_serialization=True)
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=images, tokenizer=tiny_tokenizer()).save_pretrained(folder)
    return folder


def assert_same_run(got, want) -> None:
    """Two image runs (``ImageTrainResult``) trained alike: the same loss curves at the same steps and
    the same diffusers adapter file, to float tolerance (a resumed run against an uninterrupted one)."""
    import pytest
    import torch
    from safetensors import safe_open

    for curve in ("train_loss", "val_loss"):
        a, b = got.metrics["curves"][curve], want.metrics["curves"][curve]
        assert [s for s, _ in a] == [s for s, _ in b]
        assert [v for _, v in a] == pytest.approx([v for _, v in b], abs=1e-5)
    with safe_open(str(want.adapter_files["diffusers"]), "pt") as a, \
            safe_open(str(got.adapter_files["diffusers"]), "pt") as b:
        for key in a.keys():
            torch.testing.assert_close(b.get_tensor(key), a.get_tensor(key), atol=1e-5, rtol=1e-4)


def cancel_at(step: int):
    """``(on_event, cancel)`` for ``train_image``: the run is cancelled once it reports ``step``."""
    from trainer.cancel import CancelToken

    cancel = CancelToken()

    def on_event(event):
        if event.kind == "step" and event.step == step:
            cancel.cancel()

    return on_event, cancel
