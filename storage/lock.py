"""OS file locks: who may write the database, and who trains in a run folder.

The bot takes ``WriterLock(data_dir)`` for its whole life; ``loracord db migrate`` and
``loracord jobs cancel`` take it for a moment, so they write only while the bot is down (the
lock dies with its process, also on kill -9, so a crash never leaves it stuck).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from trainer.errors import UserError


class DatabaseBusy(UserError):
    """Another process (the bot) is writing the database."""


class _PidLock:
    """An exclusive OS lock on the file ``path``, which holds its holder's pid while it is held.

    The kernel releases it only when its process is gone (also after kill -9), so a crash never
    leaves it stuck."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return True

    def holder(self) -> str:
        """The pid written by the holder (or '?')."""
        try:
            return self.path.read_text(errors="replace").strip() or "?"
        except OSError:
            return "?"

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


class WriterLock(_PidLock):
    def __init__(self, data_dir: str | Path):
        super().__init__(Path(data_dir) / "writer.lock")

    def acquire(self) -> "WriterLock":
        """Take the lock or raise ``DatabaseBusy`` naming the holder's pid."""
        if not self.try_acquire():
            raise DatabaseBusy(f"the database in {self.path.parent} is in use by process {self.holder()} "
                               "(the bot?); stop it first")
        return self


class RunLock(_PidLock):
    """An exclusive OS lock on a file in a run folder, held by whoever trains in it.

    The worker holds ``RUN/worker.lock`` for a whole attempt and the job process holds
    ``RUN/trainer.lock`` while it trains, so a retry on the same machine waits until the
    attempt before it has really stopped: the kernel releases the lock only when its process
    is gone (also after kill -9). Waiting calls ``while_waiting()`` about every ``every_s``
    seconds; it may raise to give up.
    """

    def acquire(self, while_waiting=None, every_s: float = 0.1) -> "RunLock":
        import time

        while not self.try_acquire():
            if while_waiting is not None:
                while_waiting()
            time.sleep(every_s)
        return self
