"""Image sessions sized to the hardware at hand, through SimCord on a tiny SD pipeline.

The tiny pipeline was made at 32 px (its UNet's sample size times its VAE's downscale), so its
"native" side is 32 and this CPU-only machine's defaults are half of that: 16 px, batch 1,
8 sampling steps. Nothing in the bot's settings sizes the runs here: the trainer sizes them
where the job runs, the bot says the same size in `/data report` and in the start message, a
server, a session and a run can each choose another size within what the base takes, uploads
are checked against the session's size with the trainer's own words, captions come in every
form the CLI takes and are counted by source, and a training grid says its prompts and seeds.
"""

from __future__ import annotations

import io
import json
import re
import zipfile

import pytest

from bot.cogs.train import run_spec
from bot.config import BotSettings
from tests.bot_world import *  # noqa: F401,F403
from tests.image_fixtures import image_bytes, pattern_image, tiny_sd  # noqa: F401
from trainer.limits import image_size_problem, min_image_side

pytestmark = pytest.mark.asyncio


@pytest.fixture
def bot_config(tiny_sd) -> BotSettings:
    # No image_train_defaults: the sizes are the trainer's (and the bot's view of them).
    return BotSettings(_env_file=None, allowed_models=[f"image:{tiny_sd}"], progress_edit_s=0, train_cooldown_s=0,
                       train_threads=1, worker_device="cpu",
                       image_train_defaults={"precision": "fp32", "augment_variants": 1})


@pytest.fixture
def simcord_bot(make_bot):
    return make_bot(worker=True)


def png(seed: int, size=(40, 36)) -> bytes:
    return image_bytes(pattern_image(seed, size=size))


