"""One job, in its own process: ``python -m storage.jobrun RUN/job.json``.

The worker starts this in a new process group, so a crash, an out-of-memory kill or a hard
cancel ends only this job. It holds ``RUN/trainer.lock`` while it runs (one trainer per run
folder, whatever happens to the workers), dispatches on the job's kind, lets the trainer
write its run folder (events.jsonl, checkpoints/, adapter/, ...), and ends by writing
``RUN/result.json``:

- exit 0: ``{"status": "done" | "cancelled", ...}``
- exit 2: ``{"status": "failed", "error": ...}``: a permanent failure, not worth retrying: bad
  data or settings (a ``UserError``), a corrupt or missing model file, a bug
- exit 3: the same for a passing failure worth another attempt (out of memory)
- anything else: a crash before any of this could run; the traceback is in ``RUN/job.log``.

If the worker that started it dies, a watchdog thread kills this whole process group, so no
orphan keeps training beside the retry.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

from trainer.cancel import CancelToken
from trainer.errors import Cancelled, UserError
from trainer.events import JsonlEventLog, ProgressEvent
from trainer.rundir import RunDir, atomic_folder, write_json_atomic

EXIT_DONE, EXIT_PERMANENT, EXIT_TRANSIENT = 0, 2, 3


def main(argv: list[str]) -> int:
    spec_path = Path(argv[0])
    spec = json.loads(spec_path.read_text())
    run = RunDir(Path(spec["run_dir"]))
    _watch_parent(os.getppid())
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:  # with accelerate launch: one lock per machine
        _hold_trainer_lock(run)
    try:
        result = run_job(spec["kind"], dict(spec["config"]), run, resume=bool(spec.get("resume")))
    except Cancelled:
        result = {"status": "cancelled"}
    except Exception as exc:
        reason, transient = classify_failure(exc, spec.get("config") or {})
        if not isinstance(exc, UserError):
            traceback.print_exc()
        write_json_atomic(run.root / "result.json", {"status": "failed", "error": reason, "retry": transient})
        print(f"error: {reason}", file=sys.stderr)
        return EXIT_TRANSIENT if transient else EXIT_PERMANENT
    write_json_atomic(run.root / "result.json", result)
    return EXIT_DONE


def classify_failure(exc: BaseException, config: dict) -> tuple[str, bool]:
    """A readable reason for a failed job, and whether another attempt could succeed.

    Passing: running out of memory (the machine may be busier than usual) and lost contact.
    Everything else is permanent and fails the job at once: the user's data or settings, a
    model file that is corrupt or missing (retrying reads the same bytes), or a bug.
    """
    name = type(exc).__name__
    text = str(exc).strip() or name
    base = config.get("base") or "the base model"
    if isinstance(exc, UserError):
        return text, False
    if isinstance(exc, MemoryError) or name == "OutOfMemoryError" or "out of memory" in text.lower():
        return f"out of memory ({name}: {text[:300]})", True
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return f"lost contact with a service the job needs ({name}: {text[:300]})", True
    if name == "SafetensorError" or "deserializing header" in text or "safetensors" in type(exc).__module__:
        return (f"a model file of {base} is corrupt or incomplete (safetensors: {text[:300]}); "
                "download the model again or choose another base model"), False
    if isinstance(exc, OSError) and (exc.errno in (None, errno.ENOENT, errno.EISDIR, errno.ENOTDIR, errno.EACCES)):
        return f"{base} could not be loaded: {text[:400]}", False
    if isinstance(exc, OSError):
        return f"the machine failed to read or write files ({name}: {text[:300]})", True
    if isinstance(exc, (ValueError, TypeError, KeyError)):
        return f"the job's data or settings were refused ({name}: {text[:400]})", False
    return f"the trainer failed ({name}: {text[:400]}); see job.log in the run folder", False


def _hold_trainer_lock(run: RunDir) -> None:
    """Take RUN/trainer.lock for the life of this process (the kernel frees it when we die).
    A trainer of an earlier attempt that still runs here makes us wait for it to end."""
    run.root.mkdir(parents=True, exist_ok=True)
    fd = os.open(run.root / "trainer.lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    # Kept open (and locked) on purpose until the process ends.


def run_job(kind: str, config: dict, run: RunDir, *, resume: bool) -> dict:
    """Run one job of ``kind`` in ``run``; returns what goes into result.json."""
    # The worker owns RUN/CANCEL: it removed any stale one and re-creates it while a cancel stands.
    cancel = CancelToken(run.cancel_file, owns_file=False)
    # A retried job whose first attempt died before its first checkpoint starts over.
    resume = resume and run.latest_checkpoint() is not None
    if kind in ("noop", "sleep"):
        return run_sleep(config, run, resume=resume, cancel=cancel)
    if kind in ("train_text", "train_image"):
        from trainer.spec import RunSpec  # the job row's run spec, read as the trainer reads it

        return _train_result(RunSpec.from_job(kind, config).train(run.root, resume=resume, cancel=cancel))
    if kind == "tune":
        return run_tune(config, run, cancel=cancel)
    raise UserError(f"job kind {kind!r} cannot run in a worker yet")


def run_tune(config: dict, run: RunDir, *, cancel: CancelToken) -> dict:
    """Quick tries in ``RUN/tune`` (the Optuna study resumes there on a retry), then the best
    run's adapter, metrics, chart and samples are put where a training job's would be, so the
    worker publishes them like any run's."""
    import shutil

    from trainer.spec import RunSpec

    spec = RunSpec.from_job("tune", config)
    result = spec.search(run.root / "tune", cancel=cancel, on_event=JsonlEventLog(run.events))
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

    It writes what a trainer writes (events, a checkpoint every ``checkpoint_every`` steps
    written under a temporary name and renamed, one on cancel, an adapter folder, metrics and
    a sample), honours the CANCEL file between steps and resumes from its latest checkpoint,
    so the queue can be tested for real without a model.

    Fault hooks: ``fail`` raises a UserError; ``raise`` raises that built-in exception (e.g.
    ``"MemoryError"``); ``crash_at`` makes it die hard (SIGKILL itself) at that step;
    ``ignore_cancel`` makes it deaf to the CANCEL file (only the worker's kill stops it);
    ``clear_cancel`` deletes RUN/CANCEL at start as a CLI run does; ``eval_every``/``eval_s``
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
