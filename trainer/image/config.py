"""The settings of one image training run, validated once at the edge.

Every field has a default and a description; the settings text runs take too are declared once
in ``trainer.config.TrainConfig``, the ones only image runs take here. ``ImageTrainConfig.build``
turns pydantic's validation errors into one ``ConfigError`` that lists every bad field. Fields
left as ``None`` are sized to the dataset by ``trainer.image.presets.size_defaults`` once the
images have been read, from the run's ``preset`` (the same ``trainer.presets`` table text runs
use): a user only names what they want to change.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from .. import limits as L
from ..config import TrainConfig, slash


class ImageTrainConfig(TrainConfig):
    """One LoRA fine-tuning run of an image pipeline (SD 1.x/2.x, SDXL, FLUX.1, SD 3.5) on a few images."""

    kind_defaults = {"warmup_ratio": 0.05, "min_delta": 0.0, "loraplus_ratio": 1.0}

    data: list[str] = Field(description="Images (png/jpg/webp), folders of them or zip archives; captions from "
                                        "sidecar .txt files or metadata.jsonl.")
    base: str = Field(description="Base pipeline: hub id or local folder (SD 1.x/2.x, SDXL, FLUX.1 or SD 3.5, "
                                  "diffusers layout).")
    instance_prompt: str = Field("a photo of sks", description="Caption for images without one; put the trigger word in it.")
    resolution: int | None = Field(None, ge=8, le=2048, description=(
        "Training and sampling side in pixels (a multiple of 8, of 16 for FLUX.1 and SD 3.5); default: sized to the base and the device "
        "(trainer.image.sizes: the base's native side on a GPU, at most 256 px on a CPU)."),
        json_schema_extra=slash("training and sample side in pixels (default: sized to the base and "
                                "the device)"))
    crop: Literal["buckets", "square"] = Field("buckets", description=(
        "'buckets': each image keeps its aspect, in the aspect bucket nearest to it at about the run's pixel "
        "area (sides up to 2:1; batches come from one bucket, small buckets repeat their own images); "
        "'square': every image centre-cropped to a square."),
        json_schema_extra=slash("aspect buckets (each image keeps its shape) or square crops (default: buckets)"))
    batch_size: int | None = Field(None, ge=1, le=64, description="Images per optimizer step; default: 2 on a GPU "
                                                                   "(1 for SDXL, FLUX.1, SD 3.5), 1 on a CPU.")
    train_text_encoder: bool = Field(False, description="Also put LoRA on the text encoder(s) (no embedding cache; SD and SDXL only).")
    gradient_checkpointing: bool = Field(False, description="Recompute the denoiser's activations in the backward "
                                                            "pass instead of keeping them: much less GPU memory for "
                                                            "big bases at native size, for slower steps.")
    augment_variants: int = Field(4, ge=1, le=32, description="Augmented copies per image whose latents are cached.")
    shuffle_tags: bool = Field(False, description="Captions written as comma-separated tags: train each step on "
                                                  "one of a few orders of the tags (kohya's shuffle_caption), the "
                                                  "first keep_tags kept in place.")
    keep_tags: int = Field(1, ge=0, le=16, description="With shuffle_tags: leading tags that never move (the trigger "
                                                       "word first; kohya's keep_tokens).")
    caption_dropout: float = Field(0.1, ge=0, lt=1, description="Share of steps' captions replaced by the empty one (for CFG).")
    min_snr_gamma: float | None = Field(5.0, gt=0, description="Min-SNR loss weighting gamma; None turns it off (DDPM families; flow matching has no SNR weighting).")
    noise_offset: float = Field(0.0, ge=0, le=1, description="Noise offset (brighter darks and lighter lights); 0 = off.")
    val_fraction: float = Field(0.2, ge=0, le=0.5, description="Share of images held out for validation (at least one when >= 4 images).")
    sample_every: int | None = Field(None, ge=0, description="Draw a sample grid every N steps (0: only at the end); "
                                                             "default: about 4 times a run.")
    sample_prompts: list[str] | None = Field(None, description="Prompts of the sample grids; default: the instance "
                                                               "prompt and a held-out caption.")
    sample_aspect: str | None = Field(None, description="Aspect of the sample grids' images as W:H (for example "
                                                          "3:4 or 16:9, at most 2:1); default: square.")
    sample_seeds: list[int] = Field([0, 1], description="One grid column per seed.")
    scorer: str | None = Field(None, description="CLIP model (hub id or local folder) that scores the final samples: "
                                                 "likeness to the held-out images and prompt adherence; none: the "
                                                 "scores are unavailable (trainer.scores).")
    sample_steps: int | None = Field(None, ge=1, le=200, description="Denoising steps per sample; default: the "
                                                                     "family's on a GPU (25; FLUX.1 schnell 4, dev and "
                                                                     "SD 3.5 28), at most 8 on a CPU.",
                                     json_schema_extra=slash("denoising steps per sample (default: sized to the "
                                                             "device)"))
    guidance_scale: float | None = Field(None, ge=0, le=30, description="Guidance scale of samples; default: the "
                                                                        "base family's (7 for SD/SDXL, 0 for FLUX.1 "
                                                                        "schnell, 3.5 for dev, 4.5 for SD 3.5).")
    min_image_side: int | None = Field(None, ge=8, description="Refuse smaller images; default: half the resolution "
                                                               "(trainer.limits.min_image_side).")
    max_pixels: int = Field(L.MAX_IMAGE_PIXELS, ge=1, description="Pixel cap per image (decompression bombs).")

    @field_validator("data")
    @classmethod
    def _some_data(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("give at least one image file, folder or zip archive")
        return value

    @field_validator("instance_prompt")
    @classmethod
    def _prompt(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the instance prompt must not be empty")
        return value.strip()

    @field_validator("sample_aspect")
    @classmethod
    def _aspect(cls, value: str | None) -> str | None:
        from .sizes import parse_aspect

        if value is None:
            return None
        w, h = parse_aspect(value)
        return f"{w}:{h}"

    @field_validator("resolution")
    @classmethod
    def _multiple_of_8(cls, value: int | None) -> int | None:
        if value is not None and value % 8:
            raise ValueError(f"resolution {value} is not a multiple of 8")
        return value

    def _problems(self) -> list[str]:
        return super()._problems() + ([] if self.sample_seeds else ["give at least one sample seed"])

    @property
    def lora_alpha(self) -> float:
        """Alpha as LoRA reads it (after ``size_defaults`` has filled ``rank``)."""
        return self.alpha if self.alpha is not None else float(self.rank)
