"""Slash options of training settings, read from the trainer's one declaration of each (``trainer.config``).

discord.py reads a command's options from its signature, so a command still names each option
it offers; their types, ranges and words come from here:

- ``Setting["steps"]`` is the option type of the setting ``steps``: optional, with the setting's
  range (``app_commands.Range``) or its choices (a ``Literal``), so Discord refuses what the
  trainer would, at the same bounds. ``Setting["batch_size", IMAGE]`` picks the kind whose
  declaration to read when the kinds declare a setting differently.
- ``descriptions("steps", ...)`` are the words the options show: the setting's ``slash`` text,
  after "Image sessions: " where only one kind's runs take it.
"""

from __future__ import annotations

import types
import typing
from typing import Any, Literal, Optional

from discord import app_commands
from pydantic.fields import FieldInfo

from trainer import kinds
from trainer.config import TrainConfig, bounds


def declared(name: str, kind: kinds.RunKind | None = None) -> FieldInfo:
    """The declaration of the setting ``name``: the one both kinds share, or the one kind's that takes it."""
    if kind is None and name in TrainConfig.model_fields:
        return TrainConfig.model_fields[name]
    holders = [kind] if kind is not None else list(kinds.taking(name))
    if not holders or name not in holders[0].settings:
        raise KeyError(f"no training setting {name!r}" + (f" for {kind.name} runs" if kind else ""))
    if len(holders) > 1:
        raise TypeError(f"{name!r} is declared by each kind: name the kind, Setting[{name!r}, KIND]")
    return holders[0].config_class.model_fields[name]


def choices(field: FieldInfo) -> tuple | None:
    """The values a setting takes, when it is a choice: a ``Literal`` or a declared ``enum``."""
    for arg in (field.annotation, *typing.get_args(field.annotation)):
        if typing.get_origin(arg) is Literal:
            return typing.get_args(arg)
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    return tuple(extra["enum"]) if "enum" in extra else None


def value_type(field: FieldInfo) -> type:
    """The plain type of a setting's values (``int | None`` -> ``int``)."""
    annotation = field.annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    return annotation


def option_type(name: str, kind: kinds.RunKind | None = None) -> Any:
    """The slash option type of the setting ``name`` (see the module docstring), not yet optional."""
    field = declared(name, kind)
    values = choices(field)
    if values:
        return Literal[values]
    plain = value_type(field)
    low, high = bounds(field)
    if plain is float and any(type(rule).__name__ in ("Gt", "Lt") for rule in field.metadata):
        raise TypeError(f"{name!r} has an exclusive bound: Discord's ranges are inclusive, declare ge/le")
    if plain in (int, float) and (low is not None or high is not None):
        return app_commands.Range[plain, low, high]
    return plain


class Setting:
    """``Setting["steps"]``: an optional slash option with the setting's declared type and range."""

    def __class_getitem__(cls, key):
        name, kind = key if isinstance(key, tuple) else (key, None)
        return Optional[option_type(name, kind)]


def description(name: str, kind: kinds.RunKind | None = None) -> str:
    """What the option of setting ``name`` says in Discord (``slash`` in its declaration)."""
    extra = declared(name, kind).json_schema_extra
    words = extra.get("slash") if isinstance(extra, dict) else None
    if not words:
        raise KeyError(f"the setting {name!r} has no slash text: give it json_schema_extra=slash(...)")
    takers = kinds.taking(name)
    if len(takers) == 1 and len(kinds.KINDS) > 1:
        return f"{takers[0].name.capitalize()} sessions: {words}"
    return words


def descriptions(*names: str) -> dict[str, str]:
    """``app_commands.describe(**descriptions("steps", "lr"))``: each option's words, from its declaration."""
    return {name: description(name) for name in names}
