"""``loracord tune text|image DATA`` and ``loracord presets text|image DATA``: thin layers over
``trainer.tune`` and ``trainer.presets``.

The table is printed a row at a time as trials finish (pruned ones say ``pruned``), then the
whole table and the best trial; the same table is in ``OUT/trials.csv``.
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from trainer import kinds
from trainer.errors import ConfigError
from trainer.folds import FOLDS_BELOW

Kind = Enum("Kind", {name: name for name in kinds.names()}, type=str)  # the kinds of run (trainer.kinds)


class PresetName(str, Enum):
    quick = "quick"
    balanced = "balanced"
    best = "best"


class PrunerName(str, Enum):
    successive_halving = "successive-halving"
    hyperband = "hyperband"
    median = "median"
    none = "none"


def register(app: typer.Typer) -> None:
    app.command("tune")(tune_cmd)
    app.command("presets")(presets_cmd)


def tune_cmd(
    kind: Kind = typer.Argument(..., help=f"What to train: {kinds.choices()}."),
    data: list[Path] = typer.Argument(..., help="Dataset files (text), or image files, folders or zips (image)."),
    out: Path = typer.Option(..., "--out", "-o", help="Search folder: study.db, trials/, table, chart, best-run/."),
    trials: Optional[int] = typer.Option(8, "--trials", "-n", help="Finished trials the study should hold (a resume runs the rest)."),
    budget_minutes: Optional[float] = typer.Option(None, "--budget-minutes", "-m", help="Stop the search after this many minutes."),
    base: Optional[str] = typer.Option(None, help="Base model (text default: smollm2-135m; image: required)."),
    preset: PresetName = typer.Option(PresetName.balanced, help="Preset the search starts from (see `loracord presets`)."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Fixed trainer setting KEY=VALUE (repeatable), e.g. seq_len=128."),
    grid: Optional[list[str]] = typer.Option(None, "--grid", help="Grid search instead: KEY=V1,V2,... (repeatable), e.g. batch_size=2,4 epochs=1,3."),
    storage: Optional[str] = typer.Option(None, help="Optuna storage URL shared by workers (default: sqlite in OUT)."),
    study_name: str = typer.Option("tune", help="Study name inside the storage."),
    pruner: PrunerName = typer.Option(PrunerName.successive_halving, help="How trials that fall behind are cut."),
    seed: int = typer.Option(0, help="Seed of the sampler."),
    full_run: bool = typer.Option(True, "--full-run/--no-full-run", help="Train the best settings in full into OUT/best-run."),
    full_steps: Optional[int] = typer.Option(None, help="Steps of the full run (default: the best trial's)."),
    folds: Optional[int] = typer.Option(None, min=0, help="Score each setting on K folds (0: one validation split; "
                                        f"default: 2 folds below {FOLDS_BELOW} examples, else one split)."),
) -> None:
    """Search learning rate, rank, dropout, augmentation and steps with short pruned trials."""
    from rich.console import Console

    from trainer.spec import RunSpec

    console = Console()
    settings = parse_settings(set_ or [])
    if base is None and kinds.get(kind.value).needs_base:
        raise typer.BadParameter(f"{kind.value} searches need --base (a diffusers pipeline folder or hub id)")
    run_seed = settings.pop("seed", 0)  # --set seed=N is the runs' seed; --seed the sampler's
    spec = RunSpec.build(kind=kind.value, data=[str(p) for p in data], base=base, preset=preset.value, seed=run_seed,
                         settings=settings, tune=dict(
                             trials=trials, budget_minutes=budget_minutes, grid=parse_grid(grid or []) or None,
                             storage=storage, study_name=study_name, pruner=pruner.value, seed=seed,
                             full_run=full_run, full_steps=full_steps, folds=folds))
    console.print(_line(HEADER), style="bold")
    result = spec.search(out, on_trial=lambda row: console.print(_line(_cells(row))))
    _print_summary(console, result)


def presets_cmd(
    kind: Kind = typer.Argument(..., help=f"{kinds.choices()}."),
    data: list[Path] = typer.Argument(..., help="The dataset the presets are sized to."),
    base: Optional[str] = typer.Option(None, help="Base model (text: its tokenizer counts the tokens)."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Trainer setting KEY=VALUE that sizing depends on (seq_len, batch_size)."),
) -> None:
    """Show the quick, balanced and best settings sized to a dataset."""
    from rich.console import Console
    from rich.table import Table

    from trainer.presets import PRESETS
    from trainer.tune import probe_data

    fixed = {**parse_settings(set_ or []), "data": [str(p) for p in data], **({"base": base} if base else {})}
    if kinds.get(kind.value).needs_base and not base:
        raise typer.BadParameter(f"{kind.value} presets need --base")
    table = Table("preset", "steps", "rank", "lr", "lora_dropout", "augment", title="presets for this dataset")
    for name in PRESETS:
        probe = probe_data(kind.value, fixed, name)
        b = probe.baseline
        table.add_row(name, str(b["steps"]), str(b["rank"]), f"{b['lr']:g}", f"{b['lora_dropout']:g}", f"{b['augment']:g}")
    Console().print(table)
    Console().print(f"{probe.n_train} training examples; reasons and sources: docs/presets.md")


# --------------------------------------------------------------------------------------------


HEADER = ["trial", "status", "val_loss", "steps", "seconds", "params"]
WIDTHS = [5, 9, 9, 6, 8, 0]


def _cells(row) -> list[str]:
    from trainer.tune_report import format_cell

    cells = [format_cell(c, row) for c in HEADER]
    if row.note and row.status != "complete":
        cells[-1] += f"  ({row.note})"
    return cells


def _line(cells: list[str]) -> str:
    return " ".join(c.ljust(w) if w else c for c, w in zip(cells, WIDTHS))


def _print_summary(console, result) -> None:
    from rich.table import Table

    table = Table(*HEADER, title=f"study {result.study_name!r}: {len(result.trials)} trials, "
                                 f"{result.steps_spent} training steps")
    for row in result.trials:
        table.add_row(*_cells(row), style="bold green" if result.best and row.number == result.best.number else None)
    console.print(table)
    if result.best is None:
        console.print("no trial completed; see the notes above", style="red")
        return
    params = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(result.best_params.items()))
    # paths and --grid values are printed as given (no markup), each line whole (no wrapping)
    console.print(f"best trial: #{result.best.number}  {_best_score(result)}  {params}", markup=False, soft_wrap=True)
    if result.full_run is not None:
        console.print(f"full run: {result.full_run}  {_full_run_score(result)}", markup=False, soft_wrap=True)
    console.print(f"table: {result.out / 'trials.csv'}  chart: {result.out / 'val_loss.png'}", markup=False,
                  soft_wrap=True)


def _best_score(result) -> str:
    """The best trial's validation loss; on a cross-validated search, its mean over the folds."""
    if not result.cv:
        return f"validation loss {result.best.val_loss:.4f}"
    best = result.cv["best"]
    return f"mean validation loss over {result.cv['folds']} folds {best['mean']:.4f} (sd {best['sd']:.4f})"


def _full_run_score(result) -> str:
    """The full run's validation loss, or why it has none.

    A cross-validated search's full run trains on every example (``holdout="none"``), so the
    chosen setting's only measure is its folds' mean."""
    if result.full_val_loss is not None:
        return f"validation loss {result.full_val_loss:.4f}"
    if result.cv:
        return (f"no validation loss, because it trained on all {result.cv['n_examples']} examples (none held "
                f"out); the folds' mean validation loss is {result.cv['best']['mean']:.4f}")
    return "no validation loss, because it held no examples out"


def parse_settings(items: list[str]) -> dict:
    """``KEY=VALUE`` pairs; values are read as JSON where they parse (numbers, true, null), else text."""
    settings = {}
    for item in items:
        key, value = _split(item, "--set")
        settings[key] = _value(value)
    return settings


def parse_grid(items: list[str]) -> dict[str, list]:
    """``KEY=V1,V2,...`` pairs into value lists."""
    grid = {}
    for item in items:
        key, values = _split(item, "--grid")
        grid[key] = [_value(v) for v in values.split(",") if v.strip()]
    return grid


def _split(item: str, option: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"{option} takes KEY=VALUE, not {item!r}")
    return key.strip().replace("-", "_"), value.strip()


def _value(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text
