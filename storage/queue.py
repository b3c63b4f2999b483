"""The job queue: the database decides what runs next, huey carries it to a worker.

A job lives in the ``jobs`` table from ``submit`` to its end. ``JobQueue.dispatch`` hands
queued jobs to huey in priority order, as long as the member and the guild stay under their
concurrency limits (``max_jobs_per_user``, ``max_jobs_per_guild``; a guild may lower or raise
its own with the ``max_jobs_per_guild`` guild setting). huey is ``SqliteHuey`` in DATA/queue.db
by default and ``PriorityRedisHuey`` when ``queue_url`` names a Redis server; the consumer is
``storage.worker``. Each job kind travels on its lane (``storage.jobkinds``): runs on one huey
queue, quick jobs (sampling) on another that every worker serves with a thread of its own.

The bot calls ``JobQueue.tick()`` every second or so: it ingests worker reports
(``JobCollector``; an attempt that failed for a passing reason is retried there), honours
cancel requests made from the CLI, re-queues jobs whose worker was lost (they resume from
their last checkpoint) and dispatches what may start now.

A job is *lost* only when its worker has stopped reporting; waiting on huey's queue never
counts (see ``reap_lost``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from . import jobkinds
from .blobs import BlobStore
from .channel import Channel
from .collector import JobCollector, PollResult
from .db import CANCELLED, DISPATCHED, FAILED, QUEUED, RUNNING, Database, Job, JobNotFound
from .settings import Settings
from .worker import make_huey

log = logging.getLogger("loracord.queue")


@dataclass
class TickResult(PollResult):
    """What one ``tick`` did: the poll's changes plus jobs dispatched and re-queued."""
    dispatched: list[int] = field(default_factory=list)
    requeued: list[int] = field(default_factory=list)


