"""The settings of one text training run, validated once at the edge.

Every field has a default and a description; the settings image runs take too are declared
once in ``trainer.config.TrainConfig``, the ones only text runs take here. Fields left as
``None`` are sized to the dataset by ``size_defaults`` once the data has been read (see
``trainer.text.presets``): a user only names what they want to change.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from ..config import TrainConfig, slash
from ..errors import ConfigError
from .kinds import TEXT_KIND_CHOICES


class TextTrainConfig(TrainConfig):
    """One LoRA fine-tuning run of a causal language model on a few texts."""

    data: list[str] = Field(description="Text files: .txt/.md, .jsonl (text, prompt/completion or messages), .csv.")
    base: str = Field("smollm2-135m", description="Base model: hub id, local folder, .gguf file or 'smollm2-135m'.")
    target_modules: str | None = Field(
        None, description="Comma-separated module names, or 'all-linear'; default: the attention projections of "
                          "the architecture.")
    text_kind: str = Field("auto", description="What the text is, which decides the augmentations it gets "
                                               "(trainer.text.kinds): 'auto' detects it, or 'code', "
                                               "'dialogue', 'verse', 'prose'.",
                           json_schema_extra=slash("what the text is, which picks its augmentation (auto: as "
                                                   "/data report shows)", choices=TEXT_KIND_CHOICES))
    neftune_alpha: float = Field(0.0, ge=0, le=100, description="NEFTune: noise on the input embeddings while "
                                                               "training (the paper used 5 to 15); 0 = off, the "
                                                               "default until the benchmarks say otherwise.")
    batch_size: int = Field(4, ge=1, le=512, description="Packed sequences per micro-batch.")
    grad_accum: int = Field(1, ge=1, le=512, description="Micro-batches per optimizer step.")
    seq_len: int = Field(256, ge=16, le=32_768, description="Tokens per packed sequence.")
    val_fraction: float = Field(0.1, gt=0, le=0.5, description="Share of examples held out for validation.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay on LoRA weights.")
    prompts: list[str] | None = Field(None, description="Prompts sampled before and after training; default: from "
                                                        "held-out data.")
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
