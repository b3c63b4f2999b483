"""Comparisons in the bot: `/train compare` posts pairs of two tries' samples, three members answer
with buttons, and `/train tune steer:True` queues a round steered by their answers.

The finished quick tries (trials and their samples) are written the way the collector records a
`tune` job's report (storage.collector; the job itself runs in tests/test_tune.py and the
steered search in tests/test_steer.py), so this file exercises the bot's side. The steered
round's first proposals are computed from the queued job's comparisons by the same function its
worker calls (trainer.steer.proposals), on the real preferential GP.
"""

from __future__ import annotations

import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution

from tests.bot_world import *  # noqa: F401,F403
from trainer.spec import RunSpec
from trainer.steer import proposals

pytestmark = pytest.mark.asyncio

TRIALS = {0: {"lr": 2e-4, "rank": 4, "lora_dropout": 0.3, "augment": 0.5, "steps": 10},
          1: {"lr": 1e-3, "rank": 8, "lora_dropout": 0.1, "augment": 0.2, "steps": 20},
          2: {"lr": 5e-3, "rank": 32, "lora_dropout": 0.0, "augment": 0.0, "steps": 30}}
SPACE = {"lr": FloatDistribution(1e-4, 1e-2, log=True), "rank": CategoricalDistribution([4, 8, 16, 32]),
         "lora_dropout": FloatDistribution(0.0, 0.3), "augment": FloatDistribution(0.0, 0.6),
         "steps": CategoricalDistribution([10, 20, 30])}


async def three_member_session(w):
    await w.alice.slash(w.channel, "session new", kind="text", title="Fox stories")
    thread = w.channel.threads[-1]
    await w.alice.slash(thread, "data add", file=("fox.txt", text_bytes(12)))
    for member in (w.bob, w.carol):
        await member.slash(thread, "session join")
    return thread


def finished_tries(w, thread) -> int:
    """A finished `tune` job of three complete tries, each with its answer to one prompt and seed."""
    services = w.env.bot.services
    db = services.db
    session = db.session_by_thread(thread.id)
    job = db.enqueue_job("tune", {"kind": "text", "trials": 3}, session_id=session.id, guild_id=w.guild.id,
                         user_id=w.alice.id)
    db.mark_job_running(job.id, worker="w", attempt=1)
    db.finish_job(job.id, "done", attempt=1)
    for number, params in TRIALS.items():
        db.record_trial(job.id, number, params=params, value=2.5 - number / 10, status="complete")
        wrote = services.blobs.put_bytes(f"Once upon a time, try {number} wrote this fox".encode())
        db.add_sample(blob_hash=wrote, job_id=job.id, session_id=session.id, kind="text", prompt="Once",
                      seed=0, trial=number)
    return job.id


def pairs_in(thread):
    return [m for m in thread.history() if m.content.startswith("**Which is closer to what you want?**")]


def labels(message):
    return [c.label for row in message.components for c in row.children]


async def answer_all(w, thread, pick):
    """Each member answers every pair: ``pick(member, pair_message)`` is 'a' or 'b'."""
    for message in pairs_in(thread):
        cid = next(c.custom_id for row in message.components for c in row.children).split(":")[2]
        for member in (w.alice, w.bob, w.carol):
            clicked = await member.click(message, custom_id=f"lc:cmp:{cid}:{pick(member, message)}")
            assert not clicked.ephemeral, clicked.response.content


def towards(rank: int):
    """Members choose the side whose try has the rank nearer ``rank``."""
    def pick(member, message):
        a, b = [int(part.split("#")[1].split(")")[0]) for part in message.content.split("(try ")[1:3]]
        return "a" if abs(TRIALS[a]["rank"] - rank) <= abs(TRIALS[b]["rank"] - rank) else "b"
    return pick


def first_proposal(job) -> dict:
    spec = RunSpec.from_job(job.kind, job.config)
    return proposals(SPACE, spec.tune.steer, 1, seed=0)[0]


