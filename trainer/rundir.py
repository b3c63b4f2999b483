"""The run folder: where a training run writes everything it produces.

Layout (the same for text and image runs)::

    RUN/
      adapter/            peft adapter: adapter_model.safetensors + adapter_config.json
      metrics.json        kind, config, data report, loss and validation curves, timings
      loss.png            loss and validation-loss curves
      events.jsonl        one ProgressEvent per line
      checkpoints/        step-N/ folders for exact resume (kept: the latest one)
      CANCEL              present while a cancel is requested (see trainer.cancel)

Text runs add ``samples.json`` (before/after generations); image runs add ``samples/``.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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

    def latest_checkpoint(self) -> Path | None:
        if not self.checkpoints.is_dir():
            return None
        done = sorted(p for p in self.checkpoints.glob("step-*") if (p / "state.json").exists())
        return done[-1] if done else None

    def prune_checkpoints(self, keep: int = 1) -> None:
        done = sorted(p for p in self.checkpoints.glob("step-*") if (p / "state.json").exists())
        for old in done[:-keep] if keep else done:
            shutil.rmtree(old, ignore_errors=True)

    def read_metrics(self) -> dict[str, Any]:
        return json.loads(self.metrics.read_text(encoding="utf-8"))

    def write_metrics(self, data: dict[str, Any]) -> None:
        write_json_atomic(self.metrics, data)


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
    cancel.clear()
    emit = fan_out(JsonlEventLog(run.events), on_event)
    checkpoint = run.latest_checkpoint() if config.resume else None
    if config.resume and checkpoint is None:
        raise ConfigError(f"--resume given, but {run.root} has no checkpoint to resume from.")
    if checkpoint is not None:
        saved = json.loads((checkpoint / "state.json").read_text())["config"]
        config = type(config)(**{**saved, "resume": True})
    return RunStart(run, config, emit, cancel, checkpoint)
