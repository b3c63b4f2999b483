"""/train through SimCord (jobs are queued, no worker): start, tune, status, cancel, quotas,
permissions, and persistent buttons that still work after a restart."""

from __future__ import annotations

import pytest

from tests.bot_world import *  # noqa: F401,F403
from trainer.spec import RunSpec

pytestmark = pytest.mark.asyncio


async def ready_thread(w, examples: int = 12):
    await w.alice.slash(w.channel, "session new", kind="text", title="Fox stories")
    thread = w.channel.threads[-1]
    await w.alice.slash(thread, "data add", file=("fox.txt", text_bytes(examples)))
    return thread


def jobs(w):
    return w.env.bot.services.db.list_jobs()


async def test_start_queues_a_job_and_posts_its_progress_message(world):
    thread = await ready_thread(world)
    result = await world.alice.slash(thread, "train start", steps=4, seed=3)
    assert not result.ephemeral
    content = result.response.content
    assert "Preset **quick**: with 12 examples" in content
    assert "Job #1 is queued (position 1 in the queue)" in content
    embed = result.response.embeds[0]
    assert embed.title == "Training (text) · job #1"
    assert embed.description == "Waiting in the queue (position 1)."
    assert [c["label"] for row in result.response.components for c in row["components"]] == ["Cancel"]
    [job] = jobs(world)
    assert job.kind == "train_text" and job.user_id == world.alice.id
    spec = RunSpec.from_job(job.kind, job.config)  # the run spec, stored once as the job's config
    assert spec.preset == "quick" and spec.settings == {"steps": 4, "threads": 1} and spec.seed == 3
    assert spec.base == "smollm2-135m" and spec.data == []  # the worker fetches the blobs
    [item] = world.env.bot.services.db.list_dataset_items(job.session_id)
    assert [(i.blob, i.filename, i.uploader) for i in spec.dataset.items] == [(item.blob_hash, "fox.txt", world.alice.id)]


async def test_start_refusals_say_why_and_what_to_do(world):
    await world.alice.slash(world.channel, "session new", kind="text", title="Empty")
    thread = world.channel.threads[-1]
    empty = await world.alice.slash(thread, "train start")
    assert empty.ephemeral and "training needs at least 5" in empty.response.content and "/data add" in empty.response.content
    stranger = await world.bob.slash(thread, "train start")
    assert stranger.ephemeral and "/session join" in stranger.response.content
    await world.alice.slash(thread, "data add", file=("fox.txt", text_bytes(12)))
    bad = await world.alice.slash(thread, "train start", lr=0.9, steps=5)
    assert not bad.ephemeral  # lr 0.9 is within the trainer's range: accepted
    assert jobs(world)[0].config["settings"]["lr"] == 0.9
    await world.env.advance_time(1)
    too_high = await world.alice.slash(thread, "train start", lr=1.0, rank=256, steps=5, seed=1)
    assert not too_high.ephemeral  # the edge's ranges and the trainer's agree: one check, at the edge


async def test_quotas_refuse_with_the_limit_and_a_way_out(world):
    thread = await ready_thread(world)
    await world.mod.slash(world.channel, "server settings", max_pending_jobs_per_user=1, runs_per_day=2)
    await world.alice.slash(thread, "train start")
    second = await world.alice.slash(thread, "train start")
    assert second.ephemeral and "already have 1 job(s) queued or running (#1)" in second.response.content
    await world.alice.slash(thread, "train cancel")
    await world.alice.slash(thread, "train start")
    await world.alice.slash(thread, "train cancel")
    third = await world.alice.slash(thread, "train start")
    assert third.ephemeral and "started 2 runs in the last 24 hours" in third.response.content


async def test_cooldown_between_train_commands(world, bot_config):
    world.env.bot.config.train_cooldown_s = 60
    thread = await ready_thread(world)
    await world.mod.slash(world.channel, "server settings", max_pending_jobs_per_user=5)
    await world.alice.slash(thread, "train start")
    again = await world.alice.slash(thread, "train start")
    assert again.ephemeral and again.response.content.startswith("Slow down: you can use this again in")
    await world.env.advance_time(61)
    later = await world.alice.slash(thread, "train start")
    assert not later.ephemeral


