"""The settings of one text training run, validated once at the edge.

Every field has a default and a description. Fields left as ``None`` are sized to the dataset
by ``size_defaults`` once the data has been read (see ``trainer.text.presets``): a user
only names what they want to change.
"""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from ..config import Precision, TrainConfig
from ..errors import ConfigError
from ..presets import Preset


class TextTrainConfig(TrainConfig):
    """One LoRA fine-tuning run of a causal language model on a few texts."""

    data: list[str] = Field(description="Dataset files (.txt, .md, .jsonl, .csv).")
    base: str = Field("smollm2-135m", description="Base model: hub id, local folder, .gguf file or built-in name.")
    preset: Preset | None = Field(
        None, description="Which preset sizes the None knobs (docs/presets.md); None means 'balanced'.")
    steps: int | None = Field(None, ge=1, le=100_000, description="Optimizer steps; None sizes it to the data.")
    lr: float | None = Field(None, gt=0, le=1.0, description="Peak learning rate; None sizes it to the data.")
    rank: int | None = Field(None, ge=1, le=256, description="LoRA rank.")
    alpha: float | None = Field(None, gt=0, description="LoRA alpha; None means 2 x rank.")
    lora_dropout: float | None = Field(None, ge=0, lt=1, description="Dropout on the LoRA path.")
    target_modules: str | None = Field(
        None, description="Comma-separated module names or 'all-linear'; None picks the attention "
                          "projections of the architecture.")
    augment: float | None = Field(None, ge=0, le=1, description="Augmentation strength, 0 = off.")
    text_kind: str = Field("auto", description="What the text is, which decides the augmentations it gets "
                                               "(trainer.text.kinds): 'auto' detects it, or 'code', "
                                               "'dialogue', 'verse', 'prose'.")
    neftune_alpha: float = Field(0.0, ge=0, le=100, description="NEFTune: noise on the input embeddings while "
                                                               "training (the paper used 5 to 15); 0 = off, the "
                                                               "default until the benchmarks say otherwise.")
    batch_size: int = Field(4, ge=1, le=512, description="Packed sequences per micro-batch.")
    grad_accum: int = Field(1, ge=1, le=512, description="Micro-batches per optimizer step.")
    seq_len: int = Field(256, ge=16, le=32_768, description="Tokens per packed sequence.")
    val_fraction: float = Field(0.1, gt=0, le=0.5, description="Share of examples held out for validation.")
    eval_every: int | None = Field(None, ge=1, description="Validate (and checkpoint) every N steps; None: ~8 times a run.")
    patience: int = Field(3, ge=0, description="Stop after N validations without improvement; 0 never stops early.")
    min_delta: float = Field(0.001, ge=0, description="Smallest validation-loss drop that counts as improvement.")
    warmup_ratio: float = Field(0.06, ge=0, lt=1, description="Share of steps with linear learning-rate warm-up.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay on LoRA weights.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    precision: Precision = Field("auto", description="'auto' picks bf16 where the hardware runs it fast, else fp32.")
    seed: int = Field(0, description="Seed for the split, augmentation, LoRA init and dropout.")
    prompts: list[str] | None = Field(None, description="Prompts sampled before and after training; None: from held-out data.")
    max_new_tokens: int = Field(48, ge=1, le=1024, description="Tokens generated per sample.")

    @field_validator("data")
    @classmethod
    def _some_data(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("give at least one dataset file")
        return value

    @field_validator("text_kind")
    @classmethod
    def _text_kind(cls, value: str) -> str:
        from .kinds import check_text_kind

        try:
            return check_text_kind(value)
        except ConfigError as exc:
            raise ValueError(str(exc).removeprefix("text_kind ")) from None

    @field_validator("target_modules")
    @classmethod
    def _modules(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        if not value or any(not part.strip() for part in value.split(",")):
            raise ValueError("target_modules must be 'all-linear' or comma-separated module names")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "TextTrainConfig":
        problems = []
        if self.eval_every is not None and self.steps is not None and self.eval_every > self.steps:
            problems.append(f"eval_every ({self.eval_every}) is larger than steps ({self.steps})")
        if problems:
            raise ValueError("; ".join(problems))
        return self
