"""Cross-validation folds for tiny datasets: which examples a run holds out.

At a handful of examples one held-out example cannot tell two settings apart, so quick tries
(``trainer.tune``) score each setting on ``K`` folds instead: fold ``I`` holds out every
``K``-th example of a seeded shuffle and trains on the rest, so the folds are disjoint and
together cover every example. The final run then trains on all of them (``holdout="none"``).

A run asks for its split with the trainer setting ``holdout``: ``"I/K"`` (``I`` counted from 0)
or ``"none"``; left unset, the run keeps its usual ``val_fraction`` split. This module imports
nothing heavy, so the bot reads ``FOLDS_BELOW`` and ``folds_for`` from it.
"""

from __future__ import annotations

import random
import re
from typing import Sequence, TypeVar

T = TypeVar("T")

# Below this many examples the search cross-validates; see docs/tune.md for why 16 and 3.
FOLDS_BELOW = 16
MAX_FOLDS = 3
HOLDOUT = re.compile(r"^(none|(\d+)/(\d+))$")


def folds_for(n_examples: int) -> int:
    """How many folds the search uses for ``n_examples``: 0 (one split) at ``FOLDS_BELOW`` or more."""
    if n_examples >= FOLDS_BELOW:
        return 0
    return max(2, min(MAX_FOLDS, n_examples // 2))


def cv_trials(trials: int | None, folds: int) -> int | None:
    """Settings a cross-validated search tries: each costs ``folds`` runs of the preset's length,
    so ``trials / folds`` of them (at least 2: the preset's setting and one other) spend about
    the steps of ``trials`` single-split trials."""
    return None if trials is None else max(2, round(trials / folds))


def check_holdout(value: str | None) -> str | None:
    """``value`` if it names a split; raises ``ValueError`` saying the form otherwise."""
    if value is None:
        return None
    found = HOLDOUT.match(value)
    if not found or (found.group(2) is not None and not int(found.group(2)) < int(found.group(3)) >= 2):
        raise ValueError(f"holdout must be 'I/K' with 0 <= I < K and K >= 2, or 'none'; got {value!r}")
    return value


def fold_indices(n: int, k: int, seed: int) -> list[list[int]]:
    """``k`` disjoint folds of ``range(n)`` covering it, sizes differing by at most one, each sorted."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return [sorted(order[i::k]) for i in range(k)]


def split_holdout(examples: Sequence[T], holdout: str, seed: int) -> tuple[list[T], list[T]]:
    """(train, val) for a ``holdout`` setting; both keep the input order."""
    check_holdout(holdout)
    if holdout == "none":
        return list(examples), []
    i, k = (int(x) for x in holdout.split("/"))
    held = set(fold_indices(len(examples), k, seed)[i])
    return ([e for j, e in enumerate(examples) if j not in held],
            [e for j, e in enumerate(examples) if j in held])
