"""Hyperparameter search: a handful of short runs of the real trainer, the bad ones cut early.

``tune(kind, data, out, ...)`` sizes a starting point to the dataset with a preset, then runs an
Optuna study around it: a seeded TPE sampler proposes a learning rate (log scale), LoRA rank,
LoRA dropout, augmentation strength and step count; every trial is an ordinary training run in
``OUT/trials/NNNN/``; each validation loss the trainer reports goes to the trial, and when the
pruner (successive halving by default) says the trial is behind, the trial's ``CancelToken``
stops the trainer at its next step and the trial ends ``pruned``. With ``grid`` the study walks
explicit value lists instead (``GridSampler``).

The study lives in ``OUT/study.db`` (SQLite) unless ``storage`` names another Optuna storage,
so a search can be resumed and inspected, and several workers pointed at one shared storage
(PostgreSQL/MySQL URL, ``redis://`` or a journal file on a shared disk) run its trials at once.
A worker killed mid-trial leaves that trial RUNNING; the next ``tune`` on this machine marks
it failed and re-queues its parameters, and the retry continues from the killed trial's last
checkpoint (on other machines the storage's heartbeat fails it after a grace period).

At the end ``tune`` writes the trial table, a chart of validation loss per trial, the best
parameters and the samples of the top trials (see ``trainer.tune_report``), then trains the
best parameters once more, in full, into ``OUT/best-run``.

Tiny datasets (fewer than ``trainer.folds.FOLDS_BELOW`` examples) are cross-validated: each
trial trains its setting once per fold (``trials/NNNN/fold-I/``, holding out fold ``I``), its
score is the mean over the folds of each fold's best validation loss, and ``steps`` is not
searched but read from the folds' curves (the mean best step, scaled from the folds' training
share to all examples). The search spends a step budget (``trainer.folds.cv_budget``): about
what a one-split search of as many tries spends, so it scores fewer, better-measured settings;
the preset's own setting is always the first. The full run then trains on every example
(``holdout="none"``) at the chosen steps. See docs/tune.md.

Every event the search passes on carries ``overall``: the steps of the whole search and its
full run, done and planned, a figure that only goes forward (``_Progress``).
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

from . import kinds
from .cancel import CancelToken
from .errors import Cancelled, ConfigError, TrainingError
from .events import EventCallback, ProgressEvent
from .folds import cv_budget, fold_steps, folds_for
from .presets import Preset

Kind = Literal[kinds.names()]
Pruner = Literal["successive-halving", "hyperband", "median", "none"]
SEARCHED = ("lr", "rank", "lora_dropout", "augment", "steps")
RANKS = (4, 8, 16, 32)
STEP_FACTORS = (0.5, 1.0, 1.5)  # trial lengths around the preset's, so steps is searched too
EVALS_PER_TRIAL = 8  # validations in a preset-length trial: the rungs the pruner compares at
FINISHED = ("complete", "pruned", "failed")


@dataclass
class TrialRow:
    """One trial as the table shows it."""

    number: int
    status: str  # complete, pruned, failed, running, waiting
    params: dict[str, Any]
    val_loss: float | None  # best validation loss it reached (also for pruned trials)
    steps: int  # optimizer steps it trained (its compute)
    seconds: float | None
    run_dir: str | None
    note: str = ""
    curve: list[tuple[int, float]] = field(default_factory=list)  # (step, validation loss)
    fold_losses: list[float] = field(default_factory=list)  # cross-validated: each fold's best validation loss
    fold_steps: list[int] = field(default_factory=list)  # ... and the step it was reached at
    cv_steps: int | None = None  # cross-validated: the steps a run on every example should train


@dataclass
class TuneResult:
    """What a search produced; the same is on disk in ``out``."""

    out: Path
    study_name: str
    storage: str
    baseline: dict[str, Any]  # the preset's settings, which the search starts from
    trials: list[TrialRow]
    best: TrialRow | None
    best_params: dict[str, Any]
    full_run: Path | None = None
    full_val_loss: float | None = None
    files: dict[str, Path] = field(default_factory=dict)
    folds: int = 0  # cross-validation folds per trial; 0: one validation split
    cv: dict[str, Any] | None = None  # cross-validated: how sure the choice is (``cv_summary``)
    budget: int | None = None  # cross-validated: the optimizer steps the search may spend (``cv_budget``)

    @property
    def steps_spent(self) -> int:
        """Optimizer steps trained by all trials (not counting the full run)."""
        return sum(row.steps for row in self.trials)


@dataclass
class Probe:
    """What the search needs to know about the data before the first trial."""

    n_train: int
    baseline: dict[str, Any]  # preset knobs for this data: steps, rank, lr, lora_dropout, augment
    eval_every: int
    train_tokens: int | None = None  # text only: turns a grid's "epochs" into steps
    shape: dict[str, int] = field(default_factory=dict)  # text only: batch_size, seq_len, grad_accum
    n_examples: int = 0  # train and validation together
    folds: int = 0  # cross-validation folds per trial (``trainer.folds.folds_for``); 0: one split

    def fold_length(self, fixed: dict[str, Any]) -> int:
        """Steps each fold run trains: the member's steps if they chose them, else ``fold_steps``."""
        return int(fixed.get("steps") or fold_steps(self.baseline["steps"], self.folds))


