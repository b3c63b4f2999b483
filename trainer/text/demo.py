"""The offline demo: the built-in model learns to speak like Macbeth's characters."""

from __future__ import annotations

from pathlib import Path

from ..events import EventCallback
from .config import TextTrainConfig
from .shakespeare import write_speeches

DEMO_PROMPTS = ["MACBETH:\n", "LADY MACBETH:\n", "First Witch:\n"]


def run_demo(out: str | Path, *, steps: int = 60, speeches: int = 120, on_event: EventCallback | None = None):
    """Train smollm2-135m on ``speeches`` speeches from Macbeth and return the run's result."""
    from .train import train_text

    out = Path(out)
    data = write_speeches(out.parent / f"{out.name}-data" / "macbeth.txt", "macbeth", limit=speeches, min_words=8)
    config = TextTrainConfig(data=[str(data)], out=str(out), base="smollm2-135m", steps=steps, seq_len=128,
                             batch_size=4, prompts=DEMO_PROMPTS, max_new_tokens=40, resume=False)
    if (out / "metrics.json").exists():
        import shutil

        shutil.rmtree(out)  # the demo always starts fresh
    return train_text(config, on_event=on_event)