async def test_tune_queues_a_tune_job_with_the_tuners_arguments(world):
    thread = await ready_thread(world)
    result = await world.alice.slash(thread, "train tune", trials=3, steps=6)
    assert "3 quick tries" in result.response.content
    assert result.response.embeds[0].title == "Quick tries (tuning) · job #1"
    [job] = jobs(world)
    assert job.kind == "tune"
    spec = RunSpec.from_job("tune", job.config)
    assert spec.kind == "text" and spec.tune.trials == 3 and spec.preset == "quick"
    assert spec.settings == {"steps": 6, "threads": 1} and spec.base == "smollm2-135m"  # what was chosen is fixed
    assert len(spec.dataset.items) == 1


async def test_status_and_cancel_then_the_pump_edits_the_progress_message(world):
    thread = await ready_thread(world)
    started = await world.alice.slash(thread, "train start")
    status = await world.bob.slash(thread, "train status")
    assert status.response.embeds[0].title == "Training (text) · job #1"
    await world.bob.slash(thread, "session join")
    refused = await world.bob.slash(thread, "train cancel")
    assert refused.ephemeral and f"started by {world.alice.mention}" in refused.response.content
    cancelled = await world.alice.slash(thread, "train cancel")
    assert "Job #1: cancelled" in cancelled.response.content
    await world.env.advance_time(1.5)  # one pump
    progress = next(m for m in thread.history() if m.id == started.response.id)
    fields = {f.name: f.value for f in progress.embeds[0].fields}
    assert fields["Status"] == "cancelled" and fields["Why"] == "cancelled before it started"
    assert progress.components == []  # no Cancel button once it ended
    assert thread.last_message.content.startswith("⏹ Job #1 was cancelled before it started.")
    nothing = await world.alice.slash(thread, "train cancel")
    assert nothing.ephemeral and "Nothing is queued or running" in nothing.response.content


async def test_a_cancel_while_the_run_loads_says_nothing_is_kept(world):
    """A run that has not stepped yet is stopped at once by its worker (storage.worker): the bot says so."""
    thread = await ready_thread(world)
    started = await world.alice.slash(thread, "train start")
    db = world.env.bot.services.db
    db.mark_job_running(1, worker="w", attempt=1)
    db.add_event(1, 1, 0, {"kind": "start", "step": 0, "total_steps": 40, "loss": None, "val_loss": None,
                           "message": "loading"})
    cancelled = await world.alice.slash(thread, "train cancel")
    assert cancelled.response.content.startswith(
        "Job #1: stopping now: it had not started training, so there is nothing to keep.")
    db.finish_job(1, "cancelled", attempt=1, error="cancelled before training started; nothing was trained")
    world.env.bot.dirty.add(1)
    await world.env.advance_time(1.5)
    assert thread.last_message.content.startswith(
        "⏹ Job #1 was cancelled before training started; nothing was trained.")
    progress = next(m for m in thread.history() if m.id == started.response.id)
    assert {f.name: f.value for f in progress.embeds[0].fields}["Status"] == "cancelled"


async def test_the_cancel_button_works_after_a_restart(world, make_bot):
    thread = await ready_thread(world)
    started = await world.alice.slash(thread, "train start")
    progress = next(m for m in thread.history() if m.id == started.response.id)
    world.env.bot.services.stop()  # what the old process's death does: release the database
    await world.env.restart_bot(make_bot())
    stranger = await world.carol.click(progress, label="Cancel")
    assert stranger.ephemeral and f"started by {world.alice.mention}" in stranger.response.content
    clicked = await world.alice.click(progress, label="Cancel")
    assert clicked.ephemeral and clicked.response.content == "Cancelling job #1…"
    assert world.env.bot.services.db.get_job(1).status == "cancelled"
    await world.env.advance_time(1.5)
    progress = next(m for m in thread.history() if m.id == started.response.id)
    assert {f.name: f.value for f in progress.embeds[0].fields}["Status"] == "cancelled"


async def test_text_kind_is_declared_at_start_and_refused_for_images(world):
    thread = await ready_thread(world)
    await world.alice.slash(thread, "train start", steps=4, text_kind="code")
    [job] = jobs(world)
    spec = RunSpec.from_job(job.kind, job.config)
    assert spec.settings["text_kind"] == "code"  # what the trainer's augmentation follows (trainer.text.kinds)
    await world.env.advance_time(60)
    await world.alice.slash(thread, "train start", steps=4)
    assert "text_kind" not in RunSpec.from_job(jobs(world)[0].kind, jobs(world)[0].config).settings  # auto: detected
    await world.alice.slash(world.channel, "session new", kind="image", title="Foxes")
    images = world.channel.threads[-1]
    refused = await world.alice.slash(images, "train start", text_kind="verse")
    assert refused.ephemeral and "`text_kind`" in refused.response.content and "image session" in refused.response.content
    assert len(jobs(world)) == 2