def tune(kind: Kind, data: Sequence[str | Path], out: str | Path, *, base: str | None = None,
         trials: int | None = 8, budget_minutes: float | None = None, preset: Preset = "balanced",
         settings: dict[str, Any] | None = None, grid: dict[str, list] | None = None,
         storage: str | None = None, study_name: str = "tune", pruner: Pruner = "successive-halving",
         seed: int = 0, enqueue: Sequence[dict[str, Any]] = (), full_run: bool = True,
         full_steps: int | None = None, top_k: int = 3, on_trial: Callable[[TrialRow], None] | None = None,
         on_event: EventCallback | None = None, cancel: CancelToken | None = None,
         folds: int | None = None, steer: Sequence[dict] = ()) -> TuneResult:
    """Search LoRA settings for ``data`` and train the best one in full; see the module docstring.

    ``trials`` is how many finished trials the study should hold (a resumed study runs only the
    rest); ``budget_minutes`` stops the search at that time, cutting the running trial short.
    ``settings`` are fixed trainer settings (``seq_len``, ``batch_size``, ``threads``, ...); a
    searched knob given there is not searched. ``grid`` maps settings (or ``epochs`` for text)
    to value lists and replaces the TPE search by a grid search. ``enqueue`` lists parameter
    sets to try first. ``on_trial`` gets each trial's row as it finishes, ``on_event`` every
    trainer event (with ``overall``, the whole search's progress). ``folds`` sets the
    cross-validation folds per trial (0: one split); None leaves it to the data's size
    (``trainer.folds.folds_for``); a cross-validated search also stops when its step budget
    (``result.budget``) cannot pay one more setting's folds. ``steer`` holds members'
    comparisons of an earlier round's trials (``trainer.steer``): the preferential GP's
    proposals are tried first, in place of the preset's setting. Raises ``UserError`` for bad
    input, ``Cancelled`` when ``cancel`` is set (the running trial keeps its checkpoint and is
    retried on resume).
    """
    import optuna

    out = Path(out)
    settings = dict(settings or {})
    problems = check_search(kind, trials, budget_minutes, grid, settings, pruner)
    if folds is not None and (folds < 0 or folds == 1):
        problems.append(f"folds must be 0 (one validation split) or at least 2, not {folds}")
    if problems:
        raise ConfigError("invalid search settings: " + "; ".join(problems))
    out.mkdir(parents=True, exist_ok=True)
    # Trials are built with the search's preset, so knobs that are neither searched nor fixed
    # (alpha, and any a grid leaves out) are sized the way the baseline was.
    fixed = {**settings, "data": [str(p) for p in data], "preset": preset, **({"base": base} if base else {})}
    probe, space, budget, enqueue = _plan_search(kind, fixed, settings, preset, grid, trials, folds, enqueue)
    steered = _steered(space, steer, trials, seed, probe) if steer and not grid else []
    if steered:  # the earlier round scored the preset's setting already; what members preferred goes first
        enqueue = enqueue[1:] if enqueue and enqueue[0] == _preset_setting(probe, space) else enqueue
    started = time.monotonic()
    deadline = started + budget_minutes * 60 if budget_minutes else None

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage_url = storage or f"sqlite:///{(out / 'study.db').resolve()}"
    storage_obj = open_storage(storage_url)
    study = optuna.create_study(storage=storage_obj, sampler=_sampler(grid, trials, seed),
                                pruner=_pruner(pruner, probe), study_name=study_name, direction="minimize",
                                load_if_exists=True)
    if study.trials and not grid:
        # A resumed search must not replay its first proposals: the seeded sampler starts from the
        # same random state each time, so seed it past the trials already run (still reproducible).
        study.sampler = _sampler(grid, trials, seed + len(study.trials))
    _remember_search(study, kind, preset, probe)
    retry_interrupted(study, storage_obj)
    for params in steered:
        study.enqueue_trial(params, user_attrs={"steered": True}, skip_if_exists=True)
    for params in enqueue:
        study.enqueue_trial(params, skip_if_exists=True)

    spent = sum(row.steps for row in trial_rows(study))  # a resumed search counts its earlier trials
    progress = _Progress(on_event, spent, _planned(trials, budget, probe, fixed, space, full_run, full_steps))
    objective = _Objective(kind, out, fixed, probe, space, deadline, cancel, progress)
    stop = _StopAt(trials, budget, probe.folds * probe.fold_length(fixed) if probe.folds else 0, progress)
    remaining = None if trials is None else trials - count_finished(study)
    if (remaining is None or remaining > 0) and not stop.out_of_budget(study):
        study.optimize(objective, n_trials=remaining, timeout=budget_minutes * 60 if budget_minutes else None,
                       catch=(TrainingError,), callbacks=[stop, _Report(on_trial)])

    result = _summarise(study, kind, out, study_name, storage_url, probe, budget, top_k)
    best = result.best
    if full_run and best is not None:
        params = {**result.best_params, **({"steps": full_steps} if full_steps else {})}
        if probe.folds:
            params["holdout"] = "none"  # the chosen setting trains on every example
        progress.plan(progress.done + int(params.get("steps") or fixed.get("steps") or probe.baseline["steps"]))
        result.full_val_loss = _full_run(kind, out / "best-run", fixed, probe, params, progress.watch(), cancel)
        result.full_run = out / "best-run"
    return result



