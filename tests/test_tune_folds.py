"""Quick tries on tiny sets are cross-validated: each setting is scored on disjoint folds that
cover the data, and the chosen setting then trains on every example at the folds' step count;
the search spends about the steps of a one-split search, and its progress only goes forward.

Text runs on the tiny Llama of conftest, image runs on the tiny SD pipeline, both a few steps.
"""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import pytest

from tests.bot_world import bot_config, make_bot, simcord_bot, storage_settings, text_bytes, world  # noqa: F401
from tests.conftest import TINY_CORPUS
from tests.image_fixtures import RESOLUTION, tiny_sd, write_image_folder  # noqa: F401
from trainer.errors import ConfigError
from trainer.folds import (FOLDS_BELOW, check_holdout, cv_budget, cv_trials, fold_indices, fold_steps, folds_for,
                           split_holdout, split_steps)
from trainer.tune import probe_data, tune

FAST = {"seq_len": 32, "batch_size": 2, "max_new_tokens": 4, "prompts": ["To be, or"], "threads": 1}


def metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def card(result) -> str:
    """The report card's text (sent as the deferred reply's follow-up)."""
    return (result.followups[0] if result.followups else result.response).embeds[0].description


def texts(folder: Path, n: int) -> Path:
    path = folder / "texts.txt"
    path.write_text("\n\n".join(f"{s} Line {i}." for i, s in enumerate((TINY_CORPUS * (n // len(TINY_CORPUS) + 1))[:n])) + "\n")
    return path


@pytest.mark.parametrize("n, k", [(5, 2), (8, 2), (9, 3), (15, 2)])
def test_folds_are_disjoint_cover_the_data_and_are_balanced(n, k):
    folds = fold_indices(n, k, seed=3)
    assert len(folds) == k and sorted(i for f in folds for i in f) == list(range(n))
    assert max(map(len, folds)) - min(map(len, folds)) <= 1
    assert fold_indices(n, k, seed=3) == folds  # the same folds every time for a seed
    for i in range(k):
        train, val = split_holdout(list(range(n)), f"{i}/{k}", seed=3)
        assert val == folds[i] and not set(train) & set(val) and len(train) + len(val) == n
    assert split_holdout(list(range(n)), "none", seed=3) == (list(range(n)), [])


def test_threshold_and_fold_count():
    assert [folds_for(n) for n in (5, 6, 8, FOLDS_BELOW - 1, FOLDS_BELOW, 128)] == [2, 2, 2, 2, 0, 0]
    for bad in ("3/3", "1/1", "a/b", "all"):
        with pytest.raises(ValueError, match="holdout must be"):
            check_holdout(bad)


def test_the_step_budget_is_about_a_one_split_search(tmp_path):
    # a one-split search of n tries spends about the first in full and a third of each other
    # (successive halving); the folds search spends that, but always pays for two settings' folds
    assert [split_steps(n, 12) for n in (2, 4, 8)] == [16, 24, 40]
    assert [cv_budget(n, 12, 2) for n in (2, 4, 8)] == [24, 24, 40]
    assert fold_steps(12, 2) == 6 and fold_steps(12, 3) == 8  # the preset's passes over a fold's examples
    assert [cv_trials(n, 2) for n in (2, 4, 6, 8, 10)] == [2, 2, 2, 3, 4]
    assert cv_budget(None, 12, 2) is None  # a search bounded by time only


@pytest.fixture(scope="module")
def tiny_search(tiny_llama, tmp_path_factory):
    """One cross-validated search on 8 texts (8 tries' budget), with every event it passed on."""
    folder = tmp_path_factory.mktemp("tiny-search")
    events = []
    result = tune("text", [texts(folder, 8)], folder / "search", base=str(tiny_llama), trials=8, preset="quick",
                  settings=FAST, seed=0, on_event=events.append)
    return result, events


def test_a_tiny_text_set_is_cross_validated_and_the_choice_trains_on_every_example(tiny_search):
    result, _ = tiny_search
    out = result.out

    assert result.folds == 2
    assert result.trials[0].params == {k: v for k, v in result.baseline.items() if k != "steps"}  # the preset first
    scored = [row for row in result.trials if row.status == "complete"]
    assert len(scored) >= 2  # the preset's setting and at least one other, on every fold
    for row in result.trials:
        assert "steps" not in row.params
        folds = [metrics(out / "trials" / f"{row.number:04d}" / f"fold-{i}") for i in range(len(row.fold_losses))]
        held = [f["data_report"] for f in folds]
        assert all(h["n_train"] + h["n_val"] == 8 for h in held)
        # each fold trains the preset's passes over its half of the examples
        assert {f["config"]["steps"] for f in folds} == {fold_steps(result.baseline["steps"], 2)}
        if row.status == "pruned":
            assert row.note.startswith("pruned after 1 folds") and len(row.fold_losses) == 1
            continue
        assert row.status == "complete" and sum(h["n_val"] for h in held) == 8
        assert len(row.fold_losses) == 2 and row.val_loss == pytest.approx(statistics.fmean(row.fold_losses))
        assert row.cv_steps == round(statistics.fmean(row.fold_steps) * 2)
        assert 0 < row.steps <= 2 * fold_steps(result.baseline["steps"], 2)

    best = result.best
    assert best.val_loss == min(r.val_loss for r in result.trials)
    assert result.best_params["steps"] == best.cv_steps
    full = metrics(out / "best-run")
    assert full["config"]["holdout"] == "none" and full["config"]["steps"] == best.cv_steps
    assert full["data_report"]["n_train"] == 8 and full["data_report"]["n_val"] == 0
    assert full["best_val_loss"] is None and (out / "best-run" / "adapter" / "adapter_model.safetensors").exists()

    cv = result.cv
    assert cv["folds"] == 2 and cv["n_examples"] == 8 and cv["best"]["trial"] == best.number
    assert cv["best"]["sd"] == pytest.approx(statistics.stdev(best.fold_losses))
    assert cv["runner_up"]["trial"] != best.number and cv["runner_up"]["mean"] >= cv["best"]["mean"]
    assert json.loads((out / "best.json").read_text())["cv"] == cv


def test_a_cross_validated_search_spends_no_more_than_its_step_budget(tiny_search):
    result, _ = tiny_search
    steps = result.baseline["steps"]
    assert result.budget == cv_budget(8, steps, 2) == split_steps(8, steps)  # what 8 one-split tries spend
    recorded = json.loads((result.out / "trials.json").read_text())
    spent = sum(row["steps"] for row in recorded)
    assert spent == result.steps_spent and 0 < spent <= result.budget
    # and it stopped because a further setting's folds would not fit, not for want of tries
    assert len(recorded) < 8 and spent + 2 * fold_steps(steps, 2) > result.budget


def shown(message) -> tuple[int, int, int]:
    """(percent, step, total) of a progress message's bar."""
    found = re.search(r"(\d+)%`  step (\d+)/(\d+)", message.embeds[0].description)
    return tuple(int(x) for x in found.groups())


@pytest.mark.asyncio
async def test_the_progress_of_a_search_only_goes_forward_in_the_trainer_and_in_the_bot(tiny_search, world):
    result, events = tiny_search
    overall = [(e.overall["step"], e.overall["total"]) for e in events]
    assert len(overall) == len(events) and {e.kind for e in events} >= {"step", "eval", "done"}
    done = [step for step, _ in overall]
    shares = [step / total for step, total in overall]
    assert done == sorted(done) and shares == sorted(shares)  # across folds, settings and the full run
    full = metrics(result.out / "best-run")["steps_done"]
    assert overall[-1] == (result.steps_spent + full, result.steps_spent + full)  # every step, and 100% at the end
    assert sum(e.kind == "start" for e in events) == sum(len(r.fold_losses) for r in result.trials) + 1

    # The bot's progress message, fed the search's real events as the worker would publish them.
    await world.alice.slash(world.channel, "session new", kind="text", title="Tiny")
    thread = world.channel.threads[-1]
    await world.alice.slash(thread, "data add", file=("fox.txt", text_bytes(8)))
    started = await world.alice.slash(thread, "train tune", trials=8)
    db = world.env.bot.services.db
    [job] = db.list_jobs()
    db.mark_job_running(job.id, worker="w", attempt=1)
    seen = []
    for seq, event in enumerate(events):
        db.add_event(job.id, 1, seq, event.to_dict())
        if seq % 7 == 6 or seq == len(events) - 1:
            world.env.bot.dirty.add(job.id)
            await world.env.advance_time(3.5)  # one edit per pump, held back ~3 s
            seen.append(shown(next(m for m in thread.history() if m.id == started.response.id)))
    assert len(seen) > 5 and seen == sorted(seen) and seen[-1][0] == 100
    assert {total for _, _, total in seen} != {seen[0][2]}  # the total shrank as the search ended early
    db.finish_job(job.id, "done", attempt=1, result={"metrics": {"steps_done": full, "stop_reason": "completed"}})
    world.env.bot.dirty.add(job.id)
    await world.env.advance_time(3.5)
    assert thread.history()[-1].content.startswith(f"✅ Job #{job.id} finished after {full} steps")  # the final run's


def test_a_tune_job_on_a_tiny_set_reports_the_folds_spread_in_its_metrics(tiny_llama, tmp_path):
    """The job kind the worker runs: the chosen setting's adapter, and flat cv_* figures for the bot."""
    from storage.jobrun import run_job
    from trainer.rundir import RunDir

    run = RunDir(tmp_path / "job")
    run.root.mkdir()
    config = {"kind": "text", "data": [str(texts(tmp_path, 6))], "base": str(tiny_llama), "trials": 2,
              "preset": "quick", "settings": FAST}
    result = run_job("tune", config, run, resume=False)
    cv = result["cv"]
    assert cv["folds"] == 2 and cv["n_examples"] == 6 and len(result["trials"]) == 2
    got = json.loads(run.metrics.read_text())
    assert got["cv_folds"] == 2 and got["cv_examples"] == 6 and got["cv_best_mean"] == cv["best"]["mean"]
    assert got["cv_best_sd"] == cv["best"]["sd"] and got["cv_runner_mean"] == cv["runner_up"]["mean"]
    assert got["config"]["holdout"] == "none" and got["config"]["steps"] == got["cv_steps"] == cv["steps"]
    assert (run.adapter / "adapter_model.safetensors").exists()


def test_a_larger_set_keeps_one_validation_split(tiny_llama, tmp_path):
    probe = probe_data("text", {**FAST, "data": [str(texts(tmp_path, FOLDS_BELOW))], "base": str(tiny_llama)}, "quick")
    assert probe.n_examples == FOLDS_BELOW and probe.folds == 0
    with pytest.raises(ConfigError, match="'holdout' is set by the search"):
        tune("text", [tmp_path / "texts.txt"], tmp_path / "x", trials=2, settings={"holdout": "0/2"})
    with pytest.raises(ConfigError, match="folds must be 0"):
        tune("text", [tmp_path / "texts.txt"], tmp_path / "x", trials=2, folds=1)


def test_a_tiny_image_set_is_cross_validated_on_its_validation_loss(tiny_sd, tmp_path):
    data = write_image_folder(tmp_path / "images", count=6)
    settings = dict(resolution=RESOLUTION, steps=4, eval_every=2, batch_size=2, sample_every=0, sample_steps=2,
                    sample_seeds=[0], sample_prompts=["a photo of sks"], min_image_side=16, precision="fp32",
                    augment_variants=1, threads=1)
    out = tmp_path / "search"
    result = tune("image", [data], out, base=str(tiny_sd), trials=2, settings=settings, seed=0)

    assert result.folds == 2 and len(result.trials) == 2
    for row in result.trials:
        assert len(row.fold_losses) == 2 and row.val_loss == pytest.approx(statistics.fmean(row.fold_losses))
        held = [metrics(out / "trials" / f"{row.number:04d}" / f"fold-{i}")["data_report"] for i in range(2)]
        assert [h["val_images"] for h in held] == [3, 3] and all(h["train_images"] == 3 for h in held)
    full = metrics(out / "best-run")
    assert full["data_report"]["train_images"] == 6 and full["data_report"]["val_images"] == 0
    assert full["config"]["steps"] == result.best.cv_steps


@pytest.mark.asyncio
async def test_the_bot_says_a_tiny_sets_settings_were_cross_validated_and_how_sure(world):
    from storage.jobkinds.tune import cv_metrics

    await world.alice.slash(world.channel, "session new", kind="text", title="Tiny")
    thread = world.channel.threads[-1]
    await world.alice.slash(thread, "data add", file=("fox.txt", text_bytes(8)))
    report = await world.alice.slash(thread, "data report")
    assert "quick tries score each setting by 2-fold cross-validation" in card(report)
    started = await world.alice.slash(thread, "train tune", trials=8)
    assert (f"With 8 examples (under {FOLDS_BELOW}), quick tries score each setting by 2-fold cross-validation "
            "(3 settings x 2 short runs, about the steps of 8 tries)") in started.response.content

    # The worker ends the job; its metrics carry the folds' spread as storage.jobkinds.tune writes it.
    db = world.env.bot.services.db
    [job] = db.list_jobs()
    cv = {"folds": 2, "n_examples": 8, "steps": 12, "clear": False,
          "best": {"trial": 1, "mean": 2.1034, "sd": 0.2311}, "runner_up": {"trial": 0, "mean": 2.2519, "sd": 0.1987}}
    db.mark_job_running(job.id, worker="w", attempt=1)
    db.finish_job(job.id, "done", attempt=1, result={"metrics": cv_metrics(cv)})
    world.env.bot.dirty.add(job.id)
    await world.env.advance_time(1.5)  # one pump posts the outcome
    said = ("Settings chosen by 2-fold cross-validation over 8 examples: validation loss 2.103 ± 0.231 "
            "(mean ± sd over the folds) against 2.252 ± 0.199 for the runner-up: within the folds' spread, "
            "so a close call (your votes on the samples can settle it). "
            "The final run trained on every example for 12 steps.")
    assert said in thread.history()[-1].content
    await world.env.advance_time(6)
    again = await world.alice.slash(thread, "data report")
    assert f"Last time: {said}" in card(again)


def test_a_setting_behind_the_leader_on_the_same_folds_stops_early():
    import optuna

    from trainer.tune import _behind_leader

    study = optuna.create_study()
    study.add_trial(optuna.trial.create_trial(value=1.0, user_attrs={"fold_losses": [1.0, 1.1, 0.9]}))
    trial = study.ask()
    assert _behind_leader(trial, [1.15]) is None  # within twice the leader's spread (sd 0.1) after one fold
    assert _behind_leader(trial, [1.25]).startswith("pruned after 1 folds: 1.2500 against the leader's 1.0000")
    assert _behind_leader(trial, [1.0, 1.25]) is None  # mean 1.125 vs 1.05: within one sd
    assert _behind_leader(trial, [1.2, 1.3]) is not None


def test_the_choice_line_says_when_the_runner_up_was_stopped_early():
    from bot.report import cv_line
    from storage.jobkinds.tune import cv_metrics

    cv = {"folds": 3, "n_examples": 7, "steps": 9, "clear": True, "best": {"mean": 1.5, "sd": 0.05},
          "runner_up": {"mean": 2.25, "sd": 0.0, "folds_done": 1}}
    assert cv_line(cv_metrics(cv)) == (
        "Settings chosen by 3-fold cross-validation over 7 examples: validation loss 1.500 ± 0.050 (mean ± sd over "
        "the folds) against 2.250 ± 0.000 for the runner-up (stopped after 1 of the folds, clearly behind): a clear "
        "choice. The final run trained on every example for 9 steps.")
    assert cv_line({"steps": 9}) is None  # a search on one validation split says nothing of folds


def test_a_cancelled_cross_validated_search_resumes_with_its_finished_folds(tiny_llama, tmp_path):
    from trainer.cancel import CancelToken
    from trainer.errors import Cancelled

    data, out, cancel = texts(tmp_path, 6), tmp_path / "search", CancelToken()

    def stop_after_first_fold(event):
        if event.kind == "done":
            cancel.cancel()  # the next fold's first step stops the search

    with pytest.raises(Cancelled):
        tune("text", [data], out, base=str(tiny_llama), trials=2, preset="quick", settings=FAST, full_run=False,
             cancel=cancel, on_event=stop_after_first_fold)
    first_fold = out / "trials" / "0000" / "fold-0" / "metrics.json"
    written = first_fold.stat().st_mtime_ns
    result = tune("text", [data], out, base=str(tiny_llama), trials=2, preset="quick", settings=FAST, full_run=False)
    retry = next(r for r in result.trials if r.note == "retry of 0")
    assert retry.status == "complete" and len(retry.fold_losses) == 2
    kept = Path(retry.run_dir)  # the retry took over the interrupted trial's folder and its finished fold
    assert (kept / "metrics.json").stat().st_mtime_ns == written
    assert sum(r.status == "complete" for r in result.trials) == 2


def test_a_cross_validated_trial_publishes_its_first_folds_adapter(tmp_path):
    """So that ``/sample trial:`` works on a tiny set's trials too."""
    from storage.blobs import BlobStore
    from storage.jobkinds.tune import publish_trials, trial_folder
    from trainer.rundir import RunDir

    run = RunDir(tmp_path / "job-1")
    for number, layout in ((0, "fold-0/"), (1, "")):
        folder = trial_folder(run, number) / layout
        (folder / "adapter").mkdir(parents=True)
        (folder / "adapter" / "adapter_config.json").write_text(f'{{"trial": {number}}}')
        (folder / "metrics.json").write_text("{}")
    outputs = {"result": {"trials": [{"number": 0, "status": "complete"}, {"number": 1, "status": "complete"},
                                     {"number": 2, "status": "pruned"}]}}
    publish_trials(BlobStore(tmp_path / "blobs"), run, outputs)
    published = outputs["result"]["trials"]
    assert published[0]["adapter"] and published[1]["adapter"] and published[0]["adapter"] != published[1]["adapter"]
    assert published[0]["metrics"] and "adapter" not in published[2]
