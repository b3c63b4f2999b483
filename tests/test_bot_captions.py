"""Automatic captions through SimCord, with the real queue, worker and trainer: a member uploads
images without captions, `/data captions auto:True` has a tiny BLIP model (built locally) caption
them on the worker, the member reviews them in the pager, edits one in a modal, and the run
trains on them; ``metrics.json`` lists every image's caption and where it came from.

Also: an edit without the trigger word is kept with a warning, a caption longer than the base's
text encoder is cut and the member told, a member's caption is never re-captioned, a server
manager switches captions off, and a worker without the model says so.
"""

from __future__ import annotations

import json

import pytest

from bot.config import BotSettings
from tests.bot_world import *  # noqa: F401,F403
from tests.caption_fixtures import tiny_captioner  # noqa: F401
from tests.image_fixtures import RESOLUTION, image_bytes, pattern_image, tiny_sd  # noqa: F401

pytestmark = pytest.mark.asyncio

IMAGE_DEFAULTS = {"resolution": RESOLUTION, "sample_steps": 2, "sample_seeds": [0], "sample_every": 0,
                  "precision": "fp32", "augment_variants": 1}
SHAPES = [(72, 64), (64, 80), (96, 64), (64, 64), (80, 72)]


@pytest.fixture
def bot_config(tiny_sd, tiny_captioner) -> BotSettings:
    return BotSettings(_env_file=None, allowed_models=[f"image:{tiny_sd}"], progress_edit_s=0, train_cooldown_s=0,
                       train_threads=1, image_train_defaults=IMAGE_DEFAULTS, caption_model=str(tiny_captioner))


@pytest.fixture
def simcord_bot(make_bot):
    return make_bot(worker=True)


async def uncaptioned_session(w, tiny_sd):
    await w.alice.slash(w.channel, "session new", kind="image", title="Patterns", base_model=str(tiny_sd))
    thread = w.channel.threads[-1]
    files = {f"file{i + 1}" if i else "file": (f"img{i}.png", image_bytes(pattern_image(i, size=size)))
             for i, size in enumerate(SHAPES)}
    added = await w.alice.slash(thread, "data add", **files)
    message = added.followups[0] if added.followups else added.response
    assert message.embeds[0].title == "Dataset: 5 file(s) added, 0 rejected", message.embeds[0].fields
    return thread


def items_of(w, thread):
    db = w.env.bot.services.db
    return db.list_dataset_items(db.session_by_thread(thread.id).id)


async def captioned(w, thread, before: int):
    """Wait for the thread's line that a caption job ended (after ``before`` messages)."""
    await pump_until(w.env, lambda: len(thread.history()) > before and any(
        "captioned by" in m.content or "captioning model" in m.content for m in thread.history()[before:]),
        timeout=300, what="the caption job's answer")
    return next(m for m in thread.history()[before:] if "captioned by" in m.content or "captioning model" in m.content)


async def test_upload_auto_caption_review_edit_and_train(world, tiny_sd, tiny_captioner):
    w, db = world, world.env.bot.services.db
    thread = await uncaptioned_session(w, tiny_sd)
    assert all(i.caption is None for i in items_of(w, thread))

    before = len(thread.history())
    asked = await w.alice.slash(thread, "data captions", auto=True)
    assert asked.response.content.startswith("Captioning 5 image(s) without a caption with `tiny-blip` (job #")
    assert "the trigger word `sks` first" in asked.response.content
    said = await captioned(w, thread, before)
    assert said.content.startswith("🏷️ 5 image(s) captioned by ") and "/data captions" in said.content
    items = items_of(w, thread)
    assert all(i.caption.startswith("sks, ") and i.checks["caption_from"] == "model" for i in items)

    # review: the pager shows each image with its caption and source
    pager = await w.alice.slash(thread, "data captions")
    assert pager.ephemeral
    page = pager.response
    assert page.embeds[0].title == f"Caption 1 of 5 · #{items[0].id} `img0.png`"
    assert page.embeds[0].description == items[0].caption
    assert {f.name: f.value for f in page.embeds[0].fields}["Source"].startswith("model")
    assert [a.filename for a in page.attachments] == ["image.png"]
    moved = await w.alice.click(page, label="Next")
    page = moved.response
    assert page.embeds[0].title == f"Caption 2 of 5 · #{items[1].id} `img1.png`"

    # edit one: a modal; the caption becomes the member's
    shown = await w.alice.click(page, label="Edit")
    assert shown.modal is not None
    edited = await w.alice.submit_modal(shown, {"caption": "sks, a striped pattern in two colours"})
    assert edited.ephemeral and "saved (source: member)" in edited.response.content
    assert db.list_dataset_items(items[1].session_id)[1].caption == "sks, a striped pattern in two colours"

    # a member's caption is never replaced by the model's
    refused = await w.alice.click(page, label="Re-caption")
    assert refused.ephemeral and f"A member wrote the caption of #{items[1].id}" in refused.response.content
    again = await w.alice.slash(thread, "data captions", auto=True)
    assert "Every image has a caption already" in again.response.content

    listed = await w.alice.slash(thread, "data list")
    text = listed.response.embeds[0].description
    assert text.count(" · model: “sks, ") == 4 and " · member: “sks, a striped pattern" in text

    # train: the trainer reads every caption with its source
    started = await w.alice.slash(thread, "train start", preset="quick", steps=2)
    job_id = int(started.response.content.split("Job #")[1].split()[0])
    await pump_until(w.env, lambda: db.get_job(job_id).finished, timeout=300, what="the image training job")
    assert db.get_job(job_id).status == "done", db.get_job(job_id).error
    metrics = json.loads((w.env.bot.services.settings.run_root / f"job-{job_id}" / "metrics.json").read_text())
    report = metrics["data_report"]
    stored = {i.filename: (i.caption, "member" if i.id == items[1].id else "model") for i in items_of(w, thread)}
    trained = {name.rsplit("/", 1)[-1].split("-", 1)[1]: (report["captions"][name], report["caption_from"][name])
               for name in report["captions"]}
    assert trained == stored


