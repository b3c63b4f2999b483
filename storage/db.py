"""The loracord database: one SQLite file through sqlite-utils, and the only code that writes SQL.

Open it with ``Database(path)``: the file is put in WAL mode and every pending migration is
applied before the first accessor runs. Accessors take and return plain Python values and the
row dataclasses below (``Session``, ``DatasetItem``, ``Job``, ...); JSON columns come back as
dicts. Writes that must not be duplicated (a dataset item, a sample, an adapter, an event) are
keyed by a unique index and inserted with "insert or ignore", so replaying them after a crash
is harmless.

Only one process writes: the bot (or a CLI command while the bot is down, see
``storage.lock.WriterLock``). Workers never open this file; they report through the queue,
and ``storage.collector.JobCollector`` ingests their reports here.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Iterator

import sqlite_utils
from sqlite_utils.db import NotFoundError
from sqlite_utils.migrations import Migrations

from trainer.errors import UserError

from . import jobkinds

# Job statuses. A job is ``queued`` in this database until the dispatcher hands it to huey
# (``dispatched``); a worker reports ``running``; it ends ``done``, ``failed`` or ``cancelled``.
QUEUED, DISPATCHED, RUNNING, DONE, FAILED, CANCELLED = "queued", "dispatched", "running", "done", "failed", "cancelled"
WAITING = (QUEUED, DISPATCHED)
ACTIVE = (DISPATCHED, RUNNING)
FINISHED = (DONE, FAILED, CANCELLED)
JOB_KINDS = jobkinds.names()  # see storage.jobkinds
ROLES = ("owner", "editor", "viewer")


class JobNotFound(UserError):
    """No job has this id."""


class SessionNotFound(UserError):
    """No session has this id (or thread)."""


# --------------------------------------------------------------------------------------------
# Schema. Migrations are append-only: never edit one that has shipped, add the next instead.

migrations = Migrations("loracord")


@migrations()
def m001_initial(db: sqlite_utils.Database) -> None:
    db["guilds"].create({"id": int, "name": str, "settings": str, "created_at": float}, pk="id",
                        defaults={"settings": "{}"})
    db["sessions"].create(
        {"id": int, "guild_id": int, "owner_id": int, "thread_id": int, "visibility": str, "kind": str,
         "base_model": str, "title": str, "status": str, "created_at": float},
        pk="id", not_null=["guild_id", "owner_id", "kind"], defaults={"visibility": "public", "status": "open"},
        foreign_keys=[("guild_id", "guilds", "id")])
    db["sessions"].create_index(["thread_id"], unique=True)
    db["members"].create({"session_id": int, "user_id": int, "role": str, "added_at": float},
                         pk=("session_id", "user_id"), foreign_keys=[("session_id", "sessions", "id")])
    db["dataset_items"].create(
        {"id": int, "session_id": int, "blob_hash": str, "uploader_id": int, "caption": str, "kind": str,
         "filename": str, "size": int, "checks": str, "created_at": float},
        pk="id", not_null=["session_id", "blob_hash", "kind"], defaults={"checks": "{}"},
        foreign_keys=[("session_id", "sessions", "id")])
    db["dataset_items"].create_index(["session_id", "blob_hash"], unique=True)
    db["jobs"].create(
        {"id": int, "session_id": int, "guild_id": int, "user_id": int, "kind": str, "config": str,
         "status": str, "priority": int, "queued_at": float, "started_at": float, "finished_at": float,
         "error": str, "result": str, "task_id": str},
        pk="id", not_null=["kind", "status"], defaults={"config": "{}", "priority": 0, "result": "{}"})
    db["jobs"].create_index(["status", "priority", "id"])
    db["trials"].create(
        {"id": int, "job_id": int, "number": int, "params": str, "value": float, "status": str,
         "created_at": float},
        pk="id", foreign_keys=[("job_id", "jobs", "id")], defaults={"params": "{}", "status": "running"})
    db["trials"].create_index(["job_id", "number"], unique=True)
    db["samples"].create(
        {"id": int, "job_id": int, "session_id": int, "blob_hash": str, "kind": str, "prompt": str,
         "seed": int, "created_at": float},
        pk="id", not_null=["blob_hash"], foreign_keys=[("job_id", "jobs", "id")])
    db["samples"].create_index(["job_id", "blob_hash", "prompt", "seed"], unique=True)
    db["votes"].create({"sample_id": int, "user_id": int, "value": int, "voted_at": float},
                       pk=("sample_id", "user_id"), foreign_keys=[("sample_id", "samples", "id")])
    db["adapters"].create(
        {"id": int, "job_id": int, "session_id": int, "blob_hash": str, "name": str, "base_model": str,
         "metrics": str, "created_at": float},
        pk="id", not_null=["blob_hash"], defaults={"metrics": "{}"}, foreign_keys=[("job_id", "jobs", "id")])
    db["adapters"].create_index(["job_id"], unique=True)
    db["events"].create(
        {"job_id": int, "attempt": int, "seq": int, "kind": str, "step": int, "total_steps": int,
         "loss": float, "val_loss": float, "message": str, "data": str, "time": float},
        pk=("job_id", "attempt", "seq"), foreign_keys=[("job_id", "jobs", "id")])


@migrations()
def m002_job_retries(db: sqlite_utils.Database) -> None:
    """Jobs learn to survive lost workers: attempts, heartbeats, the last checkpoint, cancel."""
    jobs = db["jobs"]
    jobs.add_column("attempts", int, not_null_default=0)
    jobs.add_column("max_attempts", int, not_null_default=3)
    jobs.add_column("worker", str)
    jobs.add_column("beat", str)
    jobs.add_column("heartbeat_at", float)
    jobs.add_column("checkpoint", str)
    jobs.add_column("cancel_requested", int, not_null_default=0)


@migrations()
def m003_sample_trials(db: sqlite_utils.Database) -> None:
    """Samples can come from one trial of a tuning job, so that votes rank trials too."""
    db["samples"].add_column("trial", int)


@migrations()
def m004_trial_adapters(db: sqlite_utils.Database) -> None:
    """A trial's adapter and metrics are kept in the blob store, so any worker can sample it."""
    db["trials"].add_column("adapter", str)
    db["trials"].add_column("metrics", str)


