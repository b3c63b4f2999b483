"""Helpers for tests and the queue benchmark: a throwaway redis-server, and ticking until done."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from typing import Callable, Iterator

from .queue import JobQueue


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def redis_url() -> Iterator[str]:
    """``LORACORD_TEST_REDIS_URL`` when set (CI starts one), else a redis-server of our own.

    Without either, fail loudly under CI (``CI=true``) and raise ``LookupError`` elsewhere so the
    caller can skip.
    """
    url = os.environ.get("LORACORD_TEST_REDIS_URL")
    if url:
        import redis

        redis.Redis.from_url(url).flushall()
        yield url
        return
    binary = shutil.which("redis-server")
    if binary is None:
        message = "redis-server is not installed and LORACORD_TEST_REDIS_URL is not set"
        if os.environ.get("CI", "").lower() == "true":
            raise RuntimeError(message)
        raise LookupError(message)
    port = free_port()
    with tempfile.TemporaryDirectory() as folder:
        proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                                 "--dir", folder], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_port(port)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def _wait_port(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"redis-server did not open port {port}")


def tick_until(queue: JobQueue, done: Callable[[], bool], *, timeout: float = 180, every: float = 0.05,
               what: str = "condition") -> None:
    """Tick the queue (as the bot does) until ``done()`` or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        queue.tick()
        if done():
            return
        time.sleep(every)
    jobs = [(j.id, j.status, j.error) for j in queue.db.list_jobs(limit=10)]
    raise TimeoutError(f"timed out waiting for {what}; jobs: {jobs}")
