"""The queue side of the bot, runnable alone: ``python -m storage.service``.

``QueueService`` is what the bot starts: it takes the writer lock, opens the database, starts
the embedded worker when the queue is SQLite (with Redis, workers are ``loracord worker`` on
the GPU machines), and ticks the ``JobQueue``. The bot calls ``tick()`` from a background task
and shows what it returns; run as a module it just ticks until SIGTERM/SIGINT.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import threading

from .lock import WriterLock
from .queue import JobQueue, TickResult
from .settings import Settings
from .worker import start_worker_process

log = logging.getLogger("loracord.service")


class QueueService:
    def __init__(self, settings: Settings | None = None, *, embedded_worker: bool | None = None):
        self.settings = settings or Settings()
        self.embedded_worker = (not self.settings.uses_redis) if embedded_worker is None else embedded_worker
        self.lock = WriterLock(self.settings.data_dir)
        self.queue: JobQueue | None = None
        self.worker: subprocess.Popen | None = None

    def start(self) -> JobQueue:
        self.lock.acquire()
        self.queue = JobQueue(self.settings)
        self.queue.recover()
        if self.embedded_worker:
            self.worker = start_worker_process(self.settings)
        log.info("queue on %s; embedded worker: %s", self.settings.describe_queue(), bool(self.worker))
        return self.queue

    def tick(self) -> TickResult:
        assert self.queue is not None, "start() first"
        return self.queue.tick()

    def stop(self) -> None:
        if self.worker is not None and self.worker.poll() is None:
            self.worker.terminate()
            try:
                self.worker.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.worker.kill()
        if self.queue is not None:
            self.queue.close()
        self.lock.release()

    def run_forever(self, every_s: float = 0.5) -> None:
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        self.start()
        try:
            while not stop.is_set():
                self.tick()
                stop.wait(every_s)
        finally:
            self.stop()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    QueueService().run_forever()


if __name__ == "__main__":
    main()
