"""Which job a command means when the member names none, and how to say which one it took.

``/train status`` means the job worth looking at: the newest one running, else the newest
that finished with results (an adapter), else the newest that got as far as training at all,
else the newest; never a cancelled, empty job while an older one has results. ``/sample``
and ``/adapter export`` mean the newest job with an adapter. Each pick comes with a note
that names the job and why it was taken, so a member is never left guessing.

Runs on the bot's database thread (``LoracordBot.db``), like the services it asks (``bot.services.Jobs``).
"""

from __future__ import annotations

from storage.db import Job, Session

from .progress import STATUS_WORDS
from .services import Jobs, Refusal


def pick_job(jobs: Jobs, session: Session, job_id: int | None, *, need: str = "status") -> tuple[Job, str | None]:
    """``(job, note)``: the named job (note None), or the one ``need`` ('status', 'adapter') calls for."""
    if job_id is not None:
        return jobs.job_for(session, job_id, need_adapter=need == "adapter"), None
    found = jobs.find(session=session)  # newest first
    if not found:
        raise Refusal("No trained adapter here yet: start a run with `/train start`." if need == "adapter"
                      else "No jobs in this session yet: start one with `/train start`.")
    with_adapter = [j for j in found if jobs.adapter(j.id) is not None]
    if need == "adapter":
        if not with_adapter:
            waiting = [j for j in found if not j.finished]
            then = (f"job #{waiting[0].id} is {STATUS_WORDS.get(waiting[0].status, waiting[0].status)}: "
                    f"wait for it to finish (`/train status`)" if waiting else "start a run with `/train start`")
            raise Refusal(f"No trained adapter here yet: {then}.")
        job = with_adapter[0]
        return job, f"job #{job.id}, the newest with an adapter{_newer(found, job)}"
    running = [j for j in found if j.status in ("running", "dispatched")]
    if running:
        return running[0], f"job #{running[0].id}, the newest running job"
    if with_adapter:
        job = with_adapter[0]
        return job, f"job #{job.id}, the newest finished with an adapter{_newer(found, job)}"
    trained = [j for j in found if jobs.trained(j.id)]
    if trained:
        job = trained[0]
        return job, f"job #{job.id}, the newest that trained ({STATUS_WORDS.get(job.status, job.status)})"
    return found[0], f"job #{found[0].id}, the newest ({STATUS_WORDS.get(found[0].status, found[0].status)})"


def _newer(jobs: list[Job], picked: Job) -> str:
    """Why newer jobs were passed over, in a few words."""
    newer = [j for j in jobs if j.id > picked.id]
    if not newer:
        return ""
    words = ", ".join(f"#{j.id} is {STATUS_WORDS.get(j.status, j.status)}" for j in newer[:3])
    return f" ({words})"
