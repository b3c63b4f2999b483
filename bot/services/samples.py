"""What runs generated: their samples, the votes on them, and the stored bytes the bot posts."""

from __future__ import annotations

from storage.db import Sample, Session

from .base import Actor, Refusal, Service


class Samples(Service):
    def of_job(self, job_id: int) -> list[Sample]:
        return self._db.list_samples(job_id=job_id)

    def get(self, sample_id: int) -> Sample:
        return self._db.get_sample(sample_id)

    def ranking(self, session: Session, limit: int = 5) -> list[Sample]:
        """The session's best-voted samples, the oldest first among equals."""
        samples = self._db.list_samples(session_id=session.id)
        return sorted(samples, key=lambda s: (-s.votes, s.id))[:limit]

    def vote(self, sample_id: int, actor: Actor, value: int) -> Sample:
        """Record a member's 👍 (1) or 👎 (-1); members of the sample's session (and managers) vote."""
        sample = self._db.get_sample(sample_id)
        session = self.services.sessions.get(sample.session_id)
        if session.status != "open":
            raise Refusal(f"This session is {session.status}: its samples take no more votes.")
        if self.services.sessions.role(session, actor) is None and not actor.manager:
            raise Refusal("Only members of this session vote on its samples: `/session join` first.")
        return self._db.record_vote(sample_id, actor.user_id, value)

    def blob_bytes(self, blob_hash: str) -> bytes:
        """A stored file (a sample, a loss chart) as bytes."""
        return self.services.blobs.get_bytes(blob_hash)
