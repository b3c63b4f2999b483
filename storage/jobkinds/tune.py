"""``tune``: quick tries, an Optuna search over short runs, then a full run of the best settings.

The study lives in ``RUN/tune`` (a retry resumes it there). The best run's adapter, metrics,
chart and samples are put where a training job's would be, so they are published like any
run's; each finished trial's adapter and metrics are published too, so that ``sample`` jobs
on any worker can generate from one trial.
"""

from __future__ import annotations

import json
import shutil

from .base import JobKind

KIND = JobKind("tune", run="storage.jobkinds.tune:run_tune", prepare="storage.jobkinds.train:fetch_dataset",
               publish="storage.jobkinds.tune:publish_trials", multi_gpu=True, summary="quick tries")


def run_tune(config: dict, run, *, resume: bool, cancel) -> dict:
    from trainer.events import JsonlEventLog
    from trainer.rundir import RunDir, write_json_atomic
    from trainer.spec import RunSpec

    spec = RunSpec.from_job("tune", config)
    result = spec.search(trials_root(run), cancel=cancel, on_event=JsonlEventLog(run.events))
    if result.full_run is not None:
        best = RunDir(result.full_run)
        shutil.rmtree(run.adapter, ignore_errors=True)
        shutil.copytree(best.adapter, run.adapter)
        for name in ("metrics.json", "loss.png", "samples.json"):
            if (best.root / name).is_file():
                shutil.copy2(best.root / name, run.root / name)
        if result.cv:  # flat numbers, so they travel with the job's metrics to the bot (bot.report.cv_line)
            write_json_atomic(run.metrics, {**json.loads(run.metrics.read_text()), **cv_metrics(result.cv)})
    return {"status": "done", "best_params": result.best_params, "val_loss": result.full_val_loss, "cv": result.cv,
            "trials": [{"number": t.number, "status": t.status, "val_loss": t.val_loss, "params": t.params}
                       for t in result.trials]}


def cv_metrics(cv: dict) -> dict:
    """A cross-validated search's choice as flat ``cv_*`` numbers (``trainer.tune.cv_summary``)."""
    best, runner = cv["best"], cv.get("runner_up") or {}
    flat = {"cv_folds": cv["folds"], "cv_examples": cv["n_examples"], "cv_steps": cv.get("steps"),
            "cv_best_mean": best["mean"], "cv_best_sd": best["sd"], "cv_runner_mean": runner.get("mean"),
            "cv_runner_sd": runner.get("sd"), "cv_runner_folds": runner.get("folds_done"),
            "cv_clear": int(bool(cv.get("clear")))}
    return {k: v for k, v in flat.items() if v is not None}


def trials_root(run):
    return run.root / "tune"


def trial_folder(run, number: int):
    return trials_root(run) / "trials" / f"{number:04d}"


def publish_trials(blobs, run, outputs: dict) -> None:
    """Put each complete trial's adapter (a tree) and metrics.json in the blob store and name
    them in its row of the result (``adapter``, ``metrics``); its text samples become samples
    of its trial, so members can compare two trials' answers to one prompt (``/train compare``)."""
    for trial in (outputs.get("result") or {}).get("trials", []):
        folder = trial_folder(run, int(trial["number"]))
        if not (folder / "adapter").is_dir() and (folder / "fold-0" / "adapter").is_dir():
            folder = folder / "fold-0"  # a cross-validated trial: its first fold's run stands for it
        if trial.get("status") != "complete" or not (folder / "adapter").is_dir():
            continue
        trial["adapter"] = blobs.put_tree(folder / "adapter")
        if (folder / "metrics.json").is_file():
            trial["metrics"] = blobs.put_file(folder / "metrics.json")
            outputs.setdefault("samples", []).extend(trial_samples(blobs, folder, int(trial["number"])))


def trial_samples(blobs, folder, number: int) -> list[dict]:
    """A trial's text samples (samples.json) as sample rows of its trial, with the run's seed."""
    from trainer import kinds

    if not (folder / "samples.json").is_file():
        return []
    seed = json.loads((folder / "metrics.json").read_text()).get("config", {}).get("seed")
    rows = json.loads((folder / "samples.json").read_text())
    return [{"blob": blobs.put_bytes((r.get("after") or r.get("text")).encode()), "prompt": r.get("prompt"),
             "seed": seed, "kind": kinds.TEXT.name, "trial": number, "scores": r.get("scores")}
            for r in rows if r.get("after") or r.get("text")]
