"""The run folder: where a training run writes everything it produces.

Layout (the same for text and image runs)::

    RUN/
      adapter/            peft adapter: adapter_model.safetensors + adapter_config.json
      metrics.json        kind, config, data report, loss and validation curves, timings
      loss.png            loss and validation-loss curves
      events.jsonl        one ProgressEvent per line
      checkpoints/        step-N/ folders for exact resume (kept: the latest one); each is written
                          under a hidden temporary name and renamed, so a step-N folder is complete
                          and never changes (see ``atomic_folder``)
      CANCEL              present while a cancel is requested (see trainer.cancel)

Text runs add ``samples.json`` (before/after generations); image runs add ``samples/``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .errors import UserError


@dataclass(frozen=True)
class RunDir:
    root: Path

    @classmethod
    def create(cls, root: str | Path, *, resume: bool = False) -> "RunDir":
        """Prepare ``root`` for a run; refuses to overwrite a finished run unless resuming."""
        run = cls(Path(root))
        if run.metrics.exists() and not resume and not run.latest_checkpoint():
            raise UserError(f"{run.root} already holds a finished run; pick another --out folder.")
        run.root.mkdir(parents=True, exist_ok=True)
        return run

    @classmethod
    def open(cls, root: str | Path) -> "RunDir":
        """Open an existing run folder for reading (sample, eval, export)."""
        run = cls(Path(root))
        if not run.metrics.exists():
            raise UserError(f"{run.root} is not a loracord run folder (no metrics.json).")
        return run

    @property
    def adapter(self) -> Path:
        return self.root / "adapter"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def loss_chart(self) -> Path:
        return self.root / "loss.png"

    @property
    def events(self) -> Path:
        return self.root / "events.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def cancel_file(self) -> Path:
        return self.root / "CANCEL"

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"step-{step:06d}"

    def complete_checkpoints(self) -> list[Path]:
        """The finished ``step-N`` folders, oldest first (temporary folders are not checkpoints)."""
        if not self.checkpoints.is_dir():
            return []
        return sorted(p for p in self.checkpoints.iterdir()
                      if _CHECKPOINT_NAME.fullmatch(p.name) and (p / "state.json").exists())

    def latest_checkpoint(self) -> Path | None:
        done = self.complete_checkpoints()
        return done[-1] if done else None

    def prune_checkpoints(self, keep: int = 1) -> None:
        done = self.complete_checkpoints()
        for old in done[:-keep] if keep else done:
            shutil.rmtree(old, ignore_errors=True)

    def read_metrics(self) -> dict[str, Any]:
        return json.loads(self.metrics.read_text(encoding="utf-8"))

    def write_metrics(self, data: dict[str, Any]) -> None:
        write_json_atomic(self.metrics, data)


_CHECKPOINT_NAME = re.compile(r"step-(\d+)")


def which_step(metrics: dict) -> str:
    """Which step's weights a stopped run's adapter holds, so nobody mistakes it for a finished one;
    '' for a run that completed or stopped early (its best adapter is what it was meant to keep)."""
    reason, step = metrics.get("stop_reason"), metrics.get("best_step") or metrics.get("steps_done")
    if reason in (None, "completed", "early_stopped"):
        return ""
    return f"The run stopped ({reason}): this is the adapter of step {step}."


def checkpoint_step(name: str | None) -> int | None:
    """The step of a checkpoint named ``step-000012`` (or ``step-000012/tree-hash``, as the queue
    records it), else None."""
    match = _CHECKPOINT_NAME.fullmatch((name or "").split("/")[0])
    return int(match.group(1)) if match else None


@contextlib.contextmanager
def atomic_folder(folder: Path) -> Iterator[Path]:
    """Fill a folder under a hidden temporary name; it appears as ``folder`` only when complete.

    ``with atomic_folder(run.checkpoint(step)) as tmp: ...write into tmp...``. On an error the
    temporary folder is removed and ``folder`` stays as it was. Readers (a worker uploading the
    latest checkpoint) thus never see a folder that is still being written.
    """
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if folder.exists():  # rewriting a checkpoint of the same step (a resumed run cancelled at once)
        old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        folder.rename(old)
        tmp.rename(folder)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(folder)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON through a temporary file and a rename, so readers never see half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
    os.replace(tmp, path)


@dataclass
class RunStart:
    """A run folder opened for training: where to write, what to emit, when to stop."""

    run: RunDir
    config: Any  # the config to train with: on resume, the one the run started with
    emit: Any  # EventCallback writing events.jsonl and calling the caller's callback
    cancel: Any  # CancelToken
    checkpoint: Path | None  # the checkpoint to resume from


def start_run(config, on_event=None, cancel=None) -> RunStart:
    """Open ``config.out`` for a text or image run; on ``resume``, reload the saved config.

    A resumed run trains with the settings it started with (kept in each checkpoint), so
    its batches, schedule and results are the ones an uninterrupted run would have had.
    """
    from .cancel import CancelToken
    from .errors import ConfigError
    from .events import JsonlEventLog, fan_out

    run = RunDir.create(config.out, resume=config.resume)
    cancel = cancel or CancelToken(run.cancel_file)
    cancel.clear()  # a stale CANCEL of an earlier run; a queue worker's token keeps its file
    emit = fan_out(JsonlEventLog(run.events), on_event)
    checkpoint = run.latest_checkpoint() if config.resume else None
    if config.resume and checkpoint is None:
        raise ConfigError(f"--resume given, but {run.root} has no checkpoint to resume from.")
    if checkpoint is not None:
        saved = json.loads((checkpoint / "state.json").read_text())["config"]
        config = type(config)(**{**type(config).added_later, **saved, "resume": True})
    return RunStart(run, config, emit, cancel, checkpoint)
