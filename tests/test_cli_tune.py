"""``loracord tune`` as a newcomer types it (README, "Presets and quick tries"): a real subprocess
on a small text file, no ``--folds``, so every set under ``FOLDS_BELOW`` is cross-validated and
the full run trains on every example; then the summary's lines for each kind of search."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest

from tests.conftest import TINY_CORPUS
from trainer.folds import FOLDS_BELOW
from trainer.tune import TrialRow, TuneResult


def texts(folder: Path, n: int) -> Path:
    path = folder / "my_texts.txt"
    lines = (TINY_CORPUS * (n // len(TINY_CORPUS) + 1))[:n]
    path.write_text("\n\n".join(f"{s} Line {i}." for i, s in enumerate(lines)) + "\n")
    return path


def summary_line(stdout: str, start: str) -> str:
    lines = [line for line in stdout.splitlines() if line.startswith(start)]
    assert len(lines) == 1, stdout
    return lines[0]


@pytest.mark.parametrize("n", [8, 20])  # under 16 examples, and between 16 and FOLDS_BELOW
def test_tune_on_a_small_set_names_the_choice_and_the_folds_mean(tiny_llama, tmp_path, n):
    assert n < FOLDS_BELOW
    out = tmp_path / "search"
    done = subprocess.run([sys.executable, "-m", "loracord", "tune", "text", str(texts(tmp_path, n)), "--trials", "2",
                           "--out", str(out), "--base", str(tiny_llama)],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr

    cv = json.loads((out / "best.json").read_text())["cv"]
    best, mean = cv["best"], f"{cv['best']['mean']:.4f}"
    assert cv["folds"] == 2 and cv["n_examples"] == n
    chosen = summary_line(done.stdout, f"best trial: #{best['trial']}  ")
    assert f"mean validation loss over 2 folds {mean} (sd {best['sd']:.4f})" in chosen
    for key, value in {**best["params"], "steps": cv["steps"]}.items():  # the chosen setting, steps from the folds
        assert (f"{key}={value:.3g}" if isinstance(value, float) else f"{key}={value}") in chosen
    full = summary_line(done.stdout, "full run: ")
    assert str(out / "best-run") in full
    assert f"no validation loss, because it trained on all {n} examples (none held out)" in full
    assert f"the folds' mean validation loss is {mean}" in full

    metrics = json.loads((out / "best-run" / "metrics.json").read_text())
    assert metrics["config"]["holdout"] == "none" and metrics["data_report"]["n_val"] == 0
    assert metrics["best_val_loss"] is None and metrics["config"]["steps"] == cv["steps"]


# --------------------------------------------------------------------------------------------
# the summary of each kind of search, without training


def row(number: int, val_loss: float, folds: list[float] = ()) -> TrialRow:
    return TrialRow(number, "complete", {"lr": 0.0008, "rank": 8}, val_loss, 10, 1.0, None, fold_losses=list(folds))


def summary(result: TuneResult) -> str:
    from rich.console import Console

    from loracord.cli_tune import _print_summary

    text = StringIO()
    _print_summary(Console(file=text, width=60), result)  # narrower than the lines: none may wrap
    return text.getvalue()


def search(tmp_path, best: TrialRow, **fields) -> TuneResult:
    return TuneResult(tmp_path / "s[1]", "tune", "sqlite://", {}, [best], best, {**best.params, "steps": 12},
                      full_run=tmp_path / "s[1]" / "best-run", **fields)


def test_a_one_split_search_reports_the_full_runs_validation_loss(tmp_path):
    printed = summary(search(tmp_path, row(0, 1.23456), full_val_loss=1.11111))
    assert "best trial: #0  validation loss 1.2346  lr=0.0008 rank=8 steps=12" in printed
    assert f"full run: {tmp_path / 's[1]' / 'best-run'}  validation loss 1.1111" in printed  # the path as given


def test_a_cross_validated_search_reports_the_folds_mean_for_the_full_run(tmp_path):
    best = row(0, 1.5, folds=[1.4, 1.6])
    cv = {"folds": 2, "n_examples": 9, "steps": 12, "best": {"trial": 0, "mean": 1.5, "sd": 0.14142, "params": {}}}
    printed = summary(search(tmp_path, best, folds=2, cv=cv))
    assert "best trial: #0  mean validation loss over 2 folds 1.5000 (sd 0.1414)  lr=0.0008 rank=8 steps=12" in printed
    assert ("best-run  no validation loss, because it trained on all 9 examples (none held out); "
            "the folds' mean validation loss is 1.5000") in printed


def test_a_full_run_without_a_validation_loss_says_so(tmp_path):
    printed = summary(search(tmp_path, row(0, 1.5)))
    assert "best-run  no validation loss, because it held no examples out" in printed
