"""The settings of one image training run, validated once at the edge.

Every field has a default and a description; ``ImageTrainConfig.build`` turns pydantic's
validation errors into one ``ConfigError`` that lists every bad field. Fields left as ``None``
are sized to the dataset by ``trainer.image.presets.size_defaults`` once the images have been
read, from the run's ``preset`` (the same ``trainer.presets`` table text runs use): a user only
names what they want to change.
"""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from .. import limits as L
from ..config import Precision, TrainConfig
from ..presets import Preset


class ImageTrainConfig(TrainConfig):
    """One LoRA fine-tuning run of a Stable Diffusion 1.x/2.x or SDXL pipeline on a few images."""


    data: list[str] = Field(description="Image files, folders or zip archives (png/jpg/webp, optional captions).")
    base: str = Field(description="Base pipeline: hub id or local folder of an SD 1.x/2.x or SDXL pipeline.")
    instance_prompt: str = Field("a photo of sks", description="Caption for images without one; put the trigger word in it.")
    preset: Preset | None = Field(
        None, description="Which preset sizes the None knobs (docs/presets.md); None means 'balanced'.")
    steps: int | None = Field(None, ge=1, le=100_000, description="Optimizer steps; None sizes it to the data "
                                                                 "(balanced: 100 per training image, 200 to 1500).")
    resolution: int | None = Field(None, ge=8, le=2048, description=(
        "Training and sampling side in pixels (a multiple of 8); None sizes it to the base and the device "
        "(trainer.image.sizes: the base's native side on a GPU, at most 256 px on a CPU)."))
    batch_size: int | None = Field(None, ge=1, le=64, description="Images per optimizer step; None: 2 on a GPU "
                                                                   "(1 for SDXL), 1 on a CPU.")
    lr: float | None = Field(None, gt=0, le=1.0, description="Peak learning rate (AdamW, cosine decay after "
                                                             "warm-up); None sizes it (balanced: 1e-4).")
    rank: int | None = Field(None, ge=1, le=256, description="LoRA rank; None sizes it (balanced: 8).")
    alpha: float | None = Field(None, gt=0, description="LoRA alpha; None means equal to rank (scale 1).")
    lora_dropout: float | None = Field(None, ge=0, lt=1, description="Dropout on the LoRA path; None sizes it.")
    train_text_encoder: bool = Field(False, description="Also put LoRA on the text encoder(s) (no embedding cache).")
    augment: float | None = Field(None, ge=0, le=1, description="Augmentation strength, 0 = off; None sizes it "
                                                                "(balanced: 0.5).")
    augment_variants: int = Field(4, ge=1, le=32, description="Augmented copies per image whose latents are cached.")
    caption_dropout: float = Field(0.1, ge=0, lt=1, description="Share of steps' captions replaced by the empty one (for CFG).")
    min_snr_gamma: float | None = Field(5.0, gt=0, description="Min-SNR loss weighting gamma; None turns it off.")
    noise_offset: float = Field(0.0, ge=0, le=1, description="Noise offset (brighter darks and lighter lights); 0 = off.")
    val_fraction: float = Field(0.2, ge=0, le=0.5, description="Share of images held out for validation (at least one when >= 4 images).")
    eval_every: int | None = Field(None, ge=1, description="Validate and checkpoint every N steps; None: ~8 times a run.")
    patience: int = Field(3, ge=0, description="Stop after N validations without improvement; 0 never stops early.")
    min_delta: float = Field(0.0, ge=0, description="Smallest validation-loss drop that counts as improvement.")
    sample_every: int | None = Field(None, ge=0, description="Draw a sample grid every N steps (0: only at the end); None: ~4 times a run.")
    sample_prompts: list[str] | None = Field(None, description="Prompts of the sample grids; None: the instance prompt and a held-out caption.")
    sample_seeds: list[int] = Field([0, 1], description="One grid column per seed.")
    sample_steps: int | None = Field(None, ge=1, le=200, description="Denoising steps per sample; None: 25 on a "
                                                                     "GPU, 8 on a CPU.")
    guidance_scale: float = Field(7.0, ge=0, le=30, description="Classifier-free guidance scale of samples.")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Share of steps with linear learning-rate warm-up.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    min_image_side: int | None = Field(None, ge=8, description="Refuse smaller images; None: half the resolution "
                                                               "(trainer.limits.min_image_side).")
    max_pixels: int = Field(L.MAX_IMAGE_PIXELS, ge=1, description="Pixel cap per image (decompression bombs).")
    precision: Precision = Field("auto", description="'auto' picks bf16 where the hardware runs it fast, else fp32.")
    seed: int = Field(0, description="Seed for the split, augmentation, LoRA init, noise and samples.")

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

    @field_validator("resolution")
    @classmethod
    def _multiple_of_8(cls, value: int | None) -> int | None:
        if value is not None and value % 8:
            raise ValueError(f"resolution {value} is not a multiple of 8")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "ImageTrainConfig":
        problems = []
        if self.eval_every is not None and self.steps is not None and self.eval_every > self.steps:
            problems.append(f"eval_every ({self.eval_every}) is larger than steps ({self.steps})")
        if not self.sample_seeds:
            problems.append("give at least one sample seed")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def lora_alpha(self) -> float:
        """Alpha as LoRA reads it (after ``size_defaults`` has filled ``rank``)."""
        return self.alpha if self.alpha is not None else float(self.rank)
