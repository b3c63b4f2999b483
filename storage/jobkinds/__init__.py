"""The job kinds, registered in one place: the queue, the worker and the job process look them up here.

=================  =========================================================================
``train_text``     train a text LoRA from a run spec (``storage.jobkinds.train``)
``train_image``    train an image LoRA from a run spec (``storage.jobkinds.train``)
``tune``           quick tries: an Optuna search, then a full run of the best (``.tune``)
``sample``         generate from a finished run's or a trial's adapter (``.sample``)
``caption``        caption a session's images with a vision-language model (``.caption``)
``export``         a finished run's adapter in an export format, on a worker (``.export``)
``noop``/``sleep`` a trivial job shaped like a training run, for the queue's tests (``.sleep``)
=================  =========================================================================

A new kind is one module beside these that defines a ``JobKind`` (see ``storage.jobkinds.base``)
and one line in ``_MODULES`` below.
"""

from __future__ import annotations

from trainer.errors import UserError

from . import caption, export, sample, sleep, train, tune
from .base import LANES, JobKind

_MODULES = (train, tune, sample, caption, export, sleep)

KINDS: dict[str, JobKind] = {kind.name: kind for module in _MODULES
                             for kind in getattr(module, "KINDS", None) or (module.KIND,)}


def names() -> tuple[str, ...]:
    return tuple(KINDS)


def get(name: str) -> JobKind:
    """The kind called ``name``; a ``UserError`` naming the known kinds otherwise."""
    try:
        return KINDS[name]
    except KeyError:
        raise UserError(f"unknown job kind {name!r}; expected one of {', '.join(KINDS)}") from None


__all__ = ["JobKind", "KINDS", "LANES", "get", "names"]