@migrations()
def m005_comparisons(db: sqlite_utils.Database) -> None:
    """Pairs of two trials' samples (same prompt and seed) and members' answers: which is closer."""
    db["comparisons"].create(
        {"id": int, "session_id": int, "job_id": int, "trial_a": int, "trial_b": int, "sample_a": int,
         "sample_b": int, "prompt": str, "seed": int, "created_at": float},
        pk="id", not_null=["job_id", "trial_a", "trial_b", "sample_a", "sample_b"],
        foreign_keys=[("job_id", "jobs", "id")])
    db["comparisons"].create_index(["sample_a", "sample_b"], unique=True)
    # one answer per member and pair: the primary key makes a second answer replace the first
    db["answers"].create({"comparison_id": int, "user_id": int, "choice": str, "answered_at": float},
                         pk=("comparison_id", "user_id"), foreign_keys=[("comparison_id", "comparisons", "id")])


@migrations()
def m006_sample_scores(db: sqlite_utils.Database) -> None:
    """A sample carries its own scores (trainer.scores), shown under it wherever it is posted."""
    db["samples"].add_column("scores", str)


# --------------------------------------------------------------------------------------------
# Rows.

def _loads(value: Any) -> Any:
    if isinstance(value, (str, bytes)):
        return json.loads(value) if value else {}
    return value if value is not None else {}


class _Row:
    _json: tuple[str, ...] = ()

    @classmethod
    def from_row(cls, row: dict):
        names = {f.name for f in fields(cls)}
        data = {k: v for k, v in row.items() if k in names}
        for key in cls._json:
            if key in data:
                data[key] = _loads(data[key])
        return cls(**data)


@dataclass(frozen=True)
class Guild(_Row):
    id: int
    name: str | None = None
    settings: dict = field(default_factory=dict)
    created_at: float | None = None
    _json = ("settings",)


@dataclass(frozen=True)
class Session(_Row):
    """A training session: one Discord thread, one owner, one kind of model."""
    id: int
    guild_id: int
    owner_id: int
    kind: str
    thread_id: int | None = None
    visibility: str = "public"
    base_model: str | None = None
    title: str | None = None
    status: str = "open"
    created_at: float | None = None


@dataclass(frozen=True)
class Member(_Row):
    session_id: int
    user_id: int
    role: str
    added_at: float | None = None


