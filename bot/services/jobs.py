"""Jobs: submitting them, finding the one a member means, cancelling, and the view of a job's
progress that the progress message, ``/train status`` and the pump all show.

The pump ticks the queue here (``Jobs.tick``): worker reports in, waiting jobs dispatched.
Who may start a run, and with what, is ``/train``'s (``bot.cogs.train``); what a sampling
asks for is ``/sample``'s (``bot.cogs.sample``).
"""

from __future__ import annotations

from dataclasses import dataclass

from storage.db import ACTIVE, WAITING, Adapter, Job, Session, Trial
from storage.queue import TickResult

from .base import Actor, Refusal, Service

UNFINISHED = (*WAITING, *ACTIVE)  # queued, dispatched or running


@dataclass
class Submitted:
    job: Job
    position: int | None


class Jobs(Service):
    def tick(self) -> TickResult:
        """One round of the queue: collect worker reports, dispatch what may start."""
        return self.services.queue.tick()

    def submit(self, kind: str, config: dict, *, session: Session | None = None,
               actor: Actor | None = None) -> Submitted:
        """Queue a job. A run names its session and starter (it counts against their limits); a job
        without them (a sampling) neither counts nor waits for those limits."""
        queue = self.services.queue
        job = queue.submit(kind, config, session_id=session.id if session else None,
                           guild_id=session.guild_id if session else None, user_id=actor.user_id if actor else None)
        return Submitted(job, queue.position(job.id))

    def job(self, job_id: int) -> Job:
        return self._db.get_job(job_id)

    def find(self, *, session: Session | None = None, user_id: int | None = None, guild_id: int | None = None,
             status: str | list[str] | None = None, unfinished: bool = False) -> list[Job]:
        """Jobs, newest first: of a session, a member or a server, in a ``status`` (or any ``unfinished`` one)."""
        return self._db.list_jobs(session_id=session.id if session else None, user_id=user_id, guild_id=guild_id,
                                  status=list(UNFINISHED) if unfinished else status)

    def job_for(self, session: Session, job_id: int | None, *, need_adapter: bool = False) -> Job:
        """A job of this session: the one named, else the newest (with an adapter, when asked)."""
        jobs = self.find(session=session)
        if job_id is not None:
            job = next((j for j in jobs if j.id == job_id), None)
            if job is None:
                raise Refusal(f"Job #{job_id} is not one of this session's jobs; `/train status` lists them.")
        else:
            pool = [j for j in jobs if self.adapter(j.id)] if need_adapter else jobs
            if not pool:
                raise Refusal("No trained adapter here yet: start a run with `/train start`." if need_adapter
                              else "No jobs in this session yet: start one with `/train start`.")
            job = pool[0]
        if need_adapter and self.adapter(job.id) is None:
            raise Refusal(f"Job #{job.id} has no adapter ({job.status}); pick a finished run, or wait for this one.")
        return job

    def cancel(self, job_id: int) -> Job:
        """Cancel a job: at once when it has not started, else at its next step (``JobQueue.cancel``)."""
        return self.services.queue.cancel(job_id)

    def adapter(self, job_id: int) -> Adapter | None:
        """The adapter a finished run stored, or None."""
        return self._db.adapter_for_job(job_id)

    def adapters(self, session: Session) -> list[Adapter]:
        return self._db.list_adapters(session.id)

    def trials(self, job_id: int) -> list[Trial]:
        """The trials quick tries recorded, with their adapters and metrics."""
        return self._db.list_trials(job_id)

    def trained(self, job_id: int) -> bool:
        """Whether the job got as far as reporting anything from training."""
        return self._db.latest_event(job_id) is not None

    def progress(self, job_id: int) -> dict:
        """The view of a job that its progress message, ``/train status`` and the end line are made from."""
        job = self._db.get_job(job_id)
        events = self._db.list_events(job_id)
        steps = [e for e in events if e.kind in ("step", "eval")]
        evals = [e for e in events if e.val_loss is not None]
        latest = events[-1] if events else None
        # The ETA of the newest event that has one: a validation or sample event between two steps
        # carries none, and the estimate made at the last step still holds.
        eta = next((e.data["eta_s"] for e in reversed(events) if (e.data or {}).get("eta_s") is not None), None)
        return {"job": job, "position": self.services.queue.position(job_id), "latest": latest,
                "loss": steps[-1].loss if steps else None,
                "val_loss": evals[-1].val_loss if evals else None,
                "eta_s": eta,
                "trials": self.trials(job_id) if job.kind == "tune" else [],
                "trial_votes": self._db.trial_votes(job_id) if job.kind == "tune" else {}}