async def test_edits_warn_without_the_trigger_and_cut_what_the_encoder_cannot_read(world, tiny_sd):
    w = world
    thread = await uncaptioned_session(w, tiny_sd)
    pager = await w.alice.slash(thread, "data captions")
    assert pager.response.embeds[0].description.startswith("*(no caption: trains on “a photo of sks”)*")
    shown = await w.alice.click(pager.response, label="Edit")
    no_trigger = await w.alice.submit_modal(shown, {"caption": "a red and blue pattern"})
    assert "⚠️ The caption no longer has the trigger word `sks`" in no_trigger.response.content
    assert items_of(w, thread)[0].caption == "a red and blue pattern"  # allowed, as written

    long = "sks, " + " ".join(f"stripe{i}" for i in range(80))
    shown = await w.alice.click(pager.response, label="Edit")
    cut = await w.alice.submit_modal(shown, {"caption": long})
    assert "was cut to about 77 tokens" in cut.response.content
    stored = items_of(w, thread)[0].caption
    assert long.startswith(stored) and len(stored) < len(long)


async def test_a_long_caption_at_upload_is_cut_and_the_member_told(world, tiny_sd):
    w = world
    await w.alice.slash(w.channel, "session new", kind="image", title="Patterns", base_model=str(tiny_sd))
    thread = w.channel.threads[-1]
    long = "sks, " + " ".join(f"stripe{i}" for i in range(80))
    added = await w.alice.slash(thread, "data add", file=("a.png", image_bytes(pattern_image(0, size=(72, 64)))),
                                caption=long[:500])
    message = added.followups[0] if added.followups else added.response
    advice = {f.name: f.value for f in message.embeds[0].fields}["Advice"]
    assert "The caption of `a.png` was cut to about 77 tokens" in advice
    assert long.startswith(items_of(w, thread)[0].caption) and len(items_of(w, thread)[0].caption) < 500


async def test_a_manager_switches_captions_off_or_picks_a_model_the_worker_lacks(world, tiny_sd):
    w = world
    thread = await uncaptioned_session(w, tiny_sd)
    await w.mod.slash(w.channel, "server settings", caption_model="off")
    off = await w.alice.slash(thread, "data captions", auto=True)
    assert "switched automatic captions off" in off.response.content
    assert "train on the instance prompt “a photo of sks”" in off.response.content

    shown = await w.mod.slash(w.channel, "server settings", caption_model="someone/no-such-captioner")
    fields = {f.name: f.value for f in shown.response.embeds[0].fields}
    assert fields["Automatic captions"] == "`someone/no-such-captioner`"
    before = len(thread.history())
    await w.alice.slash(thread, "data captions", auto=True)
    said = await captioned(w, thread, before)
    assert said.content.startswith("No captioning model on the worker: the captioning model "
                                   "someone/no-such-captioner is not on this machine")
    assert "train on the instance prompt “a photo of sks”, as before" in said.content
    assert all(i.caption is None for i in items_of(w, thread))