@dataclass(frozen=True)
class DatasetItem(_Row):
    """One uploaded file of a session's dataset, stored in the blob store under ``blob_hash``."""
    id: int
    session_id: int
    blob_hash: str
    kind: str
    uploader_id: int | None = None
    caption: str | None = None
    filename: str | None = None
    size: int | None = None
    checks: dict = field(default_factory=dict)
    created_at: float | None = None
    _json = ("checks",)


@dataclass(frozen=True)
class Job(_Row):
    """A unit of work for a worker: ``kind`` plus a JSON ``config``; see ``storage.queue``."""
    id: int
    kind: str
    status: str
    config: dict = field(default_factory=dict)
    session_id: int | None = None
    guild_id: int | None = None
    user_id: int | None = None
    priority: int = 0
    queued_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    result: dict = field(default_factory=dict)
    task_id: str | None = None
    attempts: int = 0
    max_attempts: int = 3
    worker: str | None = None
    beat: str | None = None
    heartbeat_at: float | None = None
    checkpoint: str | None = None
    cancel_requested: int = 0
    _json = ("config", "result")

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


@dataclass(frozen=True)
class Trial(_Row):
    id: int
    job_id: int
    number: int
    params: dict = field(default_factory=dict)
    value: float | None = None
    status: str = "running"
    created_at: float | None = None
    adapter: str | None = None  # tree manifest of its adapter in the blob store (complete trials)
    metrics: str | None = None  # blob of its metrics.json
    _json = ("params",)


@dataclass(frozen=True)
class Sample(_Row):
    """A generated sample (image or text) stored as a blob; ``votes`` is the sum of member votes."""
    id: int
    blob_hash: str
    job_id: int | None = None
    session_id: int | None = None
    kind: str | None = None
    prompt: str | None = None
    seed: int | None = None
    created_at: float | None = None
    votes: int = 0
    trial: int | None = None  # the trial of a tuning job it came from; None: the job's own adapter
    scores: dict = field(default_factory=dict)  # trainer.scores' flat score_* numbers, or scores_unavailable
    _json = ("scores",)


@dataclass(frozen=True)
class Comparison(_Row):
    """Two trials' samples of one prompt and seed; ``a`` and ``b`` count the members who chose each."""
    id: int
    job_id: int
    trial_a: int
    trial_b: int
    sample_a: int
    sample_b: int
    session_id: int | None = None
    prompt: str | None = None
    seed: int | None = None
    created_at: float | None = None
    a: int = 0
    b: int = 0


@dataclass(frozen=True)
class Answer(_Row):
    comparison_id: int
    user_id: int
    choice: str  # 'a' or 'b'
    answered_at: float | None = None


@dataclass(frozen=True)
class Adapter(_Row):
    """A trained LoRA adapter; ``blob_hash`` names a tree manifest in the blob store."""
    id: int
    blob_hash: str
    job_id: int | None = None
    session_id: int | None = None
    name: str | None = None
    base_model: str | None = None
    metrics: dict = field(default_factory=dict)
    created_at: float | None = None
    _json = ("metrics",)


@dataclass(frozen=True)
class Event(_Row):
    """A trainer ``ProgressEvent`` as the bot received it; ``data`` holds the whole event."""
    job_id: int
    attempt: int
    seq: int
    kind: str
    step: int | None = None
    total_steps: int | None = None
    loss: float | None = None
    val_loss: float | None = None
    message: str | None = None
    data: dict = field(default_factory=dict)
    time: float | None = None
    _json = ("data",)


# --------------------------------------------------------------------------------------------

