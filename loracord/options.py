"""``loracord train KIND``: one command per kind of run, its options built from the kind's config.

Each training setting is declared once (``trainer.config``, the kind's config); this module
turns the declaration into typer options instead of retyping it:

- every setting becomes ``--name-with-dashes`` (``lr_scheduler``: ``--lr-scheduler``) with the
  setting's description as its help; a list setting takes one value per use of its singular
  (``prompts``: ``--prompt``, repeatable); a switch is ``--x/--no-x``;
- an option left out is not chosen (``None``): the preset sizes it, and ``loracord tune``'s
  ``--set`` fixes the same names;
- values are checked by the config itself, so a bad value is the one error line every edge shows;
- the run's own fields are the command's: ``DATA...``, ``--out/-o``, ``--base`` (required where
  the kind has no default base), ``--preset``, ``--seed`` and ``--resume``.
"""

from __future__ import annotations

import inspect
import types
import typing
from pathlib import Path
from typing import Any, Callable, Literal, Optional

import typer

FIRST = ("base", "preset")  # shown before the settings; ``seed`` and ``resume`` after them
LAST = ("seed", "resume")


def train_command(kind, summary: str, show: Callable[[Any], None]) -> Callable[..., None]:
    """The ``loracord train KIND`` command of ``kind`` (a ``trainer.kinds.RunKind``): ``summary``
    is its help line, ``show(result)`` prints what the run made."""
    fields = kind.config_class.model_fields
    order = [*FIRST, *(n for n in fields if n not in (*FIRST, *LAST, "data", "out")), *LAST]
    params = [_parameter("data", list[Path], typer.Argument(..., help=fields["data"].description)),
              _parameter("out", Path, typer.Option(..., "--out", "-o", help=fields["out"].description))]
    params += [_setting(name, fields[name]) for name in order]

    def command(**values) -> None:
        from trainer.spec import RunSpec

        from .interrupt import cancel_on_ctrl_c
        from .progress import RichProgress

        data, out, resume = values.pop("data"), values.pop("out"), values.pop("resume")
        own = {name: values.pop(name) for name in ("base", "preset", "seed")}
        chosen = {name: value for name, value in values.items() if value not in (None, [])}
        spec = RunSpec.build(kind=kind.name, data=[str(p) for p in data], settings=chosen, **own)
        with RichProgress() as progress:
            result = spec.train(out, resume=resume, on_event=progress, cancel=cancel_on_ctrl_c(out))
        show(result)

    command.__signature__ = inspect.Signature(params)
    command.__name__ = command.__qualname__ = f"train_{kind.name}"
    command.__doc__ = summary
    return command


def _parameter(name: str, annotation, default) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default)


def _setting(name: str, field) -> inspect.Parameter:
    """The option of one setting: its run's own default for ``base``/``seed``/``resume``, else None (not chosen)."""
    plain = _plain(field.annotation)
    if name in ("base", "seed", "resume"):
        default = ... if field.is_required() else field.default
        return _parameter(name, plain, typer.Option(default, help=field.description))
    # the help shows the run's default, though the option's own is None (not chosen)
    shown = str(field.default) if field.default is not None else False
    if typing.get_origin(plain) is list:
        flag = "--" + name.removesuffix("s").replace("_", "-")
        return _parameter(name, Optional[plain], typer.Option(None, flag, help=f"{field.description} (repeatable)",
                                                              show_default=shown))
    return _parameter(name, Optional[plain], typer.Option(None, help=field.description, show_default=shown))


def _plain(annotation):
    """``int | None`` -> ``int``; a ``Literal`` of choices -> ``str`` (the config names the choices when refused)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if typing.get_origin(annotation) is Literal:
        return str
    return annotation
