"""What every training config shares: strict fields and one error listing every bad field."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import ConfigError

Precision = Literal["auto", "bf16", "fp16", "fp32"]


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


class TrainConfig(BaseModel):
    """Base of ``TextTrainConfig`` and ``ImageTrainConfig``: unknown fields are refused."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    out: str = Field(description="Run folder to write.")
    resume: bool = Field(False, description="Continue from the run folder's latest checkpoint.")
    threads: int | None = Field(None, ge=1, description="CPU threads for torch; None keeps torch's default.")
    holdout: str | None = Field(None, description="'I/K': validate on fold I of K (trainer.folds), train on the "
                                                  "rest; 'none': train on every example, no validation; None: "
                                                  "the val_fraction split.")

    @field_validator("holdout")
    @classmethod
    def _holdout(cls, value: str | None) -> str | None:
        from .folds import check_holdout

        return check_holdout(value)

    @classmethod
    def build(cls, **kwargs):
        """Like the constructor, but raises ``ConfigError`` listing every bad field at once."""
        try:
            return cls(**kwargs)
        except ValidationError as exc:
            raise settings_error(problems(exc)) from exc
