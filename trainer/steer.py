"""Quick tries steered by members' comparisons: which of two trials' samples was closer to what they want.

A comparison is ``{"better": params, "worse": params}``: the settings of the trial a member
chose and of the one they passed over (one entry per member's answer). ``proposals`` hands them
to optuna-dashboard's preferential optimisation (``PreferentialGPSampler``: a Gaussian process
over pairwise preferences, Takeno et al. 2023) and asks it for the settings to try first in the
next round. ``describe`` says in words how the comparisons leaned; it imports nothing heavy, so
the bot can call it.

The preferential GP enumerates a discrete space when it can and warns (and searches poorly)
on categories mixed with continuous ranges, so it sees the search space on a grid: the rate on
``LR_POINTS`` log-spaced values, other ranges on ``FLOAT_POINTS`` even ones; categories (rank,
steps) stay as they are. Earlier trials' settings are snapped to that grid.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

LR_POINTS = 9  # a decade either side of the preset's rate: about 1.7x apart
FLOAT_POINTS = 7
WORDS = {"lr": "rate", "rank": "rank", "lora_dropout": "dropout", "augment": "augmentation", "steps": "steps"}


def describe(comparisons: list[dict], *, most: int = 2) -> str | None:
    """How the comparisons leaned, e.g. 'members preferred higher rank in 5 of 6 comparisons and
    lower rate in 4 of 6 comparisons' (per setting, counted over the comparisons where it differed); None
    when no setting leaned either way."""
    leanings = []
    for name in WORDS:
        higher = lower = 0
        for c in comparisons:
            better, worse = c["better"].get(name), c["worse"].get(name)
            if better is None or worse is None or better == worse:
                continue
            higher, lower = (higher + 1, lower) if better > worse else (higher, lower + 1)
        if higher != lower:
            n = higher + lower
            leanings.append((max(higher, lower) / n, n, "higher" if higher > lower else "lower", name, max(higher, lower)))
    leanings.sort(key=lambda x: (-x[0], -x[1]))
    parts: list[tuple[list[str], int, int]] = []  # settings that leaned as often are said together
    for _, n, way, name, k in leanings[:most]:
        if parts and parts[-1][1:] == (k, n):
            parts[-1][0].append(f"{way} {WORDS[name]}")
        else:
            parts.append(([f"{way} {WORDS[name]}"], k, n))
    said = [f"{' and '.join(words)} in {k} of {n} comparisons" for words, k, n in parts]
    return ("members preferred " + " and ".join(said)) if said else None


def grid_space(space: dict) -> dict:
    """The search space as the preferential GP sees it: every knob a list of choices."""
    from optuna.distributions import CategoricalDistribution

    grid = {}
    for name, dist in space.items():
        if isinstance(dist, CategoricalDistribution):
            grid[name] = CategoricalDistribution(list(dist.choices))
        elif getattr(dist, "log", False):
            lo, hi = math.log(dist.low), math.log(dist.high)
            grid[name] = CategoricalDistribution([_round(math.exp(lo + (hi - lo) * i / (LR_POINTS - 1)), dist)
                                                  for i in range(LR_POINTS)])
        else:
            grid[name] = CategoricalDistribution([_round(dist.low + (dist.high - dist.low) * i / (FLOAT_POINTS - 1), dist)
                                                  for i in range(FLOAT_POINTS)])
    return grid


def snap(params: dict[str, Any], grid: dict, fill: dict[str, Any]) -> dict[str, Any]:
    """``params`` on the grid: each value the nearest choice (log distance for the rate); a knob the
    trial did not search takes ``fill``'s value (the preset's)."""
    snapped = {}
    for name, dist in grid.items():
        value = params.get(name, fill.get(name))
        choices = dist.choices
        if value is None:
            snapped[name] = choices[len(choices) // 2]
            continue
        far = (lambda c: abs(math.log(c) - math.log(value))) if name == "lr" and value > 0 else (lambda c: abs(c - value))
        snapped[name] = min(choices, key=far)
    return snapped


def proposals(space: dict, comparisons: list[dict], n: int, *, seed: int = 0,
              fill: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Up to ``n`` distinct settings the preferential GP proposes after ``comparisons``; [] when
    no comparison tells two settings apart (a round without comparisons is not steered)."""
    import optuna
    from optuna.trial import create_trial
    from optuna_dashboard.preferential import create_study
    from optuna_dashboard.preferential.samplers.gp import PreferentialGPSampler

    grid = grid_space(space)
    if not grid or n < 1:
        return []
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the module is marked experimental; say it once, in docs/tune.md
        study = create_study(n_generate=n, sampler=PreferentialGPSampler(seed=seed))
        numbers: dict[tuple, int] = {}

        def number(params: dict) -> int:
            settings = snap(params, grid, fill or {})
            key = tuple(sorted(settings.items()))
            if key not in numbers:
                study.add_trial(create_trial(params=settings, distributions=grid, value=0.0))
                numbers[key] = len(numbers)
            return numbers[key]

        pairs = [(number(c["better"]), number(c["worse"])) for c in comparisons]
        trials = study.get_trials(deepcopy=False)
        pairs = [(b, w) for b, w in pairs if b != w]  # the same setting on both sides says nothing
        if not pairs:
            return []
        for better, worse in pairs:
            study.report_preference(trials[better], trials[worse])
        found: list[dict] = []
        seen: list[dict] = []  # settings members already saw that the GP still rates best
        for _ in range(3 * n):  # each ask redraws the GP, so asking again can find another setting
            proposal = dict(study.ask(grid).params)
            if tuple(sorted(proposal.items())) in numbers:
                seen += [proposal] if proposal not in seen else []
                continue  # look for a new one near what they preferred first
            if proposal not in found:
                found.append(proposal)
            if len(found) == n:
                break
    return (found + seen)[:n]


def _round(value: float, dist) -> float:
    # four digits read well in the trial table; kept inside the range the rounding may leave
    return min(max(float(f"{value:.4g}"), dist.low), dist.high)
