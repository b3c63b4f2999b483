"""``noop`` and ``sleep``: the trivial job, shaped like a training run, for testing the queue for real."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import time
from pathlib import Path

from trainer.errors import UserError
from trainer.events import JsonlEventLog, ProgressEvent
from trainer.cancel import CancelToken
from trainer.rundir import RunDir, atomic_folder

from .base import JobKind

KINDS = (JobKind("noop", run="storage.jobkinds.sleep:run_sleep", summary="the trivial job"),
         JobKind("sleep", run="storage.jobkinds.sleep:run_sleep", summary="the trivial job, with fault hooks"))


def run_sleep(config: dict, run: RunDir, *, resume: bool, cancel: CancelToken) -> dict:
    """The trivial job: ``steps`` steps of ``step_s`` seconds, shaped like a training run.

    It writes what a trainer writes (events, a checkpoint every ``checkpoint_every`` steps
    written under a temporary name and renamed, one on cancel, an adapter folder, metrics and
    a sample), honours the CANCEL file between steps and resumes from its latest checkpoint,
    so the queue can be tested for real without a model.

    Fault hooks: ``fail`` raises a UserError; ``raise`` raises that built-in exception (e.g.
    ``"MemoryError"``); ``crash_at`` makes it die hard (SIGKILL itself) at that step;
    ``ignore_cancel`` makes it deaf to the CANCEL file (only the worker's kill stops it);
    ``clear_cancel`` deletes RUN/CANCEL at start as a CLI run does; ``load_s`` pauses before the
    first event as loading a model does (deaf to the CANCEL file); ``eval_every``/``eval_s``
    add an evaluation (that, like a real one, does not look at the CANCEL file) after those
    steps; ``checkpoint_s`` pauses halfway through writing each checkpoint and ``checkpoint_kb``
    sizes its weights file. ``probe_dir`` records every trainer that starts and checks with a
    lock per job that no other trainer of this job is alive (``probe_dir/overlaps``).
    """
    steps, step_s = int(config.get("steps", 0)), float(config.get("step_s", 0.0))
    every = int(config.get("checkpoint_every", 0))
    eval_every, eval_s = int(config.get("eval_every", 0)), float(config.get("eval_s", 0.0))
    if config.get("probe_dir"):
        _probe(Path(config["probe_dir"]), run)
    if config.get("fail"):
        raise UserError(str(config["fail"]))
    if config.get("raise"):
        raise {"MemoryError": MemoryError, "ValueError": ValueError, "OSError": OSError,
               "RuntimeError": RuntimeError}[config["raise"]](config.get("message", "injected"))
    if config.get("clear_cancel"):
        run.cancel_file.unlink(missing_ok=True)
    time.sleep(float(config.get("load_s", 0.0)))
    run.root.mkdir(parents=True, exist_ok=True)
    log = JsonlEventLog(run.events)
    start = 0
    latest = run.latest_checkpoint() if resume else None
    if latest is not None:
        start = json.loads((latest / "state.json").read_text())["step"]
    log(ProgressEvent("start", start, steps, message=f"resumed from step {start}" if start else None))

    def checkpoint(step: int) -> None:
        with atomic_folder(run.checkpoint(step)) as tmp:
            weights = f"step {step:08d}\n".encode()  # 16 bytes, different for each step
            (tmp / "trainable.safetensors").write_bytes(weights * (64 * int(config.get("checkpoint_kb", 0)) or 1))
            time.sleep(float(config.get("checkpoint_s", 0.0)))
            (tmp / "state.json").write_text(json.dumps({"step": step}))
        run.prune_checkpoints(keep=1)
        log(ProgressEvent("checkpoint", step, steps))

    for step in range(start + 1, steps + 1):
        if cancel.is_set() and not config.get("ignore_cancel"):
            checkpoint(step - 1)
            log(ProgressEvent("cancelled", step - 1, steps))
            return {"status": "cancelled", "step": step - 1}
        if config.get("crash_at") == step:
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(step_s)
        log(ProgressEvent("step", step, steps, loss=1.0 / step))
        if eval_every and step % eval_every == 0:
            time.sleep(eval_s)
            log(ProgressEvent("eval", step, steps, val_loss=1.0 / step))
        if every and step % every == 0 and step < steps:
            checkpoint(step)
    run.adapter.mkdir(parents=True, exist_ok=True)
    (run.adapter / "adapter_config.json").write_text(json.dumps({"steps": steps, "seed": config.get("seed", 0)}))
    samples = run.root / "samples"
    samples.mkdir(exist_ok=True)
    (samples / "sample-0.txt").write_text(f"sample after {steps} steps, seed {config.get('seed', 0)}")
    log(ProgressEvent("sample", steps, steps, message=config.get("prompt", "a prompt"), artifacts=["samples/sample-0.txt"]))
    run.write_metrics({"kind": kind_name(config), "status": "done", "steps": steps})
    log(ProgressEvent("done", steps, steps, loss=1.0 / max(steps, 1)))
    return {"status": "done", "step": steps}


def _probe(folder: Path, run: RunDir) -> None:
    """For fault tests: note this trainer in ``folder/trainers`` and hold ``folder/<job>.lock``;
    finding it held means two trainers of one job are alive at once (``folder/overlaps``)."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "trainers").open("a") as f:
        f.write(f"{run.root.name} {os.getpid()} {time.time()}\n")
    fd = os.open(folder / f"{run.root.name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        with (folder / "overlaps").open("a") as f:
            f.write(f"{run.root.name} {os.getpid()} {time.time()}\n")


def kind_name(config: dict) -> str:
    return str(config.get("kind", "sleep"))
