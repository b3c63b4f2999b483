"""Cross-validation folds for tiny datasets: which examples a run holds out.

At a handful of examples one held-out example cannot tell two settings apart, so quick tries
(``trainer.tune``) score each setting on ``K`` folds instead: fold ``I`` holds out every
``K``-th example of a seeded shuffle and trains on the rest, so the folds are disjoint and
together cover every example. The final run then trains on all of them (``holdout="none"``).
The search spends a step budget (``cv_budget``) about what a one-split search of as many
tries would spend.

A run asks for its split with the trainer setting ``holdout``: ``"I/K"`` (``I`` counted from 0)
or ``"none"``; left unset, the run keeps its usual ``val_fraction`` split. This module imports
nothing heavy, so the bot reads ``FOLDS_BELOW``, ``folds_for`` and ``cv_trials`` from it.
"""

from __future__ import annotations

import random
import re
from typing import Sequence, TypeVar

T = TypeVar("T")

# Below this many examples the search cross-validates; see docs/tune.md for why 128 and 2.
FOLDS_BELOW = 128
MAX_FOLDS = 2
HOLDOUT = re.compile(r"^(none|(\d+)/(\d+))$")


def folds_for(n_examples: int) -> int:
    """How many folds the search uses for ``n_examples``: 0 (one split) at ``FOLDS_BELOW`` or more."""
    if n_examples >= FOLDS_BELOW:
        return 0
    return max(2, min(MAX_FOLDS, n_examples // 2))


def fold_steps(steps: int, folds: int) -> int:
    """Steps one fold run trains for a preset of ``steps`` on all examples: the preset's passes
    over the fold's (k-1)/k of the examples."""
    return max(1, round(steps * (folds - 1) / folds))


def split_steps(trials: int, steps: int) -> int:
    """About what a one-split search of ``trials`` tries of ``steps`` spends with successive
    halving (reduction factor 3): the first try in full, a third of that for each other."""
    return round(steps * (1 + (trials - 1) / 3))


def cv_budget(trials: int | None, steps: int, folds: int, fold_length: int | None = None) -> int | None:
    """Optimizer steps a cross-validated search of ``trials`` may spend (None: no limit but time).

    What the one-split search would spend (``split_steps``), but at least two settings' folds
    (``fold_length`` steps each, ``fold_steps`` by default): a choice needs the preset's setting
    and one other. A setting starts only while the budget left pays for all its folds."""
    if trials is None:
        return None
    fold_length = fold_length or fold_steps(steps, folds)
    return max(2 * folds * fold_length, split_steps(trials, steps))


def cv_trials(trials: int | None, folds: int) -> int | None:
    """About how many settings a cross-validated search of ``trials`` scores on all its folds
    at the preset's lengths (``cv_budget`` over one setting's folds; early stopping may leave
    room for more, and at most ``trials``)."""
    if trials is None:
        return None
    nominal = 120  # the ratio does not depend on the preset's length; a round one avoids rounding noise
    return min(trials, max(2, cv_budget(trials, nominal, folds) // (folds * fold_steps(nominal, folds))))


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
