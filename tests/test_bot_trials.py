"""Quick tries in the bot: `/sample trial:` picks one trial, and `/train status` ranks trials with votes.

The tuning job's rows (trials, adapter) are written here the way the collector writes them
after a worker finishes a `tune` job (storage.collector; the job itself runs in
tests/test_tune.py), so this file exercises only the bot's side.
"""

from __future__ import annotations

import pytest

from tests.bot_world import *  # noqa: F401,F403

pytestmark = pytest.mark.asyncio


def finished_tune_job(world, session_id: int):
    services = world.env.bot.services
    db = services.db
    job = db.enqueue_job("tune", {"kind": "text", "trials": 3}, session_id=session_id, guild_id=world.guild.id,
                         user_id=world.alice.id)
    db.mark_job_running(job.id, worker="w", attempt=1)
    db.finish_job(job.id, "done", attempt=1)
    db.add_adapter(job_id=job.id, session_id=session_id, blob_hash=services.blobs.put_bytes(b"adapter manifest"))
    for number, value, status in [(0, 2.51, "complete"), (1, 2.412, "complete"), (2, 9.5, "pruned")]:
        db.record_trial(job.id, number, params={"lr": 10 ** -(number + 3)}, value=value, status=status)
    return job


async def test_sample_a_trial_refusals_say_why(world):
    await world.alice.slash(world.channel, "session new", kind="text", title="Tries")
    thread = world.channel.threads[-1]
    session = world.env.bot.services.db.session_by_thread(thread.id)
    job = finished_tune_job(world, session.id)

    missing = await world.alice.slash(thread, "sample", prompt="hi", job=job.id, trial=7)
    assert missing.ephemeral and f"Job #{job.id} has no trial #7 (its trials: #0, #1, #2)." in missing.response.content
    await world.env.advance_time(6)  # /sample has a 5 s cooldown per member
    pruned = await world.alice.slash(thread, "sample", prompt="hi", job=job.id, trial=2)
    assert pruned.ephemeral and "has no adapter to sample (it was pruned)" in pruned.response.content
    await world.env.advance_time(6)
    elsewhere = await world.alice.slash(thread, "sample", prompt="hi", job=job.id, trial=1)
    assert elsewhere.ephemeral and "its search ran before trial adapters were kept" in elsewhere.response.content


async def test_train_status_ranks_trials_and_shows_votes(world):
    await world.alice.slash(world.channel, "session new", kind="text", title="Tries")
    thread = world.channel.threads[-1]
    db = world.env.bot.services.db
    session = db.session_by_thread(thread.id)
    job = finished_tune_job(world, session.id)
    wrote = world.env.bot.services.blobs.put_bytes(b"p, and then the fox")  # what the trial's adapter wrote
    liked = db.add_sample(blob_hash=wrote, job_id=job.id, session_id=session.id, prompt="p", seed=0, trial=0)
    db.record_vote(liked.id, world.alice.id, 1)

    status = await world.alice.slash(thread, "train status", job=job.id)
    fields = {f.name: f.value for f in status.response.embeds[0].fields}
    lines = fields["Trials"].splitlines()
    assert lines[0].startswith("#1: 2.4120 (complete)")  # lowest validation loss first
    assert lines[1].startswith("#0: 2.5100 (complete), votes +1")
    assert lines[2].startswith("#2: 9.5000 (pruned)")
    assert fields["Best samples by votes"].startswith("#1 (job #1) score +1: “p, and then the fox” (prompt: p)")
