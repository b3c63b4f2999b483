"""A rich progress bar fed by the trainer's ProgressEvents."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from trainer.events import ProgressEvent


class RichProgress:
    """Context manager and event callback: one bar per run, loss and val loss in its text."""

    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=self.console)
        self.task = None
        self.val_loss = None

    def __enter__(self) -> "RichProgress":
        return self  # the live display starts with the first event, so early errors print cleanly

    def __exit__(self, *exc) -> None:
        if self.task is not None:
            self.progress.stop()

    def __call__(self, event: ProgressEvent) -> None:
        if self.task is None:
            self.progress.start()
            self.task = self.progress.add_task("training", total=event.total_steps, info="")
        if event.val_loss is not None:
            self.val_loss = event.val_loss
        parts = []
        if event.loss is not None:
            parts.append(f"loss {event.loss:.3f}")
        if self.val_loss is not None:
            parts.append(f"val {self.val_loss:.3f}")
        if event.tokens_per_s:
            parts.append(f"{event.tokens_per_s:,.0f} tok/s")
        self.progress.update(self.task, completed=event.step, total=event.total_steps, info="  ".join(parts))
        if event.message and event.kind in {"start", "done", "cancelled", "stopped_early", "checkpoint", "error"}:
            self.progress.console.print(f"[dim]{event.message}[/]")
