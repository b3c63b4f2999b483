"""Who may write the database: one process at a time, held with an OS file lock.

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


class WriterLock:
    def __init__(self, data_dir: str | Path):
        self.path = Path(data_dir) / "writer.lock"
        self._fd: int | None = None

    def acquire(self) -> "WriterLock":
        """Take the lock or raise ``DatabaseBusy`` naming the holder's pid."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise DatabaseBusy(f"the database in {self.path.parent} is in use by process {holder} "
                               "(the bot?); stop it first") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def try_acquire(self) -> bool:
        try:
            self.acquire()
        except DatabaseBusy:
            return False
        return True

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "WriterLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
