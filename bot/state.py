"""The bot's own bookkeeping, kept apart from storage's database: which message shows which job.

storage/ owns ``DATA/loracord.db``; the bot only needs to remember, across restarts, the
progress message of each job (to keep editing it) and when it last edited it. That lives in
``DATA/bot.db``, a tiny sqlite-utils file written only by the bot process.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

import sqlite_utils


@dataclass(frozen=True)
class ProgressMessage:
    job_id: int
    channel_id: int
    message_id: int
    final: bool = False
    intro: str = ""
    """What the message said before the job's state (e.g. why this preset), kept through edits."""


class BotState:
    def __init__(self, path: str | Path):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite_utils.Database(sqlite3.connect(str(path), check_same_thread=False, timeout=30))
        self.db.enable_wal()
        if "progress" not in self.db.table_names():
            self.db["progress"].create({"job_id": int, "channel_id": int, "message_id": int, "final": int},
                                       pk="job_id", defaults={"final": 0})
        if "intro" not in self.db["progress"].columns_dict:
            self.db["progress"].add_column("intro", str, not_null_default="")
        if "posted_samples" not in self.db.table_names():
            self.db["posted_samples"].create({"sample_id": int}, pk="sample_id")

    def set_progress(self, job_id: int, channel_id: int, message_id: int, intro: str = "") -> None:
        self.db["progress"].upsert({"job_id": job_id, "channel_id": channel_id, "message_id": message_id,
                                    "final": 0, "intro": intro}, pk="job_id")

    def progress(self, job_id: int) -> ProgressMessage | None:
        rows = list(self.db["progress"].rows_where("job_id = ?", [job_id]))
        if not rows:
            return None
        r = rows[0]
        return ProgressMessage(r["job_id"], r["channel_id"], r["message_id"], bool(r["final"]), r.get("intro") or "")

    def open_progress(self) -> list[ProgressMessage]:
        """Progress messages of jobs that have not been shown finished yet."""
        return [ProgressMessage(r["job_id"], r["channel_id"], r["message_id"], False, r.get("intro") or "")
                for r in self.db["progress"].rows_where("final = 0")]

    def mark_final(self, job_id: int) -> None:
        self.db["progress"].update(job_id, {"final": 1})

    def posted_samples(self, sample_ids: list[int]) -> set[int]:
        """Which of these samples the bot already posted (so a restart does not post them again)."""
        if not sample_ids:
            return set()
        marks = ", ".join("?" * len(sample_ids))
        return {r["sample_id"] for r in self.db.query(f"select sample_id from posted_samples where sample_id in ({marks})",
                                                       sample_ids)}

    def mark_posted(self, sample_id: int) -> None:
        self.db["posted_samples"].insert({"sample_id": sample_id}, ignore=True)

    def close(self) -> None:
        self.db.close()