def captioned_zip() -> bytes:
    """Two images captioned by sidecars, two by metadata.jsonl: the forms `loracord train image` reads."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for i, colour in enumerate(("blue", "teal")):
            archive.writestr(f"{colour}.png", png(10 + i))
            archive.writestr(f"{colour}.txt", f"sks pattern in {colour}, sidecar")
        archive.writestr("green.png", png(12))
        archive.writestr("violet.png", png(13))
        archive.writestr("metadata.jsonl", "".join(json.dumps({"file_name": f"{c}.png", "text": f"sks pattern in {c}"})
                                                   + "\n" for c in ("green", "violet")))
    return buffer.getvalue()


def reply(result):
    return result.followups[-1] if result.followups else result.response


def text_of(message) -> str:
    parts = [message.content or ""]
    for embed in message.embeds:
        parts += [embed.title or "", embed.description or ""] + [f"{f.name}: {f.value}" for f in embed.fields]
    return "\n".join(parts)


async def image_session(w):
    await w.alice.slash(w.channel, "session new", kind="image", title="Patterns")
    return w.channel.threads[-1]


async def test_a_run_nobody_sized_trains_at_the_cpu_defaults_and_says_so(world):
    w, db = world, world.env.bot.services.db
    thread = await image_session(w)
    added = reply(await w.alice.slash(thread, "data add", file=("set.zip", captioned_zip())))
    assert "4 file(s) added, 0 rejected" in text_of(added), text_of(added)
    added = reply(await w.alice.slash(thread, "data add", file=("amber.png", png(1)), caption="sks pattern in amber"))
    assert "1 file(s) added" in text_of(added)

    report = text_of(reply(await w.alice.slash(thread, "data report")))
    size = ("**Training size:** 16 px, batch 1, 8 sampling steps (sized for a CPU and this SD 1.x/2.x base, "
            "trained at 32 px); a step takes about")
    assert size in report and "(a rough guess)" in report, report
    # every caption form counted by where it came from
    assert ("**Captions:** 5 of 5 images (1 from the upload's caption, 2 from sidecar .txt files, "
            "2 from metadata.jsonl)") in report, report

    started = await w.alice.slash(thread, "train start", preset="quick", steps=2)
    assert size in started.response.content, started.response.content
    await pump_until(w.env, lambda: db.get_job(1).finished, timeout=300, what="the image training job")
    job = db.get_job(1)
    assert job.status == "done", job.error
    assert "resolution" not in job.config["settings"]  # the worker sized it, not the bot

    run = w.env.bot.services.settings.run_root / "job-1"
    metrics = json.loads((run / "metrics.json").read_text())
    assert {k: metrics["config"][k] for k in ("resolution", "batch_size", "sample_steps")} == \
        {"resolution": 16, "batch_size": 1, "sample_steps": 8}
    assert metrics["data_report"]["caption_sources"] == {"sidecar": 0, "metadata": 5, "instance_prompt": 0}

    # every posted grid says its prompts (rows) and seeds (columns), never a file path
    grids = [m for m in thread.history() if m.content.startswith("**Sample #")]
    assert grids and all(m.attachments for m in grids)
    prompts = metrics["sample_prompts"]
    for message in grids:
        assert "samples/" not in message.content and "step-0" not in message.content, message.content
        assert f"rows are prompts 1. “{prompts[0]}”" in message.content, message.content
        assert message.content.split("\n")[0].endswith("columns are seeds 0, 1"), message.content
    # the final grid carries its scores line (this server names no scoring model: no number)
    assert grids[-1].content.endswith("\n**Scores:** unavailable: no scoring model is on the worker's machine.")
    samples = db.list_samples(job_id=1)
    assert samples and all(s.seed is None and s.prompt.startswith("grid: rows are prompts") for s in samples)


async def test_server_session_and_run_each_choose_a_size_within_the_base(world):
    w, db = world, world.env.bot.services.db
    # the server: only managers, and only what its image bases take
    refused = await w.mod.slash(w.channel, "server settings", image_resolution=128)
    assert refused.response.ephemeral and "choose a multiple of 8 from 8 to 64 px" in refused.response.content
    refused = await w.alice.slash(w.channel, "server settings", image_resolution=24)
    assert refused.response.ephemeral and "Only server managers" in refused.response.content
    done = await w.mod.slash(w.channel, "server settings", image_resolution=24, image_sample_steps=3)
    assert "resolution 24, sample steps 3" in text_of(done.response), text_of(done.response)

    thread = await image_session(w)
    report = text_of(reply(await w.alice.slash(thread, "data report")))
    assert "**Training size:** 24 px, batch 1, 3 sampling steps (resolution, sample steps as set here" in report

    # the session: its owner; its size wins over the server's
    refused = await w.bob.slash(thread, "session settings", resolution=40)
    assert refused.response.ephemeral
    updated = await w.alice.slash(thread, "session settings", resolution=40)
    assert "**Training size:** 40 px, batch 1, 3 sampling steps" in updated.response.content
    refused = await w.alice.slash(thread, "session settings", resolution=72)
    assert refused.response.ephemeral and "from 8 to 64 px" in refused.response.content

    for i in range(5):
        await w.alice.slash(thread, "data add", file=(f"p{i}.png", png(i)))
    # the run: its own size wins; one the base cannot take is refused with the allowed range
    refused = await w.alice.slash(thread, "train start", resolution=72)
    assert refused.response.ephemeral and "choose a multiple of 8 from 8 to 64 px" in refused.response.content
    assert db.list_jobs() == []
    started = await w.alice.slash(thread, "train start", preset="quick", steps=1, resolution=48, sample_steps=2)
    assert "**Training size:** 48 px, batch 1, 2 sampling steps" in started.response.content
    job = db.get_job(1)
    assert {k: job.config["settings"][k] for k in ("resolution", "sample_steps")} == {"resolution": 48,
                                                                                      "sample_steps": 2}
    await w.alice.slash(thread, "train cancel")
    await pump_until(w.env, lambda: db.get_job(1).finished, timeout=120, what="the cancelled job")


async def test_uploads_meet_the_trainers_size_rule_in_its_words_without_host_paths(world):
    w = world
    thread = await image_session(w)
    await w.alice.slash(thread, "session settings", resolution=64)
    uploaded = reply(await w.alice.slash(thread, "data add", file=("small.png", png(0, size=(30, 28))),
                                         file2=("big.png", png(1, size=(72, 64))),
                                         file3=("notes.png", b"just some words, not a picture at all"),
                                         file4=("broken.png", png(2)[:120])))
    shown = text_of(uploaded)
    rule = image_size_problem(30, 28, min_image_side(64), 64)
    assert rule == ("30x28 px is too small to train at 64 px: its aspect bucket is 64x64 and an image may be "
                    "enlarged at most 2x; give at least 35x32 px at this shape")
    assert image_size_problem(35, 32, min_image_side(64), 64) is None  # the size it names works
    assert f"`small.png`: {rule}" in shown, shown
    assert "1 file(s) added, 3 rejected" in shown
    assert "`notes.png`: " in shown and "`broken.png`: corrupt image" in shown
    assert not re.search(r"/tmp|tmp[a-z0-9_]{6}|\\\\|/\w+/", shown.replace("metadata.jsonl", "")), shown


async def test_fewer_than_five_images_are_refused_at_the_bot_and_at_the_queue(world):
    w, db, svc = world, world.env.bot.services.db, world.env.bot.services
    thread = await image_session(w)
    for i in range(3):
        await w.alice.slash(thread, "data add", file=(f"p{i}.png", png(i)))
    refused = await w.alice.slash(thread, "train start")
    assert refused.response.ephemeral
    assert "The dataset has 3 images; training needs at least 5" in refused.response.content
    assert db.list_jobs() == []

    # a job that reaches the queue anyway (an old client, a script) fails at once, not after retries
    session = db.session_by_thread(thread.id)
    spec = run_spec(svc, session, "quick", {"steps": 1})  # the spec /train would build (bot.cogs.train)
    job = svc.queue.submit(spec.job_kind, spec.to_job(), session_id=session.id, guild_id=session.guild_id,
                           user_id=w.alice.id)
    await pump_until(w.env, lambda: db.get_job(job.id).finished, timeout=120, what="the 3-image job")
    failed = db.get_job(job.id)
    assert failed.status == "failed" and failed.attempts == 0  # its first attempt: a permanent failure, not retried
    assert "3 usable image(s): training needs at least 5" in failed.error