def _plan_search(kind: Kind, fixed: dict, settings: dict, preset: Preset, grid: dict | None, trials: int | None,
                 folds: int | None, enqueue: Sequence[dict]) -> tuple[Probe, dict, int | None, list[dict]]:
    """(the data's probe, the search space, the cross-validated step budget or None, the settings to try first)."""
    probe = probe_data(kind, fixed, preset)
    if folds is not None:
        if folds > probe.n_examples:
            raise ConfigError(f"folds ({folds}) cannot exceed the {probe.n_examples} examples")
        probe.folds = folds
    space = _space(probe, settings, grid)
    budget = None
    if probe.folds:
        # Cross-validated trials read the step count from their curves, and the search stops when
        # the steps a one-split search would spend are spent: fewer, better-measured settings.
        budget = cv_budget(trials, fixed.get("steps") or probe.baseline["steps"], probe.folds,
                           probe.fold_length(fixed))
        if not grid:
            space.pop("steps", None)
    enqueue = list(enqueue)
    if not grid:
        # The preset's own setting is always scored (first), so the choice is never worse than the
        # default it started from on the search's own validation. That anchors the choice only as
        # far as the validation can be trusted: on one split of 32 or 64 passages it still lost to
        # the default, hence the folds below FOLDS_BELOW (docs/tune.md, "Why 128 and 2").
        preset_setting = _preset_setting(probe, space)
        enqueue = [preset_setting, *enqueue] if preset_setting else enqueue
    return probe, space, budget, enqueue


def _preset_setting(probe: Probe, space: dict) -> dict[str, Any]:
    return {k: v for k, v in probe.baseline.items() if k in space and _inside(space[k], v)}


