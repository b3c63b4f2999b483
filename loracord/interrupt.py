"""Ctrl-C during a run from the command line: stop cleanly after the step, or at once on the second."""

from __future__ import annotations

from pathlib import Path

import typer


def cancel_on_ctrl_c(out: Path):
    """A cancel token set by the first Ctrl-C: the run stops after its step, with a checkpoint
    to ``--resume`` from. A second Ctrl-C stops at once."""
    import signal

    from trainer.cancel import CancelToken

    token = CancelToken(Path(out) / "CANCEL")

    def on_interrupt(signum, frame):
        if token.is_set():
            raise KeyboardInterrupt
        token.cancel()
        typer.secho("cancelling after this step (Ctrl-C again to stop at once)", fg=typer.colors.YELLOW, err=True)

    signal.signal(signal.SIGINT, on_interrupt)
    return token