async def test_members_answer_pairs_and_the_steered_round_follows_them(world, make_bot):
    w, db = world, world.env.bot.services.db
    thread = await three_member_session(w)
    job_id = finished_tries(w, thread)

    asked = await w.bob.slash(thread, "train compare")
    assert f"3 pair(s) from the tries of job #{job_id}" in asked.response.content
    pairs = pairs_in(thread)
    assert len(pairs) == 3 and all(labels(m) == ["A is closer", "B is closer"] for m in pairs)
    assert "prompt: Once, seed 0" in pairs[0].content and "try 0 wrote this fox" in pairs[0].content
    again = await w.bob.slash(thread, "train compare")
    assert again.ephemeral and "Every pair of job #1's tries has been asked already" in again.response.content

    # a member answering twice counts once: the second answer replaces the first
    first = pairs[0]
    cid = int(first.components[0].children[0].custom_id.split(":")[2])
    await w.alice.click(first, custom_id=f"lc:cmp:{cid}:a")
    await w.alice.click(first, custom_id=f"lc:cmp:{cid}:a")
    assert (db.get_comparison(cid).a, db.get_comparison(cid).b) == (1, 0)
    await w.alice.click(first, custom_id=f"lc:cmp:{cid}:b")
    assert (db.get_comparison(cid).a, db.get_comparison(cid).b) == (0, 1)
    assert labels(next(m for m in thread.history() if m.id == first.id)) == ["A is closer", "B is closer (1)"]

    await answer_all(w, thread, towards(32))
    assert sum(c.a + c.b for c in db.list_comparisons()) == 9  # three members, three pairs, once each
    steered = await w.alice.slash(thread, "train tune", trials=4, steer=True)
    said = (steered.followups[0] if steered.followups else steered.response).content
    assert "Steered by 9 answers from 3 member(s): members preferred higher rate and higher rank in 9 of 9 comparisons" in said
    big_first = first_proposal(db.list_jobs()[0])

    # a restart keeps the answers, and the buttons still work: everyone now prefers small ranks
    w.env.bot.services.stop()
    await w.env.restart_bot(make_bot())
    db = w.env.bot.services.db
    assert sum(c.a + c.b for c in db.list_comparisons()) == 9
    await answer_all(w, thread, towards(4))
    assert sum(c.a + c.b for c in db.list_comparisons()) == 9
    db.finish_job(db.list_jobs()[0].id, "cancelled")  # one waiting job per member (the test server's limit)
    resteered = await w.alice.slash(thread, "train tune", trials=4, steer=True)
    said = (resteered.followups[0] if resteered.followups else resteered.response).content
    assert "members preferred lower rate and lower rank in 9 of 9 comparisons" in said
    small_first = first_proposal(db.list_jobs()[0])
    assert big_first["rank"] > small_first["rank"]  # the first proposals changed with the answers


async def test_a_round_without_answers_is_not_steered(world):
    thread = await three_member_session(world)
    finished_tries(world, thread)
    result = await world.alice.slash(thread, "train tune", trials=4, steer=True)
    said = (result.followups[0] if result.followups else result.response).content
    assert "No comparisons are answered in this session yet, so this round is not steered" in said
    job = world.env.bot.services.db.list_jobs()[0]
    assert RunSpec.from_job(job.kind, job.config).tune.steer == []


async def test_refused_answers_leave_the_stored_ones_unchanged(world):
    w, db = world, world.env.bot.services.db
    thread = await three_member_session(w)
    job_id = finished_tries(w, thread)
    await w.alice.slash(thread, "train compare", pairs=2)
    first, second = pairs_in(thread)
    ids = [int(m.components[0].children[0].custom_id.split(":")[2]) for m in (first, second)]
    await w.bob.click(first, custom_id=f"lc:cmp:{ids[0]}:a")

    # outside a private session
    session = db.session_by_thread(thread.id)
    db.update_session(session.id, visibility="private")
    outsider = w.guild.add_member(w.env.create_user("dave"))
    refused = await outsider.click(first, custom_id=f"lc:cmp:{ids[0]}:b")
    assert refused.ephemeral and "This session is private" in refused.response.content

    # a pair whose try was deleted
    db.db["trials"].delete_where("job_id = ? and number = ?", [job_id, db.get_comparison(ids[1]).trial_b])
    refused = await w.bob.click(second, custom_id=f"lc:cmp:{ids[1]}:a")
    assert refused.ephemeral and "no longer exists, so this pair cannot be answered" in refused.response.content

    # after the session closed: no answer and no vote
    await w.alice.slash(thread, "session close")
    refused = await w.carol.click(first, custom_id=f"lc:cmp:{ids[0]}:a")
    assert refused.ephemeral and "This session is closed: its comparisons take no more answers." in refused.response.content
    sample = db.get_sample(db.get_comparison(ids[0]).sample_a)
    assert "no more votes" in str(pytest.raises(Exception, w.env.bot.services.samples.vote, sample.id,
                                                _actor(w.carol), 1).value)

    assert [(c.a, c.b) for c in db.list_comparisons()] == [(1, 0), (0, 0)]