class Database:
    """Typed accessors over the loracord SQLite file.

    ``Database(path)`` creates the file if needed, turns on WAL and applies migrations
    (``migrate=False`` leaves the schema alone, for ``loracord db migrate`` to report on).
    """

    def __init__(self, path: str | Path, *, migrate: bool = True):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(self.path), timeout=30, check_same_thread=False)
        self.db = sqlite_utils.Database(conn)
        self.db.enable_wal()
        self.db.execute("PRAGMA foreign_keys=ON")
        if migrate:
            self.migrate()

    # ---- schema
    def migrate(self, *, stop_before: str | None = None) -> list[str]:
        """Apply pending migrations; returns the names applied."""
        pending = [m.name for m in migrations.pending(self.db)]
        migrations.apply(self.db, stop_before=stop_before)
        applied = {m.name for m in migrations.applied(self.db)}
        return [name for name in pending if name in applied]

    def pending_migrations(self) -> list[str]:
        return [m.name for m in migrations.pending(self.db)]

    def applied_migrations(self) -> list[str]:
        return [m.name for m in migrations.applied(self.db)]

    def backup(self, dest: str | Path) -> Path:
        """Copy the database into ``dest`` with SQLite's online backup (safe while in use)."""
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        target = sqlite3.connect(str(dest))
        try:
            self.db.conn.backup(target)
        finally:
            target.close()
        return dest

    def transaction(self):
        """A context manager: the accessors called inside commit together or not at all."""
        return self.db.atomic()

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "Database":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _one(self, table: str, pk) -> dict | None:
        try:
            return self.db[table].get(pk)
        except NotFoundError:
            return None

    def _rows(self, table: str, where: str | None = None, params: Iterable = (), order_by: str | None = None,
              limit: int | None = None) -> Iterator[dict]:
        return self.db[table].rows_where(where, list(params), order_by=order_by, limit=limit)

    # ---- guilds
    def upsert_guild(self, guild_id: int, name: str | None = None) -> Guild:
        """Make sure the guild has a row (keeps its settings); updates the name when given."""
        with self.db.atomic():
            self.db["guilds"].insert({"id": guild_id, "name": name, "settings": "{}", "created_at": time.time()},
                                     ignore=True)
            if name is not None:
                self.db["guilds"].update(guild_id, {"name": name})
        return self.get_guild(guild_id)

    def get_guild(self, guild_id: int) -> Guild | None:
        row = self._one("guilds", guild_id)
        return Guild.from_row(row) if row else None

    def guild_settings(self, guild_id: int) -> dict:
        guild = self.get_guild(guild_id)
        return guild.settings if guild else {}

    def set_guild_setting(self, guild_id: int, key: str, value: Any) -> dict:
        """Set one setting (any JSON value; ``None`` removes it); returns all settings."""
        with self.db.atomic():
            self.upsert_guild(guild_id)
            settings = self.guild_settings(guild_id)
            if value is None:
                settings.pop(key, None)
            else:
                settings[key] = value
            self.db["guilds"].update(guild_id, {"settings": json.dumps(settings)})
        return settings

    # ---- sessions and members
    def create_session(self, *, guild_id: int, owner_id: int, kind: str, thread_id: int | None = None,
                       base_model: str | None = None, visibility: str = "public", title: str | None = None) -> Session:
        """Open a session; its owner becomes a member with role ``owner``."""
        if visibility not in ("public", "private"):
            raise UserError(f"visibility must be 'public' or 'private', not {visibility!r}")
        now = time.time()
        with self.db.atomic():
            self.upsert_guild(guild_id)
            table = self.db["sessions"].insert(
                {"guild_id": guild_id, "owner_id": owner_id, "thread_id": thread_id, "kind": kind,
                 "base_model": base_model, "visibility": visibility, "title": title, "status": "open",
                 "created_at": now})
            session_id = table.last_pk
            self.db["members"].insert({"session_id": session_id, "user_id": owner_id, "role": "owner", "added_at": now})
        return self.get_session(session_id)

    def get_session(self, session_id: int) -> Session:
        row = self._one("sessions", session_id)
        if row is None:
            raise SessionNotFound(f"no session #{session_id}")
        return Session.from_row(row)

    def session_by_thread(self, thread_id: int) -> Session | None:
        rows = list(self._rows("sessions", "thread_id = ?", [thread_id]))
        return Session.from_row(rows[0]) if rows else None

    def list_sessions(self, guild_id: int | None = None, *, status: str | None = None) -> list[Session]:
        where, params = _where(guild_id=guild_id, status=status)
        return [Session.from_row(r) for r in self._rows("sessions", where, params, order_by="id")]

    def update_session(self, session_id: int, **changes: Any) -> Session:
        """Change any of thread_id, visibility, base_model, title, status."""
        allowed = {"thread_id", "visibility", "base_model", "title", "status"}
        bad = set(changes) - allowed
        if bad:
            raise ValueError(f"cannot update session fields {sorted(bad)}")
        self.get_session(session_id)
        self.db["sessions"].update(session_id, changes)
        return self.get_session(session_id)

    def add_member(self, session_id: int, user_id: int, role: str = "editor") -> Member:
        """Add a member or change their role."""
        if role not in ROLES:
            raise UserError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
        self.db["members"].upsert({"session_id": session_id, "user_id": user_id, "role": role,
                                   "added_at": time.time()}, pk=("session_id", "user_id"))
        return Member.from_row(self.db["members"].get((session_id, user_id)))

    def remove_member(self, session_id: int, user_id: int) -> None:
        self.db["members"].delete_where("session_id = ? and user_id = ?", [session_id, user_id])

    def member_role(self, session_id: int, user_id: int) -> str | None:
        row = self._one("members", (session_id, user_id))
        return row["role"] if row else None

    def list_members(self, session_id: int) -> list[Member]:
        return [Member.from_row(r) for r in self._rows("members", "session_id = ?", [session_id], order_by="added_at")]

    # ---- dataset items
    def add_dataset_item(self, *, session_id: int, blob_hash: str, kind: str, uploader_id: int | None = None,
                         caption: str | None = None, filename: str | None = None, size: int | None = None,
                         checks: dict | None = None) -> DatasetItem:
        """Add a blob to a session's dataset; adding the same blob twice returns the first item."""
        self.db["dataset_items"].insert(
            {"session_id": session_id, "blob_hash": blob_hash, "kind": kind, "uploader_id": uploader_id,
             "caption": caption, "filename": filename, "size": size, "checks": json.dumps(checks or {}),
             "created_at": time.time()}, ignore=True)
        row = next(self._rows("dataset_items", "session_id = ? and blob_hash = ?", [session_id, blob_hash]))
        return DatasetItem.from_row(row)

    def list_dataset_items(self, session_id: int) -> list[DatasetItem]:
        return [DatasetItem.from_row(r) for r in self._rows("dataset_items", "session_id = ?", [session_id], order_by="id")]

    def set_item_caption(self, item_id: int, caption: str | None) -> None:
        self.db["dataset_items"].update(item_id, {"caption": caption})

    def set_item_checks(self, item_id: int, checks: dict) -> None:
        self.db["dataset_items"].update(item_id, {"checks": json.dumps(checks)})

    def remove_dataset_item(self, item_id: int) -> None:
        self.db["dataset_items"].delete_where("id = ?", [item_id])

    # ---- jobs
    def enqueue_job(self, kind: str, config: dict | None = None, *, session_id: int | None = None,
                    guild_id: int | None = None, user_id: int | None = None, priority: int = 0,
                    max_attempts: int = 3) -> Job:
        """Record a job as ``queued``; the dispatcher (``storage.queue``) hands it to a worker."""
        jobkinds.get(kind)  # a UserError naming the known kinds
        table = self.db["jobs"].insert(
            {"kind": kind, "config": json.dumps(config or {}), "session_id": session_id, "guild_id": guild_id,
             "user_id": user_id, "priority": priority, "status": QUEUED, "queued_at": time.time(),
             "max_attempts": max_attempts, "attempts": 0, "cancel_requested": 0, "result": "{}"})
        return self.get_job(table.last_pk)

    def get_job(self, job_id: int) -> Job:
        row = self._one("jobs", job_id)
        if row is None:
            raise JobNotFound(f"no job #{job_id}")
        return Job.from_row(row)

    def list_jobs(self, *, status: str | Iterable[str] | None = None, session_id: int | None = None,
                  guild_id: int | None = None, user_id: int | None = None, limit: int | None = None) -> list[Job]:
        """Jobs, newest first, filtered by any of the arguments (``status`` may be a list)."""
        where, params = _where(session_id=session_id, guild_id=guild_id, user_id=user_id, status=status)
        return [Job.from_row(r) for r in self._rows("jobs", where, params, order_by="id desc", limit=limit)]

    def waiting_jobs(self) -> list[Job]:
        """Queued and dispatched jobs in the order workers take them (priority, then age)."""
        where, params = _where(status=WAITING)
        return [Job.from_row(r) for r in self._rows("jobs", where, params, order_by="priority desc, id")]

    def queue_position(self, job_id: int) -> int | None:
        """1 for the next job to start; ``None`` once the job has started or finished."""
        for position, job in enumerate(self.waiting_jobs(), start=1):
            if job.id == job_id:
                return position
        return None

    def count_active_jobs(self, *, user_id: int | None = None, guild_id: int | None = None) -> int:
        """Dispatched or running jobs of a user or guild (what the concurrency limits count)."""
        where, params = _where(user_id=user_id, guild_id=guild_id, status=ACTIVE)
        return self.db["jobs"].count_where(where, params)

    def mark_job_dispatched(self, job_id: int, task_id: str) -> None:
        """Handed to huey as task ``task_id``. Its lost-worker clock (``heartbeat_at``) does not
        start yet: a task waiting for a free worker is not lost, however long it waits."""
        self.db["jobs"].update(job_id, {"status": DISPATCHED, "task_id": task_id, "heartbeat_at": None})

    def start_lost_clock(self, job_id: int, *, now: float | None = None) -> None:
        """A dispatched task has left huey's queue: from now on its worker must report in time."""
        self.db.execute("update jobs set heartbeat_at = ? where id = ? and heartbeat_at is null",
                        [now or time.time(), job_id])

    def mark_job_running(self, job_id: int, *, worker: str, attempt: int, at: float | None = None) -> bool:
        """A worker started ``attempt``; ignored (returns False) for a stale or finished attempt."""
        job = self.get_job(job_id)
        if job.finished or attempt != job.attempts + 1:
            return False
        now = time.time()
        self.db["jobs"].update(job_id, {"status": RUNNING, "worker": worker, "heartbeat_at": now,
                                        "started_at": job.started_at or at or now})
        return True

    def record_heartbeat(self, job_id: int, beat: str, *, now: float | None = None) -> bool:
        """Store a worker's heartbeat token; ``heartbeat_at`` moves only when the token changed.

        Times are the bot's clock, so a worker's clock never has to agree with ours.
        """
        job = self.get_job(job_id)
        if job.beat == beat:
            return False
        self.db["jobs"].update(job_id, {"beat": beat, "heartbeat_at": now or time.time()})
        return True

    def touch_heartbeats(self, now: float | None = None) -> None:
        """Give every active job a fresh grace period (the bot just started and saw no beats yet)."""
        self.db.execute("update jobs set heartbeat_at = ? where status in (?, ?) and heartbeat_at is not null",
                        [now or time.time(), *ACTIVE])

    def set_job_checkpoint(self, job_id: int, manifest_hash: str) -> None:
        """The latest checkpoint a worker uploaded (a tree manifest in the blob store)."""
        self.db["jobs"].update(job_id, {"checkpoint": manifest_hash})

    def request_job_cancel(self, job_id: int) -> Job:
        self.get_job(job_id)
        self.db["jobs"].update(job_id, {"cancel_requested": 1})
        return self.get_job(job_id)

    def requeue_job(self, job_id: int, reason: str) -> Job:
        """Put a job back to ``queued`` for its next attempt (its worker was lost, or the attempt
        failed for a passing reason such as running out of memory); it resumes from its checkpoint."""
        job = self.get_job(job_id)
        self.db["jobs"].update(job_id, {"status": QUEUED, "attempts": job.attempts + 1, "error": reason,
                                        "worker": None, "task_id": None, "beat": None, "heartbeat_at": None})
        return self.get_job(job_id)

    def finish_job(self, job_id: int, status: str, *, error: str | None = None, result: dict | None = None,
                   attempt: int | None = None) -> bool:
        """Mark a job done, failed or cancelled; a finished job stays as it is (returns False)."""
        if status not in FINISHED:
            raise ValueError(f"finish_job needs one of {FINISHED}, not {status!r}")
        job = self.get_job(job_id)
        if job.finished or (attempt is not None and attempt != job.attempts + 1):
            return False
        changes: dict[str, Any] = {"status": status, "finished_at": time.time(), "error": error}
        if result is not None:
            changes["result"] = json.dumps(result)
        self.db["jobs"].update(job_id, changes)
        return True

    # ---- trials
    def record_trial(self, job_id: int, number: int, *, params: dict | None = None, value: float | None = None,
                     status: str = "running", adapter: str | None = None, metrics: str | None = None) -> Trial:
        """Create or update trial ``number`` of a tuning job (``adapter``, ``metrics``: its blobs)."""
        existing = list(self._rows("trials", "job_id = ? and number = ?", [job_id, number]))
        row = {"job_id": job_id, "number": number, "status": status, "value": value}
        row.update({k: v for k, v in (("adapter", adapter), ("metrics", metrics)) if v is not None})
        if params is not None:
            row["params"] = json.dumps(params)
        if existing:
            self.db["trials"].update(existing[0]["id"], row)
        else:
            self.db["trials"].insert({**row, "params": row.get("params", "{}"), "created_at": time.time()})
        return Trial.from_row(next(self._rows("trials", "job_id = ? and number = ?", [job_id, number])))

    def trial_votes(self, job_id: int) -> dict[int, int]:
        """Members' votes on each trial's samples, summed per trial number."""
        rows = self.db.query(
            "select samples.trial as trial, coalesce(sum(votes.value), 0) as votes from samples "
            "left join votes on votes.sample_id = samples.id where samples.job_id = ? and samples.trial is not null "
            "group by samples.trial", [job_id])
        return {row["trial"]: row["votes"] for row in rows}

    def list_trials(self, job_id: int) -> list[Trial]:
        return [Trial.from_row(r) for r in self._rows("trials", "job_id = ?", [job_id], order_by="number")]

    # ---- samples and votes
    def add_sample(self, *, blob_hash: str, job_id: int | None = None, session_id: int | None = None,
                   kind: str | None = None, prompt: str | None = None, seed: int | None = None,
                   trial: int | None = None, scores: dict | None = None) -> Sample:
        """Record a sample; the same (job, blob, prompt, seed) is recorded once."""
        self.db["samples"].insert({"job_id": job_id, "session_id": session_id, "blob_hash": blob_hash, "kind": kind,
                                   "prompt": prompt, "seed": seed, "created_at": time.time(), "trial": trial,
                                   "scores": json.dumps(scores or {})}, ignore=True)
        rows = self.db.query(
            "select id from samples where job_id is ? and blob_hash = ? and prompt is ? and seed is ?",
            [job_id, blob_hash, prompt, seed])
        return self.get_sample(next(rows)["id"])

    _SAMPLE_SQL = ("select samples.*, coalesce((select sum(value) from votes where sample_id = samples.id), 0) "
                   "as votes from samples")

    def _get_row(self, select: str, row_class, what: str, row_id: int):
        """Row ``row_id`` of ``select`` as ``row_class``; a ``UserError`` naming ``what`` where there is none."""
        rows = list(self.db.query(select + " where id = ?", [row_id]))
        if not rows:
            raise UserError(f"no {what} #{row_id}")
        return row_class.from_row(rows[0])

    def _list_rows(self, select: str, row_class, **filters) -> list:
        """The rows of ``select`` matching ``filters`` (None: any), in the order they were added."""
        where, params = _where(**filters)
        sql = select + (f" where {where}" if where else "") + " order by id"
        return [row_class.from_row(r) for r in self.db.query(sql, params)]

    def get_sample(self, sample_id: int) -> Sample:
        return self._get_row(self._SAMPLE_SQL, Sample, "sample", sample_id)

    def list_samples(self, *, job_id: int | None = None, session_id: int | None = None) -> list[Sample]:
        return self._list_rows(self._SAMPLE_SQL, Sample, job_id=job_id, session_id=session_id)

    def record_vote(self, sample_id: int, user_id: int, value: int = 1) -> Sample:
        """A member's vote on a sample (+1 or -1; 0 withdraws it); one vote per member."""
        if value not in (-1, 0, 1):
            raise UserError("a vote is +1, -1 or 0")
        self.get_sample(sample_id)
        if value == 0:
            self.db["votes"].delete_where("sample_id = ? and user_id = ?", [sample_id, user_id])
        else:
            self.db["votes"].upsert({"sample_id": sample_id, "user_id": user_id, "value": value,
                                     "voted_at": time.time()}, pk=("sample_id", "user_id"))
        return self.get_sample(sample_id)

    # ---- comparisons and their answers
    _COMPARISON_SQL = ("select comparisons.*, "
                       "(select count(*) from answers where comparison_id = comparisons.id and choice = 'a') as a, "
                       "(select count(*) from answers where comparison_id = comparisons.id and choice = 'b') as b "
                       "from comparisons")

    def add_comparison(self, *, job_id: int, trial_a: int, trial_b: int, sample_a: int, sample_b: int,
                       session_id: int | None = None, prompt: str | None = None, seed: int | None = None) -> Comparison:
        """Record a pair of samples to compare; the same pair is recorded once."""
        self.db["comparisons"].insert({"job_id": job_id, "session_id": session_id, "trial_a": trial_a,
                                       "trial_b": trial_b, "sample_a": sample_a, "sample_b": sample_b,
                                       "prompt": prompt, "seed": seed, "created_at": time.time()}, ignore=True)
        row = next(self.db.query("select id from comparisons where sample_a = ? and sample_b = ?", [sample_a, sample_b]))
        return self.get_comparison(row["id"])

    def get_comparison(self, comparison_id: int) -> Comparison:
        return self._get_row(self._COMPARISON_SQL, Comparison, "comparison", comparison_id)

    def list_comparisons(self, *, session_id: int | None = None, job_id: int | None = None) -> list[Comparison]:
        return self._list_rows(self._COMPARISON_SQL, Comparison, session_id=session_id, job_id=job_id)

    def record_answer(self, comparison_id: int, user_id: int, choice: str) -> Comparison:
        """A member's answer to a comparison ('a' or 'b'); a second answer replaces their first."""
        if choice not in ("a", "b"):
            raise UserError("an answer is 'a' or 'b'")
        self.get_comparison(comparison_id)
        self.db["answers"].upsert({"comparison_id": comparison_id, "user_id": user_id, "choice": choice,
                                   "answered_at": time.time()}, pk=("comparison_id", "user_id"))
        return self.get_comparison(comparison_id)

    def list_answers(self, comparison_id: int) -> list[Answer]:
        return [Answer.from_row(r) for r in self._rows("answers", "comparison_id = ?", [comparison_id],
                                                       order_by="answered_at")]

    def get_trial(self, job_id: int, number: int) -> Trial | None:
        rows = list(self._rows("trials", "job_id = ? and number = ?", [job_id, number]))
        return Trial.from_row(rows[0]) if rows else None

    # ---- adapters
    def add_adapter(self, *, job_id: int, blob_hash: str, session_id: int | None = None, name: str | None = None,
                    base_model: str | None = None, metrics: dict | None = None) -> Adapter:
        """Record the adapter a job produced (once per job)."""
        self.db["adapters"].insert({"job_id": job_id, "session_id": session_id, "blob_hash": blob_hash, "name": name,
                                    "base_model": base_model, "metrics": json.dumps(metrics or {}),
                                    "created_at": time.time()}, ignore=True)
        return self.adapter_for_job(job_id)

    def adapter_for_job(self, job_id: int) -> Adapter | None:
        rows = list(self._rows("adapters", "job_id = ?", [job_id]))
        return Adapter.from_row(rows[0]) if rows else None

    def get_adapter(self, adapter_id: int) -> Adapter | None:
        row = self._one("adapters", adapter_id)
        return Adapter.from_row(row) if row else None

    def list_adapters(self, session_id: int | None = None) -> list[Adapter]:
        where, params = _where(session_id=session_id)
        return [Adapter.from_row(r) for r in self._rows("adapters", where, params, order_by="id")]

    # ---- events
    def add_event(self, job_id: int, attempt: int, seq: int, event: dict) -> bool:
        """Store event ``seq`` of a job's attempt; returns False when it was already stored."""
        cursor = self.db.execute(
            "insert or ignore into events (job_id, attempt, seq, kind, step, total_steps, loss, val_loss, message, "
            "data, time) values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [job_id, attempt, seq, event.get("kind"), event.get("step"), event.get("total_steps"), event.get("loss"),
             event.get("val_loss"), event.get("message"), json.dumps(event), event.get("time")])
        return cursor.rowcount == 1

    def list_events(self, job_id: int, *, kind: str | None = None) -> list[Event]:
        where, params = _where(job_id=job_id, kind=kind)
        return [Event.from_row(r) for r in self._rows("events", where, params, order_by="attempt, seq")]

    def latest_event(self, job_id: int) -> Event | None:
        rows = list(self._rows("events", "job_id = ?", [job_id], order_by="attempt desc, seq desc", limit=1))
        return Event.from_row(rows[0]) if rows else None


def _where(**filters: Any) -> tuple[str | None, list]:
    """``column = ?`` clauses for the filters that are not None (a list/tuple becomes ``in``)."""
    clauses, params = [], []
    for column, value in filters.items():
        if value is None:
            continue
        if isinstance(value, (list, tuple, set)):
            value = list(value)
            clauses.append(f"{column} in ({', '.join('?' * len(value))})")
            params.extend(value)
        else:
            clauses.append(f"{column} = ?")
            params.append(value)
    return (" and ".join(clauses) or None), params
