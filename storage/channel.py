"""The channel between workers and the bot, kept in the queue's own storage (SQLite or Redis).

Workers never open the database. They publish *reports* as key/value pairs in a huey storage
named ``<queue>.reports``; the bot's ``JobCollector`` reads them all, writes them into the
database, and only then deletes them. A crash in between replays the reports, which the
database absorbs because every report has a stable key:

====================  ================================================================
``s:JOB:ATTEMPT``     the attempt started (worker id, pid)
``e:JOB:ATTEMPT:SEQ`` event SEQ of the attempt (a ``ProgressEvent`` dict + blob hashes)
``h:JOB:ATTEMPT``     heartbeat (overwritten; a counter the bot compares with its last)
``r:JOB:ATTEMPT``     the attempt ended: status, error, and the blobs it produced
====================  ================================================================

The other direction is ``<queue>.control``: ``c:JOB`` asks the worker running JOB to cancel
(it stays until the job has ended, and the worker keeps acting on it until its trainer has
stopped); ``a:JOB`` holds the attempt the bot now counts on, so a worker still running an
older attempt that the bot took for lost stops it. Large things (samples, adapters, checkpoints) go to the blob store; reports carry their hashes.
"""

from __future__ import annotations

import json
from typing import Any

from huey.constants import EmptyData

from .settings import Settings


def make_storage(settings: Settings, suffix: str):
    """A huey storage in the queue's backend, named ``<queue_name>.<suffix>``."""
    name = f"{settings.queue_name}.{suffix}" if suffix else settings.queue_name
    if settings.uses_redis:
        from huey.storage import PriorityRedisStorage

        return PriorityRedisStorage(name=name, url=settings.queue_url, clean_name=False)
    from huey.storage import SqliteStorage

    settings.queue_path.parent.mkdir(parents=True, exist_ok=True)
    return SqliteStorage(name=name, filename=str(settings.queue_path), timeout=30)


def _key(kind: str, *parts: int) -> str:
    return ":".join([kind, *(f"{p:08d}" if kind == "e" and i == 2 else str(p) for i, p in enumerate(parts))])


def parse_key(key: str) -> tuple[str, int, int, int]:
    """``e:12:1:00000003`` -> ("e", 12, 1, 3); keys without a seq get seq -1."""
    kind, *nums = key.split(":")
    job, attempt, *rest = (int(n) for n in nums)
    return kind, job, attempt, rest[0] if rest else -1


class Channel:
    """Reports (worker -> bot) and control messages (bot -> worker)."""

    def __init__(self, settings: Settings):
        self.reports = make_storage(settings, "reports")
        self.control = make_storage(settings, "control")

    # ---- worker side
    def publish(self, kind: str, job_id: int, attempt: int, payload: dict, seq: int | None = None) -> None:
        parts = (job_id, attempt) if seq is None else (job_id, attempt, seq)
        self.reports.put_data(_key(kind, *parts), json.dumps(payload).encode())

    def cancel_requested(self, job_id: int) -> bool:
        return self.control.peek_data(f"c:{job_id}") is not EmptyData

    def superseded(self, job_id: int, attempt: int) -> bool:
        """True when the bot has given up on ``attempt`` and counts on a later one."""
        current = self.control.peek_data(f"a:{job_id}")
        return current is not EmptyData and int(current) > attempt

    # ---- bot side
    def request_cancel(self, job_id: int) -> None:
        self.control.put_data(f"c:{job_id}", b"1")

    def cancel_requests(self) -> list[int]:
        return sorted(int(k.split(":")[1]) for k in _text_keys(self.control.result_items()) if k.startswith("c:"))

    def clear_cancel(self, job_id: int) -> None:
        self.control.delete_data(f"c:{job_id}")

    def set_attempt(self, job_id: int, attempt: int) -> None:
        """Attempts before ``attempt`` are lost: a worker still running one must stop it."""
        self.control.put_data(f"a:{job_id}", str(attempt).encode())

    def forget_job(self, job_id: int) -> None:
        """The job has ended: drop its control messages."""
        self.control.delete_data(f"c:{job_id}")
        self.control.delete_data(f"a:{job_id}")

    def pending_reports(self) -> list[tuple[str, dict]]:
        """Every unconsumed report, in the order it must be applied (start, events, beat, end)."""
        order = {"s": 0, "e": 1, "h": 2, "r": 3}
        items = []
        for raw_key, value in self.reports.result_items().items():
            key = raw_key.decode() if isinstance(raw_key, bytes) else raw_key
            kind, job, attempt, seq = parse_key(key)
            items.append(((job, attempt, order[kind], seq), key, json.loads(value)))
        return [(key, payload) for _, key, payload in sorted(items)]

    def ack(self, keys: list[str]) -> None:
        """Forget reports that are safely in the database."""
        for key in keys:
            self.reports.delete_data(key)

    def close(self) -> None:
        for storage in (self.reports, self.control):
            close = getattr(storage, "close", None)
            if close:
                close()


def _text_keys(items: dict[Any, Any]) -> list[str]:
    return [k.decode() if isinstance(k, bytes) else k for k in items]
