"""Comparisons: two quick tries' samples of one prompt and seed, and which one members found closer.

After quick tries, ``pairs`` makes comparisons from the trials' samples; each member's answer
is stored with who gave it, once per member and pair (answering again replaces it). The
answers become ``{"better": params, "worse": params}`` rows (``preferences``) that steer the
next round (``trainer.steer``). Where a session counts scores too, ``decided_by_scores`` adds a
row for each pair of tries that no member answered, decided by the tries' scores
(``trainer.scores.steering_score``): members' answers stay the only word on the pairs they answered.
"""

from __future__ import annotations

import json
from itertools import combinations

from storage.blobs import BlobNotFound
from storage.db import Comparison, Job, Session
from trainer import kinds
from trainer.scores import steering_score

from .base import Actor, Refusal, Service


class Comparisons(Service):
    def pairs(self, session: Session, job: Job, most: int) -> list[Comparison]:
        """Up to ``most`` comparisons not asked yet between trials of ``job`` that answered the same
        prompt with the same seed; the pairs of trials compared least come first."""
        if job.kind != "tune" or not job.finished:
            raise Refusal(f"Job #{job.id} is not finished quick tries: compare the tries of a finished `/train tune`.")
        trials = {t.number for t in self._db.list_trials(job.id) if t.status == "complete"}
        groups: dict[tuple, dict[int, int]] = {}
        for sample in self._db.list_samples(job_id=job.id):
            if sample.trial in trials:
                groups.setdefault((sample.prompt, sample.seed), {}).setdefault(sample.trial, sample.id)
        asked = self._db.list_comparisons(job_id=job.id)
        seen = {(c.sample_a, c.sample_b) for c in asked}
        times = {}
        for c in asked:
            times[(c.trial_a, c.trial_b)] = times.get((c.trial_a, c.trial_b), 0) + 1
        candidates = [(times.get((ta, tb), 0), prompt, seed, ta, tb, by_trial[ta], by_trial[tb])
                      for (prompt, seed), by_trial in groups.items()
                      for ta, tb in combinations(sorted(by_trial), 2) if (by_trial[ta], by_trial[tb]) not in seen]
        if not candidates:
            if not any(len(g) > 1 for g in groups.values()):
                raise Refusal(f"Job #{job.id} has no two tries with samples of the same prompt and seed to compare. "
                              f"Try `/sample job:{job.id} trial:` on two tries with one prompt and seed.")
            raise Refusal(f"Every pair of job #{job.id}'s tries has been asked already; answer those above.")
        made = []
        for _, prompt, seed, ta, tb, sa, sb in sorted(candidates, key=lambda c: (c[0], c[3], c[4]))[:most]:
            made.append(self._db.add_comparison(job_id=job.id, session_id=session.id, trial_a=ta, trial_b=tb,
                                                sample_a=sa, sample_b=sb, prompt=prompt, seed=seed))
        return made

    def get(self, comparison_id: int) -> Comparison:
        return self._db.get_comparison(comparison_id)

    def answer(self, comparison_id: int, actor: Actor, choice: str) -> Comparison:
        """Store a member's answer ('a' or 'b'). Refused (nothing stored changes) when the session
        is not open, the member may not vote there, or a trial or sample of the pair is gone."""
        comparison = self._db.get_comparison(comparison_id)
        session = self.services.sessions.get(comparison.session_id)
        if session.status != "open":
            raise Refusal(f"This session is {session.status}: its comparisons take no more answers.")
        self.services.sessions.require(session, actor, "vote")
        for number in (comparison.trial_a, comparison.trial_b):
            if self._db.get_trial(comparison.job_id, number) is None:
                raise Refusal(f"Try #{number} of job #{comparison.job_id} no longer exists, so this pair cannot be "
                              f"answered. `/train compare` asks about the tries that remain.")
        for sample_id in (comparison.sample_a, comparison.sample_b):
            self.services.samples.get(sample_id)  # a UserError if the sample is gone
        return self._db.record_answer(comparison_id, actor.user_id, choice)

    def preferences(self, session: Session) -> list[dict]:
        """Every answer in the session as ``{"better": params, "worse": params, "user": id}``
        (pairs whose trials are gone are left out)."""
        found = []
        for c in self._db.list_comparisons(session_id=session.id):
            a, b = self._db.get_trial(c.job_id, c.trial_a), self._db.get_trial(c.job_id, c.trial_b)
            if a is None or b is None:
                continue
            for answer in self._db.list_answers(c.id):
                better, worse = (a, b) if answer.choice == "a" else (b, a)
                found.append({"better": dict(better.params), "worse": dict(worse.params), "user": answer.user_id})
        return found

    def decided_by_scores(self, session: Session) -> list[dict]:
        """For each pair of complete tries of one finished quick-tries job that no member answered, a
        ``{"better": params, "worse": params, "by": "scores"}`` row decided by their scores; a pair
        where a try has no score (no scoring model, an older run) or both score the same is left out."""
        name, higher, _ = steering_score(kinds.recorded(session.kind).makes_images)
        found = []
        for job in self._db.list_jobs(session_id=session.id, status="done"):
            if job.kind != "tune":
                continue
            asked = self._db.list_comparisons(job_id=job.id)
            answered = {frozenset((c.trial_a, c.trial_b)) for c in asked if c.a + c.b}
            scored = [(t, self._score(t.metrics, name)) for t in self._db.list_trials(job.id) if t.status == "complete"]
            scored = [(t, v) for t, v in scored if v is not None]
            for (a, va), (b, vb) in combinations(scored, 2):
                if frozenset((a.number, b.number)) in answered or va == vb:
                    continue
                better, worse = (a, b) if (va > vb) == higher else (b, a)
                found.append({"better": dict(better.params), "worse": dict(worse.params), "by": "scores"})
        return found

    def _score(self, metrics_blob: str | None, name: str) -> float | None:
        if not metrics_blob:
            return None
        try:
            value = json.loads(self.services.blobs.get_bytes(metrics_blob)).get(name)
        except (BlobNotFound, ValueError):
            return None
        return float(value) if isinstance(value, (int, float)) else None
