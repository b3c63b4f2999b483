"""The bot-side collector: worker reports in, database rows out.

``JobCollector.poll()`` reads every pending report from the channel, writes it into the
database in one transaction, and only then deletes the reports. Replaying a report is
harmless: events are keyed by (job, attempt, seq), samples by (job, blob, prompt, seed),
adapters by job, and a job's start and end are ignored unless they come from its current
attempt. A sample job's samples are recorded as its source job's (and trial's), and the job's
result lists their ids. So a bot killed at any moment loses and duplicates nothing.

An attempt that ends ``failed`` with ``retry`` set (the worker judged the cause passing: out
of memory, a killed job process) is queued again while attempts remain; any other failure is
final at once (bad data, bad settings, a corrupt model file), with the worker's reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .channel import Channel, parse_key
from .db import RUNNING, Database, Event, JobNotFound


@dataclass
class PollResult:
    """What one poll changed, for the bot to show."""
    events: list[Event] = field(default_factory=list)
    started: list[int] = field(default_factory=list)
    finished: list[int] = field(default_factory=list)
    retried: list[int] = field(default_factory=list)  # failed for a passing reason; queued again


class JobCollector:
    """Ingests worker reports into the database; call ``poll()`` every second or so."""

    def __init__(self, db: Database, channel: Channel):
        self.db, self.channel = db, channel

    def poll(self) -> PollResult:
        result = PollResult()
        reports = self.channel.pending_reports()
        if not reports:
            return result
        with self.db.transaction():
            for key, payload in reports:
                self._apply(key, payload, result)
        self.channel.ack([key for key, _ in reports])
        for job_id in result.finished:
            self.channel.forget_job(job_id)
        for job_id in result.retried:
            self.channel.set_attempt(job_id, self.db.get_job(job_id).attempts + 1)
        return result

    def _apply(self, key: str, payload: dict, result: PollResult) -> None:
        kind, job_id, attempt, seq = parse_key(key)
        try:
            job = self.db.get_job(job_id)
        except JobNotFound:
            return  # a report for a job this database never had (another bot's queue?)
        current = attempt == job.attempts + 1
        if kind == "s":
            if self.db.mark_job_running(job_id, worker=payload.get("worker", "?"), attempt=attempt,
                                        at=payload.get("time")):
                result.started.append(job_id)
        elif kind == "e":
            if self.db.add_event(job_id, attempt, seq, payload["event"]):
                result.events.append(Event.from_row({"job_id": job_id, "attempt": attempt, "seq": seq,
                                                     **_event_columns(payload["event"])}))
            self._add_samples(job, payload.get("samples", []))
            if current and payload.get("checkpoint") and not job.finished:
                self.db.set_job_checkpoint(job_id, payload["checkpoint"])
        elif kind == "h":
            if current and job.status == RUNNING:
                self.db.record_heartbeat(job_id, f"{attempt}:{payload.get('beat')}")
        elif kind == "r":
            self._finish(job, attempt, payload, result)

    def _finish(self, job, attempt: int, payload: dict, result: PollResult) -> None:
        status = payload.get("status", "failed")
        sample_ids: list[int] = []
        if status == "done" and attempt == job.attempts + 1:
            sample_ids = self._add_samples(job, payload.get("samples", []))
            for trial in (payload.get("result") or {}).get("trials", []):
                self.db.record_trial(job.id, trial["number"], params=trial.get("params"), value=trial.get("val_loss"),
                                     status=trial.get("status", "complete"), adapter=trial.get("adapter"),
                                     metrics=trial.get("metrics"))
            if payload.get("adapter"):
                self.db.add_adapter(job_id=job.id, session_id=job.session_id, blob_hash=payload["adapter"],
                                    base_model=job.config.get("base"), metrics=payload.get("metrics") or {})
        error = payload.get("error")
        if status == "failed" and payload.get("retry") and attempt == job.attempts + 1 and not job.finished:
            # A passing failure (out of memory, ...): try again from the last checkpoint, if attempts remain.
            if attempt < job.max_attempts:
                self.db.requeue_job(job.id, f"{error} (attempt {attempt} of {job.max_attempts}; retrying)")
                result.retried.append(job.id)
                return
            error = f"{error} (gave up after {attempt} attempts)"
        outputs = {k: payload[k] for k in ("files", "adapter", "metrics", "captions", "export") if payload.get(k)}
        if sample_ids:
            outputs["samples"] = sample_ids  # the sample rows this job made (a sample job's answer)
        if self.db.finish_job(job.id, status, error=error, result=outputs, attempt=attempt):
            result.finished.append(job.id)

    def _add_samples(self, job, samples: list[dict]) -> list[int]:
        """Record samples; one that names another ``job`` (a sample job's) is that job's, of its ``trial``."""
        ids = []
        for sample in samples:
            owner = job
            if sample.get("job") is not None and sample["job"] != job.id:
                try:
                    owner = self.db.get_job(sample["job"])
                except JobNotFound:
                    continue
            row = self.db.add_sample(blob_hash=sample["blob"], job_id=owner.id, session_id=owner.session_id,
                                     kind=sample.get("kind"), prompt=sample.get("prompt"), seed=sample.get("seed"),
                                     trial=sample.get("trial"), scores=sample.get("scores"))
            ids.append(row.id)
        return ids


def _event_columns(event: dict) -> dict:
    keys = ("kind", "step", "total_steps", "loss", "val_loss", "message", "time")
    return {**{k: event.get(k) for k in keys}, "data": event}