class JobQueue:
    """The bot's side of the queue. Only the process that writes the database uses it."""

    def __init__(self, settings: Settings, db: Database | None = None):
        self.settings = settings
        self.db = db or Database(settings.db_path)
        # One huey queue per lane (storage.jobkinds): runs, and quick jobs that never wait behind them.
        self.lanes = {lane: make_huey(settings, lane) for lane in jobkinds.LANES}
        self.huey, self.run_job = self.lanes["runs"]
        self.channel = Channel(settings)
        self.collector = JobCollector(self.db, self.channel)
        self._blobs: BlobStore | None = None

    @property
    def blobs(self) -> BlobStore:
        if self._blobs is None:
            self._blobs = BlobStore(self.settings.blob_location)
        return self._blobs

    # ---- what the bot calls
    def submit(self, kind: str, config: dict | None = None, *, session_id: int | None = None,
               guild_id: int | None = None, user_id: int | None = None, priority: int | None = None) -> Job:
        """Record a job and dispatch it if the limits allow; returns the job row.

        ``priority`` defaults to the kind's (``storage.jobkinds``): a sample job goes ahead of
        waiting training runs."""
        if priority is None:
            priority = jobkinds.get(kind).priority
        job = self.db.enqueue_job(kind, config, session_id=session_id, guild_id=guild_id, user_id=user_id,
                                  priority=priority, max_attempts=self.settings.max_attempts)
        self.dispatch()
        return self.db.get_job(job.id)

    def position(self, job_id: int) -> int | None:
        """Place in line (1 = next to start), or None once started or finished."""
        return self.db.queue_position(job_id)

    def cancel(self, job_id: int) -> Job:
        """Cancel a job: at once if it has not started, else cooperatively, then by force.

        The request is kept in the database (``cancel_requested``) and in the channel
        (``c:JOB``) until the job has ended; the worker acts on it whenever it sees it, also
        when the job starts only now, and keeps asserting it until its trainer has stopped.
        """
        job = self.db.get_job(job_id)
        if job.finished:
            return job
        if job.status == QUEUED:
            self.db.finish_job(job_id, CANCELLED, error="cancelled before it started")
        elif job.status == DISPATCHED:
            if job.task_id:
                self._huey_of(job).revoke_by_id(job.task_id)
            self.channel.request_cancel(job_id)  # in case a worker took it just now
            self.db.request_job_cancel(job_id)
            self.db.finish_job(job_id, CANCELLED, error="cancelled before it started")
        else:
            self.db.request_job_cancel(job_id)
            self.channel.request_cancel(job_id)
        return self.db.get_job(job_id)

    def recover(self) -> None:
        """Call once at start-up: jobs that were active get a full heartbeat period to report."""
        self.db.touch_heartbeats()

    def tick(self) -> TickResult:
        """Ingest reports, honour cancel requests, re-queue lost jobs, dispatch; call it often."""
        # Silence is judged as of the moment the reports were read, not the end of this tick: a
        # tick that stalls (a slow disk, a starved bot) must not count its own delay against
        # workers whose beats arrived meanwhile and wait for the next poll.
        seen = time.time()
        polled = self.collector.poll()
        result = TickResult(events=polled.events, started=polled.started, finished=polled.finished,
                            retried=polled.retried)
        self._cancel_requests()
        result.requeued = self.reap_lost(seen=seen)
        result.dispatched = self.dispatch()
        return result

    # ---- the parts of a tick
    def dispatch(self) -> list[int]:
        """Hand queued jobs to huey in priority order while the concurrency limits allow."""
        dispatched = []
        queued = [j for j in self.db.waiting_jobs() if j.status == QUEUED]
        for job in queued:
            if not self._may_start(job):
                continue
            spec = {"job_id": job.id, "attempt": job.attempts + 1, "kind": job.kind, "config": job.config,
                    "checkpoint": job.checkpoint, "resume": job.attempts > 0}
            huey, run_job = self.lanes[jobkinds.get(job.kind).lane]
            task = run_job.s(spec, priority=job.priority)
            huey.enqueue(task)
            self.db.mark_job_dispatched(job.id, task.id)
            dispatched.append(job.id)
            log.info("job %s (%s) dispatched, attempt %s", job.id, job.kind, job.attempts + 1)
        return dispatched

    def _huey_of(self, job: Job):
        return self.lanes[jobkinds.get(job.kind).lane][0]

    def _may_start(self, job: Job) -> bool:
        if job.user_id is not None and self.db.count_active_jobs(user_id=job.user_id) >= self.settings.max_jobs_per_user:
            return False
        if job.guild_id is not None:
            limit = self.db.guild_settings(job.guild_id).get("max_jobs_per_guild", self.settings.max_jobs_per_guild)
            if self.db.count_active_jobs(guild_id=job.guild_id) >= limit:
                return False
        return True

    def _cancel_requests(self) -> None:
        """Cancels asked for through the channel (``loracord jobs cancel`` while the bot runs),
        and cancels of running jobs re-asserted there (the channel's store may have lost them)."""
        asked = set(self.channel.cancel_requests())
        for job_id in sorted(asked):
            try:
                job = self.db.get_job(job_id)
            except JobNotFound:
                self.channel.clear_cancel(job_id)
                continue
            if not job.finished and not job.cancel_requested:
                self.cancel(job_id)
            elif job.finished and time.time() - (job.finished_at or 0) > self.settings.heartbeat_timeout_s:
                self.channel.forget_job(job_id)
        for job in self.db.list_jobs(status=[DISPATCHED, RUNNING]):
            if job.cancel_requested and job.id not in asked:
                self.channel.request_cancel(job.id)

    def reap_lost(self, now: float | None = None, *, seen: float | None = None) -> list[int]:
        """Re-queue (or fail) jobs whose worker went silent; returns the re-queued ids.

        A job is lost only when its worker has stopped reporting: a dispatched task still on
        huey's queue is waiting for a free worker, however long that takes, and its clock starts
        only once it has left the queue (a worker took it and reports at once, or it vanished).
        A running job's clock restarts with each heartbeat, which the worker sends from the
        moment it takes the task (also while it fetches data or waits for the run folder).
        ``seen``: when the channel's reports were last read into the database (``tick`` passes
        it); silence is measured up to then, since later beats are still unread. ``None``: ``now``.
        """
        now = now or time.time()
        deadline = (now if seen is None else min(seen, now)) - self.settings.heartbeat_timeout_s
        pending = None
        requeued = []
        for job in self.db.list_jobs(status=[DISPATCHED, RUNNING]):
            if job.status == DISPATCHED:
                if pending is None:
                    pending = {task.id for huey, _ in self.lanes.values() for task in huey.pending()}
                if job.task_id in pending:
                    continue  # still waiting for a free worker, not lost
                if job.heartbeat_at is None:
                    self.db.start_lost_clock(job.id, now=now)
                    continue
            if job.heartbeat_at is None or job.heartbeat_at > deadline:
                continue
            attempt = job.attempts + 1
            if job.cancel_requested:
                self.db.finish_job(job.id, CANCELLED, error="cancelled; its worker was lost")
                self.channel.forget_job(job.id)
            elif attempt < job.max_attempts:
                self.db.requeue_job(job.id, f"worker {job.worker or '?'} lost during attempt {attempt} of "
                                            f"{job.max_attempts}; retrying from the last checkpoint")
                self.channel.set_attempt(job.id, attempt + 1)  # should it still run attempt N, it stops
                requeued.append(job.id)
                log.warning("job %s: worker lost, re-queued to resume from its last checkpoint", job.id)
            else:
                self.db.finish_job(job.id, FAILED, error=f"worker lost {attempt} times; giving up")
                self.channel.forget_job(job.id)
        return requeued

    def close(self) -> None:
        self.channel.close()
        self.db.close()

