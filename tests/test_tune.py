"""The hyperparameter search on a tiny model: trials run the real trainer, bad ones are pruned,
the best is picked by validation loss and trained in full, a killed search resumes.

The base model is the tiny Llama of conftest, first trained briefly on the corpus so that it
has something to lose: on a random model an absurd learning rate is not worse than a sane one.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import TINY_CORPUS, build_tiny_llama
from trainer.errors import ConfigError
from trainer.tune import open_storage, tune

# Short trials: the quick preset sizes them to 10-30 steps on this data.
FAST = {"seq_len": 32, "batch_size": 2, "max_new_tokens": 4, "prompts": ["To be, or"], "threads": 1}
ABSURD = {"lr": 1.0}  # the config's ceiling, 5000x the preset's rate


@pytest.fixture(scope="module")
def trained_tiny(tmp_path_factory) -> Path:
    """The tiny Llama after 30 full fine-tuning steps on the corpus (validation loss ~1 instead of ~6)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = build_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-trained")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    batch = tokenizer([s + tokenizer.eos_token for s in TINY_CORPUS], return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    torch.manual_seed(0)
    for _ in range(30):
        model(**batch, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(folder)
    return folder


def rows_of(out: Path) -> list[dict]:
    with (out / "trials.csv").open() as f:
        return list(csv.DictReader(f))


def test_search_prunes_the_absurd_rate_picks_the_best_and_trains_it_in_full(trained_tiny, text_file, tmp_path):
    out = tmp_path / "search"
    printed = []
    # Three trials first, then a resume to six that tries the absurd rate first: by then the
    # pruner has others to compare it with.
    # 16 examples would be cross-validated (tests/test_tune_folds.py); this is the one-split search
    first = tune("text", [text_file], out, base=str(trained_tiny), trials=3, preset="quick", settings=FAST,
                 seed=0, full_run=False, on_trial=printed.append, folds=0)
    assert [r.number for r in first.trials] == [0, 1, 2] and first.full_run is None
    # one split too, the preset's own setting is the first try: the search is anchored to the default
    assert first.trials[0].params == first.baseline
    result = tune("text", [text_file], out, base=str(trained_tiny), trials=6, preset="quick", settings=FAST,
                  seed=0, enqueue=[ABSURD], on_trial=printed.append, folds=0)

    assert [r.number for r in printed] == [0, 1, 2, 3, 4, 5]
    assert result.folds == 0 and result.cv is None
    assert len(result.trials) == 6 and all(r.status in ("complete", "pruned", "failed") for r in result.trials)
    absurd = result.trials[3]
    assert absurd.params["lr"] == 1.0
    # the resumed search proposes new settings, not a replay of its first trials
    earlier = [r.params for r in result.trials[:3]]
    assert all(r.params not in earlier for r in result.trials[4:])
    assert absurd.status in ("pruned", "failed") and absurd.note  # pruned at step N, or why it failed
    assert absurd.steps < max(result.trials[3].params["steps"], 1)

    # the best trial is the complete one with the lowest validation loss
    complete = [r for r in result.trials if r.status == "complete"]
    assert result.best is not None and result.best.val_loss == min(r.val_loss for r in complete)
    assert result.best.number != 3
    best = json.loads((out / "best.json").read_text())
    assert best["trial"] == result.best.number and best["params"] == result.best.params
    assert set(best["params"]) == {"lr", "rank", "lora_dropout", "augment", "steps"}

    # pruned trials stop early, and each trial's steps are its compute
    for row in result.trials:
        assert 0 < row.steps <= row.params["steps"]
        if row.status == "pruned":
            assert row.steps < row.params["steps"] and row.note.startswith(("pruned at step", "validation loss"))
    assert result.steps_spent == sum(r.steps for r in result.trials)

    # the table, the chart, the samples of the top trials
    table = rows_of(out)
    assert [r["status"] for r in table] == [r.status for r in result.trials]
    assert all(r["params"] and r["seconds"] for r in table)
    assert (out / "val_loss.png").stat().st_size > 5_000
    top = json.loads((out / "top_samples.json").read_text())
    assert top[0]["trial"] == result.best.number and top[0]["samples"][0]["prompt"] == "To be, or"
    assert {p.name for p in (out / "trials").iterdir()} == {f"{n:04d}" for n in range(6)}

    # the full run trains the chosen settings into best-run
    assert result.full_run == out / "best-run"
    config = json.loads((out / "best-run" / "metrics.json").read_text())["config"]
    for key, value in result.best_params.items():
        assert config[key] == pytest.approx(value), key
    assert config["seq_len"] == 32 and (out / "best-run" / "adapter" / "adapter_model.safetensors").exists()
    assert result.full_val_loss == pytest.approx(result.best.val_loss, rel=1e-3)  # same settings, same seed

    # run again once done: nothing is trained twice, the study and the full run are read back
    written = (out / "best-run" / "metrics.json").stat().st_mtime_ns
    again = tune("text", [text_file], out, base=str(trained_tiny), trials=6, preset="quick", settings=FAST, seed=0,
                 folds=0)
    assert [(r.number, r.status, r.val_loss) for r in again.trials] == [(r.number, r.status, r.val_loss)
                                                                        for r in result.trials]
    assert again.full_val_loss == result.full_val_loss
    assert (out / "best-run" / "metrics.json").stat().st_mtime_ns == written


KILLED_SEARCH = """
import sys
from trainer.tune import tune
tune("text", [sys.argv[1]], sys.argv[2], base=sys.argv[3], trials=3, preset="quick", pruner="none",
     settings={settings!r}, seed=1, full_run=False, folds=0)
"""


def test_a_killed_search_resumes_and_the_killed_trial_continues_from_its_checkpoint(trained_tiny, text_file, tmp_path):
    out = tmp_path / "search"
    script = KILLED_SEARCH.format(settings=FAST)
    proc = subprocess.Popen([sys.executable, "-c", script, str(text_file), str(out), str(trained_tiny)],
                            cwd=Path(__file__).parent.parent, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    checkpoints = out / "trials" / "0001" / "checkpoints"
    try:
        while proc.poll() is None and not any(checkpoints.glob("step-*/state.json")):
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # no clean-up: trial 1 is left RUNNING in study.db
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]

    result = tune("text", [text_file], out, base=str(trained_tiny), trials=3, preset="quick", pruner="none",
                  settings=FAST, seed=1, full_run=False, folds=0)
    by_number = {r.number: r for r in result.trials}
    assert by_number[1].status == "failed" and by_number[1].note == "interrupted"
    retry = next(r for r in result.trials if r.note == "retry of 1")
    assert retry.status == "complete" and retry.params == by_number[1].params
    events = [json.loads(line) for line in (Path(retry.run_dir) / "events.jsonl").read_text().splitlines()]
    starts = [e for e in events if e["kind"] == "start"]
    assert len(starts) == 2 and "resumed at step" in starts[1]["message"]  # it took over the checkpoint
    assert retry.steps < retry.params["steps"]  # only the steps after the checkpoint were trained again
    assert not (out / "trials" / "0001").exists()
    assert sum(r.status == "complete" for r in result.trials) == 3  # the study holds the trials asked for


def test_grid_search_over_batch_size_and_epochs(trained_tiny, text_file, tmp_path):
    out = tmp_path / "grid"
    settings = {k: v for k, v in FAST.items() if k != "batch_size"}
    result = tune("text", [text_file], out, base=str(trained_tiny), trials=4, settings=settings,
                  grid={"batch_size": [1, 2], "epochs": [1, 2]}, full_run=False, folds=0)
    tried = sorted((r.params["batch_size"], r.params["epochs"]) for r in result.trials)
    assert tried == [(1, 1), (1, 2), (2, 1), (2, 2)]
    steps = {(r.params["batch_size"], r.params["epochs"]): json.loads(
        (Path(r.run_dir) / "metrics.json").read_text())["config"]["steps"] for r in result.trials if r.status == "complete"}
    if (1, 1) in steps and (1, 2) in steps:
        assert steps[(1, 2)] == pytest.approx(2 * steps[(1, 1)], abs=1)  # epochs become steps over the tokens
    if (1, 1) in steps and (2, 1) in steps:
        assert steps[(1, 1)] == pytest.approx(2 * steps[(2, 1)], abs=1)  # twice the batch, half the steps


@pytest.mark.parametrize("kwargs, message", [
    ({"trials": None, "budget_minutes": None}, "number of trials, a budget"),
    ({"trials": 0}, "trials must be at least 1"),
    ({"grid": {"rank": []}}, "grid value list for 'rank' is empty"),
    ({"settings": {"out": "x"}}, "'out' is set by the search"),
    ({"pruner": "random"}, "unknown pruner"),
])
def test_bad_search_settings_are_one_config_error(text_file, tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        tune("text", [text_file], tmp_path / "x", **{"trials": 2, **kwargs})


def test_storage_urls(tmp_path):
    from optuna.storages import JournalStorage, RDBStorage

    assert isinstance(open_storage(f"sqlite:///{tmp_path / 'a.db'}"), RDBStorage)
    assert isinstance(open_storage(f"journal:{tmp_path / 'study.journal'}"), JournalStorage)
    assert isinstance(open_storage(str(tmp_path / "study.log")), JournalStorage)


def test_cli_prints_the_table_as_trials_finish_and_the_best_trial(trained_tiny, text_file, tmp_path):
    out = tmp_path / "cli"
    sets = [arg for key, value in FAST.items() if key != "prompts" for arg in ("--set", f"{key}={value}")]
    done = subprocess.run([sys.executable, "-m", "loracord", "tune", "text", str(text_file), "--trials", "3",
                           "--out", str(out), "--base", str(trained_tiny), "--preset", "quick", *sets,
                           "--no-full-run", "--folds", "0"],
                          capture_output=True, text=True, timeout=600, cwd=Path(__file__).parent.parent,
                          env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0].split()[:4] == ["trial", "status", "val_loss", "steps"]
    assert [line.split()[0] for line in lines[1:4]] == ["0", "1", "2"]  # one row per trial, as they finish
    statuses = [line.split()[1] for line in lines[1:4]]
    assert set(statuses) <= {"complete", "pruned", "failed"}
    assert any(line.startswith("best trial: #") for line in lines)
    assert not (out / "best-run").exists()
    # --folds 0 reached the search: 16 examples alone would have cross-validated every setting
    assert not list((out / "trials").glob("*/fold-*")) and "cv" not in json.loads((out / "best.json").read_text())


def test_cli_presets_sized_to_the_data(tiny_llama, text_file):
    done = subprocess.run([sys.executable, "-m", "loracord", "presets", "text", str(text_file), "--base", str(tiny_llama),
                           "--set", "seq_len=32", "--set", "batch_size=2"],
                          capture_output=True, text=True, timeout=600, cwd=Path(__file__).parent.parent,
                          env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {line.split("│")[1].strip(): line for line in done.stdout.splitlines() if line.count("│") > 3}
    assert {"quick", "balanced", "best"} <= set(rows)
    assert "0.0008" in rows["balanced"] and "0.001 " in rows["quick"] and "0.0004" in rows["best"]
    assert "training examples" in done.stdout


def test_a_tune_job_publishes_the_best_run_like_a_training_job(trained_tiny, text_file, tmp_path):
    """The queue's job runner (storage.jobrun) runs a `tune` job as the bot queues it."""
    from storage.jobrun import run_job
    from trainer.rundir import RunDir

    run = RunDir(tmp_path / "job")
    run.root.mkdir()
    config = {"kind": "text", "data": [str(text_file)], "base": str(trained_tiny), "trials": 2, "preset": "quick",
              "settings": FAST}
    result = run_job("tune", config, run, resume=False)
    assert result["status"] == "done" and len(result["trials"]) == 2
    assert (run.adapter / "adapter_model.safetensors").exists()
    metrics = json.loads(run.metrics.read_text())
    best = json.loads((run.root / "tune" / "best.json").read_text())
    for key, value in result["best_params"].items():
        if key in metrics["config"]:
            assert metrics["config"][key] == value
    assert (run.root / "samples.json").exists() and (run.root / "events.jsonl").stat().st_size > 0
    assert best
