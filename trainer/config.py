"""Every training setting both kinds share, declared once, and what every training config does.

A setting is one pydantic field: its type, its bounds, its default and its description. The
fields both kinds take live here in ``TrainConfig``; a field only one kind takes lives in that
kind's config (``TextTrainConfig``, ``ImageTrainConfig``), so the kinds a setting applies to are
the configs that hold it (``trainer.kinds.taking``). Every edge reads the declaration instead of
retyping it: the CLI builds its options and help from the fields (``loracord.options``), the
slash commands their ranges and descriptions (``bot.options``; ``slash`` gives a setting the
short text Discord shows), and docs/commands.md's table of ``/train start``'s options is
generated from those (a test fails when it is stale). Cross-field checks live once, in
``TrainConfig._problems`` (a kind adds its own).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo

from .errors import ConfigError
from .presets import Preset

Precision = Literal["auto", "bf16", "fp16", "fp32"]
Quantize = Literal["auto", "none", "8bit", "4bit"]
Schedule = Literal["cosine", "linear", "constant"]


def problems(exc: ValidationError, prefix: str = "") -> list[str]:
    """pydantic's errors as ``field: what is wrong`` lines, the one format every edge shows."""
    lines = []
    for e in exc.errors():
        where = ".".join(map(str, e["loc"]))
        message = e["msg"].removeprefix("Value error, ")
        lines.append(f"{prefix}{where}: {message}" if where else f"{prefix.rstrip('.') or 'config'}: {message}")
    return lines


def settings_error(lines: list[str]) -> ConfigError:
    return ConfigError("invalid training settings: " + "; ".join(lines))


def slash(text: str, choices: tuple[str, ...] | None = None) -> dict[str, Any]:
    """A setting's words in a slash command (at most 100 characters, Discord's limit), as
    ``Field(json_schema_extra=slash(...))``; a setting without them is not a slash option.
    ``choices``: the values a ``str`` setting takes (its validator's), offered as the option's choices."""
    assert len(text) <= 100, text
    return {"slash": text, **({"enum": list(choices)} if choices else {})}


def bounds(field: FieldInfo) -> tuple[Any, Any]:
    """A setting's inclusive range ``(low, high)``, None where it is open; an exclusive bound of
    an integer setting moves in by one. An exclusive bound of a float stays as it is: a caller
    that needs an inclusive one (a slash command's range) must refuse it."""
    low = high = None
    for rule in field.metadata:
        if isinstance(rule, Ge):
            low = rule.ge
        elif isinstance(rule, Gt):
            low = rule.gt + 1 if isinstance(rule.gt, int) else rule.gt
        elif isinstance(rule, Le):
            high = rule.le
        elif isinstance(rule, Lt):
            high = rule.lt - 1 if isinstance(rule.lt, int) else rule.lt
    return low, high