def _steered(space: dict, comparisons: Sequence[dict], trials: int | None, seed: int, probe: Probe) -> list[dict]:
    """The settings members' comparisons point to (``trainer.steer.proposals``), within this
    round's space: half the round's tries, at least one; the rest are the sampler's."""
    from .steer import proposals

    found = proposals(space, list(comparisons), max(1, (trials or 4) // 2), seed=seed, fill=probe.baseline)
    return [{k: v for k, v in p.items() if _inside(space[k], v)} for p in found]


def _summarise(study, kind: Kind, out: Path, study_name: str, storage_url: str, probe: Probe, budget: int | None,
               top_k: int) -> TuneResult:
    """The search's result (its best trial, cross-validation summary) with its report files written."""
    from .tune_report import write_report

    rows = trial_rows(study)
    best = min((r for r in rows if r.status == "complete" and r.val_loss is not None),
               key=lambda r: r.val_loss, default=None)
    result = TuneResult(out, study_name, storage_url, probe.baseline, rows, best,
                        dict(best.params) if best else {}, folds=probe.folds, budget=budget)
    if probe.folds:
        result.cv = cv_summary(rows, probe)
        if best is not None and best.cv_steps:
            result.best_params["steps"] = best.cv_steps
    result.files = write_report(result, kind=kind, top_k=top_k)
    return result

# --------------------------------------------------------------------------------------------
# what to search: the data's preset and the space around it


def probe_data(kind: Kind, fixed: dict[str, Any], preset: Preset) -> Probe:
    """Read the data once, size the preset to it, and fix the validation cadence of all trials
    (the kind's ``probe``: ``probe_text``, ``probe_image``)."""
    probe = kinds.get(kind).part("probe")(fixed, preset)
    probe.folds = 0 if fixed.get("holdout") else folds_for(probe.n_examples)
    return probe


def probe_text(fixed: dict[str, Any], preset: Preset) -> Probe:
    from transformers import AutoTokenizer

    from .models import resolve_base
    from .text.config import TextTrainConfig
    from .text.data import load_text_dataset
    from .text.kinds import resolve_kind
    from .text.packing import encode
    from .text.presets import size_defaults

    config = _build_config(kinds.TEXT.name, {**fixed, "out": "probe", "preset": preset})
    dataset = load_text_dataset(config.data, val_fraction=config.val_fraction, seed=config.seed)
    tokenizer = AutoTokenizer.from_pretrained(resolve_base(config.base), trust_remote_code=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokens = sum(len(encode(e, tokenizer).ids) for e in dataset.train)
    # the same kind a trial's run resolves (over every example), so the baseline is the preset's own run
    text_kind = resolve_kind(config.text_kind, dataset.train + dataset.val).kind
    sized = size_defaults(config, n_train=len(dataset.train), train_tokens=tokens, text_kind=text_kind)
    assert isinstance(sized, TextTrainConfig)
    baseline = {k: getattr(sized, k) for k in SEARCHED}
    shape = {"batch_size": config.batch_size, "seq_len": config.seq_len, "grad_accum": config.grad_accum}
    return Probe(len(dataset.train), baseline, _eval_every(fixed, baseline["steps"]), tokens, shape,
                 n_examples=len(dataset.train) + len(dataset.val))


def probe_image(fixed: dict[str, Any], preset: Preset) -> Probe:
    from .image.data import load_images, training_limits
    from .image.presets import run_sizes, size_defaults
    from .image.train import split

    config = _build_config(kinds.IMAGE.name, {**fixed, "out": "probe", "preset": preset})
    sizes = run_sizes(config)  # the same sizing a training run does, resolved once
    dataset = load_images(config.data, instance_prompt=config.instance_prompt, limits=training_limits(config, sizes))
    train, _ = split(dataset.examples, config.val_fraction, config.seed)
    sized = size_defaults(config, len(train), sizes)
    baseline = {k: getattr(sized, k) for k in SEARCHED}
    return Probe(len(train), baseline, _eval_every(fixed, baseline["steps"]), n_examples=len(dataset.examples))


def _eval_every(fixed: dict[str, Any], steps: int) -> int:
    # One cadence for every trial, so the pruner compares trials at the same steps.
    return int(fixed.get("eval_every") or max(1, steps // EVALS_PER_TRIAL))


def _space(probe: Probe, settings: dict[str, Any], grid: dict[str, list] | None) -> dict[str, Any]:
    """Optuna distributions of the searched knobs nobody fixed in ``settings``, or the grid's value lists."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    if grid:
        return {name: CategoricalDistribution(list(values)) for name, values in grid.items()}
    b, every = probe.baseline, probe.eval_every
    steps = sorted({max(every, round(b["steps"] * f / every) * every) for f in STEP_FACTORS})
    space = {
        # a decade either side of the preset's rate: LoRA's good rates span about that much
        "lr": FloatDistribution(b["lr"] / 10, min(1.0, b["lr"] * 10), log=True),
        "rank": CategoricalDistribution(list(RANKS)),
        "lora_dropout": FloatDistribution(0.0, 0.3),
        "augment": FloatDistribution(0.0, 0.6),
        "steps": CategoricalDistribution(steps),
    }
    return {k: v for k, v in space.items() if settings.get(k) is None}


def cv_summary(rows: list[TrialRow], probe: Probe) -> dict[str, Any] | None:
    """How sure a cross-validated choice is: the best and runner-up settings' mean and standard
    deviation of their folds' losses, and the gap between them in units of the best's spread."""
    import statistics

    # a setting cut short by the time limit is no runner-up: it was not behind, only unfinished
    scored = sorted((r for r in rows if r.fold_losses and (r.status == "complete" or
                                                           (r.status == "pruned" and r.note.startswith("pruned after")))),
                    key=lambda r: statistics.fmean(r.fold_losses))
    done = [r for r in scored if r.status == "complete"]
    if not done:
        return None

    def one(row: TrialRow) -> dict[str, Any]:
        # a runner-up pruned after some folds is scored on those (``folds_done``)
        sd = statistics.stdev(row.fold_losses) if len(row.fold_losses) > 1 else 0.0
        return {"trial": row.number, "mean": statistics.fmean(row.fold_losses), "sd": sd, "status": row.status,
                "folds_done": len(row.fold_losses), "fold_losses": list(row.fold_losses), "params": dict(row.params)}

    best = one(done[0])
    others = [r for r in scored if r.number != done[0].number]
    runner = one(others[0]) if others else None
    return {"folds": probe.folds, "n_examples": probe.n_examples, "steps": done[0].cv_steps, "best": best,
            "runner_up": runner, "clear": bool(runner and (runner["status"] == "pruned" or  # stopped: clearly behind
                                                           runner["mean"] - best["mean"] > max(best["sd"], runner["sd"])))}


def check_search(kind, trials, budget_minutes, grid, settings, pruner) -> list[str]:
    """Every problem with a search's options, as lines (``trainer.spec`` checks specs with it)."""
    problems = []
    if kind not in kinds.KINDS:
        problems.append(f"kind must be {kinds.choices()}, not {kind!r}")
    if trials is None and budget_minutes is None:
        problems.append("give a number of trials, a budget in minutes, or both")
    if trials is not None and trials < 1:
        problems.append(f"trials must be at least 1, not {trials}")
    if budget_minutes is not None and budget_minutes <= 0:
        problems.append(f"budget_minutes must be positive, not {budget_minutes}")
    if pruner not in ("successive-halving", "hyperband", "median", "none"):
        problems.append(f"unknown pruner {pruner!r}")
    for key in ("out", "resume", "holdout"):
        if key in settings:
            problems.append(f"'{key}' is set by the search, not in settings")
    for name, values in (grid or {}).items():
        if not isinstance(values, (list, tuple)) or not values:
            problems.append(f"grid value list for {name!r} is empty")
        takes = [k.name for k in kinds.KINDS.values() if name in k.grid_extras]
        if takes and kind in kinds.KINDS and kind not in takes:
            problems.append(f"grid '{name}' works for {' and '.join(takes)} only; search 'steps' for "
                            f"{kinds.KINDS[kind].units}")
        if name in settings:
            problems.append(f"{name!r} is both fixed in settings and in the grid")
    return problems


def _sampler(grid: dict[str, list] | None, trials: int | None, seed: int):
    import optuna

    if grid:
        return optuna.samplers.GridSampler({k: list(v) for k, v in grid.items()}, seed=seed)
    # TPE models good vs. bad trials only once it has a few: a third of a small budget is random.
    startup = max(3, min(10, (trials or 12) // 3))
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, multivariate=True)


def _pruner(name: Pruner, probe: Probe):
    import optuna

    every = probe.eval_every
    if probe.folds:
        return optuna.pruners.NopPruner()  # a cross-validated trial reports its mean curve at its end
    if name == "successive-halving":
        # rungs at the 1st, 3rd and 9th validation: a third of the trials go on at each
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=every, reduction_factor=3)
    if name == "hyperband":
        longest = int(max(probe.baseline["steps"] * max(STEP_FACTORS), every))
        return optuna.pruners.HyperbandPruner(min_resource=every, max_resource=longest, reduction_factor=3)
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=every)
    return optuna.pruners.NopPruner()


# --------------------------------------------------------------------------------------------
# the study: storage, resume, bookkeeping


def open_storage(url: str):
    """An Optuna storage for ``url``: RDB URLs (sqlite, postgresql, mysql) with a heartbeat,
    ``redis://`` as a journal on Redis, or ``journal:PATH`` / ``*.log`` as a journal file."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalRedisBackend, JournalStorage

    if url.startswith("redis://") or url.startswith("rediss://"):
        return JournalStorage(JournalRedisBackend(url))
    if url.startswith("journal:") or url.endswith(".log"):
        return JournalStorage(JournalFileBackend(url.removeprefix("journal:")))
    # The heartbeat lets a worker on another machine fail a trial whose worker died.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(url, heartbeat_interval=60, grace_period=300)


def _remember_search(study, kind: str, preset: str, probe: Probe) -> None:
    attrs = study.user_attrs
    if "kind" in attrs and attrs["kind"] != kind:
        raise ConfigError(f"study {study.study_name!r} searches {attrs['kind']} runs, not {kind}; "
                          "pick another --out or --study-name.")
    if "kind" not in attrs:
        for key, value in {"kind": kind, "preset": preset, "baseline": probe.baseline,
                           "eval_every": probe.eval_every}.items():
            study.set_user_attr(key, value)


def retry_interrupted(study, storage) -> list[int]:
    """Fail this machine's trials whose process died, and queue every interrupted trial again.

    A trial is interrupted when its worker was killed (left RUNNING with its pid gone, or failed
    by the storage's heartbeat) or when the search was cancelled. Its parameters are enqueued
    once, with ``retry_of`` naming it, so the retry can take over its checkpoint. Returns the
    numbers of the trials queued again.
    """
    from optuna.trial import TrialState

    host, study_id = socket.gethostname(), storage.get_study_id_from_name(study.study_name)
    retried = {t.user_attrs.get("retry_of") for t in study.get_trials(deepcopy=False)}
    numbers = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.FAIL)):
        dead = (t.state == TrialState.RUNNING and t.user_attrs.get("host") == host
                and not _alive(t.user_attrs.get("pid")))
        if dead:
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
            storage.set_trial_state_values(trial_id, TrialState.FAIL)
        if (dead or to_row(t).note == "interrupted") and t.number not in retried:
            study.enqueue_trial(dict(t.params), user_attrs={"retry_of": t.number})
            numbers.append(t.number)
    return numbers


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid != os.getpid()  # our own pid on a RUNNING trial at start-up is a reused pid


def count_finished(study) -> int:
    """Trials that count towards ``trials``: complete, pruned, or failed on their own merits."""
    return sum(1 for row in trial_rows(study) if row.status in FINISHED and row.note != "interrupted")


class _StopAt:
    """Stop when the study holds ``n`` finished trials, whichever worker ran them, or when the
    step budget left cannot pay all the folds (``setting`` steps) of one more cross-validated
    setting; queued settings (the preset's, an interrupted trial's retry) still run."""

    def __init__(self, n: int | None, budget: int | None = None, setting: int = 0, progress: "_Progress | None" = None):
        self.n, self.budget, self.setting, self.progress = n, budget, setting, progress

    def out_of_budget(self, study) -> bool:
        from optuna.trial import TrialState

        if self.budget is None or self.progress is None or self.progress.done + self.setting <= self.budget:
            return False
        return not study.get_trials(deepcopy=False, states=(TrialState.WAITING,))

    def __call__(self, study, trial) -> None:
        if (self.n is not None and count_finished(study) >= self.n) or self.out_of_budget(study):
            study.stop()


class _Progress:
    """One progress figure over a whole search and its full run, which only goes forward.

    Each run of the search counts its own steps from 1; this adds them up, and every event it
    passes on carries ``overall``: ``{"step": done, "total": planned, "eta_s": ...}``. The total
    starts as the most the search and the full run can train (``_planned``) and only shrinks
    (``plan``) as the search ends early or the full run's length is known, never below what is
    done, so done/total never goes back."""

    def __init__(self, on_event: EventCallback | None, done: int, total: int | None):
        self.on_event, self.done, self.total = on_event, done, total
        self.closed = done  # steps of the runs that ended
        self.run: dict | None = None  # the step counter of the run now training
        self.started: tuple[float, int] | None = None  # (time, done) of the first step counted

    def count(self, steps: dict) -> None:
        """Take the step counter of the run now training (``_Objective._watch``'s ``steps``)."""
        if steps is not self.run:
            self.closed += _spent(self.run) if self.run else 0
            self.run = steps
        self.done = max(self.done, self.closed + _spent(steps))
        if self.started is None and steps["first"] is not None:
            self.started = (time.monotonic(), self.done)

    def plan(self, total: int) -> None:
        """What is left is now known to be at most ``total - done``."""
        if self.total is not None:
            self.total = max(self.done, min(self.total, total))

    def emit(self, event: ProgressEvent) -> None:
        if self.on_event is None:
            return
        if self.total is not None:
            self.total = max(self.total, self.done)
            overall = {"step": self.done, "total": self.total, "eta_s": None}
            if self.started is not None and self.done > self.started[1]:
                per_step = (time.monotonic() - self.started[0]) / (self.done - self.started[1])
                overall["eta_s"] = round(per_step * (self.total - self.done), 1)
            event = replace(event, overall=overall)
        self.on_event(event)

    def watch(self) -> EventCallback:
        """The event callback of a run outside the trials (the full run): counts and passes on."""
        steps = _counter()

        def watch(event: ProgressEvent) -> None:
            _count(steps, event)
            self.count(steps)
            self.emit(event)
        return watch


def _planned(trials: int | None, budget: int | None, probe: Probe, fixed: dict, space: dict, full_run: bool,
             full_steps: int | None) -> int | None:
    """The most steps a search and its full run can train; None when only time bounds it."""
    longest = int(fixed.get("steps") or probe.baseline["steps"])
    if "steps" in space:
        longest = max(space["steps"].choices)
    elif "epochs" in space:
        longest = trial_settings({"epochs": max(space["epochs"].choices)}, probe)["steps"]
    if probe.folds:
        search = budget
        # the full run trains the folds' mean best step, scaled to every example
        longest = longest if fixed.get("steps") else math.ceil(probe.fold_length(fixed) * probe.folds / (probe.folds - 1))
    else:
        search = None if trials is None else trials * longest
    if search is None:
        return None
    return search + ((full_steps or longest) if full_run else 0)


class _Report:
    def __init__(self, on_trial: Callable[[TrialRow], None] | None):
        self.on_trial = on_trial

    def __call__(self, study, trial) -> None:
        if self.on_trial is not None:
            self.on_trial(to_row(trial))


def trial_rows(study) -> list[TrialRow]:
    return [to_row(t) for t in study.get_trials(deepcopy=False)]


def to_row(t) -> TrialRow:
    """A FrozenTrial as a table row."""
    status = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running",
              "WAITING": "waiting"}[t.state.name]
    curve = sorted((int(s), float(v)) for s, v in t.intermediate_values.items())
    finite = [v for _, v in curve if math.isfinite(v)]
    val = t.value if t.value is not None else (min(finite) if finite else None)
    note = t.user_attrs.get("note", "")
    if t.user_attrs.get("interrupted") or (status == "failed" and not note and "error" not in t.user_attrs):
        note = "interrupted"
    elif "error" in t.user_attrs:
        note = t.user_attrs["error"]
    if t.user_attrs.get("retry_of") is not None and not note:
        note = f"retry of {t.user_attrs['retry_of']}"
    if t.user_attrs.get("steered") and not note:
        note = "proposed from members' comparisons"
    seconds = t.duration.total_seconds() if t.duration else None
    return TrialRow(t.number, status, dict(t.params), val, int(t.user_attrs.get("steps", 0)), seconds,
                    t.user_attrs.get("run_dir"), note, curve, list(t.user_attrs.get("fold_losses", [])),
                    list(t.user_attrs.get("fold_steps", [])), t.user_attrs.get("cv_steps"))


# --------------------------------------------------------------------------------------------
# one trial


class _Objective:
    """Runs one trial: build its config, train, report validation losses, prune on request."""

    def __init__(self, kind: Kind, out: Path, fixed: dict, probe: Probe, space: dict, deadline: float | None,
                 cancel: CancelToken | None, progress: _Progress):
        self.kind, self.out, self.fixed, self.probe, self.space = kind, out, fixed, probe, space
        self.deadline, self.cancel, self.progress = deadline, cancel, progress

    def __call__(self, trial) -> float:
        import optuna

        params = {name: _suggest(trial, name, dist) for name, dist in self.space.items()}
        folder = self.out / "trials" / f"{trial.number:04d}"
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        trial.set_user_attr("run_dir", str(folder))
        resume = self._adopt(trial, folder)
        if self.probe.folds:
            return self._cross_validate(trial, params, folder)
        config = _build_config(self.kind, {**self.fixed, **trial_settings(params, self.probe), "out": str(folder),
                                           "eval_every": self.probe.eval_every, "resume": resume})
        token, why = CancelToken(), {}
        steps = _counter()
        try:
            result = _train(self.kind, config, self._watch(steps, why, token, prune=trial), token)
        except Cancelled:
            trial.set_user_attr("steps", _spent(steps))
            if "cancelled" in why:
                trial.set_user_attr("interrupted", True)
                raise
            trial.set_user_attr("note", why["pruned"])
            shutil.rmtree(folder / "checkpoints", ignore_errors=True)  # a pruned trial is never resumed
            raise optuna.TrialPruned(why["pruned"])
        except TrainingError as exc:
            trial.set_user_attr("steps", _spent(steps))
            trial.set_user_attr("error", str(exc))
            raise
        trial.set_user_attr("steps", _spent(steps))
        trial.set_user_attr("stop_reason", result.stop_reason)
        trial.set_user_attr("best_step", result.best_step)
        if result.val_loss is None or not math.isfinite(result.val_loss):
            raise TrainingError("the trial produced no finite validation loss")
        return float(result.val_loss)

    def _cross_validate(self, trial, params: dict, folder: Path) -> float:
        """Train ``params`` once per fold; the score is the mean of the folds' best validation losses.

        A fold that finished (a retried trial) is read back, one with a checkpoint resumes."""
        import statistics

        import optuna

        from .rundir import RunDir

        k = self.probe.folds
        settings = trial_settings(params, self.probe)
        settings.setdefault("steps", self.probe.fold_length(self.fixed))
        cadence = min(self.probe.eval_every, settings["steps"])
        spent, curves, losses, best_steps = 0, [], [], []
        for i in range(k):
            run = RunDir(folder / f"fold-{i}")
            metrics = run.read_metrics() if run.metrics.exists() else {}
            if metrics.get("status") != "done":
                config = _build_config(self.kind, {**self.fixed, **settings, "holdout": f"{i}/{k}", "eval_every": cadence,
                                                   "out": str(run.root), "resume": run.latest_checkpoint() is not None})
                steps, why, token = _counter(), {}, CancelToken()
                try:
                    _train(self.kind, config, self._watch(steps, why, token), token)
                except Cancelled:
                    trial.set_user_attr("steps", spent + _spent(steps))
                    if "cancelled" in why:
                        trial.set_user_attr("interrupted", True)
                        raise
                    for key, value in {"note": why["pruned"], "fold_losses": losses, "fold_steps": best_steps}.items():
                        trial.set_user_attr(key, value)  # the folds it finished, for trials.json
                    if curves:
                        _report_mean_curve(trial, curves)
                    for old in folder.glob("fold-*/checkpoints"):
                        shutil.rmtree(old, ignore_errors=True)  # a pruned trial is never resumed
                    raise optuna.TrialPruned(why["pruned"])
                except TrainingError as exc:
                    trial.set_user_attr("steps", spent + _spent(steps))
                    trial.set_user_attr("error", str(exc))
                    raise
                spent += _spent(steps)
                trial.set_user_attr("steps", spent)
                metrics = run.read_metrics()
            curve = [(int(s), float(v)) for s, v in metrics.get("curves", {}).get("val_loss", [])]
            if metrics.get("best_val_loss") is None or not math.isfinite(metrics["best_val_loss"]):
                raise TrainingError(f"fold {i} of {k} produced no finite validation loss")
            curves.append(dict(curve))
            losses.append(float(metrics["best_val_loss"]))
            best_steps.append(int(metrics.get("best_step") or settings["steps"]))
            behind = _behind_leader(trial, losses) if i + 1 < k else None
            if behind:
                _report_mean_curve(trial, curves)
                for key, value in {"note": behind, "fold_losses": losses, "fold_steps": best_steps}.items():
                    trial.set_user_attr(key, value)
                raise optuna.TrialPruned(behind)
        _report_mean_curve(trial, curves)
        # The folds trained on (k-1)/k of the examples: the run on all of them keeps the epochs.
        # Steps the member chose are theirs: the run on every example trains that many.
        chosen = self.fixed.get("steps") or max(1, round(statistics.fmean(best_steps) * k / (k - 1)))
        for key, value in {"run_dir": str(folder / "fold-0"), "fold_losses": losses, "fold_steps": best_steps,
                           "cv_steps": chosen}.items():
            trial.set_user_attr(key, value)
        return statistics.fmean(losses)

    def _watch(self, steps: dict, why: dict, token: CancelToken, prune=None) -> EventCallback:
        """The event callback of one training run of the search: it counts steps, reports
        validation to ``prune`` (the Optuna trial, for single-split tries) and sets ``token``
        when the run must stop (pruned, out of time, search cancelled)."""
        def watch(event: ProgressEvent) -> None:
            # runs inside the training loop: setting the token stops the trainer at its next step
            _count(steps, event)
            if prune is not None and event.kind == "eval" and event.val_loss is not None:
                prune.set_user_attr("steps", _spent(steps))
                if not math.isfinite(event.val_loss):
                    why["pruned"] = "validation loss is not finite"
                else:
                    prune.report(event.val_loss, event.step)
                    if prune.should_prune():
                        why["pruned"] = f"pruned at step {event.step}"
            self.progress.count(steps)
            if self.deadline is not None and time.monotonic() > self.deadline:
                why.setdefault("pruned", "out of time")
            if self.cancel is not None and self.cancel.is_set():
                why["cancelled"] = "search cancelled"
            if why:
                token.cancel()
            self.progress.emit(event)
        return watch

    def _adopt(self, trial, folder: Path) -> bool:
        """A retry continues from the interrupted trial's checkpoint, with its reports replayed."""
        old = trial.user_attrs.get("retry_of")
        if folder.exists():
            shutil.rmtree(folder)  # left by a study that was deleted; trial numbers start again
        if old is None:
            return False
        previous = self.out / "trials" / f"{old:04d}"
        if self.probe.folds and any(previous.glob("fold-*")):
            # its finished folds are read back and a fold with a checkpoint resumes (_cross_validate)
            shutil.move(str(previous), str(folder))
            return True
        if not (previous / "checkpoints").is_dir():
            return False
        from .rundir import RunDir

        if RunDir(previous).latest_checkpoint() is None:
            return False
        shutil.move(str(previous), str(folder))
        checkpoint = RunDir(folder).latest_checkpoint()
        reached = int(checkpoint.name.split("-")[-1])
        frozen = trial.study.get_trials(deepcopy=False)[old]
        for step, value in sorted(frozen.intermediate_values.items()):
            if step <= reached:
                trial.report(value, step)
        return True


def _report_mean_curve(trial, curves: list[dict[int, float]]) -> None:
    """The mean validation curve over the folds that reached each step (the chart's line)."""
    import statistics

    for step in sorted({s for c in curves for s in c}):
        trial.report(statistics.fmean(c[step] for c in curves if step in c), step)


def _behind_leader(trial, losses: list[float]) -> str | None:
    """Why to stop a cross-validated trial after ``len(losses)`` folds, or None.

    Every trial uses the same folds, so its losses are compared with the best complete trial's
    on the same folds: it stops when its mean is worse by more than the leader's spread over
    all its folds (a paired comparison), by twice that after a single fold."""
    import statistics

    from optuna.trial import TrialState

    done = [t for t in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if len(t.user_attrs.get("fold_losses", [])) > len(losses) and t.value is not None]
    if not done:
        return None
    leader = min(done, key=lambda t: t.value).user_attrs["fold_losses"]
    mine, theirs = statistics.fmean(losses), statistics.fmean(leader[:len(losses)])
    if mine > theirs + statistics.stdev(leader) * (2 if len(losses) == 1 else 1):
        return f"pruned after {len(losses)} folds: {mine:.4f} against the leader's {theirs:.4f} on them"
    return None


def _inside(dist, value) -> bool:
    try:
        return bool(dist._contains(dist.to_internal_repr(value)))
    except (ValueError, TypeError):
        return False


def _suggest(trial, name: str, dist):
    from optuna.distributions import CategoricalDistribution

    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    return trial.suggest_float(name, dist.low, dist.high, log=dist.log)


def _counter() -> dict:
    """A run's step counter: the first and last step it trained (``_count``, ``_spent``)."""
    return {"first": None, "last": 0}


def _count(steps: dict, event: ProgressEvent) -> None:
    if event.kind == "step":
        steps["first"] = steps["first"] or event.step
        steps["last"] = event.step


def _spent(steps: dict) -> int:
    return 0 if steps["first"] is None else steps["last"] - steps["first"] + 1


def trial_settings(params: dict[str, Any], probe: Probe) -> dict[str, Any]:
    """Trainer settings for a trial's parameters (a grid's ``epochs`` becomes ``steps``)."""
    settings = dict(params)
    epochs = settings.pop("epochs", None)
    if epochs is not None:
        shape = {**probe.shape, **{k: v for k, v in settings.items() if k in probe.shape}}
        per_step = shape["batch_size"] * shape["seq_len"] * shape["grad_accum"]
        settings["steps"] = max(1, math.ceil(epochs * (probe.train_tokens or 0) / per_step))
    return settings


def _build_config(kind: Kind, values: dict[str, Any]):
    return kinds.get(kind).config_class.build(**values)


def _train(kind: Kind, config, on_event: EventCallback, cancel: CancelToken):
    return kinds.get(kind).part("train")(config, on_event=on_event, cancel=cancel)


def _full_run(kind: Kind, folder: Path, fixed: dict, probe: Probe, params: dict, on_event, cancel) -> float | None:
    """Train the best parameters once more, validating at the trials' steps, in ``folder``.

    The same settings, seed and validation steps as the best trial, so the full run reproduces
    it (and goes on where ``full_steps`` asks for more).

    Returns its best validation loss. A finished full run of the same settings (a search run
    again after it ended) is kept; one of other settings is replaced; a cancelled one resumes.
    """
    from .rundir import RunDir

    run = RunDir(folder)
    settings = trial_settings(params, probe)
    resume = run.latest_checkpoint() is not None
    if run.metrics.exists() and not resume:
        metrics = run.read_metrics()
        if metrics.get("status") == "done" and all(metrics["config"].get(k) == v for k, v in settings.items()):
            return metrics.get("best_val_loss")
        shutil.rmtree(folder)  # a previous search's full run; this one replaces it
    steps = settings.get("steps") or fixed.get("steps")
    cadence = {"eval_every": min(probe.eval_every, steps) if steps else probe.eval_every}
    config = _build_config(kind, {**fixed, **settings, **cadence, "out": str(folder), "resume": resume})
    return _train(kind, config, on_event, cancel).val_loss
