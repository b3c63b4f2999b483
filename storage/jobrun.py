"""One job, in its own process: ``python -m storage.jobrun RUN/job.json``.

The worker starts this in a new process group, so a crash, an out-of-memory kill or a hard
cancel ends only this job. It holds ``RUN/trainer.lock`` while it runs (one trainer per run
folder, whatever happens to the workers), runs the job's kind (``storage.jobkinds``), lets the trainer
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
from trainer.rundir import RunDir, write_json_atomic

from . import jobkinds

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
    """Run one job of ``kind`` (see ``storage.jobkinds``) in ``run``; returns what goes into result.json."""
    # The worker owns RUN/CANCEL: it removed any stale one and re-creates it while a cancel stands.
    cancel = CancelToken(run.cancel_file, owns_file=False)
    # A retried job whose first attempt died before its first checkpoint starts over.
    resume = resume and run.latest_checkpoint() is not None
    return jobkinds.get(kind).run_job(config, run, resume=resume, cancel=cancel)


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
