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
