"""Structured progress events, emitted by every trainer for the CLI, the queue and the bot.

A trainer takes ``on_event: Callable[[ProgressEvent], None]``. ``JsonlEventLog`` appends each
event as one JSON line to ``events.jsonl`` in the run folder, which is how a worker process
publishes progress without sharing memory with whoever watches it.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Literal

EventKind = Literal["start", "step", "eval", "sample", "checkpoint", "done", "cancelled", "stopped_early", "error"]


@dataclass
class ProgressEvent:
    """One thing that happened in a run.

    ``step`` counts optimizer steps done so far, out of ``total_steps``; ``tokens`` counts the
    (non-padding) tokens trained on so far. Fields that do not
    apply to an event kind stay ``None``. ``artifacts`` names files (relative to the run
    folder) that this event produced, such as a sample grid or a loss chart.
    """

    kind: EventKind
    step: int
    total_steps: int
    loss: float | None = None
    val_loss: float | None = None
    lr: float | None = None
    tokens_per_s: float | None = None
    eta_s: float | None = None
    tokens: int | None = None
    message: str | None = None
    artifacts: list[str] = field(default_factory=list)
    time: float = field(default_factory=time.time)
    shows: dict | None = None  # a sample grid's rows and columns: {"prompts": [...], "seeds": [...]}
    # quick tries: steps of the whole search and its full run, {"step", "total", "eta_s"}, only forward
    overall: dict | None = None
    scores: dict | None = None  # the final samples' scores (trainer.scores), posted under them

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ProgressEvent":
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


EventCallback = Callable[[ProgressEvent], None]


def grid_words(shows: dict) -> str:
    """What a sample grid shows, in a member's words: its prompts (rows) and seeds (columns)."""
    prompts = " · ".join(f"{i}. “{p}”" for i, p in enumerate(shows.get("prompts") or [], 1))
    seeds = ", ".join(str(s) for s in shows.get("seeds") or [])
    return f"grid: rows are prompts {prompts}; columns are seeds {seeds}"


class JsonlEventLog:
    """Appends events to a JSON-lines file; one line per event, flushed at once."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, event: ProgressEvent) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(event.to_dict()) + "\n")

    def read(self) -> Iterator[ProgressEvent]:
        if not self.path.exists():
            return
        for line in self.path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                yield ProgressEvent.from_dict(json.loads(line))


def fan_out(*callbacks: EventCallback | None) -> EventCallback:
    """One callback that calls each of ``callbacks`` (``None`` entries are skipped)."""
    live = [cb for cb in callbacks if cb is not None]

    def emit(event: ProgressEvent) -> None:
        for cb in live:
            cb(event)

    return emit