def _actor(member):
    from bot.services import Actor
    return Actor(member.id)


async def test_the_end_of_quick_tries_points_to_comparing_them(world):
    thread = await three_member_session(world)
    job_id = finished_tries(world, thread)
    bot = world.env.bot
    await bot.post_results(bot.get_channel(thread.id), await bot.job_progress(job_id, None))
    await world.env.advance_time(0.1)
    assert "**Or compare the tries:** `/train compare` asks which of two tries' samples is closer" in \
        thread.last_message.content


def with_scores(w, job_id: int, ppl: dict[int, float | None]) -> None:
    """Give each try of ``job_id`` a metrics.json in the blob store with its held-out perplexity, as
    the worker publishes a try's metrics (storage.jobkinds.tune.publish_trials); None: no score."""
    import json

    services = w.env.bot.services
    for number, params in TRIALS.items():
        scores = {"score_heldout_ppl": ppl[number]} if ppl.get(number) is not None else {}
        metrics = services.blobs.put_bytes(json.dumps({"kind": "text", **scores}).encode())
        services.db.record_trial(job_id, number, params=params, value=2.5 - number / 10, status="complete",
                                 metrics=metrics)


async def test_scores_decide_the_pairs_members_left_open_where_the_session_asks(world):
    w, db = world, world.env.bot.services.db
    thread = await three_member_session(w)
    job_id = finished_tries(w, thread)
    with_scores(w, job_id, {0: 30.0, 1: 20.0, 2: 10.0})  # try 2 has the lowest held-out perplexity
    await w.bob.slash(thread, "train compare", pairs=1)  # one pair asked (tries 0 and 1), both members answer it
    await answer_all(w, thread, towards(4))

    refused = await w.alice.slash(thread, "train tune", trials=4, scores=True)
    assert refused.ephemeral and "add `steer:True`" in refused.response.content

    steered = await w.alice.slash(thread, "train tune", trials=4, steer=True, scores=True)
    said = (steered.followups[0] if steered.followups else steered.response).content
    assert "Steered by 3 answers from 3 member(s)" in said
    assert ("Scores decided 2 pair(s) of tries members left open (the lower held-out perplexity counted as "
            "closer)") in said
    steer = RunSpec.from_job(db.list_jobs()[0].kind, db.list_jobs()[0].config).tune.steer
    by_members = [c for c in steer if "by" not in c]
    by_scores = [c for c in steer if c.get("by") == "scores"]
    assert len(by_members) == 3 and all(c["better"]["rank"] == 4 for c in by_members)  # members' word stands
    assert sorted((c["better"]["rank"], c["worse"]["rank"]) for c in by_scores) == [(32, 4), (32, 8)]
    assert proposals(SPACE, steer, 1, seed=0)  # the preferential GP takes both kinds of rows


async def test_without_the_opt_in_or_scores_a_round_is_steered_as_before(world):
    w, db = world, world.env.bot.services.db
    thread = await three_member_session(w)
    job_id = finished_tries(w, thread)
    with_scores(w, job_id, {0: 30.0, 1: None, 2: 30.0})  # a try without a score; two with the same
    await w.bob.slash(thread, "train compare", pairs=1)
    await answer_all(w, thread, towards(4))
    steered = await w.alice.slash(thread, "train tune", trials=4, steer=True)
    said = (steered.followups[0] if steered.followups else steered.response).content
    assert "Scores decided" not in said
    assert all("by" not in c for c in RunSpec.from_job("tune", db.list_jobs()[0].config).tune.steer)
    db.finish_job(db.list_jobs()[0].id, "cancelled")  # one waiting job per member (the test server's limit)
    counted = await w.alice.slash(thread, "train tune", trials=4, steer=True, scores=True)
    said = (counted.followups[0] if counted.followups else counted.response).content
    assert "No pair members left open had scores on both tries to decide it." in said
    assert len(RunSpec.from_job("tune", db.list_jobs()[0].config).tune.steer) == 3


async def test_a_round_steered_by_scores_alone_says_so():
    from bot.cogs.train import steering_line

    rows = [{"better": TRIALS[2], "worse": TRIALS[0], "by": "scores"}]
    said = steering_line([], rows, "image")
    assert said.startswith("No comparisons are answered in this session yet: the first tries are what a "
                           "preferential model of the scores proposes.")
    assert "Scores decided 1 pair(s) of tries members left open (the more alike to your held-out images" in said
    assert steering_line([], None, "text") == steering_line([])  # no opt-in: as before
