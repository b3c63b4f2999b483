"""Cooperative cancel: the loop checks a token between steps and stops cleanly.

The token is backed by a file so that another process (the CLI's Ctrl-C handler, a queue
worker, the bot) can cancel a run it did not start: ``touch RUN/CANCEL``.

A run started from the command line clears a CANCEL file left by an earlier cancelled run.
A run started by a queue worker does not (``owns_file=False``): the worker removed any stale
file before it started the run, and a file there now is a cancel the worker just asked for.
"""

from __future__ import annotations

import threading
from pathlib import Path


class CancelToken:
    """Set by ``cancel()`` in this process or by creating ``path`` from any process."""

    def __init__(self, path: str | Path | None = None, *, owns_file: bool = True):
        self.path = Path(path) if path is not None else None
        self.owns_file = owns_file
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.touch()

    def is_set(self) -> bool:
        return self._event.is_set() or (self.path is not None and self.path.exists())

    def clear(self) -> None:
        """Forget a cancel; the file too, unless someone else owns it (see the module's notes)."""
        self._event.clear()
        if self.owns_file and self.path is not None:
            self.path.unlink(missing_ok=True)