class TrainConfig(BaseModel):
    """Base of ``TextTrainConfig`` and ``ImageTrainConfig``: the settings both take; unknown fields are refused.

    A kind whose runs want another default for a shared setting names it in ``kind_defaults``
    (the bounds and the words stay the ones declared here); a setting added once runs were being
    saved names, in ``added_later``, the value runs saved without it trained with."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    kind_defaults: ClassVar[dict[str, Any]] = {}
    # Settings added after runs were already being saved, with the value those runs trained with: a
    # run resumed from a checkpoint whose config lacks one goes on as it began (trainer.rundir).
    added_later: ClassVar[dict[str, Any]] = {"loraplus_ratio": 1.0}

    out: str = Field(description="Run folder to write (adapter, metrics, samples, chart).")
    resume: bool = Field(False, description="Continue from the run folder's latest checkpoint.")
    preset: Preset | None = Field(None, description="'quick', 'balanced' or 'best': sizes every setting left out "
                                                    "(docs/presets.md); default: balanced.")
    steps: int | None = Field(None, ge=1, le=100_000, description="Optimizer steps; default: sized to the data.",
                              json_schema_extra=slash("Optimizer steps (overrides the preset)"))
    lr: float | None = Field(None, ge=1e-6, le=1.0, description="Peak learning rate (AdamW); default: sized to "
                                                                "the data.",
                             json_schema_extra=slash("Peak learning rate (overrides the preset)"))
    lr_scheduler: Schedule = Field("cosine", description=(
        "How the learning rate moves after the warm-up: 'cosine' decays to 10% of the peak, 'linear' falls to 10% "
        "in a straight line, 'constant' holds the peak."),
        json_schema_extra=slash("Learning-rate schedule after the warm-up (default: cosine decay)"))
    warmup_ratio: float = Field(0.06, ge=0, lt=1, description="Share of steps with linear learning-rate warm-up.")
    rank: int | None = Field(None, ge=1, le=256, description="LoRA rank; default: sized to the data.",
                             json_schema_extra=slash("LoRA rank: capacity of the adapter"))
    alpha: float | None = Field(None, gt=0, description="LoRA alpha; default: 2 x rank for text, equal to rank "
                                                        "for images.")
    loraplus_ratio: float = Field(4.0, ge=1, le=64, description=(
        "LoRA+: each adapted layer's B matrix learns at this many times the learning rate, its A matrix at the "
        "rate itself (peft's create_loraplus_optimizer); 1 is plain LoRA. Default 4 for text, 1 for images "
        "(docs/benchmarks.md)."))
    lora_dropout: float | None = Field(None, ge=0, lt=1, description="Dropout on the LoRA path; default: sized "
                                                                     "to the data.")
    dora: bool = Field(False, description=(
        "DoRA (peft's weight-decomposed LoRA): each adapted layer also trains a magnitude per output feature. "
        "Off in every preset; image runs with it write the diffusers file only (docs/trainer.md)."),
        json_schema_extra=slash("DoRA: LoRA plus a trained magnitude per output (image runs: diffusers file only)"))
    augment: float | None = Field(None, ge=0, le=1, description="Augmentation strength 0..1 (0 turns it off); "
                                                                "default: sized to the data.")
    eval_every: int | None = Field(None, ge=1, description="Validate and checkpoint every N steps; default: about "
                                                           "8 times a run.")
    patience: int = Field(3, ge=0, description="Stop after N validations without improvement (0: never stops early).")
    min_delta: float = Field(0.001, ge=0, description="Smallest validation-loss drop that counts as improvement.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    precision: Precision = Field("auto", description="'auto' picks bf16 where the hardware runs it fast, else "
                                                     "fp32; or 'bf16', 'fp16', 'fp32'.")
    quantize: Quantize = Field("auto", description=(
        "Load the frozen base quantised (QLoRA; LoRA and optimizer stay float32): '4bit', '8bit', 'none', or "
        "'auto': quantised only where the base would not leave room for training (docs/trainer.md)."),
        json_schema_extra=slash("Frozen base in 4bit/8bit (QLoRA); auto: only where it would not fit"))
    threads: int | None = Field(None, ge=1, description="CPU threads for torch; default: torch's choice.")
    holdout: str | None = Field(None, description="'I/K': validate on fold I of K (trainer.folds), train on the "
                                                  "rest; 'none': train on every example, no validation; default: "
                                                  "the val_fraction split.")
    seed: int = Field(0, description="Random seed: data split, augmentation, LoRA init, dropout, noise and samples.",
                      json_schema_extra=slash("Random seed, for a repeatable run"))

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if cls.kind_defaults:
            for name, value in cls.kind_defaults.items():
                cls.__pydantic_fields__[name].default = value  # the subclass's own copy of the field
            cls.model_rebuild(force=True)

    @field_validator("holdout")
    @classmethod
    def _holdout(cls, value: str | None) -> str | None:
        from .folds import check_holdout

        return check_holdout(value)

    @model_validator(mode="after")
    def _consistent(self) -> "TrainConfig":
        found = self._problems()
        if found:
            raise ValueError("; ".join(found))
        return self

    def _problems(self) -> list[str]:
        """Combinations of settings that do not work together; a kind's config adds its own."""
        if self.eval_every is not None and self.steps is not None and self.eval_every > self.steps:
            return [f"eval_every ({self.eval_every}) is larger than steps ({self.steps})"]
        return []

    @classmethod
    def build(cls, **kwargs):
        """Like the constructor, but raises ``ConfigError`` listing every bad field at once."""
        try:
            return cls(**kwargs)
        except ValidationError as exc:
            raise settings_error(problems(exc)) from exc
