"""One job, in its own process: ``python -m storage.jobrun RUN/job.json``.

The worker starts this in a new process group, so a crash, an out-of-memory kill or a hard
cancel ends only this job. It dispatches on the job's kind, lets the trainer write its run
folder (events.jsonl, checkpoints/, adapter/, ...), and ends by writing ``RUN/result.json``:

- exit 0: ``{"status": "done" | "cancelled", ...}``
- exit 2: ``{"status": "failed", "error": ...}`` for a ``UserError`` (bad config or data)
- anything else: a crash; the traceback is in ``RUN/job.log``.

If the worker that started it dies, a watchdog thread kills this whole process group, so no
orphan keeps training beside the retry.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

from trainer.cancel import CancelToken
from trainer.errors import Cancelled, UserError
from trainer.events import JsonlEventLog, ProgressEvent
from trainer.rundir import RunDir, write_json_atomic


def main(argv: list[str]) -> int:
    spec_path = Path(argv[0])
    spec = json.loads(spec_path.read_text())
    run = RunDir(Path(spec["run_dir"]))
    _watch_parent(os.getppid())
    try:
        result = run_job(spec["kind"], dict(spec["config"]), run, resume=bool(spec.get("resume")))
    except Cancelled:
        result = {"status": "cancelled"}
    except UserError as exc:
        write_json_atomic(run.root / "result.json", {"status": "failed", "error": str(exc)})
        print(f"error: {exc}", file=sys.stderr)
        return 2
    write_json_atomic(run.root / "result.json", result)
    return 0


def run_job(kind: str, config: dict, run: RunDir, *, resume: bool) -> dict:
    """Run one job of ``kind`` in ``run``; returns what goes into result.json."""
    cancel = CancelToken(run.cancel_file)
    # A retried job whose first attempt died before its first checkpoint starts over.
    resume = resume and run.latest_checkpoint() is not None
    if kind in ("noop", "sleep"):
        return run_sleep(config, run, resume=resume, cancel=cancel)
    if kind == "train_text":
        from trainer.text.config import TextTrainConfig
        from trainer.text.train import train_text

        result = train_text(TextTrainConfig.build(**{**config, "out": str(run.root), "resume": resume}), cancel=cancel)
        return _train_result(result)
    if kind == "train_image":
        from trainer.image.config import ImageTrainConfig
        from trainer.image.train import train_image

        result = train_image(ImageTrainConfig.build(**{**config, "out": str(run.root), "resume": resume}), cancel=cancel)
        return _train_result(result)
    if kind == "tune":
        return run_tune(config, run, cancel=cancel)
    raise UserError(f"job kind {kind!r} cannot run in a worker yet")


def run_tune(config: dict, run: RunDir, *, cancel: CancelToken) -> dict:
    """Quick tries in ``RUN/tune`` (the Optuna study resumes there on a retry), then the best
    run's adapter, metrics, chart and samples are put where a training job's would be, so the
    worker publishes them like any run's."""
    import shutil

    from trainer.tune import tune

    spec = dict(config)
    kind, data = spec.pop("kind", "text"), spec.pop("data")
    result = tune(kind, data, run.root / "tune", cancel=cancel, on_event=JsonlEventLog(run.events), **spec)
    if result.full_run is not None:
        best = RunDir(result.full_run)
        shutil.rmtree(run.adapter, ignore_errors=True)
        shutil.copytree(best.adapter, run.adapter)
        for name in ("metrics.json", "loss.png", "samples.json"):
            if (best.root / name).is_file():
                shutil.copy2(best.root / name, run.root / name)
    return {"status": "done", "best_params": result.best_params, "val_loss": result.full_val_loss,
            "trials": [{"number": t.number, "status": t.status, "val_loss": t.val_loss, "params": t.params}
                       for t in result.trials]}


def _train_result(result) -> dict:
    stop = getattr(result, "stop_reason", None)
    status = "cancelled" if stop == "cancelled" else "done"
    return {"status": status, "val_loss": getattr(result, "val_loss", None), "stop_reason": stop}


def run_sleep(config: dict, run: RunDir, *, resume: bool, cancel: CancelToken) -> dict:
    """The trivial job: ``steps`` steps of ``step_s`` seconds, shaped like a training run.

    It writes what a trainer writes (events, a checkpoint every ``checkpoint_every`` steps,
    an adapter folder, metrics and a sample), honours the CANCEL file and resumes from its
    latest checkpoint, so the queue can be tested for real without a model. ``fail`` makes it
    raise a UserError, ``crash_at`` makes it die hard (SIGKILL itself) at that step, and
    ``ignore_cancel`` makes it deaf to the CANCEL file (so only the worker's kill stops it).
    """
    steps, step_s = int(config.get("steps", 0)), float(config.get("step_s", 0.0))
    every = int(config.get("checkpoint_every", 0))
    if config.get("fail"):
        raise UserError(str(config["fail"]))
    run.root.mkdir(parents=True, exist_ok=True)
    log = JsonlEventLog(run.events)
    start = 0
    latest = run.latest_checkpoint() if resume else None
    if latest is not None:
        start = json.loads((latest / "state.json").read_text())["step"]
    log(ProgressEvent("start", start, steps, message=f"resumed from step {start}" if start else None))
    for step in range(start + 1, steps + 1):
        if cancel.is_set() and not config.get("ignore_cancel"):
            log(ProgressEvent("cancelled", step - 1, steps))
            return {"status": "cancelled", "step": step - 1}
        if config.get("crash_at") == step:
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(step_s)
        log(ProgressEvent("step", step, steps, loss=1.0 / step))
        if every and step % every == 0 and step < steps:
            folder = run.checkpoint(step)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "state.json").write_text(json.dumps({"step": step}))
            run.prune_checkpoints(keep=1)
            log(ProgressEvent("checkpoint", step, steps))
    run.adapter.mkdir(parents=True, exist_ok=True)
    (run.adapter / "adapter_config.json").write_text(json.dumps({"steps": steps, "seed": config.get("seed", 0)}))
    samples = run.root / "samples"
    samples.mkdir(exist_ok=True)
    (samples / "sample-0.txt").write_text(f"sample after {steps} steps, seed {config.get('seed', 0)}")
    log(ProgressEvent("sample", steps, steps, message=config.get("prompt", "a prompt"), artifacts=["samples/sample-0.txt"]))
    run.write_metrics({"kind": kind_name(config), "steps": steps})
    log(ProgressEvent("done", steps, steps, loss=1.0 / max(steps, 1)))
    return {"status": "done", "step": steps}


def kind_name(config: dict) -> str:
    return str(config.get("kind", "sleep"))


def _watch_parent(parent: int) -> None:
    """Kill this process group if the worker that started us goes away (we get re-parented)."""

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os.killpg(os.getpgid(0), signal.SIGKILL)
            time.sleep(0.5)

    threading.Thread(target=watch, daemon=True, name="parent-watchdog").start()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
